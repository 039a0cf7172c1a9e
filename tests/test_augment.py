"""augment.py: the batched on-device augmentation against the per-image torchvision recipes (same
distributions), and the Fast AutoAugment policy file."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import augment

N = 1500


def _images(n, size, seed=0):
    """Smooth colourful uint8 images (N, size, size, 3): upsampled random 4x4 colour fields plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = (x + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def _per_image(recipe, images):
    two = augment.TwoViews(augment.train_view_transform(recipe))
    pairs = [two(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def _batched(recipe, images):
    aug = augment.BatchTwoViews(recipe)
    outs = [aug(images[i:i + 250]) for i in range(0, len(images), 250)]
    return torch.cat([a for a, _ in outs]), torch.cat([b for _, b in outs])


def _unnormalize(x, recipe):
    mean, std = augment.NORMALIZATION[recipe]
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def _gray_rate(x, recipe):
    x = _unnormalize(x, recipe)
    return ((x.max(1).values - x.min(1).values).amax(dim=(1, 2)) < 2e-3).float().mean().item()


@pytest.mark.parametrize("recipe,size", [("cifar", 32), ("stl", 96)])
def test_output_statistics_match_the_per_image_recipe(recipe, size):
    torch.manual_seed(0)
    images = _images(N, size)
    ref1, ref2 = _per_image(recipe, images)
    got1, got2 = _batched(recipe, images)
    assert got1.shape == ref1.shape and got1.dtype == torch.float32
    for ref, got in ((ref1, got1), (ref2, got2)):
        ref_mean, got_mean = ref.mean(dim=(0, 2, 3)), got.mean(dim=(0, 2, 3))
        ref_std, got_std = ref.std(dim=(0, 2, 3)), got.std(dim=(0, 2, 3))
        assert torch.allclose(ref_mean, got_mean, atol=0.05), (ref_mean, got_mean)
        assert torch.allclose(ref_std, got_std, atol=0.05), (ref_std, got_std)
        # per-image brightness spread: the jitter's effect on whole images
        assert abs(ref.mean(dim=(1, 2, 3)).std() - got.mean(dim=(1, 2, 3)).std()) < 0.05
    # grayscale in 25 % of views (binomial sd over 3000 views ~ 0.008)
    for rate in (_gray_rate(torch.cat([ref1, ref2]), recipe), _gray_rate(torch.cat([got1, got2]), recipe)):
        assert abs(rate - 0.25) < 0.035, rate


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
