"""Datasets and the original AMDIM augmentation recipes.

Every training item is (x1, x2, y): two augmented views of one image that share a random horizontal flip and
draw everything else independently; y is -1 for unlabelled images (STL10's unlabeled split). Test items are
(x, y). Three recipes, by encoder input size: "cifar" (32 px), "stl" (64 px) and "imagenet" (128 px).
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from utils import UserError

DATASETS = ("C10", "C100", "STL10", "IN128", "PLACES205", "FOLDER", "DIGITS")
AUGMENTATIONS = ("default", "autoaugment", "fast_autoaugment")
_SIZE = {"C10": 32, "C100": 32, "DIGITS": 32, "STL10": 64, "IN128": 128, "PLACES205": 128}
_RECIPE_OF_SIZE = {32: "cifar", 64: "stl", 128: "imagenet"}
_NORMALIZATION = {
    "cifar": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "stl": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# ImageFolder datasets also accept the folder names the original code expected.
_FOLDER_NAMES = {"IN128": [("train", "val"), ("ILSVRC2012_img_train", "ILSVRC2012_img_val")],
                 "PLACES205": [("train", "val"), ("places205_256_train", "places205_256_val")],
                 "FOLDER": [("train", "val")]}
DIGITS_TRAIN, DIGITS_SEED = 1500, 0


def encoder_size(name, image_size=None):
    """Input size of the encoder for a dataset (FOLDER: its --image_size)."""
    if name == "FOLDER":
        if image_size not in _RECIPE_OF_SIZE:
            raise UserError(f"--dataset FOLDER needs --image_size 32, 64 or 128 (got {image_size})")
        return image_size
    if name not in _SIZE:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return _SIZE[name]


@dataclass
class Splits:
    train: torch.utils.data.Dataset    # items (x1, x2, y)
    test: torch.utils.data.Dataset     # items (x, y)
    n_classes: int
    image_size: int


# ----------------------------------------------------------------------------------------------------------
# Transforms.

class TwoViews:
    """Flip the image (p 0.5) once for both views, then augment each view independently."""

    def __init__(self, view_transform):
        self.view_transform = view_transform

    def __call__(self, img):
        if torch.rand(1).item() < 0.5:
            img = TF.hflip(img)
        return self.view_transform(img), self.view_transform(img)


def train_view_transform(recipe, aug="default", resize_first=False):
    """The per-view augmentation of the original code for one recipe (after the shared flip)."""
    size = {"cifar": 32, "stl": 64, "imagenet": 128}[recipe]
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
    return T.Compose(ops + _to_normalized_tensor(recipe))


def test_transform(recipe, resize_first=False):
    """Deterministic test-time transform: bicubic resize and centre crop (none for 32 px data)."""
    if recipe == "cifar":
        ops = [T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32)] if resize_first else []
    else:
        resize, size = {"stl": (70, 64), "imagenet": (146, 128)}[recipe]
        ops = [T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
    return T.Compose(ops + _to_normalized_tensor(recipe))


def _to_normalized_tensor(recipe, mean_std=None):
    mean, std = mean_std or _NORMALIZATION[recipe]
    return [T.ToTensor(), T.Normalize(mean, std)]


# ----------------------------------------------------------------------------------------------------------
# Fast AutoAugment (Lim et al. 2019): the published ImageNet policy.

class FastAutoAugment:
    """Apply one uniformly chosen sub-policy of the Fast AutoAugment ImageNet policy to a PIL image."""

    def __call__(self, img):
        sub_policy = FAA_IMAGENET_POLICY[torch.randint(len(FAA_IMAGENET_POLICY), (1,)).item()]
        for name, prob, magnitude in sub_policy:
            if torch.rand(1).item() < prob:
                img = _faa_op(img, name, magnitude)
        return img


# Filled in below from the published policy table.
FAA_IMAGENET_POLICY = ()


def _faa_op(img, name, magnitude):
    raise NotImplementedError(name)


# ----------------------------------------------------------------------------------------------------------
# Image files.

def load_rgb(path):
    """Open any image file as 8-bit RGB: grayscale, palette, CMYK, RGBA and 16-bit images are converted."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path} ({e}); delete or replace the file") from None


def to_rgb(img):
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit data: keep the top 8 bits instead of clipping everything above 255 to white.
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


class Transformed(torch.utils.data.Dataset):
    """(image, label) items of `base` passed through `transform`: (x1, x2, y) for TwoViews, else (x, y)."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        img, y = self.base[i]
        out = self.transform(img)
        return (*out, y) if isinstance(out, tuple) else (out, y)


class ArrayImages(torch.utils.data.Dataset):
    """In-memory uint8 images (N, H, W, 3) with labels; items are (PIL image, int label)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), int(self.labels[i])


# ----------------------------------------------------------------------------------------------------------
# The datasets.

def digits_arrays():
    """scikit-learn's 1,797 8x8 digits as uint8 32x32 RGB, split 1,500/297 by a fixed seeded permutation."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.clamp(0, 255).round().to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SEED))
    train, test = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
    return (x[train].numpy(), y[train].numpy()), (x[test].numpy(), y[test].numpy())


def _digits(aug):
    (x_tr, y_tr), (x_te, y_te) = digits_arrays()
    pixels = x_tr.reshape(-1, 3).astype(np.float64) / 255.0
    mean_std = (tuple(pixels.mean(0)), tuple(pixels.std(0)))     # the training split's own statistics
    view = train_view_transform("cifar", aug)
    view.transforms[-1] = T.Normalize(*mean_std)
    test = T.Compose(_to_normalized_tensor("cifar", mean_std))
    return (Transformed(ArrayImages(x_tr, y_tr), TwoViews(view)), Transformed(ArrayImages(x_te, y_te), test), 10)


def _torchvision(name, factory, root, download):
    """Build a torchvision dataset from `root`, downloading it when absent (and allowed)."""
    try:
        return factory(download=False)
    except RuntimeError:
        pass  # not on disk
    if not download:
        raise UserError(f"{name} not found in {root}: put the extracted dataset there (or allow the download)")
    try:
        return factory(download=True)
    except Exception as e:  # noqa: BLE001 -- offline, DNS, HTTP, disk: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{name} not found in {root} and the download failed ({reason}): put the dataset files "
                        f"under --input_dir {root} or run once with internet access") from None


def _cifar_or_stl(name, root, phase, aug, download):
    recipe = "cifar" if name in ("C10", "C100") else "stl"
    if name == "STL10":
        split = "train+unlabeled" if phase == "self_supervised" else "train"
        make = lambda s: lambda download: torchvision.datasets.STL10(root, split=s, download=download)
        train, test, n_classes = make(split), make("test"), 10
        label = "STL-10"
    else:
        cls = torchvision.datasets.CIFAR10 if name == "C10" else torchvision.datasets.CIFAR100
        make = lambda is_train: lambda download: cls(root, train=is_train, download=download)
        train, test, n_classes = make(True), make(False), 10 if name == "C10" else 100
        label = "CIFAR-10" if name == "C10" else "CIFAR-100"
    train_set = _torchvision(label, train, root, download)
    test_set = _torchvision(label, test, root, download)
    return (Transformed(_PILView(train_set), TwoViews(train_view_transform(recipe, aug))),
            Transformed(_PILView(test_set), test_transform(recipe)), n_classes)


class _PILView(torch.utils.data.Dataset):
    """A torchvision dataset returning (PIL image, label) as-is; the label as a plain int."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        img, y = self.base[i]
        return img, int(y)


def _image_folders(name, root, image_size, aug):
    if not os.path.isdir(root):
        raise UserError(f"--input_dir {root} does not exist: point it at the folder that holds train/ and val/")
    names = _FOLDER_NAMES[name]
    found = next(((tr, va) for tr, va in names if os.path.isdir(os.path.join(root, tr))
                  and os.path.isdir(os.path.join(root, va))), None)
    if found is None:
        expected = " or ".join(f"{tr}/ and {va}/" for tr, va in names)
        raise UserError(f"--input_dir {root} has no {expected} folders: arrange the images as "
                        f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
    recipe = _RECIPE_OF_SIZE[image_size]
    resize_first = name == "FOLDER" and recipe == "cifar"
    folders = []
    for sub in found:
        path = os.path.join(root, sub)
        try:
            folders.append(torchvision.datasets.ImageFolder(path, loader=load_rgb))
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"{path} holds no images in class folders ({str(e).splitlines()[0]}): arrange it as "
                            f"{path}/<class>/<image>") from None
    train, test = folders
    if train.classes != test.classes:
        raise UserError(f"{found[0]}/ and {found[1]}/ under {root} have different class folders; give both "
                        f"the same set of classes")
    return (Transformed(train, TwoViews(train_view_transform(recipe, aug, resize_first))),
            Transformed(test, test_transform(recipe, resize_first)), len(train.classes))


def build_splits(name, input_dir, phase, image_size=None, aug="default", download=True):
    """Training (two views) and test splits of a dataset; see Splits. phase: "self_supervised" or
    "classifiers" (only STL10 differs: its unlabeled images join the self-supervised training split)."""
    size = encoder_size(name, image_size)
    if aug not in AUGMENTATIONS:
        raise UserError(f"unknown --aug {aug!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if name == "DIGITS":
        train, test, n_classes = _digits(aug)
    elif name in ("C10", "C100", "STL10"):
        train, test, n_classes = _cifar_or_stl(name, input_dir, phase, aug, download)
    else:
        train, test, n_classes = _image_folders(name, input_dir, size, aug)
    return Splits(train=train, test=test, n_classes=n_classes, image_size=size)
