"""Exact resume: a run of every method killed with SIGKILL in the middle of an epoch and re-run ends bit for bit
where the uninterrupted run ends, with the same logged epoch means; a resume with another batch size trains the
rest of the epoch's images.

The killed and the resumed runs are train.py processes; the uninterrupted run they are compared with trains in
this process, on as many threads as they do (helpers.this_process_threads_env)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import methods
import train
from helpers import BASE, TINY_FLAGS, this_process_threads_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(out, method, run_name, *extra):
    return [*BASE, *TINY_FLAGS[method], "--epochs", "1", "--checkpoint_every", "2", "--output_dir", str(out),
            "--run_name", run_name, *extra]


def train_cmd(out, method, run_name, *extra):
    return [sys.executable, "train.py", *train_argv(out, method, run_name, *extra)]


def read_checkpoint(path):
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 -- absent, or being replaced at this moment
        return None


def kill_mid_epoch(cmd, cpt, env=None):
    """Start the run (in env, default this process's), SIGKILL it once a mid-epoch checkpoint after update 4
    exists; returns that checkpoint."""
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    seen = None
    while time.time() < deadline and p.poll() is None:
        seen = read_checkpoint(cpt)
        if seen is not None and seen["cursor"]["info_step"] >= 4:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return seen


def epoch_records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "epoch" in r and "loss" in r]


def tensors(tree, prefix=""):
    """Every tensor in nested dicts/lists, by path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {k: v for key, sub in items for k, v in tensors(sub, f"{prefix}.{key}").items()}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_run_killed_mid_epoch_and_rerun_matches_the_uninterrupted_run_bit_for_bit(method, tmp_path):
    train.main(train_argv(tmp_path, method, "straight"))
    env = this_process_threads_env()
    cpt = tmp_path / "killed" / "amdim_cpt.pth"
    at_kill = kill_mid_epoch(train_cmd(tmp_path, method, "killed"), cpt, env)
    assert at_kill["cursor"]["info_epoch"] == 0 and at_kill["samples_done"] > 0        # really mid-epoch
    resumed = subprocess.run(train_cmd(tmp_path, method, "killed"), cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a, b = (torch.load(p, weights_only=True) for p in (tmp_path / "straight" / "amdim_cpt.pth", cpt))
    assert a["cursor"] == b["cursor"] and a["cursor"]["info_epoch"] == 1
    ta, tb = tensors({"model": a["model"], "optimizer": a["optimizer"]["state"]}), \
        tensors({"model": b["model"], "optimizer": b["optimizer"]["state"]})
    assert ta.keys() == tb.keys() and len(ta) > 40
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    # The epoch's logged means cover the whole epoch, not only the updates after the resume.
    first, second = epoch_records(tmp_path / "straight"), epoch_records(tmp_path / "killed")
    keys = ("loss", "train_acc_mlp", "train_acc_lin", "top1_linear", "top1_mlp")
    assert [{k: r[k] for k in keys} for r in first] == [{k: r[k] for k in keys} for r in second]


def test_resume_with_another_batch_size_trains_exactly_the_rest_of_the_epoch(tmp_path, capsys):
    flags = BASE + TINY_FLAGS["amdim"] + ["--epochs", "1", "--output_dir", str(tmp_path)]
    train.main(flags + ["--run_name", "a", "--checkpoint_every", "4"])
    prev = torch.load(tmp_path / "a" / "amdim_cpt.pth.prev", weights_only=True)     # saved after update 12
    assert prev["cursor"]["info_step"] == 12 and prev["samples_done"] == 1200
    os.makedirs(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "amdim_cpt.pth.prev", tmp_path / "b" / "amdim_cpt.pth")
    capsys.readouterr()
    train.main(flags[:flags.index("--batch_size")] + flags[flags.index("--batch_size") + 2:]
               + ["--run_name", "b", "--batch_size", "50"])
    assert "--batch_size 100, this run uses 50" in capsys.readouterr().out
    done = torch.load(tmp_path / "b" / "amdim_cpt.pth", weights_only=True)
    # 1,500 images, 1,200 trained at batch 100: the other 300 at batch 50 are 6 more updates.
    assert done["cursor"]["info_epoch"] == 1 and done["cursor"]["info_step"] == 18


@pytest.mark.slow
def test_a_folder_read_file_by_file_resumes_bit_for_bit_after_a_kill(tmp_path):
    """The crop path: a loader worker (kept across epochs) cuts each image's uint8 crops, seeded per image; the
    device colours them with draws seeded per update. Killed mid-epoch and re-run, the run ends where the
    uninterrupted one does, bit for bit, two epochs in."""
    import numpy as np
    from PIL import Image
    rng = np.random.RandomState(0)
    for split, n in (("train", 50), ("val", 3)):
        for c in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / c)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.jpg", quality=90)
    flags = ["--dataset", "FOLDER", "--image_size", "32", "--input_dir", str(tmp_path / "data"), "--cache_images",
             "off", "--num_workers", "1", "--epochs", "2"]
    cmd = lambda name: train_cmd(tmp_path, "amdim", name, *flags, "--batch_size", "10")     # later flags win
    train.main(train_argv(tmp_path, "amdim", "straight", *flags, "--batch_size", "10"))
    env = this_process_threads_env()
    cpt = tmp_path / "killed" / "amdim_cpt.pth"
    at_kill = kill_mid_epoch(cmd("killed"), cpt, env)
    assert at_kill["cursor"]["info_epoch"] == 0 and at_kill["samples_done"] > 0
    resumed = subprocess.run(cmd("killed"), cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a, b = (torch.load(p, weights_only=True) for p in (tmp_path / "straight" / "amdim_cpt.pth", cpt))
    assert a["cursor"] == b["cursor"] and a["cursor"]["info_epoch"] == 2 and a["cursor"]["info_step"] == 20
    ta, tb = tensors({"model": a["model"], "optimizer": a["optimizer"]["state"]}), \
        tensors({"model": b["model"], "optimizer": b["optimizer"]["state"]})
    assert ta.keys() == tb.keys() and [k for k in ta if not torch.equal(ta[k], tb[k])] == []
