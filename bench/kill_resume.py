"""Kill a training run with SIGKILL at random moments, restart it each time, and check what a user would get.

    .venv/bin/python bench/kill_resume.py [--kills 20] [--seed 0] [--method amdim|moco] [-- extra train.py flags]

One uninterrupted run gives the reference weights. A second run of the same command (with --checkpoint_every)
is killed `--kills` times, each at a random moment after training began, and re-run after each kill until it
finishes. Reported: checkpoints that could not be read after a kill (corrupt reads), temporary files left
behind once the run finished, and whether the final weights, optimizer state and every epoch's logged loss equal
the reference run's bit for bit.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint  # noqa: E402
from utils import UserError  # noqa: E402

CONFIG = ["--dataset", "DIGITS", "--ndf", "8", "--n_rkhs", "64", "--n_depth", "1", "--batch_size", "50",
          "--epochs", "2", "--seed", "7", "--checkpoint_every", "3", "--num_workers", "0", "--device", "cpu",
          "--log_every", "1", "--view_grid", "0"]
TINY_MOCO = ["--method", "moco", "--arch", "resnet18", "--moco-k", "200", "--moco-dim", "32"]


def train_cmd(flags, out, name):
    return [sys.executable, "train.py", *flags, "--output_dir", out, "--run_name", name]


def run_to_end(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"train.py failed ({r.returncode}):\n{r.stderr[-3000:]}")


def started_training(log_path):
    """Whether the run has logged its first update (progress lines go to stdout, one per update here)."""
    try:
        with open(log_path) as f:
            return re.search(r"^epoch \d+/\d+ update", f.read(), re.M) is not None
    except OSError:
        return False


def kill_once(cmd, log_path, rng, max_delay):
    """Start the command, wait until it trains, SIGKILL it after a random delay. Returns False if it finished
    before the kill came."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not started_training(log_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, max_delay))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def final_state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["model"], ckpt["optimizer"]["state"]


def equal_states(a, b):
    """(number of tensors compared, names of those that differ) over nested dicts of tensors."""
    if isinstance(a, (tuple, list)):
        a, b = dict(enumerate(a)), dict(enumerate(b)) if isinstance(b, (tuple, list)) else None
    if isinstance(a, dict):
        n, diff = 0, []
        for k in a:
            m, d = equal_states(a[k], b.get(k) if isinstance(b, dict) else None)
            n, diff = n + m, diff + [f"{k}.{x}" if x else str(k) for x in d]
        return n, diff
    if isinstance(a, torch.Tensor):
        return 1, [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [""]
    return 0, [] if a == b else [""]


def epoch_losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r["epoch"]: r["loss"] for r in records if "epoch" in r and "loss" in r}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--method", choices=("amdim", "moco"), default="amdim")
    p.add_argument("--max_delay", type=float, default=4.0, help="seconds after training starts to kill within")
    p.add_argument("extra", nargs="*", help="more train.py flags (after --)")
    args = p.parse_args()
    flags = CONFIG + (TINY_MOCO if args.method == "moco" else []) + args.extra
    print(f"train.py {' '.join(flags)}")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run_to_end(train_cmd(flags, out, "straight"))
        straight_s = time.perf_counter() - t0
        print(f"uninterrupted run: {straight_s:.0f} s", flush=True)
        cmd = train_cmd(flags, out, "killed")
        run_dir = os.path.join(out, "killed")
        cpt = os.path.join(run_dir, "amdim_cpt.pth")
        kills = corrupt = finished_early = 0
        while kills < args.kills:
            if not kill_once(cmd, os.path.join(out, "log.txt"), rng, args.max_delay):
                finished_early += 1          # finished before the kill: start over to keep killing
                shutil.rmtree(run_dir)
                continue
            kills += 1
            where = "no checkpoint yet"
            if os.path.exists(cpt):
                try:
                    where = f"checkpoint at {checkpoint.cursor(checkpoint.read(cpt))}"
                except UserError as e:
                    corrupt += 1
                    where = f"unreadable checkpoint: {e}"
            print(f"kill {kills}: {where}", flush=True)
        run_to_end(cmd)
        leftovers = [f for f in os.listdir(run_dir) if ".tmp" in f]
        n, diff = equal_states(final_state(os.path.join(out, "straight", "amdim_cpt.pth")), final_state(cpt))
        losses_equal = epoch_losses(os.path.join(out, "straight")) == epoch_losses(run_dir)
    print("\n| kills | runs restarted after finishing | corrupt reads | leftover temporaries | tensors equal | "
          "epoch losses equal | straight run |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {kills} | {finished_early} | {corrupt} | {len(leftovers)} | {n - len(diff)}/{n} | "
          f"{'yes' if losses_equal else 'no'} | {straight_s:.0f} s |")
    if diff:
        print(f"differing tensors: {diff[:8]}{' ...' if len(diff) > 8 else ''}")
    exact = not diff and not corrupt and not leftovers and losses_equal
    print(f"{kills}/{args.kills} resumes {'bit-exact' if exact else 'NOT bit-exact'}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
