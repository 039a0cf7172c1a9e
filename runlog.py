"""What a run writes and locks: meters and progress, the run directory's lock, logs (prints, TensorBoard,
metrics.jsonl) and the record of what a run ran on."""
import datetime
import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time

import torch

import distributed
from utils import UserError


class Meters:
    """Running means of named scalars over an epoch (losses, accuracies)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, values, n=1):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
            self.counts[k] = self.counts.get(k, 0) + n

    def means(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def state(self):
        """Plain dicts of the running sums and counts (for checkpoints)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def merge(self, state):
        """Add the sums and counts of a state() (another rank's, or an earlier part of the epoch)."""
        for k, v in state["sums"].items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + int(state["counts"][k])

    def reduce(self, dist):
        """Means over every process's updates (a collective: all ranks must call it)."""
        if not dist.active:
            return self.means()
        keys = sorted(set().union(*distributed.all_gather_objects(sorted(self.sums))))
        sums = distributed.all_reduce_sum(
            [self.sums.get(k, 0.0) for k in keys] + [self.counts.get(k, 0) for k in keys], dist.device)
        n = len(keys)
        return {k: sums[i] / sums[n + i] for i, k in enumerate(keys) if sums[n + i] > 0}


class Progress:
    """Per-epoch progress on rank 0: a tqdm bar on a terminal, else a plain line every `every` updates."""

    def __init__(self, total, desc, enabled, every, log):
        self.total, self.desc, self.every, self.log = total, desc, max(1, every), log
        self.enabled, self.done, self.t0 = enabled, 0, None
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="upd", dynamic_ncols=True, leave=False)

    def update(self, loss, lr, img_per_s):
        self.t0 = self.t0 or time.perf_counter()
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {img_per_s:.1f} img/s", refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / self.done * (self.total - self.done)
            self.log.print(f"{self.desc} update {self.done}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                           f"{img_per_s:.1f} img/s eta {eta:.0f}s")

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------------------
# The run directory: one run at a time, fresh logs for a run that starts over, what a run ran on.

class RunDirLock:
    """An exclusive flock on <run_dir>/.train.lock, so that two runs never write one run directory.

    The kernel drops a flock when its process ends, however it ends (kill -9 included): a lock is never stale
    and nothing needs cleaning after a crash. The holder writes its pid and host into the file for the message
    a refused run prints. Claims stay in `held` until release_all: the lock must outlive the function that
    took it and last the whole run.
    """
    NAME = ".train.lock"
    held = []

    def __init__(self, run_dir, created, fd):
        self.run_dir, self.created, self.fd = run_dir, created, fd
        self.key = os.path.realpath(run_dir)
        # A forked child (a DataLoader worker) shares the lock's open file description, and a flock lasts until
        # every copy is closed: children close theirs, so that the lock ends with the run's own process.
        os.register_at_fork(after_in_child=self._close)

    def _close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @classmethod
    def claim(cls, run_dir):
        """Create run_dir if needed and lock it; a UserError when it is not writable or another run holds it."""
        for lock in cls.held:
            if lock.key == os.path.realpath(run_dir):
                return lock           # an earlier start in this same process (tests, notebooks) holds it
        created = missing_dirs(run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
            fd = lock_file(os.path.join(run_dir, cls.NAME), run_dir)
        except OSError as e:
            raise UserError(f"cannot write to {run_dir} ({e.strerror}); pass a writable --output_dir") from None
        lock = cls(run_dir, created, fd)
        cls.held.append(lock)
        return lock

    def release(self, failed):
        """Drop the lock. After a failed start, first remove the directories this start created, if they hold
        nothing but the lock file: a failed start leaves no empty run folder behind."""
        try:
            if failed and self.created and os.listdir(self.run_dir) == [self.NAME]:
                os.remove(os.path.join(self.run_dir, self.NAME))
                for d in self.created:           # deepest first; a parent that is not empty stays
                    os.rmdir(d)
        except OSError:
            pass                                  # tidying must never hide why the start failed
        self._close()

    @classmethod
    def release_all(cls, failed):
        while cls.held:
            cls.held.pop().release(failed)


def missing_dirs(path):
    """The directories os.makedirs(path) would create, deepest first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def lock_file(path, run_dir):
    """A descriptor of `path` (created if absent) holding its exclusive flock, with our pid and host written in
    it; a UserError naming the holder when another process has it."""
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
            raise UserError(f"{run_dir} is in use by another run{who}; wait for it to end, or pass another "
                            f"--run_name") from None
        except OSError as e:
            # Some network filesystems cannot lock at all: run unprotected rather than not at all.
            print(f"warning: cannot lock {path} ({e.strerror}); nothing stops a second run on {run_dir}",
                  file=sys.stderr, flush=True)
            return fd
        # A failed start that removed its run directory may have unlinked the file between our open and flock:
        # holding that orphan would lock nothing, so lock the file that is there now.
        if same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)
        os.makedirs(run_dir, exist_ok=True)
    raise UserError(f"{run_dir} keeps being removed by other runs' failed starts; wait for them, or pass another "
                    f"--run_name")


def same_file(fd, path):
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def set_aside_logs(run_dir):
    """Move an earlier run's metrics.jsonl and TensorBoard event files into <run_dir>/replaced_<UTC time>/, so
    that a run that starts over writes fresh ones and TensorBoard shows the two as separate runs. Returns that
    folder, or None when there was nothing to move."""
    old = [n for n in sorted(os.listdir(run_dir)) if n == "metrics.jsonl" or n.startswith("events.out.tfevents.")]
    if not old:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join(run_dir, f"replaced_{stamp}")
    target, n = base, 1
    while os.path.exists(target):
        target, n = f"{base}_{n}", n + 1
    os.makedirs(target)
    for name in old:
        os.replace(os.path.join(run_dir, name), os.path.join(target, name))
    return target


def utc_now():
    """The current time, ISO 8601 in UTC, to the millisecond."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def environment(code_dir):
    """What a run ran on: Python, torch and torchvision versions, the host, and the git commit of code_dir
    (left out when there is none)."""
    import torchvision
    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "cuda": torch.version.cuda, "host": socket.gethostname()}
    commit = git_commit(code_dir)
    if commit:
        env["git_commit"] = commit
    return env


def git_commit(directory):
    """HEAD's commit of the checkout holding `directory`, with "-dirty" when tracked files differ from it; None
    when it is no git checkout, or git is missing or fails: a record of the code, never a reason to stop."""
    def git(*args):
        # GIT_OPTIONAL_LOCKS=0: status must not take the index lock from a git command the user is running.
        return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=10,
                              check=True, env=dict(os.environ, GIT_OPTIONAL_LOCKS="0")).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        # Untracked files are left out: output or data folders inside the checkout would mark every run dirty.
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


class RunLog:
    """Prints (flushed, so logs stream through pipes), TensorBoard scalars and metrics.jsonl for rank 0.

    Every metrics.jsonl line is a JSON object with "time" (ISO 8601, UTC) and "event": "start" (one per start:
    run_info, see train.run_info) or "epoch" (one per finished epoch).
    """

    def __init__(self, run_dir, enabled=True):
        self.enabled = enabled
        self.run_dir = run_dir
        self._writer = None
        self.run_info = None         # this start's record, also stored in its checkpoints

    @property
    def writer(self):
        """The SummaryWriter (None when disabled), made at first use: a start that fails before logging anything
        leaves no event file, so its run directory stays empty and can be removed."""
        if self.enabled and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import
            self._writer = SummaryWriter(self.run_dir)
        return self._writer

    def print(self, *args):
        if self.enabled:
            print(*args, flush=True)

    def scalars(self, prefix, values, step):
        if self.enabled:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def record(self, record):
        """Append one line to metrics.jsonl, stamped with the time."""
        if self.enabled:
            with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"time": utc_now(), **record}) + "\n")

    def start(self, info, step):
        """This start's record: a metrics.jsonl line, TensorBoard text at `step`, and run_info for checkpoints."""
        # Through JSON: checkpoints then hold plain types only (torch.__version__ is a str subclass, which
        # weights_only loading refuses), the same values metrics.jsonl holds.
        info = self.run_info = json.loads(json.dumps(info))
        if self.enabled:
            self.record({"event": "start", **info})
            # Indented four spaces: TensorBoard renders text as markdown, and this keeps the JSON as written.
            text = "\n".join("    " + line for line in json.dumps(info, indent=2).splitlines())
            self.writer.add_text("run_info", text, step)

    def close(self):
        if self._writer is not None:
            self._writer.close()
