"""What several test files share: the tiny command-line configurations, and run_ranks, the harness of the tests
that run a few real gloo processes on the CPU.

Test modules import it as `from helpers import ...` (pytest puts tests/ on sys.path, and processes that
mp.spawn starts inherit that path). A `python -c` child that imports a test module puts the repository and
tests/ on its path first: CHILD_PATH is that line."""
import os

import torch
import torch.multiprocessing as mp

import distributed

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CHILD_PATH = f"import sys; sys.path[:0] = [{ROOT!r}, {TESTS!r}]\n"

# ----------------------------------------------------------------------------------------------------------
# Tiny configurations, small enough for a CPU test.

TINY_ENCODER = ["--ndf", "8", "--n_rkhs", "32", "--n_depth", "1"]
AMDIM_ENCODER = ["--arch", "amdim", *TINY_ENCODER]
ON_CPU = ["--num_workers", "0", "--device", "cpu"]
# DIGITS (embedded, 1,500 training images: 15 updates an epoch) in this process, quiet.
DIGITS = ["--dataset", "DIGITS", "--batch_size", "100", *ON_CPU, "--log_every", "1000"]
BASE = [*DIGITS, "--view_grid", "0"]
# A tiny AMDIM run on DIGITS with a short warmup (test_train.py's and test_faults.py's runs).
DIGITS_TINY = [*DIGITS, *TINY_ENCODER, "--warmup_updates", "5"]
# Tiny configurations of each method (a new method adds its tiny flags here; test_methods.py checks that every
# registered method has one, test_resume.py kills and resumes each).
TINY_FLAGS = {
    "amdim": AMDIM_ENCODER + ["--warmup_updates", "5"],
    "moco": AMDIM_ENCODER + ["--method", "moco", "--moco-k", "300", "--moco-dim", "16", "--moco-contr-w", "1"],
    "cmc": AMDIM_ENCODER + ["--method", "cmc", "--nce_k", "64", "--feat_dim", "16"],
    # A queue of two batches from the first epoch (full from update 2, so used from update 3 on) and prototypes
    # frozen for 6 updates: the kill -9 resume test (test_resume.py) crosses both. The AMDIM encoder takes only
    # 32 px crops: the third crop differs by its area range.
    "swav": AMDIM_ENCODER + ["--method", "swav", "--nmb_crops", "2", "1", "--size_crops", "32", "32",
                             "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3", "--feat_dim", "16",
                             "--hidden_mlp", "32", "--nmb_prototypes", "20", "--queue_length", "200",
                             "--epoch_queue_starts", "0", "--freeze_prototypes_niters", "6"],
    # Two heads on the two assigned crops' memories; prototypes trained after 6 updates, so the kill -9 resume test
    # crosses the freeze, and warm-up over the first of the test's epochs.
    "deepclusterv2": AMDIM_ENCODER + ["--method", "deepclusterv2", "--nmb_crops", "2", "1", "--size_crops", "32",
                                      "32", "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3",
                                      "--feat_dim", "16", "--hidden_mlp", "32", "--nmb_prototypes", "20", "10",
                                      "--freeze_prototypes_niters", "6", "--warmup_epochs", "1", "--base_lr", "0.6"],
}


def small_digits(monkeypatch, n_train=300, n_test=100):
    """DIGITS cut to its first n_train training and n_test test images (in this process), for runs that need only
    a few updates; returns the cut arrays."""
    import datasets
    arrays = datasets.digits_arrays

    def small():
        (x_tr, y_tr), (x_te, y_te) = arrays()
        return (x_tr[:n_train], y_tr[:n_train]), (x_te[:n_test], y_te[:n_test])

    monkeypatch.setattr(datasets, "digits_arrays", small)
    return small()


# ----------------------------------------------------------------------------------------------------------
# A few gloo processes.


def run_ranks(fn, world, tmp_path, *args, timeout_s=60):
    """Run fn(dist, *args) in `world` new processes, the ranks 0 .. world - 1 of one gloo job on this host's CPU,
    and return what each returned, in rank order.

    Each process joins the job as train.py's ranks do, through distributed.init_distributed (rendezvous on a free local
    port; timeout_s bounds every collective), so fn gets the project's distributed.Dist; once fn has returned, the
    process leaves the job with distributed.leave_process_group (fn may leave earlier itself, to compute a one-process
    reference with distributed.Dist() in the same process). A rank that raises fails the call (mp.spawn's
    ProcessRaisedException, with its traceback).

    The results travel as torch.save files in tmp_path (rank<r>.result.pt), read back with weights_only=True:
    tensors, numbers, strings, None, and lists, tuples and dicts of them. mp.spawn pickles fn by its module and
    name: it must be a module-level function of a test module (or any module the processes can import)."""
    mp.spawn(_rank, args=(fn, world, distributed.free_port(), str(tmp_path), timeout_s, args), nprocs=world, join=True)
    return [torch.load(_result_path(tmp_path, rank), weights_only=True) for rank in range(world)]


def report_threads(dist, out_dir):
    """A rank's OMP_NUM_THREADS and torch's thread count, written to <out_dir>/rank<r>.json (test_multigpu.py's
    spawned ranks run it)."""
    import json
    with open(os.path.join(out_dir, f"rank{dist.rank}.json"), "w") as f:
        json.dump({"env": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()}, f)


def worker_that_fails(dist):
    """Rank 1 raises; rank 0 waits in a collective for it (until the group's timeout, unless the launcher ends the
    job first: test_distributed.py's dying-rank test)."""
    import torch.distributed as tdist
    if dist.rank == 1:
        raise RuntimeError("injected failure on rank 1")
    tdist.all_reduce(torch.ones(1))
    tdist.all_reduce(torch.ones(1))


def shared_job(tmp_path_factory, name, world, **parts):
    """One `world`-process gloo job for several tests (a module-scoped fixture's): each rank runs every part,
    fn(dist, result_dir), in turn (each seeds what it uses); returns [rank 0's, rank 1's, ...] {part: its result}."""
    result_dir = tmp_path_factory.mktemp(name)
    return run_ranks(_each_part, world, result_dir, str(result_dir), list(parts.items()), timeout_s=120)


def _each_part(dist, result_dir, parts):
    return {key: fn(dist, result_dir) for key, fn in parts}


def _result_path(result_dir, rank):
    return os.path.join(result_dir, f"rank{rank}.result.pt")


def _rank(rank, fn, world, port, result_dir, timeout_s, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = distributed.init_distributed(rank, world, rank, "cpu", timeout_s=timeout_s)
    result = fn(dist, *args)
    distributed.leave_process_group()
    torch.save(result, _result_path(result_dir, rank))


def update_now(run, batch, epoch=0):
    """train.update, its numbers read at once (train.Pending): (values, floats with the update's "lr"; None for an
    update skipped for a non-finite loss), and whether any rank asked to stop."""
    import train
    window = train.Pending()
    window.rows.append(train.update(run, batch, epoch))
    ((row, values, skipped),), stop = window.read(run.dist, run.stop.requested)
    return (None if skipped else dict(values, lr=row.lr)), stop


# ----------------------------------------------------------------------------------------------------------
# train.py and test.py in this process.


def load_test_py():
    """test.py as a module (its file name would import as the standard library's `test` package)."""
    import importlib.util
    import sys
    if "amdim_test_py" not in sys.modules:
        spec = importlib.util.spec_from_file_location("amdim_test_py", os.path.join(ROOT, "test.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["amdim_test_py"] = module
    return sys.modules["amdim_test_py"]


def run_entry_point(main, argv):
    """main(argv) run as its script's `__main__` runs it (utils.run_main: a UserError becomes one `error:` line on
    stderr and SystemExit(2)); returns the exit status (0 when main returned). The Ctrl-C and SIGTERM handlers,
    which run_main leaves ignoring Ctrl-C for the process's shutdown, are restored."""
    import signal
    import utils
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        utils.run_main(lambda: main(argv))
        return 0
    except SystemExit as e:
        return e.code
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def one_line_error(capsys, main, argv, *needles):
    """main(argv) in this process as its script runs it must exit with status 2 and write exactly one line to
    stderr, `error: ...` naming every needle, and no traceback; returns that line. (The same through a real
    process: test_faults.py's non-finite-loss and full-disk tests, test_cli.py's and test_train.py's CLI tests.)"""
    capsys.readouterr()
    status = run_entry_point(main, argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, (status, err[-3000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err[-3000:]
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def this_process_threads_env(**extra):
    """This process's environment, OMP_NUM_THREADS set to the threads torch computes on here (and `extra`): a
    train.py process started with it sums in the order a run in this process does, so the two can be compared bit
    for bit."""
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), **extra)
