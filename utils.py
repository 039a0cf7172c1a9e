"""Process-level helpers: user-facing errors, distributed setup, seeding, meters and logging."""
import contextlib
import datetime
import fcntl
import gc
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as tdist


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, unreadable file).

    Entry points print `error: <message>` on one line to stderr and exit with status 2, without a traceback.
    The message must name the problem and the fix.
    """


def run_main(main):
    """Call main(); a UserError becomes one line on stderr and exit status 2. Once main() has ended, however it
    ended, the process is shutting down and ignores Ctrl-C (see ignore_interrupts)."""
    try:
        return main()
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        ignore_interrupts()


def ignore_interrupts():
    """From now on Ctrl-C does nothing and SIGTERM ends the process without running Python code.

    The shutdown that follows (atexit handlers, joining threads) would otherwise meet StopRequest's handler,
    which raises KeyboardInterrupt on a second signal, and print "Exception ignored in atexit callback". The
    checkpoint is saved by then; letting the shutdown finish loses nothing.
    """
    if threading.current_thread() is threading.main_thread():    # signal.signal works there only
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def user_message(error):
    """The one-line message of a UserError, also when a DataLoader worker raised it: the loader re-raises it
    with the worker's traceback in front, and the original message is its last line."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


@dataclass
class Dist:
    """Where this process sits in the job: rank among world_size processes, and its device."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world_size > 1

    # Collectives the methods use; identities in a single process.

    def all_gather(self, tensor):
        """(N, ...) on every rank -> (world_size * N, ...), rank order; no gradient."""
        if not self.active:
            return tensor
        out = torch.empty((self.world_size * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype,
                          device=tensor.device)
        tdist.all_gather_into_tensor(out, tensor.contiguous())
        return out

    def all_reduce(self, tensor):
        """The element-wise sum of tensor over every rank, written into tensor on each and returned; no
        gradient. One process: tensor as it is."""
        if self.active:
            tdist.all_reduce(tensor)
        return tensor

    def all_gather_autograd(self, tensor):
        """all_gather whose gradient flows back to the rank that produced each slice."""
        return all_gather_autograd(tensor) if self.active else tensor

    def shuffle(self, x):
        """Spread the global batch randomly over the ranks: (N, ...) -> (this rank's N shuffled rows, undo).

        Rank 0's permutation is broadcast so every rank agrees. One process: (x, None), nothing moves.
        """
        if not self.active:
            return x, None
        everything = self.all_gather(x)
        perm = torch.randperm(everything.shape[0], device=x.device)
        tdist.broadcast(perm, 0)
        mine = perm.view(self.world_size, -1)[self.rank]
        return everything[mine], torch.argsort(perm)

    def unshuffle(self, y, undo):
        """Inverse of shuffle for outputs computed on the shuffled rows: this rank's original rows of y."""
        if undo is None:
            return y
        everything = self.all_gather(y)
        return everything[undo.view(self.world_size, -1)[self.rank]]


# ----------------------------------------------------------------------------------------------------------
# Distributed training: one process per device, gloo on CPU, NCCL on CUDA.

def launched_by_torchrun():
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def processes_on_this_machine():
    """How many of the job's training processes run on this machine: LOCAL_WORLD_SIZE (torchrun sets it, and
    so does spawn), else 1."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


DIST_TIMEOUT_S = 1800
SPAWN_GRACE_S = 5


def launch(worker, device_name, *args, timeout_s=DIST_TIMEOUT_S):
    """Run worker(dist, *args) in every process of the job and return rank 0's result.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) this process joins that group, which also covers
    multi-node jobs. Otherwise, with several CUDA GPUs visible and no --device cpu, it starts one process per
    GPU on this machine; else it runs in this process alone. timeout_s bounds every collective (--dist_timeout).
    """
    if launched_by_torchrun():
        return _run_rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                         device_name, timeout_s, worker, args)
    n_gpus = torch.cuda.device_count() if device_name in ("auto", "cuda") else 0
    if n_gpus > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        spawn(worker, n_gpus, device_name, *args, timeout_s=timeout_s)
        return None
    return worker(Dist(device=pick_device(device_name)), *args)


def spawn(worker, nprocs, device_name, *args, timeout_s=DIST_TIMEOUT_S):
    """Start nprocs local processes running worker; if one fails, the others are killed and this process exits
    with the status of the process that failed first (a user error's 2, a crash's 1).

    Ctrl-C reaches the workers directly (same process group), which save and stop; this process ignores it and
    forwards SIGTERM to them.
    """
    import torch.multiprocessing as mp
    # Shared with every rank: which one failed first (-1: none), for the others' messages and our exit status.
    first_failure = mp.get_context("spawn").Value("i", -1)
    context = mp.start_processes(_spawned_rank, args=(nprocs, device_name, timeout_s, first_failure, worker, args),
                                 nprocs=nprocs, join=False, start_method="spawn")

    def forward(signum, _frame):
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, forward)
    try:
        # After a failure the others get a few seconds to end on their own (a rank whose collective broke says
        # why, ranks that agreed on an error print it) before SIGTERM, then SIGKILL.
        while not context.join(grace_period=SPAWN_GRACE_S):
            pass
    except mp.ProcessExitedException as e:
        # The first process to exit is often a peer stopped by the failure, not the one at fault.
        culprit = first_failure.value
        codes = (context.processes[culprit].exitcode if culprit >= 0 else None, e.exit_code)
        sys.exit(next((code for code in codes if code and code > 0), 1))
    except mp.ProcessRaisedException:
        print("error: a training process failed (its traceback is above); the job was stopped",
              file=sys.stderr, flush=True)
        sys.exit(1)


def _spawned_rank(local_rank, nprocs, device_name, timeout_s, first_failure, worker, args):
    global _first_failure
    _first_failure = first_failure
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(nprocs))
    try:
        run_main(lambda: _run_rank(local_rank, nprocs, local_rank, device_name, timeout_s, worker, args))
    except Exception:
        # Print here: the launcher reports only the first process to exit, often a peer of the one at fault.
        import traceback
        print(f"process {local_rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise
    finally:
        # A multiprocessing child joins its own children as it exits, before any atexit handler could kill them
        # (reap_children_at_exit): DataLoader workers ignore SIGTERM, and the traceback of a loader error keeps
        # their iterator alive, so without this the rank would wait on them forever.
        kill_children()


def _run_rank(rank, world_size, local_rank, device_name, timeout_s, worker, args):
    dist = init_distributed(rank, world_size, local_rank, device_name, timeout_s)
    try:
        return worker(dist, *args)
    except Exception as e:
        # Noted before the process group goes: its end is what breaks the other ranks' collectives.
        note_failure(rank)
        culprit = failed_rank()
        if culprit not in (None, rank) and not isinstance(e, UserError):
            # Most likely a collective that failed because rank `culprit` is gone: its error is the one to read.
            print(f"rank {rank}: stopping because rank {culprit} failed (its error is above)", file=sys.stderr,
                  flush=True)
            raise SystemExit(1) from None
        raise
    finally:
        leave_process_group()


def leave_process_group():
    """Destroy this process's process group, if it has one, so that nothing of it outlives the interpreter.

    Collects cyclic garbage before and after: objects that only the cycle collector frees (a DDP model and
    its reducer, tensors that gloo's worker threads still hold) would otherwise keep the group alive into the
    interpreter's final collection, where a worker thread that drops a tensor cannot take the GIL and aborts
    the process ("terminate called without an active exception"; a core dump showed it, in about 1 of 60
    two-rank runs on a loaded host)."""
    if tdist.is_initialized():
        gc.collect()
        tdist.destroy_process_group()
        gc.collect()


def init_distributed(rank, world_size, local_rank, device_name="auto", timeout_s=DIST_TIMEOUT_S):
    """Join the process group (env:// rendezvous: MASTER_ADDR/MASTER_PORT) and pick this rank's device.
    timeout_s bounds each collective, and so any work one rank does while the others wait in one."""
    device = pick_device(device_name)
    if device.type == "cuda":
        # Clusters that bind one GPU per task (SLURM --gpus-per-task) show each process its own GPU only, as
        # device 0: the local rank numbers the node's processes, not the GPUs this one sees.
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world_size > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend, rank=rank, world_size=world_size,
                                 timeout=datetime.timedelta(seconds=timeout_s),
                                 device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world_size=world_size, device=device)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_gather_autograd(tensor):
    """Concatenate `tensor` from every rank along dim 0; gradients flow back to the rank that produced each
    slice (the backward pass is a sum reduce-scatter)."""
    from torch.distributed._functional_collectives import all_gather_single_autograd
    out = all_gather_single_autograd(tensor.contiguous(), 0, tdist.group.WORLD)
    return out.wait() if hasattr(out, "wait") else out


def all_reduce_sum(values, device):
    """Sum a list of numbers over all ranks (identity in a single process)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if tdist.is_initialized():
        tdist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module, src=0):
    """Copy rank src's buffers (BatchNorm running statistics) to every rank."""
    if tdist.is_initialized():
        for b in module.buffers():
            tdist.broadcast(b, src)


def any_rank(flags, dist):
    """For each boolean, whether it is true on any rank (one small all-reduce; local in a single process)."""
    if not dist.active:
        return [bool(f) for f in flags]
    t = torch.tensor([float(f) for f in flags], device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def broadcast_object(obj, dist, src=0):
    """Rank src's picklable `obj` on every rank (itself in a single process)."""
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src)
    return box[0]


def agree(error, dist):
    """Collective: every rank raises the first rank's error (one-line messages; None where a rank has none), so
    that a problem one rank found stops every rank with its message instead of leaving the others waiting."""
    for message in all_gather_objects(error) if dist.active else [error]:
        if message:
            raise UserError(message)


# ----------------------------------------------------------------------------------------------------------
# What ranks tell each other outside collectives: a collective waits --dist_timeout at most, and a rank that
# failed cannot take part in one.

_first_failure = None    # in a process utils.spawn started: the launcher's shared value (-1 or a rank)
_POLL_S = 0.25


def _job_store():
    """The process group's key-value store (the torchrun agent's, or rank 0's), or None outside a group."""
    return tdist.distributed_c10d._get_default_store() if tdist.is_initialized() else None


def _store_key(name):
    # Distinct per torchrun restart, in case a store outlives one.
    return f"amdim/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


def note_failure(rank):
    """Record that `rank` failed, unless another rank did first (that one ended the job)."""
    if _first_failure is not None:
        with _first_failure.get_lock():
            if _first_failure.value < 0:
                _first_failure.value = rank
        return
    try:
        store = _job_store()
        if store is not None and store.add(_store_key("failures"), 1) == 1:
            store.set(_store_key("first_failure"), str(rank))
    except Exception:  # noqa: BLE001 -- a store gone with its host: the note only improves messages
        pass


def failed_rank():
    """The rank that failed first in this job, or None (none did, or it cannot be known)."""
    if _first_failure is not None:
        value = _first_failure.value
        return value if value >= 0 else None
    try:
        store = _job_store()
        key = _store_key("first_failure")
        if store is not None and store.check([key]):
            return int(store.get(key))
    except Exception:  # noqa: BLE001 -- see note_failure
        pass
    return None


def wait_for_every_rank(dist, name, error=None):
    """A barrier without a timeout, for work nobody can bound (each node downloading a dataset): every rank posts
    its outcome (None, or a one-line error) under `name` in the job's store and polls until every rank has.
    Then each rank raises the first failing rank's error. A rank that dies instead is the launcher's to handle:
    it stops the others."""
    if not dist.active:
        if error:
            raise UserError(error)
        return
    store = _job_store()
    store.set(_store_key(f"{name}/{dist.rank}"), error or "")
    _count_and_wait(store, f"{name}/arrived", dist.world_size)
    messages = [store.get(_store_key(f"{name}/{rank}")).decode() for rank in range(dist.world_size)]
    # Rank 0 may host the store (utils.spawn): it stays until every rank has read, even when all stop here.
    _count_and_wait(store, f"{name}/read", dist.world_size if dist.is_main else 0)
    for rank, message in enumerate(messages):
        if message:
            raise UserError(f"rank {rank}: {message}")


def _count_and_wait(store, name, until):
    """Add one to the store's counter `name`, then poll until it reaches `until`."""
    count = store.add(_store_key(name), 1)
    while count < until:
        time.sleep(_POLL_S)
        count = store.add(_store_key(name), 0)


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks training to save and stop at the next update boundary;
    a second one aborts at once (the last checkpoint on disk stays valid: saves are atomic)."""

    def __init__(self):
        self.requested = False

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        culprit = failed_rank()
        if culprit is not None:
            # The launcher is stopping the job because a rank failed: a save needs every rank, and the last
            # checkpoint on disk stays valid.
            print(f"\n{signal.Signals(signum).name}: the job is ending because rank {culprit} failed (its error is "
                  f"above); the last checkpoint is kept", file=sys.stderr, flush=True)
            raise SystemExit(1)
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this update (again to abort)",
              file=sys.stderr, flush=True)


def ignore_stop_signals(_worker_id=None):
    """DataLoader worker_init_fn: leave Ctrl-C/SIGTERM to the training process, which stops cleanly.

    Ctrl-C and torchrun's SIGTERM reach the whole process group; a worker that died of them would fail the
    batch the training process still needs to finish its update. See reap_children_at_exit for the other side.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def reap_children_at_exit():
    """Kill this process's remaining DataLoader workers when it exits.

    They ignore SIGTERM, which multiprocessing's own exit handler uses, so an exit with a live iterator (an
    exception, a user error) would otherwise wait on them forever. atexit runs handlers last-in first-out, so
    this one runs before multiprocessing's. (A process multiprocessing started runs no atexit handlers: see
    _spawned_rank.)
    """
    import atexit
    atexit.register(kill_children)


def kill_children():
    """SIGKILL this process's remaining multiprocessing children (DataLoader workers) and reap them; only for a
    process that is ending."""
    import multiprocessing
    children = multiprocessing.active_children()
    if children and threading.current_thread() is threading.main_thread():
        # The DataLoader's SIGCHLD handler would report these deaths as a failure of the run.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join()


def all_gather_objects(obj):
    """Every rank's `obj` (picklable), as a list indexed by rank."""
    if not tdist.is_initialized():
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def pick_device(name="auto"):
    """torch.device for --device: auto = the first CUDA GPU when one is visible, else the CPU (with a warning when
    NVIDIA GPUs are there but this torch cannot use them)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu" and os.environ.get("LOCAL_RANK", "0") == "0" and nvidia_gpus_present():
            print(f"warning: {unusable_gpus()}: training on the CPU; update the NVIDIA driver or install a torch "
                  f"build for it, or pass --device cpu", file=sys.stderr, flush=True)
    if name == "cuda" and not torch.cuda.is_available():
        if nvidia_gpus_present():
            raise UserError(f"--device cuda was given but {unusable_gpus()}; update the NVIDIA driver or install "
                            f"a torch build for it, or use --device cpu")
        raise UserError("--device cuda was given but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def nvidia_gpus_present():
    """Whether this machine has NVIDIA GPUs, by the driver's device file or `nvidia-smi -L`, whatever torch
    thinks of them."""
    if os.path.exists("/dev/nvidia0"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def unusable_gpus():
    """Why torch sees no GPU on a machine that has some, as far as can be told."""
    if torch.version.cuda is None:
        return f"NVIDIA GPUs are present but torch {torch.__version__} is a CPU-only build"
    return (f"NVIDIA GPUs are present but torch {torch.__version__} cannot use them (most often a driver older "
            f"than its CUDA {torch.version.cuda} needs)")


def seed_everything(seed):
    """Seed python, numpy and torch (all devices) so a run's randomness follows from --seed."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def stream_seed(*keys):
    """A 64-bit seed that mixes non-negative integers (run seed, rank, update, ...) with splitmix64, so that
    nearby keys give unrelated random streams."""
    h = 0
    for key in keys:
        h = (h ^ int(key)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


_MASK64 = 2 ** 64 - 1


def reseed(seed, device=None):
    """Seed python, numpy, torch's CPU generator and (a CUDA `device`) that device's generator.

    Training re-seeds at every update and every image from stream_seed(...) keys, so its random stream depends
    only on where it is in training, never on where a run was stopped and resumed. (torch.manual_seed would
    also do this but costs ~0.3 ms a call, too slow per image.)"""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


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
        keys = sorted(set().union(*all_gather_objects(sorted(self.sums))))
        sums = all_reduce_sum([self.sums.get(k, 0.0) for k in keys] + [self.counts.get(k, 0) for k in keys],
                              dist.device)
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


@contextlib.contextmanager
def waiting_lock(folder, name, on_wait=None):
    """Hold an exclusive flock on <folder>/<name> (the folder and the file created if needed), waiting for it
    however long another process holds it (no timeout), after calling on_wait() once if it must. Yields True
    once held (also on a filesystem without locks, where it goes on unlocked), False where the lock file
    cannot be made (the folder is not writable). The kernel drops the flock of a holder that dies, so a killed
    process never blocks the next one."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield True
    finally:
        os.close(fd)


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
