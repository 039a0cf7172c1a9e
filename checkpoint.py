"""Reading and writing checkpoints: ours, and the original AMDIM code's.

A checkpoint is a dict that torch.load(weights_only=True) can read (tensors, numbers, strings, lists, dicts):
    model        state_dict
    hyperparams  {ndf, n_classes, n_rkhs, tclip, n_depth, encoder_size, use_bn}
    cursor       {info_epoch, info_step, classifier_epoch, classifier_step}; *_epoch = the next epoch to run,
                 *_step = updates done
and, in files this code writes, what resuming needs: phase, optimizer, scaler, args.
"""
import os
import pickle
import re
import shutil

import torch
import torch.nn as nn

from model import Conv3x3, Model
from utils import UserError

HYPERPARAMS = ("ndf", "n_classes", "n_rkhs", "tclip", "n_depth", "encoder_size", "use_bn")
_BN_KEY = re.compile(r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def read(path, map_location="cpu"):
    """Load a checkpoint dict safely (weights_only=True); a user-facing error for anything else."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist: check --checkpoint_path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses pickles that would import or call arbitrary objects.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing to load {path}: it holds objects other than tensors and plain data, which "
                        f"could run code ({first}); only load checkpoints you trust, re-saved as plain "
                        f"state_dicts") from None
    except Exception as e:  # noqa: BLE001 -- torch.load fails in many ways on damaged files
        raise UserError(f"cannot read checkpoint {path}: the file is truncated or not a PyTorch checkpoint "
                        f"({type(e).__name__}); point --checkpoint_path at a complete .pth file") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "hyperparams" not in ckpt:
        raise UserError(f"{path} is not an AMDIM checkpoint (no 'model' and 'hyperparams' entries); "
                        f"point --checkpoint_path at a file written by train.py or the original AMDIM code")
    return ckpt


def hyperparams(ckpt):
    """The model hyperparameters stored in a checkpoint, with types normalised."""
    hp = ckpt["hyperparams"]
    missing = [k for k in HYPERPARAMS if k not in hp]
    if missing:
        raise UserError(f"checkpoint hyperparams lack {', '.join(missing)}; it was not written by AMDIM code")
    return dict(ndf=int(hp["ndf"]), n_classes=int(hp["n_classes"]), n_rkhs=int(hp["n_rkhs"]),
                tclip=float(hp["tclip"]), n_depth=int(hp["n_depth"]), encoder_size=int(hp["encoder_size"]),
                use_bn=bool(hp["use_bn"]))


def cursor(ckpt):
    """Training position (zeros where the file has none)."""
    cur = dict(info_epoch=0, info_step=0, classifier_epoch=0, classifier_step=0)
    cur.update({k: int(v) for k, v in ckpt.get("cursor", {}).items() if k in cur})
    return cur


def _is_unused_bn(model, key):
    """Whether `key` (already translated) is a BatchNorm entry the original kept for a disabled BN layer.

    The original always built BatchNorm modules and skipped them when use_bn was off; our model builds
    nn.Identity (or, in the stem, nothing) there instead.
    """
    if not _BN_KEY.search(key):
        return False
    owner = key.rsplit(".", 1)[0]
    try:
        return isinstance(model.get_submodule(owner), nn.Identity)
    except AttributeError:
        parent = owner.rsplit(".", 1)[0]
        try:
            return isinstance(model.get_submodule(parent), Conv3x3)
        except AttributeError:
            return False


def translate_state_dict(state_dict, model):
    """Map a state_dict written by the original code (or ours) onto `model`'s keys, in float32.

    The original's keys carry nn.DataParallel's `module.`, its MaybeBatchNorm2d wrapper adds `.bn.`, its loss
    module holds a `g2l_loss.masks_r5` buffer, and apex O2 training may have stored float16 weights.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("g2l_loss."):
            continue
        key = key.replace("module.", "")
        key = re.sub(r"\.bn(\.(weight|bias|running_mean|running_var|num_batches_tracked))$", r"\1", key)
        if value.is_floating_point():
            value = value.float()
        out[key] = value
    expected = model.state_dict().keys()
    unexpected = [k for k in out if k not in expected and not _is_unused_bn(model, k)]
    missing = [k for k in expected if k not in out]
    if unexpected or missing:
        raise UserError(f"checkpoint weights do not fit the model built from its hyperparams "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the file may be damaged")
    return {k: v for k, v in out.items() if k in expected}


def build_model(hp):
    return Model(hp["ndf"], hp["n_classes"], hp["n_rkhs"], hp["tclip"], hp["n_depth"], hp["encoder_size"],
                 hp["use_bn"])


def model_from(ckpt):
    """A float32 Model rebuilt from a checkpoint dict's hyperparams and weights (ours or the original's)."""
    model = build_model(hyperparams(ckpt))
    model.load_state_dict(translate_state_dict(ckpt["model"], model))
    return model


def load_model(path, map_location="cpu"):
    """A float32 Model rebuilt from a checkpoint file (ours or the original code's)."""
    return model_from(read(path, map_location))


def save(state, path):
    """Write `state` to `path` atomically; the previous file survives as `<path>.prev`.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and only then replace
    `path` (os.replace is atomic on POSIX), so a crash at any moment leaves a loadable checkpoint.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as e:
                # The zip writer reports a failed write (disk full, file size limit) as a RuntimeError.
                raise OSError(f"writing failed, is the disk full? ({str(e).splitlines()[0]})") from e
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            _keep_previous(path, tmp + ".prev")
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        for leftover in (tmp, tmp + ".prev"):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise


def remove_stale_temporaries(path):
    """Delete temporary files that a save killed mid-way left next to `path`."""
    directory, name = os.path.split(os.path.abspath(path))
    for entry in os.listdir(directory):
        if entry.startswith(f".{name}.tmp"):
            os.remove(os.path.join(directory, entry))


def _keep_previous(path, staging):
    """Make `<path>.prev` a copy of `path` while `path` itself stays in place (a hard link where possible)."""
    try:
        os.link(path, staging)
    except OSError:
        shutil.copyfile(path, staging)
    os.replace(staging, path + ".prev")


def _fsync_dir(directory):
    """Persist the directory entry changes (the renames) themselves."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
