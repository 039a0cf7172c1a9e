"""Class subsets: reading class lists and restricting a real ImageFolder tree to them."""
import os
import re

import numpy as np
import pytest
import torchvision
from PIL import Image

import subset
from utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("n03000134", "n01440764", "n02102040", "n09999999")     # not in sorted order on purpose
PER_CLASS = {"n03000134": 2, "n01440764": 3, "n02102040": 2, "n09999999": 1}


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.RandomState(0)
    for name, count in PER_CLASS.items():
        os.makedirs(tmp_path / name)
        for i in range(count):
            pixels = rng.randint(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    return torchvision.datasets.ImageFolder(str(tmp_path))


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_class_list_skips_comments_and_blanks_and_keeps_order(tmp_path):
    path = write(tmp_path / "c.txt", "# provenance\n\n  n03000134 \n# another\nn01440764\n\n")
    assert subset.read_class_list(path) == ["n03000134", "n01440764"]


@pytest.mark.parametrize("text, message", [
    ("", "lists no class"),
    ("# only a comment\n\n", "lists no class"),
    ("n1\nn2\nn1\nn2\nn3\n", "lists n1, n2 more than once"),
])
def test_read_class_list_rejects_empty_and_duplicated_lists(tmp_path, text, message):
    path = write(tmp_path / "c.txt", text)
    with pytest.raises(UserError, match=message) as e:
        subset.read_class_list(path)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_read_class_list_rejects_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        subset.read_class_list(str(tmp_path / "absent.txt"))
    with pytest.raises(UserError, match="cannot be read"):
        subset.read_class_list(str(tmp_path))                      # a directory
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00n0")
    with pytest.raises(UserError, match="cannot be read"):
        subset.read_class_list(str(tmp_path / "binary.txt"))


def test_select_classes_keeps_the_named_classes_relabelled_in_sorted_order(image_folder):
    root = image_folder.root
    subset.select_classes(image_folder, ["n03000134", "n01440764"])
    assert image_folder.classes == ["n01440764", "n03000134"]
    assert image_folder.class_to_idx == {"n01440764": 0, "n03000134": 1}
    assert len(image_folder) == 5 and image_folder.imgs == image_folder.samples
    assert image_folder.targets == [target for _, target in image_folder.samples] == [0, 0, 0, 1, 1]
    for path, target in image_folder.samples:
        assert os.path.basename(os.path.dirname(path)) == image_folder.classes[target]
        assert os.path.dirname(os.path.dirname(path)) == root
    image, target = image_folder[4]
    assert image.size == (8, 8) and target == 1


def test_select_classes_with_every_class_changes_nothing(image_folder):
    before = list(image_folder.samples), list(image_folder.classes)
    subset.select_classes(image_folder, list(reversed(CLASSES)))
    assert (image_folder.samples, image_folder.classes) == before


def test_select_classes_names_up_to_three_missing_folders(image_folder):
    with pytest.raises(UserError, match=r"4 listed class folder\(s\) are not in .*: n1, n2, n3 and 1 more;"):
        subset.select_classes(image_folder, ["n01440764", "n4", "n3", "n2", "n1"])
    with pytest.raises(UserError, match=r"1 listed class folder\(s\) are not in .*: n0; fix"):
        subset.select_classes(image_folder, ["n0"])
    assert len(image_folder.classes) == 4                             # untouched by a failed selection


def test_shipped_imagenet100_list_has_100_unique_wordnet_ids():
    names = subset.read_class_list(os.path.join(ROOT, "assets", "imagenet100_classes.txt"))
    assert len(names) == len(set(names)) == 100
    assert all(re.fullmatch(r"n\d{8}", name) for name in names)
    assert names[:2] == ["n02869837", "n01749939"]                    # the seed's order, not sorted
