"""Two-view augmentation throughput of the per-image (PIL, torchvision) pipeline, one process, one core.

Prints a table: recipe, source image size, median img/s (image = one two-view pair) over the runs, min-max,
peak RSS. The per-image pipeline is what every dataset uses today (datasets.TwoViews over
datasets.train_view_transform).

    .venv/bin/python bench/augment.py [--images 2000] [--runs 5]
"""
import argparse
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# recipe, source size (C10 images are 32 px; STL10 96 px; ImageNet-like 160 px for the 128 px recipe)
CASES = (("cifar", 32), ("stl", 96), ("imagenet", 160))


def per_image_rate(recipe, size, n_images, runs):
    import numpy as np
    import torch
    from PIL import Image

    import datasets
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(64)]
    two_views = datasets.TwoViews(datasets.train_view_transform(recipe))
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="image pairs per run")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)
    print(f"per-image two-view pipeline, 1 process, torch threads 1; {args.images} pairs per run, "
          f"median of {args.runs} runs")
    print(f"{'recipe':<10} {'source px':>9} {'img/s median':>12} {'min-max':>15} {'peak RSS':>9}")
    for recipe, size in CASES:
        rates = per_image_rate(recipe, size, args.images, args.runs)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{recipe:<10} {size:>9} {statistics.median(rates):12.1f} {min(rates):7.1f}-{max(rates):<7.1f} "
              f"{rss:7.0f}MB", flush=True)


if __name__ == "__main__":
    main()
