"""augment.py: the batched on-device views against the per-image torchvision recipes (same distributions, each
colour-jitter component separately), AMDIM's, MoCo v1 / v2's and CMC's; the normalisation constants against the
original code's; views that do not depend on the CPU's chunks, its skipping of samples or the GPU's masked passes;
make_views."""
import colorsys
import math

import pytest
import torch
from PIL import Image

import torchvision.transforms as T
import torchvision.transforms.functional as TF

import augment
import imageops
from utils import UserError

N = 1500
RGB_KINDS = tuple(k for k in augment.VIEW_KINDS if k != "cmc")     # CMC's views are Lab channels (test_cmc_*)


def _images(n, size, seed=0):
    """Smooth colourful uint8 images (N, size, size, 3): upsampled random 4x4 colour fields plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = (x + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def _per_image(recipe, images, kind="amdim"):
    two = augment.make_views(kind, recipe)
    pairs = [two(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def _batched(recipe, images, kind="amdim"):
    aug = augment.make_views(kind, recipe, batched=True)
    outs = [aug(images[i:i + 250]) for i in range(0, len(images), 250)]
    return torch.cat([a for a, _ in outs]), torch.cat([b for _, b in outs])


def _crop_path(recipe, images, kind="amdim", **options):
    """The crop path: the per-image geometry (uint8 crops) of each image, then the colour of the collated crops,
    batch by batch; returns the views as _batched does."""
    geometry, colour = augment.make_crop_views(kind, recipe, **options)
    crops = [geometry(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images]
    assert all(c.dtype == torch.uint8 for c in crops[0])
    outs = [colour([torch.stack(view) for view in zip(*crops[i:i + 250])]) for i in range(0, len(images), 250)]
    return tuple(torch.cat(views) for views in zip(*outs))


def _unnormalize(x, recipe):
    mean, std = augment.NORMALIZATION[recipe]
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def _gray_rate(x, recipe):
    x = _unnormalize(x, recipe)
    return ((x.max(1).values - x.min(1).values).amax(dim=(1, 2)) < 2e-3).float().mean().item()


def _assert_same_statistics(kind, recipe, size, gray_rate):
    """The batched recipe's two views against the per-image one's on the same N images of `size` px."""
    torch.manual_seed(0)
    images = _images(N, size)
    ref1, ref2 = _per_image(recipe, images, kind)
    assert abs(_gray_rate(torch.cat([ref1, ref2]), recipe) - gray_rate) < 0.035
    for path in (_batched, _crop_path):          # in-memory images; crops cut per image, coloured batched
        got1, got2 = path(recipe, images, kind)
        assert got1.shape == ref1.shape and got1.dtype == torch.float32
        for ref, got in ((ref1, got1), (ref2, got2)):
            ref_mean, got_mean = ref.mean(dim=(0, 2, 3)), got.mean(dim=(0, 2, 3))
            ref_std, got_std = ref.std(dim=(0, 2, 3)), got.std(dim=(0, 2, 3))
            assert torch.allclose(ref_mean, got_mean, atol=0.05), (path, ref_mean, got_mean)
            assert torch.allclose(ref_std, got_std, atol=0.05), (path, ref_std, got_std)
            # per-image brightness spread: the jitter's effect on whole images
            assert abs(ref.mean(dim=(1, 2, 3)).std() - got.mean(dim=(1, 2, 3)).std()) < 0.05, path
        # grayscale views (binomial sd over 3000 views ~ 0.008)
        rate = _gray_rate(torch.cat([got1, got2]), recipe)
        assert abs(rate - gray_rate) < 0.035, (path, rate)


@pytest.mark.parametrize("recipe,size", [("cifar", 32), ("stl", 96)])
def test_output_statistics_match_the_per_image_recipe(recipe, size):
    _assert_same_statistics("amdim", recipe, size, gray_rate=0.25)


@pytest.mark.parametrize("kind,recipe,size", [("moco_v1", "cifar", 32), ("moco_v2", "cifar", 32),
                                              ("moco_v2", "stl", 96)])
def test_moco_statistics_match_the_per_image_recipe(kind, recipe, size):
    # v1 turns gray before its jitter, which keeps gray images gray: 20 % gray views either way.
    _assert_same_statistics(kind, recipe, size, gray_rate=0.2)


def test_swav_statistics_match_the_per_image_recipe():
    _assert_same_statistics("swav", "stl", 96, gray_rate=0.2)


# The colour jitter, one component at a time, on images whose every statistic below the translation leaves
# unchanged: a gray 12 x 12 square (level 120) centred on a gray ground (40), which every shift of up to 4 px
# keeps inside the image (and the reflected border keeps the ground), and a constant colour. On gray pixels
# saturation and hue do nothing; on a constant image contrast blends towards the pixel's own gray, as saturation
# does; brightness and hue leave HSV saturation alone. So, with b, c, s the factors and h the hue shift:
#   log(mean luma out / in) of the gray image           = log b          (contrast keeps the mean)
#   log(square - ground luma difference out / in)       = log b + log c
#   HSV saturation of the colour image                  moved by c and s only
#   hue of the colour image                             shifted by h only
_SQUARE, _GROUND, _COLOUR = 120, 40, (120, 72, 48)


def _jitter_probes(n):
    """n gray square-on-ground images then n constant-colour images, uint8 (2n, 3, 32, 32)."""
    gray = torch.full((n, 3, 32, 32), _GROUND, dtype=torch.uint8)
    gray[:, :, 10:22, 10:22] = _SQUARE
    colour = torch.tensor(_COLOUR, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, 32, 32)
    return torch.cat([gray, colour])


def _jitter_statistics(views, n):
    """Per-view statistics of the views (2 per image) of _jitter_probes(n): the four quantities above, the
    colour views made gray by RandomGrayscale left out of the hue and saturation ones."""
    x = _unnormalize(torch.cat([v[:n] for v in views] + [v[n:] for v in views]), "cifar").clamp(0, 1)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    gray, colour = luma[:2 * n], x[2 * n:, :, 16, 16]
    mean_in = (144 * _SQUARE + (1024 - 144) * _GROUND) / 1024 / 255
    h0, s0, _ = colorsys.rgb_to_hsv(*(c / 255 for c in _COLOUR))
    hsv = [colorsys.rgb_to_hsv(*pixel) for pixel in colour.tolist()]
    coloured = [(h, s) for h, s, _ in hsv if s > 0.05]
    return {"brightness": torch.log(gray.mean(dim=(1, 2)) / mean_in),
            "contrast": torch.log((gray[:, 16, 16] - gray[:, 0, 0]) / ((_SQUARE - _GROUND) / 255)),
            "saturation": torch.log(torch.tensor([s / s0 for _, s in coloured])),
            "hue": torch.tensor([(h - h0 + 0.5) % 1 - 0.5 for h, _ in coloured])}


def test_each_colour_jitter_component_spreads_as_the_per_image_recipe():
    """Brightness, contrast, saturation and hue jitter each widen their own statistic; dropping one (or changing
    its range) moves that statistic's spread by 30 % or more, far outside the tolerance (the two paths and the
    sampling differ by under 10 % over seeds)."""
    torch.manual_seed(11)
    ref = _jitter_statistics(_per_image("cifar", _jitter_probes(300)), 300)
    for path in (_batched, _crop_path):
        got = _jitter_statistics(path("cifar", _jitter_probes(600)), 600)
        for k in ref:
            ratio = (got[k].std() / ref[k].std()).item()
            assert 0.85 < ratio < 1.18, (path, k, ratio, ref[k].std().item())
            assert abs(got[k].mean() - ref[k].mean()) < 0.25 * ref[k].std(), (path, k, got[k].mean(), ref[k].mean())
    # Hue spread of U(-0.2, 0.2) shifts applied to 80 % of the views: sd 0.2 sqrt(0.8 / 3) = 0.103.
    assert abs(ref["hue"].std() - 0.103) < 0.025     # (hue 0.1 would give 0.052)


# The original AMDIM code's per-channel normalisation (mean, std), as its transforms.Normalize calls give them:
# Philip-Bachman/amdim-public, datasets.py (last changed in commit 427be23e6dbefb5e09ba1b85a32fb85a57b556d3),
# TransformsC10 (CIFAR-10/100), TransformsSTL10 and TransformsImageNet128 (ImageNet, Places205).
ORIGINAL_NORMALIZATION = {
    "cifar": ([x / 255.0 for x in [125.3, 123.0, 113.9]], [x / 255.0 for x in [63.0, 62.1, 66.7]]),
    "stl": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


@pytest.mark.parametrize("recipe", ["cifar", "stl", "imagenet"])
def test_every_path_normalises_with_the_original_constants(recipe):
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in ORIGINAL_NORMALIZATION[recipe])
    (ours_mean, ours_std), (their_mean, their_std) = augment.NORMALIZATION[recipe], ORIGINAL_NORMALIZATION[recipe]
    assert [*ours_mean, *ours_std] == pytest.approx([*their_mean, *their_std], abs=1e-12)
    size = augment.RECIPE_SIZE[recipe]
    # The test-time transform of constant black and white images: (level - mean) / std.
    for level in (0, 255):
        out = augment.test_transform(recipe)(Image.new("RGB", (size, size), (level,) * 3))
        assert torch.allclose(out, ((level / 255 - mean) / std).expand_as(out), atol=1e-5), level
    # Training views of a black image stay black whatever the crop, jitter, grayscale and blur draw: every pixel
    # is -mean / std, per image and batched, for every method's views.
    black = (0 - mean) / std
    torch.manual_seed(12)
    for kind in RGB_KINDS:
        views = augment.make_views(kind, recipe)(Image.new("RGB", (size, size)))
        views += augment.make_views(kind, recipe, batched=True)(torch.zeros(4, 3, size, size, dtype=torch.uint8))
        views += _crop_path(recipe, torch.zeros(4, 3, size, size, dtype=torch.uint8), kind)
        for v in views:
            assert torch.allclose(v, black.expand_as(v), atol=1e-5), kind


def _flipped(x, recipe):
    """Whether each view shows the bright half on the right (the source has it on the left)."""
    y = _unnormalize(x, recipe).mean(1)
    w = y.shape[-1]
    return y[:, :, w // 2:].mean(dim=(1, 2)) > y[:, :, :w // 2].mean(dim=(1, 2))


def test_flip_is_shared_by_both_views_and_happens_half_the_time():
    img = torch.zeros(N, 3, 32, 32, dtype=torch.uint8)
    img[:, :, :, :16] = 230
    img[:, :, :, 16:] = 20
    torch.manual_seed(1)
    x1, x2 = _batched("cifar", img)
    f1, f2 = _flipped(x1, "cifar"), _flipped(x2, "cifar")
    assert torch.equal(f1, f2)
    assert abs(f1.float().mean().item() - 0.5) < 0.05
    ref1, ref2 = _per_image("cifar", img[:300])
    assert torch.equal(_flipped(ref1, "cifar"), _flipped(ref2, "cifar"))
    for recipe, size in (("cifar", 32), ("stl", 96)):          # the crop path: TranslatedViews, CropViews
        x1, x2 = _crop_path(recipe, _ramp(600, size))
        f1 = _flipped(x1, recipe)
        assert torch.equal(f1, _flipped(x2, recipe)) and abs(f1.float().mean().item() - 0.5) < 0.07, recipe


def _ramp(n, size=32):
    """Gray uint8 images (n, 3, size, size) darkening from left (220) to right (30): every crop, jitter,
    grayscale and blur keeps the bright side, so _flipped reads the flip."""
    return torch.linspace(220, 30, size).round().to(torch.uint8).expand(n, 3, size, size).clone()


@pytest.mark.parametrize("kind", ["moco_v1", "moco_v2"])
def test_moco_views_flip_independently_half_the_time(kind):
    torch.manual_seed(7)
    for (x1, x2), n in ((_batched("cifar", _ramp(N), kind), N), (_per_image("cifar", _ramp(400), kind), 400),
                        (_crop_path("cifar", _ramp(600), kind), 600)):
        f1, f2 = _flipped(x1, "cifar").float(), _flipped(x2, "cifar").float()
        sd = 0.5 / math.sqrt(n)
        assert abs(f1.mean() - 0.5) < 4 * sd and abs(f2.mean() - 0.5) < 4 * sd, (f1.mean(), f2.mean())
        # uncorrelated (AMDIM's views share theirs: correlation 1); the correlation's sd is ~ 1 / sqrt(n)
        assert abs(torch.corrcoef(torch.stack([f1, f2]))[0, 1]) < 4 / math.sqrt(n)


def test_everything_but_the_flip_is_drawn_per_view():
    torch.manual_seed(2)
    x1, x2 = _batched("cifar", _images(200, 32))
    assert (x1 - x2).abs().amax(dim=(1, 2, 3)).gt(1e-4).float().mean() > 0.9


@pytest.mark.parametrize("kind", augment.VIEW_KINDS)
def test_views_do_not_depend_on_the_cpu_chunk_size(kind, monkeypatch):
    """Each sample's result is its own: one chunk of a sample or of the whole batch gives the same views."""
    images = _images(7, 96)
    outs = []
    for chunk_bytes in (1, 1 << 30):
        monkeypatch.setattr(imageops, "CPU_CHUNK_BYTES", chunk_bytes)
        torch.manual_seed(16)
        outs.append(augment.make_views(kind, "stl", batched=True)(images))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kind", augment.VIEW_KINDS)
def test_skipping_the_samples_a_pass_leaves_alone_changes_no_view(kind, monkeypatch):
    """The CPU sorts samples by the passes they take and runs each pass on its takers only; a GPU runs every
    pass masked over the whole batch. Same draws, same views, sample by sample."""
    images = _images(40, 96)
    outs = []
    for skips_on in (("cpu",), ()):
        monkeypatch.setattr(imageops, "SKIPS_ON", skips_on)
        torch.manual_seed(18)
        outs.append(augment.make_views(kind, "stl", batched=True)(images))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    monkeypatch.setattr(imageops, "SKIPS_ON", ("cpu",))
    assert all(v.shape[0] == 0 for v in augment.make_views(kind, "stl", batched=True)(images[:0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", augment.VIEW_KINDS)
def test_batched_views_on_cuda_never_sync_and_compute_what_the_cpu_does(kind):
    """On a GPU (one chunk) the passes compute what they compute on the CPU (chunks) from the same parameters,
    and a whole two-view call never makes the host wait (the sync debug mode raises on any synchronisation)."""
    images = _images(40, 96)
    views = augment.make_views(kind, "stl", batched=True)
    gpu_images = images.cuda()                        # (a copy from pageable memory synchronises: not in the check)
    views(gpu_images)                                 # the first call puts the constants on the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = views(gpu_images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda and torch.isfinite(v).all() for v in out)
    torch.manual_seed(17)
    boxes = imageops.sample_crop_boxes(40, 96, 96, (0.3, 1.0), (0.7, 1.4))
    rows, cols = imageops.crop_weights(boxes, 96, 96, 64, "bicubic")
    jitter = imageops.jitter_params(40, 0.4, 0.4, 0.4, 0.2, 0.8, "cpu")
    blur = imageops.blur_kernels(40, (0.1, 2.0), 0.5, "cpu")

    def passes(images, rows, cols, jitter, blur):
        x = imageops._resample(images, imageops._scaled(rows, 1 / 255), cols,
                              out=torch.empty(40, 3, 64, 64, device=images.device)).clamp_(0, 1)
        x = imageops._blur_(imageops._color_jitter_(x, *jitter), blur)
        return x, imageops._lab_(x.clone(), imageops._LAB_SCALE, imageops._LAB_SHIFT)
    cpu = passes(images, rows, cols, jitter, blur)
    gpu = passes(*(t.cuda() if isinstance(t, torch.Tensor) else tuple(u.cuda() for u in t)
                   for t in (images, rows, cols, jitter, blur)))
    for c, g in zip(cpu, gpu):
        assert torch.allclose(c, g.cpu(), atol=1e-4), (c - g.cpu()).abs().max()


@pytest.mark.parametrize("kind", RGB_KINDS)
def test_make_views_returns_the_documented_callables(kind):
    torch.manual_seed(10)
    img = Image.fromarray(_images(1, 96)[0].permute(1, 2, 0).numpy())
    mean_std = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    views = augment.make_views(kind, "stl", mean_std=mean_std)(img)
    assert isinstance(views, tuple) and len(views) == (1 if kind == "probe" else 2)      # a protocol's one view
    assert all(v.shape == (3, 64, 64) and v.dtype == torch.float32 for v in views)
    batched = augment.make_views(kind, "stl", mean_std=mean_std, batched=True)
    assert torch.allclose(batched.mean, torch.tensor(0.5)) and torch.allclose(batched.std, torch.tensor(0.25))
    n = 1 if kind in ("swav", "probe") else 3   # SwAV's n_views takes its first crops (two at S px); probe has one
    out = batched(_images(5, 96), n_views=n)
    assert len(out) == n and all(v.shape == (5, 3, 64, 64) and v.dtype == torch.float32 for v in out)


def test_make_views_refuses_combinations_that_do_not_exist():
    with pytest.raises(UserError, match="unknown view kind"):
        augment.make_views("simclr", "cifar")
    with pytest.raises(UserError, match="unknown augmentation recipe"):
        augment.make_views("amdim", "svhn")
    with pytest.raises(UserError, match="AMDIM views only"):
        augment.make_views("moco_v2", "cifar", aug="autoaugment")
    with pytest.raises(UserError, match="batched augmentation has only the default"):
        augment.make_views("amdim", "cifar", aug="fast_autoaugment", batched=True)


# ----------------------------------------------------------------------------------------------------------
# CMC: Lab views (the conversion itself: test_imageops.py).

def test_cmc_views_are_normalised_lab_channels_of_one_shared_crop():
    """Per image and batched: (L (1, S, S), ab (2, S, S)); a constant image gives its normalised Lab everywhere
    whatever the crop and flip; L and ab come from one crop (a left-right split image stays split alike)."""
    torch.manual_seed(4)
    colour = torch.tensor([200, 30, 90], dtype=torch.uint8)
    lab = imageops.normalize_lab(imageops.rgb_to_lab(colour.view(1, 3, 1, 1)))[0]
    views = augment.make_views("cmc", "stl")(Image.new("RGB", (96, 80), tuple(colour.tolist())))
    assert [v.shape for v in views] == [(1, 64, 64), (2, 64, 64)]
    batched = augment.make_views("cmc", "stl", batched=True)(colour.view(1, 3, 1, 1).expand(5, 3, 96, 80))
    assert [v.shape for v in batched] == [(5, 1, 64, 64), (5, 2, 64, 64)]
    for v in (torch.cat(views)[None], torch.cat(batched, 1)):
        assert torch.allclose(v, lab.view(1, 3, 1, 1).expand_as(v), atol=1e-4)
    assert len(augment.make_views("cmc", "cifar", batched=True)(_images(2, 32), n_views=1)) == 1
    # Left half white, right half black: L and a/b must agree on which side each output pixel came from.
    img = torch.zeros(400, 3, 48, 48, dtype=torch.uint8)
    img[:, 0, :, :24] = 255          # red left (L > 0, a > 0), black right
    big_l, ab = augment.make_views("cmc", "cifar", batched=True, crop_low=0.3)(img)
    red_by_l = big_l[:, 0] > imageops.normalize_lab(torch.zeros(1, 3, 1, 1))[0, 0] + 0.5
    red_by_a = ab[:, 0] > 0.5
    # Pixels resampled across the edge mix both colours, and L and a cross their thresholds at different mixes.
    assert (red_by_l == red_by_a).float().mean() > 0.97
    left = red_by_l[:, :, :4].float().mean(dim=(1, 2)) > red_by_l[:, :, -4:].float().mean(dim=(1, 2))
    assert 0.4 < left.float().mean().item() < 0.6            # flipped half the time


def test_lab_to_rgb_inverts_rgb_to_lab_and_view_pictures_have_three_channels():
    x = torch.rand(2, 3, 6, 6)
    assert torch.allclose(imageops.lab_to_rgb(imageops.rgb_to_lab(x)), x, atol=1e-4)
    views = augment.make_views("cmc", "cifar", batched=True)(_images(3, 40))
    grey, colour = imageops.cmc_views_to_rgb(*views)
    assert grey.shape == colour.shape == (3, 3, 32, 32)
    assert 0 <= grey.min() and grey.max() <= 1 and 0 <= colour.min() and colour.max() <= 1


# ----------------------------------------------------------------------------------------------------------
# The crop path's geometry (loader workers): uint8 crops whose boxes and flips spread as the per-image recipe's.

def _coordinate_jpeg(path, width=500, height=375):
    """A JPEG whose red channel is the x coordinate and green the y coordinate (scaled to 0..255), blue 128."""
    x = torch.linspace(0, 255, width).round().expand(height, width)
    y = torch.linspace(0, 255, height).round()[:, None].expand(height, width)
    pixels = torch.stack([x, y, torch.full_like(x, 128)], dim=2).byte().numpy()
    Image.fromarray(pixels).save(path, quality=95)
    return path


def _boxes(crops, width=500, height=375):
    """Box statistics read off crops (n, 3, s, s) of _coordinate_jpeg: centre x, centre y, width and height in
    source pixels, and whether each is mirrored."""
    x, y = crops[:, 0].float() * (width - 1) / 255, crops[:, 1].float() * (height - 1) / 255
    left, right = x[:, :, 0].mean(1), x[:, :, -1].mean(1)
    top, bottom = y[:, 0, :].mean(1), y[:, -1, :].mean(1)
    return {"cx": x.mean(dim=(1, 2)), "cy": y.mean(dim=(1, 2)), "w": (right - left).abs(), "h": bottom - top,
            "flip": (right < left).float()}


@pytest.mark.parametrize("kind,reference", [
    ("amdim", lambda: [T.RandomResizedCrop(128, (0.3, 1.0), (0.7, 1.4), T.InterpolationMode.BICUBIC)] * 2),
    ("moco_v2", lambda: [T.RandomResizedCrop(128, (0.2, 1.0))] * 2),
    ("swav", lambda: [T.RandomResizedCrop(128, (0.14, 1.0)), T.RandomResizedCrop(64, (0.05, 0.14))])])
def test_crop_path_geometry_spreads_as_the_per_image_recipe(kind, reference, tmp_path, monkeypatch):
    """Crops of one JPEG file (decoded at 1/2 scale or less where every box allows: some of them here) against
    the per-image recipe's geometric ops (torchvision's RandomResizedCrop and flip on the decoded image): box
    centre, size and flip spread alike; AMDIM's two views share their flip, the others' flip independently."""
    import datasets
    path = _coordinate_jpeg(tmp_path / "coords.jpg")
    scales = []
    decode = datasets.ImageFile.decode
    monkeypatch.setattr(datasets.ImageFile, "decode", lambda self, s=1: scales.append(s) or decode(self, s))
    crops = augment.MultiCrop((1, 1), (128, 64), (0.14, 0.05), (1.0, 0.14))
    geometry, _ = augment.make_crop_views(kind, "imagenet", crops=crops if kind == "swav" else None)
    torch.manual_seed(21)
    n = 400
    ours = [geometry(datasets.ImageFile(str(path))) for _ in range(n)]
    assert [tuple(c.shape) for c in ours[0]] == [(3, 128, 128), (3, 64, 64) if kind == "swav" else (3, 128, 128)]
    assert all(c.dtype == torch.uint8 for c in ours[0])
    assert kind == "swav" or 0.1 < sum(s > 1 for s in scales) / n < 0.9          # both decodes are exercised
    source = datasets.load_rgb(str(path))
    flip = T.RandomHorizontalFlip()
    theirs = [[flip(crop(source)) for crop in reference()] for _ in range(n)]
    for view in range(2):
        got = _boxes(torch.stack([c[view] for c in ours]))
        ref = _boxes(torch.stack([TF.pil_to_tensor(c[view]) for c in theirs]))
        for k in got:
            sd = ref[k].std().item()
            assert abs(got[k].mean() - ref[k].mean()) < 4 * sd * math.sqrt(2 / n) + 1, (kind, view, k)
            assert abs(got[k].std() - sd) < 0.15 * sd + 1, (kind, view, k, got[k].std(), sd)
    f1, f2 = (torch.stack([_boxes(c[v][None])["flip"] for c in ours]).flatten() for v in (0, 1))
    assert torch.equal(f1, f2) if kind == "amdim" else abs(torch.corrcoef(torch.stack([f1, f2]))[0, 1]) < 0.2


@pytest.mark.parametrize("kind", augment.VIEW_KINDS)
def test_crop_path_gives_uint8_crops_and_what_the_batched_recipe_gives(kind):
    """Per image a tuple of uint8 (3, s, s), one per view (CMC: one crop); colour gives the batched recipe's
    views: shapes, dtype, n_views."""
    torch.manual_seed(23)
    geometry, colour = augment.make_crop_views(kind, "stl")
    crops = [geometry(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in _images(5, 80)]
    assert all(c.dtype == torch.uint8 and c.shape == (3, 64, 64) for c in crops[0])
    assert len(crops[0]) == (1 if kind in ("cmc", "probe") else 2)
    batch = [torch.stack(v) for v in zip(*crops)]
    expected = augment.make_views(kind, "stl", batched=True)(_images(5, 80))
    assert [(v.shape, v.dtype) for v in colour(batch)] == [(v.shape, v.dtype) for v in expected]
    assert len(colour(batch, n_views=1)) == 1


def test_the_crop_paths_boxes_follow_torchvisions_random_resized_crop():
    """augment.box_of (the crop path's boxes, from uniforms drawn in one call) against torchvision's
    RandomResizedCrop.get_params: area, aspect ratio and position spread alike, boxes lie in the image, and
    where no try fits (an area over the image's) both take the same centre crop, ratio clamped into range."""
    torch.manual_seed(4)
    n, h, w, scale, ratio = 4000, 96, 120, (0.2, 1.0), (3 / 4, 4 / 3)
    ours = torch.tensor([augment.box_of(h, w, scale, ratio, u) for u in torch.rand(n, augment.BOX_DRAWS).tolist()],
                        dtype=torch.float32)
    shape = torch.zeros(1, h, w)
    ref = torch.tensor([T.RandomResizedCrop.get_params(shape, scale, ratio) for _ in range(n)], dtype=torch.float32)
    assert ((ours[:, :2] >= 0) & (ours[:, :2] + ours[:, 2:] <= torch.tensor([h, w]))).all()
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])

    def spread(boxes):
        top, left, bh, bw = boxes.unbind(1)
        return [bh * bw / (h * w), torch.log(bw / bh), (left + bw / 2) / w, (top + bh / 2) / h]
    for got, want, atol in zip(spread(ours), spread(ref), (0.03, 0.04, 0.03, 0.03)):
        assert torch.allclose(torch.quantile(got, qs), torch.quantile(want, qs), atol=atol)
    for height, width in ((96, 120), (200, 50), (50, 200)):
        u = torch.rand(augment.BOX_DRAWS).tolist()
        fallback = T.RandomResizedCrop.get_params(torch.zeros(1, height, width), (2.0, 3.0), ratio)
        assert augment.box_of(height, width, (2.0, 3.0), ratio, u) == tuple(fallback)
