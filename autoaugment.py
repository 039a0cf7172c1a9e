"""Fast AutoAugment (Lim et al. 2019): the published ImageNet policy (assets/fast_autoaugment_imagenet.txt) on
PIL images, one sub-policy per call, its random draws from torch's global generator.
"""
import functools
import os

import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from utils import UserError

FAA_POLICY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                               "fast_autoaugment_imagenet.txt")


class FastAutoAugment:
    """Apply one uniformly chosen sub-policy of the Fast AutoAugment ImageNet policy to a PIL image.

    The policy file is read when the first instance is made (in the main process, so that a missing file fails
    before any loader worker starts); each instance keeps the (immutable) policy and pickles with it."""

    def __init__(self):
        self.policy = fast_autoaugment_policy()

    def __call__(self, img):
        sub_policy = self.policy[torch.randint(len(self.policy), (1,)).item()]
        for name, prob, magnitude in sub_policy:
            if torch.rand(1).item() < prob:
                img = _faa_op(img, name, magnitude)
        return img


# Parameter range of each operation: an applied op gets low + magnitude * (high - low); the geometric ones
# (marked True) then flip sign with probability 0.5. From kakaobrain/fast-autoaugment's augmentations.py, the
# policy's source (see the header of assets/fast_autoaugment_imagenet.txt).
_FAA_RANGES = {
    "ShearX": (-0.3, 0.3, True), "ShearY": (-0.3, 0.3, True), "TranslateX": (-0.45, 0.45, True),
    "TranslateY": (-0.45, 0.45, True), "Rotate": (-30.0, 30.0, True), "AutoContrast": (0.0, 1.0, False),
    "Invert": (0.0, 1.0, False), "Equalize": (0.0, 1.0, False), "Solarize": (0.0, 256.0, False),
    "Posterize": (4.0, 8.0, False), "Contrast": (0.1, 1.9, False), "Color": (0.1, 1.9, False),
    "Brightness": (0.1, 1.9, False), "Sharpness": (0.1, 1.9, False), "Cutout": (0.0, 0.2, False),
}
_CUTOUT_FILL = (125, 123, 114)


def _faa_op(img, name, magnitude):
    """One Fast AutoAugment operation on a PIL RGB image, its parameter mapped from magnitude in [0, 1]."""
    low, high, signed = _FAA_RANGES[name]
    v = low + magnitude * (high - low)
    if signed and torch.rand(1).item() < 0.5:
        v = -v
    w, h = img.size
    affine = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
              "TranslateX": (1, 0, v * w, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, v * h)}
    if name in affine:
        return img.transform(img.size, Image.AFFINE, affine[name])
    if name == "Rotate":
        return img.rotate(v)
    if name in ("AutoContrast", "Invert", "Equalize"):
        return {"AutoContrast": ImageOps.autocontrast, "Invert": ImageOps.invert,
                "Equalize": ImageOps.equalize}[name](img)
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    if name == "Posterize":
        return ImageOps.posterize(img, int(v))
    if name == "Cutout":
        return _cutout(img, v * w)
    return getattr(ImageEnhance, name)(img).enhance(v)      # Contrast, Color, Brightness, Sharpness


def _cutout(img, side):
    """Fill a square of `side` pixels centred at a uniformly random point (clipped to the image)."""
    if side <= 0:
        return img
    w, h = img.size
    cx, cy = torch.rand(1).item() * w, torch.rand(1).item() * h
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill=_CUTOUT_FILL)
    return img


@functools.lru_cache(maxsize=None)
def fast_autoaugment_policy(path=FAA_POLICY_FILE):
    """The Fast AutoAugment ImageNet policy, read from `path` on first use: a tuple of 498 sub-policies, each a
    tuple of two (op name, probability, magnitude) triples. Lines of the file are `Op prob magnitude ; Op prob
    magnitude`; lines starting with # and blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"the Fast AutoAugment policy file {path} is missing: it ships with the code (assets/ next "
                        f"to autoaugment.py); restore it (git checkout assets/), or choose another --aug") from None
    policy = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            policy.append(_parse_sub_policy(line))
        except ValueError:
            raise ValueError(f"{path}:{number}: expected `Op prob magnitude ; Op prob magnitude` with ops "
                             f"from {', '.join(_FAA_RANGES)}, got {line!r}") from None
    return tuple(policy)


def _parse_sub_policy(line):
    """`Op prob magnitude ; Op prob magnitude` -> ((op, prob, magnitude), ...); ValueError if malformed."""
    sub_policy = []
    for op in line.split(";"):
        name, prob, magnitude = op.split()          # ValueError unless three fields
        if name not in _FAA_RANGES:
            raise ValueError(name)
        sub_policy.append((name, float(prob), float(magnitude)))
    return tuple(sub_policy)