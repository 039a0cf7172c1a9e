"""Two-view augmentation throughput, one process, one thread: the per-image PIL/torchvision pipeline
(augment.TwoViews over train_view_transform; image folders and policy augmentations use it) against the
batched one (augment.BatchTwoViews; in-memory datasets with the default augmentation), on the CPU.

Prints a table: recipe, source image size, path, median img/s (image = one two-view pair) over the runs,
min-max, and the speed-up.

    .venv/bin/python bench/augment.py [--images 2000] [--batch 256] [--runs 5]
"""
import argparse
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # before bench/: `import augment` is the repository's augment.py

# recipe, source size (C10 images are 32 px; STL10 96 px; ImageNet-like 160 px for the 128 px recipe)
CASES = (("cifar", 32), ("stl", 96), ("imagenet", 160))


def per_image_rate(recipe, size, n_images, runs):
    import numpy as np
    import torch
    from PIL import Image

    import augment
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(64)]
    two_views = augment.TwoViews(augment.train_view_transform(recipe))
    torch.manual_seed(0)
    for img in images[:16]:          # warm-up
        two_views(img)
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for i in range(n_images):
            two_views(images[i % len(images)])
        rates.append(n_images / (time.perf_counter() - t0))
    return rates


def batched_rate(recipe, size, n_images, batch, runs):
    import torch

    import augment
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, size, size, generator=g) * 255).to(torch.uint8)
    aug = augment.BatchTwoViews(recipe)
    torch.manual_seed(0)
    aug(images)                      # warm-up
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(max(1, n_images // batch)):
            aug(images)
        rates.append(max(1, n_images // batch) * batch / (time.perf_counter() - t0))
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="image pairs per run")
    p.add_argument("--batch", type=int, default=256, help="images per batch on the batched path")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)
    print(f"two-view augmentation, 1 process, torch threads 1, CPU; {args.images} pairs per run, median of "
          f"{args.runs} runs; batched path in batches of {args.batch}")
    print(f"{'recipe':<10} {'source px':>9} {'path':<10} {'img/s median':>12} {'min-max':>17} {'speed-up':>8}")
    for recipe, size in CASES:
        base = statistics.median(per_image_rate(recipe, size, args.images, args.runs))
        fast = batched_rate(recipe, size, args.images, args.batch, args.runs)
        print(f"{recipe:<10} {size:>9} {'per-image':<10} {base:12.1f} {'':>17} {1:8.1f}x")
        print(f"{recipe:<10} {size:>9} {'batched':<10} {statistics.median(fast):12.1f} "
              f"{min(fast):8.1f}-{max(fast):<8.1f} {statistics.median(fast) / base:8.1f}x", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
