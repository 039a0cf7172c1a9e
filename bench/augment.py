"""Two-view augmentation throughput, one process, one thread, on the CPU: for each view recipe
(augment.make_views kinds "amdim", "moco_v1", "moco_v2", "cmc") and source size, the per-image PIL/torchvision
pipeline (image folders and the policy augmentations use it) against the batched one (in-memory datasets; on a
GPU in training).

Prints the host line (bench/host.py), then a table: kind, recipe, source image size, median img/s of each path
(image = one two-view pair) over the runs, min-max, and the batched path's speed-up over the per-image one. The
paths' runs alternate, so that each sees the same machine load. --compare_ref REV adds the batched path of
augment.py as of git revision REV (read with git show, with that revision's imageops.py and autoaugment.py
where it has them; imported beside ours), timed in the same alternation: its img/s, its speed-up, and ours over
it. --device cuda runs the batched paths on that device (the per-image one stays on the CPU, as in loader
workers). --clock cpu times each run by the thread's CPU time instead of the wall clock (steadier on a shared,
busy host, for CPU runs; say which in any quote).

--kornia instead times the batched ops against kornia.augmentation's (installed separately; skipped with a
message when it is not), batch by batch, the two alternating so that both see the same machine load: median
ms per batch, min-max, and kornia's time over ours; last, the fixed cost per batch of each RandomResizedCrop
on 8 px images.

    .venv/bin/python bench/augment.py [--images 2000] [--batch 256] [--runs 5] [--kinds amdim moco_v2]
    .venv/bin/python bench/augment.py --sizes 32 96 160 --compare_ref main --clock cpu
    .venv/bin/python bench/augment.py --kornia [--batch 256] [--runs 7]
"""
import argparse
import importlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # before bench/: `import augment` is the repository's augment.py

import host     # bench/host.py: the CPU model and matmul rate every table prints

KINDS = ("amdim", "moco_v1", "moco_v2", "cmc")
# source size -> recipe: C10 images are 32 px; STL10 96 px (64 px views); ImageNet-like 160 px for the 128 px
# recipe (not trained batched: image folders augment per image)
RECIPE_OF_SOURCE = {32: "cifar", 96: "stl", 160: "imagenet"}
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
# --kornia: (recipe, source size): the encoder input size comes from the recipe.
KORNIA_CASES = (("cifar", 32), ("stl", 96))


def per_image_path(kind, recipe, size):
    """(run(n): augment n images one by one, as a loader worker does)."""
    import numpy as np
    from PIL import Image

    import augment
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(64)]
    two_views = augment.make_views(kind, recipe)
    return lambda n: [two_views(images[i % len(images)]) for i in range(n)]


def batched_path(module, kind, recipe, size, batch, device):
    """run(n): augment n images (rounded up to whole batches) with module.make_views(..., batched=True) on
    device, waiting for it at the end."""
    import torch
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, size, size, generator=g) * 255).to(torch.uint8).to(device)
    views = module.make_views(kind, recipe, batched=True)

    def run(n):
        for _ in range(-(-n // batch)):
            views(images)
        if images.is_cuda:
            torch.cuda.synchronize(device)
    return run


# The augmentation's modules: augment.py alone in an older tree; augment.py and the imageops.py and
# autoaugment.py it imports in a newer one.
AUGMENT_MODULES = ("augment", "imageops", "autoaugment")


def reference_module(rev):
    """augment.py as of git revision rev, with that revision's imageops.py and autoaugment.py where it has them,
    imported beside ours (they import the same utils): the revision's augment module."""
    directory = tempfile.mkdtemp()
    for name in AUGMENT_MODULES:
        try:
            source = subprocess.run(["git", "show", f"{rev}:{name}.py"], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            if name != "augment":
                continue                                    # an older tree: augment.py holds it all
            sys.exit(f"--compare_ref {rev}: cannot read augment.py at that revision ({e}); name a commit or "
                     f"branch of this repository")
        with open(os.path.join(directory, f"{name}.py"), "w") as f:
            f.write(source)
    # Ours step aside while the revision's modules import each other, then come back; the revision's augment
    # keeps what it imported.
    ours = {name: sys.modules.pop(name) for name in AUGMENT_MODULES if name in sys.modules}
    sys.path.insert(0, directory)
    try:
        return importlib.import_module("augment")
    finally:
        sys.path.remove(directory)
        for name in AUGMENT_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(ours)


def alternate(paths, counts, runs, clock):
    """Warm each path up, then run each on its count of images in turn, runs times: img/s lists, one per path."""
    for run in paths:
        run(16)
    rates = [[] for _ in paths]
    for _ in range(runs):
        for run, n, r in zip(paths, counts, rates):
            t0 = clock()
            run(n)
            r.append(n / (clock() - t0))
    return rates


def throughput_table(args):
    import torch

    import augment
    ref = reference_module(args.compare_ref) if args.compare_ref else None
    n_batched = -(-args.images // args.batch) * args.batch
    print(f"two-view augmentation, 1 process, torch threads {torch.get_num_threads()}, per image on the CPU, "
          f"batched on {args.device}; {args.images} pairs per run per image, {n_batched} batched (batches of "
          f"{args.batch}); median of {args.runs} alternating runs, {args.clock} clock")
    head = f"{'kind':<8} {'recipe':<9} {'px':>4} {'per-image':>9} {'batched':>8} {'min-max':>15} {'speed-up':>8}"
    if ref:
        head += f" {args.compare_ref + ' batched':>16} {'speed-up':>8} {'ours/ref':>8}"
    print(head)
    for kind in args.kinds:
        for size in args.sizes:
            recipe = RECIPE_OF_SOURCE[size]
            paths = [per_image_path(kind, recipe, size),
                     batched_path(augment, kind, recipe, size, args.batch, args.device)]
            if ref:
                paths.append(batched_path(ref, kind, recipe, size, args.batch, args.device))
            rates = alternate(paths, [args.images] + [n_batched] * (len(paths) - 1), args.runs, CLOCKS[args.clock])
            base, ours = statistics.median(rates[0]), statistics.median(rates[1])
            line = (f"{kind:<8} {recipe:<9} {size:>4} {base:9.0f} {ours:8.0f} "
                    f"{min(rates[1]):7.0f}-{max(rates[1]):<7.0f} {ours / base:7.2f}x")
            if ref:
                theirs = statistics.median(rates[2])
                line += f" {theirs:16.0f} {theirs / base:7.2f}x {ours / theirs:7.2f}x"
            print(line, flush=True)


def kornia_ops(recipe):
    """(name, input: "source" or "view", ours, kornia's) for the MoCo v2 ops at this recipe's size S, each a
    callable float (B, 3, H, W) in [0, 1] -> (B, 3, S, S) or (B, 3, S, S) -> (B, 3, S, S), configured alike:
    RandomResizedCrop scale 0.2-1, ratio 3/4-4/3, bilinear (align_corners False, torchvision's convention);
    ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8; RandomGrayscale p 0.2; Gaussian blur sigma 0.1-2 p 0.5, 13 taps
    (3 sigma), edges repeated; and the whole MoCo v2 view, normalisation included."""
    import kornia.augmentation as K
    import torch

    import augment
    import imageops
    size = augment.RECIPE_SIZE[recipe]
    mean, std = augment.NORMALIZATION[recipe]
    crop = dict(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    k_crop = K.RandomResizedCrop((size, size), **crop, resample="bilinear", align_corners=False)
    k_crop_warp = K.RandomResizedCrop((size, size), **crop, resample="bilinear", align_corners=False,
                                      cropping_mode="resample")
    k_jitter = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    k_gray = K.RandomGrayscale(p=0.2)
    k_blur = K.RandomGaussianBlur((13, 13), (0.1, 2.0), border_type="replicate", p=0.5)
    k_view = K.AugmentationSequential(
        k_crop, k_jitter, k_gray, k_blur, K.RandomHorizontalFlip(p=0.5),
        K.Normalize(torch.tensor(mean), torch.tensor(std)))
    ours_view = augment.BatchMoCoViews(recipe, 2)
    return (
        ("RandomResizedCrop", "source",
         lambda x: imageops.random_resized_crop(x, size, mode="bilinear", **crop), k_crop),
        ("  kornia cropping_mode=resample", "source", None, k_crop_warp),
        ("ColorJitter p 0.8", "view", lambda x: imageops.color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.8), k_jitter),
        ("RandomGrayscale p 0.2", "view", lambda x: imageops.random_grayscale(x, p=0.2), k_gray),
        ("GaussianBlur p 0.5", "view", lambda x: imageops.random_gaussian_blur(x, (0.1, 2.0), p=0.5), k_blur),
        ("whole MoCo v2 view", "source", ours_view.view, k_view),
    )


def _alternate(fns, x, runs):
    """Warm each of fns up on x, then time them in turn, runs times: one list of ms per batch per fn."""
    for f in fns:
        f(x)
    times = [[] for _ in fns]
    for _ in range(runs):
        for f, t in zip(fns, times):
            t.append(_ms(f, x))
    return times


def _ms(fn, x):
    t0 = time.perf_counter()
    fn(x)
    return (time.perf_counter() - t0) * 1e3


def kornia_table(args):
    try:
        import kornia
    except ImportError:
        print("--kornia: kornia is not installed (pip install kornia); nothing to compare")
        return
    import torch
    import augment
    import imageops
    print(f"batched ops, ours against kornia {kornia.__version__}, CPU, torch threads 1, batch {args.batch}, "
          f"float32; median of {args.runs} alternating runs after a warm-up, ms per batch")
    print(f"{'op':<31} {'px':>8} {'ours ms':>8} {'min-max':>13} {'kornia ms':>9} {'min-max':>13} "
          f"{'kornia/ours':>11}")
    for recipe, source in KORNIA_CASES:
        size = augment.RECIPE_SIZE[recipe]
        g = torch.Generator().manual_seed(0)
        inputs = {"source": torch.rand(args.batch, 3, source, source, generator=g),
                  "view": torch.rand(args.batch, 3, size, size, generator=g)}
        for name, which, ours, theirs in kornia_ops(recipe):
            x = inputs[which]
            _row(name, f"{x.shape[-1]}->{size}", *_alternate([ours or theirs, theirs], x, args.runs),
                 ours is not None)
    # The fixed cost per batch, what the work leaves on a fast device: crops of 8 px images to 8 px. kornia's
    # default cropping_mode ("slice") resizes one image at a time; "resample" warps the batch at once.
    x = torch.rand(args.batch, 3, 8, 8)
    crop = dict(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), resample="bilinear", align_corners=False)
    ours = lambda x: imageops.random_resized_crop(x, 8, (0.2, 1.0), (3 / 4, 4 / 3), mode="bilinear")
    for mode in ("slice", "resample"):
        theirs = kornia.augmentation.RandomResizedCrop((8, 8), cropping_mode=mode, **crop)
        _row(f"RandomResizedCrop ({mode})", "8->8", *_alternate([ours, theirs], x, args.runs), True)


def _row(name, px, ours, theirs, show_ours):
    """One line of the --kornia table from lists of ms per batch."""
    k = statistics.median(theirs)
    if not show_ours:
        print(f"{name:<31} {px:>8} {'':>8} {'':>13} {k:9.1f} {min(theirs):6.1f}-{max(theirs):<6.1f}", flush=True)
        return
    o = statistics.median(ours)
    print(f"{name:<31} {px:>8} {o:8.1f} {min(ours):6.1f}-{max(ours):<6.1f} {k:9.1f} "
          f"{min(theirs):6.1f}-{max(theirs):<6.1f} {k / o:10.2f}x", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="image pairs per run")
    p.add_argument("--sizes", type=int, nargs="+", choices=sorted(RECIPE_OF_SOURCE), default=[32, 96],
                   help="source image sizes (px): 32 (cifar recipe), 96 (stl), 160 (imagenet)")
    p.add_argument("--compare_ref", metavar="REV", help="also time the batched path of augment.py at this git "
                   "revision (e.g. main), alternating with ours")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall clock, or the thread's CPU "
                   "time (steadier on a busy host)")
    p.add_argument("--batch", type=int, default=256, help="images per batch on the batched path")
    p.add_argument("--device", default="cpu", help="where the batched path runs (e.g. cuda; the per-image path "
                   "stays on the CPU, as in loader workers)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=KINDS)
    p.add_argument("--kornia", action="store_true", help="time the batched ops against kornia.augmentation's")
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)
    print(host.header()[0], flush=True)
    if args.kornia:
        kornia_table(args)
    else:
        throughput_table(args)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
