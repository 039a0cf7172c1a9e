"""kornia.augmentation's ops against torchvision's recipe and imageops.py's batched ops: what each draws and
computes, the facts behind keeping our own ops (bench/augment.py --kornia times them). kornia is not a
requirement of the project: install it first.

    .venv/bin/python -m pip install kornia
    .venv/bin/python bench/kornia_parity.py

Prints the versions, then a table: one row per check, what was found (the largest absolute difference between
two outputs, or a shape or spread that kornia draws), the bound it must meet, and ok or MISMATCH. Exits 1 when a
check fails, 2 when kornia is not installed.
"""
import math
import os
import sys

import torch
import torchvision.transforms.functional as TF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # before bench/: `import imageops` is the repository's imageops.py

import imageops  # noqa: E402


def close(name, ours, theirs, atol):
    """A row for two outputs that must agree within torch.allclose(atol=atol): their largest difference."""
    diff = (ours - theirs).abs().max().item()
    return name, f"{diff:.2e}", f"allclose, atol {atol:g}", torch.allclose(ours, theirs, atol=atol)


def fact(name, found, expected, ok):
    return name, str(found), str(expected), bool(ok)


def color_jitter(kornia):
    K = kornia.augmentation
    # torchvision draws the order of its four operations per image, and so does imageops.color_jitter (per
    # sample); kornia's ColorJitter draws one permutation per call, shared by every image of the batch.
    params = K.ColorJitter(0.4, 0.4, 0.4, 0.1).forward_parameters(torch.Size((256, 3, 8, 8)))
    rows = [fact("ColorJitter: order of the operations, per batch", tuple(params["order"].shape), (4,),
                 params["order"].shape == (4,)),
            fact("ColorJitter: brightness factors, per sample", tuple(params["brightness_factor"].shape), (256,),
                 params["brightness_factor"].shape == (256,))]
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    enhance = kornia.enhance
    for f in (-0.3, 0.1):      # ColorJitter's hue is in turns, as torchvision's; kornia's function in radians
        hue = enhance.adjust_hue(x, torch.tensor([f * 2 * math.pi]))
        rows.append(close(f"adjust_hue {f} against torchvision", hue, TF.adjust_hue(x[0], f), 1e-4))
    # Both weigh luma 0.299 / 0.587 / 0.114; torchvision's tensor path 0.2989 / 0.587 / 0.114.
    rows.append(close("adjust_saturation 1.3 against torchvision",
                      enhance.adjust_saturation_with_gray_subtraction(x, torch.tensor([1.3])),
                      TF.adjust_saturation(x[0], 1.3), 1e-3))
    rows.append(close("adjust_contrast 0.7 against torchvision",
                      enhance.adjust_contrast_with_mean_subtraction(x, torch.tensor([0.7])),
                      TF.adjust_contrast(x[0], 0.7), 1e-3))
    return rows


def crop_boxes(kornia):
    """The quantiles of the boxes' areas and log aspect ratios: kornia's RandomResizedCrop against
    imageops.sample_crop_boxes (torchvision's recipe)."""
    torch.manual_seed(1)
    n, h, w = 4000, 96, 120
    src = kornia.augmentation.RandomResizedCrop((64, 64), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)).forward_parameters(
        torch.Size((n, 3, h, w)))["src"]                      # (n, 4, 2) corners (x, y), inclusive
    kw, kh = src[:, 1, 0] - src[:, 0, 0] + 1, src[:, 3, 1] - src[:, 0, 1] + 1
    _, _, oh, ow = imageops.sample_crop_boxes(n, h, w, (0.2, 1.0), (3 / 4, 4 / 3))
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    return [close(f"RandomResizedCrop: quantiles of the {what}", torch.quantile(ours, qs),
                  torch.quantile(theirs.float(), qs), 0.04)
            for what, ours, theirs in (("area fraction", (oh * ow).float() / (h * w), kh * kw / (h * w)),
                                       ("log aspect ratio", torch.log(ow.float() / oh.float()), torch.log(kw / kh)))]


def blur(kornia):
    torch.manual_seed(2)
    x = torch.rand(64, 3, 20, 20)
    op = kornia.augmentation.RandomGaussianBlur((13, 13), (0.1, 2.0), border_type="replicate", p=1.0)
    params = op.forward_parameters(x.shape)
    sigma = params["sigma"]
    return [fact("RandomGaussianBlur: sigma, per sample", tuple(sigma.shape), (64,), sigma.shape == (64,)),
            fact("RandomGaussianBlur: spread of sigma (std)", f"{sigma.std().item():.3f}", "> 0.3",
                 sigma.std() > 0.3),
            close("RandomGaussianBlur against imageops.gaussian_blur", op(x, params=params),
                  imageops.gaussian_blur(x, sigma, radius=6), 1e-5)]


def grayscale(kornia):
    x = torch.rand(8, 3, 16, 16)
    return [close("RandomGrayscale against imageops.random_grayscale", kornia.augmentation.RandomGrayscale(p=1.0)(x),
                  imageops.random_grayscale(x, p=1.0), 1e-6)]


def main():
    try:
        import kornia
    except ImportError:
        print("kornia is not installed: `.venv/bin/python -m pip install kornia`, then run this again",
              file=sys.stderr)
        return 2
    print(f"kornia {kornia.__version__}, torch {torch.__version__}")
    rows = [row for check in (color_jitter, crop_boxes, blur, grayscale) for row in check(kornia)]
    header = ("check", "found", "bound", "")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for name, found, bound, ok in rows:
        print(f"{name.ljust(widths[0])}  {found.rjust(widths[1])}  {bound.ljust(widths[2])}  "
              f"{'ok' if ok else 'MISMATCH'}")
    failed = sum(not ok for *_, ok in rows)
    print(f"{len(rows) - failed} of {len(rows)} checks ok" + (f", {failed} MISMATCH" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
