"""One run per run directory, fresh logs for a run that starts over, and what metrics.jsonl, TensorBoard and the
checkpoint record about each start."""
import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torchvision

import checkpoint
import runlog
import train
import utils
from helpers import BASE, TINY_ENCODER, run_entry_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*BASE, *TINY_ENCODER]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def events_files(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("events.out.tfevents."))


class StopAfterSetup(Exception):
    """Raised where training would begin: a start's whole set-up ran, without the cost of an epoch."""


@pytest.fixture
def stop_after_setup(monkeypatch):
    def make_loaders(run):
        raise StopAfterSetup
    monkeypatch.setattr(train, "make_loaders", make_loaders)


def lock_is_free(run_dir):
    fd = os.open(os.path.join(run_dir, runlog.RunDirLock.NAME), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_second_run_on_a_run_directory_is_refused_until_the_first_dies(tmp_path, stop_after_setup, capsys):
    flags = TINY + ["--output_dir", str(tmp_path), "--run_name", "r"]
    run_dir = tmp_path / "r"
    lock = run_dir / runlog.RunDirLock.NAME
    first = subprocess.Popen([sys.executable, "train.py", *flags, "--epochs", "100"], cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        metrics = run_dir / "metrics.jsonl"
        # Until it holds the lock and has written its start record (the line is whole when it ends in \n).
        while not (lock.exists() and lock.read_text().startswith(f"{first.pid} ") and metrics.exists()
                   and metrics.read_text().endswith("\n")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        capsys.readouterr()
        status = run_entry_point(train.main, flags + ["--epochs", "1"])
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        first.kill()                    # SIGKILL: none of its code runs, only the kernel drops its lock
        first.wait()
    err = capsys.readouterr().err
    assert status == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and str(run_dir) in line, line
    assert f"pid {first.pid}" in line and "--run_name" in line, line
    starts = [r for r in records(run_dir) if r["event"] == "start"]
    assert len(starts) == 1 and starts[0]["config"]["epochs"] == 100     # the refused run wrote nothing

    with pytest.raises(StopAfterSetup):
        train.main(flags + ["--epochs", "1"])
    assert lock.read_text().startswith(f"{os.getpid()} ")   # the new run got the lock the killed one held
    assert records(run_dir)[-1]["event"] == "start"
    assert lock_is_free(run_dir)                            # and gave it back when its start failed


def test_the_lock_ends_with_its_process_though_forked_children_live_on(tmp_path):
    """A DataLoader worker is a forked child: it must not keep the lock of a run killed under it."""
    run_dir = str(tmp_path / "r")
    read_end, write_end = os.pipe()
    holder = os.fork()
    if holder == 0:                                 # the run: takes the lock, forks a worker, dies at once
        try:
            runlog.RunDirLock.claim(run_dir)
            worker = os.fork()
            if worker == 0:
                time.sleep(60)
            else:
                os.write(write_end, str(worker).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    worker = int(os.read(read_end, 20))
    os.close(read_end)
    os.waitpid(holder, 0)
    try:
        os.kill(worker, 0)                          # the worker lives on
        assert lock_is_free(run_dir)
    finally:
        os.kill(worker, signal.SIGKILL)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 1-epoch run."""
    out = tmp_path_factory.mktemp("runs")
    train.main(TINY + ["--output_dir", str(out), "--run_name", "done", "--epochs", "1"])
    return out / "done"


def test_every_record_is_timestamped_and_the_start_record_holds_the_resolved_config(finished):
    recs = records(finished)
    assert [r["event"] for r in recs] == ["start", "epoch"]
    now = datetime.datetime.now(datetime.timezone.utc)
    for r in recs:
        t = datetime.datetime.fromisoformat(r["time"])
        assert t.utcoffset() == datetime.timedelta(0) and abs(now - t) < datetime.timedelta(minutes=30)
    start = recs[0]
    assert start["phase"] == "self_supervised" and start["start"] == "scratch" and start["from"] is None
    assert start["cursor"]["info_step"] == 0
    cfg = start["config"]
    # Given flags, and the defaults the start filled in where the flags were None.
    assert (cfg["ndf"], cfg["n_rkhs"], cfg["n_depth"]) == (8, 32, 1)
    assert (cfg["method"], cfg["arch"], cfg["tclip"], cfg["use_bn"]) == ("amdim", "amdim", 20.0, False)
    assert (cfg["learning_rate"], cfg["warmup_updates"], cfg["epochs"]) == (2e-4, 500, 1)
    assert cfg["milestones"] == []              # one epoch: no decay (Recipe.epochs_and_milestones)
    assert (cfg["batch_size"], cfg["per_process_batch"], cfg["world_size"]) == (100, 100, 1)
    assert (cfg["train_images"], cfg["test_images"], cfg["n_classes"], cfg["encoder_size"]) == (1500, 297, 10, 32)
    assert not [k for k in ("method", "arch", "ndf", "tclip", "use_bn", "learning_rate", "warmup_updates",
                            "epochs") if cfg[k] is None]
    env = start["environment"]
    assert env["torch"] == torch.__version__ and env["torchvision"] == torchvision.__version__
    assert env["python"] == platform.python_version() and env["host"] == socket.gethostname()
    commit = runlog.git_commit(ROOT)
    assert env.get("git_commit") == commit
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)
    epoch = recs[1]
    assert epoch["epoch"] == 1 and epoch["step"] == 15 and "loss" in epoch and "top1_linear" in epoch
    assert epoch["lr"] > 0 and epoch["epoch_seconds"] > 0
    between = datetime.datetime.fromisoformat(epoch["time"]) - datetime.datetime.fromisoformat(start["time"])
    assert epoch["epoch_seconds"] <= between.total_seconds()           # the training pass fits in the run


def test_the_start_record_is_in_the_checkpoint_and_in_tensorboard(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    start = records(finished)[0]
    expected = {k: v for k, v in start.items() if k not in ("time", "event")}
    assert checkpoint.read(str(finished / "amdim_cpt.pth"))["run_info"] == expected   # weights_only reads it
    acc = EventAccumulator(str(finished), size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = acc.Tensors("run_info/text_summary")
    assert json.loads(textwrap.dedent(text.tensor_proto.string_val[0].decode())) == expected


def test_resume_keeps_appending_and_resume_never_moves_the_earlier_logs_aside(finished, tmp_path, stop_after_setup,
                                                                              capsys):
    run_dir = tmp_path / "again"
    shutil.copytree(finished, run_dir)
    flags = TINY + ["--output_dir", str(tmp_path), "--run_name", "again", "--epochs", "2"]
    with pytest.raises(StopAfterSetup):
        train.main(flags)
    resumed = records(run_dir)
    assert [r["event"] for r in resumed] == ["start", "epoch", "start"] and resumed[-1]["start"] == "resume"
    assert not [n for n in os.listdir(run_dir) if n.startswith("replaced_")]
    old_events = events_files(run_dir)

    capsys.readouterr()
    with pytest.raises(StopAfterSetup):
        train.main(flags + ["--resume", "never"])
    (aside,) = [n for n in os.listdir(run_dir) if n.startswith("replaced_")]
    assert f"moved to {run_dir / aside}" in capsys.readouterr().out
    assert records(run_dir / aside) == resumed
    assert events_files(run_dir / aside) == old_events
    fresh = records(run_dir)
    assert [r["event"] for r in fresh] == ["start"] and fresh[0]["start"] == "scratch"
    assert len(events_files(run_dir)) == 1 and not set(events_files(run_dir)) & set(old_events)


def test_a_failed_start_removes_the_run_directory_it_created(tmp_path, monkeypatch):
    folder = ["--dataset", "FOLDER", "--image_size", "32", "--input_dir", str(tmp_path / "missing"),
              "--device", "cpu"]
    with pytest.raises(utils.UserError, match="does not exist"):
        train.main(folder + ["--output_dir", str(tmp_path / "new" / "runs")])
    assert not (tmp_path / "new").exists()          # the run folder and the --output_dir it made

    def build_model(*args):
        raise utils.UserError("fails after the run's log exists")
    monkeypatch.setattr(train, "build_model", build_model)
    with pytest.raises(utils.UserError, match="after the run's log"):
        train.main(TINY + ["--output_dir", str(tmp_path / "late"), "--epochs", "1"])
    assert not (tmp_path / "late").exists()

    (tmp_path / "mine" / "r").mkdir(parents=True)
    with pytest.raises(utils.UserError, match="after the run's log"):
        train.main(TINY + ["--output_dir", str(tmp_path / "mine"), "--run_name", "r", "--epochs", "1"])
    assert (tmp_path / "mine" / "r").is_dir()       # a folder the user made stays
    assert lock_is_free(tmp_path / "mine" / "r")


def test_git_commit_is_left_out_without_a_checkout_or_git(tmp_path, monkeypatch):
    assert runlog.git_commit(str(tmp_path)) is None
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runlog.git_commit(ROOT) is None


SHUTDOWN = """
import atexit, sys, time
sys.path.insert(0, {root!r})
import distributed
import utils

def slow_shutdown():
    print("shutting down", flush=True)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        time.sleep(0.02)
    print("shut down", flush=True)

def main():
    atexit.register(slow_shutdown)
    stop = distributed.StopRequest()
    stop.install()
    print("ready", flush=True)
    while not stop.requested:
        time.sleep(0.02)

utils.run_main(main)
"""


@pytest.mark.slow
def test_a_second_ctrl_c_during_shutdown_is_ignored():
    p = subprocess.Popen([sys.executable, "-c", SHUTDOWN.format(root=ROOT)], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGINT)                # the first: save and stop
        assert p.stdout.readline() == "shutting down\n"
        p.send_signal(signal.SIGINT)                # the second, while atexit handlers run
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert out == "shut down\n" and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err
