"""Checkpoints: reading them safely (ours of every method, and the original AMDIM code's), rebuilding the model,
and a training run's whole round trip (save_run / restore_run).

A checkpoint is a dict that torch.load(weights_only=True) can read (tensors, numbers, strings, lists, dicts):
    model        state_dict of the method (networks and state: momentum encoder, queue, ...)
    hyperparams  config.py's dict: method, arch, encoder_size, n_classes and the method's and backbone's own
                 (the original code's files hold AMDIM's ndf, n_classes, n_rkhs, tclip, n_depth, encoder_size,
                 use_bn, and no method or arch)
    cursor       {info_epoch, info_step, classifier_epoch, classifier_step}; *_epoch = the next epoch to run,
                 *_step = updates done
and, in files this code writes, what resuming needs: phase, optimizer, scaler, data_seed, world_size,
eval_encoder, args, and for a save mid-epoch: samples_done (images of the epoch trained, all processes),
batches_done (the same in updates), epoch_seconds and epoch_meters (every rank's running sums).
"""
import os
import pickle
import re
import shutil

import torch
import torch.nn as nn

import config
import methods
from model import Conv3x3
from utils import Meters, UserError, all_gather_objects

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
    """The model hyperparameters stored in a checkpoint, with types normalised (config.normalise)."""
    return config.normalise(ckpt["hyperparams"])


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
    """A freshly initialised method (methods.py) from its hyperparameters (AMDIM's when they name no method)."""
    return methods.build(config.normalise(hp))


def model_from(ckpt):
    """A float32 method rebuilt from a checkpoint dict's hyperparams and weights (ours or the original's)."""
    model = build_model(hyperparams(ckpt))
    model.load_state_dict(translate_state_dict(ckpt["model"], model))
    return model


def load_model(path, map_location="cpu"):
    """A float32 method rebuilt from a checkpoint file (ours or the original code's)."""
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


# ----------------------------------------------------------------------------------------------------------
# A training run's round trip: everything a resumed run needs to continue exactly.

def save_run(run, progress=None):
    """Save the run (a train.Run) at an update boundary; rank 0 writes the file atomically.

    progress: the interrupted epoch's train.EpochProgress when saving mid-epoch (None at an epoch's end): the
    images of the epoch already trained, its wall time so far, and every rank's meters (gathered here), so the
    resumed epoch continues the same data and reports the whole epoch's means."""
    meters = all_gather_objects(progress.meters.state() if progress is not None else None)
    if not run.dist.is_main:
        return
    args = run.args
    samples = progress.samples if progress is not None else 0
    state = {"model": run.model.state_dict(), "hyperparams": run.model.hyperparams,
             "cursor": dict(run.cursor), "phase": args.phase, "data_seed": run.data_seed,
             "samples_done": samples, "batches_done": samples // args.batch_size,
             "epoch_seconds": progress.seconds if progress is not None else 0.0,
             "epoch_meters": meters if progress is not None else [],
             "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
             "world_size": run.dist.world_size, "eval_encoder": args.eval_encoder,
             "run_info": run.log.run_info,
             "args": {k: v for k, v in vars(args).items() if v is None or isinstance(v, (bool, int, float, str))}}
    try:
        save(state, run.cpt_path)
    except OSError as e:
        kept = f"the previous checkpoint {run.cpt_path} is intact" if os.path.isfile(run.cpt_path) else \
            "no earlier checkpoint existed"
        raise UserError(f"could not write checkpoint {run.cpt_path} ({e.strerror or e}); {kept}; free disk "
                        f"space or pass another --output_dir, then re-run to resume") from None


def restore_run(run, ckpt):
    """Optimizer and scaler states from a checkpoint of this same run, and where its interrupted epoch was:
    (images of the epoch already trained, its wall time so far, Meters). Rank 0's meters hold every saved
    rank's sums (the epoch's means are reduced over ranks), so the world size may change. The model's weights
    and state come back with the model (model_from); random streams need no state, they are re-seeded from the
    position in training (train.reseed)."""
    base_lrs = [g["base_lr"] for g in run.optimizer.param_groups]
    run.optimizer.load_state_dict(ckpt["optimizer"])
    for group, lr in zip(run.optimizer.param_groups, base_lrs):
        group["base_lr"] = lr        # this run's flags decide the base rates (files before base_lr lack it)
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    saved_args = ckpt.get("args", {})
    # Files before samples_done counted updates of their own batch size.
    samples = int(ckpt.get("samples_done", int(ckpt.get("batches_done", 0)) * saved_args.get("batch_size", 0)))
    meters = Meters()
    if run.dist.is_main:
        for state in ckpt.get("epoch_meters") or []:
            meters.merge(state)
    if samples and saved_args.get("batch_size") != run.args.batch_size:
        run.log.print(f"note: the checkpoint was saved mid-epoch with --batch_size {saved_args.get('batch_size')}"
                      f", this run uses {run.args.batch_size}: the epoch continues after its first {samples} "
                      f"images, but the updates differ from an uninterrupted run's")
    elif samples and ckpt.get("world_size", run.dist.world_size) != run.dist.world_size:
        run.log.print(f"note: the checkpoint was saved mid-epoch by {ckpt['world_size']} process(es), this job "
                      f"has {run.dist.world_size}: the epoch continues after its first {samples} images, but "
                      f"each process's random stream differs from an uninterrupted run's")
    return samples, float(ckpt.get("epoch_seconds", 0.0)), meters
