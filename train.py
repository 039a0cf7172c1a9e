"""Train AMDIM: self-supervised encoder training with online classifiers, or (--classifiers) the evaluation
classifiers alone on a frozen encoder. One loop serves both phases.

    python train.py --dataset C10 --input_dir ./data                 # self-supervised
    python train.py --classifiers --checkpoint_path runs/default_run/amdim_cpt.pth --run_name c10_cls ...

Outputs land in <output_dir>/<run_name>/: the checkpoint <cpt_name> (and <cpt_name>.prev), TensorBoard event
files and metrics.jsonl. Re-running the same command resumes from that checkpoint.
"""
import argparse
import os
import random
import time

import numpy as np
import torch

import checkpoint
import costs
import datasets
import mixed_precision as mp
from model import last_width
from utils import Dist, Meters, RunLog, UserError, pick_device, run_main, seed_everything

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
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--log_every", type=int, default=50, help="updates between progress lines")
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
    """(checkpoint dict or None, how): how is "resume" (this run's own file), "init" (--checkpoint_path)."""
    if args.resume == "auto":
        for candidate in (cpt_path, cpt_path + ".prev"):
            if not os.path.isfile(candidate):
                continue
            ckpt = checkpoint.read(candidate)
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
    model = checkpoint.build_model(hp)
    model.load_state_dict(checkpoint.translate_state_dict(ckpt["model"], model))
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

def loss_terms(model, batch, args, tclip, dist):
    """Forward pass and every loss term (a dict of scalars) for one batch of the current phase."""
    x1, x2, y = (t.to(dist.device, non_blocking=True) for t in batch)
    if args.phase == SELF_SUPERVISED:
        with mp.autocast(dist.device, args.amp):
            out = model(x1, x2)
        with mp.float32(dist.device):
            f1 = [t.float() for t in out["x1"]]
            f2 = [t.float() for t in out["x2"]]
            n = x1.shape[0]
            locs1 = costs.sample_locations(n, device=dist.device)
            locs2 = costs.sample_locations(n, device=dist.device)
            terms = costs.infomax_costs(f1, f2, tclip, locs1, locs2)
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


def train_epoch(model, loader, optimizer, scaler, args, state, log, dist):
    """One pass over the training data; updates state["cursor"] per update. Returns the epoch's mean terms."""
    cur, ep_key, step_key = state["cursor"], state["epoch_key"], state["step_key"]
    epoch = cur[ep_key]
    set_train_mode(model, args)
    meters = Meters()
    t0, seen = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        lr = learning_rate(args, epoch, cur[step_key], state["epochs"], state["milestones"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms, (logits, labels) = loss_terms(model, batch, args, state["tclip"], dist)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        cur[step_key] += 1
        seen += labels.shape[0] if args.phase == CLASSIFIERS else labels.shape[0] // 2
        values = {k: v.item() for k, v in terms.items()}
        values["loss"] = loss.item()
        values.update(train_accuracy(logits, labels))
        meters.update(values)
        log.scalars(f"{args.phase}/train", dict(values, lr=lr), cur[step_key])
        if (i + 1) % args.log_every == 0:
            rate = seen / (time.perf_counter() - t0)
            log.print(f"epoch {epoch + 1} update {i + 1}/{len(loader)} loss {values['loss']:.4f} lr {lr:.2e} "
                      f"{rate:.1f} img/s")
    means = meters.means()
    means["img_per_s"] = seen / max(time.perf_counter() - t0, 1e-9)
    return means


def train_accuracy(logits, labels):
    labelled = labels >= 0
    if not labelled.any():
        return {}
    mlp, lin = logits
    return {"train_acc_mlp": 100.0 * (mlp[labelled].argmax(1) == labels[labelled]).float().mean().item(),
            "train_acc_lin": 100.0 * (lin[labelled].argmax(1) == labels[labelled]).float().mean().item()}


# ----------------------------------------------------------------------------------------------------------
# Evaluation (shared with test.py).

@torch.no_grad()
def refresh_bn(model, loader, device, amp, eval_encoder=False, n_batches=BN_REFRESH_BATCHES):
    """Re-estimate BatchNorm running statistics as the original did before testing: up to n_batches batches
    through encoder and classifiers in train mode, without gradients. Uses the first image of each item."""
    model.train()
    if eval_encoder:
        model.encoder.eval()
    for i, batch in enumerate(loader):
        if i == n_batches:
            break
        if batch[0].shape[0] < 2:  # train-mode BatchNorm needs 2 images
            continue
        with mp.autocast(device, amp):
            model(batch[0].to(device, non_blocking=True))


@torch.no_grad()
def evaluate(model, loader, device, amp):
    """Top-1 accuracy (percent) of both classifiers over every item of `loader` (items (x, y)), in eval mode.

    Returns {"n_images", "top1_mlp", "top1_linear"}."""
    model.eval()
    correct_mlp = correct_lin = total = 0
    for x, y in loader:
        y = y.to(device)
        with mp.autocast(device, amp):
            mlp, lin = model(x.to(device, non_blocking=True))["logits"]
        correct_mlp += (mlp.argmax(1) == y).sum().item()
        correct_lin += (lin.argmax(1) == y).sum().item()
        total += y.shape[0]
    return {"n_images": total, "top1_mlp": 100.0 * correct_mlp / max(total, 1),
            "top1_linear": 100.0 * correct_lin / max(total, 1)}


def make_loader(dataset, batch_size, num_workers, device, shuffle=False, drop_last=False, sampler=None):
    """A DataLoader whose workers are re-created each epoch: their seeds then follow the global torch RNG,
    which checkpoints restore, so a resumed run draws the same augmentations."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                       num_workers=num_workers, drop_last=drop_last,
                                       pin_memory=device.type == "cuda",
                                       persistent_workers=False)


def test_accuracy(model, splits, args, device, bn_source_loader):
    """The per-epoch test: BN refresh, then every test image scored once."""
    refresh_bn(model, bn_source_loader, device, args.amp, eval_encoder=args.eval_encoder)
    test_loader = make_loader(splits.test, args.batch_size, args.num_workers, device)
    return evaluate(model, test_loader, device, args.amp)


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

def main(argv=None):
    args = parse_args(argv)
    dist = Dist(device=pick_device(args.device))
    seed_everything(args.seed)

    run_dir = os.path.join(args.output_dir, args.run_name)
    cpt_path = os.path.join(run_dir, args.cpt_name)
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write_test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to {run_dir} ({e.strerror}); pass a writable --output_dir") from None

    ckpt, how, ckpt_from = find_start(args, cpt_path)
    if args.resume == "never" and os.path.isfile(cpt_path):
        print(f"--resume never: starting over; {cpt_path} is replaced at the first save", flush=True)

    encoder_size = datasets.encoder_size(args.dataset, args.image_size)
    splits = datasets.build_splits(args.dataset, args.input_dir, args.phase, image_size=args.image_size,
                                   aug=args.aug)
    model = build_model(args, ckpt, how, splits.n_classes, encoder_size)
    if args.phase == CLASSIFIERS:
        model.encoder.requires_grad_(False)
    model.to(dist.device)
    hp = model.hyperparams
    if hp["n_rkhs"] < last_width(hp["ndf"], hp["encoder_size"]):
        raise UserError(f"n_rkhs {hp['n_rkhs']} is smaller than the encoder's last width")

    cursor = checkpoint.cursor(ckpt) if ckpt is not None else checkpoint.cursor({})
    if how == "init" and args.phase == CLASSIFIERS:
        cursor.update(classifier_epoch=0, classifier_step=0)
    prefix = "info" if args.phase == SELF_SUPERVISED else "classifier"
    epochs, milestones = schedule(args, *default_schedule(args.phase, args.dataset))
    state = dict(cursor=cursor, epoch_key=f"{prefix}_epoch", step_key=f"{prefix}_step", epochs=epochs,
                 milestones=milestones, tclip=hp["tclip"])

    optimizer = make_optimizer(model, args.learning_rate)
    scaler = mp.grad_scaler(dist.device, args.amp)
    if how == "resume":
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])

    per_rank = args.batch_size // dist.world_size
    if len(splits.train) < args.batch_size:
        raise UserError(f"the {args.dataset} training split has {len(splits.train)} images, fewer than "
                        f"--batch_size {args.batch_size}; lower --batch_size")
    sampler = torch.utils.data.DistributedSampler(splits.train, num_replicas=dist.world_size, rank=dist.rank,
                                                  shuffle=True, seed=args.seed, drop_last=True)
    train_loader = make_loader(splits.train, per_rank, args.num_workers, dist.device, sampler=sampler,
                               drop_last=True)
    bn_loader = train_loader if args.bn_warmup == "train" else \
        make_loader(splits.test, per_rank, args.num_workers, dist.device)

    log = RunLog(run_dir, enabled=dist.is_main)
    n_params = sum(p.numel() for p in model.parameters())
    log.print(f"amdim {args.phase}: dataset {args.dataset} ({len(splits.train)} train / {len(splits.test)} "
              f"test images, {splits.n_classes} classes, {encoder_size} px), device {dist.device}, "
              f"world size {dist.world_size}, amp {args.amp}")
    log.print(f"model {hp} ({n_params / 1e6:.2f} M parameters); epochs {epochs}, milestones {list(milestones)}")
    if how is not None:
        log.print(f"{'resuming' if how == 'resume' else 'starting'} from {ckpt_from} at {cursor}")
    elif args.phase == CLASSIFIERS:
        log.print("no --checkpoint_path: training classifiers on a randomly initialised encoder (baseline)")
    log.print(f"writing {cpt_path} and TensorBoard/metrics.jsonl in {run_dir}")

    acc = None
    while cursor[state["epoch_key"]] < epochs:
        epoch = cursor[state["epoch_key"]]
        sampler.set_epoch(epoch)
        means = train_epoch(model, train_loader, optimizer, scaler, args, state, log, dist)
        acc = test_accuracy(model, splits, args, dist.device, bn_loader)
        cursor[state["epoch_key"]] = epoch + 1
        checkpoint.save({"model": model.state_dict(), "hyperparams": hp, "cursor": dict(cursor),
                         "phase": args.phase, "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "rng": rng_state(), "eval_encoder": args.eval_encoder,
                         "args": {k: v for k, v in vars(args).items() if v is None or
                                  isinstance(v, (bool, int, float, str))}}, cpt_path)
        log.scalars(f"{args.phase}/epoch", dict(means, **{k: v for k, v in acc.items() if k != "n_images"}),
                    epoch + 1)
        log.epoch_record(dict(phase=args.phase, epoch=epoch + 1, step=cursor[state["step_key"]], **means, **acc))
        log.print(f"epoch {epoch + 1}/{epochs}: loss {means['loss']:.4f}, test top-1 linear "
                  f"{acc['top1_linear']:.2f}% mlp {acc['top1_mlp']:.2f}% ({acc['n_images']} images), "
                  f"{means['img_per_s']:.1f} img/s")
    if acc is None:
        log.print(f"nothing to do: {cpt_path} already finished {epochs} epochs")
    log.close()
    return acc


if __name__ == "__main__":
    run_main(main)
