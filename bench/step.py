"""Training-step throughput: model + NCE costs + classifiers, forward, backward and Adam, float32.

Each (config, variant) runs in its own process so peak RSS is its own. Prints one table: median img/s of the
timed steps after warm-up, min-max, peak RSS, achieved GFLOP/s (torch's flop counter, per image pair) next to
this machine's measured float32 matrix-multiply rate.

    .venv/bin/python bench/step.py                                  # every config, eager and channels_last
    .venv/bin/python bench/step.py --configs small --variants eager channels_last compile --steps 7
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

# name: (image size, ndf, n_rkhs, n_depth, batch) -- the 32 px configs quoted in issue 5 (0.353, 1.59 and 7.1
# GFLOP per image pair); "default" is the original's model defaults.
CONFIGS = {"small": (32, 32, 256, 1, 64), "medium": (32, 64, 512, 2, 100), "default": (32, 128, 1024, 3, 200)}
VARIANTS = ("eager", "channels_last", "compile", "compile_channels_last")


def matmul_gflops(n=4096, repeats=5):
    """This machine's float32 matrix-multiply rate (median of repeats), GFLOP/s."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def measure(config, variant, steps, warmup):
    """Time `steps` training steps of one config in this process; returns a dict for the table."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import train
    size, ndf, n_rkhs, depth, batch = CONFIGS[config]
    dataset = {32: "C10", 64: "STL10", 128: "IN128"}[size]
    args = train.parse_args(["--dataset", dataset, "--ndf", str(ndf), "--n_rkhs", str(n_rkhs), "--n_depth",
                             str(depth), "--batch_size", str(batch), "--memory_format",
                             "channels_last" if "channels_last" in variant else "contiguous"]
                            + (["--compile"] if variant.startswith("compile") else []))
    dist = train.utils.Dist()
    torch.manual_seed(0)
    model = train.checkpoint.build_model(dict(ndf=ndf, n_classes=10, n_rkhs=n_rkhs, tclip=20.0, n_depth=depth,
                                              encoder_size=size, use_bn=False))
    model, step_model = train.prepare_model(model, args, dist)
    optimizer = train.make_optimizer(model, args.learning_rate)
    g = torch.Generator().manual_seed(1)
    batch_data = (torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g),
                  torch.randint(0, 10, (batch,), generator=g))

    def step():
        terms, _ = train.loss_terms(step_model, batch_data, args, 20.0, dist)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as counter:   # eager model: the counter sees every op
        terms, _ = train.loss_terms(model, batch_data, args, 20.0, dist)
        sum(terms.values()).backward()
    flops_per_pair = counter.get_total_flops() / batch
    rates = [batch / t for t in times]
    return {"config": config, "variant": variant, "batch": batch, "median": statistics.median(rates),
            "min": min(rates), "max": max(rates), "gflop_per_pair": flops_per_pair / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": steps}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=["eager", "channels_last"], choices=VARIANTS)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.warmup)))
        return
    import torch
    rate = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul (4096^3): "
          f"{rate:.1f} GFLOP/s")
    print(f"{'config (size/ndf/n_rkhs/depth/batch)':<38} {'variant':<22} {'img/s median':>12} {'min-max':>13} "
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
            label = f"{config} ({'/'.join(map(str, CONFIGS[config]))})"
            print(f"{label:<38} {variant:<22} {r['median']:12.1f} {r['min']:6.1f}-{r['max']:<6.1f} "
                  f"{r['gflop_per_pair']:10.3f} {achieved:8.1f} {100 * achieved / rate:6.0f}% "
                  f"{r['peak_rss_mb']:7.0f}MB", flush=True)
    print(f"median of {args.steps} steps after {args.warmup} warm-up steps; GFLOP/pair counts forward + backward "
          f"of both views (torch.utils.flop_counter); img/s counts image pairs")


if __name__ == "__main__":
    main()
