"""Score a checkpoint (of any method, the original AMDIM code's, or a seed repository's: seeds.py) on a dataset's
test split: its evaluation classifiers' top-1 and top-5 (AMDIM's linear and MLP pair, or the linear classifier of
the seed protocol that trained them: --classifiers --protocol, or a seed's own: --linear_classifier) and, with
--knn, weighted kNN top-1 on its frozen features. A seed's encoder-only file has no trained classifier: --knn
scores it, or train.py --classifiers trains one.

    python test.py runs/default_run/amdim_cpt.pth --dataset C10 --input_dir ./data [--knn [K]] [--json]

BatchNorm statistics are refreshed first exactly as train.py does before each test (up to 50 training batches,
or test batches with --bn_warmup test; the refresh's randomness follows --seed alone), then every test image is
scored once (with --skip_bad_images, unreadable ones are left out and counted). kNN: the training split's images
(test-time transform) are the memory, cosine similarity on L2-normalised features, votes weighted
exp(similarity / 0.07), K neighbours (default 200). FOLDER takes its image size from the checkpoint. The output
says where training stood when the checkpoint was saved (epoch, update, and whether mid-epoch).
"""
import argparse
import json
import os
import shlex
import sys

import checkpoint
import datasets
import engine
import imagecache
import mixed_precision as mp
import protocols
import seeds
from distributed import Dist, pick_device
from phases import CLASSIFIERS, SELF_SUPERVISED
from utils import UserError, reap_children_at_exit, run_main, seed_everything

CHECKPOINT_ARG = "test.py's checkpoint argument"     # how checkpoint.read's messages name where the path came from
TRAIN_BATCH_SIZE = 200                               # train.py's default --batch_size


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by train.py, the original AMDIM code or a seed "
                                      "repository (MoCo, SwAV, CMC: docs/checkpoints.md)")
    p.add_argument("--linear_classifier", metavar="FILE",
                   help="a seed's linear classifier for the checkpoint's encoder (SwAV's eval_linear.py or CMC's "
                        "LinearProbing.py checkpoint): scored instead of the checkpoint's own classifiers")
    p.add_argument("--dataset", type=str.upper, default="STL10", choices=datasets.DATASETS)
    p.add_argument("--input_dir", default="./data")
    p.add_argument("--image_size", type=int, choices=(32, 64, 128),
                   help="FOLDER only; default: the checkpoint's encoder input size")
    p.add_argument("--batch_size", type=int, default=200)
    p.add_argument("--bn_warmup", choices=("train", "test"), default="train")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1, help="seeds the augmentation of the BatchNorm refresh")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--tf32", choices=mp.TF32_CHOICES, default="on",
                   help="float32 on CUDA: TF32 matmuls and convolutions, as train.py's --tf32")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--skip_bad_images", action="store_true", help="leave unreadable image files out (counted)")
    p.add_argument("--cache_images", choices=imagecache.MODES, default="auto",
                   help="image folders: decode each split once into memory, as train.py does (reads the cache "
                        "file a training run left)")
    p.add_argument("--knn", type=int, nargs="?", const=200, metavar="K",
                   help="also report weighted kNN top-1 with K neighbours (default K 200)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    problem = bad_number(args)
    if problem:
        p.error(problem)
    return args


def bad_number(args):
    """The first numeric flag outside its range, as a message; None when all are fine."""
    if args.batch_size < 2:
        return f"--batch_size must be at least 2, got {args.batch_size} (train-mode BatchNorm needs 2 images)"
    if args.num_workers < 0:
        return f"--num_workers must be 0 or more, got {args.num_workers}"
    if args.knn is not None and args.knn < 1:
        return f"--knn K must be at least 1, got {args.knn}"
    if args.seed < 0:
        return f"--seed must be 0 or more, got {args.seed}"
    return None


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    mp.set_tf32(mp.tf32(device, args.amp, args.tf32))
    reap_children_at_exit()
    ckpt = checkpoint.read(args.checkpoint, arg=CHECKPOINT_ARG)
    model = checkpoint.model_from(ckpt)
    trained = not ckpt.get("untrained_classifiers", False)
    if args.linear_classifier:
        attach_classifier(model, args.linear_classifier)
        trained = True
    model = model.to(device)
    hp = model.hyperparams
    image_size = image_size_of(args, hp)
    splits = datasets.build_splits(args.dataset, args.input_dir, "classifiers", image_size=image_size,
                                   skip_bad_images=args.skip_bad_images, cache_images=args.cache_images)
    check_fit(args, hp, splits, image_size, trained)

    # Seeded here, after the model is built, so the refresh's data order, augmentation and dropout follow
    # --seed alone.
    seed_everything(args.seed)
    dist = Dist(device=device)         # one process: the collectives of engine's loops are local
    result = {"checkpoint": args.checkpoint, "dataset": args.dataset, "protocol": protocols.of(hp).name}
    if "seed_format" in ckpt:
        result["seed_format"] = ckpt["seed_format"]
    if trained:
        if protocols.of(hp).refresh_bn:       # fine-tuned encoders keep their training's statistics
            refresh_bn(args, model, splits, dist, bool(ckpt.get("eval_encoder", False)))
        result.update(engine.evaluate(model, splits.test, dist, args.amp, args.batch_size, args.num_workers))
    result.update(n_skipped=splits.skipped_images("test"), **position(ckpt))
    if args.knn is not None:
        result["top1_knn"] = engine.knn_accuracy(model, splits.memory, splits.test, dist, args.amp, args.batch_size,
                                                 args.num_workers, k=args.knn)
        result["knn_k"] = args.knn
        result["knn_memory_skipped"] = splits.skipped_images("train")
        result["n_skipped"] = splits.skipped_images("test")
        result.setdefault("n_images", len(splits.test) - result["n_skipped"])
    print(json.dumps(result) if args.json else describe(result))
    return result


def image_size_of(args, hp):
    """The image size to build the dataset at: FOLDER's is the checkpoint's encoder input size, which
    --image_size may repeat but not contradict; other datasets have their own."""
    if args.dataset != "FOLDER":
        return args.image_size
    stored = hp["encoder_size"]
    if args.image_size is not None and args.image_size != stored:
        raise UserError(f"--image_size {args.image_size} contradicts the checkpoint, whose encoder takes {stored} "
                        f"px images: drop --image_size (FOLDER takes the checkpoint's)")
    return stored


def attach_classifier(model, path):
    """Put a seed's classifier-only file (seeds.linear_classifier) in as the model's evaluation classifier."""
    protocol, weight, bias, layer = seeds.linear_classifier(checkpoint.load(path, arg="--linear_classifier"), path)
    layers = model.probe_layers(model.hyperparams)
    if layer is not None and layer not in layers:
        raise UserError(f"--linear_classifier {path} reads layer {layer} (LinearProbing.py --layer), which the "
                        f"checkpoint's {model.hyperparams['arch']} encoder lacks: give a classifier of layer "
                        f"{', '.join(map(str, layers)) or 'its output'}")
    model.reset_evaluator(weight.shape[0], protocol, None if layer is None or layer == max(layers) else layer)
    if weight.shape[1] != model.n_features:
        raise UserError(f"--linear_classifier {path} reads {weight.shape[1]} features but the checkpoint's encoder "
                        f"gives {model.n_features}: give the classifier trained on this encoder")
    model.evaluator.linear.load_state_dict({"weight": weight, "bias": bias})


def check_fit(args, hp, splits, image_size, trained=True):
    """The checkpoint's encoder must take the dataset's image size and, unless it has no trained classifier (then
    only --knn scores it), its classifiers predict the dataset's classes."""
    if splits.image_size != hp["encoder_size"]:
        raise UserError(f"the checkpoint's encoder takes {hp['encoder_size']} px images but --dataset "
                        f"{args.dataset} gives {splits.image_size} px; pick a dataset of that size")
    if not trained:
        if args.knn is None:
            raise UserError(f"{args.checkpoint} holds an encoder without a trained classifier: score its features "
                            f"with --knn, or train one with {retrain_command(args, hp, splits, image_size)}")
        return
    if splits.n_classes != hp["n_classes"]:
        raise UserError(f"the checkpoint's classifiers predict {hp['n_classes']} classes but {args.dataset} "
                        f"has {splits.n_classes}: retrain them with {retrain_command(args, hp, splits, image_size)}")


def retrain_command(args, hp, splits, image_size):
    """A train.py command line, ready to paste in the current directory, that trains fresh classifiers for this
    dataset on the checkpoint's frozen encoder, in a run of its own."""
    train_py = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"))
    source_run = os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))
    argv = [sys.executable, train_py, "--classifiers", "--checkpoint_path", args.checkpoint,
            "--dataset", args.dataset, "--input_dir", args.input_dir,
            "--run_name", f"{source_run}_{args.dataset.lower()}_classifiers"]
    if "protocol" in hp:
        argv += ["--protocol", hp["protocol"]]
    if args.dataset == "FOLDER":
        argv += ["--image_size", str(image_size)]
    if len(splits.train) < TRAIN_BATCH_SIZE:       # train.py refuses a batch larger than the training split
        argv += ["--batch_size", str(len(splits.train))]
    if args.skip_bad_images:
        argv.append("--skip_bad_images")
    return shlex.join(argv)


def refresh_bn(args, model, splits, dist, eval_encoder):
    """engine.refresh_bn on training batches (view 1 of AMDIM's augmentation) or, with --bn_warmup test, on
    test batches."""
    source = splits.train if args.bn_warmup == "train" else splits.test
    loader = engine.make_loader(source, args.batch_size, args.num_workers, dist.device, shuffle=True)
    images = engine.first_view(splits.batch_augment, dist.device) if args.bn_warmup == "train" else None
    engine.refresh_bn(model, loader, dist, args.amp, eval_encoder=eval_encoder, images=images)


def position(ckpt):
    """Where training stood when the checkpoint was saved: {"phase", "epoch" (1-based: the epoch its weights
    come from, finished or not), "update" (updates done), "mid_epoch"}; {} for a file without a cursor.

    The cursor holds the next epoch to run and the updates done; batches_done > 0 marks a save mid-epoch, when
    that next epoch is the one under way."""
    if "cursor" not in ckpt:
        return {}
    phase = ckpt.get("phase") or SELF_SUPERVISED
    prefix = "classifier" if phase == CLASSIFIERS else "info"
    cursor = checkpoint.cursor(ckpt)
    mid_epoch = int(ckpt.get("samples_done", ckpt.get("batches_done", 0))) > 0
    return {"phase": phase, "epoch": cursor[f"{prefix}_epoch"] + mid_epoch, "update": cursor[f"{prefix}_step"],
            "mid_epoch": mid_epoch}


def describe(result):
    """test.py's text output: one line."""
    where = ""
    if "epoch" in result:
        when = "checkpoint saved mid-epoch:" if result["mid_epoch"] else "checkpoint saved after"
        kind = "classifier " if result["phase"] == CLASSIFIERS else ""
        where = f" ({when} {kind}epoch {result['epoch']}, update {result['update']})"
    skipped = result["n_skipped"]
    skipped_text = f", {skipped} unreadable image{'s' if skipped != 1 else ''} skipped" if skipped else ""
    scores = [f"top-1 linear {result['top1_linear']:.2f}%"] if "top1_linear" in result else []
    scores += [f"mlp {result['top1_mlp']:.2f}%"] if "top1_mlp" in result else []
    scores += [f"kNN (k={result['knn_k']}) {result['top1_knn']:.2f}%"] if "top1_knn" in result else []
    top5_text = f"; top-5 linear {result['top5_linear']:.2f}%" if "top5_linear" in result else ""
    protocol = f", {result['protocol']} protocol" if "protocol" in result else ""
    seed = f" ({result['seed_format']} file)" if "seed_format" in result else ""
    return (f"{result['checkpoint']}{seed}{where} on {result['dataset']} test ({result['n_images']} images"
            f"{skipped_text}){protocol}: {', '.join(scores)}{top5_text}")


if __name__ == "__main__":
    run_main(main)
