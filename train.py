"""Train AMDIM: self-supervised encoder training with online classifiers, or (--classifiers) the evaluation
classifiers alone on a frozen encoder. One loop serves both phases.

    python train.py --dataset C10 --input_dir ./data                 # self-supervised
    python train.py --classifiers --checkpoint_path runs/default_run/amdim_cpt.pth --run_name c10_cls ...

Outputs land in <output_dir>/<run_name>/: the checkpoint <cpt_name> (and <cpt_name>.prev), TensorBoard event
files and metrics.jsonl. Re-running the same command resumes from that checkpoint.
"""
import argparse
import math
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import checkpoint
import costs
import datasets
import mixed_precision as mp
from model import last_width
import utils
from utils import Meters, RunLog, UserError, run_main, seed_everything

SELF_SUPERVISED, CLASSIFIERS = "self_supervised", "classifiers"
# Model flags: their defaults (the original's) apply only when no checkpoint provides them.
MODEL_DEFAULTS = dict(ndf=128, n_rkhs=1024, tclip=20.0, n_depth=3, use_bn=0)
BN_REFRESH_BATCHES = 50


def default_schedule(phase, dataset):
    """(epochs, LR milestones) of the original's schedules."""
    if phase == SELF_SUPERVISED:
        return (50, (30, 45)) if dataset in ("IN128", "PLACES205") else (300, (250, 280))
    return {"IN128": (30, (15, 25)), "PLACES205": (15, (7, 12))}.get(dataset, (120, (80, 110)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", type=str.upper, default="STL10", choices=datasets.DATASETS)
    p.add_argument("--input_dir", default="./data", help="where datasets live (torchvision ones download here)")
    p.add_argument("--image_size", type=int, choices=(32, 64, 128), help="FOLDER only: encoder input size")
    p.add_argument("--aug", default="default", choices=datasets.AUGMENTATIONS)
    p.add_argument("--per_image_aug", action="store_true",
                   help="augment image by image in the loader workers even where batched on-device "
                        "augmentation applies (C10, C100, STL10, DIGITS with --aug default)")
    p.add_argument("--batch_size", type=int, default=200, help="global batch (two views of each image)")
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="mixed precision through torch.autocast")
    p.add_argument("--classifiers", "--finetune", action="store_true",
                   help="train only the evaluation classifiers on a frozen encoder")
    p.add_argument("--checkpoint_path", "--cpt_load_path", help="checkpoint to start from")
    p.add_argument("--ndf", type=int, help=f"encoder base width (default {MODEL_DEFAULTS['ndf']})")
    p.add_argument("--n_rkhs", type=int, help=f"embedding width (default {MODEL_DEFAULTS['n_rkhs']})")
    p.add_argument("--tclip", type=float, help=f"NCE score soft clip (default {MODEL_DEFAULTS['tclip']})")
    p.add_argument("--n_depth", "--res_depth", type=int,
                   help=f"residual units per block (default {MODEL_DEFAULTS['n_depth']})")
    p.add_argument("--use_bn", type=int, choices=(0, 1), help="BatchNorm inside the encoder (default 0)")
    p.add_argument("--output_dir", default="./runs")
    p.add_argument("--run_name", default="default_run")
    p.add_argument("--cpt_name", default="amdim_cpt.pth")
    p.add_argument("--epochs", type=int, help="default: the original's (300 self-supervised, 120 classifiers; "
                   "ImageNet 50/30, Places205 50/15); LR milestones scale with it")
    p.add_argument("--warmup_updates", type=int, default=500, help="linear LR warm-up (self-supervised only)")
    p.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--eval_encoder", action="store_true",
                   help="--classifiers: keep the frozen encoder's BatchNorm in eval mode")
    p.add_argument("--bn_warmup", choices=("train", "test"), default="train",
                   help="images used to refresh BatchNorm statistics before each test")
    p.add_argument("--resume", choices=("auto", "never"), default="auto",
                   help="auto: continue from <output_dir>/<run_name>/<cpt_name> when it exists")
    p.add_argument("--checkpoint_every", type=int, default=0,
                   help="also save every N updates mid-epoch (0: only at the end of each epoch)")
    p.add_argument("--sync_bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    p.add_argument("--memory_format", choices=("channels_last", "contiguous"), default="channels_last",
                   help="layout of images and convolution weights; channels_last measured 1.2-1.5x faster on "
                        "CPU (bench/step.py)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step's model")
    p.add_argument("--skip_bad_images", action="store_true",
                   help="skip unreadable image files (counted) instead of stopping with an error")
    p.add_argument("--nan_policy", choices=("stop", "skip"), default="stop",
                   help="on a NaN/inf loss: stop (keeping the last checkpoint) or skip that update (counted)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: every visible CUDA GPU (one process each), else the CPU")
    p.add_argument("--log_every", type=int, default=50,
                   help="updates between progress lines when stdout is not a terminal")
    args = p.parse_args(argv)

    args.phase = CLASSIFIERS if args.classifiers else SELF_SUPERVISED
    if args.batch_size < 2:
        p.error("--batch_size must be at least 2 (train-mode BatchNorm needs 2 images)")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.dataset == "FOLDER" and args.image_size is None:
        p.error("--dataset FOLDER needs --image_size 32, 64 or 128")
    if args.checkpoint_path is None:  # else the checkpoint may supply the missing flags; checked later
        ndf = args.ndf or MODEL_DEFAULTS["ndf"]
        n_rkhs = args.n_rkhs or MODEL_DEFAULTS["n_rkhs"]
        need = last_width(ndf, datasets.encoder_size(args.dataset, args.image_size))
        if n_rkhs < need:
            p.error(f"--n_rkhs {n_rkhs} is smaller than the encoder's last width {need} (4*ndf at 32 px, "
                    f"8*ndf at 64/128 px): raise --n_rkhs or lower --ndf")
    return args


# ----------------------------------------------------------------------------------------------------------
# Where to start: a resumable checkpoint of this run, a given checkpoint, or nothing.

def find_start(args, cpt_path):
    """(checkpoint dict or None, how, path): how is "resume" (this run's own file, or its .prev when the file is
    unreadable) or "init" (--checkpoint_path)."""
    if args.resume == "auto":
        for candidate in (cpt_path, cpt_path + ".prev"):
            if not os.path.isfile(candidate):
                continue
            try:
                ckpt = checkpoint.read(candidate)
            except UserError as e:
                print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr, flush=True)
                continue
            phase = ckpt.get("phase")
            if phase != args.phase:
                raise UserError(f"{cpt_path} holds a {phase or 'foreign'} checkpoint that this "
                                f"{args.phase} run would overwrite: pass another --run_name (and "
                                f"--checkpoint_path {cpt_path} to start from it)")
            return ckpt, "resume", candidate
    if args.checkpoint_path:
        return checkpoint.read(args.checkpoint_path), "init", args.checkpoint_path
    return None, None, None


def resolve_hyperparams(args, ckpt, n_classes, encoder_size):
    """Model hyperparams: the checkpoint's when there is one (flags may not contradict it), else the flags."""
    if ckpt is None:
        hp = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in MODEL_DEFAULTS.items()}
        hp.update(use_bn=bool(hp["use_bn"]), encoder_size=encoder_size, n_classes=n_classes)
        return hp
    hp = checkpoint.hyperparams(ckpt)
    clashes = [f"--{k} {getattr(args, k)} (checkpoint: {hp[k]})" for k in MODEL_DEFAULTS
               if getattr(args, k) is not None and type(hp[k])(getattr(args, k)) != hp[k]]
    if clashes:
        raise UserError(f"model flags contradict the checkpoint: {', '.join(clashes)}; drop them, or start "
                        f"a new run without the checkpoint")
    if hp["encoder_size"] != encoder_size:
        raise UserError(f"the checkpoint's encoder takes {hp['encoder_size']} px images but --dataset "
                        f"{args.dataset} gives {encoder_size} px; use a dataset of that size")
    return hp


def build_model(args, ckpt, how, n_classes, encoder_size):
    """The model, its weights restored from `ckpt`, with classifiers reset where the phase needs fresh ones."""
    hp = resolve_hyperparams(args, ckpt, n_classes, encoder_size)
    if ckpt is None:
        return checkpoint.build_model(hp)
    model = checkpoint.model_from(ckpt)
    fresh_classifiers = how == "init" and args.phase == CLASSIFIERS
    if fresh_classifiers or hp["n_classes"] != n_classes:
        model.reset_evaluator(n_classes)
    return model


# ----------------------------------------------------------------------------------------------------------
# Optimisation.

def make_optimizer(model, lr):
    """Adam as the original: betas (0.8, 0.999), weight decay 1e-5, over the parameters that train."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, betas=(0.8, 0.999), weight_decay=1e-5, eps=1e-8)


def learning_rate(args, epoch, step, epochs, milestones):
    """LR for update `step` of `epoch`: step decay by 0.2 at each milestone epoch (MultiStepLR stepped once per
    epoch), times a linear warm-up over the first --warmup_updates self-supervised updates.

    A pure function of the cursor, so a resumed run continues the schedule exactly.
    """
    lr = args.learning_rate * 0.2 ** sum(epoch >= m for m in milestones)
    if args.phase == SELF_SUPERVISED and args.warmup_updates > 0:
        lr *= min(1.0, (step + 1) / args.warmup_updates)
    return lr


def schedule(args, default_epochs, default_milestones):
    epochs = args.epochs or default_epochs
    return epochs, tuple(round(m * epochs / default_epochs) for m in default_milestones)


# ----------------------------------------------------------------------------------------------------------
# One update of either phase.

def training_views(batch, augment, device, memory_format="contiguous", both=True):
    """(x1, x2, y) on the device: the loader's two views, or (batched augmentation) the views made here from
    the loader's uint8 images; x2 is None when `both` is false and only view 1 is needed."""
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    if augment is None:
        x1, x2, y = batch
    else:
        images, y = batch
        views = augment(images.to(device, non_blocking=True), n_views=2 if both else 1)
        x1, x2 = views[0], views[1] if both else None
    x1 = x1.to(device, non_blocking=True, memory_format=layout)
    x2 = x2.to(device, non_blocking=True, memory_format=layout) if both else None
    return x1, x2, y.to(device, non_blocking=True)


def first_view(splits, device, memory_format="contiguous"):
    """Batch -> view 1 of its images, for the BatchNorm refresh."""
    return lambda batch: training_views(batch, splits.batch_augment, device, memory_format, both=False)[0]


def loss_terms(model, batch, args, tclip, dist, augment=None):
    """Forward pass and every loss term (a dict of scalars) for one batch of the current phase."""
    x1, x2, y = training_views(batch, augment, dist.device, args.memory_format,
                               both=args.phase == SELF_SUPERVISED)
    if args.phase == SELF_SUPERVISED:
        with mp.autocast(dist.device, args.amp):
            out = model(x1, x2)
        with mp.float32(dist.device):
            f1 = [t.float() for t in out["x1"]]
            f2 = [t.float() for t in out["x2"]]
            n = x1.shape[0]
            locs1 = costs.sample_locations(n, device=dist.device)
            locs2 = costs.sample_locations(n, device=dist.device)
            # Negatives come from the global batch: every rank scores its own sources against all targets.
            gather = utils.all_gather_autograd if dist.active else None
            terms = costs.infomax_costs(f1, f2, tclip, locs1, locs2, gather=gather, pos_offset=dist.rank * n)
            labels = torch.cat([y, y])
            terms.update(classifier_terms(out["logits"], labels))
        return terms, (out["logits"], labels)
    with mp.autocast(dist.device, args.amp):
        out = model(x1)       # encoder parameters are frozen: no graph is kept for them
    with mp.float32(dist.device):
        terms = classifier_terms(out["logits"], y)
    return terms, (out["logits"], y)


def classifier_terms(logits, labels):
    mlp, lin = (t.float() for t in logits)
    return {"class_mlp": costs.classifier_loss(mlp, labels), "class_lin": costs.classifier_loss(lin, labels)}


def set_train_mode(model, args):
    """Train mode, except a frozen encoder stays in eval mode with --eval_encoder."""
    model.train()
    if args.phase == CLASSIFIERS and args.eval_encoder:
        model.encoder.eval()


def train_epoch(run, loader, save_midway):
    """One pass over the training data (or its rest, after a mid-epoch resume). Updates the cursor after every
    update and calls save_midway(batches_done) every --checkpoint_every updates. Returns the epoch's means,
    averaged over all processes."""
    args, dist, cur = run.args, run.dist, run.cursor
    epoch = cur[run.epoch_key]
    set_train_mode(run.model, args)
    meters = Meters()
    first = loader.sampler.skip_batches
    progress = utils.Progress(len(loader), f"epoch {epoch + 1}/{run.epochs}", dist.is_main, args.log_every,
                              run.log)
    t0, seen = time.perf_counter(), 0
    for i, batch in enumerate(loader, start=first):
        lr = learning_rate(args, epoch, cur[run.step_key], run.epochs, run.milestones)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        terms, (logits, labels) = loss_terms(run.step_model, batch, args, run.tclip, dist,
                                             run.splits.batch_augment)
        loss = sum(terms.values())
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        # One host-device sync per update: every logged number in a single transfer.
        stats = dict(terms, loss=loss, **train_accuracy(logits, labels))
        values = dict(zip(stats, torch.stack([v.detach().float() for v in stats.values()]).tolist()))
        # Ranks must agree before stepping (a rank that stopped alone would hang the others).
        non_finite, stop = utils.any_rank([not math.isfinite(values["loss"]), run.stop.requested], dist)
        if non_finite:
            handle_non_finite(run, values, epoch)
            continue
        run.scaler.step(run.optimizer)
        run.scaler.update()
        cur[run.step_key] += 1
        seen += batch[0].shape[0] * dist.world_size
        n_labelled, correct_mlp, correct_lin = (values.pop(k) for k in ("n_labelled", "correct_mlp", "correct_lin"))
        meters.update(values)
        if n_labelled:
            meters.update({"train_acc_mlp": 100 * correct_mlp / n_labelled,
                           "train_acc_lin": 100 * correct_lin / n_labelled}, n=n_labelled)
        rate = seen / (time.perf_counter() - t0)
        run.log.scalars(f"{args.phase}/train", dict(values, lr=lr, img_per_s=rate), cur[run.step_key])
        progress.update(loss=values["loss"], lr=lr, img_per_s=rate)
        last_batch = i + 1 == len(loader) + first
        if stop and not last_batch:
            progress.close()
            save_midway(i + 1)
            raise Interrupted(f"epoch {epoch + 1}, update {cur[run.step_key]}")
        if args.checkpoint_every and cur[run.step_key] % args.checkpoint_every == 0 and not last_batch:
            save_midway(i + 1)
    progress.close()
    means = meters.reduce(dist)
    means["img_per_s"] = seen / max(time.perf_counter() - t0, 1e-9)
    return means


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the update boundary."""


def handle_non_finite(run, values, epoch):
    """A NaN/inf loss: stop with the last good checkpoint kept, or (--nan_policy skip) drop the update."""
    update = run.cursor[run.step_key] + 1
    detail = ", ".join(f"{k}={values[k]:.4g}" for k in values if k not in ("loss", "n_labelled", "correct_mlp",
                                                                              "correct_lin"))
    if run.args.nan_policy == "skip":
        run.optimizer.zero_grad(set_to_none=True)
        run.non_finite_skipped += 1
        run.log.print(f"warning: non-finite loss at update {update} (epoch {epoch + 1}): {detail}; update skipped "
                      f"({run.non_finite_skipped} so far)")
        return
    kept = run.cpt_path if os.path.isfile(run.cpt_path) else "none was written yet"
    raise UserError(f"non-finite loss at update {update} (epoch {epoch + 1}): {detail}; stopped, last good "
                    f"checkpoint: {kept}; lower --learning_rate, or pass --nan_policy skip")


def train_accuracy(logits, labels):
    """Tensors (no sync): labelled rows, and how many of them each classifier gets right."""
    labelled = labels >= 0
    mlp, lin = logits
    return {"n_labelled": labelled.sum(), "correct_mlp": ((mlp.argmax(1) == labels) & labelled).sum(),
            "correct_lin": ((lin.argmax(1) == labels) & labelled).sum()}


# ----------------------------------------------------------------------------------------------------------
# Evaluation (shared with test.py).

@torch.no_grad()
def refresh_bn(model, loader, device, amp, eval_encoder=False, n_batches=BN_REFRESH_BATCHES, images=None):
    """Re-estimate BatchNorm running statistics as the original did before testing: up to n_batches batches
    through encoder and classifiers in train mode, without gradients. images(batch) gives the images to use
    (default: the first entry of each batch)."""
    model.train()
    if eval_encoder:
        model.encoder.eval()
    for i, batch in enumerate(loader):
        if i == n_batches:
            break
        if batch[0].shape[0] < 2:  # train-mode BatchNorm needs 2 images
            continue
        x = images(batch) if images is not None else batch[0].to(device, non_blocking=True)
        with mp.autocast(device, amp):
            model(x)


def shard(dataset, dist):
    """This rank's share of a test set: every world_size-th item, no padding, so each item is scored once."""
    if not dist.active:
        return dataset
    return torch.utils.data.Subset(dataset, range(dist.rank, len(dataset), dist.world_size))


@torch.no_grad()
def evaluate(model, dataset, dist, amp, batch_size, num_workers):
    """Top-1 accuracy (percent) of both classifiers over every item of `dataset` (items (x, y)), in eval mode.
    In a multi-process job pass each rank its shard(); the counts are summed over ranks.

    Returns {"n_images", "top1_mlp", "top1_linear"}."""
    model.eval()
    loader = make_loader(dataset, batch_size, num_workers, dist.device)
    correct_mlp = correct_lin = total = 0
    for x, y in loader:
        y = y.to(dist.device)
        with mp.autocast(dist.device, amp):
            mlp, lin = model(x.to(dist.device, non_blocking=True))["logits"]
        correct_mlp += (mlp.argmax(1) == y).sum().item()
        correct_lin += (lin.argmax(1) == y).sum().item()
        total += y.shape[0]
    correct_mlp, correct_lin, total = utils.all_reduce_sum([correct_mlp, correct_lin, total], dist.device)
    total = int(total)
    return {"n_images": total, "top1_mlp": 100.0 * correct_mlp / max(total, 1),
            "top1_linear": 100.0 * correct_lin / max(total, 1)}


def make_loader(dataset, batch_size, num_workers, device, shuffle=False, drop_last=False, sampler=None):
    """A DataLoader whose workers are re-created each epoch: their seeds then follow the global torch RNG,
    which checkpoints restore, so a resumed run draws the same augmentations. Workers ignore Ctrl-C/SIGTERM:
    the training process handles them at the next update boundary."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                       num_workers=num_workers, drop_last=drop_last,
                                       pin_memory=device.type == "cuda", persistent_workers=False,
                                       worker_init_fn=utils.ignore_stop_signals if num_workers else None)


def test_accuracy(run):
    """The per-epoch test: BN refresh on each rank's training batches, rank 0's statistics shared with every
    rank, then every test image scored once across the ranks."""
    args = run.args
    images = first_view(run.splits, run.dist.device, args.memory_format) if args.bn_warmup == "train" else None
    refresh_bn(run.model, run.bn_loader, run.dist.device, args.amp, eval_encoder=args.eval_encoder,
               images=images)
    utils.broadcast_buffers(run.model)
    return evaluate(run.model, shard(run.splits.test, run.dist), run.dist, args.amp, run.per_rank,
                    args.num_workers)


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (a seeded permutation per epoch, split across ranks) that can skip the batches an
    interrupted epoch already trained on, so a mid-epoch resume continues the same data order."""

    def __init__(self, dataset, dist, seed, batch_size):
        super().__init__(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.batch_size = batch_size
        self.skip_batches = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip_batches * self.batch_size:])

    def __len__(self):
        return super().__len__() - self.skip_batches * self.batch_size


# ----------------------------------------------------------------------------------------------------------
# RNG state, stored as plain tensors and lists so checkpoints load with weights_only=True.

def rng_state():
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------------------------------------

class Run:
    """Everything one training process holds: arguments, model, optimiser, data, cursor, logs."""


def prepare_output(run_dir, cpt_name, dist):
    """Create the run directory, check it is writable, and remove temporary files of a killed save."""
    if dist.is_main:
        try:
            os.makedirs(run_dir, exist_ok=True)
            probe = os.path.join(run_dir, f".write_test{os.getpid()}")
            open(probe, "w").close()
            os.remove(probe)
        except OSError as e:
            raise UserError(f"cannot write to {run_dir} ({e.strerror}); pass a writable --output_dir") from None
        checkpoint.remove_stale_temporaries(os.path.join(run_dir, cpt_name))


def save_checkpoint(run, batches_done=0):
    """Every rank contributes its RNG state; rank 0 writes the file atomically."""
    rng = utils.all_gather_objects(rng_state())
    if not run.dist.is_main:
        return
    args = run.args
    state = {"model": run.model.state_dict(), "hyperparams": run.model.hyperparams,
                     "cursor": dict(run.cursor), "batches_done": batches_done, "phase": args.phase,
                     "data_seed": run.data_seed,
                     "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(), "rng": rng,
                     "world_size": run.dist.world_size, "eval_encoder": args.eval_encoder,
                     "args": {k: v for k, v in vars(args).items() if v is None or
                              isinstance(v, (bool, int, float, str))}}
    try:
        checkpoint.save(state, run.cpt_path)
    except OSError as e:
        kept = f"the previous checkpoint {run.cpt_path} is intact" if os.path.isfile(run.cpt_path) else \
            "no earlier checkpoint existed"
        raise UserError(f"could not write checkpoint {run.cpt_path} ({e.strerror or e}); {kept}; free disk "
                        f"space or pass another --output_dir, then re-run to resume") from None


def restore(run, ckpt):
    """Optimizer, scaler, RNG states and mid-epoch position from a checkpoint of this same run."""
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng")
    if isinstance(rng, list) and len(rng) == run.dist.world_size:
        set_rng_state(rng[run.dist.rank])
    elif rng:
        run.log.print(f"note: the checkpoint was written by {len(rng)} process(es), this job has "
                      f"{run.dist.world_size}: random streams restart from --seed")
    return int(ckpt.get("batches_done", 0))


def prepare_model(model, args, dist):
    """Place the model for training: memory format, SyncBatchNorm, DistributedDataParallel, torch.compile.

    Returns (model, step_model): the plain module (checkpoints, BN refresh, evaluation) and the wrapper that
    the training step calls.
    """
    if args.sync_bn and dist.active:
        if dist.device.type != "cuda":
            raise UserError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); drop it "
                            "on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    layout = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    model = model.to(dist.device, memory_format=layout)
    step_model = model
    if dist.active:
        step_model = DistributedDataParallel(model, device_ids=[dist.device.index] if
                                             dist.device.type == "cuda" else None)
    if args.compile:
        step_model = torch.compile(step_model)
    return model, step_model


def worker(dist, args):
    """The training job as seen by one process (rank) of it."""
    seed_everything(args.seed + dist.rank)   # per-rank augmentation; DDP copies rank 0's initial weights
    if args.batch_size % dist.world_size or args.batch_size // dist.world_size < 2:
        raise UserError(f"--batch_size {args.batch_size} must split into at least 2 images per process over "
                        f"{dist.world_size} processes: use a multiple of {dist.world_size}, at least "
                        f"{2 * dist.world_size}")
    run = Run()
    run.args, run.dist = args, dist
    run.stop = utils.StopRequest()
    run.non_finite_skipped = 0
    utils.reap_children_at_exit()
    run_dir = os.path.join(args.output_dir, args.run_name)
    run.cpt_path = os.path.join(run_dir, args.cpt_name)
    prepare_output(run_dir, args.cpt_name, dist)

    ckpt, how, ckpt_from = find_start(args, run.cpt_path)
    encoder_size = datasets.encoder_size(args.dataset, args.image_size)
    run.splits = datasets.build_splits(args.dataset, args.input_dir, args.phase, image_size=args.image_size,
                                       aug=args.aug, download=dist.is_main or not dist.active,
                                       skip_bad_images=args.skip_bad_images,
                                       batch_augment=not args.per_image_aug)
    model = build_model(args, ckpt, how, run.splits.n_classes, encoder_size)
    hp = model.hyperparams
    if hp["n_rkhs"] < last_width(hp["ndf"], hp["encoder_size"]):
        raise UserError(f"n_rkhs {hp['n_rkhs']} is smaller than the encoder's last width "
                        f"{last_width(hp['ndf'], hp['encoder_size'])}: raise --n_rkhs")
    if args.phase == CLASSIFIERS:
        model.encoder.requires_grad_(False)
    run.model, run.step_model = prepare_model(model, args, dist)

    run.cursor = checkpoint.cursor(ckpt) if ckpt is not None else checkpoint.cursor({})
    if how == "init" and args.phase == CLASSIFIERS:
        run.cursor.update(classifier_epoch=0, classifier_step=0)
    prefix = "info" if args.phase == SELF_SUPERVISED else "classifier"
    run.epoch_key, run.step_key = f"{prefix}_epoch", f"{prefix}_step"
    run.epochs, run.milestones = schedule(args, *default_schedule(args.phase, args.dataset))
    run.tclip = hp["tclip"]
    run.optimizer = make_optimizer(run.model, args.learning_rate)
    run.scaler = mp.grad_scaler(dist.device, args.amp)
    run.log = RunLog(run_dir, enabled=dist.is_main)
    batches_done = restore(run, ckpt) if how == "resume" else 0

    run.per_rank = args.batch_size // dist.world_size
    if len(run.splits.train) < args.batch_size:
        raise UserError(f"the {args.dataset} training split has {len(run.splits.train)} images, fewer than "
                        f"--batch_size {args.batch_size}; lower --batch_size")
    # The data order follows the seed the run started with, also if a resumed run is given another --seed.
    data_seed = int(ckpt.get("data_seed", args.seed)) if how == "resume" else args.seed
    sampler = ResumableSampler(run.splits.train, dist, data_seed, run.per_rank)
    run.data_seed = data_seed
    # Batched augmentation indexes uint8 tensors in memory: worker processes would only add copies.
    train_workers = 0 if run.splits.batch_augment is not None else args.num_workers
    train_loader = make_loader(run.splits.train, run.per_rank, train_workers, dist.device, sampler=sampler,
                               drop_last=True)
    run.bn_loader = train_loader if args.bn_warmup == "train" else \
        make_loader(shard(run.splits.test, dist), run.per_rank, args.num_workers, dist.device)

    announce(run, ckpt_from, how, encoder_size)
    run.stop.install()
    acc = None
    while run.cursor[run.epoch_key] < run.epochs:
        epoch = run.cursor[run.epoch_key]
        sampler.set_epoch(epoch)
        sampler.skip_batches, batches_done = batches_done, 0
        try:
            means = train_epoch(run, train_loader, lambda done: save_checkpoint(run, done))
        except Interrupted as where:
            run.log.print(f"interrupted: checkpoint saved at {where} in {run.cpt_path}; re-run the same "
                          f"command to resume")
            return None
        sampler.skip_batches = 0
        acc = test_accuracy(run)
        run.cursor[run.epoch_key] = epoch + 1
        save_checkpoint(run)
        report_epoch(run, epoch, means, acc)
        if utils.any_rank([run.stop.requested], dist)[0] and run.cursor[run.epoch_key] < run.epochs:
            run.log.print(f"interrupted: checkpoint saved after epoch {epoch + 1} in {run.cpt_path}; re-run the "
                          f"same command to resume")
            return None
    if acc is None:
        run.log.print(f"nothing to do: {run.cpt_path} already finished {run.epochs} epochs")
    run.log.close()
    return acc


def announce(run, ckpt_from, how, encoder_size):
    """Start-up lines: resolved config, devices, world size, where outputs go."""
    args, dist, log, hp = run.args, run.dist, run.log, run.model.hyperparams
    if args.resume == "never" and os.path.isfile(run.cpt_path):
        log.print(f"--resume never: starting over; {run.cpt_path} is replaced at the first save")
    config = " ".join(f"{k}={v}" for k, v in sorted(vars(args).items()))
    log.print(f"config: {config}")
    devices = f"{dist.device}" if not dist.active else f"{dist.world_size} processes on {dist.device.type}"
    log.print(f"amdim {args.phase}: {args.dataset} ({len(run.splits.train)} train / {len(run.splits.test)} test "
              f"images, {run.splits.n_classes} classes, {encoder_size} px); device {devices}, world size "
              f"{dist.world_size}, {run.per_rank} images per process, amp {args.amp}")
    n_params = sum(p.numel() for p in run.model.parameters())
    log.print(f"model {hp} ({n_params / 1e6:.2f} M parameters); epochs {run.epochs}, LR milestones "
              f"{list(run.milestones)}")
    if how is not None:
        log.print(f"{'resuming' if how == 'resume' else 'starting'} from {ckpt_from} at {run.cursor}")
    elif args.phase == CLASSIFIERS:
        log.print("no --checkpoint_path: training classifiers on a randomly initialised encoder (baseline)")
    log.print(f"writing {run.cpt_path}, TensorBoard events and metrics.jsonl in {os.path.dirname(run.cpt_path)}")


def report_epoch(run, epoch, means, acc):
    scores = {k: v for k, v in acc.items() if k != "n_images"}
    skipped = utils.all_reduce_sum([run.splits.skipped_images(), run.non_finite_skipped], run.dist.device)
    means = dict(means, skipped_images=int(skipped[0]), skipped_updates=int(skipped[1] / run.dist.world_size))
    run.log.scalars(f"{run.args.phase}/epoch", dict(means, **scores), epoch + 1)
    run.log.epoch_record(dict(phase=run.args.phase, epoch=epoch + 1, step=run.cursor[run.step_key], **means,
                              **acc))
    skips = "".join(f", {means[k]} {what} skipped" for k, what in
                    (("skipped_images", "unreadable images"), ("skipped_updates", "non-finite updates")) if means[k])
    run.log.print(f"epoch {epoch + 1}/{run.epochs}: loss {means['loss']:.4f}, test top-1 linear "
                  f"{acc['top1_linear']:.2f}% mlp {acc['top1_mlp']:.2f}% ({acc['n_images']} images), "
                  f"{means['img_per_s']:.1f} img/s{skips}")


def main(argv=None):
    args = parse_args(argv)
    return utils.launch(worker, args.device, args)


if __name__ == "__main__":
    run_main(main)
