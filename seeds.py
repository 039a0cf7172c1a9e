"""The seed repositories' checkpoint files, read as this repo's: each is recognised from its contents and
translated into the checkpoint dict checkpoint.py reads ("model": a complete state_dict of the method, and
"hyperparams"), so test.py, train.py --classifiers --checkpoint_path, hubconf.py and --knn take them as they take
ours.

    format        written by                                             holds
    moco          SsnL/moco_align_uniform main_moco.py                   {"state_dict": module.encoder_q.* (a
                                                                         torchvision ResNet whose fc is the head,
                                                                         fc.0/fc.2 with --mlp), encoder_k.*,
                                                                         queue (dim, K), queue_ptr}
    moco_lincls   its main_lincls.py                                     {"state_dict": module.<ResNet> with the
                                                                         trained fc}: a scored classifier
    swav          facebookresearch/swav's model zoo (SwAV, SeLa-v2) and main_swav.py: the state_dict (bare or
                  under "state_dict") of module.<ResNet>, projection_head, prototypes
    deepclusterv2 its DeepCluster-v2 files (zoo, main_deepclusterv2.py): the same with several prototype heads,
                  prototypes.prototypes0, 1, ...
    swav_linear   its eval_linear.py                                     {"state_dict": module.linear.*}: the
                                                                         classifier alone (test.py
                                                                         --linear_classifier)
    cmc           HobbitLong/CMC train_CMC.py                            {"opt", "model": encoder.module.l_to_ab.*
                                                                         and ab_to_l.* (a ResNet per view, fc the
                                                                         head, or an AlexNet half, fc8 the head),
                                                                         "contrast": memory banks, params}
    cmc_linear    its LinearProbing.py                                   {"opt" (its --layer), "classifier":
                                                                         classifier.LiniearClassifier.* (ResNets)
                                                                         or LinearClassifier.* (AlexNet)}: the
                                                                         classifier alone, of any --layer

The seeds' ResNets have ImageNet stems, so they become this repo's 128 px encoders (model.ResNetTrunk); their
classifiers become the seed protocol's LinearProbe (protocols.py), and a file without a trained classifier says
so ("untrained_classifiers"). Translation is deterministic: what the file lacks (the evaluation classifier of an
encoder-only file) is initialised from a fixed seed, so every process of a job reads the same model.
"""
import argparse

import torch

import config
import methods
from augment import NORMALIZATION
from imageops import COLOUR_SPACES
from model import CMC_RESNETS
from utils import UserError

ENCODER_SIZE = 128
_BLOCKS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet50"}


def translate(obj, path):
    """This repo's checkpoint dict for a seed's file (obj: what torch.load returned), None when obj is none of
    the seeds' formats; a UserError for a seed's file this code cannot use, naming what it holds."""
    if not isinstance(obj, dict):
        return None
    kind = classifier_format(obj)
    if kind:
        raise UserError(f"{path} holds a linear classifier without its encoder (the seed's {kind} file): score "
                        f"the encoder's checkpoint with test.py ENCODER_FILE --linear_classifier {path}")
    state = _stripped(obj.get("state_dict", obj)) if _tensors(obj.get("state_dict", obj)) else None
    if state is not None and any(k.startswith("encoder_q.") for k in state):
        return _moco(state)
    if state is not None and any(k.startswith(("projection_head", "prototypes")) for k in state):
        return _swav(state)
    if state is not None and "fc.weight" in state and "conv1.weight" in state:
        return _moco_lincls(state)
    if isinstance(obj.get("model"), dict) and any("l_to_ab." in k for k in obj["model"]):
        return _cmc(obj)
    return None


# LinearProbing.py's classifier weight: LinearClassifierResNet spells it LiniearClassifier, LinearClassifierAlexNet
# LinearClassifier.
PROBE_WEIGHTS = ("LiniearClassifier.weight", "LinearClassifier.weight")


def classifier_format(obj):
    """"eval_linear.py" or "LinearProbing.py" for a seed's classifier-only file, else None."""
    if isinstance(obj.get("classifier"), dict) and any(k.endswith(PROBE_WEIGHTS) for k in obj["classifier"]):
        return "LinearProbing.py"
    state = obj.get("state_dict")
    if isinstance(state, dict) and state and all(k.split(".")[0] in ("linear", "bn") for k in _stripped(state)):
        return "eval_linear.py"
    return None


def linear_classifier(obj, path):
    """(protocol, weight (n_classes, n_features), bias (n_classes,), layer) of a seed's classifier-only file, layer
    the encoder layer it reads (LinearProbing.py's --layer; None: the pooled features); a UserError for another
    file or a classifier on features this repo does not give."""
    kind = classifier_format(obj) if isinstance(obj, dict) else None
    if kind is None:
        raise UserError(f"{path} is not a seed's linear classifier (SwAV's eval_linear.py or CMC's "
                        f"LinearProbing.py checkpoint): point --linear_classifier at one")
    if kind == "eval_linear.py":
        state = _stripped(obj["state_dict"])
        if "bn.weight" in state or state["linear.weight"].shape[1] == 8192:
            raise UserError(f"{path} is an eval_linear.py classifier trained with --global_pooling false (on a "
                            f"2x2-pooled map): this repo's probes read the globally pooled features; use a "
                            f"classifier trained with global pooling")
        return "swav", state["linear.weight"].float(), state["linear.bias"].float(), None
    state = _stripped(obj["classifier"])
    name = next(k for k in state if k.endswith(PROBE_WEIGHTS))[:-len(".weight")]
    return "cmc", state[name + ".weight"].float(), state[name + ".bias"].float(), getattr(obj.get("opt"), "layer", 6)


# ----------------------------------------------------------------------------------------------------------
# Key names.

def _tensors(d):
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _stripped(state):
    """state with every `module.` (DataParallel's, DistributedDataParallel's) taken out of its keys."""
    return {k.replace("module.", ""): v for k, v in state.items()}


def _under(state, prefix):
    """The entries of state under prefix, with prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _trunk(state):
    """A torchvision-layout ResNet's own entries (the stem and layer1-4), without any head."""
    return {k: v for k, v in state.items() if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3",
                                                                   "layer4")}


def _resnet_arch(trunk, what, widths=None):
    """"resnet18" or "resnet50" for a trunk of that layout at the usual width; with widths (CMC's: {width:
    arch}), the arch of its stages' width. A UserError naming what it is otherwise."""
    blocks = tuple(len({k.split(".")[1] for k in trunk if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    arch = _BLOCKS.get(blocks)
    if arch is None:
        raise UserError(f"{what}'s backbone is a ResNet with {blocks} blocks per stage: this repo builds "
                        f"{' and '.join(_BLOCKS.values())} only")
    stem, inner = trunk["conv1.weight"].shape[0], trunk["layer1.0.conv1.weight"].shape[0]
    known = widths(arch) if widths else {1.0: arch}
    if stem != 64 or inner / 64 not in known:
        factor = inner / 64
        raise UserError(f"{what}'s backbone is a {arch} {factor:g}x as wide as the standard one (its first "
                        f"block has {inner} channels, not 64): this repo builds the standard width only; use the "
                        f"seed's standard-width file")
    return known[inner / 64]


def _hyperparams(method, arch, n_classes=1000, **own):
    """A full hyperparameter dict as a fresh model's (config.from_flags: the method's defaults at 128 px, checked)
    with `own` values, derived ones (n_data, ...) among them."""
    names = {p.name for p in config.params_of(method, arch)}
    flags = argparse.Namespace(method=method, arch=arch, **{k: v for k, v in own.items() if k in names})
    hp = config.from_flags(flags, ENCODER_SIZE, n_classes)
    hp.update({k: v for k, v in own.items() if k not in names})
    return hp


def _checkpoint(hp, entries, seed_format, trained):
    """The checkpoint dict of a method built from hp whose state_dict entries come from the seed's file
    (`entries`), the rest (what the file lacks) initialised from a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = methods.build(hp)
    expected = model.state_dict()
    wrong = [k for k, v in entries.items() if k not in expected or expected[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        found = tuple(entries[k].shape)
        wanted = tuple(expected[k].shape) if k in expected else "no such entry"
        raise UserError(f"the {seed_format} checkpoint's {k} {found} does not fit the model it describes "
                        f"({wanted}); the file may be damaged")
    state = dict(expected)
    state.update({k: v.float() if v.is_floating_point() else v for k, v in entries.items()})
    return {"model": state, "hyperparams": hp, "seed_format": seed_format, "eval_encoder": True,
            "untrained_classifiers": not trained}


def _with_prefix(prefix, state):
    return {prefix + k: v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------
# The formats.

def _moco(state):
    """main_moco.py: encoder_q / encoder_k (ResNet + fc head), queue (dim, K) and queue_ptr (1,)."""
    q = _under(state, "encoder_q.")
    arch = _resnet_arch(_trunk(q), "the MoCo checkpoint")
    mlp = "fc.0.weight" in q
    last = "fc.2.weight" if mlp else "fc.weight"
    if last not in q:
        raise UserError("the MoCo checkpoint's encoder_q has no fc head (fc.weight, or fc.0/fc.2 with --mlp); the "
                        "file may be damaged")
    own = {"moco_dim": q[last].shape[0], "mlp": mlp}
    if "queue" in state:
        own["moco_k"] = state["queue"].shape[1]
    hp = dict(_hyperparams("moco", arch, **own), protocol="moco")
    k = _under(state, "encoder_k.") or q
    entries = {**_with_prefix("backbone.net.", _trunk(q)), **_with_prefix("head.", _under(q, "fc.")),
               **_with_prefix("backbone_k.net.", _trunk(k)), **_with_prefix("head_k.", _under(k, "fc."))}
    if "queue" in state:
        entries["queue"] = state["queue"].t().contiguous()
        entries["queue_ptr"] = state["queue_ptr"].reshape(())
    return _checkpoint(hp, entries, "moco", trained=False)


def _moco_lincls(state):
    """main_lincls.py: a ResNet with its trained fc, MoCo's linear classifier on the frozen encoder."""
    trunk = _trunk(state)
    arch = _resnet_arch(trunk, "the linear-classifier checkpoint")
    n_classes = state["fc.weight"].shape[0]
    hp = dict(_hyperparams("moco", arch, n_classes=n_classes), protocol="moco")
    entries = {**_with_prefix("backbone.net.", trunk), **_with_prefix("backbone_k.net.", trunk),
               "evaluator.linear.weight": state["fc.weight"], "evaluator.linear.bias": state["fc.bias"]}
    return _checkpoint(hp, entries, "moco_lincls", trained=True)


def _swav(state):
    """The SwAV repository's pre-trained ResNet: trunk, projection_head (Linear, BN, ReLU, Linear, or one
    Linear) and prototypes: one set (SwAV, SeLa-v2: --method swav) or several (prototypes.prototypes0, 1, ...:
    DeepCluster-v2, --method deepclusterv2, whose memory the file does not hold: as many rows as the largest head
    has clusters, to be refilled by training)."""
    trunk = _trunk(state)
    arch = _resnet_arch(trunk, "the SwAV-repository checkpoint")
    head = _under(state, "projection_head.")
    if not head:
        raise UserError("the SwAV-repository checkpoint has prototypes but no projection_head; this repo's SwAV "
                        "always has one")
    hidden = head["0.weight"].shape[0] if "0.weight" in head else 0
    feat_dim = (head["3.weight"] if hidden else head["weight"]).shape[0]
    own = {"hidden_mlp": hidden, "feat_dim": feat_dim}
    entries = {**_with_prefix("backbone.net.", trunk), **_with_prefix("head.", head)}
    heads = _under(state, "prototypes.prototypes")
    if heads:
        sets = [heads[f"{i}.weight"] for i in range(len(heads))]
        own.update(nmb_prototypes=[p.shape[0] for p in sets], n_data=max(p.shape[0] for p in sets))
        entries.update({f"prototypes.{i}.weight": p for i, p in enumerate(sets)})
        hp = dict(_hyperparams("deepclusterv2", arch, **own), protocol="swav")
        return _checkpoint(hp, entries, "deepclusterv2", trained=False)
    if "prototypes.weight" in state:
        own["nmb_prototypes"] = state["prototypes.weight"].shape[0]
        entries["prototypes.weight"] = state["prototypes.weight"]
    hp = dict(_hyperparams("swav", arch, **own), protocol="swav")
    return _checkpoint(hp, entries, "swav", trained=False)


def _cmc(obj):
    """train_CMC.py: a ResNet per view (l_to_ab on L, ab_to_l on ab; fc the head) and the memory banks."""
    state = {k.replace("encoder.", "", 1) if k.startswith("encoder.") else k: v
             for k, v in _stripped(obj["model"]).items()}
    views = _under(state, "l_to_ab."), _under(state, "ab_to_l.")
    if any(k.startswith("conv_block_1") for k in views[0]):       # --model alexnet: model.AlexNetHalf's names
        arch, head = "alexnet_cmc", "fc8.0."
        trunk_l, trunk_ab = ({k: v for k, v in view.items() if not k.startswith("fc8.")} for view in views)
        prefix = ""
    else:
        trunk_l, trunk_ab = _trunk(views[0]), _trunk(views[1])
        # v2 (width 1) is torchvision's layout: it reads as plain resnet18 / resnet50.
        arch = _resnet_arch(trunk_l, "the CMC checkpoint", lambda depth: {
            width: depth if width == 1.0 else name for name, (d, width) in CMC_RESNETS.items() if d == depth})
        head, prefix = "fc.", "net."
    own = {"feat_dim": views[0][head + "weight"].shape[0], "n_data": 1,
           "rgb_mean": list(NORMALIZATION["imagenet"][0]), "rgb_std": list(NORMALIZATION["imagenet"][1])}
    entries = {**_with_prefix(f"backbone_l.{prefix}", trunk_l), **_with_prefix(f"backbone_ab.{prefix}", trunk_ab),
               **_with_prefix("head_l.", _under(views[0], head)), **_with_prefix("head_ab.", _under(views[1], head))}
    contrast = obj.get("contrast")
    if isinstance(contrast, dict) and "memory_l" in contrast:
        k, t, z_l, z_ab, m = contrast["params"].tolist()
        # params is float32: its T and momentum print as the flags they were (0.07, not 0.07000000029802322).
        own.update(n_data=contrast["memory_l"].shape[0], nce_k=int(k), nce_t=float(f"{t:.7g}"),
                   nce_m=float(f"{m:.7g}"))
        entries.update(memory_l=contrast["memory_l"], memory_ab=contrast["memory_ab"], z_l=torch.tensor(z_l),
                       z_ab=torch.tensor(z_ab))
    opt = obj.get("opt")
    if getattr(opt, "softmax", None) is not None:
        own["softmax"] = bool(opt.softmax)
    if getattr(opt, "view", None) in COLOUR_SPACES:                # --view Lab | YCbCr
        own["view"] = opt.view
    hp = dict(_hyperparams("cmc", arch, **own), protocol="cmc")
    return _checkpoint(hp, entries, "cmc", trained=False)
