"""Steady-state training waits for no GPU: an update queues its work and leaves its numbers on the device, and
train_epoch reads a whole --log_every window of them in one transfer. A non-finite update is skipped on the
device (weights, optimizer state and the methods' queues and banks unchanged) without the host reading it.

On the CPU the recorder (test_amp.count_syncs) catches every operation that would make the host wait for a GPU
except transfers, which the CPU cannot tell apart: a .to() naming a device is a no-op here, so moves are left to
the GPU check (tools/gpu-check.sh); training moves batches with non_blocking=True from pinned memory."""
import copy
import math

import pytest
import torch

import distributed
import imageops
import train
from helpers import BASE, TINY_FLAGS
from test_amp import count_syncs

PRECISIONS = {"fp32": [], "bf16": ["--amp", "--amp_dtype", "bfloat16"], "fp16": ["--amp", "--amp_dtype", "float16"]}



def _run(tmp_path, method, precision, *extra):
    args = train.parse_args([*BASE, *TINY_FLAGS[method], *PRECISIONS[precision], "--output_dir", str(tmp_path),
                             "--run_name", "r", "--compile", "off", *extra])
    train.seed_everything(0)
    run, _ = train.setup(distributed.Dist(), args)
    loader = train.make_loaders(run)
    loader.sampler.set_epoch(0)
    return run, loader


def _syncs(fn):
    """What fn() does that would wait for a GPU, transfers left out (see the module's docstring)."""
    return [name for name in count_syncs(fn) if name not in ("to", "cuda")]


# Every method in float32; float16's GradScaler with Adam (AMDIM) and with LARC (SwAV). (bfloat16 needs no scaler:
# its step is float32's.)
CASES = [(m, "fp32") for m in TINY_FLAGS] + [("amdim", "fp16"), ("swav", "fp16")]


@pytest.mark.parametrize("method,precision", CASES)
def test_updates_never_wait_for_the_device_and_a_non_finite_one_moves_nothing(tmp_path, monkeypatch, method,
                                                                              precision):
    monkeypatch.setattr(imageops, "SKIPS_ON", ())          # the batched views' GPU path: masked passes
    run, loader = _run(tmp_path, method, precision, "--nan_policy", "skip")
    batches = iter(loader)
    for _ in range(3):   # SwAV reads whether its queue is full until it is: after two pushes of the tiny config
        train.update(run, next(batches), 0)
    rows, queued = [], [next(batches) for _ in range(3)]       # the loader's collation is the host's own work
    assert _syncs(lambda: rows.extend(train.update(run, batch, 0) for batch in queued)) == []
    window = train.Pending()
    window.rows = rows
    read = []
    assert _syncs(lambda: read.append(window.read(run.dist, False))) == ["tolist"]     # three updates, one read
    (values, stop), = read
    assert not stop and [row.step for row, _, _ in values] == [4, 5, 6]
    assert all(math.isfinite(v["loss"]) and not skipped for _, v, skipped in values)

    # A non-finite loss: the step, the optimizer's state and the method's state stay as they were.
    before, step = _state(run), run.cursor[run.step_key]
    phase_terms = run.phase.loss_terms

    def poisoned(out, dist):
        terms = phase_terms(out, dist)
        first = next(iter(terms))
        terms[first] = terms[first] * float("nan")
        return terms

    monkeypatch.setattr(run.phase, "loss_terms", poisoned)
    rows, batch = [], next(batches)
    assert _syncs(lambda: rows.append(train.update(run, batch, 0))) == []
    _assert_same(_state(run), before)
    assert bool(rows[0].skipped) and run.cursor[run.step_key] == step + 1
    monkeypatch.setattr(run.phase, "loss_terms", phase_terms)
    # The next updates train again (under float16 the scaler may still skip a few whose gradients overflow).
    rows = [train.update(run, next(batches), 0) for _ in range(4)]
    after = _state(run)["params"]
    assert not any(bool(r.skipped) for r in rows) and any(not torch.equal(after[k], v)
                                                          for k, v in before["params"].items())


def test_an_epoch_reads_the_device_once_per_log_every_window(tmp_path, monkeypatch):
    monkeypatch.setattr(imageops, "SKIPS_ON", ())
    run, loader = _run(tmp_path, "amdim", "fp32", "--log_every", "4")
    prefetched = _Prefetched(loader)
    means = []
    epoch = lambda: means.append(train.train_epoch(run, prefetched, train.EpochProgress(), print))
    syncs = _syncs(epoch)
    # Windows of 4, 4, 4 and 3 updates; then, once per epoch, the means are averaged over the processes.
    assert loader.sampler.batches() == 15 and syncs[:4] == ["tolist"] * 4 and "tolist" not in syncs[4:], syncs
    assert run.cursor[run.step_key] == 15 and math.isfinite(means[0]["loss"])


class _Prefetched:
    """The loader's batches made beforehand (collation is the host's own work, not a wait for the device),
    served with its sampler, as train_epoch reads a loader."""

    def __init__(self, loader):
        self.sampler, self.batches = loader.sampler, list(loader)

    def __iter__(self):
        return iter(self.batches)


def _state(run):
    """Weights, optimizer state and the method's own state (queues, banks, pointers). BatchNorm's running
    statistics are left out: the forward pass updates them before any loss is known, as it always has."""
    model = run.model
    buffers = {k: v for k, v in model.named_buffers() if "running_" not in k and "num_batches_tracked" not in k}
    return copy.deepcopy({"params": {k: v.detach() for k, v in model.named_parameters()}, "buffers": buffers,
                          "queue": getattr(model, "queue", None), "optimizer": run.optimizer.state_dict()["state"]})


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b
