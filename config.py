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

METHODS = ("amdim", "moco", "cmc")
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

    def flag_names(self):
        names = [f"--{self.name.replace('_', '-')}"] if self.hyphenated else []
        return tuple(dict.fromkeys(names + [f"--{self.name}", *self.flags]))

    def shown_default(self):
        return int(self.default) if self.type is bool else self.default


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
        Param("feat_dim", int, 128, "embedding width of each view", allowed=AT_LEAST_1),
        Param("nce_k", int, 4096, "negatives per sample, drawn from the memory bank", allowed=AT_LEAST_1),
        Param("nce_t", float, 0.07, "temperature of the scores (the seed uses 0.1 on STL10)", allowed=POSITIVE),
        Param("nce_m", float, 0.5, "memory bank momentum",
              allowed=Range(minimum=0, below=1, why="1 never updates the memory bank")),
        Param("softmax", bool, False, "cross-entropy over [positive, negatives] instead of NCE", switch=True),
        Param("crop_low", float, 0.2, "RandomResizedCrop's smallest area fraction (the seed's 0.08 is for 224 px)",
              allowed=Range(above=0, maximum=1)),
    ),
}
# Hyperparameters no flag sets: filled in from the training data when the model is built (train.build_model).
DERIVED = {"cmc": {"n_data": int, "rgb_mean": lambda v: [float(x) for x in v],
                   "rgb_std": lambda v: [float(x) for x in v]}}
ALL_PARAMS = AMDIM_ENCODER + tuple(p for params in METHOD_PARAMS.values() for p in params)


def add_flags(parser):
    """--method, --arch and every hyperparameter's flag, each defaulting to None (see the module docstring)."""
    group = parser.add_argument_group("model (defaults apply to a model built from scratch; a checkpoint's "
                                      "values win, and flags may not contradict them)")
    group.add_argument("--method", choices=METHODS, help="self-supervised objective (default: amdim)")
    group.add_argument("--arch", choices=ARCHS, help="backbone (default: amdim for --method amdim; else resnet18 "
                                                     "below 128 px, resnet50 from 128 px)")
    for p in ALL_PARAMS:
        owner = "AMDIM encoder" if p in AMDIM_ENCODER else next(m for m, ps in METHOD_PARAMS.items() if p in ps)
        text = f"[{owner}] {p.help} (default: {'off' if p.switch else p.shown_default()})"
        if p.switch:
            group.add_argument(*p.flag_names(), dest=p.name, action="store_const", const=True, help=text)
        elif p.type is bool:
            group.add_argument(*p.flag_names(), dest=p.name, type=int, choices=(0, 1), help=text)
        else:
            group.add_argument(*p.flag_names(), dest=p.name, type=number(p.type, p.allowed), help=text)


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
        hp[p.name] = p.type(p.default if value is None else value)
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
        if p.allowed is not None and not p.allowed.admits(hp[p.name]):
            raise UserError(f"{p.flag_names()[0]} {hp[p.name]} is out of range: expected "
                            f"{p.allowed.describe(p.type)}")
    if hp["arch"] == "amdim" and hp["n_rkhs"] < last_width(hp["ndf"], hp["encoder_size"]):
        raise UserError(f"--n_rkhs {hp['n_rkhs']} is smaller than the encoder's last width "
                        f"{last_width(hp['ndf'], hp['encoder_size'])} (4*ndf at 32 px, 8*ndf at 64/128 px): raise "
                        f"--n_rkhs or lower --ndf")
    if hp["method"] == "moco" and hp["moco_align_w"] == hp["moco_unif_w"] == hp["moco_contr_w"] == 0:
        raise UserError("every MoCo loss weight is 0: give --moco-align-w, --moco-unif-w or --moco-contr-w a "
                        "positive value")


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
    out.update({p.name: p.type(hp[p.name]) for p in wanted})
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
        elif p.type(given) != hp[p.name]:
            clashes.append(f"{p.flag_names()[0]} {given} (checkpoint: {hp[p.name]})")
    return clashes


def describe(hp):
    """A one-line summary for the start-up log."""
    return " ".join(f"{k}={v}" for k, v in hp.items())
