"""Training-step throughput of every method and backbone: model + its costs + classifiers, forward, backward,
optimizer step and the method's hooks (MoCo's momentum update and queue push; SwAV's prototype normalisation,
Sinkhorn with a queue and queue push), float32.

Each (config, variant) runs in its own process so peak RSS is its own. Prints one table: median img/s of the
timed steps after warm-up, min-max, peak RSS, achieved GFLOP/s (torch's flop counter, per image pair) next to
this machine's measured float32 matrix-multiply rate.

    .venv/bin/python bench/step.py                  # every config: the previous default against today's
    .venv/bin/python bench/step.py --configs small --variants eager channels_last default --steps 7

Variants (memory format, torch.compile, fused optimizer step): eager (contiguous, no, no: the original's path),
channels_last_unfused (the default before compile-by-default), channels_last (no compile), compile (contiguous),
default (channels_last, compiled, fused: what train.py runs once a run is long enough to compile).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import host     # bench/host.py: the CPU model and matmul rate every table prints

SWAV_STATE = ["--queue_length", "3840", "--epoch_queue_starts", "0", "--freeze_prototypes_niters", "0"]
# name: (method, image size, batch, model flags). The three AMDIM configs are the 32 px ones quoted in issue 5
# (0.353, 1.59 and 7.1 GFLOP per image pair); "default" is the original's model defaults.
CONFIGS = {
    "small": ("amdim", 32, 64, ["--ndf", "32", "--n_rkhs", "256", "--n_depth", "1"]),
    "medium": ("amdim", 32, 100, ["--ndf", "64", "--n_rkhs", "512", "--n_depth", "2"]),
    "default": ("amdim", 32, 200, ["--ndf", "128", "--n_rkhs", "1024", "--n_depth", "3"]),
    "moco-amdim-small": ("moco", 32, 64, ["--arch", "amdim", "--ndf", "32", "--n_rkhs", "256", "--n_depth", "1"]),
    "moco-resnet18": ("moco", 32, 64, ["--arch", "resnet18"]),
    "moco-resnet50": ("moco", 128, 32, ["--arch", "resnet50", "--mlp"]),
    "cmc-amdim-small": ("cmc", 32, 64, ["--arch", "amdim", "--ndf", "32", "--n_rkhs", "256", "--n_depth", "1"]),
    "cmc-resnet18": ("cmc", 32, 64, ["--arch", "resnet18"]),
    "cmc-resnet50": ("cmc", 128, 32, ["--arch", "resnet50"]),
    # SwAV with its multi-crop: the AMDIM encoder takes only 32 px, so its small crops are 32 px crops of small
    # areas; the ResNets take the defaults (2 x 32 + 4 x 16 px; 2 x 128 + 6 x 64 px). A full queue (3840, the
    # seed's batch-256 one) and unfrozen prototypes, so every part of the step runs.
    "swav-amdim-small": ("swav", 32, 64, ["--arch", "amdim", "--ndf", "32", "--n_rkhs", "256", "--n_depth", "1",
                                          "--nmb_crops", "2", "4", "--size_crops", "32", "32", "--min_scale_crops",
                                          "0.14", "0.05", "--max_scale_crops", "1", "0.14", *SWAV_STATE]),
    "swav-resnet18": ("swav", 32, 64, ["--arch", "resnet18", *SWAV_STATE]),
    "swav-resnet50": ("swav", 128, 32, ["--arch", "resnet50", *SWAV_STATE]),
}
# variant: (memory format, torch.compile, fused optimizer step). "default" is what train.py runs for a run long
# enough to compile (compiling.AUTO_MIN_UPDATES); "channels_last_unfused" was the default before fused steps
# and compile-by-default; "eager" is the original code's path.
VARIANTS = {"eager": ("contiguous", False, False), "channels_last_unfused": ("channels_last", False, False),
            "channels_last": ("channels_last", False, True), "compile": ("contiguous", True, True),
            "default": ("channels_last", True, True)}
DATASET_OF_SIZE = {32: "C10", 64: "STL10", 128: "IN128"}


def measure(config_name, variant, steps, warmup):
    """Time `steps` training steps (forward, loss, backward, optimizer step, after-step hook) of one config in
    this process; returns a dict for the table."""
    from types import SimpleNamespace

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import augment
    import checkpoint
    import config
    import phases
    import train
    import distributed
    method, size, batch, flags = CONFIGS[config_name]
    memory_format, compile_step, fused = VARIANTS[variant]
    args = train.parse_args(["--dataset", DATASET_OF_SIZE[size], "--method", method, "--batch_size", str(batch),
                             "--memory_format", memory_format, *flags])
    dist = distributed.Dist()
    torch.manual_seed(0)
    hp = config.from_flags(args, size, n_classes=10)
    if method == "moco":
        hp["moco_k"] = 4096           # a queue of a CIFAR-sized run's order of magnitude
    if method == "cmc":               # banks of a CIFAR-sized training split; nce_k stays the seed's 4096
        hp.update(n_data=50000, rgb_mean=[0.5, 0.5, 0.5], rgb_std=[0.25, 0.25, 0.25])
    model = train.place_model(checkpoint.build_model(hp), args, dist)
    phase = phases.SelfSupervised(model, args)
    step_model = train.wrap_step(phase, dist, compile_step)
    if method == "swav":              # a full queue from the first step (rows of unit length, as embeddings)
        model.queue = torch.nn.functional.normalize(torch.randn(len(hp["crops_for_assign"]), hp["queue_length"],
                                                                hp["feat_dim"]), dim=2)
    optimizer = phase.optimizer(args)
    for group in optimizer.param_groups:
        group["fused"] = group.get("fused") and fused       # as train.py's optimizer, or unfused
    run = SimpleNamespace(args=args, dist=dist, model=model, phase=phase, step_model=step_model, n_views=model.n_views,
                          amp=None, splits=SimpleNamespace(batch_augment=None))
    g = torch.Generator().manual_seed(1)
    if method == "cmc":                                         # CMC's views: Lab's L and ab
        shapes = [(1, size), (2, size)]
    elif method == "swav":                                      # every crop at its own size
        shapes = [(3, s) for s, _ in augment.MultiCrop.from_hyperparams(hp).each()]
    else:
        shapes = [(3, size)] * 2
    batch_data = (tuple(torch.randn(batch, c, s, s, generator=g) for c, s in shapes),
                  torch.randint(0, 10, (batch,), generator=g), torch.arange(batch))
    updates = iter(range(10 ** 9))

    def step():
        update = next(updates)
        model.start_update(0, update, dist)
        terms, _, out = train.loss_terms(run, batch_data, shared_seed=update)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.before_optimizer_step(update)
        optimizer.step()
        model.after_step(out, dist)
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    run.step_model = model                          # eager model: the counter sees every op
    with FlopCounterMode(display=False) as counter:
        terms, _, _ = train.loss_terms(run, batch_data, shared_seed=0)
        sum(terms.values()).backward()
    flops_per_pair = counter.get_total_flops() / batch
    rates = [batch / t for t in times]
    return {"config": config_name, "variant": variant, "batch": batch, "median": statistics.median(rates),
            "min": min(rates), "max": max(rates), "gflop_per_pair": flops_per_pair / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": steps}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=["channels_last_unfused", "default"], choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.warmup)))
        return
    line, rate = host.header()
    print(line)
    print(f"{'config (method, px, batch, flags)':<38} {'variant':<22} {'img/s median':>12} {'min-max':>13} "
          f"{'GFLOP/pair':>10} {'GFLOP/s':>8} {'% of mm':>7} {'peak RSS':>9}")
    for config in args.configs:
        for variant in args.variants:
            out = subprocess.run([sys.executable, __file__, "--one", config, variant, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup)], capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"{config:<38} {variant:<22} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            achieved = r["median"] * r["gflop_per_pair"]
            method, size, batch, flags = CONFIGS[config]
            label = f"{config} ({size}px b{batch})"
            print(f"{label:<38} {variant:<22} {r['median']:12.1f} {r['min']:6.1f}-{r['max']:<6.1f} "
                  f"{r['gflop_per_pair']:10.3f} {achieved:8.1f} {100 * achieved / rate:6.0f}% "
                  f"{r['peak_rss_mb']:7.0f}MB", flush=True)
    print(f"median of {args.steps} steps after {args.warmup} warm-up steps; GFLOP/pair counts forward + backward "
          f"of both views (torch.utils.flop_counter; MoCo's key view is forward only; SwAV: all crops of an image); "
          f"img/s counts image pairs (SwAV: images, each with all its crops)")
    for name, (method, size, batch, flags) in CONFIGS.items():
        if name in args.configs:
            print(f"  {name}: --method {method} {' '.join(flags)} at {size} px, batch {batch}")


if __name__ == "__main__":
    main()
