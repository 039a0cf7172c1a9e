"""Faults and bad input: one-line errors, kills, signals, full disks. Kills, signals, a full disk and a
non-finite loss hit a real train.py process; the other errors run the entry points in this process as their
scripts do (helpers.one_line_error), the real process's exit status and stderr checked by the non-finite-loss
and full-disk tests."""
import os
import pickle
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import train
from helpers import DIGITS_TINY, TINY_ENCODER, load_test_py, one_line_error, small_digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(out, run_name, *extra):
    return [*DIGITS_TINY, "--output_dir", str(out), "--run_name", run_name, *extra]


def train_cmd(out, run_name, *extra):
    return [sys.executable, "train.py", *train_argv(out, run_name, *extra)]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_temporaries(run_dir):
    return not [f for f in os.listdir(run_dir) if ".tmp" in f]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    train.main(train_argv(out, "base", "--epochs", "1"))
    return out, out / "base" / "amdim_cpt.pth"


def copy_run(one_epoch, tmp_path, name):
    out, cpt = one_epoch
    (tmp_path / name).mkdir()
    (tmp_path / name / "amdim_cpt.pth").write_bytes(cpt.read_bytes())
    return tmp_path / name / "amdim_cpt.pth"


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_update_and_keeps_the_checkpoint(one_epoch, tmp_path):
    cpt = copy_run(one_epoch, tmp_path, "nan")
    before = cpt.read_bytes()
    r = run(train_cmd(tmp_path, "nan", "--epochs", "2", "--learning_rate", "1e38"))
    line = assert_one_line_error(r, "non-finite loss at update", "1t5=", "class_lin=", "--nan_policy skip")
    assert int(line.split("update ")[1].split()[0]) > 15          # after the resumed epoch's start
    assert cpt.read_bytes() == before
    assert no_temporaries(tmp_path / "nan")


def test_nan_policy_skip_counts_skipped_updates(tmp_path, capsys, monkeypatch):
    small_digits(monkeypatch, n_train=500)        # 5 updates
    train.main(train_argv(tmp_path, "skip", "--epochs", "1", "--learning_rate", "1e38", "--nan_policy", "skip"))
    assert "update skipped" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "skip" / "amdim_cpt.pth", weights_only=True)
    import json
    record = json.loads((tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_updates"] > 0
    # A skipped update is decided on the device, so it still counts as a step of the schedule: 5 updates.
    assert ckpt["cursor"]["info_step"] == 5 and record["skipped_updates"] < 5


@pytest.mark.slow
def test_sigterm_and_sigint_save_at_the_update_boundary_and_exit_zero_then_resume(tmp_path):
    """SIGTERM (what torchrun, schedulers and `kill` send) stops a run as Ctrl-C does: a checkpoint at the update
    boundary and exit status 0. The run that resumes it continues from there and is stopped by SIGINT (Ctrl-C)."""
    cmd = train_cmd(tmp_path, "sig", "--epochs", "2", "--log_every", "1")
    cpt = tmp_path / "sig" / "amdim_cpt.pth"
    done = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        head = []
        for line in p.stdout:                    # wait for this run's second update's progress line
            head.append(line)
            if "update 2/" in line:
                break
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        out = "".join(head) + out
        assert p.returncode == 0, (sig.name, err)
        assert f"{sig.name}: saving a checkpoint" in err and "interrupted: checkpoint saved" in out, (out, err)
        assert ("resuming from" in out) == (done > 0)
        ckpt = torch.load(cpt, weights_only=True)
        assert ckpt["cursor"]["info_epoch"] == 0 and done + 2 <= ckpt["batches_done"] < 15, (sig.name, done)
        assert ckpt["batches_done"] == ckpt["cursor"]["info_step"]
        done = ckpt["batches_done"]


class _Lines:
    """Collects a process's output lines in a thread, counting its training progress lines (one per update
    with --log_every 1)."""
    PROGRESS = re.compile(r"^epoch \d+/\d+ update \d+/\d+ ")

    def __init__(self, p):
        self.lines, self.updates = [], 0
        self.thread = threading.Thread(target=self._read, args=(p.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)
            self.updates += bool(self.PROGRESS.match(line))

    def text(self):
        self.thread.join(timeout=60)
        return "".join(self.lines)


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_resumable_checkpoint(tmp_path, capsys):
    """Two runs are SIGKILLed mid-training (never before training began, never after it could have finished,
    however fast or slow the host): the first while a save is in progress, the second (which resumed the first's
    checkpoint) a random moment after a random update (checkpoints after every update). Each kill leaves a
    loadable checkpoint of the unfinished run, which the next run resumes; the last run finishes the training."""
    total = 30                                   # 2 epochs of 15 updates
    argv = train_argv(tmp_path, "kill", "--epochs", "2", "--checkpoint_every", "1", "--log_every", "1")
    run_dir = tmp_path / "kill"
    cpt = run_dir / "amdim_cpt.pth"
    rng = random.Random(0)
    for attempt in range(2):
        done_before = torch.load(cpt, weights_only=True)["cursor"]["info_step"] if cpt.exists() else 0
        remaining = total - done_before
        # Kill after this run's `last`-th update at the latest: at least 3 updates before the end.
        last = min(8, remaining - 3) if attempt == 0 else rng.randint(1, min(6, remaining - 3))
        assert last >= 1, done_before
        p = subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        out = _Lines(p)
        deadline = time.monotonic() + 300
        while p.poll() is None and out.updates < last and time.monotonic() < deadline:
            # From the second update on, the first save is complete: a temporary is a later save in progress.
            if attempt == 0 and out.updates >= 2 and any(".tmp" in f for f in os.listdir(run_dir)):
                break
            time.sleep(0.002 if attempt == 0 else 0.01)
        if attempt > 0:
            time.sleep(rng.uniform(0.0, 0.05))   # anywhere in the update or the save that follows it
        p.kill()
        p.wait()
        output = out.text()
        assert p.returncode == -signal.SIGKILL, (attempt, p.returncode, output[-3000:])
        assert out.updates >= (2 if attempt == 0 else 1), output[-3000:]   # killed while training
        if attempt > 0:
            assert "resuming from" in output, output[-3000:]
        ckpt = torch.load(cpt, weights_only=True)      # loadable after every kill
        assert done_before <= ckpt["cursor"]["info_step"] < total and ckpt["cursor"]["info_epoch"] < 2
    capsys.readouterr()
    train.main(argv)                              # the same command, in this process, to the end
    assert "resuming from" in capsys.readouterr().out
    final = torch.load(cpt, weights_only=True)
    assert final["cursor"]["info_epoch"] == 2 and final["cursor"]["info_step"] == total
    assert no_temporaries(run_dir)


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # fail the write with EFBIG instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_full_disk_while_saving_keeps_the_previous_checkpoint(one_epoch, tmp_path):
    cpt = copy_run(one_epoch, tmp_path, "full")
    before = cpt.read_bytes()
    r = run(train_cmd(tmp_path, "full", "--epochs", "2"), preexec_fn=_limit_file_size(len(before) // 2))
    assert_one_line_error(r, "could not write checkpoint", "previous checkpoint", "intact")
    assert cpt.read_bytes() == before
    assert no_temporaries(tmp_path / "full")


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line_error(capsys, train.main, train_argv(blocker / "sub", "x", "--epochs", "1"), "cannot write",
                   "--output_dir")


def test_bad_checkpoint_paths(tmp_path, one_epoch, capsys):
    one_line_error(capsys, train.main, train_argv(tmp_path, "c", "--checkpoint_path", str(tmp_path / "missing.pth")),
                   "does not exist", "--checkpoint_path")
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(one_epoch[1].read_bytes()[:5000])
    one_line_error(capsys, train.main, train_argv(tmp_path, "c", "--checkpoint_path", str(trunc)), "truncated")
    other = tmp_path / "other.pth"
    torch.save({"state": 1}, other)
    one_line_error(capsys, load_test_py().main, [str(other), "--dataset", "DIGITS", "--device", "cpu"],
                   "not a checkpoint this code reads (a dict of state)")


class _Payload:
    """Pickles as a call of open(path, "w"): unpickling it creates the file."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_is_refused_and_its_payload_never_runs(tmp_path, capsys):
    target = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "hyperparams": {}, "x": _Payload(str(target))}, evil)
    assert evil.exists() and not target.exists()
    one_line_error(capsys, load_test_py().main, [str(evil), "--dataset", "DIGITS", "--device", "cpu"],
                   "refusing to load")
    one_line_error(capsys, train.main, train_argv(tmp_path, "e", "--classifiers", "--checkpoint_path", str(evil)),
                   "refusing to load")
    assert not target.exists()
    # The check can fail: the payload is live, and any plain unpickling of it creates the file.
    pickle.loads(pickle.dumps(_Payload(str(target)))).close()
    assert target.exists()


def _folder_with_a_corrupt_image(root):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    bad = root / "train" / "a" / "broken.jpg"
    bad.write_bytes(Image.open(root / "train" / "a" / "0.png").tobytes()[:100])
    return bad


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_is_named_or_skipped_with_a_count(tmp_path, workers, capfd):
    """With --num_workers 1 the image is read, and the warning written, in a loader worker process: capfd
    captures that process's stderr too."""
    bad = _folder_with_a_corrupt_image(tmp_path / "data")
    base = ["--dataset", "folder", "--image_size", "32", "--input_dir", str(tmp_path / "data"), *TINY_ENCODER,
            "--batch_size", "13", "--epochs", "1", "--device", "cpu", "--num_workers", workers,
            "--output_dir", str(tmp_path)]
    one_line_error(capfd, train.main, base + ["--run_name", "fail"], str(bad), "--skip_bad_images")
    train.main(base + ["--run_name", "skip", "--skip_bad_images"])
    out, err = capfd.readouterr()
    assert "1 unreadable images skipped" in out
    assert err.count("skipping unreadable image") == 1
