"""imageops.py: each batched operation against an independent reference: RandomResizedCrop's boxes against
torchvision's, the crop's resampling against torchvision's antialiased resized_crop and PIL's resize, the
reflect-padded translation, the folded flips, hue, saturation, contrast and brightness against torchvision's, the
Gaussian blur against a direct convolution and PIL's, Lab against the per-pixel formula and scikit-image; the runs
of samples a pass takes."""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF2
from PIL import Image, ImageFilter

import imageops
from test_augment import _images


def test_crop_boxes_follow_random_resized_crop():
    torch.manual_seed(3)
    n, h, w = 4000, 96, 120
    top, left, bh, bw = imageops.sample_crop_boxes(n, h, w, (0.3, 1.0), (0.7, 1.4))
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
    out = imageops.random_translate(x, 4, p=1.0)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    offsets = set()
    for b in range(64):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(out[b], padded[b, :, dy:dy + 32, dx:dx + 32])]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 20
    assert torch.equal(imageops.random_translate(x, 4, p=0.0), x)


def test_hue_shift_matches_torchvision_on_one_image():
    torch.manual_seed(5)
    x = torch.rand(1, 3, 16, 16)
    for f in (-0.2, 0.05, 0.17):
        ours = imageops._hue(x, torch.tensor([f]).view(1, 1, 1, 1))
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
    got = imageops._hue_(x.clone(), 6 * shifts, apply)
    for i in range(12):
        if apply[i]:
            ref = T.functional.adjust_hue(x[i], shifts[i].item())
            assert torch.allclose(got[i], ref, atol=2e-6), (i, (got[i] - ref).abs().max())
        else:
            assert torch.equal(got[i], x[i])


def test_luma_is_itu_601():
    x = torch.rand(3, 3, 5, 7)
    ref = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(imageops._luma(x)[:, 0], ref, atol=1e-6)


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
        top, left, bh, bw = imageops.sample_crop_boxes(n, h, w, (0.02, 1.0), (0.5, 2.0))
        top[0], left[0], bh[0], bw[0] = 0, 0, h, w                  # the whole image
        top[1], left[1], bh[1], bw[1] = 5, 7, 3, 2                  # a tiny box
        rows, cols = imageops.crop_weights((top, left, bh, bw), h, w, size, mode)
        got = imageops._resample(x, rows, cols, out=torch.empty(n, 3, size, size))
        got8 = imageops._resample(images, imageops._scaled(rows, 1 / 255), cols, out=torch.empty(n, 3, size, size))
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
    top, left, bh, bw = imageops.sample_crop_boxes(12, 96, 96, (0.3, 1.0), (0.7, 1.4))
    top[0], left[0], bh[0], bw[0] = 10, 20, 64, 64
    rows, cols = imageops.crop_weights((top, left, bh, bw), 96, 96, 64, "bicubic")
    got = imageops._resample(images, imageops._scaled(rows, 1 / 255), cols, out=torch.empty(12, 3, 64, 64))
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
    boxes = imageops.sample_crop_boxes(6, 30, 36, (0.3, 1.0), (0.7, 1.4))
    rows, cols = imageops.crop_weights(boxes, 30, 36, 20, "bicubic")
    flip = torch.tensor([True, False, True, True, False, False])

    def resample(x, cols):
        return imageops._resample(x, rows, cols, out=torch.empty(6, 3, 20, 20))
    plain = resample(x, cols)
    source_flipped = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.allclose(resample(x, imageops._mirror_input(cols, flip, 36)), resample(source_flipped, cols),
                          atol=1e-6)
    view_flipped = torch.where(flip.view(-1, 1, 1, 1), plain.flip(-1), plain)
    assert torch.allclose(resample(x, imageops._mirror_output(cols, flip)), view_flipped, atol=1e-6)


def test_runs_are_the_stretches_of_consecutive_takers():
    takes = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
    assert imageops._runs(takes) == [slice(0, 2), slice(3, 4), slice(6, 9)]
    assert imageops._runs(torch.zeros(3, dtype=torch.bool)) == []
    # Sorted by the passes taken, each of the jitter's six passes takes one run of samples.
    coeffs, _, apply = imageops.jitter_params(500, 0.4, 0.4, 0.4, 0.1, 0.8, "cpu")
    takes = imageops._jitter_takes(coeffs)
    assert (takes.sum(1) == 3 * apply).all()        # a jittered sample scales three times: once per operation
    order = torch.argsort(imageops._takes_key(takes), stable=True)
    for k in range(6):
        assert len(imageops._runs(takes[order, k])) == 1


def test_blur_matrices_are_the_convolution_with_repeated_edges():
    torch.manual_seed(19)
    kernels = torch.rand(4, 7)
    m = imageops.blur_matrices(kernels, 10)
    for b in range(4):
        for i in range(10):
            row = torch.zeros(10)
            for t in range(7):
                row[min(max(i + t - 3, 0), 9)] += kernels[b, t]
            assert torch.allclose(m[b, i], row), (b, i)


def test_saturation_contrast_brightness_match_torchvision_on_float_images():
    torch.manual_seed(6)
    x = torch.rand(1, 3, 16, 16)
    f = torch.tensor([1.3]).view(1, 1, 1, 1)
    F = T.functional
    assert torch.allclose(imageops._brightness(x, f)[0], F.adjust_brightness(x[0], 1.3), atol=1e-6)
    # torchvision's tensor path weighs red 0.2989, PIL (the per-image recipe) and we 0.299: 1e-3 apart at most.
    assert torch.allclose(imageops._saturation(x, f)[0], F.adjust_saturation(x[0], 1.3), atol=1e-3)
    assert torch.allclose(imageops._contrast(x, f)[0], F.adjust_contrast(x[0], 1.3), atol=1e-3)


def test_gaussian_blur_matches_a_direct_convolution():
    torch.manual_seed(8)
    h, w, radius = 20, 24, 6
    x = torch.rand(3, 3, h, w)
    sigmas = (0.3, 1.0, 2.0)
    got = imageops.gaussian_blur(x, torch.tensor(sigmas), radius)
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
        got = imageops.gaussian_blur(images.float() / 255, torch.full((20,), sigma), radius=6)
        assert (got - ref).abs().mean() < 0.01, sigma


def test_blur_sigma_is_drawn_per_sample_and_applied_with_p():
    torch.manual_seed(9)
    n, size = 1000, 25
    x = torch.zeros(n, 1, size, size)
    x[:, :, size // 2, size // 2] = 1                # a point: the output is the sample's 2-D kernel
    out = imageops.random_gaussian_blur(x, (0.1, 2.0), p=1.0)
    t = (torch.arange(size) - size // 2).float()
    sd = ((out.sum(dim=(1, 2)) * t ** 2).sum(1) / out.sum(dim=(1, 2, 3))).sqrt()     # horizontal spread
    # sigma uniform on (0.1, 2): quartiles 0.575, 1.05, 1.525 (the sampled kernel's sd is a little less)
    qs = torch.quantile(sd, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(qs, torch.tensor([0.575, 1.05, 1.525]), atol=0.08), qs
    assert sd.std() > 0.4                            # drawn per sample, not once for the batch
    half = imageops.random_gaussian_blur(x, (0.5, 2.0), p=0.5)
    blurred = (half - x).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert abs(blurred.float().mean() - 0.5) < 0.06


# ----------------------------------------------------------------------------------------------------------
# CIE Lab (CMC's views).

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
    got = imageops.rgb_to_lab(x)
    assert got.shape == (1, 3, 8, 8) and got.dtype == torch.float32
    for i in range(8):
        for j in range(8):
            ref = _naive_lab(*(x[0, c, i, j].item() / 255 for c in range(3)))
            assert got[0, :, i, j].tolist() == pytest.approx(ref, abs=1e-3), (i, j)
    # Float input in [0, 1] is the same image; the batched CMC view's in-place variant folds normalize_lab in.
    assert torch.allclose(imageops.rgb_to_lab(x.float() / 255), got)
    folded = imageops._lab_(x.float() / 255, imageops._LAB_SCALE, imageops._LAB_SHIFT)
    assert torch.allclose(folded, imageops.normalize_lab(got), atol=1e-5)
    assert got[0, :, 0, 0].tolist() == pytest.approx([0, 0, 0], abs=1e-3)
    assert got[0, :, 0, 1].tolist() == pytest.approx([100, 0, 0], abs=1e-2)


def test_rgb_to_lab_matches_scikit_image():
    color = pytest.importorskip("skimage.color")
    x = _lab_test_pixels()
    ref = color.rgb2lab(x[0].permute(1, 2, 0).numpy())          # uint8 HWC, as the seed calls it
    got = imageops.rgb_to_lab(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() < 1e-3


def test_lab_normalisation_constants_are_the_seeds():
    assert imageops.LAB_MEAN == pytest.approx((50, 6.025, -6.6895))
    assert imageops.LAB_STD == pytest.approx((50, 92.208, 101.1675))
