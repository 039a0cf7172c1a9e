"""test.py end to end on tiny checkpoints: its scores against an independent computation, what it reports
(skipped images, where training stood), its hints and its flags; and checkpoint.read's messages."""
import os
import pickle
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import datasets
import engine
import test as test_py
import train
import utils
from utils import UserError

CPU = torch.device("cpu")
TINY = {"ndf": 8, "n_rkhs": 32, "n_depth": 1, "tclip": 20.0, "use_bn": False, "encoder_size": 32}
# test.py's settings: its refresh takes 50 batches of 10 DIGITS training images.
SEED, BATCH = 3, 10


def _tiny_model(n_classes):
    torch.manual_seed(0)
    return checkpoint.build_model(dict(TINY, n_classes=n_classes))


def _save(model, path, **extra):
    torch.save({"model": model.state_dict(), "hyperparams": model.hyperparams, **extra}, path)
    return str(path)


def _fit_heads(model, splits):
    """Make each head a nearest-class-mean classifier on its own input (the features for the linear head, the
    MLP's hidden layer for the MLP), with BatchNorm statistics of a few training batches, so that both score
    well above chance and differently: a skipped refresh or swapped scores then show."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None                        # a plain average over the batches below
    loader = engine.make_loader(splits.train, 100, 0, CPU)
    view = engine.first_view(splits.batch_augment, CPU)
    with torch.no_grad():
        model.train()
        for _, batch in zip(range(3), loader):
            model.classify(view(batch))
        model.eval()
        x = torch.stack([splits.memory[i][0] for i in range(300)])
        y = torch.tensor([splits.memory[i][1] for i in range(300)])
        h = model.features(x)
        mlp = model.evaluator.block_glb_mlp.block_forward
        for inputs, last in ((h, model.evaluator.block_glb_lin.block_forward[-1]), (mlp[:-1](h), mlp[-1])):
            means = torch.stack([inputs[y == c].mean(0) for c in range(10)])
            last.weight.copy_(means)
            last.bias.copy_(-0.5 * means.pow(2).sum(1))
    for bn in bns:
        bn.momentum = 0.1


def _spoil_bn_statistics(model):
    """Stored running statistics far from the data's: a test that skips the refresh scores differently."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.add_(3.0)
                m.running_var.mul_(25.0)


@pytest.fixture(scope="module")
def digits():
    return datasets.build_splits("DIGITS", "unused", "classifiers")


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory, digits):
    """A tiny AMDIM checkpoint for DIGITS, saved mid-epoch (epoch index 1 under way, 13 of its updates done,
    43 in all)."""
    splits = digits
    model = _tiny_model(10)
    _fit_heads(model, splits)
    _spoil_bn_statistics(model)
    cursor = {"info_epoch": 1, "info_step": 43, "classifier_epoch": 0, "classifier_step": 0}
    return _save(model, tmp_path_factory.mktemp("digits") / "amdim_cpt.pth", cursor=cursor, batches_done=13,
                 phase="self_supervised", eval_encoder=False)


# ----------------------------------------------------------------------------------------------------------
# The scores, computed again by hand.

def _refresh_by_hand(model, splits, seed, batch_size, n_batches=50):
    """What test.py's BatchNorm refresh must do, written out: seed, then up to n_batches shuffled training
    batches (view 1 of the augmentation) through the features and both classifiers with every module in train
    mode (BatchNorm layers update their running statistics with their own momentum, 0.1; nothing resets them
    first, as in the original code), no gradients. The batches come through the same loader and augmentation
    as test.py's: what is written out here is the refresh itself."""
    utils.seed_everything(seed)
    loader = engine.make_loader(splits.train, batch_size, 0, CPU, shuffle=True)
    view = engine.first_view(splits.batch_augment, CPU)
    model.train()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == n_batches:
                break
            if len(batch[1]) >= 2:
                model.evaluator(model.features(view(batch)))


def _correct_by_hand(model, test_set, batch_size):
    """(linear, mlp) correct counts over the test split: eval mode, each head's argmax against the label."""
    model.eval()
    correct_linear = correct_mlp = 0
    with torch.no_grad():
        for start in range(0, len(test_set), batch_size):
            items = [test_set[i] for i in range(start, min(start + batch_size, len(test_set)))]
            x, y = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
            h = model.features(x)
            correct_linear += int((model.evaluator.block_glb_lin(h).argmax(1) == y).sum())
            correct_mlp += int((model.evaluator.block_glb_mlp(h).argmax(1) == y).sum())
    return correct_linear, correct_mlp


def test_scores_match_a_refresh_and_argmax_done_by_hand(digits_checkpoint, digits):
    splits = digits
    unrefreshed = _correct_by_hand(checkpoint.load_model(digits_checkpoint), splits.test, len(splits.test))
    model = checkpoint.load_model(digits_checkpoint)
    _refresh_by_hand(model, splits, SEED, BATCH)
    linear, mlp = _correct_by_hand(model, splits.test, BATCH)
    # The checkpoint is built so that both mutations show: the refresh changes both scores, the heads differ.
    assert linear != unrefreshed[0] and mlp != unrefreshed[1] and linear != mlp

    result = test_py.main([digits_checkpoint, "--dataset", "DIGITS", "--json", "--num_workers", "0",
                           "--device", "cpu", "--batch_size", str(BATCH), "--seed", str(SEED)])
    n = len(splits.test)
    assert result["n_images"] == n == 297 and result["n_skipped"] == 0
    assert result["top1_linear"] == pytest.approx(100 * linear / n, abs=1e-9)
    assert result["top1_mlp"] == pytest.approx(100 * mlp / n, abs=1e-9)
    # Saved mid-epoch: the second epoch (index 1) was under way, 43 updates done.
    assert (result["phase"], result["epoch"], result["update"], result["mid_epoch"]) == \
        ("self_supervised", 2, 43, True)
    assert "(checkpoint saved mid-epoch: epoch 2, update 43)" in test_py.describe(result)


def test_position_reads_the_cursor_of_either_phase():
    cursor = {"info_epoch": 4, "info_step": 120, "classifier_epoch": 2, "classifier_step": 50}
    assert test_py.position({"cursor": cursor, "batches_done": 0, "phase": "self_supervised"}) == \
        {"phase": "self_supervised", "epoch": 4, "update": 120, "mid_epoch": False}
    assert test_py.position({"cursor": cursor, "batches_done": 5, "phase": "classifiers"}) == \
        {"phase": "classifiers", "epoch": 3, "update": 50, "mid_epoch": True}
    assert test_py.position({"cursor": cursor}) == \
        {"phase": "self_supervised", "epoch": 4, "update": 120, "mid_epoch": False}    # the original code's
    assert test_py.position({}) == {}
    text = test_py.describe({"checkpoint": "c.pth", "dataset": "C10", "n_images": 10, "top1_linear": 50.0,
                             "top1_mlp": 60.0, "n_skipped": 0, "phase": "classifiers", "epoch": 2, "update": 50,
                             "mid_epoch": False})
    assert text == "c.pth (checkpoint saved after classifier epoch 2, update 50) on C10 test (10 images): " \
                   "top-1 linear 50.00%, mlp 60.00%"


# ----------------------------------------------------------------------------------------------------------
# Image folders: unreadable files, the image size, classifiers for another class count.

def _folder(root, n_val=(6, 7), n_train=4):
    """FOLDER data with classes a and b: n_train training and n_val[c] test PNGs (12 px) per class."""
    rng = np.random.RandomState(0)
    for split, counts in (("train", (n_train, n_train)), ("val", n_val)):
        for c, n in zip("ab", counts):
            os.makedirs(root / split / c)
            for i in range(n):
                Image.fromarray(rng.randint(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return str(root)


def _break(path):
    """Overwrite an image with bytes no decoder reads."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")


@pytest.fixture(scope="module")
def folder_checkpoint(tmp_path_factory):
    """A tiny 32 px AMDIM checkpoint with classifiers for 2 classes."""
    return _save(_tiny_model(2), tmp_path_factory.mktemp("folder") / "amdim_cpt.pth")


def test_unreadable_images_are_left_out_of_the_scores_and_counted(tmp_path, folder_checkpoint, capsys):
    data = _folder(tmp_path / "data")                 # 13 test images
    _break(tmp_path / "data" / "val" / "b" / "3.png")
    _break(tmp_path / "data" / "train" / "a" / "0.png")
    flags = [folder_checkpoint, "--dataset", "FOLDER", "--input_dir", data, "--batch_size", "4", "--num_workers",
             "0", "--device", "cpu", "--skip_bad_images"]     # no --image_size: FOLDER takes the checkpoint's
    result = test_py.main(flags + ["--json", "--knn", "3"])
    assert (result["n_images"], result["n_skipped"], result["knn_memory_skipped"]) == (12, 1, 1)
    # Exactly the 12 readable test images count: each score is a whole number of them.
    for key in ("top1_linear", "top1_mlp", "top1_knn"):
        assert round(result[key] * 12 / 100, 9) == int(round(result[key] * 12 / 100)), key
    capsys.readouterr()
    test_py.main(flags)
    assert "(12 images, 1 unreadable image skipped)" in capsys.readouterr().out
    with pytest.raises(UserError, match="cannot read image .*--skip_bad_images"):
        test_py.main(flags[:-1])


def test_folder_image_size_comes_from_the_checkpoint_and_may_not_contradict_it(tmp_path, folder_checkpoint):
    data = _folder(tmp_path / "data", n_val=(2, 2), n_train=2)
    base = [folder_checkpoint, "--dataset", "FOLDER", "--input_dir", data, "--batch_size", "4", "--num_workers",
            "0", "--device", "cpu", "--json"]
    assert test_py.main(base + ["--image_size", "32"])["n_images"] == 4
    with pytest.raises(UserError, match="--image_size 64 contradicts the checkpoint, whose encoder takes 32 px"):
        test_py.main(base + ["--image_size", "64"])


def test_retrain_hint_is_a_command_that_runs_as_pasted(tmp_path, digits_checkpoint, monkeypatch):
    """Classifiers for 10 classes on a 2-class folder: the hint's train.py command, pasted where test.py ran,
    trains classifiers for the folder (here for 1 epoch) that test.py then scores."""
    data = _folder(tmp_path / "data", n_val=(2, 2), n_train=3)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        test_py.main([digits_checkpoint, "--dataset", "FOLDER", "--input_dir", data, "--num_workers", "0",
                      "--device", "cpu"])
    message = str(caught.value)
    assert "predict 10 classes but FOLDER has 2: retrain them with " in message and "--checkpoint_path" in message
    argv = shlex.split(message.split("retrain them with ", 1)[1])
    assert os.path.samefile(argv[1], os.path.join(os.path.dirname(os.path.dirname(__file__)), "train.py"))
    assert argv[2:] == ["--classifiers", "--checkpoint_path", digits_checkpoint, "--dataset", "FOLDER",
                        "--input_dir", data, "--run_name", "digits0_folder_classifiers", "--image_size", "32",
                        "--batch_size", "6"]
    train.main(argv[2:] + ["--epochs", "1", "--num_workers", "0", "--device", "cpu", "--view_grid", "0"])
    retrained = tmp_path / "runs" / "digits0_folder_classifiers" / "amdim_cpt.pth"
    result = test_py.main([str(retrained), "--dataset", "FOLDER", "--input_dir", data, "--num_workers", "0",
                           "--device", "cpu", "--json"])
    assert result["n_images"] == 4 and result["phase"] == "classifiers" and result["epoch"] == 1


# ----------------------------------------------------------------------------------------------------------
# Flags.

@pytest.mark.parametrize("flag,value,message", [
    ("--batch_size", "1", "--batch_size must be at least 2, got 1"),
    ("--num_workers", "-1", "--num_workers must be 0 or more, got -1"),
    ("--knn", "0", "--knn K must be at least 1, got 0"),
    ("--seed", "-3", "--seed must be 0 or more, got -3"),
])
def test_numeric_flags_out_of_range_stop_with_one_line(flag, value, message, capsys):
    with pytest.raises(SystemExit) as caught:
        test_py.parse_args(["c.pth", flag, value])
    assert caught.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"error: {message}" in errors[0]


# ----------------------------------------------------------------------------------------------------------
# checkpoint.read: each message names the real cause.

def _read_error(path, **kwargs):
    with pytest.raises(UserError) as caught:
        checkpoint.read(str(path), **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message
    return message


def test_a_directory_is_called_a_directory(tmp_path):
    message = _read_error(tmp_path)
    assert "is a directory, not a file" in message and "does not exist" not in message
    (tmp_path / "amdim_cpt.pth").write_bytes(b"")
    assert f"(e.g. {tmp_path / 'amdim_cpt.pth'})" in _read_error(tmp_path)


@pytest.mark.parametrize("content", [
    np.random.RandomState(0).bytes(4000),
    np.random.RandomState(1).bytes(50),
    b"\x80\x02" + np.random.RandomState(2).bytes(4000),         # looks like a pickle's first opcode
    b"\x93NUMPY\x01\x00" + np.random.RandomState(3).bytes(100),  # a .npy file
    pickle.dumps({"model": {}, "hyperparams": {}}, protocol=4),  # a pickle, but not torch.save's format
    b"",
], ids=["random", "random-short", "pickle-like", "npy", "plain-pickle", "empty"])
def test_bytes_that_are_no_checkpoint_are_called_that(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    message = _read_error(path)
    assert "not a PyTorch checkpoint" in message and "truncated" in message
    assert "could run code" not in message and "refusing" not in message


def test_truncated_checkpoints_are_called_that(tmp_path, folder_checkpoint):
    data = open(folder_checkpoint, "rb").read()
    for length in (10, 5000, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{length}.pth"
        path.write_bytes(data[:length])
        assert "it is a zip archive that torch.load cannot read, so not a PyTorch checkpoint (truncated" in \
            _read_error(path)


class _Payload:
    """Unpickling this would call os.system: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("save", [
    lambda obj, path: torch.save(obj, path),
    lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=4)),
], ids=["zip", "legacy", "plain-pickle"])
def test_only_a_pickle_importing_disallowed_globals_could_run_code(tmp_path, save):
    path = tmp_path / "evil.pth"
    save({"model": {}, "hyperparams": {}, "x": _Payload()}, path)
    message = _read_error(path)
    assert message.startswith(f"refusing to load {path}: it is a pickle that references ")
    assert "system" in message and "could run code" in message


def test_messages_name_where_the_path_came_from(tmp_path):
    assert "check --checkpoint_path" in _read_error(tmp_path / "missing.pth")
    for path in (tmp_path / "missing.pth", tmp_path):
        with pytest.raises(UserError) as caught:
            test_py.main([str(path), "--dataset", "DIGITS", "--device", "cpu"])
        assert "--checkpoint_path" not in str(caught.value) and "test.py's checkpoint argument" in str(caught.value)
