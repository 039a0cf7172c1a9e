"""Subsets of a dataset's training split: classes of image-folder datasets (e.g. ImageNet-100, listed in
assets/imagenet100_classes.txt: read a class list file, restrict a torchvision ImageFolder to the listed classes),
and the labelled images of semi-supervised evaluation (LabelSubset: a file naming them, as the 1 % / 10 % ImageNet
subset files SimCLR published and SwAV's eval_semisup.py reads, or a seeded, class-balanced fraction)."""
import os
from dataclasses import dataclass

import torch

from utils import UserError


def read_class_list(path):
    """The class folder names listed in the text file at path, in file order: one per line, surrounding
    whitespace stripped, blank lines and lines starting with '#' skipped.

    Raises UserError when the file is missing, unreadable, lists no class, or lists a class twice."""
    return _read_names(path, "class list", "class folder name", "class")


def read_labels_file(path):
    """The image file names listed in the labels file at path (e.g. n01440764_10026.JPEG), one per line, with
    read_class_list's rules."""
    return _read_names(path, "labels file", "image file name", "image")


def _read_names(path, kind, entry, item):
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"{kind} {path} does not exist: pass the path of a text file with one {entry} per "
                        f"line") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"{kind} {path} cannot be read ({reason}): pass a readable UTF-8 text file with one "
                        f"{entry} per line") from None
    names = [line.strip() for line in lines]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise UserError(f"{kind} {path} lists no {item}: write one {entry} per line")
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise UserError(f"{kind} {path} lists {_some(repeated)} more than once: keep one line per {item}")
    return names


def select_classes(image_folder, names):
    """Restrict a torchvision ImageFolder, in place, to the classes named in names (folder names).

    Its samples, imgs, targets, classes and class_to_idx are replaced: classes become sorted(names) (the order
    ImageFolder gives its class folders) and each kept sample is relabelled to its class's index there,
    0..len(names)-1; samples of other classes are dropped, the kept ones stay in their order.

    Raises UserError naming up to 3 of the names that are not among the folder's classes.
    Returns image_folder.
    """
    wanted = sorted(set(names))
    if not wanted:
        raise UserError(f"no classes selected from {image_folder.root}: list at least one class folder name")
    missing = [name for name in wanted if name not in image_folder.class_to_idx]
    if missing:
        raise UserError(f"{len(missing)} listed class folder(s) are not in {image_folder.root}: {_some(missing)}; "
                        f"fix the class list or point at the folder that holds them")
    relabel = {image_folder.class_to_idx[name]: i for i, name in enumerate(wanted)}
    samples = [(path, relabel[target]) for path, target in image_folder.samples if target in relabel]
    image_folder.samples = samples
    image_folder.imgs = samples
    image_folder.targets = [target for _, target in samples]
    image_folder.classes = wanted
    image_folder.class_to_idx = {name: i for i, name in enumerate(wanted)}
    return image_folder


@dataclass(frozen=True)
class LabelSubset:
    """The labelled training images a classifier run trains on: those a labels file names (file; image
    folders), or `fraction` of each class's images drawn with `seed` (balanced_draw)."""
    file: str = None
    fraction: float = None
    seed: int = 0

    def keep(self, labels, samples=None, root=""):
        """The sorted indices of the training images to keep, given every image's label (and, for a labels
        file, the folder's (path, label) samples under root)."""
        if self.file is None:
            return balanced_draw(labels, self.fraction, self.seed)
        return named_images(samples, read_labels_file(self.file), self.file, root)

    def apply_to_folder(self, image_folder):
        """Restrict a torchvision ImageFolder's samples, in place, to the kept images."""
        keep = self.keep(image_folder.targets, image_folder.samples, image_folder.root)
        image_folder.samples = image_folder.imgs = [image_folder.samples[i] for i in keep]
        image_folder.targets = [target for _, target in image_folder.samples]


def balanced_draw(labels, fraction, seed):
    """Sorted indices of round(fraction x n_c) images (at least one) of each class c among `labels`, drawn
    without replacement: class by class in label order, a torch.randperm of its n_c images from one generator
    seeded with `seed`, its first ones kept."""
    labels = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        n = max(1, round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return sorted(torch.cat(keep).tolist())


def named_images(samples, names, path, root):
    """Sorted indices of the samples ((path, label) pairs) whose file names are the names a labels file lists;
    a UserError naming those it lists that are not there."""
    index = {os.path.basename(sample_path): i for i, (sample_path, _) in enumerate(samples)}
    missing = [name for name in names if name not in index]
    if missing:
        raise UserError(f"labels file {path} names {len(missing)} image(s) that are not in {root}: "
                        f"{_some(missing)}; point --input_dir at the dataset the file was made for, or fix the file")
    return sorted(index[name] for name in names)


def _some(names, most=3):
    """'a, b, c' for up to `most` names, with ' and N more' for the rest."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"
