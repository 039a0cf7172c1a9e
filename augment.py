"""The view recipes of AMDIM, MoCo v1 / v2, CMC and SwAV's multi-crop, each per image (PIL, torchvision) and
batched on the training device (built of imageops' operations); AMDIM's per-image views can take AutoAugment or the
Fast AutoAugment ImageNet policy (autoaugment.py). make_views() picks one; make_crop_views() splits a recipe into
its geometry per image (uint8 crops, in loader workers) and its colour batched on the device (image folders).

Three recipes, by encoder input size: "cifar" (32 px), "stl" (64 px) and "imagenet" (128 px); each has its
normalisation (NORMALIZATION). Per-image callables take a PIL RGB image; batched ones take uint8 images
(B, 3, H, W) on any device. Every random parameter is drawn from torch's global generator.
"""
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
import torch.nn.functional as F
from PIL import ImageFilter

from autoaugment import FastAutoAugment
from imageops import (
    _at, _blur_, _blur_takes, _channels, _chunks, _coin, _color_jitter_, _grayscale_, _jitter_takes, _masked,
    _mirror_input, _mirror_output, _pixel_scale, _resample, _scaled, _sorted_chunks, _take, blur_draws, blur_from,
    crop_box_draws, crop_boxes, crop_weights, jitter_draws, jitter_from, to_colour_space, to_colour_space_,
    translate_draws, translate_from)
from utils import UserError

VIEW_KINDS = ("amdim", "moco_v1", "moco_v2", "cmc", "swav", "probe")

AUGMENTATIONS = ("default", "autoaugment", "fast_autoaugment")
RECIPE_SIZE = {"cifar": 32, "stl": 64, "imagenet": 128}          # recipe -> encoder input size (px)
RECIPE_OF_SIZE = {size: recipe for recipe, size in RECIPE_SIZE.items()}
# Per-channel (mean, std) of each recipe's data, for images scaled to [0, 1].
NORMALIZATION = {
    "cifar": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "stl": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
@dataclass(frozen=True)
class ViewSpec:
    """The views a phase trains on: make_views' kind and keywords, and how many views of each image the step
    takes."""
    kind: str
    options: dict = field(default_factory=dict)
    count: int = 2


PROBE_SCALE = (0.08, 1.0)   # the seeds' linear-evaluation crop: torchvision's RandomResizedCrop default area range
CMC_CROP_LOW = 0.2      # RandomResizedCrop's smallest area fraction at 32-64 px (the seed's 0.08 is for 224 px)


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


def probe_view_transform(recipe, scale, mean_std=None):
    """The seeds' linear-evaluation training view (main_lincls.py, eval_linear.py, LinearProbing.py) for a PIL
    image of any size: RandomResizedCrop(S, scale; ratio 3/4-4/3, bilinear), flip p 0.5, ToTensor and Normalize
    (mean_std, default the recipe's), S the recipe's encoder input size; no colour augmentation."""
    return T.Compose([T.RandomResizedCrop(RECIPE_SIZE[recipe], scale=scale), T.RandomHorizontalFlip()]
                     + _to_normalized_tensor(recipe, mean_std))


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
               crops=None, scale=None, colour="Lab"):
    """The training views' augmentation for one kind of method.

    kind: "amdim" (both views share one random horizontal flip, everything else is drawn per view; aug picks
    "default", "autoaugment" or "fast_autoaugment" inside the view recipe), "moco_v1" or "moco_v2" (views fully
    independent; aug must be "default") or "cmc" (one RandomResizedCrop, scale crop_low..1, default CMC_CROP_LOW,
    and flip, split into Lab's L and ab channels, or with colour "YCbCr" into Y and CbCr; aug must be "default",
    mean_std is ignored: the colour space has its own normalisation) or "swav" (SwAV's multi-crop: the crops a
    MultiCrop describes, default two at S px, each independent; aug must be "default") or "probe" (a linear
    protocol's single view, probe_view_transform, of area fraction `scale`, default PROBE_SCALE; aug must be
    "default"). recipe: "cifar", "stl" or "imagenet", which sets the output size S (32, 64 or 128 px; the source
    images may be larger) and the normalisation. mean_std: ((3 means), (3 stds)) to normalise by instead of the
    recipe's (DIGITS uses its own). resize_first: "amdim" per image only, resize and centre-crop sources of another
    size to 32 px before the cifar recipe (FOLDER data); MoCo's RandomResizedCrop samples from the whole source at
    any size and ignores it.

    Returns, per image (batched False): a callable PIL RGB image -> tuple of 2 float tensors (3, S, S),
    normalised (TwoViews or IndependentViews). Batched (True; "amdim" only with aug "default"): a callable
    (images uint8 (B, 3, H, W) on any device, n_views=2) -> tuple of n_views float tensors (B, 3, S, S) on that
    device, normalised, with random parameters per sample and per view (BatchTwoViews or BatchMoCoViews).
    "cmc" gives (L (1, S, S), ab (2, S, S)) per image (CMCViews) and (L (B, 1, S, S), ab (B, 2, S, S)) batched
    (BatchCMCViews). "swav" gives one tensor per crop in crop order, (3, s, s) per image (MultiCropViews) and
    (B, 3, s, s) batched (BatchMultiCropViews), s that crop's size.
    Raises UserError for a combination that does not exist.
    """
    _check_views(kind, recipe, aug)
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
        return BatchCMCViews(recipe, crop_low, colour) if batched else CMCViews(recipe, crop_low, colour)
    if kind == "swav":
        crops = crops or _default_crops(recipe)
        return BatchMultiCropViews(recipe, crops, mean_std) if batched else MultiCropViews(recipe, crops, mean_std)
    if kind == "probe":
        scale = scale or PROBE_SCALE
        if batched:
            return BatchProbeViews(recipe, scale, mean_std)
        return IndependentViews(probe_view_transform(recipe, scale, mean_std), n_views=1)
    version = int(kind[-1])
    if batched:
        return BatchMoCoViews(recipe, version, mean_std)
    return IndependentViews(moco_view_transform(recipe, version, mean_std))


def _check_views(kind, recipe, aug):
    if kind not in VIEW_KINDS:
        raise UserError(f"unknown view kind {kind!r}: choose one of {', '.join(VIEW_KINDS)}")
    if recipe not in RECIPE_SIZE:
        raise UserError(f"unknown augmentation recipe {recipe!r}: choose one of {', '.join(RECIPE_SIZE)}")
    if aug not in AUGMENTATIONS:
        raise UserError(f"unknown --aug {aug!r}: choose one of {', '.join(AUGMENTATIONS)}")


def _default_crops(recipe):
    """SwAV's crops when none are given: two at the recipe's size."""
    return MultiCrop((2,), (RECIPE_SIZE[recipe],), (0.14,), (1.0,))


class CMCViews:
    """CMC's two views of one PIL image: RandomResizedCrop (S px, scale crop_low..1, torchvision's ratio 3/4-4/3,
    bilinear) and a horizontal flip with p 0.5, as the seed, then Lab (rgb_to_lab on the 8-bit crop, as the seed
    converts the uint8 crop) normalised by LAB_MEAN/LAB_STD and split, or with colour "YCbCr" the seed's other
    split (imageops.to_colour_space). Returns (L (1, S, S), ab (2, S, S)), or (Y, CbCr)."""

    def __init__(self, recipe, crop_low=CMC_CROP_LOW, colour="Lab"):
        self.crop = T.Compose([T.RandomResizedCrop(RECIPE_SIZE[recipe], scale=(crop_low, 1.0)),
                               T.RandomHorizontalFlip(), T.PILToTensor()])
        self.space = colour

    def __call__(self, img):
        split = to_colour_space(self.crop(img)[None], self.space)[0]
        return split[:1], split[1:]


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
# Batched augmentation: the same recipes on whole uint8 batches, on the training device, with random
# parameters drawn per sample (and per view, except AMDIM's shared flip).
# How a view's passes run, chunk by chunk: the comment at the top of imageops.py. Each view first draws its
# random numbers (imageops' *_draws, in the recipe's order); the rest (the parameters derived from them, the
# resampling, the colour passes) is a pure function of the images and those numbers, which compile_views can
# hand to torch.compile as one graph where the passes run masked (a GPU), the draws staying eager so that the
# random stream is the same compiled or not.

class _CompilableViews:
    """What the batched recipes share: their pixel work goes through _pixels, eager or compiled."""
    compiled = None         # compile_views sets it: a function -> its compiled form (compiling.function)

    def _pixels(self, fn, *args):
        """fn(images, *draws), compiled where compile_views asked and the passes run masked on images' device
        (off imageops.SKIPS_ON; on the CPU the passes read the draws to skip samples, which compiles badly)."""
        if self.compiled is not None and _masked(args[0]):
            return self.compiled(fn)(*args)
        return fn(*args)


def compile_views(augment, warn, backend="inductor"):
    """Have the batched views `augment` (Splits.batch_augment: a Batch*Views, or the bound colour() of the crop
    path; None: none) compile their pixel work, each function once: whole (fullgraph: a graph break would hide a
    host read), specialised to each shape (a run's crop sizes and batches are fixed), with eager execution and
    one warning where compilation fails (compiling.function)."""
    import compiling
    owner = getattr(augment, "__self__", augment)
    if isinstance(owner, _CompilableViews):
        cache = {}

        def compiled(fn):
            if fn not in cache:
                cache[fn] = compiling.function(fn, warn, backend=backend, fullgraph=True, dynamic=False)
            return cache[fn]
        owner.compiled = compiled


class _BatchViews(_CompilableViews):
    """Shared by the batched RGB recipes: output size S and normalisation (mean_std, default the recipe's)."""

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
        one addcmul with per-channel (1, 3, 1, 1) operands runs slower than mul_ then add_.)"""
        return x.mul_(_channels(self._scale, x.device)).add_(_channels(self._shift, x.device))

    # The colour half of a view, which both paths share: the in-memory path runs it on each chunk right after
    # resampling it (_resampled), the crop path on the crops that loader workers cut (colour()).

    def colour_draws(self, b, device):
        """The random numbers of b samples' colour operations, drawn in the recipe's order (a tuple)."""
        raise NotImplementedError

    def colour_params(self, draws):
        """colour_draws' numbers -> the parameters colour_takes and colour_ read (a tuple)."""
        raise NotImplementedError

    def colour_takes(self, params):
        """Which passes each sample takes (bool tensors (B,) or (B, k), the most costly first; _sorted_chunks)."""
        raise NotImplementedError

    def colour_(self, x, params, s):
        """Colour and normalise x (float (n, 3, S, S) in [0, 1], samples s of the batch) in place."""
        raise NotImplementedError

    def colour(self, crops, n_views=None):
        """The device half of the crop path (make_crop_views): crops, a sequence of uint8 (B, 3, s, s), one per
        view, the geometric part of the recipe done (CropViews) -> a tuple of normalised float (B, 3, s, s), the
        first n_views views (all for None), each with its own colour parameters."""
        return tuple(self._pixels(self._coloured, c, self.colour_draws(c.shape[0], c.device))
                     for c in tuple(crops)[:n_views])

    def _coloured(self, crop, draws):
        params = self.colour_params(draws)
        out = torch.empty(crop.shape, device=crop.device)
        for s, x in _sorted_chunks(out, *self.colour_takes(params)):
            x.copy_(_at(crop, s)).mul_(1 / 255)
            self.colour_(x, params, s)
        return out

    def _random_crop(self, images, scale, *extra):
        """The random-resized-crop recipes (MoCo, SwAV's crops): a box of area fraction in scale per sample, the
        colour's draws, then a mirroring coin, in that order (the recipe's); self._crop(images, box draws, colour
        draws, flip, *extra) does the rest."""
        b, device = images.shape[0], images.device
        boxes = crop_box_draws(b, scale, (3 / 4, 4 / 3), device)
        colour = self.colour_draws(b, device)
        return self._pixels(self._crop, images, boxes, colour, _coin(b, 0.5, device), *extra)

    def _resampled(self, images, rows, cols, size, colour_draws):
        """images (B, 3, H, W), uint8 or float in [0, 1], resampled by the compact weights (rows, cols) to
        size = (S, T) and coloured -> normalised float (B, 3, S, T)."""
        b, device = images.shape[0], images.device
        params = self.colour_params(colour_draws)
        rows = _scaled(rows, _pixel_scale(images))
        out = torch.empty(b, 3, *size, device=device)
        for s, x in _sorted_chunks(out, *self.colour_takes(params)):
            _resample(_at(images, s), _take(rows, s), _take(cols, s), out=x).clamp_(0, 1)
            self.colour_(x, params, s)
        return out


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
        b, device = images.shape[0], images.device
        if self.recipe == "cifar":
            geometry = translate_draws(b, 4, 0.8, device)
        else:
            geometry = crop_box_draws(b, (0.3, 1.0), (0.7, 1.4), device)
        return self._pixels(self._view, images, geometry, self.colour_draws(b, device), flip)

    def _view(self, images, geometry, colour_draws, flip):
        _, _, height, width = images.shape
        if self.recipe == "cifar":
            rows, cols = translate_from(geometry, height, width, 4)
            size = (height, width)
        else:
            boxes = crop_boxes(geometry, height, width, (0.7, 1.4))
            rows, cols = crop_weights(boxes, height, width, self.size, "bicubic")
            size = (self.size, self.size)
        if flip is not None:
            cols = _mirror_input(cols, flip, width)
        return self._resampled(images, rows, cols, size, colour_draws)

    def colour_draws(self, b, device):
        """ColorJitter(0.4, 0.4, 0.4, hue) with p 0.8, then grayscale with p 0.25."""
        return jitter_draws(b, 0.4, 0.4, 0.4, self.hue, 0.8, device), _coin(b, 0.25, device)

    def colour_params(self, draws):
        jitter, gray = draws
        return jitter_from(jitter), gray

    def colour_takes(self, params):
        jitter, gray = params
        return _jitter_takes(jitter[0]), gray

    def colour_(self, x, params, s):
        jitter, gray = params
        _color_jitter_(x, *_take(jitter, s))
        _grayscale_(x, _at(gray, s))
        self.normalize_(x)


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
        return self._random_crop(images, (0.2, 1.0))

    def _crop(self, images, boxes, colour_draws, flip):
        _, _, height, width = images.shape
        rows, cols = crop_weights(crop_boxes(boxes, height, width, (3 / 4, 4 / 3)), height, width, self.size,
                                  "bilinear")
        return self._resampled(images, rows, _mirror_output(cols, flip), (self.size, self.size), colour_draws)

    def colour_draws(self, b, device):
        """v1: grayscale p 0.2, then ColorJitter(0.4, 0.4, 0.4, 0.4) always; v2: ColorJitter(0.4, 0.4, 0.4, 0.1)
        p 0.8, grayscale p 0.2, Gaussian blur (sigma 0.1-2) p 0.5. Each a tuple in the order they run."""
        if self.version == 1:
            return _coin(b, 0.2, device), jitter_draws(b, 0.4, 0.4, 0.4, 0.4, 1.0, device)
        return (jitter_draws(b, 0.4, 0.4, 0.4, 0.1, 0.8, device), _coin(b, 0.2, device),
                blur_draws(b, _BLUR_SIGMA, 0.5, device))

    def colour_params(self, draws):
        if self.version == 1:
            gray, jitter = draws
            return gray, jitter_from(jitter)
        return _jitter_gray_blur_params(draws)

    def colour_takes(self, params):
        if self.version == 1:
            gray, jitter = params
            return _jitter_takes(jitter[0]), gray
        jitter, gray, blur = params
        return _blur_takes(blur), _jitter_takes(jitter[0]), gray

    def colour_(self, x, params, s):
        if self.version == 1:
            gray, jitter = params
            _grayscale_(x, _at(gray, s))
            _color_jitter_(x, *_take(jitter, s))
        else:
            _jitter_gray_blur_(x, params, s)
        self.normalize_(x)


_BLUR_SIGMA = (0.1, 2.0)        # MoCo v2's and SwAV's Gaussian blur: sigma uniform in 0.1-2 px


def _jitter_gray_blur_params(draws):
    """MoCo v2's and SwAV's colour draws (jitter_draws', _coin's, blur_draws') -> their parameters."""
    jitter, gray, blur = draws
    return jitter_from(jitter), gray, blur_from(blur, _BLUR_SIGMA)


def _jitter_gray_blur_(x, params, s):
    """MoCo v2's and SwAV's colour passes on x (float (n, 3, S, S) in [0, 1], samples s), in place: jitter,
    grayscale, blur, with params = _jitter_gray_blur_params' of the whole batch."""
    jitter, gray, blur = params
    _color_jitter_(x, *_take(jitter, s))
    _grayscale_(x, _at(gray, s))
    _blur_(x, _at(blur, s))


class BatchCMCViews(_CompilableViews):
    """CMC's views of a batch of uint8 images (B, 3, H, W) of any size: CMCViews vectorised (the crop resampled
    as PIL does, bilinear, antialiased when it shrinks, in float without rounding to 8 bits), Lab on the device.
    Returns (L (B, 1, S, S), ab (B, 2, S, S)), normalised; n_views=1 (the classifier phase) gives (L,) alone."""

    def __init__(self, recipe, crop_low=CMC_CROP_LOW, colour="Lab"):
        self.recipe, self.size, self.crop_low, self.space = recipe, RECIPE_SIZE[recipe], crop_low, colour

    def __call__(self, images, n_views=2):
        b, device = images.shape[0], images.device
        boxes = crop_box_draws(b, (self.crop_low, 1.0), (3 / 4, 4 / 3), device)
        lab = self._pixels(self._split, images, boxes, _coin(b, 0.5, device))
        return (lab[:, :1], lab[:, 1:])[:n_views]

    def _split(self, images, boxes, flip):
        b, _, height, width = images.shape
        rows, cols = crop_weights(crop_boxes(boxes, height, width, (3 / 4, 4 / 3)), height, width, self.size,
                                  "bilinear")
        cols = _mirror_output(cols, flip)
        rows = _scaled(rows, _pixel_scale(images))
        lab = torch.empty(b, 3, self.size, self.size, device=images.device)
        for s in _chunks(lab):
            x = _resample(images[s], _take(rows, s), _take(cols, s), out=lab[s]).clamp_(0, 1)
            to_colour_space_(x, self.space)
        return lab

    def colour(self, crops, n_views=2):
        """The device half of the crop path: crops, a one-element sequence of the uint8 crops (B, 3, S, S) that
        loader workers cut and flipped (CropViews) -> their normalised Lab, (L (B, 1, S, S), ab (B, 2, S, S))
        (n_views=1: (L,)). No random draw."""
        lab = self._pixels(self._crop_split, crops[0])
        return (lab[:, :1], lab[:, 1:])[:n_views]

    def _crop_split(self, crop):
        lab = torch.empty(crop.shape, device=crop.device)
        for s in _chunks(lab):
            to_colour_space_(lab[s].copy_(crop[s]).mul_(1 / 255), self.space)
        return lab


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
        return self._random_crop(images, scale, size)

    def _crop(self, images, boxes, colour_draws, flip, size):
        _, _, height, width = images.shape
        rows, cols = crop_weights(crop_boxes(boxes, height, width, (3 / 4, 4 / 3)), height, width, size,
                                  "bilinear")
        return self._resampled(images, rows, _mirror_output(cols, flip), (size, size), colour_draws)

    def colour_draws(self, b, device):
        """ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, Gaussian blur (sigma 0.1-2) p 0.5."""
        return (jitter_draws(b, 0.8, 0.8, 0.8, 0.2, 0.8, device), _coin(b, 0.2, device),
                blur_draws(b, _BLUR_SIGMA, 0.5, device))

    def colour_params(self, draws):
        return _jitter_gray_blur_params(draws)

    def colour_takes(self, params):
        jitter, gray, blur = params
        return _blur_takes(blur), _jitter_takes(jitter[0]), gray

    def colour_(self, x, params, s):
        _jitter_gray_blur_(x, params, s)
        self.normalize_(x)


class BatchProbeViews(BatchMultiCropViews):
    """A linear protocol's training view of a batch of uint8 images (B, 3, H, W) of any size: probe_view_transform
    vectorised, as one crop of SwAV's (PIL-like antialiased bilinear resampling in float) without its colour:
    only the normalisation. Returns a 1-tuple of float (B, 3, S, S)."""

    def __init__(self, recipe, scale, mean_std=None):
        low, high = scale
        super().__init__(recipe, MultiCrop((1,), (RECIPE_SIZE[recipe],), (low,), (high,)), mean_std)

    def colour_draws(self, b, device):
        """No colour operation: the draws are only which samples take one (none)."""
        return (torch.zeros(b, dtype=torch.bool, device=device),)

    def colour_params(self, draws):
        return draws

    def colour_takes(self, params):
        return params

    def colour_(self, x, params, s):
        self.normalize_(x)


# ----------------------------------------------------------------------------------------------------------
# The crop path, for image folders read file by file: loader workers decode each image and do the geometric part
# of its recipe (crop and resize, flip, AMDIM's 32 px translation) in 8 bits, and ship uint8 crops (a quarter of
# float32 views' bytes); the training device does the colour part (jitter, grayscale, blur, Lab, normalisation)
# batched, with the in-memory path's code (the Batch*Views' colour()). Every colour operation commutes with the
# flip, so each recipe keeps its op order.

class CropPath(NamedTuple):
    """geometry: per image (a PIL RGB image, or a file opened but not decoded: datasets.ImageFile) -> a tuple of
    uint8 tensors (3, s, s), one per view (CMC: one crop); colour: (a sequence of uint8 (B, 3, s, s) on the
    device, one per view, n_views) -> what the batched recipe returns for those views (make_views)."""
    geometry: object
    colour: object


def make_crop_views(kind, recipe, *, mean_std=None, resize_first=False, crop_low=None, crops=None, scale=None,
                    colour="Lab"):
    """The training views of make_views(kind, recipe, ...) with the default augmentation, split into a CropPath:
    the per-image geometry (CropViews, or TranslatedViews for AMDIM's 32 px recipe) and the batched colour
    (the Batch*Views' colour()). Views have the per-image recipe's distribution; resize_first as make_views'
    (AMDIM at 32 px only). --aug's policies have no batched form: they stay per image (make_views)."""
    _check_views(kind, recipe, "default")
    size = RECIPE_SIZE[recipe]
    if kind == "amdim":
        colour = BatchTwoViews(recipe, mean_std).colour
        if recipe == "cifar":
            return CropPath(TranslatedViews(resize_first), colour)
        return CropPath(CropViews([Crop(size, (0.3, 1.0), (0.7, 1.4), "bicubic")] * 2, shared_flip=True),
                        colour)
    if kind == "cmc":
        crop_low = CMC_CROP_LOW if crop_low is None else crop_low
        return CropPath(CropViews([Crop(size, (crop_low, 1.0))]), BatchCMCViews(recipe, crop_low, colour).colour)
    if kind == "swav":
        crops = crops or _default_crops(recipe)
        return CropPath(CropViews([Crop(s, area) for s, area in crops.each()]),
                        BatchMultiCropViews(recipe, crops, mean_std).colour)
    if kind == "probe":
        scale = scale or PROBE_SCALE
        return CropPath(CropViews([Crop(size, tuple(scale))]), BatchProbeViews(recipe, scale, mean_std).colour)
    return CropPath(CropViews([Crop(size, (0.2, 1.0))] * 2), BatchMoCoViews(recipe, int(kind[-1]), mean_std).colour)


@dataclass(frozen=True)
class Crop:
    """One view's RandomResizedCrop: output size (px), area fraction range, aspect ratio range, resampling
    ("bilinear", torchvision's default, or "bicubic")."""
    size: int
    scale: tuple
    ratio: tuple = (3 / 4, 4 / 3)
    mode: str = "bilinear"


class CropViews:
    """The geometric part of a recipe, per image: image -> a tuple of uint8 (3, s, s), one per Crop of `crops`:
    a RandomResizedCrop (torchvision's get_params, box_of) mirrored with p 0.5, once for every view
    (shared_flip: AMDIM's pair) or per view. image: a PIL RGB image, or a file opened but not decoded
    (datasets.ImageFile: size, decode(scale)). An image's random numbers are drawn in one call from torch's
    global generator (each torch call costs a loader worker microseconds; get_params makes a dozen a box).

    Every box is drawn on the full-size image. A JPEG file is then decoded at the smallest scale (1/2, 1/4, 1/8;
    draft False: always 1) at which every box still spans more than its output size both ways, so that each crop
    is still only shrunk, and the boxes are rounded to that scale's pixels (each edge moves by at most half of
    one: a pixel of the full-size image at 1/2 scale). The crop is resized by torch's antialiased uint8
    resampling (F.interpolate, antialias=True), which computes what PIL's resize of the cropped image does
    (torchvision's per-image recipe) to within one 8-bit level, at a fraction of its cost (bench/loader.py)."""

    def __init__(self, crops, shared_flip=False, draft=True):
        self.crops, self.shared_flip, self.draft = tuple(crops), shared_flip, draft

    def __call__(self, image):
        width, height = image.size
        draws = torch.rand(len(self.crops), BOX_DRAWS + 1).tolist()     # per crop: its box's, then its flip's
        boxes = [box_of(height, width, crop.scale, crop.ratio, u) for crop, u in zip(self.crops, draws)]
        flips = [u[-1] < 0.5 for u in ([draws[0]] * len(draws) if self.shared_flip else draws)]
        room = min(min(h, w) / (crop.size + 1) for (_, _, h, w), crop in zip(boxes, self.crops))
        img, scale = _decoded(image, _draft_scale(room) if self.draft else 1)
        pixels = _pixels(img)
        out = []
        for (top, left, h, w), crop, mirror in zip(boxes, self.crops, flips):
            rows, cols = _reduced(top, h, scale), _reduced(left, w, scale)
            view = _resized(pixels[:, rows, cols], (crop.size, crop.size), crop.mode)
            out.append(view.flip(-1) if mirror else view)
        return tuple(out)


BOX_ATTEMPTS = 10                   # RandomResizedCrop's tries before its centre-crop fallback
BOX_DRAWS = 2 * BOX_ATTEMPTS + 2    # box_of's uniforms: area and log aspect ratio per try, then top and left


def box_of(height, width, scale, ratio, u):
    """torchvision's RandomResizedCrop.get_params(image of height x width, scale, ratio), its random numbers
    taken from u (BOX_DRAWS uniforms in [0, 1)): (top, left, h, w). Up to BOX_ATTEMPTS tries of an area
    fraction ~ U(scale) and a log-uniform aspect ratio; the first box that fits wins, placed uniformly; if none
    fits, a centre crop with the ratio clamped into range."""
    area, (log_low, log_high) = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    for k in range(BOX_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_low + (log_high - log_low) * u[2 * k + 1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = u[2 * BOX_ATTEMPTS], u[2 * BOX_ATTEMPTS + 1]
            return int(top * (height - h + 1)), int(left * (width - w + 1)), h, w
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TranslatedViews:
    """AMDIM's 32 px pair, geometry only, per image (train_view_transform's "cifar" ops): sources of another size
    first resized (bicubic, antialiased, short side 32 px; a JPEG decoded at the smallest scale that keeps its
    short side over 32 px) and centre-cropped to 32 px (resize_first), one flip with p 0.5 for both views, then
    per view a shift by up to +-4 px filled by reflection, with p 0.8. image: as CropViews' -> (uint8 (3, 32,
    32),) * 2."""

    def __init__(self, resize_first=False, draft=True):
        self.resize_first, self.draft = resize_first, draft
        self.shift = T.RandomApply([T.RandomCrop(32, padding=4, padding_mode="reflect")], p=0.8)

    def __call__(self, image):
        flip = torch.rand(1).item() < 0.5
        room = min(image.size) / 33 if self.resize_first and self.draft else 1
        pixels = _pixels(_decoded(image, _draft_scale(room))[0])
        if self.resize_first:
            height, width = pixels.shape[-2:]
            long = 32 * max(height, width) // min(height, width)        # torchvision's Resize(32) size rule
            pixels = TF.center_crop(_resized(pixels, (32, long) if height <= width else (long, 32), "bicubic"), 32)
        pixels = pixels.flip(-1) if flip else pixels.clone()         # a new tensor: _pixels' is read-only
        return tuple(self.shift(pixels) for _ in range(2))


DRAFT_SCALES = (8, 4, 2)       # libjpeg decodes at 1/8, 1/4 or 1/2 scale (its DCT scaling), largest first


def _draft_scale(room):
    """The largest libjpeg DCT scale (DRAFT_SCALES, else 1) at most `room`."""
    return next((s for s in DRAFT_SCALES if room >= s), 1)


def _decoded(image, scale):
    """(PIL RGB image, its reduction s: full-size pixel coordinates over s are its own): a PIL image as it is, a
    file (datasets.ImageFile) decoded at 1/scale where its format can (JPEG), else at full size."""
    if hasattr(image, "decode"):
        return image.decode(scale)
    return image, 1


def _reduced(start, length, scale):
    """The slice of pixels start..start+length-1 of the full-size image in the image decoded at 1/scale, its
    ends rounded to that image's pixels."""
    return slice(round(start / scale), round((start + length) / scale))


def _pixels(image):
    """PIL RGB image -> uint8 tensor (3, H, W) of its pixels, channels-last in memory (as PIL keeps them, and as
    torch's uint8 resampling reads fastest). Read-only: it shares the memory of the bytes PIL returns (one copy
    of the pixels fewer than through numpy); callers make new tensors of it."""
    width, height = image.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # torch's warning about a read-only buffer
        flat = torch.frombuffer(image.tobytes(), dtype=torch.uint8)
    return flat.view(height, width, 3).permute(2, 0, 1)


def _resized(pixels, size, mode):
    """uint8 (3, H, W) -> uint8 (3, *size): resampled with the antialiased kernel of mode ("bilinear" or
    "bicubic"), as PIL resizes."""
    return F.interpolate(pixels[None], size=size, mode=mode, antialias=True, align_corners=False)[0]
