"""One command for the comparison table: train every method under one budget, evaluate every encoder the same
ways, and write the table, its numbers and a picture.

    python compare.py --dataset C10 --input_dir ./data --methods amdim moco cmc swav --epochs 100 \\
        --output_dir runs/compare [--preset cifar] [--arch resnet18] [--seeds 1 2 3] [--protocols moco swav cmc] \\
        [any train.py flag, given to every run] [--moco.mlp --swav.nmb_prototypes 300: one method's runs only]

For each seed and method, in order, compare.py runs train.py (a normal run folder, OUTPUT_DIR/<method>_seed<N>/ss)
and then, on its frozen encoder, the evaluations: test.py --knn (k --knn_k), --classifiers with AMDIM's protocol (a
linear and an MLP classifier: the common protocol) and with each seed protocol in --protocols (moco, swav, cmc:
the seeds' own linear evaluations, in cls_<protocol>/). Every run is an ordinary train.py run, so runs use every
GPU of the node (train.py --device auto), one after the other, and a second `python compare.py` with the same
command continues an unfinished run exactly where it stopped and skips whatever finished. A method that fails is
reported in the table with its one-line error; the others still run.

The budget is the same for every method: --epochs, or --budget_updates (the fewest whole epochs holding that many
updates: train.py --updates), so methods of different batch sizes train for as many optimiser steps. Recipes:
each method's defaults are its seed's ImageNet recipe scaled to the budget (--preset seed, the default); --preset
cifar / stl take published small-data recipes as anchors (PRESETS below), which the table names per row.

Flags compare.py does not know go to train.py: plain ones (--amp, --batch_size, --ndf 16 ...) to every run,
--<method>.<flag> [values] to that method's self-supervised runs only (--moco.mlp, --moco.moco-k 4096,
--swav.nmb_prototypes 300); they come after the preset's, so they override it. Outputs in --output_dir:
results.md (the table), results.json (the same numbers, every run's resolved config and environment, errors),
results.png (each method's accuracy against training time, and the final scores side by side) and the same
curves and scores in TensorBoard (tensorboard/).
"""
import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

import methods
import protocols

ROOT = os.path.dirname(os.path.abspath(__file__))
CPT = "amdim_cpt.pth"
SEED_PROTOCOLS = tuple(p for p in protocols.PROTOCOLS if p not in ("amdim", "semisup"))


# ----------------------------------------------------------------------------------------------------------
# Presets: a method's self-supervised flags for a data scale. Each is a function of the Budget (epochs, updates
# per epoch, batch size) returning (flags, what the recipe follows). Rates are the anchors' at batch 256, scaled
# linearly to the run's batch as solo-learn scales them.

def _per_256(rate, budget):
    return f"{rate * budget.batch_size / 256:.6g}"


def _cifar_amdim(budget):
    # The AMDIM paper's CIFAR-10 encoder (its README's command: ndf 128, n_rkhs 1024, depth 3), Adam 2e-4.
    return ["--ndf", "128", "--n_rkhs", "1024", "--n_depth", "3"], "AMDIM paper, CIFAR-10 encoder"


def _cifar_moco(budget):
    # solo-learn scripts/pretrain/cifar/mocov2plus.yaml's optimisation: SGD lr 0.3 at batch 256, cosine, queue 32768,
    # key momentum 0.99 (solo-learn raises it to 0.999 over the run; here it stays), MoCo v2's MLP head and
    # augmentation; the loss stays the seed's alignment and uniformity.
    return ["--learning_rate", _per_256(0.3, budget), "--cos", "--moco-k", "32768", "--moco-m", "0.99", "--mlp",
            "--aug-plus"], "solo-learn CIFAR MoCo v2+ (lr 0.3/256, cosine, queue 32768, m 0.99)"


def _cifar_cmc(budget):
    # CMC's STL-10 temperature (its README: --nce_t 0.1 on STL-10), 4096 negatives, cosine decay.
    return ["--nce_t", "0.1", "--nce_k", "4096", "--cos"], "CMC seed, STL-10 settings (nce_t 0.1), cosine"


def _cifar_multicrop(budget, heads):
    # solo-learn scripts/pretrain/cifar/{swav,deepclusterv2}.yaml: LARS lr 0.6 at batch 256 (min 0.0006), wd 1e-6,
    # projection 2048 -> 128, 3000 prototypes, two 32 px crops (area 0.08-1).
    return ["--base_lr", _per_256(0.6, budget), "--final_lr", _per_256(0.0006, budget), "--wd", "1e-6",
            "--hidden_mlp", "2048", "--feat_dim", "128", "--nmb_prototypes", *["3000"] * heads, "--nmb_crops", "2",
            "--size_crops", str(budget.image_size), "--min_scale_crops", "0.08", "--max_scale_crops", "1"]


def _cifar_swav(budget):
    # Queue 3840 from 5 % of the run (epoch 50 of 1000), prototypes frozen for 2 epochs.
    flags = _cifar_multicrop(budget, 1) + ["--queue_length", "3840", "--epoch_queue_starts",
                                           str(round(0.05 * budget.epochs)), "--freeze_prototypes_niters",
                                           str(2 * budget.updates_per_epoch)]
    return flags, "solo-learn CIFAR SwAV (LARS 0.6/256, 3000 prototypes, queue 3840)"


def _cifar_deepcluster(budget):
    # Warm-up over 1.1 % of the run (11 of 1000 epochs), three heads.
    flags = _cifar_multicrop(budget, 3) + ["--warmup_epochs", str(round(0.011 * budget.epochs))]
    return flags, "solo-learn CIFAR DeepCluster-v2 (LARS 0.6/256, 3 x 3000 prototypes)"


def _stl_amdim(budget):
    # The AMDIM paper's STL-10 encoder (64 px: ndf 192, n_rkhs 1536, depth 8).
    return ["--ndf", "192", "--n_rkhs", "1536", "--n_depth", "8"], "AMDIM paper, STL-10 encoder"


PRESETS = {
    "seed": {},
    "cifar": {"amdim": _cifar_amdim, "moco": _cifar_moco, "cmc": _cifar_cmc, "swav": _cifar_swav,
              "deepclusterv2": _cifar_deepcluster},
    "stl": {"amdim": _stl_amdim, "moco": _cifar_moco, "cmc": _cifar_cmc, "swav": _cifar_swav,
            "deepclusterv2": _cifar_deepcluster},
}
SEED_RECIPE = "seed's ImageNet recipe, scaled to the budget"


class Budget(NamedTuple):
    """What the presets scale with."""
    epochs: int
    updates_per_epoch: int
    batch_size: int
    image_size: int


# ----------------------------------------------------------------------------------------------------------
# Command line.

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Flags it does not know go to train.py (see the module docstring).")
    p.add_argument("--dataset", required=True, help="train.py's --dataset")
    p.add_argument("--input_dir", default="./data", help="train.py's --input_dir")
    p.add_argument("--methods", nargs="+", choices=list(methods.METHODS), default=list(methods.METHODS))
    p.add_argument("--arch", help="one backbone for every method that takes it (AMDIM keeps its own encoder); "
                                  "default: each method's")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int, help="self-supervised epochs of every method")
    budget.add_argument("--budget_updates", type=int,
                        help="self-supervised updates of every method (the fewest whole epochs holding them)")
    budget.add_argument("--budget_hours", type=float,
                        help="self-supervised training time of every method: as many whole epochs as fit, timed "
                             "by a one-epoch calibration run of each method first")
    p.add_argument("--preset", choices=list(PRESETS), default="seed",
                   help="recipes: seed (each seed's ImageNet recipe scaled to the budget), cifar or stl (published "
                        "small-data recipes: see compare.py's PRESETS)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run of each method per seed")
    p.add_argument("--protocols", nargs="*", choices=SEED_PROTOCOLS, default=[],
                   help="seeds' linear evaluations to run besides kNN and AMDIM's linear/MLP protocol")
    p.add_argument("--cls_epochs", type=int, help="epochs of every classifier run (default: each protocol's)")
    p.add_argument("--knn_k", type=int, default=200, help="neighbours of the kNN evaluation")
    p.add_argument("--output_dir", default="runs/compare", help="where the runs and the results go")
    p.add_argument("--quiet", action="store_true", help="one line per step instead of the runs' progress")
    args, rest = p.parse_known_args(argv)
    args.shared, args.per_method = split_extra(rest, args.methods, p)
    for name in ("epochs", "budget_updates", "cls_epochs", "knn_k"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.budget_hours is not None and not args.budget_hours > 0:
        p.error("--budget_hours must be above 0")
    return args


def split_extra(tokens, method_names, parser):
    """train.py flags compare.py does not know: (for every run, {method: its own}); --<method>.<flag> [values]
    goes to that method (its flag spelled --<flag>)."""
    shared, own = [], {m: [] for m in method_names}
    target = shared
    for token in tokens:
        if token.startswith("--") and "." in token.split("=")[0]:
            method, flag = token[2:].split(".", 1)
            if method not in methods.METHODS:
                parser.error(f"{token}: {method!r} is not a method ({', '.join(methods.METHODS)})")
            target = own.setdefault(method, [])
            target.append("--" + flag)
        elif token.startswith("--"):
            target = shared
            target.append(token)
        elif target is shared and not shared:
            parser.error(f"unrecognized argument {token!r}: train.py's flags start with --")
        else:
            target.append(token)
    return shared, own


# ----------------------------------------------------------------------------------------------------------
# Runs: a job is one (method, seed); its steps are the self-supervised run and the evaluations.

class Job:
    """One method trained with one seed, in OUTPUT_DIR/<method>_seed<N>/: the command lines of its steps, and the
    one-line error that stopped it (None while it has not failed)."""

    def __init__(self, args, method, seed, budget):
        self.args, self.method, self.seed, self.budget = args, method, seed, budget
        self.dir = os.path.join(args.output_dir, f"{method}_seed{seed}")
        self.error = None

    @property
    def checkpoint(self):
        return os.path.join(self.dir, "ss", CPT)

    @property
    def recipe(self):
        return recipe_of(self.args.preset, self.method, self.budget)[1]

    def train_argv(self, run_name="ss", length=None):
        """train.py's command line of the self-supervised run (or, with `length`, of a calibration run)."""
        args = self.args
        arch = [] if args.arch is None or self.method == "amdim" else ["--arch", args.arch]
        if length is None:
            length = ["--updates", str(args.budget_updates)] if args.budget_updates else \
                ["--epochs", str(self.budget.epochs)]
        preset_flags = recipe_of(args.preset, self.method, self.budget)[0]
        return [*data_flags(args), "--method", self.method, *arch, *preset_flags, *args.shared,
                *args.per_method.get(self.method, []), "--seed", str(self.seed), *length,
                "--output_dir", self.dir, "--run_name", run_name]

    def classifier_argv(self, protocol):
        args = self.args
        extra = [] if args.cls_epochs is None else ["--epochs", str(args.cls_epochs)]
        return [*data_flags(args), *args.shared, "--classifiers", "--protocol", protocol, "--checkpoint_path",
                self.checkpoint, "--seed", str(self.seed), *extra, "--output_dir", self.dir,
                "--run_name", f"cls_{protocol}"]

    def knn_argv(self):
        return [self.checkpoint, *data_flags(self.args), "--knn", str(self.args.knn_k), "--json"]


def data_flags(args):
    return ["--dataset", args.dataset, "--input_dir", args.input_dir]


def recipe_of(preset, method, budget):
    """(flags, description) of `method`'s recipe under `preset`."""
    make = PRESETS[preset].get(method)
    if make is None:
        return [], SEED_RECIPE
    flags, what = make(budget)
    return flags, f"{preset} preset: {what}"


def run_finished(run_dir):
    """Whether a train.py run folder holds a finished run: its checkpoint, and a last epoch record at the epochs
    its last start planned (metrics.jsonl)."""
    records = read_records(run_dir)
    starts = [r for r in records if r.get("event") == "start"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    if not starts or not epochs or not os.path.exists(os.path.join(run_dir, CPT)):
        return False
    return epochs[-1]["epoch"] >= starts[-1]["config"]["epochs"]


def read_records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_step(job, name, script, argv, quiet, log_path):
    """Run `script argv` (train.py or test.py) for `job`; its output goes to log_path (and, unless quiet, to this
    terminal). Returns its output's lines; None on failure, where job.error becomes the run's one-line error."""
    print(f"[compare] {job.method} seed {job.seed}: {name}", flush=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, script), *argv]
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))      # progress lines as they come
        lines = []
        for line in proc.stdout:
            log.write(line)
            if not quiet:
                sys.stdout.write(line)
            if line.strip():
                lines.append(line.strip())
        status = proc.wait()
    if status != 0:
        message = re.sub(r"^(\S+: )?error: ", "", lines[-1] if lines else "")  # run_main's and argparse's one line
        job.error = f"{name}: {message or f'exit status {status}'}"
        print(f"[compare] {job.method} seed {job.seed}: failed: {job.error}", flush=True)
        return None
    return lines


def calibrate(job):
    """--budget_hours: the job's epochs, as many as fit the budget at the speed of one epoch of the method's own run
    (train.py for one epoch in calibrate/, its record kept in calibration.json so a rerun plans the same). False
    when the calibration run failed."""
    path = os.path.join(job.dir, "calibration.json")
    if not os.path.exists(path):
        hours = job.args.budget_hours
        job.budget = job.budget._replace(epochs=1)
        if run_step(job, "calibration (one epoch)", "train.py",
                    job.train_argv("calibrate", ["--epochs", "1", "--resume", "never"]), job.args.quiet,
                    os.path.join(job.dir, "calibrate.log")) is None:
            return False
        epoch = next(r for r in read_records(os.path.join(job.dir, "calibrate")) if r["event"] == "epoch")
        seconds = epoch["epoch_seconds"]
        write_json(path, {"epoch_seconds": seconds, "budget_hours": hours,
                          "epochs": max(1, math.floor(hours * 3600 / seconds))})
        shutil.rmtree(os.path.join(job.dir, "calibrate"))
    with open(path) as f:
        job.budget = job.budget._replace(epochs=json.load(f)["epochs"])
    return True


def run_job(job):
    """The job's self-supervised run, then its evaluations, each skipped where it finished before."""
    args = job.args
    ss_dir = os.path.join(job.dir, "ss")
    if args.budget_hours is not None and not calibrate(job):
        return
    if not run_finished(ss_dir):
        if run_step(job, "self-supervised training", "train.py", job.train_argv(), args.quiet,
                    os.path.join(job.dir, "ss.log")) is None:
            return
    knn_path = os.path.join(job.dir, "knn.json")
    if not os.path.exists(knn_path):
        lines = run_step(job, f"kNN (k {args.knn_k})", "test.py", job.knn_argv(), args.quiet,
                         os.path.join(job.dir, "knn.log"))
        if lines is None:
            return
        write_json(knn_path, json.loads(next(line for line in reversed(lines) if line.startswith("{"))))
    for protocol in ("amdim", *args.protocols):
        run_dir = os.path.join(job.dir, f"cls_{protocol}")
        if not run_finished(run_dir):
            if run_step(job, f"classifiers, {protocol} protocol", "train.py", job.classifier_argv(protocol),
                        args.quiet, os.path.join(job.dir, f"cls_{protocol}.log")) is None:
                return


def write_json(path, obj):
    """Write obj as JSON through a temporary file, so a killed comparison never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Results.

def job_result(job):
    """One job's numbers from its run folders: the self-supervised run's length, time and speed, each protocol's
    top-1, kNN top-1, its config and environment, the accuracy curve, and its error if any."""
    ss = read_records(os.path.join(job.dir, "ss"))
    start = next((r for r in reversed(ss) if r.get("event") == "start"), None)
    epochs = [r for r in ss if r.get("event") == "epoch"]
    result = {"method": job.method, "seed": job.seed, "recipe": job.recipe, "error": job.error,
              "arch": start["config"]["arch"] if start else None, "scores": {}, "curve": []}
    if start:
        result.update(config=start["config"], environment=start.get("environment"))
    if epochs:
        seconds = [r.get("epoch_seconds", 0.0) for r in epochs]
        result.update(epochs=epochs[-1]["epoch"], updates=epochs[-1]["step"], wall_s=sum(seconds),
                      img_per_s=statistics.median(r["img_per_s"] for r in epochs))
        elapsed = 0.0
        for r, s in zip(epochs, seconds):
            elapsed += s
            curve_key = "top1_knn" if "top1_knn" in r else "top1_linear"
            if curve_key in r:
                result["curve"].append({"epoch": r["epoch"], "seconds": elapsed, "top1": r[curve_key],
                                        "of": "kNN" if curve_key == "top1_knn" else "online linear"})
    knn_path = os.path.join(job.dir, "knn.json")
    if os.path.exists(knn_path):
        with open(knn_path) as f:
            result["scores"]["kNN"] = json.load(f)["top1_knn"]
    for protocol in ("amdim", *job.args.protocols):
        run_dir = os.path.join(job.dir, f"cls_{protocol}")
        if run_finished(run_dir):
            last = [r for r in read_records(run_dir) if r.get("event") == "epoch"][-1]
            if protocol == "amdim":
                result["scores"]["linear"], result["scores"]["MLP"] = last["top1_linear"], last["top1_mlp"]
            else:
                result["scores"][protocol] = last["top1_linear"]
    return result


def score_columns(args):
    return ["linear", "MLP", *args.protocols, "kNN"]


def summarise(results, args):
    """Rows of the table, one per method: its runs' numbers, mean ± sd over seeds."""
    rows = []
    for method in args.methods:
        runs = [r for r in results if r["method"] == method]
        done = [r for r in runs if "epochs" in r]
        row = {"method": method, "backbone": next((r["arch"] for r in runs if r["arch"]), "-"),
               "recipe": runs[0]["recipe"], "seeds": [r["seed"] for r in runs],
               "errors": [f"seed {r['seed']}: {r['error']}" for r in runs if r["error"]]}
        for key in ("epochs", "updates", "wall_s", "img_per_s"):
            row[key] = [r[key] for r in done]
        for col in score_columns(args):
            row[col] = [r["scores"][col] for r in runs if col in r["scores"]]
        rows.append(row)
    return rows


def spread(values, digits=1):
    if not values:
        return "-"
    if len(set(values)) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows, args):
    """results.md: the Markdown table and what it measured."""
    cols = score_columns(args)
    names = {"linear": "linear (amdim)", "MLP": "MLP (amdim)", "kNN": f"kNN (k {args.knn_k})"}
    head = ["method", "backbone", "epochs", "updates", "wall time (min)", "img/s",
            *[f"top-1 {names.get(c, c)}" for c in cols], "recipe"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], row["backbone"], spread(row["epochs"], 0), spread(row["updates"], 0),
                 spread([s / 60 for s in row["wall_s"]]), spread(row["img_per_s"], 0),
                 *[spread(row[c]) for c in cols], row["recipe"]]
        lines.append("| " + " | ".join(cells) + " |")
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.budget_updates} updates" if args.budget_updates \
        else f"{args.budget_hours:g} hours (the epochs that fit, timed by a one-epoch calibration run)"
    notes = [f"`{args.dataset}`, {budget} of self-supervised training a method, seeds "
             f"{', '.join(map(str, args.seeds))} (mean ± sd where several); top-1 % on the test split; wall time "
             f"and img/s of the self-supervised run (img/s the median epoch's)."]
    errors = [f"- {row['method']} {e}" for row in rows for e in row["errors"]]
    if errors:
        notes += ["", "Failed:", *errors]
    return "\n".join(["# Comparison", "", *lines, "", *notes, ""])


def plot(results, rows, args, path):
    """results.png: top-1 against training time per method (each run's epochs), and the final scores side by
    side. Returns the figure (also drawn to TensorBoard)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(args.methods)}
    for r in results:
        if r["curve"]:
            label = f"{r['method']}" + (f" (seed {r['seed']})" if len(args.seeds) > 1 else "")
            curves.plot([p["seconds"] / 60 for p in r["curve"]], [p["top1"] for p in r["curve"]], marker="o",
                        color=colours[r["method"]], label=label)
    of = {p["of"] for r in results for p in r["curve"]}
    curves.set(xlabel="self-supervised training time (min)", ylabel=f"top-1 % ({' / '.join(sorted(of)) or '-'})",
               title="accuracy during training")
    if any(r["curve"] for r in results):
        curves.legend()
    cols = score_columns(args)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        means = [statistics.mean(row[c]) if row[c] else 0.0 for c in cols]
        errs = [statistics.stdev(row[c]) if len(row[c]) > 1 else 0.0 for c in cols]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(cols))]
        bars.bar(xs, means, width, yerr=errs, color=colours[row["method"]], label=row["method"])
    bars.set_xticks(range(len(cols)), cols)
    bars.set(ylabel="top-1 %", title="final scores")
    bars.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def to_tensorboard(results, rows, args, fig):
    """The curves (x: elapsed seconds), the final scores and the figure in OUTPUT_DIR/tensorboard, written anew
    each time (the previous comparison's event files go: they would show every curve twice)."""
    from torch.utils.tensorboard import SummaryWriter
    folder = os.path.join(args.output_dir, "tensorboard")
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith("events.out.tfevents"):
            os.remove(os.path.join(folder, name))
    writer = SummaryWriter(folder)
    for r in results:
        for p in r["curve"]:
            writer.add_scalar(f"curve/{r['method']}_seed{r['seed']}", p["top1"], global_step=round(p["seconds"]))
    for row in rows:
        for col in score_columns(args):
            if row[col]:
                writer.add_scalar(f"final/{col}/{row['method']}", statistics.mean(row[col]), global_step=0)
    writer.add_figure("comparison", fig, global_step=0)
    writer.close()


def write_results(jobs, args):
    results = [job_result(job) for job in jobs]
    rows = summarise(results, args)
    write_json(os.path.join(args.output_dir, "results.json"),
               {"command": sys.argv, "arguments": {k: v for k, v in vars(args).items()}, "rows": rows,
                "runs": results})
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table(rows, args))
    fig = plot(results, rows, args, os.path.join(args.output_dir, "results.png"))
    to_tensorboard(results, rows, args, fig)
    return rows


# ----------------------------------------------------------------------------------------------------------

def budget_of(args):
    """The Budget the presets scale with (the training split read once, only where a preset needs its size)."""
    import datasets
    batch = value_of(args.shared, "--batch_size", None, int)
    image_size = datasets.encoder_size(args.dataset, value_of(args.shared, "--image_size", None, int))
    if args.preset == "seed":
        return Budget(args.epochs, None, batch, image_size)
    splits = datasets.build_splits(args.dataset, args.input_dir, "self_supervised", image_size=image_size,
                                   report=False, cache_images="off")
    per_epoch = len(splits.train) // batch
    epochs = args.epochs or (math.ceil(args.budget_updates / per_epoch) if args.budget_updates else None)
    return Budget(epochs, per_epoch, batch, image_size)


def value_of(tokens, flag, default, kind=str):
    """The last value given to `flag` in a train.py argument list, else default."""
    found = default
    for i, token in enumerate(tokens):
        if token == flag and i + 1 < len(tokens):
            found = kind(tokens[i + 1])
        elif token.startswith(flag + "="):
            found = kind(token.split("=", 1)[1])
    return found


def main(argv=None):
    args = parse_args(argv)
    if args.preset != "seed" and value_of(args.shared, "--batch_size", None) is None:
        args.shared = ["--batch_size", "256", *args.shared]        # the presets' anchors' batch
    os.makedirs(args.output_dir, exist_ok=True)
    budget = budget_of(args)
    jobs = [Job(args, method, seed, budget) for seed in args.seeds for method in args.methods]
    started = time.time()
    for job in jobs:
        run_job(job)
    rows = write_results(jobs, args)
    print(f"[compare] {len(jobs)} runs in {time.time() - started:.0f} s: {args.output_dir}/results.md, results.json, "
          f"results.png", flush=True)
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
