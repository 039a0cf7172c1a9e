"""Score a checkpoint (of any method, or of the original AMDIM code) on a dataset's test split: its evaluation
classifiers' top-1 and, with --knn, weighted kNN top-1 on its frozen features.

    python test.py runs/default_run/amdim_cpt.pth --dataset C10 --input_dir ./data [--knn [K]] [--json]

BatchNorm statistics are refreshed first exactly as train.py does before each test (up to 50 training batches,
or test batches with --bn_warmup test), then every test image is scored once. kNN: the training split's images
(test-time transform) are the memory, cosine similarity on L2-normalised features, votes weighted
exp(similarity / 0.07), K neighbours (default 200).
"""
import argparse
import json

import checkpoint
import datasets
import engine
from utils import Dist, UserError, pick_device, reap_children_at_exit, run_main, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by train.py or the original AMDIM code")
    p.add_argument("--dataset", type=str.upper, default="STL10", choices=datasets.DATASETS)
    p.add_argument("--input_dir", default="./data")
    p.add_argument("--image_size", type=int, choices=(32, 64, 128), help="FOLDER only")
    p.add_argument("--batch_size", type=int, default=200)
    p.add_argument("--bn_warmup", choices=("train", "test"), default="train")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1, help="seeds the augmentation of the BatchNorm refresh")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--skip_bad_images", action="store_true", help="skip unreadable image files (counted)")
    p.add_argument("--knn", type=int, nargs="?", const=200, metavar="K",
                   help="also report weighted kNN top-1 with K neighbours (default K 200)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    try:
        datasets.encoder_size(args.dataset, args.image_size)
    except UserError as e:
        p.error(str(e))
    if args.knn is not None and args.knn < 1:
        p.error("--knn K must be at least 1")
    if args.batch_size < 2:
        p.error("--batch_size must be at least 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    seed_everything(args.seed)
    reap_children_at_exit()
    ckpt = checkpoint.read(args.checkpoint)
    model = checkpoint.model_from(ckpt).to(device)

    hp = model.hyperparams
    splits = datasets.build_splits(args.dataset, args.input_dir, "classifiers", image_size=args.image_size,
                                   skip_bad_images=args.skip_bad_images)
    if splits.image_size != hp["encoder_size"]:
        raise UserError(f"the checkpoint's encoder takes {hp['encoder_size']} px images but --dataset "
                        f"{args.dataset} gives {splits.image_size} px; pick a dataset of that size")
    if splits.n_classes != hp["n_classes"]:
        raise UserError(f"the checkpoint's classifiers predict {hp['n_classes']} classes but {args.dataset} "
                        f"has {splits.n_classes}: retrain them with train.py --classifiers --checkpoint_path "
                        f"{args.checkpoint} --dataset {args.dataset}")

    source = splits.train if args.bn_warmup == "train" else splits.test
    bn_loader = engine.make_loader(source, args.batch_size, args.num_workers, device, shuffle=True)
    images = engine.first_view(splits.batch_augment, device) if args.bn_warmup == "train" else None
    engine.refresh_bn(model, bn_loader, device, args.amp, eval_encoder=bool(ckpt.get("eval_encoder", False)),
                      images=images)
    dist = Dist(device=device)
    acc = engine.evaluate(model, splits.test, dist, args.amp, args.batch_size, args.num_workers)

    result = {"checkpoint": args.checkpoint, "dataset": args.dataset, "n_images": acc["n_images"],
              "top1_linear": acc["top1_linear"], "top1_mlp": acc["top1_mlp"]}
    knn_text = ""
    if args.knn is not None:
        result["top1_knn"] = engine.knn_accuracy(model, splits.memory, splits.test, dist, args.amp, args.batch_size,
                                                 args.num_workers, k=args.knn)
        result["knn_k"] = args.knn
        knn_text = f", kNN (k={args.knn}) {result['top1_knn']:.2f}%"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.checkpoint} on {args.dataset} test ({acc['n_images']} images): top-1 linear "
              f"{acc['top1_linear']:.2f}%, mlp {acc['top1_mlp']:.2f}%{knn_text}")
    return result


if __name__ == "__main__":
    run_main(main)
