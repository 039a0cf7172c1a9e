"""kornia.augmentation's ops against torchvision's recipe and imageops.py's batched ops: what each draws and
computes, the facts behind keeping our own ops (bench/augment.py --kornia times them). kornia is not a
requirement: without it these tests are skipped."""
import math

import pytest
import torch
import torchvision.transforms.functional as TF

import imageops

kornia = pytest.importorskip("kornia")
K = kornia.augmentation


def test_color_jitter_draws_one_order_for_the_whole_batch():
    # torchvision draws the order of its four operations per image, and so does imageops.color_jitter (per
    # sample); kornia's ColorJitter draws one permutation per call, shared by every image of the batch.
    params = K.ColorJitter(0.4, 0.4, 0.4, 0.1).forward_parameters(torch.Size((256, 3, 8, 8)))
    assert params["order"].shape == (4,)
    assert params["brightness_factor"].shape == (256,)      # factors are per sample


def test_color_jitter_operations_follow_torchvision():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    enhance = kornia.enhance
    for f in (-0.3, 0.1):      # ColorJitter's hue is in turns, as torchvision's; kornia's function in radians
        assert torch.allclose(enhance.adjust_hue(x, torch.tensor([f * 2 * math.pi])), TF.adjust_hue(x[0], f),
                              atol=1e-4)
    # Both weigh luma 0.299 / 0.587 / 0.114; torchvision's tensor path 0.2989 / 0.587 / 0.114.
    assert torch.allclose(enhance.adjust_saturation_with_gray_subtraction(x, torch.tensor([1.3])),
                          TF.adjust_saturation(x[0], 1.3), atol=1e-3)
    assert torch.allclose(enhance.adjust_contrast_with_mean_subtraction(x, torch.tensor([0.7])),
                          TF.adjust_contrast(x[0], 0.7), atol=1e-3)


def test_crop_boxes_follow_ours_and_torchvisions():
    torch.manual_seed(1)
    n, h, w = 4000, 96, 120
    src = K.RandomResizedCrop((64, 64), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)).forward_parameters(
        torch.Size((n, 3, h, w)))["src"]                      # (n, 4, 2) corners (x, y), inclusive
    kw, kh = src[:, 1, 0] - src[:, 0, 0] + 1, src[:, 3, 1] - src[:, 0, 1] + 1
    _, _, oh, ow = imageops.sample_crop_boxes(n, h, w, (0.2, 1.0), (3 / 4, 4 / 3))
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    for ours, theirs in (((oh * ow).float() / (h * w), kh * kw / (h * w)),
                         (torch.log(ow.float() / oh.float()), torch.log(kw / kh))):
        assert torch.allclose(torch.quantile(ours, qs), torch.quantile(theirs.float(), qs), atol=0.04)


def test_blur_draws_sigma_per_sample_and_matches_ours():
    torch.manual_seed(2)
    x = torch.rand(64, 3, 20, 20)
    blur = K.RandomGaussianBlur((13, 13), (0.1, 2.0), border_type="replicate", p=1.0)
    params = blur.forward_parameters(x.shape)
    assert params["sigma"].shape == (64,) and params["sigma"].std() > 0.3
    assert torch.allclose(blur(x, params=params), imageops.gaussian_blur(x, params["sigma"], radius=6), atol=1e-5)


def test_grayscale_uses_the_same_luma():
    x = torch.rand(8, 3, 16, 16)
    assert torch.allclose(K.RandomGrayscale(p=1.0)(x), imageops.random_grayscale(x, p=1.0), atol=1e-6)
