"""What a training run trains: the self-supervised phase (the method itself) or, with --classifiers, the evaluation
classifiers alone on the frozen encoder (or, with a fine-tuning protocol, with the encoder). train.py's one loop
calls either like a method, through the same hooks, and never asks which phase it runs.

Each phase class gives, before the model exists: name (what checkpoints record), the cursor's entries it advances
(epoch_key, step_key), seed_key (keeps the phases' random streams apart), views(hp) (an augment.ViewSpec), recipe(hp)
(its epochs and milestones), compiles (whether --compile auto may compile its step) and classifiers_restart(how)
(whether a start trains new classifiers, counted from epoch 0), schedule(hp, args, epochs, milestones,
updates_per_epoch) (the learning-rate multiplier at (epoch, update)). An instance, built on the model, gives what
the step needs: step_module (what DistributedDataParallel wraps and the step calls), forward, loss_terms
(compile_losses: compiled with the step), the method hooks, optimizer, classifier_loss (the evaluation
classifiers' loss, per head), eval_encoder (BatchNorm of the frozen encoder in eval mode), refresh_bn (whether the
per-epoch test re-estimates BatchNorm statistics first) and scratch_note.
"""
import itertools

import torch
import torch.nn as nn

import compiling
import costs
import protocols
from methods import METHODS

SELF_SUPERVISED, CLASSIFIERS = "self_supervised", "classifiers"


class SelfSupervised:
    """The method's own training: every parameter, on its views, with its recipe and hooks."""
    name, epoch_key, step_key, seed_key = SELF_SUPERVISED, "info_epoch", "info_step", 0
    compiles = True
    eval_encoder = False
    refresh_bn = True
    scratch_note = None
    classifier_loss = staticmethod(costs.classifier_loss)      # the online classifiers': AMDIM's

    @staticmethod
    def views(hp):
        return METHODS[hp["method"]].training_views(hp)

    @staticmethod
    def recipe(hp):
        return METHODS[hp["method"]].RECIPE

    @staticmethod
    def classifiers_restart(how):
        return False

    def __init__(self, model, args):
        self.model = model
        self._loss_terms = model.loss_terms

    def compile_losses(self, warn):
        """Compute loss_terms compiled from now on (with the step: train.wrap_step), its random draws (AMDIM's
        locations) by the eager kernels, from the same generator (fallback_random); where it cannot be traced
        (a collective, a torch.Generator) dynamo runs that part eagerly."""
        self._loss_terms = compiling.function(self.model.loss_terms, warn, options={"fallback_random": True})

    def step_module(self):
        return self.model

    def ddp_ignored_state(self):
        return self.model.ddp_ignored_state()

    def has_unused_parameters(self):
        return self.model.has_unused_parameters()

    def forward(self, step_model, views, dist):
        return step_model(views, dist)

    def loss_terms(self, out, dist):
        return self._loss_terms(out, dist)

    def start_update(self, epoch, update, dist, shared_seed=0):
        self.model.start_update(epoch, update, dist, shared_seed)

    def needs_prepare_pass(self):
        return self.model.needs_prepare_pass()

    def prepare(self, out, dist):
        self.model.prepare(out, dist)

    def before_optimizer_step(self, update):
        self.model.before_optimizer_step(update)

    def after_step(self, out, dist):
        self.model.after_step(out, dist)

    def optimizer(self, args):
        return self.model.optimizer(args)

    @staticmethod
    def schedule(hp, args, epochs, milestones, updates_per_epoch):
        return METHODS[hp["method"]].schedule(hp, args, epochs, milestones, updates_per_epoch)


class Classifiers:
    """--classifiers: the evaluation classifiers alone, on the frozen encoder's features, with an evaluation
    protocol (protocols.py; the model's hyperparams name it): by default AMDIM's, whichever method made the
    encoder, so that every method's evaluations compare; or a seed's (--protocol moco|swav|cmc), so that they
    compare with that paper's table. A fine-tuning protocol (--protocol semisup) trains the encoder too."""
    name, epoch_key, step_key, seed_key = CLASSIFIERS, "classifier_epoch", "classifier_step", 1
    compiles = False         # small heads on frozen features: compiling would not repay itself
    scratch_note = "no --checkpoint_path: training classifiers on a randomly initialised encoder (baseline)"

    @staticmethod
    def views(hp):
        return protocols.of(hp).views()

    @staticmethod
    def recipe(hp):
        return protocols.of(hp).recipe

    @staticmethod
    def classifiers_restart(how):
        """A start from another run's checkpoint (--checkpoint_path) trains new classifiers on its encoder."""
        return how == "init"

    def __init__(self, model, args):
        self.model = model
        self.protocol = protocols.of(model.hyperparams)
        self.eval_encoder = args.eval_encoder or self.protocol.eval_encoder
        self.refresh_bn = self.protocol.refresh_bn
        self.classifier_loss = self.protocol.loss
        model.requires_grad_(False)
        model.evaluator.requires_grad_(True)
        self._step_module = model.evaluator
        if self.protocol.finetune:
            for module in model.feature_modules():
                module.requires_grad_(True)
            self._step_module = FineTuned(model)

    def step_module(self):
        return self._step_module

    def ddp_ignored_state(self):
        """Fine-tuning: the method's state outside the encoder and head (a queue, memory banks) is not synced."""
        if not self.protocol.finetune:
            return []
        used = [*self.model.feature_modules(), self.model.evaluator]
        kept = {id(t) for m in used for t in itertools.chain(m.parameters(), m.buffers())}
        return [f"model.{name}" for name, t in itertools.chain(self.model.named_parameters(),
                                                               self.model.named_buffers()) if id(t) not in kept]

    def has_unused_parameters(self):
        return False

    def forward(self, step_model, views, dist):
        """views: (images (B, 3, S, S),) -> {"logits": the classifiers' logits, each (B, n_classes)}; the frozen
        encoder runs outside the step module, without a graph (fine-tuning: inside, with one)."""
        if self.protocol.finetune:
            return {"logits": step_model(views[0])}
        with torch.no_grad():
            features = self.model.features(views[0])
        return {"logits": step_model(features)}

    def compile_losses(self, warn):
        pass           # no loss of its own

    def loss_terms(self, out, dist):
        return {}      # the loop adds the classifiers' own terms, as in every phase

    def start_update(self, epoch, update, dist, shared_seed=0):
        pass

    @staticmethod
    def needs_prepare_pass():
        return False

    def before_optimizer_step(self, update):
        pass

    def after_step(self, out, dist):
        pass

    def optimizer(self, args):
        return self.protocol.optimizer(self.model, args)

    @staticmethod
    def schedule(hp, args, epochs, milestones, updates_per_epoch):
        return protocols.of(hp).schedule(args, epochs, milestones)


class FineTuned(nn.Module):
    """A method's encoder and evaluation classifier as one module, what DistributedDataParallel wraps when a
    protocol fine-tunes: images (B, 3, S, S) -> the classifier's logits, one (B, n_classes) per head."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.evaluator(self.model.features(x))


PHASES = {cls.name: cls for cls in (SelfSupervised, Classifiers)}
