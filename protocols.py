"""Linear evaluation protocols: how each seed paper scores a frozen encoder, so that an encoder trained here can be
compared with that paper's table (train.py --classifiers --protocol NAME; test.py reports which one a checkpoint
used).

    amdim  AMDIM's (the default): an MLP and a linear classifier on one AMDIM view, Adam 2e-4, tanh-clipped
           cross-entropy (recipes.CLASSIFIER_RECIPE), the encoder's BatchNorm in train mode unless --eval_encoder
    moco   SsnL/moco_align_uniform main_lincls.py: SGD lr 30, momentum 0.9, weight decay 0, 100 epochs, x0.1 at
           epochs 60 and 80
    swav   facebookresearch/swav eval_linear.py: SGD lr 0.3, momentum 0.9, weight decay 1e-6, no nesterov, cosine
           to 0 over 100 epochs (stepped per epoch)
    cmc    HobbitLong/CMC LinearProbing.py: SGD lr 30 (the README's rate for ResNets probed at their pooled
           layer 6), momentum 0.9, weight decay 0, 60 epochs, x0.2 at epochs 30, 40 and 50
    semisup  facebookresearch/swav eval_semisup.py, fine-tuning rather than a probe: the whole encoder trains
           with a fresh linear head (model.FineTuneHead), SGD momentum 0.9, weight decay 0, lr 0.01 for the
           encoder and 0.2 for the head, 20 epochs, x0.2 at epochs 12 and 16; BatchNorm in train mode while
           training, and its running statistics, not a refresh, at test time (the seed's validate). It is meant
           for a labelled fraction of the training split: train.py --labels_file / --label_fraction.

The seeds' linear protocols share the rest: a linear layer on the encoder's pooled features (model.LinearProbe: weights
N(0, 0.01^2), bias 0; MoCo's fc, SwAV's RegLog with global pooling, CMC's classifier at layer 6, which reads
cat(L, ab)), plain cross-entropy, the frozen encoder in eval mode (BatchNorm keeps the checkpoint's statistics),
rates not scaled with the batch (the seeds' 256), and as training view a RandomResizedCrop to the encoder's input
size (area 0.08-1, CMC's --crop_low 0.2-1; aspect 3/4-4/3, bilinear) and a horizontal flip, no colour
augmentation, normalised as in training. Every protocol is scored on the dataset's test split as prepared for
all of them (augment.test_transform), so their numbers compare: at 128 px a bicubic resize to 146 px and a
128 px centre crop (the seeds' 256 -> 224, ratio 8/7), at 64 px 70 -> 64, at 32 px the images as they are.
"""
from dataclasses import dataclass

import costs
import recipes
from augment import PROBE_SCALE, ViewSpec
from model import Evaluator, FineTuneHead, LinearProbe
from utils import UserError


@dataclass(frozen=True)
class Protocol:
    """One seed's evaluation: its recipe (optimiser, rate, weight decay, epochs, step milestones and decay),
    whether the rate follows a per-epoch cosine instead, nesterov momentum, its training view (a ViewSpec: by
    default the seeds' crop and flip, augment's "probe"), whether the frozen encoder runs in eval mode, the
    classifiers' loss and class (model.py: built as evaluator(n_features, n_classes)); and for fine-tuning
    (finetune: the encoder trains too) the head's rate, and whether BatchNorm statistics are refreshed before
    each test (refresh_bn)."""
    name: str
    recipe: recipes.Recipe
    cosine: bool = False
    nesterov: bool = False
    view: ViewSpec = ViewSpec("probe", {"scale": PROBE_SCALE}, count=1)
    eval_encoder: bool = True
    loss: object = costs.probe_loss
    evaluator: type = LinearProbe
    finetune: bool = False
    head_lr: float = None
    refresh_bn: bool = True

    def views(self):
        return self.view

    def optimizer(self, model, args):
        """Its optimiser at its rate (or --learning_rate): over the evaluation classifiers alone, or when it
        fine-tunes, over the encoder and (in a group of its own, at head_lr, which --learning_rate scales alike)
        the head."""
        lr = self.recipe.base_lr(args)
        if self.recipe.optimizer == "adam":
            return recipes.make_optimizer(model, self.recipe, lr)
        groups = [dict(params=list(model.evaluator.parameters()), base_lr=lr)]
        if self.finetune:
            trunk = [p for m in model.feature_modules() for p in m.parameters()]
            head_lr = self.head_lr * lr / self.recipe.lr
            groups = [dict(params=trunk, base_lr=lr), dict(params=groups[0]["params"], base_lr=head_lr, lr=head_lr)]
        return recipes.make_sgd(groups, lr, self.recipe.weight_decay, self.nesterov)

    def schedule(self, args, epochs, milestones):
        """The rate's multiplier at (epoch, update): step decay at the milestones, or the cosine."""
        if self.cosine and args.lr_decay_epochs is not None:
            raise UserError(f"--lr_decay_epochs and --protocol {self.name}: its schedule is a cosine, which has no "
                            f"decay epochs; drop --lr_decay_epochs")
        return recipes.StepSchedule(epochs, milestones, self.recipe.decay, cosine=self.cosine)


PROTOCOLS = {p.name: p for p in (
    Protocol("amdim", recipes.CLASSIFIER_RECIPE, view=ViewSpec("amdim", count=1), eval_encoder=False,
             loss=costs.classifier_loss, evaluator=Evaluator),
    Protocol("moco", recipes.Recipe("sgd", 30.0, decay=0.1, epochs=100, milestones=(60, 80))),
    Protocol("swav", recipes.Recipe("sgd", 0.3, weight_decay=1e-6, epochs=100), cosine=True),
    Protocol("cmc", recipes.Recipe("sgd", 30.0, decay=0.2, epochs=60, milestones=(30, 40, 50)),
             view=ViewSpec("probe", {"scale": (0.2, 1.0)}, count=1)),      # LinearProbing.py's --crop_low 0.2
    Protocol("semisup", recipes.Recipe("sgd", 0.01, decay=0.2, epochs=20, milestones=(12, 16)), eval_encoder=False,
             evaluator=FineTuneHead, finetune=True, head_lr=0.2, refresh_bn=False),
)}


def of(hp):
    """The Protocol a model's hyperparams name (AMDIM's when they name none: every self-supervised run)."""
    return PROTOCOLS[hp.get("protocol", "amdim")]
