"""Learning check on the embedded DIGITS data: do self-supervised features beat a random encoder?

For each seed: self-supervised training, then --classifiers on that encoder, and --classifiers on a randomly
initialised encoder (the baseline), all with the same small config. Prints one row per seed and the mean/spread.

    .venv/bin/python bench/digits_learning.py [--seeds 1 2 3 4 5] [--ss_epochs 30] [--cls_epochs 10]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--dataset", "DIGITS", "--ndf", "16", "--n_rkhs", "128", "--n_depth", "1", "--batch_size", "100",
         "--num_workers", "2", "--log_every", "100000", "--resume", "never"]


def last_record(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])


def train(out, run_name, *extra):
    subprocess.run([sys.executable, "train.py", *MODEL, "--output_dir", out, "--run_name", run_name, *extra],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return last_record(os.path.join(out, run_name))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--ss_epochs", type=int, default=30)
    p.add_argument("--cls_epochs", type=int, default=10)
    args = p.parse_args()
    print(f"config: {' '.join(MODEL)}; self-supervised {args.ss_epochs} epochs (warm-up 50 updates), "
          f"classifiers {args.cls_epochs} epochs; top-1 % on the 297 DIGITS test images")
    print(f"{'seed':>4} | {'online lin':>10} {'online mlp':>10} | {'SS enc lin':>10} {'SS enc mlp':>10} | "
          f"{'rand lin':>8} {'rand mlp':>8}")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            s = ["--seed", str(seed)]
            ss = train(out, f"ss{seed}", *s, "--epochs", str(args.ss_epochs), "--warmup_updates", "50")
            cpt = os.path.join(out, f"ss{seed}", "amdim_cpt.pth")
            cls = train(out, f"cls{seed}", *s, "--classifiers", "--checkpoint_path", cpt,
                        "--epochs", str(args.cls_epochs))
            rnd = train(out, f"rand{seed}", *s, "--classifiers", "--epochs", str(args.cls_epochs))
            row = [ss["top1_linear"], ss["top1_mlp"], cls["top1_linear"], cls["top1_mlp"], rnd["top1_linear"],
                   rnd["top1_mlp"]]
            rows.append(row)
            print(f"{seed:>4} | {row[0]:10.2f} {row[1]:10.2f} | {row[2]:10.2f} {row[3]:10.2f} | "
                  f"{row[4]:8.2f} {row[5]:8.2f}", flush=True)
    cols = list(zip(*rows))
    fmt = lambda c: f"{statistics.mean(c):.1f}±{statistics.pstdev(c):.1f} [{min(c):.1f}–{max(c):.1f}]"
    print("mean±sd [min–max]:")
    for name, c in zip(["online lin", "online mlp", "SS enc lin", "SS enc mlp", "rand lin", "rand mlp"], cols):
        print(f"  {name:>10}: {fmt(c)}")


if __name__ == "__main__":
    main()
