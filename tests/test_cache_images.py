"""--cache_images: image folder splits decoded once into a uint8 tensor (imagecache.py), on real image files."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import distributed
import imagecache
from helpers import CHILD_PATH, ON_CPU, TINY_FLAGS, run_entry_point, this_process_threads_env
from utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_mixed(folder, n=3, seed=0):
    """n files per kind in `folder`: RGB JPEGs and PNGs, grayscale and RGBA PNGs, of several sizes (some under
    32 px, some not square). Returns their paths."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        shapes = {"rgb.jpg": (32, 32, 3), "wide.png": (30, 47, 3), "tall.jpg": (61, 40, 3), "gray.png": (9, 12, 1),
                  "rgba.png": (33, 33, 4)}
        for name, shape in shapes.items():
            path = os.path.join(folder, f"{i}{name}")
            pixels = rng.randint(0, 255, shape, dtype=np.uint8)
            Image.fromarray(pixels[..., 0] if shape[-1] == 1 else pixels).save(path)     # L, RGB or RGBA
            paths.append(path)
    return paths


def _write_uniform(folder, n, size=(40, 48), seed=0, start=0):
    """n RGB PNGs of one size (height, width) in `folder`."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(rng.randint(0, 255, (*size, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i:03d}.png"))


def _folder(tmp_path, n=3):
    for split in ("train", "val"):
        for c in ("a", "b"):
            _write_mixed(tmp_path / split / c, n, seed=hash((split, c)) % 1000)
    return str(tmp_path)


def pil_resized_crop(path, size):
    """Independently: the image as 8-bit RGB, its shorter side resized to `size` (PIL bicubic, the longer side
    truncated as torchvision's Resize does), then the centre size x size crop (offsets rounded)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    return np.asarray(img)[top:top + size, left:left + size]


def decode(root, mode="on", size=32, **kw):
    folder = datasets.ImageFolder(str(root), loader=datasets.load_rgb)
    return imagecache.decode_split(folder.root, folder.samples, folder.classes, size, mode,
                                   loader=datasets.load_rgb, **kw), folder


# ----------------------------------------------------------------------------------------------------------
# What is cached.

@pytest.mark.parametrize("processes", [1, 2])
def test_cached_pixels_equal_the_pil_decoded_images(tmp_path, processes):
    _write_mixed(tmp_path / "train" / "a", n=15)          # 75 files: more than one chunk, so 2 processes share
    decoded, folder = decode(tmp_path / "train", processes=processes)
    assert decoded.images.shape == (75, 3, 32, 32) and decoded.images.dtype == torch.uint8 and not decoded.bad
    for i, (path, label) in enumerate(folder.samples):
        assert np.array_equal(decoded.images[i].permute(1, 2, 0).numpy(), pil_resized_crop(path, 32)), path
        assert decoded.labels[i] == label


def test_native_size_keeps_the_images_as_decoded(tmp_path):
    _write_uniform(tmp_path / "train" / "a", 3)
    _write_uniform(tmp_path / "train" / "b", 2, seed=1)
    decoded, folder = decode(tmp_path / "train", size=None)
    assert decoded.images.shape == (5, 3, 40, 48)
    for i, (path, _) in enumerate(folder.samples):
        with Image.open(path) as img:
            assert np.array_equal(decoded.images[i].permute(1, 2, 0).numpy(), np.asarray(img.convert("RGB")))
    assert decoded.labels.tolist() == [0, 0, 0, 1, 1]


def test_cached_splits_serve_what_the_per_image_path_serves(tmp_path):
    data = _folder(tmp_path)
    off = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="off")
    on = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on")
    assert off.crops and off.per_image_items and not on.crops and not on.per_image_items
    assert isinstance(on.train, datasets.UInt8Images) and len(on.train) == len(off.train) == 30
    # Test items and the kNN memory through the test transform: equal to the tensor.
    for a, b in ((off.test, on.test), (off.memory, on.memory)):
        assert len(a) == len(b)
        for i in range(len(a)):
            (xa, ya), (xb, yb) = a[i], b[i]
            assert torch.equal(xa, xb) and ya == yb
    # The training images are the per-image recipe's first, deterministic ops: resize and centre crop.
    folder = datasets.ImageFolder(os.path.join(data, "train"))
    for i, (path, label) in enumerate(folder.samples):
        image, y, index = on.train[i]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), pil_resized_crop(path, 32)) and y == label
        assert index == i
    views = on.batch_augment(torch.stack([on.train[i][0] for i in range(4)]))
    assert len(views) == 2 and views[0].shape == (4, 3, 32, 32)


def test_64px_recipe_caches_one_size_and_leaves_mixed_sizes_per_image(tmp_path, capsys):
    for split in ("train", "val"):
        for c in ("a", "b"):
            _write_uniform(tmp_path / split / c, 2, size=(70, 80))
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=64, cache_images="auto")
    assert s.train.images.shape == (4, 3, 70, 80)
    views = s.batch_augment(s.train.images)
    assert views[0].shape == (4, 3, 64, 64)
    Image.new("RGB", (90, 70)).save(tmp_path / "train" / "a" / "odd.png")
    capsys.readouterr()
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=64, cache_images="auto")
    assert s.crops and isinstance(s.train, datasets.Transformed)      # read file by file: the crop path
    assert "several sizes" in capsys.readouterr().out
    with pytest.raises(UserError, match="--cache_images on: .*several sizes.*odd.png.*--cache_images off"):
        datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=64, cache_images="on")


@pytest.mark.parametrize("views", ["moco_v2", "cmc"])
def test_views_that_crop_from_the_whole_image_cache_it_as_it_is(tmp_path, views):
    for split in ("train", "val"):
        for c in ("a", "b"):
            _write_uniform(tmp_path / split / c, 2, size=(40, 48))
    s = datasets.build_splits("FOLDER", str(tmp_path), "self_supervised", image_size=32, views=views,
                              cache_images="on")
    assert s.train.images.shape == (4, 3, 40, 48)          # their per-image recipe crops from the 40x48 image
    assert [tuple(v.shape[-2:]) for v in s.batch_augment(s.train.images)] == [(32, 32), (32, 32)]
    assert s.test[0][0].shape == (3, 32, 32)


# ----------------------------------------------------------------------------------------------------------
# The cache file.

def cache_files(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith(".amdim_cache_") and f.endswith(".pt"))


def test_cache_file_is_reused_and_rebuilt_when_a_file_is_added_or_changed(tmp_path, capsys):
    train = tmp_path / "train"
    _write_uniform(train / "a", 3)
    first, _ = decode(train)
    assert "decoding 3" in capsys.readouterr().out
    (name,) = cache_files(train)
    stamp = os.stat(train / name).st_mtime_ns
    again, _ = decode(train)
    out = capsys.readouterr().out
    assert "decoding" not in out and f"read {train / name}" in out
    assert torch.equal(again.images, first.images) and os.stat(train / name).st_mtime_ns == stamp
    _write_uniform(train / "a", 1, seed=5, start=3)             # a file added
    added, _ = decode(train)
    assert "does not match the folder's files" in capsys.readouterr().out
    assert len(added.images) == 4 and torch.equal(added.images[:3], first.images)
    assert cache_files(train) == [name]                            # replaced, not accumulated
    path = train / "a" / "001.png"
    Image.new("RGB", (48, 40), (1, 2, 3)).save(path)            # a file changed (size and mtime)
    os.utime(path, ns=(stamp + 10 ** 9, stamp + 10 ** 9))
    changed, folder = decode(train)
    assert "does not match" in capsys.readouterr().out
    assert np.array_equal(changed.images[1].permute(1, 2, 0).numpy(), pil_resized_crop(str(path), 32))


def test_corrupt_cache_file_is_rebuilt_with_a_note(tmp_path, capsys):
    train = tmp_path / "train"
    _write_uniform(train / "a", 3)
    good, _ = decode(train)
    (name,) = cache_files(train)
    data = (train / name).read_bytes()
    (train / name).write_bytes(data[:len(data) // 2])              # cut short
    capsys.readouterr()
    rebuilt, _ = decode(train)
    out = capsys.readouterr().out
    assert out.count("note:") == 1 and f"image cache {train / name} is unreadable" in out and "decoding 3" in out
    assert torch.equal(rebuilt.images, good.images)
    assert torch.equal(torch.load(train / name, weights_only=True)["images"], good.images)


def test_cache_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    train = tmp_path / "train"
    _write_uniform(train / "a", 3)
    cache_name = imagecache.cache_name(["a"], 32)
    (train / f"{cache_name}.tmp999").write_bytes(b"left by a killed writer")
    decode(train)
    assert cache_files(train) == [cache_name] and [f for f in os.listdir(train) if ".tmp" in f] == []

    def torch_save_that_fails_halfway(obj, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise RuntimeError("No space left on device")
    os.remove(train / cache_name)
    monkeypatch.setattr(imagecache.torch, "save", torch_save_that_fails_halfway)
    decoded, _ = decode(train)
    assert "cannot save the image cache" in capsys.readouterr().out and decoded.images.shape == (3, 3, 32, 32)
    assert [f for f in os.listdir(train) if f.startswith(".amdim_cache_")] == []


def test_a_folder_nobody_may_write_gets_its_cache_in_the_user_cache_folder(tmp_path, monkeypatch, capsys):
    train = tmp_path / "data" / "train"
    _write_uniform(train / "a", 2)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    os.chmod(train, 0o555)             # as the shared datasets are: root could write, but must not
    (tmp_path / "not_a_folder").write_text("")
    try:
        decode(train)
        again, _ = decode(train)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not_a_folder"))
        nowhere, _ = decode(train)
    finally:
        os.chmod(train, 0o755)
    assert os.listdir(train) == ["a"]
    (name,) = [f for f in os.listdir(tmp_path / "xdg" / "amdim") if f.endswith(".pt")]
    assert again.path == str(tmp_path / "xdg" / "amdim" / name)
    assert "no writable folder for the image cache" in capsys.readouterr().out
    assert nowhere.path is None and torch.equal(nowhere.images, again.images)


@pytest.mark.slow
def test_processes_sharing_a_folder_decode_it_once(tmp_path):
    train = tmp_path / "train"
    _write_uniform(train / "a", 40)
    code = CHILD_PATH + f"import test_cache_images as t\nt.decode({str(train)!r})\n"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1")) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum("decoding 40" in out for out in outs) == 1 and sum("read " in out for out in outs) == 2


# ----------------------------------------------------------------------------------------------------------
# auto, on, off.

def test_auto_reads_image_by_image_above_its_budget_and_on_ignores_the_budget(tmp_path, capsys):
    data = _folder(tmp_path)
    small = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="auto",
                                  cache_budget=30 * 3 * 32 * 32 - 1)       # one byte short of the 30 images
    assert small.crops and isinstance(small.train, datasets.Transformed)
    assert "more than the --cache_images auto budget" in capsys.readouterr().out
    fits = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="auto",
                                 cache_budget=30 * 3 * 32 * 32)
    assert isinstance(fits.train, datasets.UInt8Images)
    forced = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on",
                                   cache_budget=1)
    assert isinstance(forced.train, datasets.UInt8Images)


def test_the_processes_of_one_machine_share_its_memory(tmp_path, monkeypatch, capsys):
    """Each training process on a machine caches its own copy: the memory fractions are split among them, so
    that the copies fit together and every process decides alike."""
    data = _folder(tmp_path)                       # 30 training images of 32 x 32 x 3 bytes: 92,160 bytes
    monkeypatch.setattr(imagecache, "available_memory", lambda: 250_000)
    alone = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="auto")
    assert isinstance(alone.train, datasets.UInt8Images)                   # 50 % of 250,000 >= 92,160
    two = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="auto",
                                cache_copies=2)
    assert two.crops                                                       # 25 % of 250,000 < 92,160
    assert "shared by this machine's 2 training processes" in capsys.readouterr().out
    with pytest.raises(UserError, match="shared by this machine's 3 training processes"):
        datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on", cache_copies=3)
    assert imagecache.memory_limit("on", 1, copies=2)[0] == imagecache.ON_RAM_FRACTION * 250_000 / 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.processes_on_this_machine() == 4


def test_on_refuses_what_it_cannot_cache_in_one_line(tmp_path, monkeypatch, capsys):
    data = _folder(tmp_path)
    monkeypatch.setattr(imagecache, "available_memory", lambda: 1000)
    with pytest.raises(UserError, match=r"--cache_images on: the 30 images of .* take 0.1 MiB decoded, more "
                                        r"than 90% of the available memory"):
        datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on")
    with pytest.raises(UserError, match="needs the batched augmentation"):
        datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on",
                              aug="autoaugment")
    import train
    monkeypatch.undo()                        # train.py as its script runs it (run_main), with the real memory
    capsys.readouterr()
    status = run_entry_point(train.main, ["--dataset", "FOLDER", "--image_size", "32", "--input_dir", data,
                                          "--cache_images", "on", "--per_image_aug", "--device", "cpu",
                                          "--output_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]     # argparse's usage error
    assert "--cache_images on needs the batched augmentation" in line and not (tmp_path / "runs").exists()


def test_off_reads_file_by_file_and_writes_nothing(tmp_path):
    data = _folder(tmp_path)
    s = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="off")
    assert s.crops and cache_files(os.path.join(data, "train")) == []


# ----------------------------------------------------------------------------------------------------------
# Unreadable files.

def test_unreadable_files_are_named_or_skipped_and_counted_once(tmp_path, capsys):
    data = _folder(tmp_path)
    bad = tmp_path / "train" / "a" / "1broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(datasets.BadImageError, match=f"cannot read image {bad} .*--skip_bad_images"):
        datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on")
    capsys.readouterr()
    s = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on",
                              skip_bad_images=True)
    assert capsys.readouterr().err.count(f"warning: skipping unreadable image {bad}") == 1
    assert s.skipped_images() == s.skipped_images("train") == 1 and s.skipped_images("test") == 0
    folder = datasets.ImageFolder(os.path.join(data, "train"))
    i = [p for p, _ in folder.samples].index(str(bad))
    # Training serves the next readable image in its place (SkipBadImages' rule); scoring leaves it out.
    assert torch.equal(s.train[i][0], s.train[i + 1][0]) and s.train[i][1] == s.train[i + 1][1] and \
        s.train[i][2] == i
    assert s.memory[i] is None and len([x for x in s.memory if x is not None]) == len(folder) - 1
    quiet = datasets.build_splits("FOLDER", data, "self_supervised", image_size=32, cache_images="on",
                                  skip_bad_images=True, report=False)          # another rank: counts nothing
    assert quiet.skipped_images() == 0 and "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Training through train.py.

def _train_argv(tmp_path, run_name, *extra):
    return ["--dataset", "FOLDER", "--image_size", "32", "--input_dir", str(tmp_path / "data"), "--batch_size",
            "10", *ON_CPU, "--log_every", "1000", "--view_grid", "0", *TINY_FLAGS["amdim"], "--epochs", "1",
            "--checkpoint_every", "2", "--cache_images", "on", "--output_dir", str(tmp_path), "--run_name", run_name,
            *extra]


def _train_cmd(tmp_path, run_name, *extra):
    return [sys.executable, "train.py", *_train_argv(tmp_path, run_name, *extra)]


@pytest.mark.slow
def test_training_on_a_cached_folder_resumes_bit_for_bit_after_a_kill(tmp_path, capsys):
    """The uninterrupted run trains in this process; the killed and the resumed one are train.py processes on as
    many threads (the same sums)."""
    for split, n in (("train", 50), ("val", 5)):
        for c, seed in (("a", 0), ("b", 1)):
            _write_uniform(tmp_path / "data" / split / c, n, size=(32, 32), seed=seed)
    # Imported here: the processes of test_processes_sharing_a_folder_decode_it_once import this module.
    import train
    from test_resume import kill_mid_epoch, tensors
    train.main(_train_argv(tmp_path, "straight"))
    assert "decoding 100" in capsys.readouterr().out and cache_files(tmp_path / "data" / "train")
    env = this_process_threads_env()
    cpt = tmp_path / "killed" / "amdim_cpt.pth"
    at_kill = kill_mid_epoch(_train_cmd(tmp_path, "killed"), cpt, env)
    assert at_kill["cursor"]["info_epoch"] == 0 and at_kill["samples_done"] > 0
    resumed = subprocess.run(_train_cmd(tmp_path, "killed"), cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "decoding" not in resumed.stdout       # read from the cache
    a, b = (torch.load(p, weights_only=True) for p in (tmp_path / "straight" / "amdim_cpt.pth", cpt))
    assert a["cursor"] == b["cursor"] and a["cursor"]["info_epoch"] == 1 and a["cursor"]["info_step"] == 10
    ta, tb = tensors({"model": a["model"], "optimizer": a["optimizer"]["state"]}), \
        tensors({"model": b["model"], "optimizer": b["optimizer"]["state"]})
    assert ta.keys() == tb.keys() and [k for k in ta if not torch.equal(ta[k], tb[k])] == []


@pytest.mark.slow
def test_two_ranks_share_one_decode_and_count_a_skipped_file_once(tmp_path):
    from test_launch import TINY, _folder_with_one_corrupt_training_image, spawn_train
    _folder_with_one_corrupt_training_image(tmp_path / "data")
    flags = ["--dataset", "FOLDER", "--image_size", "32", "--input_dir", str(tmp_path / "data"), "--batch_size",
             "12", "--output_dir", str(tmp_path), *TINY, "--cache_images", "on", "--skip_bad_images"]
    r, _ = spawn_train("_plain_worker", flags, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 unreadable images skipped" in r.stdout                  # summed over the ranks: counted once
    assert r.stderr.count("skipping unreadable image") == 1
    assert len(cache_files(tmp_path / "data" / "train")) == 1
    # Rank 0 reports: it decoded, or it waited for rank 1's decode and read the file.
    assert "decoding 12" in r.stdout or "read " in r.stdout
