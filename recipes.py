"""Optimisers and learning-rate schedules: each method's from its seed, and the classifier phase's, which every
method shares so that their evaluations compare.

    amdim  Adam (0.8, 0.999), weight decay 1e-5, lr 2e-4, linear warm-up over --warmup_updates (500), x0.2 at
           each milestone (the original code; one optimiser over encoder and online classifiers alike)
    moco   SGD momentum 0.9, weight decay 1e-4, lr 0.03 per 128 images of batch, x0.1 at epochs 120 and 160 of
           200, or --cos; the online classifiers train in a second parameter group (lr 0.1, no weight decay)
    cmc    SGD momentum 0.9, weight decay 1e-4, lr 0.03 (not scaled with the batch, as the seed), x0.1 at epochs
           250, 300 and 350 of 400 (the seed's commit; later versions: 120, 160, 200 of 240); the online
           classifiers in their own group (lr 0.1, no weight decay)
    --classifiers (every method): AMDIM's Adam over the classifiers alone, no warm-up, x0.2 at each milestone

The learning rate is a pure function of the training cursor (epoch, update), so a resumed run continues the
schedule exactly; default milestones scale with --epochs, and a short run never starts decayed (see schedule).
"""
import math
from dataclasses import dataclass

import torch

SELF_SUPERVISED, CLASSIFIERS = "self_supervised", "classifiers"


@dataclass(frozen=True)
class Recipe:
    optimizer: str             # "adam" or "sgd"
    lr: float                  # base learning rate, at batch size lr_batch
    lr_batch: int = None       # scale lr linearly with --batch_size / lr_batch (None: no scaling)
    decay: float = 0.2         # factor at each milestone
    warmup_updates: int = 0    # default linear warm-up length
    weight_decay: float = 0.0
    classifier_lr: float = None  # SGD recipes: the online classifiers' own parameter group


RECIPES = {
    "amdim": Recipe("adam", 2e-4, decay=0.2, warmup_updates=500, weight_decay=1e-5),
    "moco": Recipe("sgd", 0.03, lr_batch=128, decay=0.1, weight_decay=1e-4, classifier_lr=0.1),
    "cmc": Recipe("sgd", 0.03, decay=0.1, weight_decay=1e-4, classifier_lr=0.1),
}
CLASSIFIER_RECIPE = Recipe("adam", 2e-4, decay=0.2, weight_decay=1e-5)


def recipe(phase, method):
    return RECIPES[method] if phase == SELF_SUPERVISED else CLASSIFIER_RECIPE


def default_schedule(phase, method, dataset):
    """(epochs, LR milestones) of the seed's schedule."""
    if phase == CLASSIFIERS:
        return {"IN128": (30, (15, 25)), "PLACES205": (15, (7, 12))}.get(dataset, (120, (80, 110)))
    if method == "moco":
        return 200, (120, 160)
    if method == "cmc":
        return 400, (250, 300, 350)
    return (50, (30, 45)) if dataset in ("IN128", "PLACES205") else (300, (250, 280))


def schedule(args, method):
    """(epochs, milestones) for this run: --epochs or the default, with the default milestones scaled to it.

    A scaled milestone is rounded to a whole epoch and kept only where it can act inside the run: epoch 0 always
    trains at the base learning rate (a milestone at 0 would start a short run decayed: IN128 --classifiers
    --epochs 1 gave [0, 1] and began at 4e-5), so one rounding to 0 moves to epoch 1; one at or after the last
    epoch would never apply and is dropped, so the start-up line lists only real decays. Two that round to the
    same epoch count once: a double decay in one step (x0.04, or x0.01 for MoCo) is a step the seed never takes.
    A 1-epoch run therefore has no milestones."""
    default_epochs, default_milestones = default_schedule(args.phase, method, args.dataset)
    epochs = args.epochs or default_epochs
    scaled = {max(1, round(m * epochs / default_epochs)) for m in default_milestones}
    return epochs, tuple(sorted(m for m in scaled if m < epochs))


def base_lr(args, method):
    """--learning_rate, or the recipe's, scaled to --batch_size where the seed scales it."""
    if args.learning_rate is not None:
        return args.learning_rate
    r = recipe(args.phase, method)
    return r.lr * (args.batch_size / r.lr_batch if r.lr_batch else 1.0)


def warmup_updates(args, method):
    if args.phase == CLASSIFIERS:
        return 0
    return recipe(args.phase, method).warmup_updates if args.warmup_updates is None else args.warmup_updates


def lr_factor(args, method, epoch, step, epochs, milestones):
    """The schedule's multiplier of the base learning rates at update `step` (counted over the whole run) of
    `epoch`: step decay at each milestone (or, with --cos, a cosine over the epochs), times the linear warm-up."""
    if getattr(args, "cos", False) and args.phase == SELF_SUPERVISED:
        factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    else:
        factor = recipe(args.phase, method).decay ** sum(epoch >= m for m in milestones)
    warmup = warmup_updates(args, method)
    if warmup > 0:
        factor *= min(1.0, (step + 1) / warmup)
    return factor


def make_optimizer(model, args):
    """The phase's optimiser over the model's trainable parameters; each group's "base_lr" is what lr_factor
    multiplies."""
    method = model.hyperparams["method"]
    r = recipe(args.phase, method)
    lr = base_lr(args, method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over every tensor instead of a loop of small ops per parameter (CPU and CUDA; on the
    # CPU the AMDIM default config's Adam step took 0.67 s fused against 3.9 s unfused, /tmp/prof/opt.py).
    if r.optimizer == "adam":
        groups = [dict(params=trainable, base_lr=lr)]
        return torch.optim.Adam(groups, lr=lr, betas=(0.8, 0.999), weight_decay=r.weight_decay, eps=1e-8,
                                fused=True)
    classifier = {id(p) for p in model.evaluator.parameters()}
    groups = [dict(params=[p for p in trainable if id(p) not in classifier], base_lr=lr),
              dict(params=[p for p in trainable if id(p) in classifier], base_lr=r.classifier_lr, weight_decay=0.0)]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=0.9, weight_decay=r.weight_decay,
                           fused=True)


def set_learning_rates(optimizer, factor):
    """Every group's lr = its base_lr * factor; returns the first group's (the one progress lines show)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
