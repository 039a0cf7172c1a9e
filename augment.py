"""All image augmentation: the view recipes of AMDIM, MoCo v1 / v2, CMC and SwAV's multi-crop, each per image (PIL,
torchvision) and batched on the training device, and the Fast AutoAugment ImageNet policy. make_views() picks one.

Three recipes, by encoder input size: "cifar" (32 px), "stl" (64 px) and "imagenet" (128 px); each has its
normalisation (NORMALIZATION). Per-image callables take a PIL RGB image; batched ones take uint8 images
(B, 3, H, W) on any device. Every random parameter is drawn from torch's global generator.
"""
import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from utils import UserError

VIEW_KINDS = ("amdim", "moco_v1", "moco_v2", "cmc", "swav")

AUGMENTATIONS = ("default", "autoaugment", "fast_autoaugment")
RECIPE_SIZE = {"cifar": 32, "stl": 64, "imagenet": 128}          # recipe -> encoder input size (px)
RECIPE_OF_SIZE = {size: recipe for recipe, size in RECIPE_SIZE.items()}
# Per-channel (mean, std) of each recipe's data, for images scaled to [0, 1].
NORMALIZATION = {
    "cifar": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "stl": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# CMC's views are the L and ab channels of the crop in CIE Lab (D65), normalised as the seed (HobbitLong/CMC,
# dataset.py) does the raw Lab values: L by mean 50, std 50; a and b to roughly [-1, 1] over their sRGB gamut.
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)
CMC_CROP_LOW = 0.2      # RandomResizedCrop's smallest area fraction at 32-64 px (the seed's 0.08 is for 224 px)
FAA_POLICY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                               "fast_autoaugment_imagenet.txt")


# ----------------------------------------------------------------------------------------------------------
# Per-image recipes: PIL RGB image in, normalised float tensors (3, S, S) out.

class TwoViews:
    """AMDIM's pair: flip the PIL image (p 0.5) once for both views, then augment each view independently with
    view_transform. Returns a tuple (x1, x2)."""

    def __init__(self, view_transform):
        self.view_transform = view_transform

    def __call__(self, img):
        if torch.rand(1).item() < 0.5:
            img = TF.hflip(img)
        return self.view_transform(img), self.view_transform(img)


def train_view_transform(recipe, aug="default", resize_first=False, mean_std=None):
    """The per-view augmentation of the original code for one recipe (after the shared flip); mean_std
    normalises instead of the recipe's statistics."""
    size = RECIPE_SIZE[recipe]
    ops = []
    if recipe == "cifar":
        if resize_first:  # FOLDER data of another size
            ops += [T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32)]
        # Translate by up to +-4 px with reflection: a 32 px crop of the 4 px reflect-padded image.
        ops.append(T.RandomApply([T.RandomCrop(32, padding=4, padding_mode="reflect")], p=0.8))
    else:
        ops.append(T.RandomResizedCrop(size, scale=(0.3, 1.0), ratio=(0.7, 1.4),
                                       interpolation=T.InterpolationMode.BICUBIC))
    if aug == "autoaugment":
        ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    elif aug == "fast_autoaugment":
        ops.append(FastAutoAugment())
    hue = 0.1 if recipe == "imagenet" else 0.2
    ops += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, hue)], p=0.8), T.RandomGrayscale(p=0.25)]
    return T.Compose(ops + _to_normalized_tensor(recipe, mean_std))


def test_transform(recipe, resize_first=False):
    """Deterministic test-time transform: bicubic resize and centre crop (none for 32 px data)."""
    if recipe == "cifar":
        ops = [T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32)] if resize_first else []
    else:
        resize, size = {"stl": (70, 64), "imagenet": (146, 128)}[recipe]
        ops = [T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
    return T.Compose(ops + _to_normalized_tensor(recipe))


def _to_normalized_tensor(recipe, mean_std=None):
    """ToTensor and Normalize by mean_std = ((3 means), (3 stds)), by default the recipe's."""
    mean, std = mean_std or NORMALIZATION[recipe]
    return [T.ToTensor(), T.Normalize(mean, std)]


class IndependentViews:
    """n_views views of one image, each from its own call of view_transform (no shared parameter): MoCo's pair
    of query and key crops. Returns a tuple."""

    def __init__(self, view_transform, n_views=2):
        self.view_transform, self.n_views = view_transform, n_views

    def __call__(self, img):
        return tuple(self.view_transform(img) for _ in range(self.n_views))


def moco_view_transform(recipe, version, mean_std=None):
    """One view of MoCo v1 (version 1) or v2 (version 2, the seed's --aug-plus) for a PIL image of any size:
    the op order and parameters of SsnL/moco_align_uniform's main_moco.py, output (3, S, S), S the recipe's
    encoder input size.

    v1: RandomResizedCrop(S, scale 0.2-1), RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4), flip.
    v2: RandomResizedCrop(S, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale(0.2),
    GaussianBlur(sigma 0.1-2) with p 0.5, flip. Then ToTensor and Normalize (mean_std, default the recipe's).
    RandomResizedCrop keeps torchvision's defaults, as the seed: ratio 3/4-4/3, bilinear.
    """
    crop = T.RandomResizedCrop(RECIPE_SIZE[recipe], scale=(0.2, 1.0))
    if version == 1:
        ops = [crop, T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    elif version == 2:
        ops = [crop, T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
               T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5)]
    else:
        raise ValueError(f"MoCo version {version!r}: 1 or 2")
    return T.Compose(ops + [T.RandomHorizontalFlip()] + _to_normalized_tensor(recipe, mean_std))


class GaussianBlur:
    """PIL image -> PIL image blurred by PIL's ImageFilter.GaussianBlur with a standard deviation drawn uniform
    in sigma = (low, high) px per call: MoCo v2's (and SimCLR's) blur, as the seed's moco.loader.GaussianBlur.

    PIL's filter (three box blurs matching the Gaussian's variance, edge pixels repeated) needs no kernel size,
    unlike torchvision's T.GaussianBlur; batched, gaussian_blur uses the exact kernel truncated at 3 sigma."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        low, high = self.sigma
        return img.filter(ImageFilter.GaussianBlur(radius=low + (high - low) * torch.rand(1).item()))


def make_views(kind, recipe, *, aug="default", mean_std=None, resize_first=False, batched=False, crop_low=None,
               crops=None):
    """The training views' augmentation for one kind of method.

    kind: "amdim" (both views share one random horizontal flip, everything else is drawn per view; aug picks
    "default", "autoaugment" or "fast_autoaugment" inside the view recipe), "moco_v1" or "moco_v2" (views fully
    independent; aug must be "default") or "cmc" (one RandomResizedCrop, scale crop_low..1, default CMC_CROP_LOW,
    and flip, split into Lab's L and ab channels; aug must be "default", mean_std is ignored: Lab has its own
    normalisation) or "swav" (SwAV's multi-crop: the crops a MultiCrop describes, default two at S px, each
    independent; aug must be "default"). recipe: "cifar", "stl" or "imagenet", which sets the output size S
    (32, 64 or 128 px; the source images may be larger) and the normalisation. mean_std: ((3 means), (3 stds))
    to normalise by instead of the recipe's (DIGITS uses its own). resize_first: "amdim" per image only, resize
    and centre-crop sources of another size to 32 px before the cifar recipe (FOLDER data); MoCo's
    RandomResizedCrop samples from the whole source at any size and ignores it.

    Returns, per image (batched False): a callable PIL RGB image -> tuple of 2 float tensors (3, S, S),
    normalised (TwoViews or IndependentViews). Batched (True; "amdim" only with aug "default"): a callable
    (images uint8 (B, 3, H, W) on any device, n_views=2) -> tuple of n_views float tensors (B, 3, S, S) on that
    device, normalised, with random parameters per sample and per view (BatchTwoViews or BatchMoCoViews).
    "cmc" gives (L (1, S, S), ab (2, S, S)) per image (CMCViews) and (L (B, 1, S, S), ab (B, 2, S, S)) batched
    (BatchCMCViews). "swav" gives one tensor per crop in crop order, (3, s, s) per image (MultiCropViews) and
    (B, 3, s, s) batched (BatchMultiCropViews), s that crop's size.
    Raises UserError for a combination that does not exist.
    """
    if kind not in VIEW_KINDS:
        raise UserError(f"unknown view kind {kind!r}: choose one of {', '.join(VIEW_KINDS)}")
    if recipe not in RECIPE_SIZE:
        raise UserError(f"unknown augmentation recipe {recipe!r}: choose one of {', '.join(RECIPE_SIZE)}")
    if aug not in AUGMENTATIONS:
        raise UserError(f"unknown --aug {aug!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if kind == "amdim":
        if not batched:
            return TwoViews(train_view_transform(recipe, aug, resize_first, mean_std))
        if aug != "default" or resize_first:
            raise UserError(f"batched augmentation has only the default AMDIM recipe on images of one size (got "
                            f"--aug {aug}{', resize_first' if resize_first else ''}); augment per image instead")
        return BatchTwoViews(recipe, mean_std)
    if aug != "default":
        raise UserError(f"--aug {aug} applies to the AMDIM views only; {kind} has its own recipe: drop --aug")
    if kind == "cmc":
        crop_low = CMC_CROP_LOW if crop_low is None else crop_low
        return BatchCMCViews(recipe, crop_low) if batched else CMCViews(recipe, crop_low)
    if kind == "swav":
        crops = crops or MultiCrop((2,), (RECIPE_SIZE[recipe],), (0.14,), (1.0,))
        return BatchMultiCropViews(recipe, crops, mean_std) if batched else MultiCropViews(recipe, crops, mean_std)
    version = int(kind[-1])
    if batched:
        return BatchMoCoViews(recipe, version, mean_std)
    return IndependentViews(moco_view_transform(recipe, version, mean_std))


class CMCViews:
    """CMC's two views of one PIL image: RandomResizedCrop (S px, scale crop_low..1, torchvision's ratio 3/4-4/3,
    bilinear) and a horizontal flip with p 0.5, as the seed, then Lab (rgb_to_lab on the 8-bit crop, as the seed
    converts the uint8 crop) normalised by LAB_MEAN/LAB_STD and split. Returns (L (1, S, S), ab (2, S, S))."""

    def __init__(self, recipe, crop_low=CMC_CROP_LOW):
        self.crop = T.Compose([T.RandomResizedCrop(RECIPE_SIZE[recipe], scale=(crop_low, 1.0)),
                               T.RandomHorizontalFlip(), T.PILToTensor()])

    def __call__(self, img):
        lab = normalize_lab(rgb_to_lab(self.crop(img)[None]))[0]
        return lab[:1], lab[1:]


@dataclass(frozen=True)
class MultiCrop:
    """SwAV's multi-crop (Caron et al. 2020): nmb_crops[i] crops of size_crops[i] px, each a RandomResizedCrop of
    area fraction min_scale_crops[i]..max_scale_crops[i]; crops come in that order (kind 0's first)."""
    nmb_crops: tuple
    size_crops: tuple
    min_scale_crops: tuple
    max_scale_crops: tuple

    @classmethod
    def from_hyperparams(cls, hp):
        return cls(*(tuple(hp[k]) for k in ("nmb_crops", "size_crops", "min_scale_crops", "max_scale_crops")))

    def each(self):
        """(size, (min scale, max scale)) of every crop, in crop order."""
        return [(size, (low, high)) for n, size, low, high in
                zip(self.nmb_crops, self.size_crops, self.min_scale_crops, self.max_scale_crops) for _ in range(n)]


def swav_crop_transform(size, scale, mean_std):
    """One SwAV crop of a PIL image, the seed's (src/multicropdataset.py) recipe: RandomResizedCrop(size, scale;
    ratio 3/4-4/3, bilinear), flip p 0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, Gaussian blur
    p 0.5 with sigma 0.1-2 px, then ToTensor and Normalize by mean_std."""
    return T.Compose([T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(p=0.2),
                      T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5), T.ToTensor(), T.Normalize(*mean_std)])


class MultiCropViews:
    """SwAV's crops of one PIL image (any size): a tuple of float tensors (3, s, s), one per crop of `crops` in
    crop order, each drawn independently (swav_crop_transform), normalised by mean_std (default the recipe's)."""

    def __init__(self, recipe, crops, mean_std=None):
        mean_std = mean_std or NORMALIZATION[recipe]
        self.transforms = [swav_crop_transform(size, scale, mean_std) for size, scale in crops.each()]

    def __call__(self, img):
        return tuple(t(img) for t in self.transforms)


# ----------------------------------------------------------------------------------------------------------
# Fast AutoAugment (Lim et al. 2019): the published ImageNet policy.

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
        raise UserError(f"the Fast AutoAugment policy file {path} is missing: it ships with the code (assets/ "
                        f"next to augment.py); restore it (git checkout assets/), or choose another --aug") from None
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


# ----------------------------------------------------------------------------------------------------------
# Batched augmentation: the same recipes on whole uint8 batches, on the training device, with random
# parameters drawn per sample (and per view, except AMDIM's shared flip).
#
# How a view is made: first every random parameter of the whole batch is drawn, as tensors on the device, in a
# fixed order (deterministic per seed); no tensor's shape depends on a draw, so the host never waits for a GPU.
# Then the images go through the view's passes chunk by chunk (_chunks), each pass in place: on the CPU a chunk
# is small enough to stay in the cache for the thirty-odd passes of a view, which would otherwise each stream
# the whole batch from memory (and allocate it anew); on a GPU the chunk is the whole batch. The geometry (crop
# and resize, translation, flip, the scaling of 8-bit values to [0, 1]) is linear in the pixels, separable, and
# one pair of small matrices per sample: two batched matmuls (_resample); so is the Gaussian blur.
#
# Most passes change only some samples (a jitter operation at one place of a sample's random order, the 20-25 %
# turned grey, the half blurred). On a GPU every pass runs masked over the whole batch: reading which samples
# take it would make the host wait. On the CPU reading the draws is free, so a view first sorts its samples by
# the passes they take (_sorted_chunks) and each pass works only on the runs of consecutive samples that take
# it (_runs): the jitter's six brightness/contrast/saturation passes do the work of 2.4 (see jitter_params),
# the blur half. Every sample's result is the same either way: a skipped pass is an exact identity.

_GRAY = (0.299, 0.587, 0.114)      # ITU-R 601-2 luma, as PIL's convert("L") and torchvision use
CPU_CHUNK_BYTES = 1 << 20          # float32 output bytes per chunk on the CPU: a chunk's passes stay in L2/L3
# Device types on which a view reads its random draws to skip the samples a pass leaves alone (_runs): the
# CPU, where the draws already are in host memory; elsewhere the read would be a host-device sync.
SKIPS_ON = ("cpu",)


class _BatchViews:
    """Shared by the batched recipes: output size S and normalisation (mean_std, default the recipe's)."""

    def __init__(self, recipe, mean_std=None):
        self.recipe = recipe
        self.size = RECIPE_SIZE[recipe]
        self._mean, self._std = (tuple(map(float, v)) for v in (mean_std or NORMALIZATION[recipe]))
        self.mean, self.std = _channels(self._mean, "cpu"), _channels(self._std, "cpu")    # (1, 3, 1, 1)
        # x -> x / std - mean / std: one pass.
        self._scale = tuple(1 / s for s in self._std)
        self._shift = tuple(-m / s for m, s in zip(self._mean, self._std))

    def normalize_(self, x):
        """x: float (B, 3, S, S) in [0, 1] -> (x - mean) / std per channel, in place. (Two passes: on the CPU
        one addcmul with per-channel (1, 3, 1, 1) operands runs 3x slower than mul_ then add_.)"""
        return x.mul_(_channels(self._scale, x.device)).add_(_channels(self._shift, x.device))


class BatchTwoViews(_BatchViews):
    """Two augmented views of a batch of uint8 images (B, 3, H, W): the per-image recipe of
    train_view_transform (default augmentation), vectorised. Returns (x1, x2), float (B, 3, S, S), normalised.

    Differences from the per-image path, all within what the distribution test checks: no rounding to 8 bits
    after the resize and after each colour operation. RandomResizedCrop resamples as PIL does (bicubic,
    antialiased when it shrinks), in float.
    """

    def __init__(self, recipe, mean_std=None):
        super().__init__(recipe, mean_std)
        self.hue = 0.1 if recipe == "imagenet" else 0.2

    def __call__(self, images, n_views=2):
        """images: (B, 3, H, W) uint8 -> a tuple of n_views augmented views (the classifier phase needs one)."""
        flip = _coin(images.shape[0], 0.5, images.device)          # shared by both views
        return tuple(self.view(images, flip) for _ in range(n_views))

    def view(self, images, flip=None):
        """One view of images (B, 3, H, W), uint8 or float in [0, 1], mirrored first where flip (bool (B,))
        -> normalised float (B, 3, S, S)."""
        b, _, height, width = images.shape
        device = images.device
        if self.recipe == "cifar":
            rows, cols = translate_weights(b, height, width, 4, 0.8, device)
            size = (height, width)
        else:
            boxes = sample_crop_boxes(b, height, width, (0.3, 1.0), (0.7, 1.4), device)
            rows, cols = crop_weights(boxes, height, width, self.size, "bicubic")
            size = (self.size, self.size)
        jitter = jitter_params(b, 0.4, 0.4, 0.4, self.hue, 0.8, device)
        gray = _coin(b, 0.25, device)
        if flip is not None:
            cols = _mirror_input(cols, flip, width)
        rows = _scaled(rows, _pixel_scale(images))
        out = torch.empty(b, 3, *size, device=device)
        for s, x in _sorted_chunks(out, _jitter_takes(jitter[0]), gray):
            _resample(_at(images, s), _take(rows, s), _take(cols, s), out=x).clamp_(0, 1)
            _color_jitter_(x, *_take(jitter, s))
            _grayscale_(x, _at(gray, s))
            self.normalize_(x)
        return out


class BatchMoCoViews(_BatchViews):
    """MoCo v1 or v2 views of a batch of uint8 images (B, 3, H, W) of any size H x W: the per-image recipe of
    moco_view_transform, vectorised, every view independent. Returns a tuple of n_views float (B, 3, S, S),
    normalised.

    Differences from the per-image path: no rounding to 8 bits after the resize and after each colour
    operation; RandomResizedCrop resamples as PIL does (bilinear, antialiased when it shrinks), in float; the
    blur is an exact Gaussian truncated at 3 sigma (6 px) where PIL's is three box blurs of the same variance;
    the flip, drawn last as in the recipe, mirrors the crop (every later operation commutes with it).
    """

    def __init__(self, recipe, version, mean_std=None):
        super().__init__(recipe, mean_std)
        if version not in (1, 2):
            raise ValueError(f"MoCo version {version!r}: 1 or 2")
        self.version = version

    def __call__(self, images, n_views=2):
        """images: (B, 3, H, W) uint8 -> a tuple of n_views independently augmented views."""
        return tuple(self.view(images) for _ in range(n_views))

    def view(self, images):
        """One view of images (B, 3, H, W), uint8 or float in [0, 1] -> normalised float (B, 3, S, S)."""
        b, _, height, width = images.shape
        device = images.device
        boxes = sample_crop_boxes(b, height, width, (0.2, 1.0), (3 / 4, 4 / 3), device)
        if self.version == 1:
            gray = _coin(b, 0.2, device)
            jitter = jitter_params(b, 0.4, 0.4, 0.4, 0.4, 1.0, device)
        else:
            jitter = jitter_params(b, 0.4, 0.4, 0.4, 0.1, 0.8, device)
            gray = _coin(b, 0.2, device)
            blur = blur_kernels(b, (0.1, 2.0), 0.5, device)
        rows, cols = crop_weights(boxes, height, width, self.size, "bilinear")
        cols = _mirror_output(cols, _coin(b, 0.5, device))
        rows = _scaled(rows, _pixel_scale(images))
        out = torch.empty(b, 3, self.size, self.size, device=device)
        takes = (_jitter_takes(jitter[0]), gray) if self.version == 1 else \
            (_blur_takes(blur), _jitter_takes(jitter[0]), gray)
        for s, x in _sorted_chunks(out, *takes):
            _resample(_at(images, s), _take(rows, s), _take(cols, s), out=x).clamp_(0, 1)
            if self.version == 1:
                _grayscale_(x, _at(gray, s))
                _color_jitter_(x, *_take(jitter, s))
            else:
                _color_jitter_(x, *_take(jitter, s))
                _grayscale_(x, _at(gray, s))
                _blur_(x, _at(blur, s))
            self.normalize_(x)
        return out


class BatchCMCViews:
    """CMC's views of a batch of uint8 images (B, 3, H, W) of any size: CMCViews vectorised (the crop resampled
    as PIL does, bilinear, antialiased when it shrinks, in float without rounding to 8 bits), Lab on the device.
    Returns (L (B, 1, S, S), ab (B, 2, S, S)), normalised; n_views=1 (the classifier phase) gives (L,) alone."""

    def __init__(self, recipe, crop_low=CMC_CROP_LOW):
        self.recipe, self.size, self.crop_low = recipe, RECIPE_SIZE[recipe], crop_low

    def __call__(self, images, n_views=2):
        b, _, height, width = images.shape
        boxes = sample_crop_boxes(b, height, width, (self.crop_low, 1.0), (3 / 4, 4 / 3), images.device)
        rows, cols = crop_weights(boxes, height, width, self.size, "bilinear")
        cols = _mirror_output(cols, _coin(b, 0.5, images.device))
        rows = _scaled(rows, _pixel_scale(images))
        lab = torch.empty(b, 3, self.size, self.size, device=images.device)
        for s in _chunks(lab):
            x = _resample(images[s], _take(rows, s), _take(cols, s), out=lab[s]).clamp_(0, 1)
            _lab_(x, _LAB_SCALE, _LAB_SHIFT)
        return (lab[:, :1], lab[:, 1:])[:n_views]


class BatchMultiCropViews(_BatchViews):
    """SwAV's crops of a batch of uint8 images (B, 3, H, W) of any size: MultiCropViews vectorised with the MoCo v2
    ops (BatchMoCoViews: PIL-like antialiased bilinear crops, colour in float without 8-bit rounding, the exact
    Gaussian blur truncated at 3 sigma where the seed's cv2 kernel is 23 px wide). Returns a tuple of float
    (B, 3, s, s), one per crop in crop order, normalised; n_views=k gives the first k crops (the classifier phase
    and the BatchNorm refresh take one, a large crop)."""

    def __init__(self, recipe, crops, mean_std=None):
        super().__init__(recipe, mean_std)
        self.crops = crops.each()

    def __call__(self, images, n_views=None):
        return tuple(self.crop(images, size, scale) for size, scale in self.crops[:n_views])

    def crop(self, images, size, scale):
        """One crop of images (B, 3, H, W), uint8 or float in [0, 1] -> normalised float (B, 3, size, size)."""
        b, _, height, width = images.shape
        device = images.device
        boxes = sample_crop_boxes(b, height, width, scale, (3 / 4, 4 / 3), device)
        jitter = jitter_params(b, 0.8, 0.8, 0.8, 0.2, 0.8, device)
        gray = _coin(b, 0.2, device)
        blur = blur_kernels(b, (0.1, 2.0), 0.5, device)
        rows, cols = crop_weights(boxes, height, width, size, "bilinear")
        cols = _mirror_output(cols, _coin(b, 0.5, device))
        rows = _scaled(rows, _pixel_scale(images))
        out = torch.empty(b, 3, size, size, device=device)
        for s, x in _sorted_chunks(out, _blur_takes(blur), _jitter_takes(jitter[0]), gray):
            _resample(_at(images, s), _take(rows, s), _take(cols, s), out=x).clamp_(0, 1)
            _color_jitter_(x, *_take(jitter, s))
            _grayscale_(x, _at(gray, s))
            _blur_(x, _at(blur, s))
            self.normalize_(x)
        return out


_LAB_SCALE = tuple(1 / s for s in LAB_STD)                     # normalize_lab, folded into _lab_
_LAB_SHIFT = tuple(-m / s for m, s in zip(LAB_MEAN, LAB_STD))


def _chunks(out):
    """Slices of out's first dimension (B, ...) to work through in turn: on the CPU about CPU_CHUNK_BYTES of
    float32 each (at least one sample), elsewhere (a GPU) the whole batch."""
    n = out.shape[0]
    if out.device.type != "cpu":
        return [slice(0, n)]
    step = max(1, CPU_CHUNK_BYTES // max(1, out[:1].numel() * 4))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _sorted_chunks(out, *takes):
    """(samples, x) for each chunk of out's samples (B, ...) to work through in turn: x the chunk's buffer to
    fill and process in place, samples which of the batch's samples it holds, in x's order (a slice or an index
    tensor, to index the per-sample draws and inputs with). takes: bool tensors (B,) or (B, k), which passes
    each sample takes, the most costly first.

    Off SKIPS_ON devices: _chunks, x a view of out. On the CPU the samples go in the order of what they take
    (_takes_key), so that each pass's takers make few runs in a chunk (_runs); x is a reused buffer, copied
    into out at the samples' places once its chunk is done."""
    if _masked(out):
        for s in _chunks(out):
            yield s, out[s]
        return
    order = torch.argsort(_takes_key(*takes), stable=True)
    chunks = _chunks(out)
    if not chunks:                                   # an empty batch
        return
    buffer = torch.empty_like(out[chunks[0]])
    for s in chunks:
        samples, x = order[s], buffer[:s.stop - s.start]
        yield samples, x
        out.index_copy_(0, samples, x)


def _takes_key(*takes):
    """takes: bool tensors (B,) or (B, k), which passes each sample takes, the most costly first -> int (B,):
    their bits read as one binary number."""
    bits = torch.cat([t.unsqueeze(1) if t.dim() == 1 else t for t in takes], dim=1).long()
    return (bits << torch.arange(bits.shape[1] - 1, -1, -1, device=bits.device)).sum(1)


def _runs(takes):
    """Where a pass should work, given which samples of a chunk take it (takes: bool (n,)): on SKIPS_ON devices
    the slices of consecutive samples that take it (none if no sample does); elsewhere the whole chunk
    (slice(None)), the pass masked so that it leaves the other samples unchanged."""
    if _masked(takes):
        return [slice(None)]
    runs, start = [], None
    for i, t in enumerate(takes.tolist() + [False]):
        if t and start is None:
            start = i
        elif not t and start is not None:
            runs.append(slice(start, i))
            start = None
    return runs


def _masked(t):
    """Whether passes over t's samples run masked over the whole chunk (off SKIPS_ON devices) rather than on
    the runs of samples that take them (_runs), where every sample of a run takes the pass."""
    return t.device.type not in SKIPS_ON


def _take(tensors, s):
    """Samples s (_at) of each of a tuple of tensors."""
    return tuple(_at(t, s) for t in tensors)


def _at(t, s):
    """Samples s of t (B, ...): s a slice (a view) or an index tensor (a copy; index_select, ~10x faster than
    t[s] on the CPU)."""
    return t[s] if isinstance(s, slice) else t.index_select(0, s)


def _pixel_scale(images):
    """What the resampling weights are multiplied by to bring images' values into [0, 1]: 1/255 for uint8."""
    return 1 / 255 if images.dtype == torch.uint8 else 1.0


# Resampling along one axis, per sample, in compact form: a pair (index, weight) of tensors (B, S, K), output
# pixel i of sample b the sum over k of weight[b, i, k] times input pixel index[b, i, k] (K taps at most).

def _dense(line, in_size, transpose=False):
    """Compact weights (index, weight), each (n, S, K) -> the dense matrix (n, S, in_size), or its transpose
    (n, in_size, S). Deterministic on a GPU too: an output's taps are distinct pixels, except clamped ones,
    whose weight is 0 (adding exact zeros in any order changes nothing)."""
    index, weight = line
    n, size, _ = index.shape
    if transpose:
        dense = torch.zeros(n, in_size, size, device=weight.device)
        return dense.scatter_add_(1, index.transpose(1, 2), weight.transpose(1, 2))
    return torch.zeros(n, size, in_size, device=weight.device).scatter_add_(2, index, weight)


def _resample(x, rows, cols, out):
    """Separable linear resampling: x (n, C, H, W), uint8 or float; rows and cols compact weights ((n, S, K)
    into H; (n, T, L) into W) -> out (n, C, S, T) = rows @ x @ cols^T per sample and channel, as two batched
    matmuls (written into out and returned)."""
    n, c, h, w = x.shape
    y = torch.matmul(x.reshape(n, c * h, w).float(), _dense(cols, w, transpose=True))   # (n, C H, T)
    return torch.matmul(_dense(rows, h).unsqueeze(1), y.view(n, c, h, -1), out=out)


def _scaled(line, factor):
    """Compact weights with every weight multiplied by factor."""
    index, weight = line
    return index, weight * factor


def _mirror_input(line, flip, in_size):
    """Compact weights that read the input mirrored (index i -> in_size - 1 - i) where flip (bool (B,))."""
    index, weight = line
    return torch.where(flip.view(-1, 1, 1), in_size - 1 - index, index), weight


def _mirror_output(line, flip):
    """Compact weights whose output is mirrored (pixel i <- S - 1 - i) where flip (bool (B,))."""
    flip = flip.view(-1, 1, 1)
    return tuple(torch.where(flip, t.flip(1), t) for t in line)


def _bicubic(t):
    """PIL's bicubic kernel (a = -0.5; support 2) at offsets t, in pixels of the kernel's scale: the cubic
    `near` on |t| < 1, the cubic `far` on 1 <= |t| < 2, 0 beyond. Both vanish at 1 and far at 2, so the kernel
    is near(min(|t|, 1)) + far(clamp(|t|, 1, 2)): clamps, where comparisons and selects were 4x slower."""
    a, t = -0.5, t.abs()
    u, v = t.clamp(max=1.0), t.clamp_(1.0, 2.0)
    near = u.mul((a + 2)).sub_(a + 3).mul_(u).mul_(u).add_(1)
    far = v.mul(a).sub_(5 * a).mul_(v).add_(8 * a).mul_(v).sub_(4 * a)
    return near.add_(far)


def _triangle(t):
    """The bilinear kernel (support 1) at offsets t."""
    return (1 - t.abs()).clamp(min=0)


_KERNELS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}


def resize_weights(start, length, in_size, out_size, mode):
    """Compact resampling weights (index, weight), each (B, out_size, K): those of output pixel i when
    pixels start..start+length-1 (int tensors (B,)) of a line of in_size pixels are resized to out_size, as
    PIL's resize (and torchvision's antialiased tensor resize) does to the cropped line: the kernel
    ("bicubic" or "bilinear") centred on the output pixel's centre, widened by the scale when it shrinks
    (antialiasing), limited to the crop and normalised to sum 1.

    K = ceil(2 support max(in_size / out_size, 1)) + 1 taps cover the widest kernel; a tap outside the crop (or
    the kernel) has weight 0 (and its index clamped into the line)."""
    kernel, support = _KERNELS[mode]
    device = start.device
    start, length = start.float()[:, None, None], length.float()[:, None, None]      # (B, 1, 1)
    scale = length / out_size                                   # input pixels per output pixel
    stretch = scale.clamp(min=1.0)                              # the kernel widens only to shrink
    centre = start + (torch.arange(out_size, device=device, dtype=torch.float32)[:, None] + 0.5) * scale
    n_taps = math.ceil(2 * support * max(in_size / out_size, 1.0)) + 1
    first = torch.floor(centre - support * stretch + 0.5)                             # (B, out, 1)
    taps = first + torch.arange(n_taps, device=device, dtype=torch.float32)           # (B, out, taps)
    w = kernel((taps + 0.5 - centre) / stretch) * ((taps >= start) & (taps < start + length))
    return taps.long().clamp_(0, in_size - 1), w / w.sum(-1, keepdim=True)


def crop_weights(boxes, height, width, size, mode):
    """Compact weights (rows, cols) that resize each box (top, left, h, w) of an image height x width to
    size x size (resize_weights along each axis)."""
    top, left, h, w = boxes
    return resize_weights(top, h, height, size, mode), resize_weights(left, w, width, size, mode)


def translate_weights(b, height, width, pad, p, device):
    """RandomCrop(padding=pad, "reflect") applied with probability p per sample, as resampling matrices: a
    shift by up to +-pad px in y and x (uniform), filling with reflection. Returns compact weights (rows, cols)
    of one tap each, weight 1."""
    apply = _coin(b, p, device)
    dy = torch.where(apply, torch.randint(0, 2 * pad + 1, (b,), device=device), pad)
    dx = torch.where(apply, torch.randint(0, 2 * pad + 1, (b,), device=device), pad)
    return _shift_weights(dy - pad, height), _shift_weights(dx - pad, width)


def _shift_weights(offset, size):
    """offset: int (B,) -> compact weights: output pixel i is input pixel i + offset, reflected at the borders
    (the offset is at most size - 1)."""
    src = torch.arange(size, device=offset.device) + offset[:, None]                 # (B, size)
    src = torch.where(src < 0, -src, torch.where(src > size - 1, 2 * (size - 1) - src, src))
    return src[:, :, None], torch.ones(*src.shape, 1, device=offset.device)


def random_translate(x, pad, p):
    """x: float (B, C, H, W) -> (B, C, H, W). With probability p per sample, shift by up to +-pad px in x and
    y (uniform), filling with reflection: a crop of the reflect-padded image at a random offset, as
    RandomCrop(padding, "reflect")."""
    b, _, h, w = x.shape
    rows, cols = translate_weights(b, h, w, pad, p, x.device)
    out = torch.empty_like(x, dtype=torch.float32)
    for s in _chunks(out):
        _resample(x[s], _take(rows, s), _take(cols, s), out=out[s])
    return out


def sample_crop_boxes(n, height, width, scale, ratio, device=None, attempts=10):
    """RandomResizedCrop's boxes for n images: (top, left, h, w) int tensors of shape (n,).

    As torchvision: up to `attempts` tries of an area fraction ~ U(scale) and a log-uniform aspect ratio; the
    first box that fits wins; if none fits, a centre crop with the ratio clamped into range.
    """
    area = height * width
    target = area * torch.empty(n, attempts, device=device).uniform_(*scale)
    log_r = torch.empty(n, attempts, device=device).uniform_(np.log(ratio[0]), np.log(ratio[1]))
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), 0)
    rows = torch.arange(n, device=device)
    h, w, ok = h[rows, first], w[rows, first], fits.any(1)
    # Fallback: the whole image, cropped to the nearest allowed ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    h = torch.where(ok, h, float(fh)).long()
    w = torch.where(ok, w, float(fw)).long()
    top = torch.where(ok, (torch.rand(n, device=device) * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(ok, (torch.rand(n, device=device) * (width - w + 1)).floor().long(), (width - w) // 2)
    return top, left, h, w


def random_resized_crop(x, size, scale, ratio, mode="bicubic"):
    """x: float (B, C, H, W) in [0, 1] -> (B, C, size, size) in [0, 1]. Crop a random box per sample
    (sample_crop_boxes with scale and ratio ranges as RandomResizedCrop's) and resize it to size x size as PIL
    does (resize_weights; mode "bicubic" or "bilinear")."""
    b, c, height, width = x.shape
    rows, cols = crop_weights(sample_crop_boxes(b, height, width, scale, ratio, x.device), height, width, size,
                              mode)
    out = torch.empty(b, c, size, size, device=x.device)
    for s in _chunks(out):
        _resample(x[s], _take(rows, s), _take(cols, s), out=out[s]).clamp_(0, 1)
    return out


def _luma(x):
    """RGB x (B, 3, H, W) -> luma (B, 1, H, W) (a matmul: one pass over x, faster than three)."""
    b, _, h, w = x.shape
    return torch.matmul(_channels(_GRAY, x.device).view(1, 3), x.reshape(b, 3, h * w)).view(b, 1, h, w)


def jitter_params(b, brightness, contrast, saturation, hue, p, device):
    """ColorJitter's random parameters for b samples, applied with probability p each: brightness, contrast and
    saturation factors and a hue shift drawn per sample, and the four operations in a random order per sample
    (as torchvision draws one per call).

    Returns (coeffs (B, 6, 3), shift (B,), apply (B,) bool) for _color_jitter_, which runs the hue shift, the
    costly operation, once for every sample: brightness, contrast and saturation run at six passes, each sample
    taking its operations placed before its hue shift at the first three (in its order) and those after it at
    the last three. Pass k maps x -> a x + c mean(luma) + d luma with (a, c, d) = coeffs[:, k]: brightness is
    (f, 0, 0), contrast (f, 1 - f, 0), saturation (f, 0, 1 - f), and the identity, exactly, (1, 0, 0). shift is
    the hue shift in sixths of the circle; samples that do not take the jitter keep their hue (apply False)."""
    apply = _coin(b, p, device)
    factors = [torch.empty(b, device=device).uniform_(1 - brightness, 1 + brightness),
               torch.empty(b, device=device).uniform_(1 - contrast, 1 + contrast),
               torch.empty(b, device=device).uniform_(1 - saturation, 1 + saturation),
               torch.empty(b, device=device).uniform_(-hue, hue)]
    order = torch.argsort(torch.rand(b, 4, device=device), dim=1)
    place = torch.argsort(order, dim=1)              # place[:, k]: where operation k comes in the sample's order
    before_hue = place[:, :3] < place[:, 3:]         # (B, 3): brightness, contrast, saturation before the hue
    passes = []
    for active, places in ((apply[:, None] & before_hue, range(3)), (apply[:, None] & ~before_hue, range(1, 4))):
        for at in places:
            takes = active & (place[:, :3] == at)                   # (B, 3): at most one operation a sample
            f = [torch.where(takes[:, k], factors[k], 1.0) for k in range(3)]
            passes.append(torch.stack([f[0] * f[1] * f[2], 1 - f[1], 1 - f[2]], dim=1))     # two are 1
    return torch.stack(passes, dim=1), 6 * factors[3], apply


def color_jitter(x, brightness, contrast, saturation, hue, p):
    """x: RGB float (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]. ColorJitter applied with probability p
    per sample (jitter_params, then _color_jitter_ on a copy)."""
    params = jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, x.device)
    out = x.float().clone()
    for s in _chunks(out):
        _color_jitter_(out[s], *(t[s] for t in params))
    return out


def _color_jitter_(x, coeffs, shift, apply):
    """x: RGB float (n, 3, H, W) in [0, 1], jittered in place by jitter_params' (coeffs, shift, apply); each
    pass only where samples take it (_runs)."""
    takes = _jitter_takes(coeffs)
    for k in range(6):
        if k == 3:
            for s in _runs(apply):
                _hue_(x[s], shift[s], apply[s] if _masked(x) else None)
        for s in _runs(takes[:, k]):
            _scale_(x[s], coeffs[s, k])
    return x


def _jitter_takes(coeffs):
    """coeffs (n, 6, 3) of jitter_params -> bool (n, 6): which of the six scaling passes change each sample
    (those whose (a, c, d) is not the identity's (1, 0, 0))."""
    return (coeffs != _constant((1.0, 0.0, 0.0), coeffs.device)).any(2)


def _scale_(x, coeffs):
    """x -> clamp(a x + c mean(luma) + d luma, 0, 1) in place, (a, c, d) = coeffs (n, 3) per sample: brightness,
    contrast or saturation (see jitter_params), rounding as torchvision's."""
    a, c, d = (v.view(-1, 1, 1, 1) for v in coeffs.unbind(1))
    luma = _luma(x)
    offset = torch.addcmul(c * luma.mean(dim=(2, 3), keepdim=True), luma, d, out=luma)
    return torch.addcmul(offset, x, a, out=x).clamp_(0, 1)


def _hue_(x, shift, apply=None):
    """RGB x (n, 3, H, W) in [0, 1], in place: the samples where apply (bool (n,); None: every sample) get
    their HSV hue rotated by shift (n,) sixths of the circle, as torchvision's adjust_hue (RGB -> HSV, shift,
    back) without forming saturation and value: each pixel keeps its largest and smallest channel, and channel
    n (5 for red, 3 green, 1 blue) becomes min + (max - min) clamp(| |k - 5| - 3 | - 1, 0, 1), k = n + hue mod
    6 (the hue in sixths): HSV's v - v s clamp(min(k, 4 - k), 0, 1) with the trapezoid written as a distance to
    its centre."""
    high, low = x.amax(1), x.amin(1)                 # amax/amin: the index-returning max/min are ~20x slower
    delta = high - low
    r, g, b = x.unbind(1)
    # Hue times delta, in sixths, by the largest channel (red wins ties, then green); 0 for grey pixels. Blends
    # by 0/1 masks (lerp, exact at 0 and 1) are faster than torch.where on the CPU.
    hue = torch.lerp(torch.sub(r, g).add_(delta, alpha=4), torch.sub(b, r).add_(delta, alpha=2), _is(g, high))
    hue = torch.lerp(hue, g - b, _is(r, high))
    hue.div_(delta.clamp(min=1e-12)).add_(shift.view(-1, 1, 1))
    hue.sub_(hue.div(6).floor_(), alpha=6)           # mod 6: [0, 6] (6 and 0 are one hue)
    ramp = torch.add(hue.unsqueeze(1), _channels((0.0, -2.0, -4.0), x.device))        # k - 5, in [-4, 6]
    ramp.abs_().sub_(3).abs_().clamp_(1, 2)          # the distance to the trapezoid's centre, clamped to 1..2
    if apply is None:
        return torch.addcmul((low - delta).unsqueeze(1), delta.unsqueeze(1), ramp, out=x)
    shifted = torch.addcmul((low - delta).unsqueeze(1), delta.unsqueeze(1), ramp, out=ramp)
    return torch.lerp(x, shifted, apply.to(x.dtype).view(-1, 1, 1, 1), out=x)


def _is(a, b):
    """1.0 where a == b, else 0.0 (float, a's shape)."""
    return torch.eq(a, b, out=torch.empty_like(a))


# The four ColorJitter operations on their own (what _color_jitter_ computes; the tests compare them with
# torchvision's): x RGB (B, 3, H, W) in [0, 1], f factors (B, 1, 1, 1); hue f in turns.

def _brightness(x, f):
    f = f.view(-1)
    return _scale_(x.float().clone(), torch.stack([f, torch.zeros_like(f), torch.zeros_like(f)], 1))


def _contrast(x, f):
    f = f.view(-1)
    return _scale_(x.float().clone(), torch.stack([f, 1 - f, torch.zeros_like(f)], 1))


def _saturation(x, f):
    f = f.view(-1)
    return _scale_(x.float().clone(), torch.stack([f, torch.zeros_like(f), 1 - f], 1))


def _hue(x, f):
    f = f.view(-1)
    return _hue_(x.float().clone(), 6 * f, torch.ones_like(f, dtype=torch.bool))


def gaussian_kernels(sigma, radius):
    """sigma: float (B,) -> normalised 1-D Gaussian kernels (B, 2 radius + 1), taps at -radius..radius px."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (t / sigma[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)
    # Taps under 2^-24 (a small sigma's tails, down to 1e-22) change no pixel in [0, 1] by more than 1e-6 in all,
    # but their products with small pixel values are subnormal floats, which make the CPU's blur ~2x slower.
    return torch.where(k < 2 ** -24, 0.0, k)


def blur_kernels(b, sigma, p, device):
    """Gaussian blurs drawn for b samples, each applied with probability p, its standard deviation uniform in
    sigma = (low, high) px: kernels (B, 2 radius + 1) truncated at radius = ceil(3 high) px; a sample not
    blurred gets the identity kernel (a single 1, exactly the input back)."""
    apply = _coin(b, p, device)
    sigmas = torch.empty(b, device=device).uniform_(*sigma)
    radius = math.ceil(3 * sigma[1])
    return torch.where(apply[:, None], gaussian_kernels(sigmas, radius), _identity_kernel(radius, device))


def _blur_(x, kernels):
    """x: float (n, C, H, W) blurred in place, sample b by the separable kernel kernels[b] ((n, 2 r + 1)), edge
    pixels repeated beyond the border (as PIL's GaussianBlur), only where samples take it (_runs, _blur_takes).
    The blur along a line is a banded matrix (blur_matrices), so the blur is two batched matmuls as the crop's
    resampling; 3-4x faster on the CPU than a grouped depthwise conv2d, whose kernel varies per sample."""
    for s in _runs(_blur_takes(kernels)):
        y, k = x[s], kernels[s].to(x.dtype)
        n, c, h, w = y.shape
        if n:
            along_w = blur_matrices(k, w)
            along_h = along_w if h == w else blur_matrices(k, h)
            across = torch.matmul(y.reshape(n, c * h, w), along_w.transpose(1, 2))              # (n, C H, W)
            torch.matmul(along_h.unsqueeze(1), across.view(n, c, h, w), out=y)
    return x


def _blur_takes(kernels):
    """kernels (n, 2 r + 1) of blur_kernels -> bool (n,): the samples whose kernel is not the identity."""
    return (kernels != _identity_kernel(kernels.shape[1] // 2, kernels.device)).any(1)


def _identity_kernel(radius, device):
    """The kernel (2 radius + 1,) that blurs nothing: a single 1 at the centre."""
    return (torch.arange(-radius, radius + 1, device=device) == 0).float()


def blur_matrices(kernels, size):
    """kernels (n, 2 r + 1) -> (n, size, size): matrix b times a line of size pixels is the line convolved with
    kernels[b], edge pixels repeated beyond the ends (the taps that fall outside add to the edge pixel's
    weight). Built as one matmul with a 0/1 tensor, not by scattering: deterministic on a GPU too."""
    radius = kernels.shape[1] // 2
    taps = torch.arange(-radius, radius + 1, device=kernels.device)
    pixels = torch.arange(size, device=kernels.device)
    source = (pixels + taps[:, None]).clamp_(0, size - 1)                # (2 r + 1, size): the pixel each tap reads
    reads = (source[:, :, None] == pixels).to(kernels.dtype)            # (2 r + 1, size, size), 0/1 (one_hot syncs)
    return torch.matmul(kernels, reads.view(len(taps), size * size)).view(-1, size, size)


def gaussian_blur(x, sigma, radius):
    """x: float (B, C, H, W), sigma: (B,) -> (B, C, H, W), sample b blurred by a Gaussian of standard deviation
    sigma[b] px, truncated at `radius` px, edge pixels repeated beyond the border (as PIL's GaussianBlur)."""
    out = x.float().clone()
    kernels = gaussian_kernels(sigma.float(), radius)
    for s in _chunks(out):
        _blur_(out[s], kernels[s])
    return out


def random_gaussian_blur(x, sigma, p):
    """x: float (B, C, H, W) -> (B, C, H, W). With probability p per sample, a Gaussian blur whose standard
    deviation is drawn per sample, uniform in sigma = (low, high) px, truncated at ceil(3 high) px."""
    kernels = blur_kernels(x.shape[0], sigma, p, x.device)
    out = x.float().clone()
    for s in _chunks(out):
        _blur_(out[s], kernels[s])
    return out


def _grayscale_(x, gray):
    """RGB x (n, 3, H, W), in place: the samples where gray (bool (n,)) become their luma in all channels."""
    for s in _runs(gray):
        y = x[s]
        if _masked(x):
            torch.lerp(y, _luma(y).expand_as(y), gray[s].to(x.dtype).view(-1, 1, 1, 1), out=y)
        else:
            y.copy_(_luma(y).expand_as(y))
    return x


def random_grayscale(x, p):
    """x: RGB float (B, 3, H, W) -> (B, 3, H, W). With probability p per sample, replace the image by its luma
    in all three channels."""
    return _grayscale_(x.float().clone(), _coin(x.shape[0], p, x.device))


# sRGB (linear) -> CIE XYZ and the D65 white point, as scikit-image's rgb2lab.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
_XYZ_OVER_WHITE = tuple(tuple(v / white for v in row) for row, white in zip(_XYZ_FROM_RGB, _D65_WHITE))
# (L, a, b) = _LAB_FROM_F (fx, fy, fz) + _LAB_OFFSET: 116 fy - 16, 500 (fx - fy), 200 (fy - fz).
_LAB_FROM_F = ((0.0, 116.0, 0.0), (500.0, -500.0, 0.0), (0.0, 200.0, -200.0))
_LAB_OFFSET = (-16.0, 0.0, 0.0)


def rgb_to_lab(x):
    """sRGB images x (B, 3, H, W), uint8 in 0..255 or float in [0, 1], -> float32 CIE Lab (B, 3, H, W) under
    D65 (L in 0..100): gamma expansion, the XYZ matrix, f(t) = cube root above (6/29)^3 and its linear segment
    below. Any device; agrees with skimage.color.rgb2lab."""
    x = (x.float() / 255 if x.dtype == torch.uint8 else x.float().clone()).contiguous()
    return _lab_(x, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def _lab_(x, scale, shift):
    """rgb_to_lab in place on float x (B, 3, H, W) in [0, 1], each Lab channel then multiplied by scale and
    shifted by shift (3 values each; normalize_lab's is (1 / LAB_STD, -LAB_MEAN / LAB_STD)).

    Both of Lab's piecewise curves (sRGB's gamma expansion, linear below 0.04045; f(t), linear below (6/29)^3)
    are continuous at their knee, so curve(v) = power(max(v, knee)) - slope * max(knee - v, 0): two clamps in
    place of a comparison and a blend, the two slowest passes on the CPU. Powers as exp(p log(t)), 2-3x faster
    than pow there; the constant factor of the gamma power goes into the XYZ matrix (divided by the white
    point); Lab's linear map with the scale and shift is one per-pixel 3 x 3 matmul with a bias. float32 also
    under autocast (CMC's features() runs inside the model's autocast region: its matmuls would come out
    bfloat16/float16 and the in-place passes refuse mixed dtypes)."""
    with torch.autocast(x.device.type, enabled=False):
        return _lab_float32_(x, scale, shift)


_GAMMA_KNEE, _GAMMA_SLOPE = 0.04045, 1 / 12.92         # sRGB: v / 12.92 below the knee, ((v + a) / (1 + a))^2.4 above
_GAMMA_A = 0.055
_F_KNEE, _F_SLOPE = (6 / 29) ** 3, 1 / (3 * (6 / 29) ** 2)      # Lab's f: t / (3 delta^2) + 4/29 below, cbrt above


def _lab_float32_(x, scale, shift):
    b, _, h, w = x.shape
    x = x.view(b, 3, h * w)
    # (v + a)^2.4, i.e. the gamma power times (1 + a)^2.4, whose inverse the XYZ matrix carries.
    power_scale = (1 + _GAMMA_A) ** 2.4
    below = torch.rsub(x, _GAMMA_KNEE).clamp_(min=0)
    linear = x.clamp_(min=_GAMMA_KNEE).add_(_GAMMA_A).log_().mul_(2.4).exp_()
    linear.sub_(below, alpha=_GAMMA_SLOPE * power_scale)
    xyz_map = tuple(tuple(v / power_scale for v in row) for row in _XYZ_OVER_WHITE)
    xyz = torch.matmul(_constant(xyz_map, x.device), linear)                       # (B, 3, H W)
    below = torch.sub(xyz, _F_KNEE, out=below).neg_().clamp_(min=0)
    # f's linear piece meets its cube root at the knee: cbrt(max(t, knee)) - slope * max(knee - t, 0).
    f = xyz.clamp_(min=_F_KNEE).log_().mul_(1 / 3).exp_().sub_(below, alpha=_F_SLOPE)
    lab_map = tuple(tuple(s * v for v in row) for s, row in zip(scale, _LAB_FROM_F))
    bias = tuple(s * c + t for s, c, t in zip(scale, _LAB_OFFSET, shift))
    out = torch.matmul(_constant(lab_map, x.device), f, out=linear)
    return out.add_(_constant(bias, x.device).view(1, 3, 1)).view(b, 3, h, w)


def lab_to_rgb(lab):
    """CIE Lab (B, 3, H, W) under D65 -> sRGB float (B, 3, H, W) clamped to [0, 1]: rgb_to_lab's inverse (for
    pictures of CMC's views; training never needs it)."""
    l, a, b = lab.float().unbind(1)
    fy = (l + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    delta = 6 / 29
    white = torch.tensor(_D65_WHITE, dtype=torch.float32, device=lab.device).view(1, 3, 1, 1)
    xyz = torch.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4 / 29)) * white
    inverse = torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).float().to(lab.device)
    linear = torch.einsum("ij,bjhw->bihw", inverse, xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


def cmc_views_to_rgb(l, ab, lightness=60.0):
    """CMC's normalised views -> pictures (B, 3, S, S) in [0, 1]: L (B, 1, S, S) as grey levels, ab (B, 2, S, S)
    as colour at a constant lightness."""
    mean, std = _channels(LAB_MEAN, l.device), _channels(LAB_STD, l.device)
    grey = (l.float() * std[:, :1] + mean[:, :1]).clamp(0, 100) / 100
    chroma = ab.float() * std[:, 1:] + mean[:, 1:]
    flat = torch.full_like(chroma[:, :1], lightness)
    return grey.expand(-1, 3, -1, -1), lab_to_rgb(torch.cat([flat, chroma], dim=1))


def normalize_lab(lab):
    """Raw Lab (B, 3, H, W) -> (lab - LAB_MEAN) / LAB_STD per channel."""
    return (lab - _channels(LAB_MEAN, lab.device)) / _channels(LAB_STD, lab.device)



@functools.lru_cache(maxsize=None)
def _constant(values, device):
    """float32 tensor of the constants `values` (nested tuples) on `device`, made once per device: built from
    Python data or copied from the CPU at every call, it would be a blocking host-to-GPU copy. Callers must not
    modify it."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def _channels(values, device):
    """float32 (1, 3, 1, 1) tensor of three per-channel constants on `device` (_constant)."""
    return _constant(values, device).view(1, 3, 1, 1)


def _coin(n, p, device):
    """n independent draws of a p-coin: bool (n,) on `device`."""
    return torch.rand(n, device=device) < p

