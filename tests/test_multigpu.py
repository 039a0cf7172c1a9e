"""Multi-GPU behaviour shown with gloo ranks on the CPU: every rank issues the same collectives in the BatchNorm
refresh, the evaluation and kNN when the test shards are uneven; SyncBatchNorm (--sync_bn) as far as the CPU
allows, through a CPU stand-in for its train-mode forward."""
import contextlib
import os

import pytest
import torch
import torch.distributed as tdist
import torch.nn.functional as F

import checkpoint
import distributed
import engine
import utils
from helpers import BASE, TINY_ENCODER, TINY_FLAGS, run_ranks, update_now

# Every collective of torch.distributed that the code could call: the tests record the top-level calls.
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "barrier", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather",
               "gather_object", "scatter", "scatter_object_list", "all_to_all", "all_to_all_single")


@contextlib.contextmanager
def recorded_collectives():
    """Within the block, every call of a torch.distributed collective is appended to the yielded list as
    (name, shape, dtype) of its first tensor argument ((name, None, None) for object collectives). Calls that
    one collective makes internally (all_gather_object's all_gather) are not recorded: torch.distributed's own
    module calls them by its own names."""
    calls, originals = [], {name: getattr(tdist, name) for name in COLLECTIVES}

    def recording(name, original):
        def call(*args, **kwargs):
            tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
            calls.append((name, None if tensor is None else tuple(tensor.shape),
                          None if tensor is None else str(tensor.dtype)))
            return original(*args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(tdist, name, recording(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(tdist, name, original)


def cpu_sync_batchnorm_forward(self, x):
    """A CPU stand-in for SyncBatchNorm.forward (torch's refuses CPU tensors in train mode): in train mode, one
    all-reduce of every rank's per-channel sums, sums of squares and row count (a rank without rows takes part
    with zeros, as torch's skips empty inputs), then normalisation by, and running statistics from, the global
    batch; in eval mode, BatchNorm with the running statistics. Counts its train-mode forwards in
    self.forwards."""
    if not self.training:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
    self.forwards = getattr(self, "forwards", 0) + 1
    dims = [0, *range(2, x.dim())]
    channels = x.shape[1]
    stats = torch.cat([x.sum(dims), (x * x).sum(dims), torch.tensor([x.numel() / channels], dtype=x.dtype)])
    tdist.all_reduce(stats)
    n = stats[-1]
    mean = stats[:channels] / n
    var = stats[channels:2 * channels] / n - mean * mean
    with torch.no_grad():
        self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
        self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        self.num_batches_tracked += 1
    shape = (1, channels) + (1,) * (x.dim() - 2)
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
    return y * self.weight.view(shape) + self.bias.view(shape)


class Images(torch.utils.data.Dataset):
    """n seeded test items (x (3, 32, 32), y in 0..2); the items in `missing` are None, as unreadable images
    under --skip_bad_images."""

    def __init__(self, n, missing=()):
        g = torch.Generator().manual_seed(7)
        self.x = 2 * torch.randn(n, 3, 32, 32, generator=g) + 1
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.missing = set(missing)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return None if i in self.missing else (self.x[i], self.y[i])


class ImageBN(torch.nn.Module):
    """A stand-in method for the refresh: BatchNorm straight on the images, so that its running statistics are the
    images' own (an independent computation can follow them) and an evaluator that does nothing."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        self.evaluator = torch.nn.Identity()
        self.hyperparams = {"encoder_size": 32}

    def classify(self, x):
        return self.bn(x)


# Per world size: test images and unreadable ones, chosen so that with BATCH images a batch the ranks' shards
# make different numbers of batches, some rank's batch within the agreed count is None and another's 1 image.
BATCH = 3
SPLITS = {2: (9, {1, 3, 5}),     # rank 0: [0 2 4] [6 8]; rank 1: None, [7]
          3: (13, {1, 4, 7})}    # rank 0: [0 3 6] [9 12] (no third); rank 1: None, [10]; rank 2: [2 5 8], [11]


def _tiny_amdim(synced):
    torch.manual_seed(0)
    model = checkpoint.build_model(dict(ndf=8, n_classes=3, n_rkhs=32, tclip=20.0, n_depth=1, encoder_size=32,
                                        use_bn=True))
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if synced else model


def _test_of_one_epoch(model, data, dist):
    """What train.test_accuracy runs after each epoch (with --bn_warmup test and --knn_every), on `data`."""
    loader = engine.make_loader(engine.shard(data, dist), BATCH, 0, dist.device)
    engine.refresh_bn(model, loader, dist, amp=False)
    distributed.broadcast_bn_statistics(model, dist)
    acc = engine.evaluate(model, engine.shard(data, dist), dist, False, BATCH, 0)
    acc["top1_knn"] = engine.knn_accuracy(model, data, data, dist, False, BATCH, 0, k=3)
    return acc


def _rank_collectives(dist):
    torch.nn.SyncBatchNorm.forward = cpu_sync_batchnorm_forward       # this process only
    n, missing = SPLITS[dist.world_size]
    data = Images(n, missing)
    result = {}
    for synced in (False, True):
        model = _tiny_amdim(synced)
        with recorded_collectives() as calls:
            acc = _test_of_one_epoch(model, data, dist)
        result[synced] = {"calls": calls, "acc": acc, "forwards": [getattr(m, "forwards", 0) for m in
                                                                   model.modules()
                                                                   if isinstance(m, torch.nn.SyncBatchNorm)],
                          "bn": {k: v for k, v in model.state_dict().items() if "running" in k}}
    return result


def _rank_of_three(dist):
    """Everything the 3-rank tests below look at, from one job (its start-up is most of their cost)."""
    return {"collectives": _rank_collectives(dist),
            "refresh": {synced: _rank_refresh(dist, synced) for synced in (False, True)}}


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory):
    return run_ranks(_rank_of_three, 3, tmp_path_factory.mktemp("three_ranks"))


@pytest.mark.slow
def test_every_rank_issues_the_same_collectives_in_the_refresh_evaluation_and_knn(three_ranks):
    """Uneven shards, a None batch on one rank and a 1-image batch on another, with per-process BatchNorm and
    with SyncBatchNorm (its CPU stand-in): the ranks' sequences of collectives are identical, every
    SyncBatchNorm layer ran forward as often on every rank, and every rank ends with the same statistics and
    scores, equal to one process's on the whole set for what does not depend on the shards."""
    ranks = [r["collectives"] for r in three_ranks]
    n, missing = SPLITS[3]
    for synced in (False, True):
        calls = [r[synced]["calls"] for r in ranks]
        assert all(c == calls[0] for c in calls), synced
        # The refresh's agreement, the statistics' broadcast, the evaluation's sum, kNN's gathers and sum.
        names = [name for name, _, _ in calls[0]]
        assert names[0] == "all_reduce" and names.count("broadcast") == 2 and "all_gather_into_tensor" in names
        forwards = [r[synced]["forwards"] for r in ranks]
        assert all(f == forwards[0] for f in forwards)
        for r in ranks[1:]:
            assert r[synced]["acc"] == ranks[0][synced]["acc"]
            for key, value in r[synced]["bn"].items():
                assert torch.equal(value, ranks[0][synced]["bn"][key]), key
        assert ranks[0][synced]["acc"]["n_images"] == n - len(missing)
    # SyncBatchNorm: the 2 refresh batches every rank has, through each layer of the evaluation path; one
    # all-reduce per train-mode forward besides the agreement, the evaluation's sum and kNN's.
    forwards = ranks[0][True]["forwards"]
    assert set(forwards) == {0, 2} or set(forwards) == {2}
    assert [name for name, _, _ in ranks[0][True]["calls"]].count("all_reduce") == 3 + sum(forwards)
    # Scores of one process on the whole set, with rank 0's refreshed statistics (plain BatchNorm).
    model = _tiny_amdim(False)
    model.load_state_dict(dict(model.state_dict(), **ranks[0][False]["bn"]))
    data = Images(n, missing)
    single = engine.evaluate(model, data, distributed.Dist(), False, BATCH, 0)
    assert single == {k: v for k, v in ranks[0][False]["acc"].items() if k != "top1_knn"}
    assert engine.knn_accuracy(model, data, data, distributed.Dist(), False, BATCH, 0, k=3) == \
        pytest.approx(ranks[0][False]["acc"]["top1_knn"])


def test_one_process_loops_issue_no_collective():
    """test.py's path: Dist() in a single process, no process group; nothing is called."""
    model, data = _tiny_amdim(False), Images(*SPLITS[3])
    with recorded_collectives() as calls:
        _test_of_one_epoch(model, data, distributed.Dist())
    assert calls == []


# ----------------------------------------------------------------------------------------------------------
# The refresh's statistics against a direct computation.

def _expected_running(batches, momentum=0.1):
    """BatchNorm's running mean and variance (unbiased) after train-mode forwards of `batches`, each (N, 3, H, W),
    from its initial 0 and 1: the per-channel statistics of each batch, averaged in with `momentum`."""
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for b in batches:
        rows = b.double().transpose(0, 1).reshape(3, -1)
        mean = (1 - momentum) * mean + momentum * rows.mean(1)
        var = (1 - momentum) * var + momentum * rows.var(1, unbiased=True)
    return mean, var


def _steps(data, rank, world):
    """Rank's refresh batches, in order: the present images of each batch of its shard (None: none present)."""
    shard = list(range(rank, len(data), world))
    out = []
    for start in range(0, len(shard), BATCH):
        present = [data.x[i] for i in shard[start:start + BATCH] if i not in data.missing]
        out.append(torch.stack(present) if present else None)
    return out


def _rank_refresh(dist, synced):
    torch.nn.SyncBatchNorm.forward = cpu_sync_batchnorm_forward
    n, missing = SPLITS[dist.world_size]
    model = ImageBN()
    if synced:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loader = engine.make_loader(engine.shard(Images(n, missing), dist), BATCH, 0, dist.device)
    engine.refresh_bn(model, loader, dist, amp=False)
    before = {k: v.clone() for k, v in model.bn.state_dict().items()}
    distributed.broadcast_bn_statistics(model, dist)
    return {"own": before, "shared": dict(model.bn.state_dict())}


@pytest.mark.slow
@pytest.mark.parametrize("synced", [False, True], ids=["per_process_bn", "sync_bn"])
def test_refresh_statistics_follow_the_agreed_batches(three_ranks, synced):
    """3 ranks, shards of 5, 4 and 4 images in batches of 3, with a None batch and 1-image batches: both loops
    run the 2 batches every rank has. Per-process BatchNorm: each rank's statistics are those of its own batches
    of 2 images or more, and after the broadcast every rank holds rank 0's. SyncBatchNorm: every rank's are
    those of each step's images of all ranks together (1-image batches included, None adding nothing)."""
    world = 3
    ranks = [r["refresh"][synced] for r in three_ranks]
    data = Images(*SPLITS[world])
    steps = [_steps(data, r, world) for r in range(world)]
    agreed = min(len(s) for s in steps)
    assert agreed == 2 and len(steps[0]) == 2 and any(b is None for s in steps for b in s[:agreed])
    assert any(b is not None and b.shape[0] == 1 for s in steps for b in s[:agreed])
    if synced:
        together = [torch.cat([s[i] for s in steps if s[i] is not None]) for i in range(agreed)]
        own = [_expected_running(together)] * world
    else:
        own = [_expected_running([b for b in s[:agreed] if b is not None and b.shape[0] > 1]) for s in steps]
    for r, result in enumerate(ranks):
        mean, var = own[r]
        assert torch.allclose(result["own"]["running_mean"].double(), mean, atol=1e-5), r
        assert torch.allclose(result["own"]["running_var"].double(), var, rtol=1e-4), r
        for key, value in ranks[0]["own"].items():
            assert torch.equal(result["shared"][key], value), (r, key)
    if not synced:      # the ranks' own statistics differed before rank 0's were shared
        assert not torch.allclose(ranks[0]["own"]["running_mean"], ranks[1]["own"]["running_mean"])


def test_one_process_refresh_skips_only_batches_too_small_for_batchnorm():
    data = Images(*SPLITS[2])                       # one process: batches of 2, 1 and 3 images
    model = ImageBN()
    engine.refresh_bn(model, engine.make_loader(data, BATCH, 0, torch.device("cpu")), distributed.Dist(),
                      amp=False)
    mean, var = _expected_running([b for b in _steps(data, 0, 1) if b is not None and b.shape[0] > 1])
    assert torch.allclose(model.bn.running_mean.double(), mean, atol=1e-5)
    assert torch.allclose(model.bn.running_var.double(), var, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# DistributedDataParallel's settings, every method and the classifiers phase: two updates of 2 gloo ranks equal
# one process's on the whole batch.

DDP_WORLD, DDP_BATCH, DDP_UPDATES = 2, 8, 2
RESNET = ["--arch", "resnet18"]
# Each run's flags, and whether DDP must look for unused parameters (the AMDIM encoder as a plain backbone).
# AMDIM itself and CMC are held to one process by test_distributed.py and test_cmc.py, SwAV's queues and prototypes
# over two processes by test_swav.py; here the DDP settings that differ: unused parameters (the AMDIM encoder as a
# backbone), a BatchNorm backbone whose prototypes get no gradient at first, the classifiers phase.
DDP_RUNS = {
    # Uniformity is a log of a mean over each process's rows (as in the seed), so it is left out here.
    "moco_on_amdim": (TINY_FLAGS["moco"] + ["--moco-unif-w", "0"], True),
    # Prototypes frozen for the first update: their gradient is dropped after the backward pass.
    "swav": (RESNET + ["--method", "swav", "--nmb_crops", "2", "1", "--size_crops", "32", "16", "--feat_dim", "8",
                       "--hidden_mlp", "16", "--nmb_prototypes", "10", "--queue_length", "0",
                       "--freeze_prototypes_niters", "1"], False),
    "classifiers": (["--classifiers", *TINY_ENCODER], False),
}


def _global_batches(run):
    """The first DDP_UPDATES global batches of one process's loader: per-image seeded views (--per_image_aug),
    so each image's views do not depend on the rank that loads it."""
    sampler = engine.ResumableSampler(run.splits.train, distributed.Dist(), run.data_seed, DDP_BATCH,
                                      seed_items=True)
    loader = engine.make_loader(engine.SeededItems(run.splits.train), DDP_BATCH, 0, torch.device("cpu"),
                                sampler=sampler, drop_last=True)
    return [batch for _, batch in zip(range(DDP_UPDATES), loader)]


def _ddp_updates(dist, name, result_dir):
    """DDP_UPDATES train.update calls of a freshly set-up tiny run, each process on its share of the global batch
    (rows rank, rank + world, ...), in eval mode (BatchNorm by running statistics, no dropout: each sample's
    outputs depend on it alone). AMDIM's 5x5 locations are drawn for the global batch and sliced likewise.
    Returns the logged values, each update's gradients and the final weights."""
    import costs
    import train
    flags, _ = DDP_RUNS[name]
    args = train.parse_args([*BASE, *flags, "--per_image_aug", "--compile", "off", "--batch_size", str(DDP_BATCH),
                             "--output_dir",
                             result_dir, "--run_name", f"{name}_{dist.world_size}_{dist.rank}"])
    utils.seed_everything(args.seed)          # the same initial weights everywhere (DDP copies rank 0's anyway)
    run, _ = train.setup(dist, args)
    run.model.eval()
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    part = slice(dist.rank, None, dist.world_size)          # the sampler deals the global batch round-robin
    g = torch.Generator().manual_seed(5)
    draws = iter([torch.randint(0, 25, (DDP_BATCH,), generator=g)[part] for _ in range(2 * DDP_UPDATES)])
    original, costs.sample_locations = costs.sample_locations, lambda count, *a, **kw: next(draws)
    values, grads = [], []
    try:
        for views, y, index in _global_batches(run):
            values_u, stop = update_now(run, (tuple(v[part] for v in views), y[part], index[part]), epoch=0)
            assert values_u is not None and not stop
            values.append(values_u)
            grads.append({k: None if p.grad is None else p.grad.clone() for k, p in run.model.named_parameters()
                          if p.requires_grad})
    finally:
        costs.sample_locations = original
    run.log.close()
    ddp = run.step_model if dist.active else None
    settings = None if ddp is None else {"find_unused": ddp.find_unused_parameters,
                                         "bucket_view": ddp.gradient_as_bucket_view, "static": ddp.static_graph}
    return {"values": values, "grads": grads, "state": {k: v.clone() for k, v in run.model.state_dict().items()},
            "start": start, "settings": settings}


def _rank_every_method(dist, result_dir):
    result = {name: _ddp_updates(dist, name, result_dir) for name in DDP_RUNS}
    distributed.leave_process_group()
    if dist.rank == 0:
        result["single"] = {name: _ddp_updates(distributed.Dist(), name, result_dir) for name in DDP_RUNS}
    return result


@pytest.fixture(scope="module")
def every_method(tmp_path_factory):
    result_dir = tmp_path_factory.mktemp("every_method")
    return run_ranks(_rank_every_method, DDP_WORLD, result_dir, str(result_dir), timeout_s=300)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DDP_RUNS))
def test_two_ranks_train_like_one_process_with_the_ddp_settings(every_method, name):
    """Gradient buckets as the gradients' storage, unused parameters looked for only where a phase has some (a
    second update would fail where one was missed), no static graph: the loss terms' means over the ranks, each
    update's gradients on every rank and the weights after the updates equal one process's on the whole batch.
    SwAV's prototypes get no gradient in their frozen first update on any rank. The first update's gradients
    agree to 1e-4 relative and 1e-5 of each tensor's largest entry; the second's to 1% of the largest
    (measured: up to 0.5% for SwAV): the first step's rounding differences grow through these tiny
    untrained models' steep second step, while the losses still agree to 1e-6."""
    ranks = [r[name] for r in every_method]
    single = every_method[0]["single"][name]
    _, unused = DDP_RUNS[name]
    for r in ranks:
        assert r["settings"] == {"find_unused": unused, "bucket_view": True, "static": False}
    for u in range(DDP_UPDATES):
        for key, want in single["values"][u].items():
            if key in ("n_labelled", "correct_mlp", "correct_lin", "lr"):
                continue
            mean = sum(r["values"][u][key] for r in ranks) / DDP_WORLD
            assert mean == pytest.approx(want, rel=1e-4, abs=1e-6), (u, key)
        for key, want in single["grads"][u].items():
            for r in ranks:
                got = r["grads"][u][key]
                if want is None:
                    assert got is None, (u, key)
                else:
                    bound = 1e-4 * want.abs() + (1e-5 if u == 0 else 1e-2) * want.abs().max() + 1e-9
                    assert ((got - want).abs() <= bound).all(), (u, key)
    if name == "swav":
        assert single["grads"][0]["prototypes.weight"] is None and single["grads"][1]["prototypes.weight"] is not None
    for key, want in single["state"].items():
        for r in ranks:
            got = r["state"][key]
            if key == "queue" and name.startswith("moco"):       # the ranks' keys go in in rank order
                got, want = _rows_sorted(got), _rows_sorted(want)
            assert torch.allclose(got.double(), want.double(), rtol=1e-4, atol=1e-5), key
    moved = [k for k, v in single["state"].items() if v.is_floating_point() and not torch.equal(v, single["start"][k])]
    assert moved, "the updates changed nothing"


def _rows_sorted(t):
    return t[t.sum(1).argsort()]


# ----------------------------------------------------------------------------------------------------------
# Threads of the processes distributed.spawn starts.

def _spawn_two_cpu_ranks(out_dir, omp_num_threads):
    """distributed.spawn of 2 CPU (gloo) ranks in a fresh interpreter, with OMP_NUM_THREADS as given (None:
    unset); returns (each rank's report, the launcher's stderr)."""
    import json
    import os
    import subprocess
    import sys
    from helpers import CHILD_PATH, ROOT
    # The ranks run helpers.report_threads: they import helpers alone, not this module's heavier imports.
    code = (CHILD_PATH + "import os, distributed, helpers\n"
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(distributed.free_port()))\n"
            f"distributed.spawn(helpers.report_threads, 2, 'cpu', {str(out_dir)!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.load(open(os.path.join(out_dir, f"rank{rank}.json"))) for rank in range(2)], r.stderr


@pytest.mark.slow
def test_spawned_ranks_share_the_cores_when_omp_num_threads_is_unset(tmp_path):
    reports, stderr = _spawn_two_cpu_ranks(tmp_path, None)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert reports == [{"env": str(share), "torch": share}] * 2
    assert f"OMP_NUM_THREADS={share} for each of the 2 processes" in stderr


def test_gpu_ranks_get_one_thread_and_cpu_ranks_the_cores_shared_out(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [distributed.threads_per_rank(n, "cuda") for n in (2, 8)] == [1, 1]
    assert distributed.threads_per_rank(8, "auto") == 1
    assert [distributed.threads_per_rank(n, "cpu") for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


# ----------------------------------------------------------------------------------------------------------
# --sync_bn as far as the CPU goes: the conversion, checkpoints, eval-mode forwards. (Train-mode forwards are
# CUDA-only in torch; the refresh and evaluation tests above run them through cpu_sync_batchnorm_forward.)

def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_sync_bn_converts_only_a_cuda_job_of_several_processes():
    import train
    from utils import UserError
    cuda_job = distributed.Dist(rank=0, world_size=2, device=torch.device("cuda", 0))     # only inspected
    for sync_bn, dist in ((False, cuda_job), (True, distributed.Dist()),
                          (True, distributed.Dist(device=torch.device("cuda", 0)))):
        converted = train.with_sync_bn(_tiny_amdim(False), sync_bn, dist)
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    with pytest.raises(UserError, match="--sync_bn needs CUDA devices"):
        train.with_sync_bn(_tiny_amdim(False), True, distributed.Dist(rank=0, world_size=2))
    plain = _batchnorms(_tiny_amdim(False))
    synced = _batchnorms(train.with_sync_bn(_tiny_amdim(False), True, cuda_job))
    assert len(synced) == len(plain) >= 3 and all(type(m) is torch.nn.SyncBatchNorm for m in synced)


def test_checkpoints_of_sync_bn_models_load_without_it_and_back(tmp_path):
    """A --sync_bn run's checkpoint (real file) loads into a plain model and a plain one into a converted model,
    with the same state and the same eval-mode outputs."""
    import train
    cuda_job = distributed.Dist(rank=0, world_size=2, device=torch.device("cuda", 0))
    synced = train.with_sync_bn(_tiny_amdim(False), True, cuda_job)
    with torch.no_grad():           # statistics a refresh would leave, so that eval mode uses them
        for i, bn in enumerate(_batchnorms(synced)):
            bn.running_mean.normal_(generator=torch.Generator().manual_seed(i))
            bn.running_var.uniform_(0.5, 2.0)
    path = str(tmp_path / "synced.pth")
    checkpoint.save({"model": synced.state_dict(), "hyperparams": synced.hyperparams}, path)
    plain = checkpoint.load_model(path)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    x = Images(4).x
    synced.eval()
    plain.eval()
    with torch.no_grad():
        for a, b in zip(synced.classify(x), plain.classify(x)):
            assert torch.equal(a, b)
    path_plain = str(tmp_path / "plain.pth")
    checkpoint.save({"model": plain.state_dict(), "hyperparams": plain.hyperparams}, path_plain)
    back = train.with_sync_bn(checkpoint.load_model(path_plain), True, cuda_job).eval()
    state = back.state_dict()
    assert set(state) == set(synced.state_dict())
    assert all(torch.equal(state[k], v) for k, v in synced.state_dict().items())
    with torch.no_grad():
        assert torch.equal(back.features(x), plain.features(x))
