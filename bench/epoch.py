"""One full training epoch end to end (data loading, augmentation, training step, BN refresh, test) on an
image folder, through train.py itself, image by image (--cache_images off) and decoded into memory
(--cache_images on), next to the training step alone (bench/step.py's measure of the same model and batch).

    .venv/bin/python bench/epoch.py [--input_dir ../shared/data/cifar10-mini] [--runs 3] [--variants off on step]
                                    [--step_variant auto] [-- extra train.py flags]

Prints one table, after bench/host.py's line: per variant the median training img/s over the runs (train.py's
own figure for the epoch's updates) with min-max, that as a percentage of the step's rate, the median wall time
of the whole train.py run and its peak RSS. The runs of the variants alternate, so a busy host slows them alike.
The image cache goes to a fresh $XDG_CACHE_HOME, so the first `on` run decodes (its time is printed below the
table) unless the data folder is writable and already holds a cache.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import host     # bench/host.py: the CPU model and matmul rate every table prints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-mini")
# bench/step.py's "small" config: the same model and batch as its step measure.
STEP_CONFIG = "small"
CONFIG = ["--ndf", "32", "--n_rkhs", "256", "--n_depth", "1", "--batch_size", "64"]


def train_run(flags, out, run_name, env):
    """One train.py run: (training img/s, wall seconds, peak RSS MB, stdout)."""
    logs = os.path.join(out, f"{run_name}.log")
    with open(logs, "w") as stdout, open(logs + ".err", "w") as stderr:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "train.py", *flags, "--output_dir", out, "--run_name", run_name],
                             cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(p.pid, 0)        # this child's own peak RSS
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        with open(logs + ".err") as f:
            raise SystemExit(f"train.py {' '.join(flags)} failed:\n{f.read()[-2000:]}")
    with open(os.path.join(out, run_name, "metrics.jsonl")) as f:
        record = [json.loads(line) for line in f][-1]       # the epoch's record, after the start's
    with open(logs) as f:
        return record["img_per_s"], wall, usage.ru_maxrss / 1024, f.read()


def step_rate(variant, steps):
    """bench/step.py's measure of the training step alone, in its own process: median img/s."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "step.py"), "--one", STEP_CONFIG, variant,
                          "--steps", str(steps)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"bench/step.py failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_dir", default=DEFAULT_DATA)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=["off", "on", "step"], choices=["off", "on", "auto", "step"],
                   help="train.py's --cache_images values, and step: the training step alone (bench/step.py); "
                        "step comes last so that its variant can follow train.py's")
    p.add_argument("--step_variant", default="auto",
                   help="bench/step.py's variant for the step row; auto: the one train.py ran, read from its "
                        "start-up lines (default where it compiled the step, else channels_last: train.py's "
                        "defaults for a run too short to repay compiling)")
    p.add_argument("--step_steps", type=int, default=20, help="timed steps of each step measure")
    p.add_argument("extra", nargs="*", help="more train.py flags (after --)")
    args = p.parse_args()
    flags = ["--dataset", "FOLDER", "--image_size", str(args.image_size), "--input_dir", args.input_dir,
             "--epochs", "1", "--num_workers", str(args.num_workers), "--log_every", "100000",
             "--resume", "never", "--view_grid", "0", *CONFIG, *args.extra]
    line, _ = host.header()
    print(line)
    print(f"train.py {' '.join(flags)} --cache_images <variant>", flush=True)
    results = {v: {"rate": [], "wall": [], "rss": []} for v in args.variants}
    builds, step_variant = [], args.step_variant
    stdout = ""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(out, "cache"))
        for run in range(args.runs):
            for variant in args.variants:
                r = results[variant]
                if variant == "step":
                    if step_variant == "auto":
                        step_variant = "default" if "torch.compile on" in stdout else "channels_last"
                    m = step_rate(step_variant, args.step_steps)
                    r["rate"].append(m["median"])
                    r["rss"].append(m["peak_rss_mb"])
                    continue
                rate, wall, rss, stdout = train_run(flags + ["--cache_images", variant], out, f"{variant}{run}",
                                                    env)
                builds += [float(s) for s in re.findall(r"decoded [\d,]+ in ([\d.]+) s", stdout)]
                r["rate"].append(rate)
                r["wall"].append(wall)
                r["rss"].append(rss)
    step = statistics.median(results["step"]["rate"]) if "step" in results else None
    print(f"{'variant':<48} {'img/s median':>12} {'min-max':>15} {'% of step':>9} {'run wall (s)':>12} "
          f"{'peak RSS':>9}")
    for variant, r in results.items():
        label = f"step alone (bench/step.py {STEP_CONFIG} {step_variant})" if variant == "step" else \
            f"epoch, --cache_images {variant}"
        rate = statistics.median(r["rate"])
        share = f"{100 * rate / step:8.0f}%" if step else f"{'-':>9}"
        wall = f"{statistics.median(r['wall']):12.1f}" if r["wall"] else f"{'-':>12}"
        print(f"{label:<48} {rate:12.1f} {min(r['rate']):7.1f}-{max(r['rate']):<7.1f} {share} {wall} "
              f"{max(r['rss']):7.0f}MB")
    print(f"median of {args.runs} runs each, alternating; epoch img/s: train.py's own rate over the epoch's updates "
          f"(loading and augmentation included); run wall: the whole train.py run (start-up, image cache, BN "
          f"refresh, test)")
    if builds:
        print(f"image cache built in this bench (decode of train/ and val/ in parallel processes): "
              f"{', '.join(f'{s:.1f} s' for s in builds)}")


if __name__ == "__main__":
    main()
