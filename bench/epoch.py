"""One full training epoch end to end (data loading, augmentation, training step, BN refresh, test) on an
ImageFolder, through train.py itself.

    .venv/bin/python bench/epoch.py [--input_dir ../shared/data/cifar10-mini] [--runs 5] [-- extra train.py flags]

Prints a table: median epoch wall time and training img/s over the runs, min-max, peak RSS of train.py.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-mini")
CONFIG = ["--ndf", "32", "--n_rkhs", "256", "--n_depth", "1", "--batch_size", "64"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_dir", default=DEFAULT_DATA)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("extra", nargs="*", help="more train.py flags (after --)")
    args = p.parse_args()
    flags = ["--dataset", "FOLDER", "--image_size", str(args.image_size), "--input_dir", args.input_dir,
             "--epochs", "1", "--num_workers", str(args.num_workers), "--log_every", "100000",
             "--resume", "never", *CONFIG, *args.extra]
    print(f"train.py {' '.join(flags)}")
    walls, rates, rss = [], [], []
    with tempfile.TemporaryDirectory() as out:
        for run in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "train.py", *flags, "--output_dir", out, "--run_name", f"r{run}"],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            with open(os.path.join(out, f"r{run}", "metrics.jsonl")) as f:
                record = [json.loads(line) for line in f][-1]       # the epoch's record, after the start's
            rates.append(record["img_per_s"])
            rss.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print(f"{'what':<28} {'median':>9} {'min-max':>17}")
    print(f"{'epoch wall time (s)':<28} {statistics.median(walls):9.1f} {min(walls):8.1f}-{max(walls):<8.1f}")
    print(f"{'training img/s':<28} {statistics.median(rates):9.1f} {min(rates):8.1f}-{max(rates):<8.1f}")
    print(f"peak RSS of train.py: {max(rss):.0f} MB; {record['n_images']} test images; wall time includes "
          f"start-up, BN refresh and the test")


if __name__ == "__main__":
    main()
