"""How many aten operations one training update dispatches, by part of the update: the batched views (uint8
images -> the method's views, as engine.training_views makes them), forward + loss (train.loss_terms on ready
views), backward, the optimizer step, and the method's hooks (start_update, before_optimizer_step, after_step).
On a GPU each is (at least) one kernel launch, so the count bounds how far a small model's update can go
before the launches, not the arithmetic, set its time.

Counted on the CPU with imageops.SKIPS_ON = () so that the views take the masked, sync-free path a GPU takes
(on the CPU they otherwise skip work sample by sample), in eager mode (no compile), channels_last, the fused
optimizer step as train.py builds it, the second update (the first one creates the optimizer state). The count
does not depend on the model's widths or the batch, so the configs are small.

    .venv/bin/python bench/ops.py [--configs amdim-c10 swav-resnet18-c10] [--top 8]

count_update(spec) is what a test or another script calls: {part: collections.Counter of aten op names};
compute_ops(counter) leaves out the views (metadata only, no kernel).
"""
import argparse
import collections
import contextlib
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import step     # bench/step.py: builds a config's training step as train.py does

# name: (method, image size, batch, model flags), as bench/step.py's CONFIGS. AMDIM's C10 model at its depth (3)
# with narrow widths; MoCo and SwAV with their C10 defaults (ResNet-18; SwAV's 2 x 32 + 4 x 16 px crops).
CONFIGS = {
    "amdim-c10": ("amdim", 32, 8, ["--ndf", "16", "--n_rkhs", "128", "--n_depth", "3"]),
    "moco-resnet18-c10": ("moco", 32, 8, ["--arch", "resnet18"]),
    "swav-resnet18-c10": ("swav", 32, 8, ["--arch", "resnet18"]),
}
PARTS = ("views", "forward+loss", "backward", "optimizer step", "hooks")


class OpCounter:
    """Counts the operations dispatched while `part(name)` is entered, per part name: aten ops by name, others
    as namespace::name."""

    def __init__(self):
        self.counts = collections.defaultdict(collections.Counter)

    @contextlib.contextmanager
    def part(self, name):
        from torch.utils._python_dispatch import TorchDispatchMode
        counts = self.counts[name]

        class Recorder(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                counts[name if func.namespace == "aten" else f"{func.namespace}::{name}"] += 1
                return func(*args, **(kwargs or {}))

        with Recorder():
            yield


@contextlib.contextmanager
def gpu_view_path():
    """imageops.SKIPS_ON emptied (the CPU takes the GPU's masked passes), restored on exit."""
    import imageops
    before = imageops.SKIPS_ON
    imageops.SKIPS_ON = ()
    try:
        yield
    finally:
        imageops.SKIPS_ON = before


def count_update(spec, update=1):
    """{part: Counter of aten op names} of one training update of spec = (method, image size, batch, model
    flags) on the CPU, taking the GPU's view path; updates 0..update-1 run uncounted first."""
    import torch

    import engine
    import train
    built = step.build(None, "channels_last", torch.device("cpu"), views="device", spec=spec)
    run, counter = built.run, OpCounter()
    model, dist, optimizer = run.model, run.dist, built.optimizer
    augment, run.splits.batch_augment = run.splits.batch_augment, None
    images, labels, index = built.batch_data
    with gpu_view_path():
        for i in range(update + 1):
            counted = i == update
            parts = counter.part if counted else (lambda name: contextlib.nullcontext())
            with parts("hooks"):
                model.start_update(0, i, dist)
            with parts("views"):
                views, _, _ = engine.training_views((images, labels, index), augment, dist.device, run.n_views,
                                                    run.args.memory_format)
            with parts("forward+loss"):
                terms, _, out = train.loss_terms(run, (views, labels, index), shared_seed=i)
                loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            with parts("backward"):
                loss.backward()
            with parts("hooks"):
                model.before_optimizer_step(i)
            with parts("optimizer step"):
                optimizer.step()
            with parts("hooks"):
                model.after_step(out, dist)
    return {part: counter.counts[part] for part in PARTS}


def is_view(name):
    """Whether the aten op `name` returns a view of its input (metadata only: no kernel on any device)."""
    import torch
    packet = getattr(torch.ops.aten, name)
    return any(getattr(packet, overload).is_view for overload in packet.overloads())


def compute_ops(counts):
    """How many of a Counter's ops are aten ops other than views: the ones that can launch a kernel (other
    namespaces' ops, e.g. the profiler's record_function markers around an optimizer step, launch none)."""
    return sum(n for name, n in counts.items() if "::" not in name and not is_view(name))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--top", type=int, default=6, help="the most frequent ops to list per config")
    args = p.parse_args()
    import torch
    print(f"aten ops dispatched per training update (CPU, the GPU's view path, eager, update 2); torch "
          f"{torch.__version__}")
    print(f"{'config (method, px, batch, flags)':<58} " + " ".join(f"{part:>14}" for part in PARTS) +
          f" {'total':>11}")
    tops = []
    for name in args.configs:
        method, size, batch, flags = CONFIGS[name]
        counts = count_update(CONFIGS[name])
        every = sum(counts.values(), collections.Counter())
        cells = [f"{sum(c.values())} / {compute_ops(c)}" for c in [counts[part] for part in PARTS] + [every]]
        label = f"{name} ({size}px b{batch} {' '.join(flags)})"
        print(f"{label:<58} " + " ".join(f"{cell:>14}" for cell in cells[:-1]) + f" {cells[-1]:>11}", flush=True)
        tops.append(f"  {name}: " + ", ".join(f"{op} {n}" for op, n in every.most_common(args.top)))
    print("each cell: all aten ops / those that are not views (view, detach, slice, select, ...: metadata only)")
    print("most frequent ops:")
    print("\n".join(tops))


if __name__ == "__main__":
    main()
