"""Self-supervised methods. Each is one nn.Module class that is the one place knowing its method: its networks and
state (momentum encoder, queue, memory bank: parameters and buffers, so checkpoints, DistributedDataParallel and
exact resume carry them as they are), its hyperparameters (PARAMS, checked by validate), its training views
(training_views), its recipe (RECIPE, optimizer, schedule), how a fresh model fits its data (fit_to_data) and its
hooks. A new method is one class here, its pure losses in costs.py, and one entry in METHODS.

The interface the training loop uses (train.py never asks which method it runs):
    forward(views, dist)      network outputs for a tuple of views (B, 3, S, S); out["logits"] holds the online
                              classifiers' (mlp, linear) logits on detached features of k views, (k*B, n_classes),
                              rows in view order, so the labels are the batch's repeated k times
    loss_terms(out, dist)     named scalar loss terms (the loop runs this in float32 and sums them); out["index"]
                              holds the batch's dataset indices (B,) on the device (CMC's memory bank needs them),
                              out["shared_seed"] an int that every process gets alike at this update
    after_step(out, dist)     state updates after each optimizer step (momentum update, queue push)
    start_update(epoch, update, dist, shared_seed)   called before each training update's forward with the
                              training cursor (0-based epoch, updates so far) and a seed every process shares:
                              state that follows the schedule (SwAV's prototype normalisation and queue start,
                              DeepCluster-v2's clustering); nothing by default
    needs_prepare_pass(), prepare(out, dist)   a pass over the first epoch's data before training, where the
                              method needs state from every image (DeepCluster-v2's memory); none by default
    before_optimizer_step(update)       called between backward and the optimizer step (SwAV's prototype freeze);
                              nothing by default
    optimizer(args), schedule(hp, args, epochs, milestones, updates_per_epoch)   the recipe, built once per run
    features(x)               (B, n_features) frozen features for the classifiers and kNN (at hyperparams'
                              probe_layer, where the method's backbones have layers to probe: probe_layers())
    classify(x)               the evaluation classifiers' logits, one per evaluator.heads entry
    evaluator                 the evaluation classifiers (its protocol's: model.Evaluator, LinearProbe, FineTuneHead)
    feature_modules()         the modules its features come from (what a fine-tuning protocol trains)
    hyperparams               the config dict that rebuilds the model (config.py)

`dist` (distributed.Dist) gives the collectives a method needs; in a single process they are identities.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import costs
import protocols
import recipes
from augment import MultiCrop, ViewSpec
from hparams import AT_LEAST_0, AT_LEAST_1, POSITIVE, Param, Range
from imageops import COLOUR_SPACES, to_colour_space
from model import AlexNetHalf, Encoder, GlobalEncoder, ResNetTrunk, bn_projection_head, projection_head
from utils import UserError


@dataclass(frozen=True)
class TrainingData:
    """What a fresh method may adapt its hyperparameters to (Method.fit_to_data): the training split's size, its
    normalisation ((mean r, g, b), (std r, g, b)) and the global batch size."""
    n_images: int
    mean_std: tuple
    batch_size: int


class Method(nn.Module):
    """What every method shares: hyperparams, the evaluation classifiers, the default recipe and hooks.

    Class-level knowledge (read without building the model): name, PARAMS (its own hyperparameters, besides the
    backbone's), DERIVED (hyperparameters fit_to_data fills in: name -> type), RECIPE (the seed's optimiser and
    schedule defaults), default_arch, validate, training_views, fit_to_data."""
    name = None
    PARAMS = ()
    DERIVED = {}
    RECIPE = None
    VIEW_KIND = None

    def __init__(self, hp):
        super().__init__()
        self.hyperparams = dict(hp)

    @staticmethod
    def default_arch(encoder_size):
        """The backbone when --arch is not given."""
        return "resnet50" if encoder_size >= 128 else "resnet18"

    @classmethod
    def validate(cls, hp):
        """Raise a UserError for a combination of this method's hyperparameters that cannot work (each value's
        own range is checked before, from PARAMS)."""

    @classmethod
    def training_views(cls, hp):
        """The ViewSpec of its self-supervised training."""
        return ViewSpec(cls.VIEW_KIND)

    @property
    def n_views(self):
        return self.training_views(self.hyperparams).count

    @staticmethod
    def fit_to_data(hp, data, note):
        """The hyperparameters of a fresh model of this method, adapted to its TrainingData `data` (a new dict;
        note(line) tells the user of any change); unchanged by default."""
        return dict(hp)

    def optimizer(self, args):
        """The optimiser of its self-supervised phase, from RECIPE and the run's flags."""
        return recipes.make_optimizer(self, self.RECIPE, self.RECIPE.base_lr(args))

    @classmethod
    def schedule(cls, hp, args, epochs, milestones, updates_per_epoch):
        """The learning-rate schedule of its self-supervised phase (recipes.StepSchedule from RECIPE: step decay at
        the milestones, or --cos, after a linear warm-up); a UserError for run flags it cannot take."""
        if args.cos and args.lr_decay_epochs is not None:
            raise UserError("--lr_decay_epochs and --cos: a cosine schedule has no decay epochs; drop one of them")
        r = cls.RECIPE
        return recipes.StepSchedule(epochs, milestones, r.decay, r.warmup(args), cosine=args.cos)

    def make_evaluator(self, n_classes):
        """The evaluation classifiers of the protocol its hyperparams name (protocols.py; set by --classifiers
        --protocol): AMDIM's online pair (model.Evaluator) by default, on its n_features features."""
        return protocols.of(self.hyperparams).evaluator(self.n_features, n_classes)

    def feature_modules(self):
        """The modules its features come from (what fine-tuning trains besides the evaluator)."""
        return [self.backbone.feature_layers()]

    @classmethod
    def probe_layers(cls, hp):
        """The layers its features may be read at (train.py --layer; CMC's LinearProbing.py numbers), the last
        the default; none to choose from by default."""
        return ()

    def reset_evaluator(self, n_classes, protocol=None, layer=None):
        """Fresh classifiers for a (possibly different) number of classes, e.g. ImageNet -> Places205, of an
        evaluation protocol (protocols.py; None: AMDIM's), reading the features at `layer` (None: the default)."""
        for key, value, default in (("protocol", protocol, "amdim"), ("probe_layer", layer, None)):
            self.hyperparams.pop(key, None)
            if value not in (None, default):
                self.hyperparams[key] = value
        self.evaluator = self.make_evaluator(n_classes)
        self.hyperparams["n_classes"] = n_classes

    def classify(self, x):
        """x: (B, 3, S, S) -> the evaluation classifiers' logits, each (B, n_classes), one per evaluator.heads
        entry (AMDIM's (mlp, linear); a seed protocol's (linear,))."""
        return self.evaluator(self.features(x))

    def after_step(self, out, dist):
        """Called after each optimizer step with that step's outputs; nothing by default. In training,
        out["skipped"] is a bool tensor on the device, true where a non-finite loss skipped the step: state
        updates must then leave everything as it was, decided on the device (torch.where), never read."""

    def start_update(self, epoch, update, dist, shared_seed=0):
        """Called before each training update's forward (shared_seed: a seed every process gets alike at this
        update); nothing by default."""

    def needs_prepare_pass(self):
        """Whether training must begin with a pass over the first epoch's data (prepare): state built from every
        image before the first update (DeepCluster-v2's memory). False by default."""
        return False

    def prepare(self, out, dist):
        """One batch of the prepare pass: out is forward's output on it (no gradients) with out["index"]."""

    def before_optimizer_step(self, update):
        """Called after backward, before the optimizer step of update number `update` (0-based); nothing by
        default."""

    def ddp_ignored_state(self):
        """Names of parameters and buffers DistributedDataParallel should neither broadcast nor reduce."""
        return []

    def has_unused_parameters(self):
        """Whether some parameters get no gradient in training, so DDP must look for them each update: the AMDIM
        encoder as a plain backbone still holds its 5x5 and 7x7 heads, which only AMDIM's own costs use."""
        return any(isinstance(m, GlobalEncoder) for m in self.modules())


# The embedding width of CMC (each view's) and SwAV (the projection head's output): one flag, --feat_dim.
FEAT_DIM = Param("feat_dim", int, 128, "embedding width", allowed=AT_LEAST_1)


class AMDIM(Method):
    """Augmented Multiscale Deep InfoMax (Bachman et al. 2019): predict each view's local features (5x5, 7x7)
    from the other view's global (1x1) and local (5x5) features with NCE.

    Two views that share a flip go through the encoder in separate passes (BatchNorm keeps per-view statistics,
    as the original); the classifiers read both views' r1. State-dict keys match the original code's model.
    """
    name = VIEW_KIND = "amdim"
    PARAMS = (Param("tclip", float, 20.0, "NCE score soft clip", allowed=POSITIVE),)
    # The original code: Adam (0.8, 0.999), weight decay 1e-5, lr 2e-4, linear warm-up over 500 updates, x0.2 at
    # each milestone, one optimiser over encoder and online classifiers alike.
    RECIPE = recipes.Recipe("adam", 2e-4, decay=0.2, warmup_updates=500, weight_decay=1e-5, epochs=300,
                            milestones=(250, 280), by_dataset=(("IN128", 50, (30, 45)), ("PLACES205", 50, (30, 45))))

    @staticmethod
    def default_arch(encoder_size):
        return "amdim"

    @classmethod
    def validate(cls, hp):
        if hp["arch"] != "amdim":
            raise UserError(f"--method amdim needs --arch amdim: its costs compare the encoder's 1x1, 5x5 and 7x7 "
                            f"feature maps, which {hp['arch']} does not give; drop --arch or pick another --method")

    def __init__(self, hp):
        super().__init__(hp)
        self.encoder = Encoder(hp["ndf"], hp["n_rkhs"], hp["n_depth"], hp["encoder_size"], hp["use_bn"])
        self.encoder.init_weights()
        self.n_features = hp["n_rkhs"]
        self.evaluator = self.make_evaluator(hp["n_classes"])

    def forward(self, views, dist=None):
        """views: (x1, x2), each (B, 3, S, S) -> {"x1": (r1, r5, r7) of view 1, "x2": the same of view 2,
        "logits": classifier logits (2B, n_classes), rows [view 1; view 2]}."""
        x1, x2 = views
        f1, f2 = self.encoder(x1), self.encoder(x2)
        return {"x1": f1, "x2": f2, "logits": self.evaluator(torch.cat([f1[0], f2[0]]))}

    def loss_terms(self, out, dist):
        """The infomax costs 1t5, 1t7, 5t5 and lgt_reg; negatives come from every process's batch."""
        n = out["x1"][0].shape[0]
        device = out["x1"][0].device
        locs1 = costs.sample_locations(n, device=device)
        locs2 = costs.sample_locations(n, device=device)
        gather = dist.all_gather_autograd if dist is not None and dist.active else None
        offset = dist.rank * n if dist is not None else 0
        return costs.infomax_costs(out["x1"], out["x2"], self.hyperparams["tclip"], locs1, locs2, gather=gather,
                                   pos_offset=offset)

    def features(self, x):
        """x: (B, 3, S, S) -> r1 flattened, (B, n_rkhs)."""
        return self.encoder(x)[0].flatten(1)

    def feature_modules(self):
        return [self.encoder.feature_layers()]


def backbone_class(arch):
    """The backbone class make_backbone builds for `arch`."""
    return GlobalEncoder if arch == "amdim" else AlexNetHalf if arch == "alexnet_cmc" else ResNetTrunk


def make_backbone(hp, in_channels=3):
    """The backbone of a non-AMDIM method: image (B, in_channels, S, S) -> (B, width) features; .width gives
    width."""
    if hp["arch"] == "amdim":
        return GlobalEncoder(hp["ndf"], hp["n_rkhs"], hp["n_depth"], hp["encoder_size"], hp["use_bn"], in_channels)
    if hp["arch"] == "alexnet_cmc":
        return AlexNetHalf(in_channels, hp["encoder_size"])
    return ResNetTrunk(hp["arch"], hp["encoder_size"], in_channels)


class MoCo(Method):
    """Momentum Contrast (He et al. 2020) trained with the alignment and uniformity losses (Wang & Isola 2020)
    and, optionally, MoCo's contrastive loss.

    The query view goes through the backbone and a projection head; the key view through momentum copies of both
    (no gradients). Embeddings are L2-normalised. The queue holds the keys of the last moco_k images of every
    process, newest overwriting oldest.
    """
    name = "moco"
    # The seed's flags keep their hyphenated spellings (underscores work too). Temperatures and exponents scale
    # scores: positive. Loss weights may be 0 (that loss off). Momentum 1 would keep the key encoder at its initial
    # weights forever.
    PARAMS = (
        Param("moco_dim", int, 128, "embedding width", hyphenated=True, allowed=AT_LEAST_1),
        Param("moco_k", int, 65536, "queue length: negative keys (capped at the training split's size)",
              hyphenated=True, allowed=AT_LEAST_1),
        Param("moco_m", float, 0.999, "key encoder momentum", hyphenated=True,
              allowed=Range(minimum=0, below=1, why="1 never updates the key encoder")),
        Param("mlp", bool, False, "MLP projection head (MoCo v2)", switch=True),
        Param("aug_plus", bool, False, "MoCo v2 augmentation (blur, weaker hue jitter)", hyphenated=True,
              switch=True),
        Param("moco_align_w", float, 3.0, "weight of the alignment loss", hyphenated=True, allowed=AT_LEAST_0),
        Param("moco_align_alpha", float, 2.0, "alignment exponent alpha", hyphenated=True, allowed=POSITIVE),
        Param("moco_unif_w", float, 1.0, "weight of the uniformity loss", hyphenated=True, allowed=AT_LEAST_0),
        Param("moco_unif_t", float, 3.0, "uniformity temperature t", hyphenated=True, allowed=POSITIVE),
        Param("moco_unif_no_intra_batch", bool, False, "uniformity over query-queue pairs only", hyphenated=True,
              switch=True),
        Param("moco_contr_w", float, 0.0, "weight of the contrastive (InfoNCE) loss", hyphenated=True,
              allowed=AT_LEAST_0),
        Param("moco_contr_tau", float, 0.07, "contrastive temperature", hyphenated=True, allowed=POSITIVE),
    )
    # The seed's: SGD momentum 0.9, weight decay 1e-4, lr 0.03 per 128 images of batch, x0.1 at epochs 120 and 160
    # of 200, or --cos; the online classifiers train in a second parameter group (lr 0.1, no weight decay).
    RECIPE = recipes.Recipe("sgd", 0.03, lr_batch=128, decay=0.1, weight_decay=1e-4, classifier_lr=0.1, epochs=200,
                            milestones=(120, 160))

    @classmethod
    def validate(cls, hp):
        if hp["moco_align_w"] == hp["moco_unif_w"] == hp["moco_contr_w"] == 0:
            raise UserError("every MoCo loss weight is 0: give --moco-align-w, --moco-unif-w or --moco-contr-w a "
                            "positive value")

    @classmethod
    def training_views(cls, hp):
        return ViewSpec("moco_v2" if hp["aug_plus"] else "moco_v1")

    def __init__(self, hp):
        super().__init__(hp)
        self.backbone = make_backbone(hp)
        self.n_features = self.backbone.width
        self.head = projection_head(self.n_features, hp["moco_dim"], hidden=hp["mlp"])
        # The key encoder starts as an exact copy and only ever moves by the momentum update.
        self.backbone_k = copy.deepcopy(self.backbone).requires_grad_(False)
        self.head_k = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(hp["moco_k"], hp["moco_dim"]), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.evaluator = self.make_evaluator(hp["n_classes"])

    @staticmethod
    def fit_to_data(hp, data, note):
        """A queue no longer than the training split: more keys than images would repeat them."""
        if hp["moco_k"] <= data.n_images:
            return dict(hp)
        note(f"note: --moco-k {hp['moco_k']} is larger than the {data.n_images}-image training split; the queue is "
             f"capped at {data.n_images} keys")
        return dict(hp, moco_k=data.n_images)

    def forward(self, views, dist=None):
        """views: (query images, key images), each (B, 3, S, S) -> {"q": (B, moco_dim), "k": (B, moco_dim) unit
        rows, "logits": classifier logits on the query view's features (B, n_classes)}."""
        x_q, x_k = views
        h = self.backbone(x_q)
        q = F.normalize(self.head(h), dim=1)
        with torch.no_grad():
            # Shuffling BN: the key encoder's BatchNorm sees a random mix of every process's images, so its batch
            # statistics cannot give away which key belongs to which query. One process: a no-op.
            x_k, undo = dist.shuffle(x_k) if dist is not None else (x_k, None)
            k = F.normalize(self.head_k(self.backbone_k(x_k)), dim=1)
            k = dist.unshuffle(k, undo) if dist is not None else k
        return {"q": q, "k": k, "logits": self.evaluator(h)}

    def loss_terms(self, out, dist):
        """Weighted alignment, uniformity and contrastive terms (those with a non-zero weight)."""
        hp, q, k = self.hyperparams, out["q"], out["k"]
        queue = self.queue.detach()
        terms = {}
        if hp["moco_align_w"]:
            terms["align"] = hp["moco_align_w"] * costs.align_loss(q, k, hp["moco_align_alpha"])
        if hp["moco_unif_w"]:
            terms["uniform"] = hp["moco_unif_w"] * costs.uniform_loss(
                q, queue, hp["moco_unif_t"], intra_batch=not hp["moco_unif_no_intra_batch"])
        if hp["moco_contr_w"]:
            terms["contrastive"] = hp["moco_contr_w"] * costs.moco_contrastive_loss(q, k, queue,
                                                                                    hp["moco_contr_tau"])
        return terms

    @torch.no_grad()
    def after_step(self, out, dist):
        """Move the key encoder towards the query encoder, then push every process's keys into the queue."""
        m, skipped = self.hyperparams["moco_m"], out.get("skipped")
        online = list(self.backbone.parameters()) + list(self.head.parameters())
        momentum = list(self.backbone_k.parameters()) + list(self.head_k.parameters())
        if skipped is None:
            torch._foreach_lerp_(momentum, online, 1 - m)      # k = m k + (1 - m) q
        else:        # a skipped update moves nothing: lerp by 0 (a tensor weight per tensor, never read on the host)
            weight = torch.where(skipped, 0.0, 1 - m).to(online[0].dtype)
            torch._foreach_lerp_(momentum, online, [weight] * len(online))
        keys = dist.all_gather(out["k"].detach()) if dist is not None else out["k"].detach()
        self.push(keys.to(self.queue.dtype), skipped)

    def push(self, keys, skipped=None):
        """Write keys (n, moco_dim) at the queue pointer, wrapping around its end; keeps the newest moco_k.
        skipped: a bool tensor (0-dim), true for an update the device skipped, which pushes nothing."""
        size = self.queue.shape[0]
        keys = keys[-size:]
        n = keys.shape[0]
        # The pointer stays on the device (reading it would make the host wait for the GPU every update).
        rows = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        advance = n
        if skipped is not None:
            keys, advance = torch.where(skipped, self.queue[rows], keys), n * (~skipped).long()
        self.queue[rows] = keys
        self.queue_ptr.copy_((self.queue_ptr + advance) % size)

    def features(self, x):
        """x: (B, 3, S, S) -> the query backbone's features (B, width)."""
        return self.backbone(x)

    def ddp_ignored_state(self):
        # Every process pushes the same gathered keys, so the queues stay identical without a 32 MB broadcast
        # per step (DDP would otherwise broadcast rank 0's buffers before each forward).
        return ["queue", "queue_ptr"]


class CMC(Method):
    """Contrastive Multiview Coding (Tian, Krishnan & Isola 2019), the seed's (HobbitLong/CMC) memory-bank NCE
    between the L and ab channels of an image in Lab colour (or, view YCbCr, the seed's other split: Y and CbCr;
    the names below say L and ab for either).

    One backbone per view (1 and 2 input channels), each followed by a linear map to feat_dim and L2
    normalisation. Each view has a memory bank, n_data x feat_dim, one row per training image (rows start uniform
    in +-1/sqrt(feat_dim/3)): the L features are scored against the ab bank's rows and the ab features against
    the L bank's, the sample's own row the positive and nce_k rows drawn uniformly (with replacement) the
    negatives. After the optimizer step each sample's rows move towards its features (costs.memory_update). The
    banks and the NCE normalisation constants z_l, z_ab (set at the first update) are buffers, so checkpoints
    and exact resume carry them; every process applies the same gathered update to its whole bank.

    The evaluation classifiers and kNN read cat(L backbone, ab backbone) pooled features of RGB images, which
    features() converts to Lab: x arrives normalised by the training data's rgb_mean/rgb_std (hyperparams).
    """
    name = "cmc"
    # The seed's (HobbitLong/CMC) spellings. nce_m 1 would never move the memory bank.
    PARAMS = (
        FEAT_DIM,
        Param("nce_k", int, 4096, "negatives per sample, drawn from the memory bank", allowed=AT_LEAST_1),
        Param("nce_t", float, 0.07, "temperature of the scores (the seed uses 0.1 on STL10)", allowed=POSITIVE),
        Param("nce_m", float, 0.5, "memory bank momentum",
              allowed=Range(minimum=0, below=1, why="1 never updates the memory bank")),
        Param("softmax", bool, False, "cross-entropy over [positive, negatives] instead of NCE", switch=True),
        Param("crop_low", float, 0.2, "RandomResizedCrop's smallest area fraction (the seed's 0.08 is for 224 px)",
              allowed=Range(above=0, maximum=1)),
        Param("view", str, "Lab", "the colour split into two views: Lab (L | ab) or YCbCr (Y | CbCr)",
              choices=COLOUR_SPACES, legacy="Lab"),
    )
    DERIVED = {"n_data": int, "rgb_mean": lambda v: [float(x) for x in v], "rgb_std": lambda v: [float(x) for x in v]}
    # The seed's: SGD momentum 0.9, weight decay 1e-4, lr 0.03 (not scaled with the batch), x0.1 at epochs 250, 300
    # and 350 of 400 (the seed's commit; later versions: 120, 160, 200 of 240); the online classifiers in their own
    # group (lr 0.1, no weight decay).
    RECIPE = recipes.Recipe("sgd", 0.03, decay=0.1, weight_decay=1e-4, classifier_lr=0.1, epochs=400,
                            milestones=(250, 300, 350))

    @classmethod
    def training_views(cls, hp):
        return ViewSpec("cmc", {"crop_low": hp["crop_low"], "colour": hp["view"]})

    def __init__(self, hp):
        super().__init__(hp)
        if hp.get("n_data", 0) < 1:
            raise ValueError("CMC needs n_data, the training split's size (one memory bank row per image)")
        self.backbone_l = make_backbone(hp, in_channels=1)
        self.backbone_ab = make_backbone(hp, in_channels=2)
        self.head_l = nn.Linear(self.backbone_l.width, hp["feat_dim"])
        self.head_ab = nn.Linear(self.backbone_ab.width, hp["feat_dim"])
        bound = 1.0 / (hp["feat_dim"] / 3) ** 0.5
        for name in ("memory_l", "memory_ab"):
            self.register_buffer(name, torch.rand(hp["n_data"], hp["feat_dim"]).mul_(2 * bound).sub_(bound))
        # NCE's normalisation constants; -1 until the first update sets them (the softmax loss never does).
        self.register_buffer("z_l", torch.full((), -1.0))
        self.register_buffer("z_ab", torch.full((), -1.0))
        self.register_buffer("rgb_mean", torch.tensor(hp["rgb_mean"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("rgb_std", torch.tensor(hp["rgb_std"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.evaluator = self.make_evaluator(hp["n_classes"])
        self._z_known = None        # whether z_l / z_ab are set, read from the buffers once per process

    @staticmethod
    def fit_to_data(hp, data, note):
        """One memory bank row per training image (n_data), and the data's RGB normalisation, which features()
        undoes before its Lab conversion."""
        mean, std = data.mean_std
        hp = dict(hp, n_data=data.n_images, rgb_mean=[float(v) for v in mean], rgb_std=[float(v) for v in std])
        if hp["nce_k"] >= hp["n_data"]:
            note(f"warning: --nce_k {hp['nce_k']} is at least the {hp['n_data']}-image training split: each "
                 f"sample's negatives repeat bank rows (and include its own)")
        return hp

    def forward(self, views, dist=None):
        """views: (L (B, 1, S, S), ab (B, 2, S, S)) -> {"l", "ab": (B, feat_dim) unit rows, "logits": classifier
        logits on cat(L, ab) backbone features (B, n_classes)}."""
        x_l, x_ab = views
        p_l, p_ab = self.backbone_l.probe(x_l), self.backbone_ab.probe(x_ab)       # what the classifiers read
        h_l, h_ab = self.backbone_l.top(p_l), self.backbone_ab.top(p_ab)
        return {"l": F.normalize(self.head_l(h_l), dim=1), "ab": F.normalize(self.head_ab(h_ab), dim=1),
                "logits": self.evaluator(torch.cat([p_l, p_ab], dim=1))}

    @property
    def n_features(self):
        layer = self.hyperparams.get("probe_layer")
        return self.backbone_l.probe_width(layer) + self.backbone_ab.probe_width(layer)

    @classmethod
    def probe_layers(cls, hp):
        return backbone_class(hp["arch"]).PROBE_LAYERS

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._z_known = None        # loaded constants: read them again before the next update

    def draw_indices(self, index, seed, dist=None):
        """index: (B,) this process's dataset indices -> (B, nce_k + 1) bank rows to score, column 0 the sample's
        own (the positive), the rest drawn uniformly with replacement. One draw serves both directions.

        The draw comes from a generator seeded with `seed`, which every process gets alike at an update (and a
        resumed run again): each process draws the global batch's (world x B, K + 1) matrix and keeps its own
        rows, rank, rank + world, ... as the sampler deals images, so W processes score what one process would
        on the whole batch."""
        world, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
        g = torch.Generator(device=index.device).manual_seed(seed)
        idx = torch.randint(0, self.hyperparams["n_data"], (world * index.shape[0], self.hyperparams["nce_k"] + 1),
                            generator=g, device=index.device)
        idx = idx[rank::world].contiguous()
        idx[:, 0] = index
        return idx

    def loss_terms(self, out, dist):
        """The L side (L features against the ab bank) and the ab side (ab features against the L bank), NCE or,
        with softmax, cross-entropy. out["index"]: the batch's dataset indices (B,), which the loop adds."""
        hp = self.hyperparams
        idx = self.draw_indices(out["index"], out["shared_seed"], dist)
        rows_ab, rows_l = self.memory_ab[idx].detach(), self.memory_l[idx].detach()     # (B, K + 1, feat_dim)
        if hp["softmax"]:
            logits_l = torch.einsum("bkd,bd->bk", rows_ab, out["l"]) / hp["nce_t"]
            logits_ab = torch.einsum("bkd,bd->bk", rows_l, out["ab"]) / hp["nce_t"]
            return {"cmc_l": costs.nce_softmax_loss(logits_l), "cmc_ab": costs.nce_softmax_loss(logits_ab)}
        scores_l = costs.cmc_scores(out["l"], rows_ab, hp["nce_t"])
        scores_ab = costs.cmc_scores(out["ab"], rows_l, hp["nce_t"])
        self.set_normalisers(scores_l, scores_ab, dist)
        return {"cmc_l": costs.cmc_nce_loss(scores_l / self.z_l, hp["n_data"]),
                "cmc_ab": costs.cmc_nce_loss(scores_ab / self.z_ab, hp["n_data"])}

    @torch.no_grad()
    def set_normalisers(self, scores_l, scores_ab, dist):
        """At the first update of the run only: Z = mean exp-score (all B x (K + 1), over every process) x N,
        a constant from then on (the seed's NCEAverage)."""
        if self._z_known is None:
            self._z_known = bool(self.z_l > 0)          # one host sync per process, also after a resume
        if self._z_known:
            return
        for z, scores in ((self.z_l, scores_l), (self.z_ab, scores_ab)):
            mean = scores.float().mean().view(1)
            mean = dist.all_gather(mean).mean() if dist is not None else mean[0]
            z.copy_(mean * self.hyperparams["n_data"])
        self._z_known = True

    @torch.no_grad()
    def after_step(self, out, dist):
        """Move every process's samples' bank rows towards their features (before this step's optimizer step):
        L bank <- L features, ab bank <- ab features."""
        index, f_l, f_ab = out["index"], out["l"].detach(), out["ab"].detach()
        if dist is not None:
            index, f_l, f_ab = dist.all_gather(index), dist.all_gather(f_l), dist.all_gather(f_ab)
        m, skipped = self.hyperparams["nce_m"], out.get("skipped")
        for bank, feats in ((self.memory_l, f_l), (self.memory_ab, f_ab)):
            rows = costs.memory_update(bank[index], feats.to(bank.dtype), m)
            bank[index] = rows if skipped is None else torch.where(skipped, bank[index], rows)

    def features(self, x):
        """x: RGB (B, 3, S, S) normalised by rgb_mean/rgb_std -> cat(L, ab backbone features) at probe_layer (B,
        n_features) (with view YCbCr: Y and CbCr)."""
        rgb = (x.float() * self.rgb_std + self.rgb_mean).clamp(0, 1)
        split = to_colour_space(rgb, self.hyperparams["view"]).to(x.dtype)
        layer = self.hyperparams.get("probe_layer")
        return torch.cat([self.backbone_l.probe(split[:, :1], layer), self.backbone_ab.probe(split[:, 1:], layer)],
                         dim=1)

    def feature_modules(self):
        return [self.backbone_l.feature_layers(), self.backbone_ab.feature_layers()]

    def ddp_ignored_state(self):
        # Every process applies the same gathered update, so banks and constants stay identical without DDP's
        # per-step broadcast of rank 0's buffers (2 x N x feat_dim floats).
        return ["memory_l", "memory_ab", "z_l", "z_ab"]


def multi_crop_defaults(encoder_size, arch):
    """SwAV's crops for a model built from scratch. The seed's ImageNet crops are 2 x 224 px (area 0.14-1) and
    6 x 96 px (0.05-0.14); here the large crops have the encoder's input size and the small ones half of it
    (32 px: 2 x 32 + 4 x 16; 64 px: 2 x 64 + 4 x 32; 128 px: 2 x 128 + 6 x 64), same area fractions. The AMDIM
    encoder takes only its own input size, so on it the default is the two large crops alone."""
    if arch == "amdim":
        return dict(nmb_crops=[2], size_crops=[encoder_size], min_scale_crops=[0.14], max_scale_crops=[1.0])
    return dict(nmb_crops=[2, 6 if encoder_size >= 128 else 4], size_crops=[encoder_size, encoder_size // 2],
                min_scale_crops=[0.14, 0.05], max_scale_crops=[1.0, 0.14])


def _crop_default(key):
    return lambda encoder_size, arch: multi_crop_defaults(encoder_size, arch)[key]


# The multi-crop flags SwAV and DeepCluster-v2 share (their seed's spellings; the crops' defaults scale with the
# image size: multi_crop_defaults).
CROP_PARAMS = (
    Param("nmb_crops", int, _crop_default("nmb_crops"), "crops of each kind, e.g. 2 4: two large, four small",
          many=True, allowed=AT_LEAST_1),
    Param("size_crops", int, _crop_default("size_crops"), "output size (px) of each crop kind", many=True,
          allowed=Range(minimum=4, why="the smallest size every backbone turns into features")),
    Param("min_scale_crops", float, _crop_default("min_scale_crops"),
          "RandomResizedCrop's smallest area fraction of each crop kind", many=True,
          allowed=Range(above=0, maximum=1)),
    Param("max_scale_crops", float, _crop_default("max_scale_crops"),
          "RandomResizedCrop's largest area fraction of each crop kind", many=True,
          allowed=Range(above=0, maximum=1)),
    Param("crops_for_assign", int, (0, 1), "crops (0-based, in crop order) whose codes (SwAV) or memory "
          "(DeepCluster-v2) the others predict",
          many=True, allowed=AT_LEAST_0),
)


class _MultiCropMethod(Method):
    """What the two trainers of the SwAV repository share (SwAV, DeepCluster-v2): multi-crop views through one
    backbone (one call per run of equal crop sizes: BatchNorm statistics per size), one projection head call on
    all crops together (its BatchNorm sees them all) and L2 normalisation; SGD in LARC with the per-update
    warm-up and cosine of the hyperparameters; prototypes frozen for the first freeze_prototypes_niters updates.
    The classifiers read the backbone features of the first crop kind's crops (the large ones), rows in crop
    order."""
    CROP_FLAGS = ("nmb_crops", "size_crops", "min_scale_crops", "max_scale_crops")
    # The seed's scripts: SGD momentum 0.9 wrapped in LARC (trust coefficient 0.001, no clipping), one parameter
    # group over backbone, head and prototypes; rates, weight decay and the per-update warm-up and cosine are
    # hyperparameters (--base_lr, --wd, ...: the seed's flags). The online classifiers train in their own group
    # without LARC (plain SGD, lr 0.1 following the same curve, no weight decay).
    RECIPE = recipes.Recipe("larc", None, decay=1.0, classifier_lr=0.1, epochs=200)

    @classmethod
    def training_views(cls, hp):
        return ViewSpec("swav", {"crops": MultiCrop.from_hyperparams(hp)}, sum(hp["nmb_crops"]))

    @classmethod
    def validate(cls, hp):
        """The crop lists: one entry per crop kind in each, area ranges that are ranges, at least two crops, the
        assigned crops among them, and sizes the backbone takes."""
        lengths = [len(hp[k]) for k in cls.CROP_FLAGS]
        if len(set(lengths)) > 1:
            raise UserError(f"--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need one value per "
                            f"crop kind each (got {', '.join(map(str, lengths))} values): give them the same length")
        for i, (low, high) in enumerate(zip(hp["min_scale_crops"], hp["max_scale_crops"])):
            if low > high:
                raise UserError(f"crop kind {i}: --min_scale_crops {low} is above --max_scale_crops {high}; swap "
                                f"them")
        n_crops = sum(hp["nmb_crops"])
        if n_crops < 2:
            raise UserError(f"--nmb_crops {' '.join(map(str, hp['nmb_crops']))} makes {n_crops} crop: {cls.name} "
                            f"predicts one crop's assignments from another, so give at least 2 crops")
        assign = hp["crops_for_assign"]
        if max(assign) >= n_crops or len(set(assign)) != len(assign):
            raise UserError(f"--crops_for_assign {' '.join(map(str, assign))} must name distinct crops "
                            f"0..{n_crops - 1} (--nmb_crops makes {n_crops}); pick crops from that range")
        if hp["arch"] == "amdim" and set(hp["size_crops"]) != {hp["encoder_size"]}:
            raise UserError(f"--arch amdim takes only {hp['encoder_size']} px inputs (its layers are fixed to the "
                            f"image size), not --size_crops {' '.join(map(str, hp['size_crops']))}: give every crop "
                            f"size {hp['encoder_size']}, or use --arch resnet18/resnet50 for smaller crops")

    def optimizer(self, args):
        """The seed's single LARC group; the online classifiers (on detached features, not in the seed) step as
        plain SGD (recipes.make_larc)."""
        hp = self.hyperparams
        return recipes.make_larc(self, hp["base_lr"], hp["wd"], self.RECIPE.classifier_lr)

    @classmethod
    def schedule(cls, hp, args, epochs, milestones, updates_per_epoch):
        """The seed's per-update warm-up and cosine (recipes.WarmupCosine), from the hyperparameters; the run's
        own schedule flags do not apply."""
        given = [flag for flag, value in (("--learning_rate", args.learning_rate), ("--warmup_updates",
                 args.warmup_updates), ("--cos", args.cos or None), ("--lr_decay_epochs", args.lr_decay_epochs))
                 if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --method "
                            f"{cls.name}, whose learning rate follows --base_lr, --final_lr, --start_warmup and "
                            f"--warmup_epochs (the seed's warm-up and cosine per update): use those")
        if hp["warmup_epochs"] > epochs:
            raise UserError(f"--warmup_epochs {hp['warmup_epochs']} is longer than the run's {epochs} epochs: lower "
                            f"it or raise --epochs")
        return recipes.WarmupCosine(hp["start_warmup"], hp["base_lr"], hp["final_lr"], hp["warmup_epochs"], epochs,
                                    updates_per_epoch)

    def build_networks(self, hp):
        """The backbone and the projection head (bn_projection_head); n_features."""
        self.backbone = make_backbone(hp)
        self.n_features = self.backbone.width
        self.head = bn_projection_head(self.n_features, hp["hidden_mlp"], hp["feat_dim"])

    def embed(self, views):
        """views: the crops in crop order, each (B, 3, s, s) -> (backbone features (n_crops B, width), unit
        embeddings (n_crops B, feat_dim), both with crop c's rows at c B..(c + 1) B; rows of the large crops)."""
        features, start = [], 0
        while start < len(views):     # one backbone call for each run of crops of one size
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(views[start:end]) if end - start > 1 else views[start]))
            start = end
        h = torch.cat(features)
        return h, F.normalize(self.head(h), dim=1), self.hyperparams["nmb_crops"][0] * views[0].shape[0]

    def before_optimizer_step(self, update):
        """No prototype update (gradient None: no momentum, no weight decay) before freeze_prototypes_niters."""
        if update < self.hyperparams["freeze_prototypes_niters"]:
            for p in self.prototypes.parameters():
                p.grad = None

    def features(self, x):
        """x: (B, 3, S, S) -> the backbone's features (B, width)."""
        return self.backbone(x)


class SwAV(_MultiCropMethod):
    """Swapping Assignments between multiple Views (Caron et al. 2020; the seed: facebookresearch/swav).

    Every crop goes through the backbone (one call per run of equal crop sizes: BatchNorm statistics per size),
    then one projection head call on all crops together (its BatchNorm sees them all), L2 normalisation and the
    prototypes, a bias-free linear map to nmb_prototypes scores. For each crop in crops_for_assign its codes
    come from Sinkhorn-Knopp over its scores (costs.sinkhorn, sums over every process), and the other crops
    predict them (costs.swav_loss).

    State that follows training: the prototype rows are set to unit length before every update's forward
    (start_update) and get no update while the update count is below freeze_prototypes_niters
    (before_optimizer_step); both are functions of the training cursor, so a resumed run repeats them.

    The queue (queue_length > 0): from the 0-based epoch epoch_queue_starts on, every process keeps its last
    queue_length / world_size embeddings of each assigned crop (queue_length rounded down to a multiple of the
    global batch), newest first, and once its last row is filled their scores (with the current prototypes) go
    before the batch's into Sinkhorn-Knopp; the codes are the batch's rows. The buffer `queue` (assigned crops,
    world_size x rows per process, feat_dim) holds every process's queue, process r's in rows r*rows..: each
    process gathers the new embeddings of all, so every process holds the same buffer and rank 0's checkpoint
    carries all of them (a resume with as many processes and the same batch continues exactly; another layout
    starts a fresh queue). The classifiers read the backbone features of the first crop kind's crops (the large
    ones), rows in crop order.
    """
    name = "swav"
    # The seed's (facebookresearch/swav, main_swav.py) spellings and defaults, but for the crops, whose defaults
    # scale with the image size (multi_crop_defaults), and freeze_prototypes_niters (see docs/methods.md).
    PARAMS = (
        *CROP_PARAMS,
        Param("temperature", float, 0.1, "softmax temperature of the predicted assignments", allowed=POSITIVE),
        Param("epsilon", float, 0.05, "entropy regularisation of Sinkhorn-Knopp (exp(scores / epsilon))",
              allowed=POSITIVE),
        Param("sinkhorn_iterations", int, 3, "Sinkhorn-Knopp iterations", allowed=AT_LEAST_1),
        FEAT_DIM,
        Param("nmb_prototypes", int, 3000, "prototypes (clusters) the codes assign to", allowed=AT_LEAST_1),
        Param("queue_length", int, 0, "embeddings queued for the codes over all processes (0: no queue; rounded "
                                      "down to a multiple of --batch_size)", allowed=AT_LEAST_0),
        Param("epoch_queue_starts", int, 15, "0-based epoch from which the queue is kept", allowed=AT_LEAST_0),
        Param("hidden_mlp", int, 2048, "hidden width of the projection head (0: a linear head)", allowed=AT_LEAST_0),
        Param("freeze_prototypes_niters", int, 313, "updates during which the prototypes do not move",
              allowed=AT_LEAST_0),
        Param("base_lr", float, 0.6, "learning rate after the warm-up (not scaled with --batch_size, as the seed)",
              allowed=POSITIVE),
        Param("final_lr", float, 0.0006, "learning rate at the end of the cosine", allowed=AT_LEAST_0),
        Param("start_warmup", float, 0.0, "learning rate at the first warm-up update", allowed=AT_LEAST_0),
        Param("warmup_epochs", int, 0, "epochs of linear warm-up from --start_warmup to --base_lr",
              allowed=AT_LEAST_0),
        Param("wd", float, 1e-6, "weight decay (inside LARC)", allowed=AT_LEAST_0),
    )
    @staticmethod
    def fit_to_data(hp, data, note):
        """Unchanged; a queue shorter than one batch rounds down to none (queue_layout): the user is told."""
        if 0 < hp["queue_length"] < data.batch_size:
            note(f"note: --queue_length {hp['queue_length']} is shorter than one --batch_size {data.batch_size}: it "
                 f"rounds down to 0, so no queue is kept")
        return dict(hp)

    def __init__(self, hp):
        super().__init__(hp)
        self.build_networks(hp)
        self.prototypes = nn.Linear(hp["feat_dim"], hp["nmb_prototypes"], bias=False)
        # No rows until the queue starts; a checkpoint's queue brings its own shape (_load_from_state_dict).
        self.register_buffer("queue", torch.zeros(len(hp["crops_for_assign"]), 0, hp["feat_dim"]))
        self.evaluator = self.make_evaluator(hp["n_classes"])
        self._queue_on = False        # whether this update's epoch keeps the queue (start_update)
        self._queue_full = False      # whether the queue's last rows are filled (read from the buffer until so)

    def forward(self, views, dist=None):
        """views: the crops in crop order, each (B, 3, s, s) -> {"embedding": unit rows (n_crops B, feat_dim),
        "scores": prototype scores (n_crops B, nmb_prototypes), both with crop c's rows at c B..(c + 1) B,
        "logits": classifier logits on the first crop kind's backbone features (nmb_crops[0] B, n_classes)}."""
        h, z, n_large = self.embed(views)
        return {"embedding": z, "scores": self.prototypes(z), "logits": self.evaluator(h[:n_large])}

    @torch.no_grad()
    def start_update(self, epoch, update, dist, shared_seed=0):
        """Prototype rows to unit length (the seed, at the start of every iteration); the queue is kept from the
        epoch epoch_queue_starts on."""
        weight = self.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))
        self._queue_on = self.hyperparams["queue_length"] > 0 and epoch >= self.hyperparams["epoch_queue_starts"]

    def loss_terms(self, out, dist):
        """{"swav": the swapped prediction loss}: each assigned crop's codes (Sinkhorn-Knopp, no gradient)
        predicted by every other crop's scores."""
        hp = self.hyperparams
        scores = out["scores"]
        per_crop = list(scores.split(scores.shape[0] // self.n_views))
        codes = [self.codes(per_crop[crop].detach(), i, dist) for i, crop in enumerate(hp["crops_for_assign"])]
        return {"swav": costs.swav_loss(per_crop, codes, hp["temperature"], hp["crops_for_assign"])}

    @torch.no_grad()
    def codes(self, scores, i, dist):
        """scores: (B, nmb_prototypes) of assigned crop number i -> its codes (B, nmb_prototypes), with this
        process's queue rows for that crop before the batch's once the queue is full."""
        batch, hp = scores.shape[0], self.hyperparams
        queued = self.queued(i, batch, dist)
        if queued is not None:
            scores = torch.cat([queued @ self.prototypes.weight.t(), scores])
        return costs.sinkhorn(scores, hp["epsilon"], hp["sinkhorn_iterations"], dist)[-batch:]

    def queue_layout(self, batch, dist):
        """(processes, rows per process) of the queue for a per-process batch: queue_length rounded down to a
        multiple of the global batch, split evenly (rows 0: no queue)."""
        world = dist.world_size if dist is not None else 1
        return world, self.hyperparams["queue_length"] // (batch * world) * batch

    def queued(self, i, batch, dist):
        """This process's queue rows (rows, feat_dim) of assigned crop i once the queue is in use, else None."""
        world, rows = self.queue_layout(batch, dist)
        if rows == 0 or self.queue.shape[1] != world * rows:
            return None
        if not self._queue_full:       # a host sync per update only until the queue is full
            last = self.queue.view(self.queue.shape[0], world, rows, -1)[:, :, -1]
            self._queue_full = bool(last.ne(0).any(-1).all())
        if not self._queue_full:
            return None
        rank = dist.rank if dist is not None else 0
        return self.queue[i, rank * rows:(rank + 1) * rows]

    @torch.no_grad()
    def after_step(self, out, dist):
        """Once the queue is kept: every process's assigned crops' embeddings go first into its queue rows, the
        oldest drop out (every process applies the same gathered update to the whole buffer)."""
        if not self._queue_on:
            return
        hp = self.hyperparams
        z = out["embedding"].detach()
        batch = z.shape[0] // self.n_views
        world, rows = self.queue_layout(batch, dist)
        if rows == 0:
            return
        n_assign, width = len(hp["crops_for_assign"]), z.shape[1]
        if self.queue.shape[1] != world * rows:       # starts now, or a checkpoint's of another layout
            self.queue = torch.zeros(n_assign, world * rows, width, device=z.device)
            self._queue_full = False
        new = torch.stack([z[c * batch:(c + 1) * batch] for c in hp["crops_for_assign"]], dim=1).float()
        new = dist.all_gather(new) if dist is not None else new        # (world batch, n_assign, feat_dim)
        queue = self.queue.view(n_assign, world, rows, width)
        pushed = torch.cat([new.view(world, batch, n_assign, width).permute(2, 0, 1, 3), queue[:, :, :-batch]], 2)
        skipped = out.get("skipped")
        queue.copy_(pushed if skipped is None else torch.where(skipped, queue, pushed))   # skipped: no push

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "queue")
        if saved is not None and saved.shape != self.queue.shape:     # the queue of the run that saved it
            self.queue = torch.zeros(saved.shape, dtype=self.queue.dtype, device=self.queue.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._queue_full = False

    def ddp_ignored_state(self):
        # Every process applies the same gathered push, so the queues stay identical without DDP's broadcast
        # (which could not follow the buffer's change of shape when the queue starts either).
        return ["queue"]


def _param(cls, name):
    return next(p for p in cls.PARAMS if p.name == name)


class DeepClusterV2(_MultiCropMethod):
    """DeepCluster-v2 (Caron et al. 2020, the SwAV paper; the seed: facebookresearch/swav main_deepclusterv2.py).

    SwAV's multi-crop, backbone, projection head and LARC (_MultiCropMethod), and one prototype head per entry of
    nmb_prototypes, bias-free linear maps of the unit embeddings. The memory holds every training image's last
    unit embedding of each crop in crops_for_assign (`memory`, (assigned crops, n_data, feat_dim), `filled`
    marking rows written); it is filled by a pass over the data before the first update (the seed's
    init_memory: needs_prepare_pass, prepare) and after every update with the batch's embeddings, gathered from
    every process, so every process holds all of it. At the first update of each epoch (start_update) every head
    h clusters memory h mod (assigned crops) by spherical k-means (costs.spherical_kmeans, KMEANS_ITERS
    iterations, centroids drawn with the update's shared seed: every process computes the same), copies the
    centroids into its prototypes and records each image's cluster (`assignments`, -100 for images not in the
    memory). The loss (costs.deepcluster_loss) is every crop's scores / temperature against its image's
    clusters. The prototypes are frozen for the first freeze_prototypes_niters updates (the seed's default: all
    of them; k-means sets them). Memory, assignments and the epoch they were made for (`clustered`) are buffers:
    checkpoints carry them, so a resumed run continues exactly.
    """
    name = "deepclusterv2"
    KMEANS_ITERS = 10          # the seed's cluster_memory(nmb_kmeans_iters=10)
    # The seed's (main_deepclusterv2.py, scripts/deepclusterv2_800ep_pretrain.sh) spellings and defaults; the
    # crops' defaults scale with the image size (multi_crop_defaults) as SwAV's.
    PARAMS = (
        *CROP_PARAMS,
        _param(SwAV, "temperature"),
        FEAT_DIM,
        Param("nmb_prototypes", int, (3000, 3000, 3000), "clusters of each prototype head (one k-means each; at "
              "most the training split's size)", many=True, allowed=AT_LEAST_1),
        _param(SwAV, "hidden_mlp"),
        Param("freeze_prototypes_niters", int, 10 ** 10, "updates during which the prototypes do not move (the "
              "seed's default: never; k-means sets them each epoch)", allowed=AT_LEAST_0),
        Param("base_lr", float, 4.8, "learning rate after the warm-up (not scaled with --batch_size, as the seed)",
              allowed=POSITIVE),
        Param("final_lr", float, 0.0, "learning rate at the end of the cosine", allowed=AT_LEAST_0),
        _param(SwAV, "start_warmup"),
        Param("warmup_epochs", int, 10, "epochs of linear warm-up from --start_warmup to --base_lr",
              allowed=AT_LEAST_0),
        _param(SwAV, "wd"),
    )
    DERIVED = {"n_data": int}

    @staticmethod
    def fit_to_data(hp, data, note):
        """One memory row per training image (n_data); no head has more clusters than images."""
        capped = [min(k, data.n_images) for k in hp["nmb_prototypes"]]
        if capped != list(hp["nmb_prototypes"]):
            note(f"note: --nmb_prototypes {' '.join(map(str, hp['nmb_prototypes']))} has more clusters than the "
                 f"{data.n_images}-image training split; capped at {data.n_images}")
        return dict(hp, n_data=data.n_images, nmb_prototypes=capped)

    @classmethod
    def validate(cls, hp):
        super().validate(hp)
        if "n_data" in hp and max(hp["nmb_prototypes"]) > hp["n_data"]:
            raise UserError(f"--nmb_prototypes {max(hp['nmb_prototypes'])} is more clusters than the "
                            f"{hp['n_data']} training images: lower it")

    def __init__(self, hp):
        super().__init__(hp)
        if hp.get("n_data", 0) < 1:
            raise ValueError("DeepCluster-v2 needs n_data, the training split's size (one memory row per image)")
        self.build_networks(hp)
        self.prototypes = nn.ModuleList(nn.Linear(hp["feat_dim"], k, bias=False) for k in hp["nmb_prototypes"])
        n_assign = len(hp["crops_for_assign"])
        self.register_buffer("memory", torch.zeros(n_assign, hp["n_data"], hp["feat_dim"]))
        self.register_buffer("filled", torch.zeros(hp["n_data"], dtype=torch.bool))
        self.register_buffer("assignments", torch.full((len(hp["nmb_prototypes"]), hp["n_data"]), -100))
        self.register_buffer("clustered", torch.full((), -1))
        self.evaluator = self.make_evaluator(hp["n_classes"])
        self._clustered = None        # the epoch of `clustered`, read from the buffer once per process

    def forward(self, views, dist=None):
        """views: the crops in crop order, each (B, 3, s, s) -> {"embedding": unit rows (n_crops B, feat_dim),
        "scores": one (n_crops B, K_h) per prototype head, crop c's rows at c B..(c + 1) B, "logits": classifier
        logits on the first crop kind's backbone features (nmb_crops[0] B, n_classes)}."""
        h, z, n_large = self.embed(views)
        return {"embedding": z, "scores": [head(z) for head in self.prototypes], "logits": self.evaluator(h[:n_large])}

    def needs_prepare_pass(self):
        return not bool(self.filled.any())

    @torch.no_grad()
    def prepare(self, out, dist):
        self.remember(out, dist)

    @torch.no_grad()
    def start_update(self, epoch, update, dist, shared_seed=0):
        """At an epoch's first update: the clustering of the memory filled so far (see the class)."""
        if self._clustered is None:
            self._clustered = int(self.clustered)
        if self._clustered == epoch:
            return
        rows = torch.nonzero(self.filled).flatten()
        if len(rows) >= max(self.hyperparams["nmb_prototypes"]):
            generator = torch.Generator().manual_seed(shared_seed)
            for h, head in enumerate(self.prototypes):
                memory = self.memory[h % self.memory.shape[0], rows]
                centroids, assigned = costs.spherical_kmeans(memory, head.out_features, self.KMEANS_ITERS, generator)
                head.weight.copy_(centroids)
                self.assignments[h].fill_(-100)
                self.assignments[h, rows] = assigned
        self.clustered.fill_(epoch)
        self._clustered = epoch

    def loss_terms(self, out, dist):
        """{"deepcluster": costs.deepcluster_loss of every head's scores against the batch's clusters}."""
        targets = self.assignments[:, out["index"]]
        return {"deepcluster": costs.deepcluster_loss(out["scores"], targets, self.hyperparams["temperature"])}

    @torch.no_grad()
    def after_step(self, out, dist):
        self.remember(out, dist)

    def remember(self, out, dist):
        """The batch's embeddings of the assigned crops into the memory rows of its images, every process's
        (gathered); a skipped step writes nothing."""
        z = out["embedding"].detach().float()
        batch = out["index"].shape[0]
        new = torch.stack([z[c * batch:(c + 1) * batch] for c in self.hyperparams["crops_for_assign"]])
        index = out["index"]
        if dist is not None and dist.active:
            new = dist.all_gather(new.transpose(0, 1).contiguous()).transpose(0, 1)
            index = dist.all_gather(index)
        skipped = out.get("skipped")
        if skipped is not None:
            new = torch.where(skipped, self.memory[:, index], new)
        self.memory[:, index] = new
        self.filled[index] = True if skipped is None else self.filled[index] | ~skipped

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._clustered = None

    def ddp_ignored_state(self):
        # Every process writes the same gathered rows and computes the same clusters.
        return ["memory", "filled", "assignments", "clustered"]


# The registry: --method's choices, and what a checkpoint's "method" names.
METHODS = {cls.name: cls for cls in (AMDIM, MoCo, CMC, SwAV, DeepClusterV2)}


def build(hp):
    """A freshly initialised method from its hyperparameters (config.py)."""
    return METHODS[hp["method"]](hp)
