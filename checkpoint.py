"""Checkpoints: reading them safely (ours of every method, and the original AMDIM code's), rebuilding the model,
where a run starts (find_start: its own checkpoint to resume, --checkpoint_path, or nothing) and a training run's
whole round trip (save_run / restore_run).

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
import argparse
import os
import pickle
import pickletools
import re
import shutil
import sys
import warnings
import zipfile

import torch
import torch.nn as nn

import config
import distributed
import methods
import recipes
import seeds
from model import Conv3x3
from runlog import Meters
from utils import UserError

_BN_KEY = re.compile(r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def read(path, map_location="cpu", arg="--checkpoint_path"):
    """Load a checkpoint dict safely (weights_only=True): ours, the original AMDIM code's, or a seed repository's
    translated into ours (seeds.py); a user-facing error naming what is wrong otherwise.
    arg: how the messages name the place the user gave the path (train.py's flag, or test.py's argument)."""
    ckpt = load(path, map_location, arg)
    if isinstance(ckpt, dict) and "model" in ckpt and "hyperparams" in ckpt:
        return ckpt
    translated = seeds.translate(ckpt, path)
    if translated is None:
        raise UserError(f"{path} is not a checkpoint this code reads ({_contents(ckpt)}): point {arg} at a file "
                        f"written by train.py, the original AMDIM code, or a seed repository (MoCo, SwAV, CMC: "
                        f"docs/checkpoints.md lists the files)")
    return translated


def load(path, map_location="cpu", arg="--checkpoint_path"):
    """What torch.load(weights_only=True) reads from path, whatever it holds; a user-facing error for a file it
    cannot read. The seeds' files may hold an argparse.Namespace (CMC's "opt"): a plain record, allowed."""
    _check_readable(path, arg)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")   # torch.load is unsure of some
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 -- torch.load fails in many ways on damaged or foreign files
        raise _unloadable(path, arg) from None


def _contents(obj):
    """What a loaded file holds, in a few words."""
    if not isinstance(obj, dict):
        return f"it holds a {type(obj).__name__}"
    keys = sorted(map(str, obj))
    return f"a dict of {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" if keys else "an empty dict"


def _check_readable(path, arg):
    """A UserError unless path is a file this process can open."""
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a directory, not a file: point {arg} at the checkpoint file "
                        f"inside it{_example_inside(path)}")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist: check {arg}")
    try:
        open(path, "rb").close()
    except OSError as e:      # torch.load's own OSErrors may come from damaged content: tell them apart here
        raise UserError(f"cannot read checkpoint {path} ({e.strerror or e}): make the file readable or point "
                        f"{arg} at another copy") from None


def _unloadable(path, arg):
    """The UserError for a file torch.load refused. PyTorch's own message would advise weights_only=False,
    which runs whatever the pickle says: say instead what the file is."""
    unsafe = _unsafe_globals(path)
    if unsafe:
        return UserError(f"refusing to load {path}: it is a pickle that references {', '.join(unsafe[:3])}"
                         f"{' and more' if len(unsafe) > 3 else ''}, which could run code when loaded; only load "
                         f"checkpoints you trust, re-saved as plain state_dicts")
    return UserError(f"cannot read checkpoint {path}: {_describe(path)}, so not a PyTorch checkpoint (truncated, "
                     f"corrupt or another format); point {arg} at a complete .pth file")


def _example_inside(folder):
    """' (e.g. folder/amdim_cpt.pth)' naming a checkpoint-like file in folder, or '' when it holds none."""
    names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    for wanted in (lambda n: n == "amdim_cpt.pth", lambda n: n.endswith(".pth"), lambda n: n.endswith(".pt")):
        found = sorted(filter(wanted, names))
        if found:
            return f" (e.g. {os.path.join(folder, found[0])})"
    return ""


def _describe(path):
    """What an unloadable file is, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive that torch.load cannot read"
    if head[0] == pickle.PROTO[0]:
        return "it is a pickle that torch.load cannot read"
    return "it is neither a zip archive nor a pickle"


def _unsafe_globals(path):
    """The globals (module.name) that a pickle in `path` would import and weights_only loading does not allow:
    those are what could run code. Empty when the file holds no complete pickle: then it is merely unreadable."""
    try:
        if zipfile.is_zipfile(path):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        with open(path, "rb") as f:
            names = _pickle_globals(f)
    except Exception:  # noqa: BLE001 -- a damaged file: nothing in it can be imported
        return []
    allowed = _allowed_globals()
    return sorted(name for name in names if name not in allowed)


def _pickle_globals(f):
    """The globals referenced by the complete pickles at the start of the binary file f (torch's legacy format
    is several pickles in a row, then raw tensor bytes), found by reading the opcodes without running them."""
    names = set()
    while f.read(1) == pickle.PROTO:     # a binary pickle starts with its protocol; raw bytes follow the last
        f.seek(-1, os.SEEK_CUR)
        try:
            names |= _globals_of_one_pickle(f)
        except ValueError:                # not a complete pickle from here on
            break
    return names


def _globals_of_one_pickle(f):
    """module.name of each GLOBAL, INST and STACK_GLOBAL opcode in the pickle at f's position (up to its STOP).
    STACK_GLOBAL takes its names from the two values pushed before it, which may come from the memo."""
    names, pushed, memo = set(), [None, None], {}
    for op, arg, _ in pickletools.genops(f):
        if op.name in ("GLOBAL", "INST"):
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            module, name = pushed[-2:]
            names.add(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "<unknown>")
        if op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name not in ("PROTO", "FRAME", "STOP"):
            pushed.append(arg if isinstance(arg, str) else None)
    return names


def _allowed_globals():
    """The globals weights_only loading accepts: PyTorch's own list and any the user added."""
    try:
        from torch import _weights_only_unpickler
        allowed = set(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):       # a PyTorch without this (private) list: trust nothing
        allowed = set()
    allowed.add("argparse.Namespace")             # load() allows it
    for entry in torch.serialization.get_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        allowed.add(name or f"{obj.__module__}.{obj.__name__}")
    return allowed


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
# Where a run starts: its own resumable checkpoint, a given checkpoint, or nothing.

def find_start(args, cpt_path, dist=None):
    """(checkpoint dict or None, how, path): how is "resume" (this run's own file, or its .prev when the file is
    unreadable) or "init" (--checkpoint_path).

    Rank 0 decides, since only it writes checkpoints; every rank then reads the same file (its own cpt_path or
    --checkpoint_path) and checks that it is rank 0's. A rank that cannot is an error on every rank: without a
    filesystem they share, ranks on other nodes would start elsewhere and the job would hang."""
    dist = dist or distributed.Dist()
    decision = None
    if dist.is_main:
        try:
            ckpt, how, path = choose_start(args, cpt_path)
            decision = {"how": how, "path": path, "fingerprint": fingerprint(ckpt, path),
                        "suffix": path[len(cpt_path):] if how == "resume" else None}     # "" or ".prev"
        except UserError as e:
            decision = {"error": str(e)}
    decision = distributed.broadcast_object(decision, dist)
    if "error" in decision:
        raise UserError(decision["error"])
    how = decision["how"]
    if dist.is_main or how is None:
        distributed.agree(None, dist)
        return (ckpt if dist.is_main else None), how, decision["path"]
    # This rank's copy of rank 0's choice: its own run folder's file, or the --checkpoint_path both were given.
    path = cpt_path + decision["suffix"] if how == "resume" else args.checkpoint_path
    ckpt, error = read_as_rank_0(path, decision["fingerprint"], how, dist.rank)
    distributed.agree(error, dist)
    return ckpt, how, path


def choose_start(args, cpt_path):
    """find_start's choice, from this process's files alone."""
    if args.resume == "auto":
        for candidate in (cpt_path, cpt_path + ".prev"):
            if not os.path.isfile(candidate):
                continue
            try:
                ckpt = read(candidate)
            except UserError as e:
                print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr, flush=True)
                continue
            phase = ckpt.get("phase")
            if phase != args.phase:
                raise UserError(f"{cpt_path} holds a {phase or 'foreign'} checkpoint that this "
                                f"{args.phase} run would overwrite: pass another --run_name (and "
                                f"--checkpoint_path {cpt_path} to start from it)")
            return ckpt, "resume", candidate
    if args.checkpoint_path:
        return read(args.checkpoint_path), "init", args.checkpoint_path
    return None, None, None


def fingerprint(ckpt, path):
    """What tells two copies of a checkpoint apart cheaply: its size, position in training and data seed."""
    if ckpt is None:
        return None
    return [os.path.getsize(path), cursor(ckpt), int(ckpt.get("samples_done", 0)),
            ckpt.get("data_seed")]


def read_as_rank_0(path, expected, how, rank):
    """(checkpoint, None) when this rank reads the checkpoint rank 0 starts from at `path`, else (None, the
    error every rank reports)."""
    reason = None
    if not os.path.isfile(path):
        reason = "no such file on this rank's machine"
    else:
        try:
            ckpt = read(path)
        except UserError as e:
            reason = str(e)
        else:
            if fingerprint(ckpt, path) == expected:
                return ckpt, None
            reason = "this rank's copy differs from rank 0's"
    flag = "--output_dir on a filesystem every node shares" if how == "resume" else \
        "--checkpoint_path on a filesystem every node shares (or a copy of the same file on each node)"
    verb = "resumes" if how == "resume" else "starts"
    return None, (f"rank {rank} cannot read {path}, the checkpoint rank 0 {verb} from ({reason}): every process "
                  f"must see rank 0's checkpoint; pass {flag}")


# ----------------------------------------------------------------------------------------------------------
# A training run's round trip: everything a resumed run needs to continue exactly.

def save_run(run, progress=None):
    """Save the run (a train.Run) at an update boundary; rank 0 writes the file atomically.

    progress: the interrupted epoch's train.EpochProgress when saving mid-epoch (None at an epoch's end): the
    images of the epoch already trained, its wall time so far, and every rank's meters (gathered here), so the
    resumed epoch continues the same data and reports the whole epoch's means."""
    meters = distributed.all_gather_objects(progress.meters.state() if progress is not None else None)
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
             "world_size": run.dist.world_size, "eval_encoder": run.phase.eval_encoder,
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
    # This run's flags decide the base rates (files before base_lr lack it), and its device how the step runs:
    # a CUDA run's file carries fused=False, and a CPU resume built fused (so GradScaler hands the step its scale)
    # would then take the unfused step with a scale it refuses.
    kept = ("base_lr", "fused", "foreach")
    own = [{k: g[k] for k in kept if k in g} for g in run.optimizer.param_groups]
    run.optimizer.load_state_dict(ckpt["optimizer"])
    for group, settings in zip(run.optimizer.param_groups, own):
        group.update(settings)
    recipes.zero_momentum(run.optimizer)
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
