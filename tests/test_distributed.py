"""Multi-process behaviour with real processes on the gloo backend (CPU): global-batch NCE, sharded testing,
failure of one rank, and a 2-process torchrun training run."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import costs
import distributed
import engine
import utils
from helpers import CHILD_PATH, DIGITS, ON_CPU, TINY_ENCODER, run_ranks, update_now

pytestmark = pytest.mark.slow       # every test here starts processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, R, WORLD = 6, 8, 2


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [[torch.randn(N, R, s, s, generator=g, dtype=torch.float64) for s in (1, 5, 7)] for _ in range(2)]
    locs = [torch.randint(0, 25, (N,), generator=g) for _ in range(2)]
    return views, locs


def _reference():
    """One process, whole batch: losses and feature gradients."""
    (f1, f2), (l1, l2) = _features()
    leaves = [t.clone().requires_grad_() for t in f1 + f2]
    out = costs.infomax_costs(leaves[:3], leaves[3:], 20.0, l1, l2)
    total = sum(out.values())
    grads = torch.autograd.grad(total, leaves)
    return {k: v.item() for k, v in out.items()}, grads


def _rank_costs(dist, result_dir):
    rank = dist.rank
    (f1, f2), (l1, l2) = _features()
    n = N // WORLD
    part = slice(rank * n, (rank + 1) * n)
    leaves = [t[part].clone().requires_grad_() for t in f1 + f2]
    out = costs.infomax_costs(leaves[:3], leaves[3:], 20.0, l1[part], l2[part],
                              gather=distributed.all_gather_autograd, pos_offset=rank * n)
    total = sum(out.values())
    grads = torch.autograd.grad(total, leaves)
    result = {"losses": {k: v.item() for k, v in out.items()}, "grads": grads}
    # The real training step (train.setup + train.update under DistributedDataParallel) on this rank's half.
    result["step"] = _training_step(dist, result_dir)
    distributed.leave_process_group()
    if rank == 0:          # the one-process reference on the whole batch, once this process left the group
        result["step_single"] = _training_step(distributed.Dist(), result_dir)
    return result


# The training step's batch: fixed views (no augmentation: --per_image_aug leaves the loader's views as they are),
# labels and 5x5 locations of the 5->5 cost, made here so that every process sees the same global batch.
STEP_BATCH = 8
SCALE = 10      # larger inputs, larger NCE scores


def _step_batch():
    g = torch.Generator().manual_seed(3)
    views = tuple(SCALE * torch.randn(STEP_BATCH, 3, 32, 32, generator=g) for _ in range(2))
    labels = torch.randint(0, 10, (STEP_BATCH,), generator=g)
    locations = [torch.randint(0, 25, (STEP_BATCH,), generator=g) for _ in range(2)]
    return views, labels, locations


def _training_step(dist, result_dir):
    """One train.update of a freshly set-up tiny AMDIM run on this process's share of the fixed batch.

    Returns the update's logged values (this process's loss terms) and the parameters' gradients after it (under
    DDP: the average over the processes)."""
    import train
    args = train.parse_args(["--dataset", "DIGITS", *TINY_ENCODER, "--batch_size", str(STEP_BATCH), *ON_CPU,
                             "--per_image_aug", "--output_dir", result_dir,
                             "--run_name", "ddp" if dist.active else "single"])
    utils.seed_everything(args.seed)          # the same initial weights in both set-ups (DDP copies rank 0's)
    run, _ = train.setup(dist, args)
    assert run.splits.batch_augment is None   # the loader's views reach the model unchanged
    # The encoder's always-on BatchNorm normalises by the statistics of each process's own images in train mode,
    # and the classifiers' dropout draws per process: in eval mode every sample's outputs depend on that sample
    # alone, as the equality below needs.
    run.model.eval()
    views, labels, locations = _step_batch()
    n = STEP_BATCH // dist.world_size
    part = slice(dist.rank * n, (dist.rank + 1) * n)
    # Each process draws its own samples' 5x5 locations (view 1's, then view 2's): here the fixed batch's share.
    draws = iter([loc[part] for loc in locations])
    original = costs.sample_locations
    costs.sample_locations = lambda count, *a, **kw: next(draws)
    try:
        batch = (tuple(v[part] for v in views), labels[part], torch.arange(STEP_BATCH)[part])
        values, stop = update_now(run, batch, epoch=0)
    finally:
        costs.sample_locations = original
    assert values is not None and not stop
    grads = {name: p.grad.detach().clone() for name, p in run.model.named_parameters() if p.grad is not None}
    return {"values": values, "grads": grads}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process gloo job that computes both the cost functions' and the training step's results, each
    rank's; each test reads its part."""
    result_dir = tmp_path_factory.mktemp("two_ranks")
    return run_ranks(_rank_costs, WORLD, result_dir, str(result_dir))


def test_two_ranks_reproduce_the_one_process_loss_and_gradients(two_ranks):
    ref_losses, ref_grads = _reference()
    results = two_ranks
    for k, v in ref_losses.items():
        mean = sum(res["losses"][k] for res in results) / WORLD
        assert mean == pytest.approx(v, rel=1e-10, abs=1e-12), k
    n = N // WORLD
    for r, res in enumerate(results):
        for g, g_ref in zip(res["grads"], ref_grads):
            # Each rank's gradient = world_size x its slice of the 1-process gradient; DDP's averaging of
            # parameter gradients then gives exactly the 1-process parameter gradients.
            assert torch.allclose(g, WORLD * g_ref[r * n:(r + 1) * n], rtol=1e-6, atol=1e-10)


def test_training_step_of_two_ranks_equals_one_process_on_the_whole_batch(two_ranks):
    """train.update under DDP, each rank on half the batch (BatchNorm and dropout in eval mode, so each sample's
    outputs depend on that sample alone): every loss term is a mean over the rank's own samples (NCE against the
    gathered global batch's targets, the rank's own samples the positives), so the ranks' mean equals the
    one-process term; each rank's loss gradient reaches every rank's features through the gather's backward, and
    DDP averages the parameter gradients, so both ranks hold the one-process gradient of the mean loss."""
    single = two_ranks[0]["step_single"]
    ranks = [res["step"] for res in two_ranks]
    for k in ("1t5", "1t7", "5t5", "lgt_reg", "class_mlp", "class_lin", "loss"):
        mean = sum(res["values"][k] for res in ranks) / WORLD
        assert mean == pytest.approx(single["values"][k], rel=2e-5), k
    # The scores spread widely (inputs scaled by SCALE), so taking another rank's samples as the positives changes
    # a rank's terms far beyond the tolerance; the two halves' terms differ as much.
    assert abs(ranks[0]["values"]["1t5"] - ranks[1]["values"]["1t5"]) > 0.01
    assert set(single["grads"]) == set(ranks[0]["grads"]) == set(ranks[1]["grads"])
    # Fixup initialisation zeroes each residual unit's last convolution, which leaves its first one without a
    # gradient at the start; every other tensor has one.
    nonzero = [name for name, g in single["grads"].items() if g.abs().max() > 0]
    assert len(nonzero) > 0.7 * len(single["grads"]) and "encoder.layer_list.0.conv.weight" in nonzero
    for name, g in single["grads"].items():
        for res in ranks:
            assert torch.allclose(res["grads"][name], g, rtol=1e-4, atol=1e-6 * g.abs().max()), name


def _rank_evaluate(dist):
    model, data = _eval_setup()
    return engine.evaluate(model, engine.shard(data, dist), dist, amp=False, batch_size=4, num_workers=0)


def _eval_setup():
    import checkpoint
    torch.manual_seed(0)
    model = checkpoint.build_model(dict(ndf=8, n_classes=3, n_rkhs=32, tclip=20.0, n_depth=1, encoder_size=32,
                                        use_bn=False))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(11, 3, 32, 32, generator=g), torch.randint(0, 3, (11,), generator=g)
    return model, torch.utils.data.TensorDataset(x, y)


def _rank_knn(dist):
    model, data = _eval_setup()
    return engine.knn_accuracy(model.eval(), data, data, dist, amp=False, batch_size=4, num_workers=0, k=3)


def _rank_evaluate_and_knn(dist):
    return {"evaluate": _rank_evaluate(dist), "knn": _rank_knn(dist)}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """One 2-process job for the two tests below: [rank 0's, rank 1's] {"evaluate": ..., "knn": ...}."""
    return run_ranks(_rank_evaluate_and_knn, WORLD, tmp_path_factory.mktemp("sharded"))


def test_sharded_knn_equals_one_process(sharded):
    """Each rank extracts its shard of memory and queries; the memory is gathered (shards of 6 and 5 items)."""
    top1 = [r["knn"] for r in sharded]
    model, data = _eval_setup()
    single = engine.knn_accuracy(model.eval(), data, data, distributed.Dist(), amp=False, batch_size=4, num_workers=0,
                                 k=3)
    for r in range(WORLD):
        assert top1[r] == pytest.approx(single)


def test_sharded_test_accuracy_equals_one_process(sharded):
    acc = [r["evaluate"] for r in sharded]
    model, data = _eval_setup()
    single = engine.evaluate(model, data, distributed.Dist(), amp=False, batch_size=4, num_workers=0)
    for r in range(WORLD):
        assert acc[r] == single
    assert single["n_images"] == 11          # 11 images over 2 ranks: no padded duplicates


def test_a_dying_rank_ends_the_job_quickly_with_nonzero_exit():
    """distributed.spawn, the launcher train.py uses for several GPUs, here with 2 gloo processes running
    helpers.worker_that_fails (they import helpers alone, not this module's heavier imports)."""
    code = (CHILD_PATH + "import os, distributed, helpers\n"
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(distributed.free_port()))\n"
            "distributed.spawn(helpers.worker_that_fails, 2, 'cpu')\n")
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "injected failure on rank 1" in r.stderr
    assert time.monotonic() - start < 60


def test_torchrun_two_process_training_run(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           *DIGITS, *TINY_ENCODER, "--epochs", "1", "--output_dir", str(tmp_path), "--run_name", "ddp",
           "--checkpoint_every", "7"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stdout
    ckpt = torch.load(tmp_path / "ddp" / "amdim_cpt.pth", weights_only=True)
    assert ckpt["cursor"]["info_epoch"] == 1 and ckpt["cursor"]["info_step"] == 15
    assert ckpt["world_size"] == 2 and "rng" not in ckpt           # random streams re-seed from the position
    midway = torch.load(tmp_path / "ddp" / "amdim_cpt.pth.prev", weights_only=True)    # saved after update 14
    assert midway["samples_done"] == 1400 and len(midway["epoch_meters"]) == 2    # both ranks' running sums
    assert all(m["counts"]["loss"] == 14 for m in midway["epoch_meters"])
    record = [json.loads(l) for l in open(tmp_path / "ddp" / "metrics.jsonl")][-1]      # after the start record
    assert record["n_images"] == 297
