"""Digest of what the code does: short DIGITS runs of every method and recipe branch, each checkpoint's tensors
hashed (model, optimizer, scaler, cursor, hyperparams) and test.py's scores, one line per run. Two trees that print
the same lines train bit-identically; a refactor runs it before and after and compares.

    python tools/behaviour_digest.py [--tree PATH] [--out DIR] > digest.txt

Runs train.py and test.py of --tree (default: this checkout) as subprocesses on one CPU thread with eager
execution, so nothing here depends on the tree's internals.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

import torch

BASE = ["--dataset", "DIGITS", "--batch_size", "100", "--num_workers", "0", "--device", "cpu", "--log_every",
        "1000", "--view_grid", "0", "--compile", "off", "--epochs", "2", "--checkpoint_every", "7"]
TINY = ["--arch", "amdim", "--ndf", "8", "--n_rkhs", "32", "--n_depth", "1"]
SWAV = ["--method", "swav", "--nmb_crops", "2", "1", "--size_crops", "32", "32", "--min_scale_crops", "0.3", "0.1",
        "--max_scale_crops", "1", "0.3", "--feat_dim", "16", "--hidden_mlp", "32", "--nmb_prototypes", "20",
        "--queue_length", "200", "--epoch_queue_starts", "0", "--freeze_prototypes_niters", "6"]
RUNS = {
    "amdim": TINY + ["--warmup_updates", "5"],
    "amdim_cos_per_image": TINY + ["--cos", "--per_image_aug", "--learning_rate", "3e-4"],
    "moco": TINY + ["--method", "moco", "--moco-k", "300", "--moco-dim", "16", "--moco-contr-w", "1"],
    "moco_v2_cos": TINY + ["--method", "moco", "--moco-k", "300", "--moco-dim", "16", "--mlp", "--aug-plus", "--cos",
                           "--warmup_updates", "4"],
    "cmc": TINY + ["--method", "cmc", "--nce_k", "64", "--feat_dim", "16"],
    "cmc_softmax": TINY + ["--method", "cmc", "--nce_k", "64", "--feat_dim", "16", "--softmax", "--crop_low", "0.3"],
    "swav": TINY + SWAV,
    "swav_warmup": TINY + SWAV + ["--warmup_epochs", "1", "--start_warmup", "0.1", "--base_lr", "0.3"],
}
CLASSIFIER_RUNS = {"amdim_classifiers": "amdim", "swav_classifiers_eval": "swav", "cmc_classifiers": "cmc"}


def digest(value):
    """sha256 of a checkpoint entry: tensors by dtype, shape and bytes; containers by their sorted items."""
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, torch.Tensor):
            h.update(f"T{v.dtype}{tuple(v.shape)}".encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        elif isinstance(v, dict):
            h.update(b"{")
            for k in sorted(v, key=str):
                h.update(repr(k).encode())
                feed(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                feed(x)
            h.update(b"]")
        else:
            h.update(repr(v).encode())
    feed(value)
    return h.hexdigest()[:16]


def run(tree, argv, env):
    result = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def describe(name, cpt, tree, env):
    ckpt = torch.load(cpt, map_location="cpu", weights_only=True)
    parts = {k: digest(ckpt.get(k)) for k in ("model", "optimizer", "scaler", "cursor", "hyperparams",
                                              "epoch_meters", "data_seed")}
    scores = json.loads(run(tree, ["test.py", cpt, "--dataset", "DIGITS", "--json", "--knn", "20", "--num_workers",
                                   "0", "--device", "cpu"], env))
    shown = {k: scores[k] for k in sorted(scores) if k.startswith("top1") or k == "n_images"}
    return f"{name}: " + " ".join(f"{k}={v}" for k, v in parts.items()) + f" test={json.dumps(shown)}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--out", default="/tmp/behaviour_digest")
    p.add_argument("--only", nargs="*", help="run names (default: all)")
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", CUDA_VISIBLE_DEVICES="")
    out = os.path.abspath(args.out)
    for name, flags in RUNS.items():
        if args.only and name not in args.only:
            continue
        run(args.tree, ["train.py", *BASE, *flags, "--output_dir", out, "--run_name", name, "--resume", "never"], env)
        print(describe(name, os.path.join(out, name, "amdim_cpt.pth"), args.tree, env), flush=True)
    for name, source in CLASSIFIER_RUNS.items():
        if args.only and name not in args.only:
            continue
        extra = ["--eval_encoder"] if name.endswith("_eval") else []
        run(args.tree, ["train.py", "--classifiers", *BASE, "--epochs", "1", *extra, "--checkpoint_path",
                        os.path.join(out, source, "amdim_cpt.pth"), "--output_dir", out, "--run_name", name,
                        "--resume", "never"], env)
        print(describe(name, os.path.join(out, name, "amdim_cpt.pth"), args.tree, env), flush=True)


if __name__ == "__main__":
    main()
