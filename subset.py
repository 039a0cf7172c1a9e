"""Class subsets of image-folder datasets (e.g. ImageNet-100, listed in assets/imagenet100_classes.txt): read a
class list file, and restrict a torchvision ImageFolder to the listed classes."""
from utils import UserError


def read_class_list(path):
    """The class folder names listed in the text file at path, in file order: one per line, surrounding
    whitespace stripped, blank lines and lines starting with '#' skipped.

    Raises UserError when the file is missing, unreadable, lists no class, or lists a class twice."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"class list {path} does not exist: pass the path of a text file with one class folder "
                        f"name per line") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"class list {path} cannot be read ({reason}): pass a readable UTF-8 text file with one "
                        f"class folder name per line") from None
    names = [line.strip() for line in lines]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise UserError(f"class list {path} lists no class: write one class folder name per line")
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise UserError(f"class list {path} lists {_some(repeated)} more than once: keep one line per class")
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


def _some(names, most=3):
    """'a, b, c' for up to `most` names, with ' and N more' for the rest."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"
