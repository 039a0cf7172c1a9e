"""Datasets and augmentation: real image files, the two-view recipe, and user-facing errors."""
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import augment
import datasets
from utils import UserError


def test_digits_split_is_fixed_and_normalised_by_its_training_statistics():
    a = datasets.build_splits("DIGITS", "unused", "self_supervised", batch_augment=False)
    b = datasets.build_splits("DIGITS", "unused", "self_supervised")
    assert (len(a.train), len(a.test), a.n_classes, a.image_size) == (1500, 297, 10, 32)
    (xa, ya), (xb, yb) = datasets.digits_arrays()[0], datasets.digits_arrays()[0]
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert xa.dtype == np.uint8 and xa.shape == (1500, 32, 32, 3)
    test = torch.stack([a.test[i][0] for i in range(len(a.test))])
    assert test.shape == (297, 3, 32, 32)
    # The un-augmented training images, normalised with the split's own mean/std: ~zero mean, unit std.
    view = a.train.transform.view_transform.transforms[-1]
    x = torch.from_numpy(xa).permute(0, 3, 1, 2).float() / 255
    z = (x - torch.tensor(view.mean)[:, None, None]) / torch.tensor(view.std)[:, None, None]
    assert z.mean().abs() < 1e-4 and (z.std() - 1).abs() < 1e-3
    (x1, x2), y, index = a.train[0]
    assert x1.shape == x2.shape == (3, 32, 32) and x1.dtype == torch.float32 and isinstance(y, int)
    assert index == 0 and b.train[7][2] == 7          # items carry their index in the split (memory banks)
    assert not torch.equal(x1, x2)       # two independent augmentations
    # The batched path keeps the same images as uint8 and normalises with the same statistics.
    assert b.batch_augment is not None and torch.equal(b.train.images, torch.from_numpy(xa).permute(0, 3, 1, 2))
    assert torch.allclose(b.batch_augment.mean.flatten(), torch.tensor(view.mean, dtype=torch.float32))


def _asymmetric_image():
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:, :16] = 255                    # left half white
    return Image.fromarray(arr)


def test_horizontal_flip_is_shared_by_both_views():
    tv = augment.TwoViews(T.Compose([T.PILToTensor()]))
    torch.manual_seed(0)
    flipped = []
    for _ in range(200):
        v1, v2 = tv(_asymmetric_image())
        assert torch.equal(v1, v2)       # deterministic per-view transform: views differ only if flips differ
        flipped.append(v1[0, 0, 0].item() == 0)
    assert 70 < sum(flipped) < 130       # ~half flipped


def test_views_draw_their_other_augmentations_independently():
    tv = augment.TwoViews(augment.train_view_transform("cifar"))
    torch.manual_seed(1)
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (32, 32, 3), dtype=np.uint8))
    differ = sum(not torch.equal(*tv(img)) for _ in range(50))
    assert differ >= 45


def test_translate_is_a_crop_of_the_reflect_padded_image_within_4px():
    img = Image.fromarray(np.random.RandomState(1).randint(0, 255, (32, 32, 3), dtype=np.uint8))
    arr = np.asarray(img)
    padded = np.pad(arr, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    crop = T.RandomCrop(32, padding=4, padding_mode="reflect")
    torch.manual_seed(2)
    offsets = set()
    for _ in range(300):
        out = np.asarray(crop(img))
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if np.array_equal(out, padded[dy:dy + 32, dx:dx + 32])]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 40              # offsets spread over the 9x9 grid


def _write_folder(root, classes=("a", "b"), size=(40, 40)):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            Image.fromarray(rng.randint(0, 255, (*size, 3), dtype=np.uint8)).save(d / "rgb.jpg")
            Image.fromarray(rng.randint(0, 255, size, dtype=np.uint8), mode="L").save(d / "gray.png")
            Image.fromarray(rng.randint(0, 255, (*size, 4), dtype=np.uint8), mode="RGBA").save(d / "rgba.png")
            Image.fromarray(rng.randint(0, 255, (12, 9, 3), dtype=np.uint8)).save(d / "small.png")
            Image.fromarray(np.full(size, 50000, dtype=np.uint16)).save(d / "deep.png")
            Image.fromarray(rng.randint(0, 255, (*size, 3), dtype=np.uint8)).convert("CMYK").save(d / "cmyk.jpg")


@pytest.mark.parametrize("size", [32, 64, 128])
def test_image_folder_of_mixed_files_at_every_size(tmp_path, size):
    _write_folder(tmp_path)
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=size)
    assert s.n_classes == 2 and s.image_size == size and len(s.train) == len(s.test) == 12
    for i in range(len(s.train)):
        (x1, x2), y, index = s.train[i]
        assert x1.shape == x2.shape == (3, size, size) and y in (0, 1) and index == i
    for i in range(len(s.test)):
        assert s.test[i][0].shape == (3, size, size)


def test_16bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 50000, dtype=np.uint16)).save(path)
    img = datasets.load_rgb(str(path))
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [50000 >> 8] * 3


def test_grayscale_rgba_and_cmyk_become_rgb(tmp_path):
    _write_folder(tmp_path)
    for name in ("gray.png", "rgba.png", "cmyk.jpg"):
        assert datasets.load_rgb(str(tmp_path / "train" / "a" / name)).mode == "RGB"


def test_in128_accepts_the_original_folder_names(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "train").rename(tmp_path / "ILSVRC2012_img_train")
    (tmp_path / "val").rename(tmp_path / "ILSVRC2012_img_val")
    s = datasets.build_splits("IN128", str(tmp_path), "self_supervised")
    assert s.image_size == 128 and s.n_classes == 2


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        datasets.build_splits("FOLDER", str(tmp_path / "missing"), "self_supervised", image_size=32)
    with pytest.raises(UserError, match="train/ and val/"):
        datasets.build_splits("PLACES205", str(tmp_path), "self_supervised")
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match="no images"):
        datasets.build_splits("IN128", str(tmp_path), "self_supervised")
    with pytest.raises(UserError, match="image_size"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=48)


def test_mismatched_class_folders_are_refused(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "c")
    with pytest.raises(UserError, match="different class folders"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32)


def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="bad.jpg"):
        datasets.load_rgb(str(bad))


def test_torchvision_dataset_absent_without_download_is_a_user_error(tmp_path):
    for name in ("C10", "C100", "STL10"):
        with pytest.raises(UserError, match="not found in"):
            datasets.build_splits(name, str(tmp_path), "self_supervised", download=False)


@pytest.mark.parametrize("aug", ["autoaugment", "fast_autoaugment"])
def test_policy_augmentations_give_valid_views(aug):
    s = datasets.build_splits("DIGITS", "unused", "self_supervised", aug=aug)
    torch.manual_seed(3)
    for i in range(20):
        (x1, x2), _, _ = s.train[i]
        assert x1.shape == (3, 32, 32) and torch.isfinite(x1).all() and torch.isfinite(x2).all()


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(self):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(UserError, match="download failed .*name resolution.*--input_dir"):
        datasets.build_splits("C10", str(tmp_path), "self_supervised", download=True)


def test_subset_restricts_an_image_folder_to_the_listed_classes(tmp_path):
    from PIL import Image as PILImage
    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            os.makedirs(tmp_path / split / cls)
            for i in range(2):
                PILImage.new("RGB", (40, 40), (40 * i, 90, 200)).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "keep.txt").write_text("# two of three\neel\ncat\n")
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32,
                              subset=str(tmp_path / "keep.txt"))
    assert s.n_classes == 2 and len(s.train) == len(s.test) == 4
    assert sorted({s.train[i][1] for i in range(4)}) == [0, 1] and len(s.memory) == 4
    (tmp_path / "bad.txt").write_text("cat\nowl\n")
    with pytest.raises(UserError, match="owl"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32,
                              subset=str(tmp_path / "bad.txt"))


@pytest.mark.parametrize("views", ["amdim", "moco_v2"])
def test_views_grid_shows_each_image_and_its_views(views, tmp_path):
    import views_grid
    s = datasets.build_splits("DIGITS", "./data", "self_supervised", views=views)
    state = torch.get_rng_state()
    picture = views_grid.grid(s, 3, 2)
    assert torch.equal(torch.get_rng_state(), state)          # the run's random stream is untouched
    assert picture.shape == (3, 3 * 34 + 2, 3 * 34 + 2) and 0 <= picture.min() and picture.max() <= 1
    # the first tile of each row is the source image itself (DIGITS is 32 px: no resize)
    source = s.train.images[0].float() / 255
    assert torch.allclose(picture[:, 2:34, 2:34], source, atol=1e-6)
    out = tmp_path / "views.png"
    flags = ["--method", "moco", "--aug-plus"] if views != "amdim" else []
    views_grid.main(["--dataset", "DIGITS", "--images", "2", "--out", str(out), *flags])
    assert out.stat().st_size > 0


def _tiny_folder(root, per_class=2):
    """train/ and val/ with classes a and b of per_class small PNGs each."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(root / split / c / f"{i}.png")


def test_hidden_entries_are_neither_classes_nor_images(tmp_path):
    _tiny_folder(tmp_path)
    for split in ("train", "val"):
        for hidden in (".ipynb_checkpoints", ".git", "a/.ipynb_checkpoints"):
            os.makedirs(tmp_path / split / hidden)
            Image.new("RGB", (8, 8)).save(tmp_path / split / hidden / "x.png")
        Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / ".hidden.png")
        (tmp_path / split / "b" / ".DS_Store").write_bytes(b"\0\1")
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32)
    assert s.n_classes == 2 and len(s.train) == len(s.test) == 4
    folder = datasets.ImageFolder(str(tmp_path / "train"))
    assert folder.classes == ["a", "b"] and all("/." not in path for path, _ in folder.samples)


def test_image_folder_lists_what_torchvision_lists_on_a_plain_tree(tmp_path):
    import torchvision
    _tiny_folder(tmp_path)
    os.makedirs(tmp_path / "train" / "b" / "sub" / "deeper")
    for name in ("sub/3.png", "sub/deeper/4.png", "10.png", "B.PNG", "notes.txt"):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "b" / name, format="PNG")
    ours, theirs = datasets.ImageFolder(str(tmp_path / "train")), torchvision.datasets.ImageFolder(
        str(tmp_path / "train"))
    assert ours.samples == theirs.samples and ours.classes == theirs.classes and len(ours) == 8


def test_symlink_loop_in_a_class_folder_is_named(tmp_path):
    _tiny_folder(tmp_path)
    link = tmp_path / "train" / "a" / "up"
    os.symlink("..", link)                         # train/a/up -> train: every class again, labelled a
    with pytest.raises(UserError, match=f"symlink {link} loops back to .*remove the link"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32)
    os.remove(link)
    os.makedirs(tmp_path / "train" / "a" / "x")
    os.symlink("../..", tmp_path / "train" / "a" / "x" / "back")      # train/a/x/back -> train/a
    with pytest.raises(UserError, match="loops back"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32)


def test_symlink_out_of_its_class_folder_is_named(tmp_path):
    _tiny_folder(tmp_path)
    os.makedirs(tmp_path / "elsewhere")
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "z.png")
    link = tmp_path / "train" / "a" / "more"
    os.symlink(tmp_path / "elsewhere", link)
    with pytest.raises(UserError, match=f"symlink {link} leads out of its class folder .*labelled a"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32)
    os.remove(link)
    os.symlink(tmp_path / "train" / "b", link)    # into another class: its images would be labelled a
    with pytest.raises(UserError, match="leads out of its class folder"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32)


def test_symlinked_class_folders_and_links_within_a_class_are_followed(tmp_path):
    _tiny_folder(tmp_path / "data")
    # A class folder that is itself a link (how class subsets are often built), and a link inside a class
    # folder to a folder of that same class.
    os.makedirs(tmp_path / "store" / "c" / "sub")
    for name in ("0.png", "sub/1.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "store" / "c" / name)
    for split in ("train", "val"):
        os.symlink(tmp_path / "store" / "c", tmp_path / "data" / split / "c")
    os.symlink("sub", tmp_path / "store" / "c" / "alias")
    s = datasets.build_splits("FOLDER", str(tmp_path / "data"), "self_supervised", image_size=32)
    assert s.n_classes == 3 and len(s.train) == 4 + 3        # c: 0.png, sub/1.png, alias/1.png
    # A class folder that links to a folder holding the split itself would list everything under it.
    os.symlink("..", tmp_path / "data" / "train" / "up")
    with pytest.raises(UserError, match="contains .*remove the link"):
        datasets.build_splits("FOLDER", str(tmp_path / "data"), "self_supervised", image_size=32)


def test_a_folder_read_file_by_file_names_or_skips_an_unreadable_or_truncated_file(tmp_path):
    """The crop path decodes in the geometry (datasets.ImageFile): a file that is no image and a JPEG cut short
    are BadImageErrors naming the file; with skip_bad_images the training split serves the next image's crops in
    their place, counted once each, and the kNN memory leaves them out."""
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(tmp_path / split / c)
            for i in range(3):
                Image.fromarray(rng.randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.jpg", quality=90)
    whole = (tmp_path / "train" / "a" / "1.jpg").read_bytes()
    (tmp_path / "train" / "a" / "1.jpg").write_bytes(whole[:len(whole) // 2])      # truncated: header intact
    (tmp_path / "train" / "b" / "0.jpg").write_bytes(b"not an image")
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32)
    assert s.crops
    with pytest.raises(datasets.BadImageError, match=r"a/1\.jpg"):
        s.train[1]
    with pytest.raises(datasets.BadImageError, match=r"b/0\.jpg"):
        s.train[3]
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32, skip_bad_images=True)
    crops, y, index = s.train[1]                     # a/2.jpg's crops in a/1.jpg's place
    assert index == 1 and y == 0 and [c.dtype for c in crops] == [torch.uint8] * 2
    s.train[3], s.train[1]
    assert s.skipped_images("train") == 2
    assert s.memory[1] is None and s.memory[3] is None and s.memory[0] is not None
