"""Optimisers and learning-rate schedules: the pieces each method's recipe is made of (the method declares its seed's
Recipe and which pieces it uses, methods.py) and the classifier phase's recipe, which every method shares so that
their evaluations compare (AMDIM's Adam over the classifiers alone, no warm-up, x0.2 at each milestone).

A schedule is built once per run and is a pure function of the training cursor (epoch, update), so a resumed run
continues it exactly; default milestones scale with --epochs, and a short run never starts decayed
(Recipe.epochs_and_milestones).
"""
import math
from dataclasses import dataclass

import torch

import larc
from utils import UserError


@dataclass(frozen=True)
class Recipe:
    """A seed's optimiser and schedule defaults."""
    optimizer: str             # "adam", "sgd" or "larc"
    lr: float                  # base learning rate, at batch size lr_batch (None: the method's hyperparameters)
    lr_batch: int = None       # scale lr linearly with --batch_size / lr_batch (None: no scaling)
    decay: float = 0.2         # factor at each milestone
    warmup_updates: int = 0    # default linear warm-up length
    weight_decay: float = 0.0
    classifier_lr: float = None  # SGD recipes: the online classifiers' own parameter group
    epochs: int = None         # the seed's run length ...
    milestones: tuple = ()     # ... and its decay epochs
    by_dataset: tuple = ()     # (dataset, epochs, milestones) where the seed's run differs by dataset

    def default_schedule(self, dataset):
        """(epochs, LR milestones) of the seed's run on `dataset`."""
        for name, epochs, milestones in self.by_dataset:
            if name == dataset:
                return epochs, milestones
        return self.epochs, self.milestones

    def epochs_and_milestones(self, dataset, epochs=None, decay_epochs=None):
        """(epochs, milestones) for a run: `epochs` (--epochs) or the default, with `decay_epochs`
        (--lr_decay_epochs: increasing, each inside the run, else a UserError) or the default milestones scaled
        to it.

        A scaled milestone is rounded to a whole epoch and kept only where it can act inside the run: epoch 0
        always trains at the base learning rate (a milestone at 0 would start a short run decayed), so one rounding
        to 0 moves to epoch 1; one at or after the last epoch would never apply and is dropped, so the start-up
        line lists only real decays. Two that round to the same epoch count once: a double decay in one step is a
        step the seed never takes. A 1-epoch run therefore has no milestones."""
        default_epochs, default_milestones = self.default_schedule(dataset)
        epochs = epochs or default_epochs
        if decay_epochs is not None:
            late = [e for e in decay_epochs if e >= epochs]
            if late:
                raise UserError(f"--lr_decay_epochs {','.join(map(str, decay_epochs))}: {late[0]} is not inside the "
                                f"run's {epochs} epochs (a decay must come at epoch 1..{epochs - 1}): lower it or "
                                f"raise --epochs")
            return epochs, tuple(decay_epochs)
        scaled = {max(1, round(m * epochs / default_epochs)) for m in default_milestones}
        return epochs, tuple(sorted(m for m in scaled if m < epochs))

    def base_lr(self, args):
        """--learning_rate, or the recipe's, scaled to --batch_size where the seed scales it (None where the
        method's hyperparameters give it)."""
        if args.learning_rate is not None:
            return args.learning_rate
        if self.lr is None:
            return None
        return self.lr * (args.batch_size / self.lr_batch if self.lr_batch else 1.0)

    def warmup(self, args):
        """--warmup_updates, or the recipe's."""
        return self.warmup_updates if args.warmup_updates is None else args.warmup_updates


CLASSIFIER_RECIPE = Recipe("adam", 2e-4, decay=0.2, weight_decay=1e-5, epochs=120, milestones=(80, 110),
                           by_dataset=(("IN128", 30, (15, 25)), ("PLACES205", 15, (7, 12))))


class StepSchedule:
    """Step decay: x decay at each milestone epoch (or, cosine, a cosine over the epochs), times a linear warm-up
    over the first `warmup_updates` updates of the run."""

    def __init__(self, epochs, milestones, decay, warmup_updates=0, cosine=False):
        self.epochs, self.milestones, self.decay = epochs, tuple(milestones), decay
        self.warmup_updates, self.cosine = warmup_updates, cosine

    def __call__(self, epoch, update):
        """The multiplier of every group's base_lr at update `update` (counted over the whole run) of `epoch`."""
        if self.cosine:
            factor = 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        else:
            factor = self.decay ** sum(epoch >= m for m in self.milestones)
        if self.warmup_updates > 0:
            factor *= min(1.0, (update + 1) / self.warmup_updates)
        return factor

    def describe(self):
        return f"LR milestones {list(self.milestones)}{' (cosine)' if self.cosine else ''}"


class WarmupCosine:
    """The SwAV seed's per-update schedule over an `epochs` run of updates_per_epoch updates each: the learning
    rate follows np.linspace(start, base, W) (both ends included) over the W = warmup_epochs x updates_per_epoch
    first updates, then final + (base - final) (1 + cos(pi t / T)) / 2 for the t-th of the T remaining ones
    (updates past the end, after a resume with a smaller batch, stay at t = T). As a multiplier: of base."""
    warmup_updates = 0       # --warmup_updates does not apply; the warm-up is warmup_epochs'

    def __init__(self, start, base, final, warmup_epochs, epochs, updates_per_epoch):
        self.start, self.base, self.final = start, base, final
        self.warmup_epochs, self.epochs, self.updates_per_epoch = warmup_epochs, epochs, updates_per_epoch

    def lr(self, update):
        """The learning rate at 0-based update `update`."""
        start, base, final = self.start, self.base, self.final
        warmup = self.warmup_epochs * self.updates_per_epoch
        if update < warmup:
            # np.linspace's arithmetic: start + i * step, the last point exactly base.
            return base if update == warmup - 1 else start + update * ((base - start) / max(warmup - 1, 1))
        total = self.updates_per_epoch * (self.epochs - self.warmup_epochs)
        t = min(update - warmup, total)
        return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t / max(total, 1)))

    def __call__(self, epoch, update):
        return self.lr(update) / self.base

    def describe(self):
        return (f"LR warm-up {self.warmup_epochs} epochs from {self.start:g} to {self.base:g}, then cosine per "
                f"update to {self.final:g} (LARC)")


def _fused(params):
    """torch's fused step wherever it exists (CPU and CUDA): one kernel over every tensor instead of a loop of
    small ops per parameter, and a `found_inf` flag that skips the step on the device (mixed_precision.step)."""
    return all(p.device.type in ("cpu", "cuda") for p in params)


def zero_momentum(optimizer):
    """Give every parameter of an SGD optimizer (LARC included) that has none a momentum buffer of zeros; returns
    the optimizer. The first step then computes 0.9 * 0 + g = g, exactly torch's first step, but a step that the
    device skips (found_inf) leaves zeros where fused SGD would leave the uninitialised buffers it allocates for
    a first step; and fused SGD needs every buffer once any exists (SwAV's prototypes, frozen at first, and
    checkpoints saved while they were). Other optimizers are left as they are."""
    if not isinstance(optimizer, torch.optim.SGD):
        return optimizer
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))
    return optimizer


def _split_classifiers(model, trainable):
    """(the model's trainable parameters but the online classifiers', the classifiers')."""
    classifier = {id(p) for p in model.evaluator.parameters()}
    return [p for p in trainable if id(p) not in classifier], [p for p in trainable if id(p) in classifier]


def make_optimizer(model, recipe, lr):
    """An Adam or SGD recipe's optimiser over the model's trainable parameters at base learning rate `lr`; SGD
    trains the online classifiers in a group of their own (recipe.classifier_lr, no weight decay). Each group's
    "base_lr" is what the schedule's factor multiplies."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        groups = [dict(params=trainable, base_lr=lr)]
        return torch.optim.Adam(groups, lr=lr, betas=(0.8, 0.999), weight_decay=recipe.weight_decay, eps=1e-8,
                                fused=_fused(trainable))
    rest, classifiers = _split_classifiers(model, trainable)
    groups = [dict(params=rest, base_lr=lr),
              dict(params=classifiers, base_lr=recipe.classifier_lr, weight_decay=0.0)]
    return make_sgd([g for g in groups if g["params"]], lr, recipe.weight_decay)


def make_sgd(groups, lr, weight_decay, nesterov=False):
    """SGD with momentum 0.9 over parameter groups (each with its "base_lr"), fused where it can be, its momentum
    buffers at zero (zero_momentum)."""
    params = [p for g in groups for p in g["params"]]
    return zero_momentum(torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov,
                                         fused=_fused(params)))


def make_larc(model, lr, weight_decay, classifier_lr):
    """SGD momentum 0.9 in LARC (trust coefficient 0.001, no clipping) over the model's trainable parameters; the
    online classifiers step as plain SGD in a group of their own (classifier_lr, no weight decay): LARC would hold
    each step to 1e-3 of the weights' norm, too slow for freshly drawn ones."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    rest, classifiers = _split_classifiers(model, trainable)
    groups = [dict(params=rest, base_lr=lr),
              dict(params=classifiers, base_lr=classifier_lr, weight_decay=0.0, larc=False)]
    return zero_momentum(larc.LARC([g for g in groups if g["params"]], lr=lr, momentum=0.9,
                                    weight_decay=weight_decay, trust_coefficient=0.001, fused=_fused(trainable)))


def set_learning_rates(optimizer, factor):
    """Every group's lr = its base_lr * factor; returns the first group's (the one progress lines show)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
