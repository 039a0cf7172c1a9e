"""Train a self-supervised encoder (AMDIM, MoCo with alignment and uniformity, CMC or SwAV) with online evaluation
classifiers, or (--classifiers) the evaluation classifiers alone on a frozen encoder. One loop serves every
method and both phases.

    python train.py --dataset C10 --input_dir ./data                          # AMDIM, self-supervised
    python train.py --method moco --dataset C10 --aug-plus --mlp --cos        # MoCo v2 with align/uniform
    python train.py --method swav --dataset C10 --queue_length 3840           # SwAV, multi-crop 2x32 + 4x16
    python train.py --classifiers --checkpoint_path runs/default_run/amdim_cpt.pth --run_name c10_cls ...

Outputs land in <output_dir>/<run_name>/: the checkpoint <cpt_name> (and <cpt_name>.prev), TensorBoard event
files and metrics.jsonl. Re-running the same command resumes from that checkpoint.
"""
import argparse
import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

import augment
import checkpoint
import compiling
import config
import datasets
import distributed
import engine
import hparams
import imagecache
import methods
import mixed_precision as mp
import phases
import protocols
import recipes
import runlog
import subset as subsets
import utils
import views_grid
from phases import CLASSIFIERS, SELF_SUPERVISED
from runlog import Meters, RunLog
from utils import UserError, run_main, seed_everything


def parse_args(argv=None):
    """Every number is range-checked as argparse reads it (hparams.number), so a bad value is a usage error naming
    that flag before any check that combines flags runs and before anything is written."""
    count, positive = hparams.non_negative_int, hparams.positive_int
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=config.HelpFormatter)
    p.add_argument("--dataset", type=str.upper, default="STL10", choices=datasets.DATASETS,
                   help="what to train and test on (FOLDER: train/ and val/ class folders under --input_dir)")
    p.add_argument("--input_dir", default="./data", help="where datasets live (torchvision ones download here)")
    p.add_argument("--image_size", type=int, choices=(32, 64, 128),
                   help="encoder input size; FOLDER needs it, the other datasets fix it (default: C10, C100, "
                        "DIGITS 32; STL10 64; IN128, PLACES205 128)")
    p.add_argument("--subset", help="IN128/PLACES205/FOLDER: a file of class folder names, one a line, to train "
                                    "and test on those classes only (assets/imagenet100_classes.txt: ImageNet-100; "
                                    "default: every class)")
    p.add_argument("--aug", default="default", choices=datasets.AUGMENTATIONS,
                   help="AMDIM's augmentation: its default recipe, or with a policy added")
    p.add_argument("--per_image_aug", action="store_true",
                   help="augment image by image in the loader workers even where batched on-device "
                        "augmentation applies (C10, C100, STL10, DIGITS with --aug default; image folders, whose "
                        "workers otherwise cut uint8 crops that the device colours)")
    p.add_argument("--cache_images", choices=imagecache.MODES, default="auto",
                   help="image folders: decode each split once into memory (cached on disk beside it) so that "
                        "training augments whole batches on the device, as for the in-memory datasets; auto does "
                        "where the decoded images take at most 2 GiB and half the available memory")
    p.add_argument("--batch_size", default=200, help="global batch (two views of each image)",
                   type=hparams.number(int, hparams.Range(minimum=2, why="train-mode BatchNorm needs 2 images")))
    # 0 is allowed: it freezes every weight, a sanity check the tests use.
    p.add_argument("--learning_rate", "--lr", type=hparams.non_negative_float,
                   help="default: the method's (amdim 2e-4; moco 0.03 * batch_size / 128; --classifiers 2e-4)")
    p.add_argument("--cos", action="store_true", help="cosine learning-rate schedule instead of step decay "
                                                      "(self-supervised phase)")
    p.add_argument("--seed", default=1, help="seeds weights, augmentation and data order",
                   type=hparams.number(int, hparams.Range(minimum=0, maximum=2 ** 32 - 1, why="NumPy's seeds")))
    p.add_argument("--amp", action="store_true", help="mixed precision through torch.autocast")
    p.add_argument("--amp_dtype", choices=mp.AMP_DTYPES,
                   help="--amp's dtype: auto (the default) is bfloat16 where the device computes it natively, "
                        "else float16; float16 trains with a GradScaler")
    p.add_argument("--tf32", choices=mp.TF32_CHOICES, default="on",
                   help="float32 CUDA runs: let matmuls and convolutions use TF32 tensor cores (Ampere and later; "
                        "10-bit mantissa); off keeps full float32. Not used under --amp or on the CPU")
    p.add_argument("--classifiers", "--finetune", action="store_true",
                   help="train only the evaluation classifiers on a frozen encoder")
    p.add_argument("--protocol", choices=tuple(protocols.PROTOCOLS),
                   help="--classifiers: whose linear evaluation (protocols.py): amdim (an MLP and a linear "
                        "classifier, Adam; the default), or the seed's own linear classifier, optimiser, schedule "
                        "and training crops: moco (main_lincls.py), swav (eval_linear.py), cmc (LinearProbing.py); "
                        "or semisup, SwAV's eval_semisup.py, which fine-tunes the encoder with a linear head (with "
                        "--labels_file or --label_fraction); default: a resumed run's, else amdim")
    p.add_argument("--layer", type=positive,
                   help="--classifiers: the encoder layer the classifiers (and kNN) read, CMC's LinearProbing.py "
                        "--layer: for --arch alexnet_cmc 1-5 (conv1-conv5, max-pooled to the seed's 10, 6, 5, 5 and "
                        "6 px), for ResNets 1-6 (the stem and stages 1-3 average-pooled to 8, 6, 4 and 3 px, stage "
                        "4's map, the pooled features); default: the last, what the seed probes")
    p.add_argument("--labels_file", help="--classifiers on image folders: train on the images this file names, "
                                         "one file name a line (the 1%% / 10%% ImageNet subset files of SimCLR "
                                         "and SwAV's eval_semisup.py, e.g. n01440764_10026.JPEG; default: every "
                                         "training image)")
    p.add_argument("--label_fraction", type=hparams.number(float, hparams.Range(above=0, maximum=1)),
                   help="--classifiers: train on this fraction of each class's training images (at least one "
                        "each), e.g. 0.01 or 0.1, drawn with --label_seed (default: every training image)")
    p.add_argument("--label_seed", type=count, default=0, help="the seed of --label_fraction's draw")
    p.add_argument("--checkpoint_path", "--cpt_load_path",
                   help="checkpoint to start from (default: none, a model built from scratch)")
    config.add_flags(p)
    p.add_argument("--output_dir", default="./runs", help="where run folders go")
    p.add_argument("--run_name", default="default_run", help="the run's folder under --output_dir")
    p.add_argument("--cpt_name", default="amdim_cpt.pth", help="checkpoint file name in the run's folder")
    p.add_argument("--epochs", type=positive,
                   help="default: the seed's (amdim 300, ImageNet/Places205 50; moco 200; classifiers 120, "
                        "ImageNet 30, Places205 15); LR milestones scale with it (--lr_decay_epochs sets them)")
    p.add_argument("--updates", type=positive,
                   help="instead of --epochs: the fewest whole epochs that hold this many updates (compare.py's "
                        "--budget_updates); default: none, --epochs sets the run's length")
    p.add_argument("--lr_decay_epochs", type=hparams.epoch_list,
                   help="the epochs at which the learning rate decays, comma-separated (the seed CMC's flag: "
                        "120,160,200 with --epochs 240); step-decay schedules only (not --cos, not --method swav); "
                        "default: the recipe's milestones scaled to --epochs")
    p.add_argument("--warmup_updates", type=count,
                   help="linear LR warm-up, self-supervised only (default: amdim 500, moco 0)")
    p.add_argument("--num_workers", type=count,
                   help="data loader processes per training process (0: load in the training process); default: "
                        "the cores this process may use, shared by the training processes on this machine, less "
                        f"one, at most {engine.MAX_WORKERS}")
    p.add_argument("--eval_encoder", action="store_true",
                   help="--classifiers: keep the frozen encoder's BatchNorm in eval mode")
    p.add_argument("--bn_warmup", choices=("train", "test"), default="train",
                   help="images used to refresh BatchNorm statistics before each test")
    p.add_argument("--knn_every", type=count, default=0,
                   help="also report weighted kNN top-1 (test.py --knn) every N epochs (0: never)")
    p.add_argument("--knn_k", type=positive, default=200, help="neighbours for --knn_every")
    p.add_argument("--resume", choices=("auto", "never"), default="auto",
                   help="auto: continue from <output_dir>/<run_name>/<cpt_name> when it exists")
    p.add_argument("--checkpoint_every", type=count, default=0,
                   help="also save every N updates mid-epoch (0: only at the end of each epoch)")
    p.add_argument("--sync_bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    p.add_argument("--memory_format", choices=("channels_last", "contiguous"), default="channels_last",
                   help="layout of images and convolution weights; channels_last is faster on CPU "
                        "(bench/step.py)")
    p.add_argument("--compile", nargs="?", const="on", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the training step (the model, its losses and, on a GPU, the batched "
                        f"views); auto: for self-supervised runs with at least {compiling.AUTO_MIN_UPDATES} updates "
                        "to go, where a compiler toolchain is found (compiling takes a minute or more at "
                        "start-up); --compile alone means on")
    p.add_argument("--skip_bad_images", action="store_true",
                   help="skip unreadable image files (counted) instead of stopping with an error")
    p.add_argument("--nan_policy", choices=("stop", "skip"), default="stop",
                   help="on a NaN/inf loss: stop (keeping the last checkpoint) or skip that update (counted)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: every visible CUDA GPU (one process each), else the CPU")
    p.add_argument("--dist_timeout", type=hparams.positive_float, default=distributed.DIST_TIMEOUT_S,
                   help="seconds a process waits for the others in a collective, which also bounds work one of them "
                        "does alone meanwhile (rank 0 writing a checkpoint); downloads are not bounded by it")
    p.add_argument("--log_every", type=positive, default=50,
                   help="updates between progress lines when stdout is not a terminal")
    p.add_argument("--view_grid", type=count, default=8,
                   help="images whose training views are drawn to TensorBoard at the start (0: none)")
    args = p.parse_args(argv)

    args.phase = CLASSIFIERS if args.classifiers else SELF_SUPERVISED
    if args.amp_dtype and not args.amp:
        p.error(f"--amp_dtype {args.amp_dtype} applies to mixed precision: add --amp")
    args.amp_dtype = args.amp_dtype or "auto"
    if args.cache_images == "on" and (args.per_image_aug or args.aug != "default"):
        p.error("--cache_images on needs the batched augmentation: drop --per_image_aug and any --aug other than "
                "default, or pass --cache_images off")
    if args.protocol is not None and not args.classifiers:
        p.error(f"--protocol {args.protocol} is an evaluation protocol: add --classifiers (self-supervised runs "
                f"train AMDIM's online classifiers)")
    if args.updates is not None and args.epochs is not None:
        p.error(f"--updates {args.updates} and --epochs {args.epochs} both set the run's length: give one of them")
    if args.layer is not None and not args.classifiers:
        p.error(f"--layer {args.layer} chooses the layer an evaluation classifier reads: add --classifiers")
    if args.subset and args.dataset not in ("IN128", "FOLDER", "PLACES205"):
        p.error("--subset applies to image folders (IN128, PLACES205, FOLDER)")
    problem = label_flags_problem(args)
    if problem:
        p.error(problem)
    try:
        size = datasets.encoder_size(args.dataset, args.image_size)
        if args.checkpoint_path is None:  # else the checkpoint supplies the model; checked once it is read
            config.from_flags(args, size, n_classes=0)
    except UserError as e:
        p.error(str(e))
    return args


def label_flags_problem(args):
    """What is wrong with --labels_file / --label_fraction, as a message; None when nothing is."""
    given = [flag for flag, value in (("--labels_file", args.labels_file), ("--label_fraction", args.label_fraction))
             if value is not None]
    if len(given) == 2:
        return "--labels_file and --label_fraction both choose the labelled images: give one of them"
    if given and not args.classifiers:
        return (f"{given[0]} chooses the labelled images of a classifier run: add --classifiers (self-supervised "
                f"training uses no labels)")
    if args.labels_file and args.dataset not in ("IN128", "FOLDER", "PLACES205"):
        return (f"--labels_file names image files: it applies to image folders (IN128, PLACES205, FOLDER); use "
                f"--label_fraction for {args.dataset}")
    return None


def label_subset(args):
    """The subset.LabelSubset of --labels_file / --label_fraction (None: every training image)."""
    if args.labels_file is None and args.label_fraction is None:
        return None
    return subsets.LabelSubset(args.labels_file, args.label_fraction, args.label_seed)


# ----------------------------------------------------------------------------------------------------------
# What one training process holds.

@dataclass
class Run:
    """Everything one training process holds for a run: its arguments and place in the job, the model and how
    it trains, the data, the position in training, and the logs."""
    args: argparse.Namespace
    dist: distributed.Dist
    cpt_path: str
    log: RunLog
    stop: distributed.StopRequest
    splits: datasets.Splits
    model: methods.Method                # the plain module: checkpoints, BN refresh, evaluation
    phase: object                        # what the run trains (phases.SelfSupervised or phases.Classifiers)
    step_model: torch.nn.Module          # what the training step calls (DDP/compiled method, or classifiers)
    compiled: str                        # whether the step is compiled, and why (compiling.decide)
    optimizer: torch.optim.Optimizer
    schedule: object                     # the learning-rate multiplier at (epoch, update) (recipes.py)
    amp: object                          # the autocast dtype (mixed_precision.resolve), None for float32
    scaler: torch.amp.GradScaler
    cursor: dict                         # {info,classifier}_{epoch,step}; see checkpoint.py
    epochs: int
    milestones: tuple
    data_seed: int                       # the data order's seed, kept across resumes
    per_rank: int                        # images per process per update
    n_views: int                         # views per image the phase trains on
    non_finite_skipped: int = 0
    bn_loader: object = field(default=None)
    tf32: object = None                  # whether float32 CUDA math may use TF32 (mixed_precision.tf32)

    @property
    def epoch_key(self):
        return self.phase.epoch_key

    @property
    def step_key(self):
        return self.phase.step_key


def resolve_hyperparams(args, ckpt, encoder_size):
    """Model hyperparams: the checkpoint's when there is one (flags may not contradict it), else the flags'."""
    if ckpt is None:
        return config.from_flags(args, encoder_size, n_classes=0)
    hp = checkpoint.hyperparams(ckpt)
    clashes = config.contradictions(args, hp)
    if clashes:
        raise UserError(f"model flags contradict the checkpoint: {', '.join(clashes)}; drop them, or start "
                        f"a new run without the checkpoint")
    if hp["encoder_size"] != encoder_size:
        raise UserError(f"the checkpoint's encoder takes {hp['encoder_size']} px images but --dataset "
                        f"{args.dataset} gives {encoder_size} px; use a dataset of that size")
    return hp


def with_evaluation(args, hp, how):
    """hp naming how the run's classifiers evaluate: the protocol they train with (protocols.py) and the layer
    their features are read at (--layer), each from its flag, else a resumed classifier run's own (which the flag
    may not contradict), else the default, which hp leaves unnamed: AMDIM's protocol (the self-supervised phase's
    online classifiers are AMDIM's too) and the method's last probe layer."""
    keys = {"protocol": "--protocol", "probe_layer": "--layer"}
    own = {key: hp.get(key) for key in keys} if how == "resume" else None
    hp = {k: v for k, v in hp.items() if k not in keys}
    if args.phase == SELF_SUPERVISED:
        return hp
    layers = methods.METHODS[hp["method"]].probe_layers(hp)
    given = {"protocol": args.protocol, "probe_layer": args.layer}
    chosen = {"protocol": None if args.protocol == "amdim" else args.protocol,
              "probe_layer": checked_layer(args.layer, layers, hp)}
    for key, flag in keys.items() if own is not None else ():
        if given[key] is None:
            chosen[key] = own[key]
        elif chosen[key] != own[key]:
            theirs = own[key] or ("amdim" if key == "protocol" else max(layers))
            raise UserError(f"{flag} {given[key]} contradicts this run's checkpoint, whose classifiers follow {flag} "
                            f"{theirs}: drop {flag} to resume it, or pass another --run_name")
    if chosen["probe_layer"] is not None and chosen["protocol"] == "semisup":
        raise UserError(f"--layer {args.layer} and --protocol semisup: fine-tuning trains the encoder through the "
                        f"features it gives; drop --layer")
    return dict(hp, **{k: v for k, v in chosen.items() if v is not None})


def checked_layer(layer, layers, hp):
    """--layer as hp names it (None: the default, the last of `layers`); a UserError for a layer the model lacks."""
    if layer is not None and layer not in layers:
        raise UserError(f"--layer {layer} is not a layer of the {hp['method']}/{hp['arch']} encoder: " +
                        (f"choose one of {', '.join(map(str, layers))}" if layers else
                         "drop --layer (--method cmc's alexnet_cmc and ResNets have layers to choose from)"))
    return None if layer is None or layer == max(layers) else layer


def build_model(args, ckpt, how, hp, splits, phase_cls, log):
    """The model, its weights restored from `ckpt`, with new classifiers where the phase starts them afresh, the
    data has another number of classes or the run another evaluation protocol (hp's)."""
    n_classes = splits.n_classes
    if ckpt is None:
        data = methods.TrainingData(n_images=len(splits.train), mean_std=splits.mean_std, batch_size=args.batch_size)
        hp = methods.METHODS[hp["method"]].fit_to_data(dict(hp, n_classes=n_classes), data, log.print)
        return checkpoint.build_model(hp)
    n_data = hp.get("n_data")
    if phase_cls is phases.SelfSupervised and n_data is not None and n_data != len(splits.train):
        raise UserError(f"the checkpoint's {hp['method']} state holds one row per image of a {n_data}-image "
                        f"training split, but --dataset {args.dataset} has {len(splits.train)} training images: "
                        f"continue it on its own data, or train a fresh model (drop --checkpoint_path)")
    model = checkpoint.model_from(ckpt)
    if (phase_cls.classifiers_restart(how) or hp["n_classes"] != n_classes
            or protocols.of(model.hyperparams) != protocols.of(hp)
            or model.hyperparams.get("probe_layer") != hp.get("probe_layer")):
        model.reset_evaluator(n_classes, hp.get("protocol"), hp.get("probe_layer"))
    return model


def place_model(model, args, dist):
    """The model on the training device: SyncBatchNorm where asked, the device and the memory format."""
    model = with_sync_bn(model, args.sync_bn, dist)
    model = model.to(dist.device, memory_format=engine.layout(args.memory_format))
    tune_cudnn(dist.device)
    return model


def with_sync_bn(model, sync_bn, dist):
    """`model` with every BatchNorm layer a SyncBatchNorm when --sync_bn is given to a job of several CUDA
    processes; as it is in a single process (nothing to synchronise). Call before the model moves to the device
    and before DistributedDataParallel wraps it. The state-dict keys stay those of BatchNorm, so checkpoints load
    with or without --sync_bn."""
    if not (sync_bn and dist.active):
        return model
    if dist.device.type != "cuda":
        raise UserError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); drop it on CPU")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_step(phase, dist, compile_step=False, warn=print):
    """What the training step calls: the phase's step module (the whole method, or the classifiers alone) in
    DistributedDataParallel across processes, and torch.compile'd where asked (eager execution and a warning where
    compilation fails).

    DDP settings: gradients are views into its all-reduce buckets (gradient_as_bucket_view: no copy in and out,
    one gradient-sized buffer less); it looks for parameters without a gradient after each forward only where
    the phase has some (find_unused_parameters costs a graph traversal per update). static_graph stays off: it
    would save little once the buckets are built, and it assumes the same graph every update, which a compiled
    step falling back to eager execution breaks."""
    step_model = phase.step_module()
    if dist.active:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step_model, phase.ddp_ignored_state())
        step_model = DistributedDataParallel(step_model, device_ids=[dist.device.index] if
                                             dist.device.type == "cuda" else None,
                                             find_unused_parameters=phase.has_unused_parameters(),
                                             gradient_as_bucket_view=True)
    if compile_step:
        compiling.cache_dir()
        step_model = compiling.EagerFallback(step_model, warn)
        phase.compile_losses(warn)
    return step_model


def tune_cudnn(device):
    """Let cuDNN time its convolution algorithms once per input shape and keep the fastest: training feeds
    fixed sizes (drop_last batches of fixed-size views), so the search pays off after a few updates."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def prepare_output(run_dir, cpt_name, dist):
    """Create the run directory and lock it (rank 0, until locked_worker ends: one run per directory), then
    remove temporary files of a killed save."""
    if dist.is_main:
        runlog.RunDirLock.claim(run_dir)
        # Only under the lock: another run's save in progress would look like a killed one.
        checkpoint.remove_stale_temporaries(os.path.join(run_dir, cpt_name))


def set_aside_old_logs(run_dir, dist):
    """A start that does not resume this run's checkpoint writes fresh logs: the earlier ones move aside."""
    moved_to = runlog.set_aside_logs(run_dir) if dist.is_main else None
    if moved_to:
        print(f"starting over: the earlier metrics.jsonl and TensorBoard events moved to {moved_to}", flush=True)


def setup(dist, args):
    """Build this process's Run: output folder, start point, data, model, optimiser; restore a resumed run.
    Returns (run, EpochProgress of the epoch to continue)."""
    if args.batch_size % dist.world_size or args.batch_size // dist.world_size < 2:
        raise UserError(f"--batch_size {args.batch_size} must split into at least 2 images per process over "
                        f"{dist.world_size} processes: use a multiple of {dist.world_size}, at least "
                        f"{2 * dist.world_size}")
    amp = mp.resolve(dist.device, args.amp, args.amp_dtype)       # refuses a dtype before anything is written
    if args.num_workers is None:
        args.num_workers = engine.default_num_workers(distributed.processes_on_this_machine())
    tf32 = mp.tf32(dist.device, amp, args.tf32)
    mp.set_tf32(tf32)
    run_dir = os.path.join(args.output_dir, args.run_name)
    cpt_path = os.path.join(run_dir, args.cpt_name)
    prepare_output(run_dir, args.cpt_name, dist)
    ckpt, how, ckpt_from = checkpoint.find_start(args, cpt_path, dist)
    if how != "resume":
        set_aside_old_logs(run_dir, dist)
    encoder_size = datasets.encoder_size(args.dataset, args.image_size)
    hp = with_evaluation(args, resolve_hyperparams(args, ckpt, encoder_size), how)
    phase_cls = phases.PHASES[args.phase]
    views = phase_cls.views(hp)
    splits = load_data(args, dist, views.kind, views.options)
    if len(splits.train) < args.batch_size:
        raise UserError(f"the {args.dataset} training split has {len(splits.train)} images, fewer than "
                        f"--batch_size {args.batch_size}; lower --batch_size")
    log = RunLog(run_dir, enabled=dist.is_main)
    model = place_model(build_model(args, ckpt, how, hp, splits, phase_cls, log), args, dist)
    phase = phase_cls(model, args)
    cursor = checkpoint.cursor(ckpt if ckpt is not None else {})
    if phase.classifiers_restart(how):
        cursor.update({phase.epoch_key: 0, phase.step_key: 0})
    # Each rank's share, len // world_size images, makes (len // world_size) // (batch_size // world_size) full
    # batches: the same number (nested floor divisions).
    updates_per_epoch = len(splits.train) // args.batch_size
    wanted = args.epochs if args.updates is None else math.ceil(args.updates / updates_per_epoch)
    epochs, milestones = phase.recipe(model.hyperparams).epochs_and_milestones(args.dataset, wanted,
                                                                              args.lr_decay_epochs)
    schedule = phase.schedule(model.hyperparams, args, epochs, milestones, updates_per_epoch)
    updates_left = max(0, epochs - cursor[phase.epoch_key]) * updates_per_epoch
    compile_step, compiled = compiling.decide(args.compile, phase.compiles, updates_left, dist.device)
    step_model = wrap_step(phase, dist, compile_step, warn=log.print)
    if compile_step:
        augment.compile_views(splits.batch_augment, warn=log.print)
    # The data order follows the seed the run started with, also if a resumed run is given another --seed.
    data_seed = int(ckpt.get("data_seed", args.seed)) if how == "resume" else args.seed
    run = Run(args=args, dist=dist, cpt_path=cpt_path, log=log, stop=distributed.StopRequest(), splits=splits,
              model=model, phase=phase, step_model=step_model, compiled=compiled, optimizer=phase.optimizer(args),
              schedule=schedule, amp=amp, scaler=mp.grad_scaler(dist.device, amp), cursor=cursor, epochs=epochs,
              milestones=milestones, data_seed=data_seed, per_rank=args.batch_size // dist.world_size,
              n_views=views.count, tf32=tf32)
    epoch_so_far = EpochProgress()
    if how == "resume":
        epoch_so_far.samples, epoch_so_far.seconds, epoch_so_far.meters = checkpoint.restore_run(run, ckpt)
    announce(run, ckpt_from, how, encoder_size)
    return run, epoch_so_far


def load_data(args, dist, view_kind, view_options=None):
    """The splits, once every rank has them. The first use of a torchvision dataset downloads it, once per node
    (datasets.download_lock), for as long as it takes: the ranks wait for each other through the job's store,
    which has no timeout, not in a collective, which would give up after --dist_timeout."""
    try:
        splits = datasets.build_splits(args.dataset, args.input_dir, args.phase, image_size=args.image_size,
                                       aug=args.aug, skip_bad_images=args.skip_bad_images,
                                       batch_augment=not args.per_image_aug, views=view_kind, subset=args.subset,
                                       view_options=view_options, cache_images=args.cache_images,
                                       report=dist.is_main, cache_copies=distributed.processes_on_this_machine(),
                                       labels=label_subset(args))
    except UserError as e:
        if not dist.active:
            raise
        distributed.wait_for_every_rank(dist, "data", error=str(e))      # raises it on every rank
    distributed.wait_for_every_rank(dist, "data")
    return splits


def make_loaders(run):
    """The training loader (its sampler resumable) and the BatchNorm-refresh loader; returns the former."""
    args, dist = run.args, run.dist
    per_image = run.splits.per_image_items
    sampler = engine.ResumableSampler(run.splits.train, dist, run.data_seed, run.per_rank, seed_items=per_image)
    # Batched augmentation of in-memory images indexes uint8 tensors: worker processes would only add copies.
    train_set = engine.SeededItems(run.splits.train) if per_image else run.splits.train
    train_loader = engine.make_loader(train_set, run.per_rank, args.num_workers if per_image else 0, dist.device,
                                      sampler=sampler, drop_last=True, persistent=True)
    run.bn_loader = train_loader if args.bn_warmup == "train" else \
        engine.make_loader(engine.shard(run.splits.test, dist), run.per_rank, args.num_workers, dist.device)
    return train_loader


# ----------------------------------------------------------------------------------------------------------
# One update of either phase.

def loss_terms(run, batch, shared_seed):
    """Forward pass and every loss term (a dict of scalars) for one batch of the current phase: the phase's own
    terms, then the online classifiers'. shared_seed: a seed that every rank gets alike at this update (for draws
    the ranks must agree on, e.g. CMC's negatives).

    Returns (terms, (logits, labels), out): the classifiers' logits with their rows' labels, and the phase's
    outputs for its after-step hook."""
    args, dist = run.args, run.dist
    views, y, index = engine.training_views(batch, run.splits.batch_augment, dist.device, run.n_views,
                                            args.memory_format)
    with mp.autocast(dist.device, run.amp):
        out = run.phase.forward(run.step_model, views, dist)
    out["index"] = index.to(dist.device, non_blocking=True)     # dataset indices, for methods with a bank
    out["shared_seed"] = shared_seed
    with mp.float32(dist.device):
        out32 = mp.to_float32(out)
        terms = run.phase.loss_terms(out32, dist)
        logits = dict(zip(run.model.evaluator.heads, out32["logits"]))
        labels = y.repeat(logits[run.model.evaluator.heads[0]].shape[0] // y.shape[0])   # a copy per classified view
        terms.update({f"class_{head}": run.phase.classifier_loss(scores.float(), labels)
                      for head, scores in logits.items()})
    return terms, (logits, labels), out


def update(run, batch, epoch):
    """One optimisation step on one batch: forward, loss, backward, optimizer step, with the phase's hooks around
    them (start_update before the forward, before_optimizer_step, after_step). Nothing here waits for the device:
    the update's numbers stay there until train_epoch reads a window of them at once (Pending.read).

    A non-finite loss on any rank skips the step on every rank, decided on the device (mixed_precision.step);
    the hooks see that decision as out["skipped"]. Returns the update's Row."""
    dist, cur = run.dist, run.cursor
    reseed(run, cur[run.step_key])
    lr = recipes.set_learning_rates(run.optimizer, run.schedule(epoch, cur[run.step_key]))
    run.phase.start_update(epoch, cur[run.step_key], dist, shared_seed_at(run, cur[run.step_key], CLUSTER_KEY))
    terms, (logits, labels), out = loss_terms(run, batch, shared_seed_at(run, cur[run.step_key]))
    loss = sum(terms.values())
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    stats = dict(terms, loss=loss, **train_accuracy(logits, labels))
    values = torch.stack([v.detach().float() for v in stats.values()])
    # Ranks must agree (a rank that stepped alone would leave the others' weights behind).
    skipped = dist.any(~torch.isfinite(loss.detach()))
    run.phase.before_optimizer_step(cur[run.step_key])
    mp.step(run.optimizer, run.scaler, skipped)
    out["skipped"] = skipped
    run.phase.after_step(out, dist)
    cur[run.step_key] += 1
    return Row(names=tuple(stats), values=values, skipped=skipped, lr=lr, step=cur[run.step_key],
               images=batch[1].shape[0] * dist.world_size, time=time.perf_counter())


@dataclass
class Row:
    """One update as update() left it: its logged numbers and whether it was skipped, still on the device;
    step: the update's number (1-based), images: trained over all processes, time: when it was queued."""
    names: tuple
    values: torch.Tensor
    skipped: torch.Tensor
    lr: float
    step: int
    images: int
    time: float


class Pending:
    """The updates of the current window (up to --log_every), read from the device in one transfer."""

    def __init__(self):
        self.rows = []

    def read(self, dist, stop_requested):
        """([(row, its numbers as a dict of floats, whether it was skipped) ...], whether any rank asked to stop):
        one host-device transfer, and under several processes one small all-reduce (every rank reads at the same
        updates, so they agree). Empties the window."""
        flag = torch.full((1,), float(stop_requested), device=dist.device)
        if dist.active:
            dist.all_reduce_max(flag)
        host = torch.cat([torch.stack([torch.cat([r.values, r.skipped.float()[None]]) for r in self.rows]).flatten(),
                          flag]).tolist()
        width = len(self.rows[0].names) + 1
        out = []
        for i, row in enumerate(self.rows):
            numbers = host[i * width:(i + 1) * width]
            out.append((row, dict(zip(row.names, numbers[:-1])), bool(numbers[-1])))
        self.rows = []
        return out, bool(host[-1])


def train_epoch(run, loader, progress_so_far, save_midway):
    """One pass over the training data, or its rest after a mid-epoch resume. Updates the cursor after every
    update, reads the updates' numbers every --log_every updates (and before a checkpoint, at the epoch's end),
    honours a stop request there, and calls save_midway(progress) every --checkpoint_every updates.

    progress_so_far: the epoch's progress before this pass (EpochProgress: images trained, wall time and the
    meters), so that the epoch's means cover the whole epoch also when it was interrupted and resumed.
    Returns the epoch's means, averaged over all processes, with its last learning rate and wall time."""
    args, dist, cur = run.args, run.dist, run.cursor
    epoch = cur[run.epoch_key]
    engine.set_train_mode(run.model, run.phase.eval_encoder)
    done, seconds_before = progress_so_far, progress_so_far.seconds       # updated in place as the epoch goes
    n_batches = loader.sampler.batches()
    progress = runlog.Progress(n_batches, f"epoch {epoch + 1}/{run.epochs}", dist.is_main, args.log_every,
                              run.log)
    window = Pending()
    t0, seen, lr = time.perf_counter(), 0, None
    for i, batch in enumerate(loader):
        window.rows.append(update(run, batch, epoch))
        done.samples += window.rows[-1].images      # skipped updates count: their images were seen
        last_batch = i + 1 == n_batches
        checkpoint_due = args.checkpoint_every and cur[run.step_key] % args.checkpoint_every == 0 and not last_batch
        if len(window.rows) < args.log_every and not last_batch and not checkpoint_due:
            continue
        rows, stop = window.read(dist, run.stop.requested)
        for row, values, skipped in rows:
            if skipped:
                handle_non_finite(run, values, epoch, row.step)
                continue
            seen += row.images
            lr = row.lr
            record_update(run, done.meters, values, row, seen / max(row.time - t0, 1e-9), progress)
        done.seconds = seconds_before + time.perf_counter() - t0
        if stop and not last_batch:
            progress.close()
            save_midway(done)
            raise Interrupted(f"epoch {epoch + 1}, update {cur[run.step_key]}")
        if checkpoint_due:
            save_midway(done)
    progress.close()
    means = done.meters.reduce(dist)
    means["img_per_s"] = seen / max(time.perf_counter() - t0, 1e-9)
    means["epoch_seconds"] = done.seconds
    if lr is not None:
        means["lr"] = lr
    return means


@dataclass
class EpochProgress:
    """How far the current epoch has got: images trained (all processes), wall time and the running means.
    Checkpoints saved mid-epoch carry it, so a resumed epoch reports the whole epoch's means."""
    samples: int = 0
    seconds: float = 0.0
    meters: Meters = field(default_factory=Meters)


def record_update(run, meters, values, row, rate, progress):
    """Add one update's numbers (values, floats; row: its Row) to the epoch's meters, TensorBoard and the
    progress line."""
    lr = row.lr
    n_labelled = values.pop("n_labelled")
    correct = {k[len("correct_"):]: values.pop(k) for k in list(values) if k.startswith("correct_")}
    meters.update(values)
    if n_labelled:
        meters.update({f"train_acc_{head}": 100 * n / n_labelled for head, n in correct.items()}, n=n_labelled)
    run.log.scalars(f"{run.args.phase}/train", dict(values, lr=lr, img_per_s=rate), row.step)
    progress.update(loss=values["loss"], lr=lr, img_per_s=rate)


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the update boundary."""


def handle_non_finite(run, values, epoch, update):
    """A NaN/inf loss on some rank at update number `update` (every rank calls this; the device already skipped
    the update's step): stop with the last good checkpoint kept, or (--nan_policy skip) warn and go on. The
    message names the rank(s) whose loss was not finite, with the first one's values."""
    failed = [(rank, v) for rank, v in enumerate(distributed.all_gather_objects(values))
              if not math.isfinite(v["loss"])]
    failed = failed or [(run.dist.rank, values)]     # never empty (any_rank agreed on it); a guard only
    ranks = [rank for rank, _ in failed]
    where = ""
    if run.dist.active:
        where = f" on rank {ranks[0]}" if len(ranks) == 1 else \
            f" on ranks {', '.join(map(str, ranks))} (rank {ranks[0]}'s values)"
    shown = failed[0][1]
    detail = ", ".join(f"{k}={v:.4g}" for k, v in shown.items()
                       if k not in ("loss", "n_labelled") and not k.startswith("correct_"))
    if run.args.nan_policy == "skip":
        run.non_finite_skipped += 1
        run.log.print(f"warning: non-finite loss at update {update} (epoch {epoch + 1}){where}: {detail}; update "
                      f"skipped ({run.non_finite_skipped} so far)")
        return
    kept = run.cpt_path if os.path.isfile(run.cpt_path) else "none was written yet"
    raise UserError(f"non-finite loss at update {update} (epoch {epoch + 1}){where}: {detail}; stopped, last good "
                    f"checkpoint: {kept}; lower --learning_rate, or pass --nan_policy skip")


def reseed(run, *where):
    """Seed every generator from the run's seed, this rank, the phase and `where` in training (an update count,
    an epoch's test): a resumed run then draws exactly what the uninterrupted run drew from there on."""
    utils.reseed(utils.stream_seed(run.data_seed, run.dist.rank, run.phase.seed_key, *where), run.dist.device)


def shared_seed_at(run, *where):
    """The same seed on every rank at `where` in training (reseed's streams differ per rank)."""
    return utils.stream_seed(run.data_seed, SHARED_STREAM, run.phase.seed_key, *where)


def train_accuracy(logits, labels):
    """Tensors (no sync): labelled rows, and how many of them each classifier (logits: head -> (B, n_classes))
    gets right."""
    labelled = labels >= 0
    return {"n_labelled": labelled.sum(),
            **{f"correct_{head}": ((scores.argmax(1) == labels) & labelled).sum() for head, scores in logits.items()}}


# ----------------------------------------------------------------------------------------------------------
# Each epoch's test.

SHARED_STREAM = 2 ** 40    # shared_seed_at's key: never a rank number
CLUSTER_KEY = 1            # keeps start_update's shared seed apart from the loss's
TEST_STREAM = 1            # reseed key that keeps the test's random stream (BN-refresh views) apart from the updates'
PREPARE_STREAM = 2         # reseed key of the prepare pass's batches (its views), apart from the updates' and tests'

def test_accuracy(run, epoch):
    """The per-epoch test: BN refresh on each rank's training batches (where the phase refreshes), rank 0's
    statistics shared with every rank, then every test image scored once across the ranks; kNN top-1 every
    --knn_every epochs."""
    args, dist = run.args, run.dist
    reseed(run, epoch, TEST_STREAM)
    eval_encoder = run.phase.eval_encoder
    images = engine.first_view(run.splits.batch_augment, dist.device, args.memory_format) \
        if args.bn_warmup == "train" else None
    if run.phase.refresh_bn:
        engine.refresh_bn(run.model, run.bn_loader, dist, run.amp, eval_encoder=eval_encoder, images=images)
    distributed.broadcast_bn_statistics(run.model, dist)
    acc = engine.evaluate(run.model, engine.shard(run.splits.test, dist), dist, run.amp, run.per_rank,
                          args.num_workers)
    if args.knn_every and (epoch + 1) % args.knn_every == 0:
        acc["top1_knn"] = engine.knn_accuracy(run.model, run.splits.memory, run.splits.test, dist, run.amp,
                                              run.per_rank, args.num_workers, k=args.knn_k)
    return acc


# ----------------------------------------------------------------------------------------------------------

def worker(dist, args):
    """The training job as seen by one process (rank) of it."""
    seed_everything(args.seed + dist.rank)   # per-rank augmentation; DDP copies rank 0's initial weights
    utils.reap_children_at_exit()
    run, epoch_so_far = setup(dist, args)
    train_loader = make_loaders(run)
    sampler = train_loader.sampler
    if dist.is_main and args.view_grid and run.cursor[run.epoch_key] == 0 and epoch_so_far.samples == 0:
        views_grid.log_views(run, args.view_grid)

    if run.cursor[run.epoch_key] == 0 and epoch_so_far.samples == 0 and run.phase.needs_prepare_pass():
        prepare_pass(run, train_loader)
    run.stop.install()
    acc = None
    while run.cursor[run.epoch_key] < run.epochs:
        epoch = run.cursor[run.epoch_key]
        sampler.set_epoch(epoch)
        sampler.skip_samples = epoch_so_far.samples
        try:
            means = train_epoch(run, train_loader, epoch_so_far, lambda done: checkpoint.save_run(run, done))
        except Interrupted as where:
            run.log.print(f"interrupted: checkpoint saved at {where} in {run.cpt_path}; re-run the same "
                          f"command to resume")
            return None
        sampler.skip_samples, epoch_so_far = 0, EpochProgress()
        acc = test_accuracy(run, epoch)
        run.cursor[run.epoch_key] = epoch + 1
        checkpoint.save_run(run)
        report_epoch(run, epoch, means, acc)
        if distributed.any_rank([run.stop.requested], dist)[0] and run.cursor[run.epoch_key] < run.epochs:
            run.log.print(f"interrupted: checkpoint saved after epoch {epoch + 1} in {run.cpt_path}; re-run the "
                          f"same command to resume")
            return None
    if acc is None:
        done = run.cursor[run.epoch_key]
        run.log.print(f"nothing to do: {run.cpt_path} already finished {done} epoch{'s' * (done != 1)} "
                      f"(--epochs {run.epochs}); pass a larger --epochs to train on")
    run.log.close()
    return acc


def prepare_pass(run, loader):
    """The pass a method may need over the first epoch's data before its first update (the seed's init_memory for
    DeepCluster-v2): the model in train mode as in training, no gradients, each batch's views drawn from a stream
    of their own; the method keeps what it needs (phase.prepare). A run killed during it repeats it."""
    args, dist = run.args, run.dist
    run.log.print("preparing: one pass over the training data before the first update")
    engine.set_train_mode(run.model, run.phase.eval_encoder)
    loader.sampler.set_epoch(0)
    with torch.no_grad():
        for i, batch in enumerate(loader):
            reseed(run, i, PREPARE_STREAM)
            views, _, index = engine.training_views(batch, run.splits.batch_augment, dist.device, run.n_views,
                                                    args.memory_format)
            with mp.autocast(dist.device, run.amp):
                out = run.model(views, dist)
            out["index"] = index.to(dist.device, non_blocking=True)
            with mp.float32(dist.device):
                run.phase.prepare(mp.to_float32(out), dist)


def announce(run, ckpt_from, how, encoder_size):
    """Start-up lines (resolved config, devices, world size, where outputs go) and the start record."""
    args, dist, log, hp = run.args, run.dist, run.log, run.model.hyperparams
    if not log.enabled:
        return
    info = run_info(run, how, ckpt_from, encoder_size)
    if args.resume == "never" and os.path.isfile(run.cpt_path):
        log.print(f"--resume never: starting over; {run.cpt_path} is replaced at the first save")
    settings = " ".join(f"{k}={v}" for k, v in sorted(info["config"].items()))
    log.print(f"config: {settings}")
    devices = f"{dist.device}" if not dist.active else f"{dist.world_size} processes on {dist.device.type}"
    log.print(f"{hp['method']} {args.phase}: {args.dataset} ({len(run.splits.train)} train / "
              f"{len(run.splits.test)} test images, {run.splits.n_classes} classes, {encoder_size} px); device "
              f"{devices}, world size {dist.world_size}, {run.per_rank} images per process, amp "
              f"{mp.describe(run.amp)}, tf32 {mp.describe_tf32(run.tf32)}")
    n_params = sum(p.numel() for p in run.model.parameters())
    groups = ", ".join(f"{g['base_lr']:.3g}" for g in run.optimizer.param_groups)
    log.print(f"model {hp} ({n_params / 1e6:.2f} M parameters); {type(run.optimizer).__name__} base LR {groups}; "
              f"epochs {run.epochs}, {run.schedule.describe()}")
    if how is not None:
        log.print(f"{'resuming' if how == 'resume' else 'starting'} from {ckpt_from} at {run.cursor}")
    elif run.phase.scratch_note:
        log.print(run.phase.scratch_note)
    log.print(f"torch.compile {run.compiled}")
    log.print(f"writing {run.cpt_path}, TensorBoard events and metrics.jsonl in {os.path.dirname(run.cpt_path)}")
    env = info["environment"]
    log.print(f"python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']} on {env['host']}; "
              f"code {env.get('git_commit', 'not in a git checkout')}")
    log.start(info, run.cursor[run.step_key])


def run_info(run, how, ckpt_from, encoder_size):
    """This start, for metrics.jsonl, TensorBoard and the checkpoints: how it starts, the resolved config and
    what it runs on."""
    here = os.path.dirname(os.path.abspath(__file__))
    return {"phase": run.args.phase, "start": {"resume": "resume", "init": "checkpoint_path"}.get(how, "scratch"),
            "from": ckpt_from, "cursor": dict(run.cursor), "config": resolved_config(run, encoder_size),
            "environment": runlog.environment(here)}


def resolved_config(run, encoder_size):
    """The flags with every default this start fills in resolved (model hyperparameters, epochs, LR milestones,
    base learning rates, warm-up), the world size and the data's sizes."""
    args, hp = run.args, run.model.hyperparams
    model_flags = {"method", "arch"} | {p.name for p in config.all_params()}
    cfg = {k: v for k, v in vars(args).items() if k not in model_flags}
    lrs = [g["base_lr"] for g in run.optimizer.param_groups]
    cfg.update(hp, encoder_size=encoder_size, epochs=run.epochs, milestones=list(run.milestones),
               learning_rate=lrs[0], learning_rates=lrs, optimizer=type(run.optimizer).__name__,
               warmup_updates=run.schedule.warmup_updates, world_size=run.dist.world_size,
               amp_dtype=mp.dtype_name(run.amp), tf32=run.tf32, compiled=run.compiled.startswith("on"),
               per_process_batch=run.per_rank, data_seed=run.data_seed,
               train_images=len(run.splits.train), test_images=len(run.splits.test))
    return cfg


def report_epoch(run, epoch, means, acc):
    scores = {k: v for k, v in acc.items() if k != "n_images"}
    skipped = distributed.all_reduce_sum([run.splits.skipped_images(), run.non_finite_skipped], run.dist.device)
    means = dict(means, skipped_images=int(skipped[0]), skipped_updates=int(skipped[1] / run.dist.world_size))
    run.log.scalars(f"{run.args.phase}/epoch", dict(means, **scores), epoch + 1)
    run.log.record(dict(event="epoch", phase=run.args.phase, epoch=epoch + 1, step=run.cursor[run.step_key],
                        **means, **acc))
    skips = "".join(f", {means[k]} {what} skipped" for k, what in
                    (("skipped_images", "unreadable images"), ("skipped_updates", "non-finite updates")) if means[k])
    knn_text = f" knn {acc['top1_knn']:.2f}%" if "top1_knn" in acc else ""
    mlp_text = f" mlp {acc['top1_mlp']:.2f}%" if "top1_mlp" in acc else ""
    run.log.print(f"epoch {epoch + 1}/{run.epochs}: loss {means['loss']:.4f}, test top-1 linear "
                  f"{acc['top1_linear']:.2f}%{mlp_text}{knn_text} (top-5 linear {acc['top5_linear']:.2f}%; "
                  f"{acc['n_images']} images), {means['img_per_s']:.1f} img/s{skips}")


def main(argv=None):
    args = parse_args(argv)
    return distributed.launch(locked_worker, args.device, args, timeout_s=args.dist_timeout)


def locked_worker(dist, args):
    """worker, then the run directory's lock (rank 0 took it in prepare_output) released; after a failed start,
    the run directory is removed again if this start created it and it holds nothing but the lock."""
    try:
        result = worker(dist, args)
    except BaseException:
        runlog.RunDirLock.release_all(failed=True)
        raise
    runlog.RunDirLock.release_all(failed=False)
    return result


if __name__ == "__main__":
    run_main(main)
