"""augment.py: the batched on-device augmentation against the per-image torchvision recipes (same
distributions, each colour-jitter component separately), AMDIM's and MoCo v1 / v2's; the normalisation constants
against the original code's; the batched Gaussian blur; make_views; the Fast AutoAugment policy file."""
import colorsys
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF2
from PIL import Image, ImageFilter

import augment
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
    got1, got2 = _batched(recipe, images, kind)
    assert got1.shape == ref1.shape and got1.dtype == torch.float32
    for ref, got in ((ref1, got1), (ref2, got2)):
        ref_mean, got_mean = ref.mean(dim=(0, 2, 3)), got.mean(dim=(0, 2, 3))
        ref_std, got_std = ref.std(dim=(0, 2, 3)), got.std(dim=(0, 2, 3))
        assert torch.allclose(ref_mean, got_mean, atol=0.05), (ref_mean, got_mean)
        assert torch.allclose(ref_std, got_std, atol=0.05), (ref_std, got_std)
        # per-image brightness spread: the jitter's effect on whole images
        assert abs(ref.mean(dim=(1, 2, 3)).std() - got.mean(dim=(1, 2, 3)).std()) < 0.05
    # grayscale views (binomial sd over 3000 views ~ 0.008)
    for rate in (_gray_rate(torch.cat([ref1, ref2]), recipe), _gray_rate(torch.cat([got1, got2]), recipe)):
        assert abs(rate - gray_rate) < 0.035, rate


@pytest.mark.parametrize("recipe,size", [("cifar", 32), ("stl", 96)])
def test_output_statistics_match_the_per_image_recipe(recipe, size):
    _assert_same_statistics("amdim", recipe, size, gray_rate=0.25)


@pytest.mark.parametrize("kind,recipe,size", [("moco_v1", "cifar", 32), ("moco_v2", "cifar", 32),
                                              ("moco_v2", "stl", 96)])
def test_moco_statistics_match_the_per_image_recipe(kind, recipe, size):
    # v1 turns gray before its jitter, which keeps gray images gray: 20 % gray views either way.
    _assert_same_statistics(kind, recipe, size, gray_rate=0.2)


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
    got = _jitter_statistics(_batched("cifar", _jitter_probes(600)), 600)
    for k in ref:
        ratio = (got[k].std() / ref[k].std()).item()
        assert 0.85 < ratio < 1.18, (k, ratio, ref[k].std().item())
        assert abs(got[k].mean() - ref[k].mean()) < 0.25 * ref[k].std(), (k, got[k].mean(), ref[k].mean())
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


def _ramp(n, size=32):
    """Gray uint8 images (n, 3, size, size) darkening from left (220) to right (30): every crop, jitter,
    grayscale and blur keeps the bright side, so _flipped reads the flip."""
    return torch.linspace(220, 30, size).round().to(torch.uint8).expand(n, 3, size, size).clone()


@pytest.mark.parametrize("kind", ["moco_v1", "moco_v2"])
def test_moco_views_flip_independently_half_the_time(kind):
    torch.manual_seed(7)
    for (x1, x2), n in ((_batched("cifar", _ramp(N), kind), N), (_per_image("cifar", _ramp(400), kind), 400)):
        f1, f2 = _flipped(x1, "cifar").float(), _flipped(x2, "cifar").float()
        sd = 0.5 / math.sqrt(n)
        assert abs(f1.mean() - 0.5) < 4 * sd and abs(f2.mean() - 0.5) < 4 * sd, (f1.mean(), f2.mean())
        # uncorrelated (AMDIM's views share theirs: correlation 1); the correlation's sd is ~ 1 / sqrt(n)
        assert abs(torch.corrcoef(torch.stack([f1, f2]))[0, 1]) < 4 / math.sqrt(n)


def test_everything_but_the_flip_is_drawn_per_view():
    torch.manual_seed(2)
    x1, x2 = _batched("cifar", _images(200, 32))
    assert (x1 - x2).abs().amax(dim=(1, 2, 3)).gt(1e-4).float().mean() > 0.9


def test_crop_boxes_follow_random_resized_crop():
    torch.manual_seed(3)
    n, h, w = 4000, 96, 120
    top, left, bh, bw = augment.sample_crop_boxes(n, h, w, (0.3, 1.0), (0.7, 1.4))
    assert ((top >= 0) & (left >= 0) & (top + bh <= h) & (left + bw <= w)).all()
    ours_area = (bh * bw).float() / (h * w)
    ours_ratio = torch.log(bw.float() / bh.float())
    rrc = T.RandomResizedCrop(64, scale=(0.3, 1.0), ratio=(0.7, 1.4))
    img = torch.zeros(3, h, w)
    ref = torch.tensor([rrc.get_params(img, rrc.scale, rrc.ratio) for _ in range(n)], dtype=torch.float32)
    ref_area = ref[:, 2] * ref[:, 3] / (h * w)
    ref_ratio = torch.log(ref[:, 3] / ref[:, 2])
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    assert torch.allclose(torch.quantile(ours_area, qs), torch.quantile(ref_area, qs), atol=0.03)
    assert torch.allclose(torch.quantile(ours_ratio, qs), torch.quantile(ref_ratio, qs), atol=0.04)
    # horizontal position of the box centre: uniform over the free range, as torchvision
    ours_x = ((left + bw / 2) / w).float()
    ref_x = (ref[:, 1] + ref[:, 3] / 2) / w
    assert torch.allclose(torch.quantile(ours_x, qs), torch.quantile(ref_x, qs), atol=0.03)


def test_translate_is_a_crop_of_the_reflect_padded_batch():
    torch.manual_seed(4)
    x = torch.rand(64, 3, 32, 32)
    out = augment.random_translate(x, 4, p=1.0)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    offsets = set()
    for b in range(64):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(out[b], padded[b, :, dy:dy + 32, dx:dx + 32])]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 20
    assert torch.equal(augment.random_translate(x, 4, p=0.0), x)


def test_hue_shift_matches_torchvision_on_one_image():
    torch.manual_seed(5)
    x = torch.rand(1, 3, 16, 16)
    for f in (-0.2, 0.05, 0.17):
        ours = augment._hue(x, torch.tensor([f]).view(1, 1, 1, 1))
        ref = T.functional.adjust_hue(x[0], f)
        assert torch.allclose(ours[0], ref, atol=1e-5)


def _hue_probe_images(n, size=12, seed=5):
    """Random float images (n, 3, size, size) whose first row holds the pixels where HSV's hue is decided by a
    tie or is undefined: black, white, grey, the primaries and secondaries, two channels tied for the largest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    special = torch.tensor([[0, 0, 0], [1, 1, 1], [.5, .5, .5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
                            [0, 1, 1], [1, 0, 1], [.7, .7, .2], [.3, .8, .8], [.6, .1, .6]])
    x[:, :, 0, :len(special)] = special.T
    return x


def test_hue_shift_matches_torchvision_per_image():
    """_hue_ (no HSV saturation or value formed) against torchvision's adjust_hue (RGB -> HSV -> RGB) image by
    image, shifts over the whole range; samples that do not take it come back unchanged, bit for bit."""
    x = _hue_probe_images(12)
    shifts = torch.tensor([-0.5, -0.4, -0.2, -0.05, 0.0, 0.01, 0.1, 0.17, 0.25, 0.33, 0.45, 0.5])
    apply = torch.arange(12) % 4 != 3
    got = augment._hue_(x.clone(), 6 * shifts, apply)
    for i in range(12):
        if apply[i]:
            ref = T.functional.adjust_hue(x[i], shifts[i].item())
            assert torch.allclose(got[i], ref, atol=2e-6), (i, (got[i] - ref).abs().max())
        else:
            assert torch.equal(got[i], x[i])


def test_luma_is_itu_601():
    x = torch.rand(3, 3, 5, 7)
    ref = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(augment._luma(x)[:, 0], ref, atol=1e-6)


_TV_MODES = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_crop_resampling_matches_torchvisions_antialiased_resized_crop(mode):
    """crop_weights + _resample (two matmuls) against torchvision's resized_crop(antialias=True) image by image
    (torchvision's tensor resize with antialiasing is PIL's, in float): boxes from the whole image to a few
    pixels, shrinking and enlarging, to 16 and 40 px; the uint8 input with the 1/255 in the weights too."""
    torch.manual_seed(13)
    n, h, w = 24, 40, 52
    images = (torch.rand(n, 3, h, w) * 255).round().to(torch.uint8)
    x = images.float() / 255
    for size in (16, 40):
        top, left, bh, bw = augment.sample_crop_boxes(n, h, w, (0.02, 1.0), (0.5, 2.0))
        top[0], left[0], bh[0], bw[0] = 0, 0, h, w                  # the whole image
        top[1], left[1], bh[1], bw[1] = 5, 7, 3, 2                  # a tiny box
        rows, cols = augment.crop_weights((top, left, bh, bw), h, w, size, mode)
        got = augment._resample(x, rows, cols, out=torch.empty(n, 3, size, size))
        got8 = augment._resample(images, augment._scaled(rows, 1 / 255), cols, out=torch.empty(n, 3, size, size))
        for i in range(n):
            ref = TF2.resized_crop(x[i], top[i].item(), left[i].item(), bh[i].item(), bw[i].item(),
                                   [size, size], _TV_MODES[mode], antialias=True)
            assert torch.allclose(got[i], ref, atol=1e-5), (size, i, (got[i] - ref).abs().max())
            assert torch.allclose(got8[i], ref, atol=1e-5)


def test_crop_resampling_is_pils_up_to_its_8_bit_rounding():
    """The per-image path resizes the crop with PIL (bicubic, in 8 bits: rounded, and clipped to 0..255, after
    each axis): under half a level apart on average, a few levels at most where PIL clipped its first pass's
    overshoot, and zero for a box already 64 px square."""
    torch.manual_seed(14)
    images = _images(12, 96)
    top, left, bh, bw = augment.sample_crop_boxes(12, 96, 96, (0.3, 1.0), (0.7, 1.4))
    top[0], left[0], bh[0], bw[0] = 10, 20, 64, 64
    rows, cols = augment.crop_weights((top, left, bh, bw), 96, 96, 64, "bicubic")
    got = augment._resample(images, augment._scaled(rows, 1 / 255), cols, out=torch.empty(12, 3, 64, 64))
    for i in range(12):
        box = (left[i].item(), top[i].item(), left[i].item() + bw[i].item(), top[i].item() + bh[i].item())
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy()).crop(box).resize((64, 64), Image.BICUBIC)
        levels = (got[i].clamp(0, 1) * 255 - torch.from_numpy(np.array(pil)).permute(2, 0, 1)).abs()
        assert levels.mean() < 0.5 and levels.max() < 4 and (levels > 1.01).float().mean() < 0.01, i
        if i == 0:
            assert levels.max() < 1e-3


def test_folded_flips_mirror_the_source_or_the_view():
    """AMDIM's flip comes before the crop (the source's columns read mirrored), MoCo's and CMC's after it (the
    view's columns reversed); both are folded into the column weights."""
    torch.manual_seed(15)
    x = torch.rand(6, 3, 30, 36)
    boxes = augment.sample_crop_boxes(6, 30, 36, (0.3, 1.0), (0.7, 1.4))
    rows, cols = augment.crop_weights(boxes, 30, 36, 20, "bicubic")
    flip = torch.tensor([True, False, True, True, False, False])

    def resample(x, cols):
        return augment._resample(x, rows, cols, out=torch.empty(6, 3, 20, 20))
    plain = resample(x, cols)
    source_flipped = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.allclose(resample(x, augment._mirror_input(cols, flip, 36)), resample(source_flipped, cols),
                          atol=1e-6)
    view_flipped = torch.where(flip.view(-1, 1, 1, 1), plain.flip(-1), plain)
    assert torch.allclose(resample(x, augment._mirror_output(cols, flip)), view_flipped, atol=1e-6)


@pytest.mark.parametrize("kind", augment.VIEW_KINDS)
def test_views_do_not_depend_on_the_cpu_chunk_size(kind, monkeypatch):
    """Each sample's result is its own: one chunk of a sample or of the whole batch gives the same views."""
    images = _images(7, 96)
    outs = []
    for chunk_bytes in (1, 1 << 30):
        monkeypatch.setattr(augment, "CPU_CHUNK_BYTES", chunk_bytes)
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
        monkeypatch.setattr(augment, "SKIPS_ON", skips_on)
        torch.manual_seed(18)
        outs.append(augment.make_views(kind, "stl", batched=True)(images))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    monkeypatch.setattr(augment, "SKIPS_ON", ("cpu",))
    assert all(v.shape[0] == 0 for v in augment.make_views(kind, "stl", batched=True)(images[:0]))


def test_runs_are_the_stretches_of_consecutive_takers():
    takes = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
    assert augment._runs(takes) == [slice(0, 2), slice(3, 4), slice(6, 9)]
    assert augment._runs(torch.zeros(3, dtype=torch.bool)) == []
    # Sorted by the passes taken, each of the jitter's six passes takes one run of samples.
    coeffs, _, apply = augment.jitter_params(500, 0.4, 0.4, 0.4, 0.1, 0.8, "cpu")
    takes = augment._jitter_takes(coeffs)
    assert (takes.sum(1) == 3 * apply).all()        # a jittered sample scales three times: once per operation
    order = torch.argsort(augment._takes_key(takes), stable=True)
    for k in range(6):
        assert len(augment._runs(takes[order, k])) == 1


def test_blur_matrices_are_the_convolution_with_repeated_edges():
    torch.manual_seed(19)
    kernels = torch.rand(4, 7)
    m = augment.blur_matrices(kernels, 10)
    for b in range(4):
        for i in range(10):
            row = torch.zeros(10)
            for t in range(7):
                row[min(max(i + t - 3, 0), 9)] += kernels[b, t]
            assert torch.allclose(m[b, i], row), (b, i)


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
    boxes = augment.sample_crop_boxes(40, 96, 96, (0.3, 1.0), (0.7, 1.4))
    rows, cols = augment.crop_weights(boxes, 96, 96, 64, "bicubic")
    jitter = augment.jitter_params(40, 0.4, 0.4, 0.4, 0.2, 0.8, "cpu")
    blur = augment.blur_kernels(40, (0.1, 2.0), 0.5, "cpu")

    def passes(images, rows, cols, jitter, blur):
        x = augment._resample(images, augment._scaled(rows, 1 / 255), cols,
                              out=torch.empty(40, 3, 64, 64, device=images.device)).clamp_(0, 1)
        x = augment._blur_(augment._color_jitter_(x, *jitter), blur)
        return x, augment._lab_(x.clone(), augment._LAB_SCALE, augment._LAB_SHIFT)
    cpu = passes(images, rows, cols, jitter, blur)
    gpu = passes(*(t.cuda() if isinstance(t, torch.Tensor) else tuple(u.cuda() for u in t)
                   for t in (images, rows, cols, jitter, blur)))
    for c, g in zip(cpu, gpu):
        assert torch.allclose(c, g.cpu(), atol=1e-4), (c - g.cpu()).abs().max()


def test_saturation_contrast_brightness_match_torchvision_on_float_images():
    torch.manual_seed(6)
    x = torch.rand(1, 3, 16, 16)
    f = torch.tensor([1.3]).view(1, 1, 1, 1)
    F = T.functional
    assert torch.allclose(augment._brightness(x, f)[0], F.adjust_brightness(x[0], 1.3), atol=1e-6)
    # torchvision's tensor path weighs red 0.2989, PIL (the per-image recipe) and we 0.299: 1e-3 apart at most.
    assert torch.allclose(augment._saturation(x, f)[0], F.adjust_saturation(x[0], 1.3), atol=1e-3)
    assert torch.allclose(augment._contrast(x, f)[0], F.adjust_contrast(x[0], 1.3), atol=1e-3)


def test_fast_autoaugment_policy_table():
    policy = augment.fast_autoaugment_policy()
    assert len(policy) == 498 and all(len(sub) == 2 for sub in policy)
    for sub in policy:
        for name, prob, magnitude in sub:
            assert name in augment._FAA_RANGES and 0 <= prob <= 1 and 0 <= magnitude <= 1
    assert policy[0] == (("ShearY", 0.14143816458479197, 0.513124791615952),
                         ("Sharpness", 0.9290316227291179, 0.9788406212603302))


def test_fast_autoaugment_operations_map_magnitudes():
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    same = augment._faa_op(img, "Brightness", 0.5)           # factor 1.0: identity
    assert np.array_equal(np.asarray(same), np.asarray(img))
    posterized = np.asarray(augment._faa_op(img, "Posterize", 0.0))   # 4 bits kept
    assert np.all(posterized % 16 == 0)
    solarized = np.asarray(augment._faa_op(img, "Solarize", 1.0))     # threshold 256: unchanged
    assert np.array_equal(solarized, np.asarray(img))
    torch.manual_seed(0)
    cut = np.asarray(augment._faa_op(img, "Cutout", 1.0))             # side 0.2 * 64 px
    filled = np.all(cut == [125, 123, 114], axis=-1)
    assert 0 < filled.sum() <= 13 * 13 + 30


def test_gaussian_blur_matches_a_direct_convolution():
    torch.manual_seed(8)
    h, w, radius = 20, 24, 6
    x = torch.rand(3, 3, h, w)
    sigmas = (0.3, 1.0, 2.0)
    got = augment.gaussian_blur(x, torch.tensor(sigmas), radius)
    for b, sigma in enumerate(sigmas):
        taps = [math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)]
        k = [v / sum(taps) for v in taps]
        ref = torch.zeros(3, h, w)
        for i in range(2 * radius + 1):          # a direct 2-D convolution, edge pixels repeated
            rows = (torch.arange(h) + i - radius).clamp(0, h - 1)
            for j in range(2 * radius + 1):
                cols = (torch.arange(w) + j - radius).clamp(0, w - 1)
                ref += k[i] * k[j] * x[b][:, rows][:, :, cols]
        assert torch.allclose(got[b], ref, atol=1e-5)


def test_gaussian_blur_is_close_to_pils_at_the_same_sigma():
    # The per-image recipe blurs with PIL's GaussianBlur (three box blurs of the same variance).
    images = _images(20, 32, seed=3)
    for sigma in (0.5, 1.0, 2.0):
        ref = torch.stack([torch.from_numpy(np.array(Image.fromarray(img.permute(1, 2, 0).numpy())
                                                     .filter(ImageFilter.GaussianBlur(radius=sigma))))
                           for img in images]).permute(0, 3, 1, 2).float() / 255
        got = augment.gaussian_blur(images.float() / 255, torch.full((20,), sigma), radius=6)
        assert (got - ref).abs().mean() < 0.01, sigma


def test_blur_sigma_is_drawn_per_sample_and_applied_with_p():
    torch.manual_seed(9)
    n, size = 1000, 25
    x = torch.zeros(n, 1, size, size)
    x[:, :, size // 2, size // 2] = 1                # a point: the output is the sample's 2-D kernel
    out = augment.random_gaussian_blur(x, (0.1, 2.0), p=1.0)
    t = (torch.arange(size) - size // 2).float()
    sd = ((out.sum(dim=(1, 2)) * t ** 2).sum(1) / out.sum(dim=(1, 2, 3))).sqrt()     # horizontal spread
    # sigma uniform on (0.1, 2): quartiles 0.575, 1.05, 1.525 (the sampled kernel's sd is a little less)
    qs = torch.quantile(sd, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(qs, torch.tensor([0.575, 1.05, 1.525]), atol=0.08), qs
    assert sd.std() > 0.4                            # drawn per sample, not once for the batch
    half = augment.random_gaussian_blur(x, (0.5, 2.0), p=0.5)
    blurred = (half - x).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert abs(blurred.float().mean() - 0.5) < 0.06


@pytest.mark.parametrize("kind", RGB_KINDS)
def test_make_views_returns_the_documented_callables(kind):
    torch.manual_seed(10)
    img = Image.fromarray(_images(1, 96)[0].permute(1, 2, 0).numpy())
    mean_std = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    views = augment.make_views(kind, "stl", mean_std=mean_std)(img)
    assert isinstance(views, tuple) and len(views) == 2
    assert all(v.shape == (3, 64, 64) and v.dtype == torch.float32 for v in views)
    batched = augment.make_views(kind, "stl", mean_std=mean_std, batched=True)
    assert torch.allclose(batched.mean, torch.tensor(0.5)) and torch.allclose(batched.std, torch.tensor(0.25))
    n = 1 if kind == "swav" else 3         # SwAV's n_views takes the first of its crops (by default two at S px)
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


def test_policy_file_skips_comments_and_names_its_problems(tmp_path):
    path = tmp_path / "policy.txt"
    path.write_text("# a header\n\nShearX 0.5 0.1 ; Invert 0.25 0.75\n")
    assert augment.fast_autoaugment_policy(str(path)) == ((("ShearX", 0.5, 0.1), ("Invert", 0.25, 0.75)),)
    bad = tmp_path / "bad.txt"
    bad.write_text("ShearX 0.5 0.1 ; Invert 0.25 0.75\nShearX 0.5 ; Blur 0.1 0.2\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        augment.fast_autoaugment_policy(str(bad))
    with pytest.raises(UserError, match="missing"):
        augment.fast_autoaugment_policy(str(tmp_path / "absent.txt"))


# ----------------------------------------------------------------------------------------------------------
# CMC: Lab views.

def _f(t):
    delta = 6 / 29
    return t ** (1 / 3) if t > delta ** 3 else t / (3 * delta ** 2) + 4 / 29


def _naive_lab(r, g, b):
    """One sRGB pixel (floats in [0, 1]) -> (L, a, b) under D65, written out term by term."""
    linear = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in (r, g, b)]
    m = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
    x, y, z = (sum(m[i][j] * linear[j] for j in range(3)) for i in range(3))
    fx, fy, fz = _f(x / 0.95047), _f(y / 1.0), _f(z / 1.08883)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def _lab_test_pixels():
    """uint8 (1, 3, 8, 8) random pixels plus black, white, the primaries and a dark grey in the linear segment."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (1, 3, 8, 8), generator=g, dtype=torch.uint8)
    special = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [2, 2, 2]],
                           dtype=torch.uint8)
    x[0, :, 0, :6] = special.T
    return x


def test_rgb_to_lab_matches_the_naive_formula():
    x = _lab_test_pixels()
    got = augment.rgb_to_lab(x)
    assert got.shape == (1, 3, 8, 8) and got.dtype == torch.float32
    for i in range(8):
        for j in range(8):
            ref = _naive_lab(*(x[0, c, i, j].item() / 255 for c in range(3)))
            assert got[0, :, i, j].tolist() == pytest.approx(ref, abs=1e-3), (i, j)
    # Float input in [0, 1] is the same image; the batched CMC view's in-place variant folds normalize_lab in.
    assert torch.allclose(augment.rgb_to_lab(x.float() / 255), got)
    folded = augment._lab_(x.float() / 255, augment._LAB_SCALE, augment._LAB_SHIFT)
    assert torch.allclose(folded, augment.normalize_lab(got), atol=1e-5)
    assert got[0, :, 0, 0].tolist() == pytest.approx([0, 0, 0], abs=1e-3)
    assert got[0, :, 0, 1].tolist() == pytest.approx([100, 0, 0], abs=1e-2)


def test_rgb_to_lab_matches_scikit_image():
    color = pytest.importorskip("skimage.color")
    x = _lab_test_pixels()
    ref = color.rgb2lab(x[0].permute(1, 2, 0).numpy())          # uint8 HWC, as the seed calls it
    got = augment.rgb_to_lab(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() < 1e-3


def test_cmc_views_are_normalised_lab_channels_of_one_shared_crop():
    """Per image and batched: (L (1, S, S), ab (2, S, S)); a constant image gives its normalised Lab everywhere
    whatever the crop and flip; L and ab come from one crop (a left-right split image stays split alike)."""
    torch.manual_seed(4)
    colour = torch.tensor([200, 30, 90], dtype=torch.uint8)
    lab = augment.normalize_lab(augment.rgb_to_lab(colour.view(1, 3, 1, 1)))[0]
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
    red_by_l = big_l[:, 0] > augment.normalize_lab(torch.zeros(1, 3, 1, 1))[0, 0] + 0.5
    red_by_a = ab[:, 0] > 0.5
    # Pixels resampled across the edge mix both colours, and L and a cross their thresholds at different mixes.
    assert (red_by_l == red_by_a).float().mean() > 0.97
    left = red_by_l[:, :, :4].float().mean(dim=(1, 2)) > red_by_l[:, :, -4:].float().mean(dim=(1, 2))
    assert 0.4 < left.float().mean().item() < 0.6            # flipped half the time


def test_lab_normalisation_constants_are_the_seeds():
    assert augment.LAB_MEAN == pytest.approx((50, 6.025, -6.6895))
    assert augment.LAB_STD == pytest.approx((50, 92.208, 101.1675))


def test_lab_to_rgb_inverts_rgb_to_lab_and_view_pictures_have_three_channels():
    x = torch.rand(2, 3, 6, 6)
    assert torch.allclose(augment.lab_to_rgb(augment.rgb_to_lab(x)), x, atol=1e-4)
    views = augment.make_views("cmc", "cifar", batched=True)(_images(3, 40))
    grey, colour = augment.cmc_views_to_rgb(*views)
    assert grey.shape == colour.shape == (3, 3, 32, 32)
    assert 0 <= grey.min() and grey.max() <= 1 and 0 <= colour.min() and colour.max() <= 1
