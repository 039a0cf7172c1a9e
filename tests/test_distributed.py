"""Multi-process behaviour with real processes on the gloo backend (CPU): global-batch NCE, sharded testing,
failure of one rank, and a 2-process torchrun training run."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import costs
import engine
import utils

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


def _rank_costs(rank, port, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = utils.init_distributed(rank, WORLD, rank, "cpu", timeout_s=60)
    (f1, f2), (l1, l2) = _features()
    n = N // WORLD
    part = slice(rank * n, (rank + 1) * n)
    leaves = [t[part].clone().requires_grad_() for t in f1 + f2]
    out = costs.infomax_costs(leaves[:3], leaves[3:], 20.0, l1[part], l2[part],
                              gather=utils.all_gather_autograd, pos_offset=rank * n)
    total = sum(out.values())
    grads = torch.autograd.grad(total, leaves)
    torch.save({"losses": {k: v.item() for k, v in out.items()}, "grads": grads},
               os.path.join(result_dir, f"rank{rank}.pt"))
    tdist.destroy_process_group()
    del dist


def test_two_ranks_reproduce_the_one_process_loss_and_gradients(tmp_path):
    mp.spawn(_rank_costs, args=(utils.free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ref_losses, ref_grads = _reference()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for k, v in ref_losses.items():
        mean = sum(res["losses"][k] for res in results) / WORLD
        assert mean == pytest.approx(v, rel=1e-10, abs=1e-12), k
    n = N // WORLD
    for r, res in enumerate(results):
        for g, g_ref in zip(res["grads"], ref_grads):
            # Each rank's gradient = world_size x its slice of the 1-process gradient; DDP's averaging of
            # parameter gradients then gives exactly the 1-process parameter gradients.
            assert torch.allclose(g, WORLD * g_ref[r * n:(r + 1) * n], rtol=1e-6, atol=1e-10)


def _rank_evaluate(rank, port, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = utils.init_distributed(rank, WORLD, rank, "cpu", timeout_s=60)
    model, data = _eval_setup()
    acc = engine.evaluate(model, engine.shard(data, dist), dist, amp=False, batch_size=4, num_workers=0)
    torch.save(acc, os.path.join(result_dir, f"acc{rank}.pt"))
    tdist.destroy_process_group()


def _eval_setup():
    import checkpoint
    torch.manual_seed(0)
    model = checkpoint.build_model(dict(ndf=8, n_classes=3, n_rkhs=32, tclip=20.0, n_depth=1, encoder_size=32,
                                        use_bn=False))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(11, 3, 32, 32, generator=g), torch.randint(0, 3, (11,), generator=g)
    return model, torch.utils.data.TensorDataset(x, y)


def _rank_knn(rank, port, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = utils.init_distributed(rank, WORLD, rank, "cpu", timeout_s=60)
    model, data = _eval_setup()
    top1 = engine.knn_accuracy(model.eval(), data, data, dist, amp=False, batch_size=4, num_workers=0, k=3)
    torch.save(top1, os.path.join(result_dir, f"knn{rank}.pt"))
    tdist.destroy_process_group()


def test_sharded_knn_equals_one_process(tmp_path):
    """Each rank extracts its shard of memory and queries; the memory is gathered (shards of 6 and 5 items)."""
    mp.spawn(_rank_knn, args=(utils.free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    model, data = _eval_setup()
    single = engine.knn_accuracy(model.eval(), data, data, utils.Dist(), amp=False, batch_size=4, num_workers=0,
                                 k=3)
    for r in range(WORLD):
        assert torch.load(tmp_path / f"knn{r}.pt", weights_only=True) == pytest.approx(single)


def test_sharded_test_accuracy_equals_one_process(tmp_path):
    mp.spawn(_rank_evaluate, args=(utils.free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    model, data = _eval_setup()
    single = engine.evaluate(model, data, utils.Dist(), amp=False, batch_size=4, num_workers=0)
    for r in range(WORLD):
        assert torch.load(tmp_path / f"acc{r}.pt", weights_only=True) == single
    assert single["n_images"] == 11          # 11 images over 2 ranks: no padded duplicates


def _worker_that_fails(dist):
    if dist.rank == 1:
        raise RuntimeError("injected failure on rank 1")
    tdist.all_reduce(torch.ones(1))          # rank 0 would wait here for rank 1 until the group timeout
    tdist.all_reduce(torch.ones(1))


def test_a_dying_rank_ends_the_job_quickly_with_nonzero_exit():
    """utils.spawn, the launcher train.py uses for several GPUs, here with 2 gloo processes."""
    code = ("import os, utils, tests.test_distributed as t\n"
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(utils.free_port()))\n"
            "utils.spawn(t._worker_that_fails, 2, 'cpu')\n")
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "injected failure on rank 1" in r.stderr
    assert time.monotonic() - start < 60


def test_torchrun_two_process_training_run(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--dataset", "DIGITS", "--ndf", "8", "--n_rkhs", "32", "--n_depth", "1", "--batch_size", "100",
           "--epochs", "1", "--num_workers", "0", "--device", "cpu", "--output_dir", str(tmp_path),
           "--run_name", "ddp", "--log_every", "1000"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stdout
    ckpt = torch.load(tmp_path / "ddp" / "amdim_cpt.pth", weights_only=True)
    assert ckpt["cursor"]["info_epoch"] == 1 and ckpt["cursor"]["info_step"] == 15
    assert "rng" not in ckpt                     # no RNG state: every rank re-seeds from its position
    record = [json.loads(l) for l in open(tmp_path / "ddp" / "metrics.jsonl")][-1]      # after the start record
    assert record["n_images"] == 297
