"""Process-level helpers: user-facing errors, device and seeding, meters and logging."""
import json
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, unreadable file).

    Entry points print `error: <message>` on one line to stderr and exit with status 2, without a traceback.
    The message must name the problem and the fix.
    """


def run_main(main):
    """Call main(); a UserError becomes one line on stderr and exit status 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


@dataclass
class Dist:
    """Where this process sits in the job: rank among world_size processes, and its device."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def pick_device(name="auto"):
    """torch.device for --device: auto = the first CUDA GPU when one is visible, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def seed_everything(seed):
    """Seed python, numpy and torch (all devices) so a run's randomness follows from --seed."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class Meters:
    """Running means of named scalars over an epoch (losses, accuracies)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, values, n=1):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
            self.counts[k] = self.counts.get(k, 0) + n

    def means(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


class RunLog:
    """Prints (flushed, so logs stream through pipes), TensorBoard scalars and metrics.jsonl for rank 0."""

    def __init__(self, run_dir, enabled=True):
        self.enabled = enabled
        self.run_dir = run_dir
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import
            self.writer = SummaryWriter(run_dir)

    def print(self, *args):
        if self.enabled:
            print(*args, flush=True)

    def scalars(self, prefix, values, step):
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def epoch_record(self, record):
        if self.enabled:
            with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self):
        if self.writer is not None:
            self.writer.close()
