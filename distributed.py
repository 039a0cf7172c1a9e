"""Launching and distribution: one process per device (spawn, torchrun), the process group and its collectives,
what ranks tell each other outside collectives (who failed, barriers without a timeout), the device to run on."""
import datetime
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

import utils
from utils import UserError


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

    def all_reduce_max(self, tensor):
        """The element-wise maximum of tensor over every rank, written into tensor on each and returned; no
        gradient. One process: tensor as it is."""
        if self.active:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
        return tensor

    def any(self, flag):
        """flag: a bool tensor on the device -> whether it is true on any rank (a bool tensor, the same on every
        rank), without the host reading it. One process: flag as it is."""
        if not self.active:
            return flag
        return self.all_reduce_max(flag.float()) > 0

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
    threads = None
    if "OMP_NUM_THREADS" not in os.environ:
        threads = threads_per_rank(nprocs, device_name)
        print(f"note: OMP_NUM_THREADS={threads} for each of the {nprocs} processes (unset; as torchrun does for "
              f"GPU processes, the cores shared out for CPU ones): set it to tune", file=sys.stderr, flush=True)
    # Shared with every rank: which one failed first (-1: none), for the others' messages and our exit status.
    first_failure = mp.get_context("spawn").Value("i", -1)
    context = mp.start_processes(_spawned_rank, args=(nprocs, device_name, timeout_s, first_failure, threads, worker,
                                                      args),
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


def _spawned_rank(local_rank, nprocs, device_name, timeout_s, first_failure, threads, worker, args):
    global _first_failure
    _first_failure = first_failure
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(nprocs))
    if threads is not None:
        # torch read the environment when this process imported it: set its pool too; the variable is for the
        # processes this one starts (loader workers, compiler threads).
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    try:
        utils.run_main(lambda: _run_rank(local_rank, nprocs, local_rank, device_name, timeout_s, worker, args))
    except Exception:
        # Print here: the launcher reports only the first process to exit, often a peer of the one at fault.
        import traceback
        print(f"process {local_rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise
    finally:
        # A multiprocessing child joins its own children as it exits, before any atexit handler could kill them
        # (utils.reap_children_at_exit): DataLoader workers ignore SIGTERM, and the traceback of a loader error
        # keeps their iterator alive, so without this the rank would wait on them forever.
        utils.kill_children()


def threads_per_rank(nprocs, device_name):
    """OMP_NUM_THREADS for each of nprocs processes on this machine when it is unset: 1 for GPU processes
    (torchrun's choice: the GPU computes, and nprocs thread pools each the size of the machine would fight over
    its cores), this process's cores shared out evenly for CPU processes (gloo), which compute on them."""
    if device_name != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // nprocs)


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


def broadcast_bn_statistics(module, dist, src=0):
    """Copy rank src's BatchNorm running statistics (every BatchNorm and SyncBatchNorm layer's buffers) to every
    rank: one broadcast per dtype of the buffers flattened together. Other buffers (queues, memory banks) are
    kept identical on every rank by the methods themselves and stay as they are."""
    if not dist.active:
        return
    buffers = [b for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for b in m.buffers()]
    for dtype in sorted({b.dtype for b in buffers}, key=str):
        same = [b for b in buffers if b.dtype == dtype]
        flat = torch._utils._flatten_dense_tensors(same)
        tdist.broadcast(flat, src)
        for b, value in zip(same, torch._utils._unflatten_dense_tensors(flat, same)):
            b.copy_(value)


def fewest(n, dist):
    """The smallest of every rank's n (one all-reduce; n itself in a single process)."""
    if not dist.active:
        return n
    t = torch.tensor([n], dtype=torch.int64, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return int(t.item())


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

_first_failure = None    # in a process spawn started: the launcher's shared value (-1 or a rank)
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
    # Rank 0 may host the store (spawn): it stays until every rank has read, even when all stop here.
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
