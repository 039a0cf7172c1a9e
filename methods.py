"""Self-supervised methods. Each is one nn.Module that owns its networks and its state (momentum encoder, queue)
as parameters and buffers, so checkpoints, DistributedDataParallel and exact resume carry them as they are.

The interface the training loop uses (train.py never asks which method it runs):
    view_kind                 the augmentation its training views come from (augment.make_views)
    forward(views, dist)      network outputs for a tuple of views (B, 3, S, S); out["logits"] holds the online
                              classifiers' (mlp, linear) logits on detached features of k views, (k*B, n_classes),
                              rows in view order, so the labels are the batch's repeated k times
    loss_terms(out, dist)     named scalar loss terms (the loop runs this in float32 and sums them); out["index"]
                              holds the batch's dataset indices (B,) on the device (CMC's memory bank needs them),
                              out["shared_seed"] an int that every process gets alike at this update
    after_step(out, dist)     state updates after each optimizer step (momentum update, queue push)
    start_update(epoch, update, dist)   called before each training update's forward with the training cursor
                              (0-based epoch, updates so far): state that follows the schedule (SwAV's
                              prototype normalisation and queue start); nothing by default
    before_optimizer_step(update)       called between backward and the optimizer step (SwAV's prototype freeze);
                              nothing by default
    n_views                   how many views of each image forward takes (2 but for SwAV's multi-crop)
    features(x)               (B, n_features) frozen features for the classifiers and kNN
    classify(x)               (mlp, linear) logits of the evaluation classifiers
    evaluator                 the evaluation classifiers (model.Evaluator)
    hyperparams               the config dict that rebuilds the model (config.py)

`dist` (utils.Dist) gives the collectives a method needs; in a single process they are identities.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import costs
from augment import MultiCrop
from imageops import normalize_lab, rgb_to_lab
from model import Encoder, Evaluator, GlobalEncoder, ResNetTrunk, bn_projection_head, projection_head


@dataclass(frozen=True)
class TrainingData:
    """What a fresh method may adapt its hyperparameters to (Method.fit_to_data): the training split's size, its
    normalisation ((mean r, g, b), (std r, g, b)) and the global batch size."""
    n_images: int
    mean_std: tuple
    batch_size: int


class Method(nn.Module):
    """What every method shares: hyperparams, the evaluation classifiers and the default hooks."""
    view_kind = None
    n_views = 2

    def __init__(self, hp):
        super().__init__()
        self.hyperparams = dict(hp)

    @staticmethod
    def fit_to_data(hp, data, note):
        """The hyperparameters of a fresh model of this method, adapted to its TrainingData `data` (a new dict;
        note(line) tells the user of any change); unchanged by default."""
        return dict(hp)

    def reset_evaluator(self, n_classes):
        """Fresh classifiers for a (possibly different) number of classes, e.g. ImageNet -> Places205."""
        self.evaluator = Evaluator(self.n_features, n_classes)
        self.hyperparams["n_classes"] = n_classes

    def classify(self, x):
        """x: (B, 3, S, S) -> (mlp logits, linear logits), each (B, n_classes)."""
        return self.evaluator(self.features(x))

    def after_step(self, out, dist):
        """Called after each optimizer step with that step's outputs; nothing by default."""

    def start_update(self, epoch, update, dist):
        """Called before each training update's forward; nothing by default."""

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


class AMDIM(Method):
    """Augmented Multiscale Deep InfoMax (Bachman et al. 2019): predict each view's local features (5x5, 7x7)
    from the other view's global (1x1) and local (5x5) features with NCE.

    Two views that share a flip go through the encoder in separate passes (BatchNorm keeps per-view statistics,
    as the original); the classifiers read both views' r1. State-dict keys match the original code's model.
    """
    view_kind = "amdim"

    def __init__(self, hp):
        super().__init__(hp)
        self.encoder = Encoder(hp["ndf"], hp["n_rkhs"], hp["n_depth"], hp["encoder_size"], hp["use_bn"])
        self.encoder.init_weights()
        self.n_features = hp["n_rkhs"]
        self.evaluator = Evaluator(self.n_features, hp["n_classes"])

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


def make_backbone(hp, in_channels=3):
    """The backbone of a non-AMDIM method: image (B, in_channels, S, S) -> (B, width) features; .width gives
    width."""
    if hp["arch"] == "amdim":
        return GlobalEncoder(hp["ndf"], hp["n_rkhs"], hp["n_depth"], hp["encoder_size"], hp["use_bn"], in_channels)
    return ResNetTrunk(hp["arch"], hp["encoder_size"], in_channels)


class MoCo(Method):
    """Momentum Contrast (He et al. 2020) trained with the alignment and uniformity losses (Wang & Isola 2020)
    and, optionally, MoCo's contrastive loss.

    The query view goes through the backbone and a projection head; the key view through momentum copies of both
    (no gradients). Embeddings are L2-normalised. The queue holds the keys of the last moco_k images of every
    process, newest overwriting oldest.
    """

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
        self.evaluator = Evaluator(self.n_features, hp["n_classes"])

    @property
    def view_kind(self):
        return view_kind(self.hyperparams)

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
        m = self.hyperparams["moco_m"]
        online = list(self.backbone.parameters()) + list(self.head.parameters())
        momentum = list(self.backbone_k.parameters()) + list(self.head_k.parameters())
        torch._foreach_lerp_(momentum, online, 1 - m)      # k = m k + (1 - m) q
        keys = dist.all_gather(out["k"].detach()) if dist is not None else out["k"].detach()
        self.push(keys.to(self.queue.dtype))

    def push(self, keys):
        """Write keys (n, moco_dim) at the queue pointer, wrapping around its end; keeps the newest moco_k."""
        size = self.queue.shape[0]
        keys = keys[-size:]
        n, ptr = keys.shape[0], int(self.queue_ptr)
        rows = (ptr + torch.arange(n, device=keys.device)) % size
        self.queue[rows] = keys
        self.queue_ptr.fill_((ptr + n) % size)

    def features(self, x):
        """x: (B, 3, S, S) -> the query backbone's features (B, width)."""
        return self.backbone(x)

    def ddp_ignored_state(self):
        # Every process pushes the same gathered keys, so the queues stay identical without a 32 MB broadcast
        # per step (DDP would otherwise broadcast rank 0's buffers before each forward).
        return ["queue", "queue_ptr"]


class CMC(Method):
    """Contrastive Multiview Coding (Tian, Krishnan & Isola 2019), the seed's (HobbitLong/CMC) memory-bank NCE
    between the L and ab channels of an image in Lab colour.

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
    view_kind = "cmc"

    def __init__(self, hp):
        super().__init__(hp)
        if hp.get("n_data", 0) < 1:
            raise ValueError("CMC needs n_data, the training split's size (one memory bank row per image)")
        self.backbone_l = make_backbone(hp, in_channels=1)
        self.backbone_ab = make_backbone(hp, in_channels=2)
        self.head_l = nn.Linear(self.backbone_l.width, hp["feat_dim"])
        self.head_ab = nn.Linear(self.backbone_ab.width, hp["feat_dim"])
        self.n_features = self.backbone_l.width + self.backbone_ab.width
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
        self.evaluator = Evaluator(self.n_features, hp["n_classes"])
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
        h_l, h_ab = self.backbone_l(x_l), self.backbone_ab(x_ab)
        return {"l": F.normalize(self.head_l(h_l), dim=1), "ab": F.normalize(self.head_ab(h_ab), dim=1),
                "logits": self.evaluator(torch.cat([h_l, h_ab], dim=1))}

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
        m = self.hyperparams["nce_m"]
        for bank, feats in ((self.memory_l, f_l), (self.memory_ab, f_ab)):
            bank[index] = costs.memory_update(bank[index], feats.to(bank.dtype), m)

    def features(self, x):
        """x: RGB (B, 3, S, S) normalised by rgb_mean/rgb_std -> cat(L, ab backbone features) (B, n_features)."""
        rgb = (x.float() * self.rgb_std + self.rgb_mean).clamp(0, 1)
        lab = normalize_lab(rgb_to_lab(rgb)).to(x.dtype)
        return torch.cat([self.backbone_l(lab[:, :1]), self.backbone_ab(lab[:, 1:])], dim=1)

    def ddp_ignored_state(self):
        # Every process applies the same gathered update, so banks and constants stay identical without DDP's
        # per-step broadcast of rank 0's buffers (2 x N x feat_dim floats).
        return ["memory_l", "memory_ab", "z_l", "z_ab"]


class SwAV(Method):
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
    view_kind = "swav"

    @staticmethod
    def fit_to_data(hp, data, note):
        """Unchanged; a queue shorter than one batch rounds down to none (queue_layout): the user is told."""
        if 0 < hp["queue_length"] < data.batch_size:
            note(f"note: --queue_length {hp['queue_length']} is shorter than one --batch_size {data.batch_size}: it "
                 f"rounds down to 0, so no queue is kept")
        return dict(hp)

    def __init__(self, hp):
        super().__init__(hp)
        self.backbone = make_backbone(hp)
        self.n_features = self.backbone.width
        self.head = bn_projection_head(self.n_features, hp["hidden_mlp"], hp["feat_dim"])
        self.prototypes = nn.Linear(hp["feat_dim"], hp["nmb_prototypes"], bias=False)
        # No rows until the queue starts; a checkpoint's queue brings its own shape (_load_from_state_dict).
        self.register_buffer("queue", torch.zeros(len(hp["crops_for_assign"]), 0, hp["feat_dim"]))
        self.evaluator = Evaluator(self.n_features, hp["n_classes"])
        self._queue_on = False        # whether this update's epoch keeps the queue (start_update)
        self._queue_full = False      # whether the queue's last rows are filled (read from the buffer until so)

    @property
    def n_views(self):
        return sum(self.hyperparams["nmb_crops"])

    def forward(self, views, dist=None):
        """views: the crops in crop order, each (B, 3, s, s) -> {"embedding": unit rows (n_crops B, feat_dim),
        "scores": prototype scores (n_crops B, nmb_prototypes), both with crop c's rows at c B..(c + 1) B,
        "logits": classifier logits on the first crop kind's backbone features (nmb_crops[0] B, n_classes)}."""
        features, start = [], 0
        while start < len(views):     # one backbone call for each run of crops of one size
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(views[start:end]) if end - start > 1 else views[start]))
            start = end
        h = torch.cat(features)
        z = F.normalize(self.head(h), dim=1)
        n_large = self.hyperparams["nmb_crops"][0] * views[0].shape[0]
        return {"embedding": z, "scores": self.prototypes(z), "logits": self.evaluator(h[:n_large])}

    @torch.no_grad()
    def start_update(self, epoch, update, dist):
        """Prototype rows to unit length (the seed, at the start of every iteration); the queue is kept from the
        epoch epoch_queue_starts on."""
        weight = self.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))
        self._queue_on = self.hyperparams["queue_length"] > 0 and epoch >= self.hyperparams["epoch_queue_starts"]

    def before_optimizer_step(self, update):
        """No prototype update (gradient None: no momentum, no weight decay) before freeze_prototypes_niters."""
        if update < self.hyperparams["freeze_prototypes_niters"]:
            self.prototypes.weight.grad = None

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
        queue[:, :, batch:] = queue[:, :, :-batch].clone()
        queue[:, :, :batch] = new.view(world, batch, n_assign, width).permute(2, 0, 1, 3)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "queue")
        if saved is not None and saved.shape != self.queue.shape:     # the queue of the run that saved it
            self.queue = torch.zeros(saved.shape, dtype=self.queue.dtype, device=self.queue.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._queue_full = False

    def features(self, x):
        """x: (B, 3, S, S) -> the backbone's features (B, width)."""
        return self.backbone(x)

    def ddp_ignored_state(self):
        # Every process applies the same gathered push, so the queues stay identical without DDP's broadcast
        # (which could not follow the buffer's change of shape when the queue starts either).
        return ["queue"]


METHOD_CLASSES = {"amdim": AMDIM, "moco": MoCo, "cmc": CMC, "swav": SwAV}


def build(hp):
    """A freshly initialised method from its hyperparameters (config.py)."""
    return METHOD_CLASSES[hp["method"]](hp)


def fit_to_data(hp, data, note=print):
    """A fresh model's hyperparameters adapted to the training data by its method (Method.fit_to_data)."""
    return METHOD_CLASSES[hp["method"]].fit_to_data(hp, data, note)


def view_kind(hp):
    """The augmentation a method's training views come from, without building the model (augment.make_views)."""
    if hp["method"] == "moco":
        return "moco_v2" if hp["aug_plus"] else "moco_v1"
    if hp["method"] in ("cmc", "swav"):
        return hp["method"]
    return "amdim"


def view_options(hp):
    """make_views' keywords for the method's view kind: CMC's crop_low, SwAV's crops."""
    if hp["method"] == "cmc":
        return {"crop_low": hp["crop_low"]}
    if hp["method"] == "swav":
        return {"crops": MultiCrop.from_hyperparams(hp)}
    return {}


def n_views(hp):
    """Views of each image the method trains on, without building the model."""
    return sum(hp["nmb_crops"]) if hp["method"] == "swav" else 2
