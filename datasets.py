"""Data sources: the datasets, their splits and image loading. The augmentation recipes are in augment.py.

Every training item is (views, y, index): the augmented views of one image (augment.make_views: AMDIM's pair with a
shared flip, MoCo's independent pair, CMC's L and ab, SwAV's crops), its label (-1 for unlabelled images, STL10's
unlabeled split) and its position in the split. Test items are (x, y), or None for an unreadable image with
--skip_bad_images. In-memory datasets can instead keep uint8 images, items (image, y, index), and augment whole
batches on the training device (Splits.batch_augment); so can image folders, once decoded into memory
(--cache_images, imagecache.py; ImageCache, DecodedSplit). Image folders read file by file with the default
augmentation have loader workers decode each image and cut its views' uint8 crops (items (crops, y, index);
CroppedFiles), which the training device colours batch by batch. Image folders skip hidden entries and refuse folder
symlinks that loop or lead out of their class folder (ImageFolder).
Three recipes, by encoder input size: "cifar" (32 px), "stl" (64 px) and "imagenet" (128 px).
"""
import contextlib
import functools
import multiprocessing
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from augment import (AUGMENTATIONS, NORMALIZATION, RECIPE_OF_SIZE, _to_normalized_tensor, make_crop_views, make_views,
                     test_transform)
import imagecache
import subset as subsets
import utils
from utils import UserError

DATASETS = ("C10", "C100", "STL10", "IN128", "PLACES205", "FOLDER", "DIGITS")
_SIZE = {"C10": 32, "C100": 32, "DIGITS": 32, "STL10": 64, "IN128": 128, "PLACES205": 128}
# ImageFolder datasets also accept the folder names the original code expected.
_FOLDER_NAMES = {"IN128": [("train", "val"), ("ILSVRC2012_img_train", "ILSVRC2012_img_val")],
                 "PLACES205": [("train", "val"), ("places205_256_train", "places205_256_val")],
                 "FOLDER": [("train", "val")]}
DIGITS_TRAIN, DIGITS_SEED = 1500, 0


def encoder_size(name, image_size=None):
    """Input size of the encoder for a dataset (FOLDER: its --image_size)."""
    if name == "FOLDER":
        if image_size not in RECIPE_OF_SIZE:
            raise UserError(f"--dataset FOLDER needs --image_size 32, 64 or 128 (got {image_size})")
        return image_size
    if name not in _SIZE:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return _SIZE[name]


@dataclass
class Splits:
    train: torch.utils.data.Dataset    # items (views, y, index)
    test: torch.utils.data.Dataset     # items (x, y); None for an unreadable image, with skip_bad_images
    n_classes: int
    image_size: int
    skippers: dict = field(default_factory=dict)   # {"train", "test"}: SkipBadImages, with --skip_bad_images
    # When set, `train` holds uint8 images (items (image (3, H, W) uint8, y, index)) and this callable makes the
    # augmented views of a whole batch on the training device; with `crops`, items (uint8 crops, one (3, s, s)
    # per view, y, index) that loader workers cut image by image, and the callable colours them
    # (augment.make_crop_views).
    batch_augment: object = None
    memory_factory: object = None      # () -> the labelled training images with the test transform (kNN)
    mean_std: tuple = None             # the views' normalisation: ((mean r, g, b), (std r, g, b))
    crops: bool = False

    @property
    def per_image_items(self):
        """Whether training items are made image by image (decoded and augmented or cropped), the work of
        loader worker processes, re-seeded per image (engine.SeededItems)."""
        return self.batch_augment is None or self.crops

    @functools.cached_property
    def memory(self):
        """The kNN memory: labelled training images through the test-time transform, items (x, y)."""
        return self.memory_factory()

    def skipped_images(self, split=None):
        """How many unreadable images were skipped so far (in every process of this rank): in both splits, or in
        one ("train", which includes the kNN memory, or "test")."""
        chosen = [s for name, s in self.skippers.items() if split in (None, name)]
        return sum(s.n_skipped for s in chosen)


# ----------------------------------------------------------------------------------------------------------
# In-memory images.

class UInt8Images(torch.utils.data.Dataset):
    """In-memory uint8 images (N, 3, H, W) with labels; training items (image, int label, index) whose views a
    batched augmentation makes on the device."""

    def __init__(self, images, labels):
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), i


# ----------------------------------------------------------------------------------------------------------
# Image files.

class BadImageError(UserError):
    """An image file that cannot be decoded; `path` names it. (A plain one-message constructor, so that a
    DataLoader worker's copy re-raised in the training process keeps this type.)"""
    path = None


def load_rgb(path):
    """Open any image file as 8-bit RGB: grayscale, palette, CMYK, RGBA and 16-bit images are converted."""
    with _reading(path), Image.open(path) as img:
        img.load()
        return to_rgb(img)


@contextlib.contextmanager
def _reading(path):
    """What PIL raises for an unreadable or undecodable file becomes a BadImageError that names it."""
    try:
        yield
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        error = BadImageError(f"cannot read image {path} ({reason}); delete or replace the file, or pass "
                              f"--skip_bad_images")
        error.path = path
        raise error from None


class ImageFile:
    """An image file opened, its pixels not yet decoded (augment.CropViews' input): size (width, height) from its
    header; decode(scale) -> (8-bit RGB PIL image, s): the pixels decoded at 1/s scale, s = scale (a power of two
    up to 8) where the format can (JPEG: libjpeg's DCT scaling, through Image.draft), else 1 (full size).
    Unreadable files raise BadImageError, as load_rgb."""

    def __init__(self, path):
        self.path = path
        with _reading(path):
            self._image = Image.open(path)
        self.size = self._image.size

    def decode(self, scale=1):
        img, (width, height) = self._image, self.size
        with _reading(self.path):
            drafted = img.draft(None, (max(1, width // scale), max(1, height // scale))) if scale > 1 else None
            img.load()         # and closes the file (a single-frame image opened by name)
            rgb = img if img.mode == "RGB" else to_rgb(img)
        return rgb, 1 if drafted is None else round(width / drafted[1][2])      # draft's box: the image at 1/s


class CroppedFiles(torch.utils.data.Dataset):
    """(crops, label) items of image files (samples: (path, label) pairs): each file opened (ImageFile) and cut
    into its views' uint8 crops by geometry (augment.CropPath's), decoded no further than they need. An
    unreadable file raises BadImageError, which SkipBadImages catches."""

    def __init__(self, samples, geometry):
        self.samples, self.geometry = samples, geometry

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, y = self.samples[i]
        return self.geometry(ImageFile(path)), y


class SkipBadImages(torch.utils.data.Dataset):
    """Skip unreadable images, counting each one (--skip_bad_images).

    substitute=True serves the next readable item instead, which keeps every training batch full (the
    cross-process NCE gather needs that). substitute=False gives None for an unreadable item, and the loaders'
    collate (engine.collate_present) leaves it out, so scoring counts every readable image exactly once.
    One flag per item in shared memory marks the unreadable ones, so this rank's DataLoader worker processes
    report into the same place and each file counts once however often it is read; wrappers of the same images
    (the training split and the kNN memory) share their flags through `flags`.
    """

    def __init__(self, base, substitute=True, flags=None):
        self.base, self.substitute = base, substitute
        self.bad = flags if flags is not None else multiprocessing.Array("b", len(base), lock=False)

    @property
    def n_skipped(self):
        return int(np.frombuffer(self.bad, dtype=np.int8).sum())

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if not self.substitute:
            return self._read(i)
        for k in range(min(len(self.base), 100)):
            item = self._read((i + k) % len(self.base))
            if item is not None:
                return item
        raise UserError(f"100 images in a row from item {i} on are unreadable; check the dataset's files")

    def _read(self, j):
        """Item j, or None when its image cannot be read (flagged, and warned about the first time)."""
        try:
            return self.base[j]
        except BadImageError as e:
            if not self.bad[j]:
                self.bad[j] = 1
                print(f"warning: skipping unreadable image {e.path}", file=sys.stderr, flush=True)
            return None


def to_rgb(img):
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit data: keep the top 8 bits instead of clipping everything above 255 to white.
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


class Transformed(torch.utils.data.Dataset):
    """(image, label) items of `base` passed through `transform` (None: as they are): training items (views, y,
    index) when the transform makes a tuple of views, else test items (x, y)."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        if item is None:      # an unreadable image that scoring skips (SkipBadImages with substitute=False)
            return None
        img, y = item
        out = img if self.transform is None else self.transform(img)
        return (out, int(y), i) if isinstance(out, tuple) else (out, int(y))


class ArrayImages(torch.utils.data.Dataset):
    """In-memory uint8 images (N, H, W, 3) with labels; items are (PIL image, int label)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), self.labels[i]


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


def _digits(views, batched, labels=None):
    (x_tr, y_tr), (x_te, y_te) = digits_arrays()
    pixels = x_tr.reshape(-1, 3).astype(np.float64) / 255.0
    mean_std = (tuple(pixels.mean(0)), tuple(pixels.std(0)))     # the training split's own statistics
    if labels is not None:
        keep = labels.keep(y_tr)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    test_transform_ = T.Compose(_to_normalized_tensor("cifar", mean_std))
    test = Transformed(ArrayImages(x_te, y_te), test_transform_)
    memory = lambda: Transformed(ArrayImages(x_tr, y_tr), test_transform_)
    augment = views(mean_std)
    if batched:
        return UInt8Images(x_tr.transpose(0, 3, 1, 2).copy(), y_tr), test, 10, augment, memory, mean_std
    return Transformed(ArrayImages(x_tr, y_tr), augment), test, 10, None, memory, mean_std


def _torchvision(name, factory, root, download):
    """Build a torchvision dataset from `root`, downloading it when absent (and allowed)."""
    try:
        return factory(download=False)
    except RuntimeError:
        pass  # not on disk
    if not download:
        raise UserError(f"{name} not found in {root}: put the extracted dataset there (or allow the download)")
    with download_lock(root, name):
        try:
            return factory(download=False)    # another process downloaded it while this one waited
        except RuntimeError:
            pass
        try:
            return factory(download=True)
        except Exception as e:  # noqa: BLE001 -- offline, DNS, HTTP, disk: all end the same way for the user
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{name} not found in {root} and the download failed ({reason}): put the dataset "
                            f"files under --input_dir {root} or run once with internet access") from None


DOWNLOAD_LOCK = ".download.lock"


@contextlib.contextmanager
def download_lock(root, name):
    """Hold an exclusive flock on <root>/.download.lock (utils.waiting_lock): the processes of a job that share
    `root` (those of one node, or every node on a shared filesystem) start together, and one downloads while the
    others wait here, however long it takes, then find the files. Where no lock can be had (a read-only `root`,
    a filesystem without locks) this goes on without: the download then reports a read-only `root` itself."""
    waiting = lambda: print(f"waiting for another process's download of {name} into {root}", file=sys.stderr,
                            flush=True)
    with utils.waiting_lock(root, DOWNLOAD_LOCK, waiting):
        yield


def _cifar_or_stl(name, root, phase, views, download, batched, labels=None):
    recipe = "cifar" if name in ("C10", "C100") else "stl"
    if name == "STL10":
        split = "train+unlabeled" if phase == "self_supervised" else "train"
        make = lambda s: lambda download: torchvision.datasets.STL10(root, split=s, download=download)
        train, labelled, test, n_classes = make(split), make("train"), make("test"), 10
        label = "STL-10"
    else:
        cls = torchvision.datasets.CIFAR10 if name == "C10" else torchvision.datasets.CIFAR100
        make = lambda is_train: lambda download: cls(root, train=is_train, download=download)
        train, test, n_classes = make(True), make(False), 10 if name == "C10" else 100
        labelled = train
        label = "CIFAR-10" if name == "C10" else "CIFAR-100"
    train_set = _torchvision(label, train, root, download)
    test = Transformed(_torchvision(label, test, root, download), test_transform(recipe))
    if labels is not None:      # a classifier run: train_set is the labelled split
        _keep_in_place(train_set, labels.keep(train_set.labels if name == "STL10" else train_set.targets))
        labelled = train
    if labelled is train:
        memory = lambda: Transformed(train_set, test_transform(recipe))
    else:     # STL-10's self-supervised split holds unlabelled images: the kNN memory is the labelled train split
        memory = lambda: Transformed(_torchvision(label, labelled, root, download), test_transform(recipe))
    augment = views(recipe, batched)
    if batched:
        # Both keep their images as one uint8 array: CIFAR (N, 32, 32, 3), STL-10 (N, 3, 96, 96).
        images = train_set.data if name == "STL10" else train_set.data.transpose(0, 3, 1, 2)
        labels = train_set.labels if name == "STL10" else train_set.targets
        return UInt8Images(np.ascontiguousarray(images), np.asarray(labels)), test, n_classes, augment, memory
    return Transformed(train_set, augment), test, n_classes, None, memory


def _keep_in_place(dataset, keep):
    """Restrict a torchvision CIFAR or STL-10 dataset to the images at indices `keep`."""
    dataset.data = dataset.data[keep]
    if hasattr(dataset, "targets"):
        dataset.targets = [dataset.targets[i] for i in keep]
    else:
        dataset.labels = dataset.labels[keep]


def _hidden(name):
    """Hidden entries (.git, .ipynb_checkpoints, .DS_Store, editors' ._ files) are never classes or images."""
    return name.startswith(".")


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder (same classes, samples and order on a plain tree) that skips hidden entries and
    follows folder symlinks only where that cannot go wrong: a link that loops back onto a folder above it, or
    leads out of its class folder, would silently repeat images or give other classes' images this class's
    label, so it is a UserError naming the link."""

    def find_classes(self, directory):
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not _hidden(e.name))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        for name in classes:
            _check_class_link(os.path.join(directory, name), directory)
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        valid = is_valid_file or (lambda path: torchvision.datasets.folder.has_file_allowed_extension(
            path, extensions))
        samples, empty = [], []
        for name in sorted(class_to_idx):
            files = [path for path in _class_files(os.path.join(directory, name)) if valid(path)]
            samples += [(path, class_to_idx[name]) for path in files]
            if not files:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}.")
        return samples


def _check_class_link(class_dir, split_dir):
    """A class folder may be a symlink (subsets are often built that way), but not to a folder that holds the
    split itself: walking it would list every class's images under this one."""
    split_real, class_real = os.path.realpath(split_dir), os.path.realpath(class_dir)
    if split_real == class_real or split_real.startswith(class_real + os.sep):
        raise UserError(f"class folder {class_dir} is a symlink to {class_real}, which contains {split_dir} "
                        f"itself: it would list every image again under one class; remove the link")


def _class_files(class_dir):
    """Every non-hidden file under a class folder, in torchvision's order (folders by path, files by name).
    Folder symlinks are followed within the class folder only; see _check_folder_link."""
    top = os.path.realpath(class_dir)
    chains = {class_dir: (top,)}      # the real folders from the class folder down to each folder walked
    listed = []
    for folder, subfolders, files in os.walk(class_dir, followlinks=True):
        chain = chains.pop(folder)
        subfolders[:] = [name for name in subfolders if not _hidden(name)]   # os.walk descends only into these
        for name in subfolders:
            path = os.path.join(folder, name)
            real = os.path.realpath(path) if os.path.islink(path) else os.path.join(chain[-1], name)
            _check_folder_link(path, real, chain, class_dir)
            chains[path] = chain + (real,)
        listed.append((folder, sorted(name for name in files if not _hidden(name))))
    return [os.path.join(folder, name) for folder, names in sorted(listed) for name in names]


def _check_folder_link(path, real, chain, class_dir):
    """A folder symlink inside a class folder must neither point back at a folder it sits in (a loop: os.walk
    would list the same images again, path after longer path) nor out of the class folder."""
    top = chain[0]
    if real in chain or top.startswith(real.rstrip(os.sep) + os.sep):
        raise UserError(f"symlink {path} loops back to {real}, a folder that contains it, so its images would "
                        f"be listed again and again; remove the link")
    if not real.startswith(top + os.sep):
        raise UserError(f"symlink {path} leads out of its class folder {class_dir} to {real}, whose images would "
                        f"all be labelled {os.path.basename(class_dir)}; move those images into the class folder "
                        f"or remove the link")


def _image_folders(name, root, image_size, make, kind, skip_bad_images=False, subset=None, cache=None,
                   crop_path=None, labels=None):
    """The Splits of an image folder dataset. make(recipe, resize_first, batched) makes the training views; kind
    is their view kind; cache: the ImageCache settings (None: read image by image); crop_path(recipe,
    resize_first): an augment.CropPath for training images read file by file (None: the per-image views)."""
    if not os.path.isdir(root):
        raise UserError(f"--input_dir {root} does not exist: point it at the folder that holds train/ and val/")
    names = _FOLDER_NAMES[name]
    found = next(((tr, va) for tr, va in names if os.path.isdir(os.path.join(root, tr))
                  and os.path.isdir(os.path.join(root, va))), None)
    if found is None:
        expected = " or ".join(f"{tr}/ and {va}/" for tr, va in names)
        raise UserError(f"--input_dir {root} has no {expected} folders: arrange the images as "
                        f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
    recipe = RECIPE_OF_SIZE[image_size]
    resize_first = name == "FOLDER" and recipe == "cifar"
    folders = []
    for sub in found:
        path = os.path.join(root, sub)
        try:
            folders.append(ImageFolder(path, loader=load_rgb))
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"{path} holds no images in class folders ({str(e).splitlines()[0]}): arrange it as "
                            f"{path}/<class>/<image>") from None
    train, test = folders
    if subset is not None:
        keep = subsets.read_class_list(subset)
        for folder in (train, test):
            subsets.select_classes(folder, keep)
    if train.classes != test.classes:
        raise UserError(f"{found[0]}/ and {found[1]}/ under {root} have different class folders; give both "
                        f"the same set of classes")
    if labels is not None:
        labels.apply_to_folder(train)
    n_classes = len(train.classes)
    test_tf = test_transform(recipe, resize_first)
    cache = cache or ImageCache("off")
    # Cached training images go through the first, deterministic ops of the per-image recipe when it resizes
    # first (AMDIM's 32 px views); the other recipes crop from the image as it is. Test images keep what the
    # test transform, applied to them here as on files, needs.
    decoded_train = cache.decode(train, 32 if resize_first and kind == "amdim" else None, skip_bad_images)
    decoded_test = cache.decode(test, 32 if resize_first else None, skip_bad_images, per_image_ok=True)
    skippers, augment, cropped = {}, None, None
    if decoded_train is not None:
        train, memory, augment = decoded_train.training_images(), DecodedImages(decoded_train), make(recipe, False,
                                                                                                   True)
        skippers["train"] = decoded_train
    else:
        # Read file by file: loader workers cut uint8 crops that the device colours, or make the whole views.
        cropped = crop_path(recipe, resize_first) if crop_path is not None else None
        files, transform = (CroppedFiles(train.samples, cropped.geometry), None) if cropped else \
            (train, make(recipe, resize_first, False))
        augment = cropped.colour if cropped else None
        memory = train
        if skip_bad_images:
            # Training batches get a stand-in for an unreadable image; the kNN memory leaves it out.
            files = skippers["train"] = SkipBadImages(files)
            memory = SkipBadImages(train, substitute=False, flags=files.bad)
        train = Transformed(files, transform)
    if decoded_test is not None:
        test = skippers["test"] = DecodedImages(decoded_test)
    elif skip_bad_images:
        test = skippers["test"] = SkipBadImages(test, substitute=False)      # scoring leaves it out
    return Splits(train=train, test=Transformed(test, test_tf), n_classes=n_classes, image_size=image_size,
                  skippers=skippers, batch_augment=augment, memory_factory=lambda: Transformed(memory, test_tf),
                  mean_std=NORMALIZATION[recipe], crops=cropped is not None)


def source_image(train, i):
    """The source image (PIL RGB) of item i of a training split made image by image (Transformed), before any
    augmentation."""
    base = train.base.base if isinstance(train.base, SkipBadImages) else train.base
    if isinstance(base, CroppedFiles):
        return load_rgb(base.samples[i][0])
    return train.base[i][0]


@dataclass
class ImageCache:
    """--cache_images for image folders: mode "auto", "on" or "off" (imagecache.decode_split); report: this
    process prints progress and counts the unreadable images it finds (rank 0 of a job: the job's sums then
    count each file once); budget: auto's limit in bytes per split."""
    mode: str = "auto"
    report: bool = True
    budget: int = imagecache.BUDGET_BYTES
    batched: bool = True           # the training split can take the batched augmentation
    copies: int = 1                # training processes on this machine, each with its own copy

    def decode(self, folder, size, skip_bad_images, per_image_ok=False):
        """A DecodedSplit of an ImageFolder split, or None for the per-image path. per_image_ok: the split
        serves per-image items either way (the test split), so only auto's and on's size rules apply."""
        if self.mode == "off":
            return None
        if not (self.batched or per_image_ok):
            if self.mode == "on":
                raise UserError("--cache_images on needs the batched augmentation: drop --per_image_aug and any "
                                "--aug other than default, or pass --cache_images off")
            return None
        decoded = imagecache.decode_split(folder.root, folder.samples, folder.classes, size, self.mode,
                                          loader=load_rgb, budget=self.budget, report=self.report,
                                          copies=self.copies)
        return None if decoded is None else DecodedSplit(decoded, folder.samples, skip_bad_images, self.report)


class DecodedSplit:
    """A split decoded by imagecache, with --skip_bad_images' rules for its unreadable files: without the flag
    the first one is an error (load_rgb's, naming the file); with it each is warned about once (on the reporting
    rank) and counted (n_skipped, like SkipBadImages), the training split serves the next readable image in
    its place and scoring leaves it out (DecodedImages gives None)."""

    def __init__(self, decoded, samples, skip_bad_images, report):
        self.images, self.labels, self.bad = decoded.images, decoded.labels, set(decoded.bad)
        if self.bad and not skip_bad_images:
            first = samples[min(self.bad)][0]
            load_rgb(first)         # raises its BadImageError
            raise UserError(f"{first} was unreadable when {decoded.path} was made; delete that cache file")
        for i in sorted(self.bad) if report else ():
            print(f"warning: skipping unreadable image {samples[i][0]}", file=sys.stderr, flush=True)
        self.n_skipped = len(self.bad) if report else 0

    def training_images(self):
        """UInt8Images of the split, each unreadable image replaced by the next readable one (SkipBadImages'
        substitute rule)."""
        images, labels = self.images, self.labels
        if self.bad:
            images, labels = images.clone(), labels.clone()
            n = len(labels)
            for i in sorted(self.bad):
                j = next((k % n for k in range(i, i + min(n, 100)) if k % n not in self.bad), None)
                if j is None:
                    raise UserError(f"100 images in a row from item {i} on are unreadable; check the dataset's "
                                    f"files")
                images[i], labels[i] = images[j], labels[j]
        return UInt8Images(images, labels)


class DecodedImages(torch.utils.data.Dataset):
    """(PIL RGB image, label) items of a DecodedSplit, what the ImageFolder gives without reading its files;
    None for an unreadable file (as SkipBadImages without substitute)."""

    def __init__(self, split):
        self.images, self.labels, self.bad = split.images, split.labels, split.bad
        self.n_skipped = split.n_skipped

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if i in self.bad:
            return None
        return Image.fromarray(self.images[i].permute(1, 2, 0).numpy()), int(self.labels[i])


def build_splits(name, input_dir, phase, image_size=None, aug="default", download=True, skip_bad_images=False,
                 batch_augment=True, views="amdim", subset=None, view_options=None, cache_images="off",
                 report=True, cache_budget=imagecache.BUDGET_BYTES, cache_copies=1, labels=None):
    """Training and test splits of a dataset; see Splits. phase: "self_supervised" or "classifiers" (only STL10
    differs: its unlabeled images join the self-supervised training split). views: the training views'
    augmentation kind (augment.make_views). skip_bad_images: instead of failing on an unreadable file (image
    folders), the training split serves the next readable image and the test split and kNN memory leave it out
    (None items, dropped by the loaders). batch_augment: in-memory datasets (C10, C100, STL10, DIGITS) with the
    default augmentation keep uint8 images and augment whole batches on the training device
    (Splits.batch_augment); image folders read file by file take the crop path (loader workers cut uint8 crops,
    the device colours them: Splits.crops); False keeps the per-image pipeline everywhere. subset: a class-list file that
    restricts image folders to those classes. view_options: make_views' keywords of the view kind (a
    ViewSpec's options: CMC's crop_low, SwAV's crops); None: its defaults. cache_images: "auto", "on" or "off" (the
    default here; train.py's is auto): decode image folder splits into memory (imagecache.py), so that their
    training split takes the batched path too; report: this process prints that work's progress and counts
    unreadable images (rank 0); cache_budget: auto's limit, in bytes per split; cache_copies: the training
    processes on this machine, each caching its own copy (imagecache.decode_split's copies). labels: a
    subset.LabelSubset that restricts the training split (and the kNN memory) to those labelled images; the
    normalisation stays the whole split's."""
    view_options = view_options or {}
    size = encoder_size(name, image_size)
    if aug not in AUGMENTATIONS:
        raise UserError(f"unknown --aug {aug!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if cache_images not in imagecache.MODES:
        raise UserError(f"unknown --cache_images {cache_images!r}: choose one of {', '.join(imagecache.MODES)}")
    batched = batch_augment and aug == "default"
    if name == "DIGITS":
        make = lambda mean_std: make_views(views, "cifar", aug=aug, mean_std=mean_std, batched=batched,
                                           **view_options)
        train, test, n_classes, augment, memory, mean_std = _digits(make, batched, labels)
    elif name in ("C10", "C100", "STL10"):
        make = lambda recipe, batched_: make_views(views, recipe, aug=aug, batched=batched_, **view_options)
        train, test, n_classes, augment, memory = _cifar_or_stl(name, input_dir, phase, make, download, batched,
                                                                labels)
        mean_std = NORMALIZATION["cifar" if name in ("C10", "C100") else "stl"]
    else:
        make = lambda recipe, resize_first, batched_: make_views(views, recipe, aug=aug, resize_first=resize_first,
                                                                 batched=batched_, **view_options)
        crop_path = (lambda recipe, resize_first: make_crop_views(views, recipe, resize_first=resize_first,
                                                                  **view_options)) if batched else None
        cache = ImageCache(cache_images, report, cache_budget, batched, cache_copies)
        return _image_folders(name, input_dir, size, make, views, skip_bad_images, subset, cache, crop_path,
                              labels)
    return Splits(train=train, test=test, n_classes=n_classes, image_size=size, batch_augment=augment,
                  memory_factory=memory, mean_std=mean_std)
