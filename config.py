"""Model configuration: flags for every registered method's and backbone's hyperparameters, their defaults and
validation, and a checkpoint's stored values read back.

A run's hyperparameters (a flat dict, stored in every checkpoint as "hyperparams") are: method, arch,
encoder_size, n_classes, the AMDIM encoder's (ndf, n_rkhs, n_depth, use_bn) when arch is "amdim", the
method's own (Method.PARAMS, methods.py) and, for classifiers trained with --classifiers, their evaluation
protocol (protocols.py; absent: AMDIM's). Flags default to None so that a flag the user did not give never
contradicts a checkpoint; the defaults apply only to a model built from scratch.
"""
import argparse

from hparams import AT_LEAST_1, Param, number
from methods import METHODS
from protocols import PROTOCOLS
from model import CMC_RESNETS, RESNETS, last_width
from utils import UserError

CMC_ARCHS = ("alexnet_cmc",) + tuple(CMC_RESNETS)     # CMC's own encoders, one per view
ARCHS = ("amdim",) + RESNETS + CMC_ARCHS
SEED_ARCH_NAMES = {"alexnet": "alexnet_cmc"}          # the CMC seed's --model spelling


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every flag's default; a flag whose default is None is resolved later (per method, dataset or
    checkpoint), so "(default: None)" would mislead: its help says how instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


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


def all_params():
    """Every registered method's and backbone's Params, each once (methods may share one: --feat_dim)."""
    return tuple(dict.fromkeys(AMDIM_ENCODER + tuple(p for cls in METHODS.values() for p in cls.PARAMS)))


def flags_by_name():
    """Every hyperparameter's flag: name -> the Params of that name. Methods that follow different seeds may
    each declare their own Param under one name (SwAV's --base_lr 0.6, DeepCluster-v2's 4.8; one --nmb_prototypes
    or several): one flag serves them all, each method reading it with its own Param (of_flag)."""
    named = {}
    for p in all_params():
        named.setdefault(p.name, []).append(p)
    for name, params in named.items():
        if len({(p.type, p.switch, p.choices, p.flag_names()) for p in params}) > 1:
            raise TypeError(f"the Params named {name} differ in type, switch, choices or spelling")
    return named


def add_flags(parser):
    """--method, --arch and every hyperparameter's flag, each defaulting to None (see the module docstring)."""
    group = parser.add_argument_group("model (defaults apply to a model built from scratch; a checkpoint's "
                                      "values win, and flags may not contradict them)")
    group.add_argument("--method", choices=tuple(METHODS), help="self-supervised objective (default: amdim)")
    group.add_argument("--arch", "--model", choices=ARCHS, type=lambda name: SEED_ARCH_NAMES.get(name, name),
                       help="backbone (default: amdim for --method amdim; else resnet18 below 128 px, resnet50 from "
                            "128 px); --method cmc also takes CMC's own encoders: alexnet_cmc (the seed's --model "
                            "alexnet, half an AlexNet per view) and resnet18v1..v3, resnet50v1..v3 (half, the same, "
                            "twice the width per view)")
    for params in flags_by_name().values():
        p = params[0]
        text = "; ".join(f"[{_owner(q)}] {q.help} (default: {'off' if q.switch else q.shown_default()})"
                         for q in params)
        if p.switch:
            group.add_argument(*p.flag_names(), dest=p.name, action="store_const", const=True, help=text)
        elif p.type is bool:
            group.add_argument(*p.flag_names(), dest=p.name, type=int, choices=(0, 1), help=text)
        elif p.choices is not None:
            group.add_argument(*p.flag_names(), dest=p.name, choices=p.choices, help=text)
        else:       # Params of one name that allow different ranges are checked when the model is built (validate)
            allowed = p.allowed if all(q.allowed == p.allowed for q in params) else None
            group.add_argument(*p.flag_names(), dest=p.name, type=number(p.type, allowed), help=text,
                               nargs="+" if any(q.many for q in params) else None)


def _owner(p):
    return "AMDIM encoder" if p in AMDIM_ENCODER else ", ".join(name for name, cls in METHODS.items()
                                                                if p in cls.PARAMS)


def of_flag(p, value):
    """A flag's value as Param p reads it: the flag takes several values where another method's Param of its
    name does, so p, taking one, takes a list of exactly one."""
    if isinstance(value, list) and not p.many:
        if len(value) != 1:
            raise UserError(f"{p.flag_names()[0]} takes one value for this method, got "
                            f"{' '.join(map(str, value))}: give one")
        value = value[0]
    return p.convert(value)


def params_of(method, arch):
    """The Params a (method, arch) model has."""
    return (AMDIM_ENCODER if arch == "amdim" else ()) + METHODS[method].PARAMS


def from_flags(args, encoder_size, n_classes):
    """Hyperparameters of a model built from scratch: the flags given, defaults for the rest; validated."""
    method = args.method or "amdim"
    arch = args.arch or METHODS[method].default_arch(encoder_size)
    hp = dict(method=method, arch=arch, encoder_size=encoder_size, n_classes=n_classes)
    own = params_of(method, arch)
    for p in own:
        value = getattr(args, p.name, None)
        hp[p.name] = p.convert(p.default_for(encoder_size, arch)) if value is None else of_flag(p, value)
    names = {p.name for p in own}
    unused = [params[0].flag_names()[0] for name, params in flags_by_name().items() if name not in names
              and getattr(args, name, None) is not None]
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
    if hp["arch"] in CMC_ARCHS and hp["method"] != "cmc":
        instead = CMC_RESNETS[hp["arch"]][0] if hp["arch"] in CMC_RESNETS else "resnet18 or resnet50"
        raise UserError(f"--arch {hp['arch']} is one of CMC's own encoders (one per view): it applies to --method "
                        f"cmc; use {instead} for --method {hp['method']}")
    for p in params_of(hp["method"], hp["arch"]):
        if not p.admits(hp[p.name]):
            shown = " ".join(map(str, hp[p.name])) if p.many else hp[p.name]
            expected = f"one of {', '.join(p.choices)}" if p.choices else p.allowed.describe(p.type)
            raise UserError(f"{p.flag_names()[0]} {shown} is out of range: expected "
                            f"{'each ' if p.many else ''}{expected}")
    if hp["arch"] == "amdim" and hp["n_rkhs"] < last_width(hp["ndf"], hp["encoder_size"]):
        raise UserError(f"--n_rkhs {hp['n_rkhs']} is smaller than the encoder's last width "
                        f"{last_width(hp['ndf'], hp['encoder_size'])} (4*ndf at 32 px, 8*ndf at 64/128 px): raise "
                        f"--n_rkhs or lower --ndf")
    METHODS[hp["method"]].validate(hp)


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
    for p in wanted:
        if p.legacy is not None:
            hp.setdefault(p.name, p.legacy)
    derived = METHODS[hp["method"]].DERIVED
    missing = [p.name for p in wanted if p.name not in hp] + \
        [k for k in ("encoder_size", "n_classes", *derived) if k not in hp]
    if missing:
        raise UserError(f"checkpoint hyperparams lack {', '.join(missing)}; it was not written by AMDIM code")
    protocol = hp.get("protocol", "amdim")
    if protocol not in PROTOCOLS:
        raise UserError(f"the checkpoint's evaluation protocol {protocol!r} is unknown to this code; update the code "
                        f"or retrain its classifiers with --classifiers --protocol {'|'.join(PROTOCOLS)}")
    out = dict(method=hp["method"], arch=hp["arch"], encoder_size=int(hp["encoder_size"]),
               n_classes=int(hp["n_classes"]))
    if "protocol" in hp:
        out["protocol"] = protocol
    if hp.get("probe_layer") is not None:
        out["probe_layer"] = int(hp["probe_layer"])
    out.update({p.name: p.convert(hp[p.name]) for p in wanted})
    out.update({k: kind(hp[k]) for k, kind in derived.items()})
    return out


def contradictions(args, hp):
    """Flags given on the command line that differ from a checkpoint's hyperparameters, as readable strings."""
    clashes = [f"--{k} {getattr(args, k)} (checkpoint: {hp[k]})" for k in ("method", "arch")
               if getattr(args, k, None) is not None and getattr(args, k) != hp[k]]
    own = {p.name: p for p in params_of(hp["method"], hp["arch"])}
    for name, params in flags_by_name().items():
        given = getattr(args, name, None)
        if given is None:
            continue
        p = own.get(name)
        if p is None:
            clashes.append(f"{params[0].flag_names()[0]} (not a hyperparameter of the checkpoint's {hp['method']}/"
                           f"{hp['arch']} model)")
        elif of_flag(p, given) != hp[p.name]:
            shown = " ".join(map(str, given)) if isinstance(given, list) else given
            clashes.append(f"{p.flag_names()[0]} {shown} (checkpoint: {hp[p.name]})")
    return clashes


def describe(hp):
    """A one-line summary for the start-up log."""
    return " ".join(f"{k}={v}" for k, v in hp.items())
