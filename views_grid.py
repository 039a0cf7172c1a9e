"""A picture of what a method trains on: a few training images, each followed by its views exactly as the method
sees them (every crop size, SwAV's small crops included, de-normalised), so a user can check the augmentation at a
glance.

train.py draws it to TensorBoard ("views") when a run starts; `python views_grid.py --dataset C10 --method moco
--aug-plus --out views.png` saves it as a PNG.
"""
import argparse

import torch
import torch.nn.functional as F
import torchvision

import config
import datasets
import engine
import imageops
import methods
from utils import UserError, run_main


def originals(dataset, indices):
    """The source images of training items as uint8 (3, H, W) tensors (before any augmentation)."""
    out = []
    for i in indices:
        if hasattr(dataset, "images"):              # datasets.UInt8Images: batched augmentation
            out.append(torch.as_tensor(dataset.images[i]))
        else:                                         # datasets.Transformed: made image by image
            out.append(torchvision.transforms.functional.pil_to_tensor(datasets.source_image(dataset, i)))
    return out


def training_views(splits, indices, n_views, device):
    """The views of those items as the training step gets them: a list over views of (n, 3, S, S) tensors."""
    batch = torch.utils.data.default_collate([splits.train[i] for i in indices])
    views, _, _ = engine.training_views(batch, splits.batch_augment, device, n_views)
    return [v.float().cpu() for v in views]


def grid(splits, n_images, n_views, device=torch.device("cpu"), seed=0, colour="Lab"):
    """One row per image: the source image, then its n_views views, de-normalised to [0, 1] (CMC's L or Y view as
    grey levels, its ab or CbCr view, per `colour`, as colour at constant lightness) and centred on a canvas of
    the largest size. Returns a float (3, H, W) image. Draws its randomness from a forked RNG, so the training
    run's random stream is untouched."""
    indices = list(range(min(n_images, len(splits.train))))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        views = training_views(splits, indices, n_views, device)
    if [v.shape[1] for v in views] == [1, 2]:         # CMC: Lab's L and ab channels, or YCbCr's Y and CbCr
        views = list(imageops.colour_views_to_rgb(*views, colour))
    else:
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in splits.mean_std)
        views = [(v * std + mean).clamp(0, 1) for v in views]
    size = max(max(v.shape[-1] for v in views), 1)
    sources = [F.interpolate(img[None].float() / 255, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0] for img in originals(splits.train, indices)]
    tiles = []
    for row, source in enumerate(sources):
        tiles.append(source)
        tiles += [_centred(v[row], size) for v in views]
    return torchvision.utils.make_grid(tiles, nrow=1 + len(views), padding=2, pad_value=1.0)


def _centred(img, size):
    """(3, s, s) -> (3, size, size), the image in the middle of a white canvas."""
    pad = size - img.shape[-1]
    return F.pad(img, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=1.0)


def log_views(run, n_images):
    """Draw the run's training views to TensorBoard as image "views" (rank 0, at the start of training)."""
    picture = grid(run.splits, n_images, run.n_views, run.dist.device,
                   colour=run.model.hyperparams.get("view", "Lab"))
    if run.log.writer is not None:
        run.log.writer.add_image(f"{run.args.phase}/views", picture, 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=str.upper, default="DIGITS", choices=datasets.DATASETS)
    p.add_argument("--input_dir", default="./data")
    p.add_argument("--image_size", type=int, choices=(32, 64, 128))
    p.add_argument("--per_image_aug", action="store_true")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--out", default="views.png")
    config.add_flags(p)
    args = p.parse_args(argv)
    size = datasets.encoder_size(args.dataset, args.image_size)
    hp = config.from_flags(args, size, n_classes=0)
    views = methods.METHODS[hp["method"]].training_views(hp)
    splits = datasets.build_splits(args.dataset, args.input_dir, "self_supervised", image_size=args.image_size,
                                   batch_augment=not args.per_image_aug, views=views.kind, view_options=views.options)
    picture = grid(splits, args.images, views.count, colour=hp.get("view", "Lab"))
    try:
        torchvision.utils.save_image(picture, args.out)
    except OSError as e:
        raise UserError(f"cannot write {args.out} ({e.strerror}); pass another --out") from None
    print(f"wrote {args.out}: {args.images} {args.dataset} images and their {hp['method']} views "
          f"({views.kind})")


if __name__ == "__main__":
    run_main(main)
