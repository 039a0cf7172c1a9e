"""Optimisers and learning-rate schedules: each method's from its seed, and the classifier phase's, which every
method shares so that their evaluations compare.

    amdim  Adam (0.8, 0.999), weight decay 1e-5, lr 2e-4, linear warm-up over --warmup_updates (500), x0.2 at
           each milestone (the original code; one optimiser over encoder and online classifiers alike)
    moco   SGD momentum 0.9, weight decay 1e-4, lr 0.03 per 128 images of batch, x0.1 at epochs 120 and 160 of
           200, or --cos; the online classifiers train in a second parameter group (lr 0.1, no weight decay)
    cmc    SGD momentum 0.9, weight decay 1e-4, lr 0.03 (not scaled with the batch, as the seed), x0.1 at epochs
           250, 300 and 350 of 400 (the seed's commit; later versions: 120, 160, 200 of 240); the online
           classifiers in their own group (lr 0.1, no weight decay)
    swav   the seed's (facebookresearch/swav): SGD momentum 0.9 wrapped in LARC (trust coefficient 0.001, no
           clipping), weight decay --wd 1e-6, one parameter group over backbone, head and prototypes; per update,
           a linear warm-up over --warmup_epochs from --start_warmup to --base_lr (0.6), then a cosine down to
           --final_lr (0.0006) at the last update; 200 epochs. The online classifiers train in their own group
           without LARC (plain SGD, lr 0.1 following the same curve, no weight decay)
    --classifiers (every method): AMDIM's Adam over the classifiers alone, no warm-up, x0.2 at each milestone

The learning rate is a pure function of the training cursor (epoch, update), so a resumed run continues the
schedule exactly; default milestones scale with --epochs, and a short run never starts decayed (see schedule).
"""
import math
from dataclasses import dataclass

import torch

import larc
from utils import UserError

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
    # Rates and weight decay are the model's hyperparameters (--base_lr, --wd, ...: the seed's flags).
    "swav": Recipe("larc", None, decay=1.0, classifier_lr=0.1),
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
    if method == "swav":
        return 200, ()          # the seed's 200-epoch scripts; its schedule is per update (swav_lr)
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
    """--learning_rate, or the recipe's, scaled to --batch_size where the seed scales it (SwAV: its --base_lr
    hyperparameter instead, see make_optimizer)."""
    if args.learning_rate is not None:
        return args.learning_rate
    r = recipe(args.phase, method)
    return r.lr * (args.batch_size / r.lr_batch if r.lr_batch else 1.0)


def warmup_updates(args, method):
    if args.phase == CLASSIFIERS:
        return 0
    return recipe(args.phase, method).warmup_updates if args.warmup_updates is None else args.warmup_updates


def lr_factor(args, method, epoch, step, epochs, milestones, hp=None, updates_per_epoch=None):
    """The schedule's multiplier of the base learning rates at update `step` (counted over the whole run) of
    `epoch`: step decay at each milestone (or, with --cos, a cosine over the epochs), times the linear warm-up.
    SwAV's self-supervised phase: swav_lr relative to --base_lr, from the model's hyperparams hp and the
    updates of one epoch."""
    if method == "swav" and args.phase == SELF_SUPERVISED:
        return swav_lr(hp, step, epochs, updates_per_epoch) / hp["base_lr"]
    if getattr(args, "cos", False) and args.phase == SELF_SUPERVISED:
        factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    else:
        factor = recipe(args.phase, method).decay ** sum(epoch >= m for m in milestones)
    warmup = warmup_updates(args, method)
    if warmup > 0:
        factor *= min(1.0, (step + 1) / warmup)
    return factor


def swav_lr(hp, iteration, epochs, updates_per_epoch):
    """The seed's learning rate at 0-based update `iteration` of an `epochs` run of updates_per_epoch updates
    each: np.linspace(start_warmup, base_lr, W) (both ends included) over the W = warmup_epochs x
    updates_per_epoch first updates, then final_lr + (base_lr - final_lr) (1 + cos(pi t / T)) / 2 for the t-th of
    the T remaining ones (updates past the end, after a resume with a smaller batch, stay at t = T)."""
    start, base, final = hp["start_warmup"], hp["base_lr"], hp["final_lr"]
    warmup = hp["warmup_epochs"] * updates_per_epoch
    if iteration < warmup:
        # np.linspace's arithmetic: start + i * step, the last point exactly base.
        return base if iteration == warmup - 1 else start + iteration * ((base - start) / max(warmup - 1, 1))
    total = updates_per_epoch * (epochs - hp["warmup_epochs"])
    t = min(iteration - warmup, total)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t / max(total, 1)))


def check_flags(args, hp, epochs):
    """Refuse schedule flags that the run's recipe does not have: SwAV's schedule has its own (the seed's)."""
    if hp["method"] != "swav" or args.phase != SELF_SUPERVISED:
        return
    given = [flag for flag, value in (("--learning_rate", args.learning_rate), ("--warmup_updates",
             args.warmup_updates), ("--cos", args.cos or None)) if value is not None]
    if given:
        raise UserError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --method swav, whose "
                        f"learning rate follows --base_lr, --final_lr, --start_warmup and --warmup_epochs (the "
                        f"seed's warm-up and cosine per update): use those")
    if hp["warmup_epochs"] > epochs:
        raise UserError(f"--warmup_epochs {hp['warmup_epochs']} is longer than the run's {epochs} epochs: lower it "
                        f"or raise --epochs")


def describe_schedule(args, hp, milestones):
    """The schedule for the start-up line."""
    if hp["method"] == "swav" and args.phase == SELF_SUPERVISED:
        return (f"LR warm-up {hp['warmup_epochs']} epochs from {hp['start_warmup']:g} to {hp['base_lr']:g}, then "
                f"cosine per update to {hp['final_lr']:g} (LARC)")
    return f"LR milestones {list(milestones)}{' (cosine)' if getattr(args, 'cos', False) else ''}"


def make_optimizer(model, args):
    """The phase's optimiser over the model's trainable parameters; each group's "base_lr" is what lr_factor
    multiplies."""
    method = model.hyperparams["method"]
    r = recipe(args.phase, method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = base_lr(args, method) if r.lr is not None else None
    # fused on the CPU: one kernel over every tensor instead of a loop of small ops per parameter (the AMDIM
    # default config's Adam step took 0.67 s fused against 3.9 s unfused there). On CUDA torch's default is
    # already the multi-tensor (foreach) step, and fused SGD under fp16's GradScaler turned CMC's loss NaN from
    # update 3 on an H100 (torch 2.11; unfused trains), so CUDA keeps the default.
    fused = all(p.device.type == "cpu" for p in trainable)
    if r.optimizer == "adam":
        groups = [dict(params=trainable, base_lr=lr)]
        return torch.optim.Adam(groups, lr=lr, betas=(0.8, 0.999), weight_decay=r.weight_decay, eps=1e-8,
                                fused=fused)
    classifier = {id(p) for p in model.evaluator.parameters()}
    if r.optimizer == "larc":
        # The seed's single LARC group; the online classifiers (on detached features, not in the seed) step as
        # plain SGD: LARC would hold each step to 1e-3 of the weights' norm, too slow for freshly drawn ones.
        hp = model.hyperparams
        groups = [dict(params=[p for p in trainable if id(p) not in classifier], base_lr=hp["base_lr"]),
                  dict(params=[p for p in trainable if id(p) in classifier], base_lr=r.classifier_lr,
                       weight_decay=0.0, larc=False)]
        return larc.LARC([g for g in groups if g["params"]], lr=hp["base_lr"], momentum=0.9,
                         weight_decay=hp["wd"], trust_coefficient=0.001)
    groups = [dict(params=[p for p in trainable if id(p) not in classifier], base_lr=lr),
              dict(params=[p for p in trainable if id(p) in classifier], base_lr=r.classifier_lr, weight_decay=0.0)]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=0.9, weight_decay=r.weight_decay,
                           fused=fused)


def set_learning_rates(optimizer, factor):
    """Every group's lr = its base_lr * factor; returns the first group's (the one progress lines show)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
