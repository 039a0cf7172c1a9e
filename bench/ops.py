"""How many operations one training update dispatches, by part of the update: the batched views (uint8 images
-> the method's views, as engine.training_views makes them), forward + loss (train.loss_terms on ready views),
backward, the optimizer step, and the method's hooks (start_update, before_optimizer_step, after_step). On a GPU
each is (at least) one kernel launch, so the count bounds how far a small model's update can go before the
launches, not the arithmetic, set its time.

Counted on the CPU with imageops.SKIPS_ON = () so that the views take the masked, sync-free path a GPU takes
(on the CPU they otherwise skip work sample by sample), channels_last, the fused optimizer step as train.py
builds it, after the first updates (the first one creates the optimizer state; a compiled step compiles then).
Two counters:
- ops: every aten op dispatched (a TorchDispatchMode), eager only;
- launches: from torch.profiler's record, eager and compiled as --compile on compiles a run (the model's
  forward and backward, its losses, the views' pixel passes; the random draws stay eager): each kernel
  inductor generated (C++ here, Triton on a GPU) and each aten op called outside another aten op that is not a
  view or an allocation (views, detach, slice, select, empty: metadata only).
The counts do not depend on the model's widths or the batch, so the configs are small. Compiling takes minutes
on a CPU (inductor's cache, ~/.cache/amdim/inductor, keeps the kernels for the next run).

    .venv/bin/python bench/ops.py [--configs amdim-c10 swav-resnet18-c10] [--modes eager compiled] [--top 8]

count_update(spec) is what a test or another script calls: {part: collections.Counter of aten op names};
compute_ops(counter) leaves out the views (metadata only, no kernel).
"""
import argparse
import collections
import contextlib
import functools
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


# Allocations and no-op aliases: dispatched, but no kernel on any device.
NO_KERNEL = {"empty", "empty_like", "empty_strided", "resolve_conj", "resolve_neg", "lift_fresh"}


class LaunchCounter:
    """Counts what launches work while `part(name)` is entered, per part name, from torch.profiler's record:
    inductor's generated kernels (named as inductor names them) and the aten ops called outside any other aten
    op (what eager code and a compiled graph's extern calls dispatch), less views and NO_KERNEL."""

    def __init__(self):
        self.counts = collections.defaultdict(collections.Counter)

    @contextlib.contextmanager
    def part(self, name):
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            yield
        self.counts[name].update(launches(prof.events()))


def launches(events):
    """A Counter of the launching events among torch.profiler events (LaunchCounter's rule)."""
    counts = collections.Counter()
    for e in events:
        if "cpp_fused" in e.name or e.name.startswith("triton_"):
            counts["inductor kernel"] += 1
        elif e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::")):
            op = e.name[len("aten::"):]
            if op not in NO_KERNEL and not is_view(op):
                counts[op] += 1
    return counts


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


def count_update(spec, update=1, counter=None, compiled=False):
    """{part: Counter of aten op names} of one training update of spec = (method, image size, batch, model
    flags) on the CPU, taking the GPU's view path; updates 0..update-1 run uncounted first. counter: OpCounter
    (the default) or LaunchCounter; compiled: the step and the views compiled as --compile on compiles them
    (LaunchCounter only: a dispatch mode does not see into compiled code)."""
    import torch

    import engine
    import train
    built = step.build(None, "default" if compiled else "channels_last", torch.device("cpu"), views="device",
                       spec=spec)
    run, counter = built.run, counter or OpCounter()
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


@functools.lru_cache(maxsize=None)
def is_view(name):
    """Whether the aten op `name` returns a view of its input (metadata only: no kernel on any device)."""
    import torch
    try:
        packet = getattr(torch.ops.aten, name)
    except AttributeError:                  # a profiler name that is no op of the registry
        return False
    return any(getattr(packet, overload).is_view for overload in packet.overloads())


def compute_ops(counts):
    """How many of a Counter's ops are aten ops other than views: the ones that can launch a kernel (other
    namespaces' ops, e.g. the profiler's record_function markers around an optimizer step, launch none)."""
    return sum(n for name, n in counts.items() if "::" not in name and not is_view(name))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--modes", nargs="+", choices=("eager", "compiled"), default=["eager", "compiled"],
                   help="eager: both counters; compiled: launches of the step and views compiled (minutes)")
    p.add_argument("--top", type=int, default=6, help="the most frequent ops to list per config and mode")
    args = p.parse_args()
    import torch
    import torch._inductor.config
    torch._inductor.config.cpp.enable_kernel_profile = True     # each generated C++ kernel in the profiler
    print(f"per training update (CPU, the GPU's view path, counted after the first updates); torch "
          f"{torch.__version__}")
    print(f"{'config (method, px, batch, flags)':<58} {'count':<17} " + " ".join(f"{part:>14}" for part in PARTS)
          + f" {'total':>7}")
    tops = []
    for name in args.configs:
        method, size, batch, flags = CONFIGS[name]
        rows = []
        if "eager" in args.modes:
            counts = count_update(CONFIGS[name])
            rows.append(("ops, eager", [sum(counts[part].values()) for part in PARTS], counts))
            rows.append(("  not views", [compute_ops(counts[part]) for part in PARTS], None))
            rows.append(("launches, eager", *_launches(CONFIGS[name], compiled=False)))
        if "compiled" in args.modes:
            rows.append(("launches, compiled", *_launches(CONFIGS[name], compiled=True)))
        label = f"{name} ({size}px b{batch} {' '.join(flags)})"
        for kind, cells, counts in rows:
            print(f"{label:<58} {kind:<17} " + " ".join(f"{c:>14}" for c in cells) + f" {sum(cells):>7}",
                  flush=True)
            label = ""
            if counts is not None:
                every = sum(counts.values(), collections.Counter())
                tops.append(f"  {name}, {kind}: " + ", ".join(f"{op} {n}" for op, n in every.most_common(args.top)))
    print("ops: every aten op a TorchDispatchMode sees; not views: less views, detach, slice, select, ...; "
          "launches: inductor's kernels and the outermost aten ops that are not views or allocations "
          "(torch.profiler)")
    print("most frequent:")
    print("\n".join(tops))


def _launches(spec, compiled):
    """([launches per part], {part: Counter}) of one update of spec, eager or compiled (the third update: the
    first two compile)."""
    counts = count_update(spec, update=2, counter=LaunchCounter(), compiled=compiled)
    return [sum(counts[part].values()) for part in PARTS], counts


if __name__ == "__main__":
    main()
