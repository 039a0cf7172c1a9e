"""Model configuration in one place: each method's and backbone's hyperparameters, their defaults, flags and
validation.

A run's hyperparameters (a flat dict, stored in every checkpoint as "hyperparams") are: method, arch,
encoder_size, n_classes, the AMDIM encoder's (ndf, n_rkhs, n_depth, use_bn) when arch is "amdim", and the
method's own. Flags default to None so that a flag the user did not give never contradicts a checkpoint; the
defaults below apply only to a model built from scratch.

Every number a flag takes has its allowed range declared once (a Range), checked by argparse as it parses the
flag, so a bad value is a one-line usage error naming the flag, before any check that combines flags and before
anything touches the disk. The same ranges validate a checkpoint's stored values.
"""
import argparse
import math
from dataclasses import dataclass

from model import RESNETS, last_width
from utils import UserError

METHODS = ("amdim", "moco", "cmc", "swav")
ARCHS = ("amdim",) + RESNETS


@dataclass(frozen=True)
class Range:
    """The values a numeric flag allows: finite (NaN and inf never make sense here), within the bounds given."""
    minimum: float = None      # inclusive lower bound
    above: float = None        # exclusive lower bound
    below: float = None        # exclusive upper bound
    maximum: float = None      # inclusive upper bound
    why: str = None            # the reason for a bound that is not obvious

    def admits(self, value):
        finite = not isinstance(value, float) or math.isfinite(value)   # ints are; a huge one overflows isfinite
        return (finite
                and (self.minimum is None or value >= self.minimum) and (self.above is None or value > self.above)
                and (self.below is None or value < self.below) and (self.maximum is None or value <= self.maximum))

    def describe(self, kind):
        """E.g. "an integer >= 1", "a finite number >= 0 and < 1"."""
        bounds = [f"{sign} {bound}" for sign, bound in ((">=", self.minimum), (">", self.above),
                                                           ("<", self.below), ("<=", self.maximum))
                  if bound is not None]
        text = ("an integer" if kind is int else "a finite number") + (" " + " and ".join(bounds) if bounds else "")
        return text + (f" ({self.why})" if self.why else "")


def number(kind, allowed):
    """An argparse type= function: the flag's text as `kind` (int or float) within `allowed`, else a one-line
    error naming the value and the range (argparse prefixes the flag)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not allowed.admits(value):
            raise argparse.ArgumentTypeError(f"got {text}, expected {allowed.describe(kind)}")
        return value
    return parse


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(minimum=1), Range(minimum=0), Range(above=0)
positive_int = number(int, AT_LEAST_1)
non_negative_int = number(int, AT_LEAST_0)
positive_float = number(float, POSITIVE)
non_negative_float = number(float, AT_LEAST_0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every flag's default; a flag whose default is None is resolved later (per method, dataset or
    checkpoint), so "(default: None)" would mislead: its help says how instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its name in the checkpoint (and the flag's dest), type, default and flag spellings."""
    name: str
    type: type
    default: object
    help: str
    flags: tuple = ()          # extra command-line spellings
    allowed: Range = None      # numbers: the values that can work
    switch: bool = False       # a flag without a value that sets True
    hyphenated: bool = False   # the seed spells it --moco-k: accept that first, and --moco_k too
    many: bool = False         # a list of one or more values (nargs "+"), each within `allowed`

    def flag_names(self):
        names = [f"--{self.name.replace('_', '-')}"] if self.hyphenated else []
        return tuple(dict.fromkeys(names + [f"--{self.name}", *self.flags]))

    def shown_default(self):
        if callable(self.default):
            return "by image size"
        return int(self.default) if self.type is bool else self.default

    def convert(self, value):
        """A flag's or a checkpoint's value with this Param's type (a list of them when many)."""
        return [self.type(v) for v in value] if self.many else self.type(value)

    def default_for(self, encoder_size, arch):
        """The default of a model built from scratch; a callable default depends on the input size and arch."""
        return self.default(encoder_size, arch) if callable(self.default) else self.default

    def admits(self, value):
        values = value if self.many else [value]
        return self.allowed is None or all(self.allowed.admits(v) for v in values)


# The AMDIM encoder: arch "amdim", whichever method trains it.
AMDIM_ENCODER = (
    Param("ndf", int, 128, "encoder base width", allowed=AT_LEAST_1),
    Param("n_rkhs", int, 1024, "embedding width (at least the encoder's last width: 4*ndf at 32 px, 8*ndf at "
                               "64/128 px)", allowed=AT_LEAST_1),
    # As in the original, a block is one unit that changes width and resolution, then n_depth - 1 1x1 units: 0
    # would build depth 1's model under another name.
    Param("n_depth", int, 3, "residual units per block", flags=("--res_depth",), allowed=AT_LEAST_1),
    Param("use_bn", bool, False, "BatchNorm inside the encoder (0 or 1)"),
)

# The embedding width of CMC (each view's) and SwAV (the projection head's output): one flag, --feat_dim.
FEAT_DIM = Param("feat_dim", int, 128, "embedding width", allowed=AT_LEAST_1)


def multi_crop_defaults(encoder_size, arch):
    """SwAV's crops for a model built from scratch. The seed's ImageNet crops are 2 x 224 px (area 0.14-1) and
    6 x 96 px (0.05-0.14); here the large crops have the encoder's input size and the small ones half of it
    (32 px: 2 x 32 + 4 x 16; 64 px: 2 x 64 + 4 x 32; 128 px: 2 x 128 + 6 x 64), same area fractions. The AMDIM
    encoder takes only its own input size, so on it the default is the two large crops alone."""
    if arch == "amdim":
        return dict(nmb_crops=[2], size_crops=[encoder_size], min_scale_crops=[0.14], max_scale_crops=[1.0])
    return dict(nmb_crops=[2, 6 if encoder_size >= 128 else 4], size_crops=[encoder_size, encoder_size // 2],
                min_scale_crops=[0.14, 0.05], max_scale_crops=[1.0, 0.14])


# Each method's own hyperparameters. MoCo's flags keep the seed's hyphenated spellings (underscores work too).
# Temperatures, clips and exponents divide or scale scores: positive. Loss weights may be 0 (that loss off).
# Momentum 1 would keep the key encoder at its initial weights forever.
METHOD_PARAMS = {
    "amdim": (Param("tclip", float, 20.0, "NCE score soft clip", allowed=POSITIVE),),
    "moco": (
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
    ),
    # CMC keeps the seed's (HobbitLong/CMC) spellings. nce_m 1 would never move the memory bank.
    "cmc": (
        FEAT_DIM,
        Param("nce_k", int, 4096, "negatives per sample, drawn from the memory bank", allowed=AT_LEAST_1),
        Param("nce_t", float, 0.07, "temperature of the scores (the seed uses 0.1 on STL10)", allowed=POSITIVE),
        Param("nce_m", float, 0.5, "memory bank momentum",
              allowed=Range(minimum=0, below=1, why="1 never updates the memory bank")),
        Param("softmax", bool, False, "cross-entropy over [positive, negatives] instead of NCE", switch=True),
        Param("crop_low", float, 0.2, "RandomResizedCrop's smallest area fraction (the seed's 0.08 is for 224 px)",
              allowed=Range(above=0, maximum=1)),
    ),
    # SwAV keeps the seed's (facebookresearch/swav, main_swav.py) spellings and defaults, but for the crops, whose
    # defaults scale with the image size (multi_crop_defaults), and freeze_prototypes_niters (see the README).
    "swav": (
        Param("nmb_crops", int, lambda size, arch: multi_crop_defaults(size, arch)["nmb_crops"],
              "crops of each kind, e.g. 2 4: two large, four small", many=True, allowed=AT_LEAST_1),
        Param("size_crops", int, lambda size, arch: multi_crop_defaults(size, arch)["size_crops"],
              "output size (px) of each crop kind", many=True,
              allowed=Range(minimum=4, why="the smallest size every backbone turns into features")),
        Param("min_scale_crops", float, lambda size, arch: multi_crop_defaults(size, arch)["min_scale_crops"],
              "RandomResizedCrop's smallest area fraction of each crop kind", many=True,
              allowed=Range(above=0, maximum=1)),
        Param("max_scale_crops", float, lambda size, arch: multi_crop_defaults(size, arch)["max_scale_crops"],
              "RandomResizedCrop's largest area fraction of each crop kind", many=True,
              allowed=Range(above=0, maximum=1)),
        Param("crops_for_assign", int, (0, 1), "crops (0-based, in crop order) whose codes the others predict",
              many=True, allowed=AT_LEAST_0),
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
    ),
}
# Hyperparameters no flag sets: filled in from the training data when the model is built (train.build_model).
DERIVED = {"cmc": {"n_data": int, "rgb_mean": lambda v: [float(x) for x in v],
                   "rgb_std": lambda v: [float(x) for x in v]}}
# Every flag once (methods may share a Param: --feat_dim).
ALL_PARAMS = tuple(dict.fromkeys(AMDIM_ENCODER + tuple(p for params in METHOD_PARAMS.values() for p in params)))


def add_flags(parser):
    """--method, --arch and every hyperparameter's flag, each defaulting to None (see the module docstring)."""
    group = parser.add_argument_group("model (defaults apply to a model built from scratch; a checkpoint's "
                                      "values win, and flags may not contradict them)")
    group.add_argument("--method", choices=METHODS, help="self-supervised objective (default: amdim)")
    group.add_argument("--arch", choices=ARCHS, help="backbone (default: amdim for --method amdim; else resnet18 "
                                                     "below 128 px, resnet50 from 128 px)")
    for p in ALL_PARAMS:
        owner = "AMDIM encoder" if p in AMDIM_ENCODER else ", ".join(m for m, ps in METHOD_PARAMS.items() if p in ps)
        text = f"[{owner}] {p.help} (default: {'off' if p.switch else p.shown_default()})"
        if p.switch:
            group.add_argument(*p.flag_names(), dest=p.name, action="store_const", const=True, help=text)
        elif p.type is bool:
            group.add_argument(*p.flag_names(), dest=p.name, type=int, choices=(0, 1), help=text)
        else:
            group.add_argument(*p.flag_names(), dest=p.name, type=number(p.type, p.allowed), help=text,
                               nargs="+" if p.many else None)


def default_arch(method, encoder_size):
    if method == "amdim":
        return "amdim"
    return "resnet50" if encoder_size >= 128 else "resnet18"


def params_of(method, arch):
    """The Params a (method, arch) model has."""
    return (AMDIM_ENCODER if arch == "amdim" else ()) + METHOD_PARAMS[method]


def from_flags(args, encoder_size, n_classes):
    """Hyperparameters of a model built from scratch: the flags given, defaults for the rest; validated."""
    method = args.method or "amdim"
    arch = args.arch or default_arch(method, encoder_size)
    hp = dict(method=method, arch=arch, encoder_size=encoder_size, n_classes=n_classes)
    for p in params_of(method, arch):
        value = getattr(args, p.name, None)
        hp[p.name] = p.convert(p.default_for(encoder_size, arch) if value is None else value)
    unused = [p.flag_names()[0] for p in ALL_PARAMS if p not in params_of(method, arch)
              and getattr(args, p.name, None) is not None]
    if unused:
        raise UserError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --method {method} "
                        f"--arch {arch}; drop {'it' if len(unused) == 1 else 'them'}")
    validate(hp)
    return hp


def validate(hp):
    """Raise a UserError naming the first hyperparameter out of range or combination that cannot work."""
    if hp["method"] not in METHODS:
        raise UserError(f"unknown method {hp['method']!r}: choose one of {', '.join(METHODS)}")
    if hp["arch"] not in ARCHS:
        raise UserError(f"unknown arch {hp['arch']!r}: choose one of {', '.join(ARCHS)}")
    if hp["method"] == "amdim" and hp["arch"] != "amdim":
        raise UserError(f"--method amdim needs --arch amdim: its costs compare the encoder's 1x1, 5x5 and 7x7 "
                        f"feature maps, which {hp['arch']} does not give; drop --arch or pick another --method")
    for p in params_of(hp["method"], hp["arch"]):
        if not p.admits(hp[p.name]):
            shown = " ".join(map(str, hp[p.name])) if p.many else hp[p.name]
            raise UserError(f"{p.flag_names()[0]} {shown} is out of range: expected "
                            f"{'each ' if p.many else ''}{p.allowed.describe(p.type)}")
    if hp["arch"] == "amdim" and hp["n_rkhs"] < last_width(hp["ndf"], hp["encoder_size"]):
        raise UserError(f"--n_rkhs {hp['n_rkhs']} is smaller than the encoder's last width "
                        f"{last_width(hp['ndf'], hp['encoder_size'])} (4*ndf at 32 px, 8*ndf at 64/128 px): raise "
                        f"--n_rkhs or lower --ndf")
    if hp["method"] == "moco" and hp["moco_align_w"] == hp["moco_unif_w"] == hp["moco_contr_w"] == 0:
        raise UserError("every MoCo loss weight is 0: give --moco-align-w, --moco-unif-w or --moco-contr-w a "
                        "positive value")
    if hp["method"] == "swav":
        validate_crops(hp)


CROP_FLAGS = ("nmb_crops", "size_crops", "min_scale_crops", "max_scale_crops")


def validate_crops(hp):
    """SwAV's crop lists: one entry per crop kind in each, area ranges that are ranges, at least two crops, the
    assigned crops among them, and sizes the backbone takes."""
    lengths = [len(hp[k]) for k in CROP_FLAGS]
    if len(set(lengths)) > 1:
        raise UserError(f"--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need one value per "
                        f"crop kind each (got {', '.join(map(str, lengths))} values): give them the same length")
    for i, (low, high) in enumerate(zip(hp["min_scale_crops"], hp["max_scale_crops"])):
        if low > high:
            raise UserError(f"crop kind {i}: --min_scale_crops {low} is above --max_scale_crops {high}; swap them")
    n_crops = sum(hp["nmb_crops"])
    if n_crops < 2:
        raise UserError(f"--nmb_crops {' '.join(map(str, hp['nmb_crops']))} makes {n_crops} crop: SwAV predicts one "
                        f"crop's codes from another, so give at least 2 crops")
    assign = hp["crops_for_assign"]
    if max(assign) >= n_crops or len(set(assign)) != len(assign):
        raise UserError(f"--crops_for_assign {' '.join(map(str, assign))} must name distinct crops 0..{n_crops - 1} "
                        f"(--nmb_crops makes {n_crops}); pick crops from that range")
    if hp["arch"] == "amdim" and set(hp["size_crops"]) != {hp["encoder_size"]}:
        raise UserError(f"--arch amdim takes only {hp['encoder_size']} px inputs (its layers are fixed to the image "
                        f"size), not --size_crops {' '.join(map(str, hp['size_crops']))}: give every crop size "
                        f"{hp['encoder_size']}, or use --arch resnet18/resnet50 for smaller crops")


def normalise(stored):
    """A checkpoint's hyperparams with types restored; checkpoints written before other methods existed (ours
    and the original code's) are AMDIM's."""
    hp = dict(stored)
    hp.setdefault("method", "amdim")
    hp.setdefault("arch", "amdim")
    if hp["method"] not in METHODS or hp["arch"] not in ARCHS:
        raise UserError(f"the checkpoint's method {hp['method']!r} / arch {hp['arch']!r} is unknown to this "
                        f"code; update the code or use a checkpoint of {', '.join(METHODS)}")
    wanted = params_of(hp["method"], hp["arch"])
    derived = DERIVED.get(hp["method"], {})
    missing = [p.name for p in wanted if p.name not in hp] + \
        [k for k in ("encoder_size", "n_classes", *derived) if k not in hp]
    if missing:
        raise UserError(f"checkpoint hyperparams lack {', '.join(missing)}; it was not written by AMDIM code")
    out = dict(method=hp["method"], arch=hp["arch"], encoder_size=int(hp["encoder_size"]),
               n_classes=int(hp["n_classes"]))
    out.update({p.name: p.convert(hp[p.name]) for p in wanted})
    out.update({k: kind(hp[k]) for k, kind in derived.items()})
    return out


def contradictions(args, hp):
    """Flags given on the command line that differ from a checkpoint's hyperparameters, as readable strings."""
    clashes = [f"--{k} {getattr(args, k)} (checkpoint: {hp[k]})" for k in ("method", "arch")
               if getattr(args, k, None) is not None and getattr(args, k) != hp[k]]
    for p in ALL_PARAMS:
        given = getattr(args, p.name, None)
        if given is None:
            continue
        if p.name not in hp:
            clashes.append(f"{p.flag_names()[0]} (not a hyperparameter of the checkpoint's {hp['method']}/"
                           f"{hp['arch']} model)")
        elif p.convert(given) != hp[p.name]:
            clashes.append(f"{p.flag_names()[0]} {given} (checkpoint: {hp[p.name]})")
    return clashes


def describe(hp):
    """A one-line summary for the start-up log."""
    return " ".join(f"{k}={v}" for k, v in hp.items())
