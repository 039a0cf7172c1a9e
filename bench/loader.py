"""What one loader worker core delivers on an image folder: synthetic ImageNet-size JPEGs (500 x 375, the JPEG
quality chosen so that they average ~105 KB) written to a temporary folder in class folders, read through the
training split exactly as a loader worker reads it (datasets.build_splits, one item after another, one thread),
for each view recipe, BEFORE (the whole recipe per image, normalised float32 views: --per_image_aug) and AFTER
(the crop path: decode and the geometric part per image, uint8 crops; the colour on the training device).

Prints the host line (bench/host.py), then a table: recipe, img/s per worker core BEFORE and AFTER (median over
--runs, one pass over the images each), AFTER's speed-up, AFTER with every JPEG decoded at full size (no
draft: libjpeg's reduced-scale decoding off, for comparison), bytes shipped to the trainer per image BEFORE and
AFTER and their ratio, and the device's colour pass per image timed here on this CPU (one thread, batches of 64;
on a GPU it is far cheaper), for information. The "decode"
row only decodes each file (load_rgb). Times are the thread's CPU time (--clock cpu, the default: steady on a
shared host) or the wall clock (--clock wall).

    .venv/bin/python bench/loader.py [--images 256] [--runs 5] [--recipes amdim moco_v2]
    .venv/bin/python bench/loader.py --quick          # 32 images, one run: well under a minute
"""
import argparse
import io
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # before bench/: `import augment` is the repository's augment.py

import host     # bench/host.py: the CPU model and matmul rate every table prints

WIDTH, HEIGHT = 500, 375        # a typical ImageNet training image
TARGET_BYTES = 105_000
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
# name -> (make_views kind, view options (SwAV's crops as MultiCrop arguments))
RECIPES = {
    "amdim": ("amdim", None),
    "moco_v1": ("moco_v1", None),
    "moco_v2": ("moco_v2", None),
    "cmc": ("cmc", None),
    "swav_128_64": ("swav", ((2, 6), (128, 64), (0.14, 0.05), (1.0, 0.14))),
    "swav_224_96": ("swav", ((2, 6), (224, 96), (0.14, 0.05), (1.0, 0.14))),
}
LABELS = {"amdim": "AMDIM 2x128", "moco_v1": "MoCo v1 2x128", "moco_v2": "MoCo v2 2x128", "cmc": "CMC 128",
          "swav_128_64": "SwAV 2x128+6x64", "swav_224_96": "SwAV 2x224+6x96", "decode": "decode alone"}
COLOUR_BATCH = 64


def synthetic_image(rng):
    """A 500 x 375 RGB PIL image with structure at several scales (smooth colour fields, finer blotches, pixel
    noise), which JPEG compresses about as much as a photograph."""
    import numpy as np
    from PIL import Image
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    for cells, amplitude in ((4, 90), (16, 50), (64, 30)):
        coarse = rng.randint(0, 256, (cells * 3 // 4 + 1, cells + 1, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC), np.float32)
        pixels += (field - 128) * amplitude / 128
    pixels += rng.randn(HEIGHT, WIDTH, 3) * 14
    return Image.fromarray((pixels + 128).clip(0, 255).astype(np.uint8))


def jpeg_bytes(image, quality):
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def write_folder(root, n_images, seed=0):
    """train/ and val/ class folders of synthetic JPEGs under root (n_images training images in 4 classes, 4
    validation images); the quality is the one whose first image comes closest to TARGET_BYTES. Returns the
    training images' mean size in bytes."""
    import numpy as np
    rng = np.random.RandomState(seed)
    first = synthetic_image(rng)
    quality = min(range(70, 99), key=lambda q: abs(len(jpeg_bytes(first, q)) - TARGET_BYTES))
    sizes = []
    for split, n in (("train", n_images), ("val", 4)):
        for i in range(n):
            folder = os.path.join(root, split, f"class{i % 4}")
            os.makedirs(folder, exist_ok=True)
            data = jpeg_bytes(first if i == 0 and split == "train" else synthetic_image(rng), quality)
            with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
                f.write(data)
            sizes.append(len(data)) if split == "train" else None
    return statistics.mean(sizes), quality


def training_split(root, recipe, crops):
    """The IN128 training split of root as train.py builds it: the crop path (crops True) or the whole recipe
    per image."""
    import augment
    import datasets
    kind, options = RECIPES[recipe]
    view_options = {"crops": augment.MultiCrop(*options)} if options else None
    return datasets.build_splits("IN128", root, "self_supervised", views=kind, view_options=view_options,
                                 batch_augment=crops, cache_images="off", report=False)


def rate_and_bytes(items, n, clock, seed=0):
    """(images per second of the clock, bytes per image shipped) reading items 0..n-1 one after another, each
    re-seeded as engine.SeededItems does."""
    import utils
    shipped = 0
    t0 = clock()
    for i in range(n):
        utils.reseed(utils.stream_seed(seed, i))
        views = items[i][0]
        shipped += sum(v.numel() * v.element_size() for v in views)
    return n / (clock() - t0), shipped / n if n else 0.0


def decode_rate(root, n, clock):
    import datasets
    folder = datasets.ImageFolder(os.path.join(root, "train"))
    t0 = clock()
    for path, _ in folder.samples[:n]:
        datasets.load_rgb(path)
    return n / (clock() - t0)


def colour_ms(split, clock, runs):
    """The device half's cost per image on this CPU: ms per image of split.batch_augment on COLOUR_BATCH images'
    crops, median of runs."""
    import torch
    n = min(COLOUR_BATCH, len(split.train))
    batch = torch.utils.data.default_collate([split.train[i] for i in range(n)])
    times = []
    for _ in range(runs):
        t0 = clock()
        split.batch_augment(batch[0])
        times.append((clock() - t0) / n)
    return 1e3 * statistics.median(times)


def measure(root, recipe, n, runs, clock):
    """One table row's numbers."""
    before, after = training_split(root, recipe, False), training_split(root, recipe, True)
    rates = {"before": [], "after": [], "no_draft": []}
    geometry = after.train.base.geometry
    for _ in range(runs):       # the paths alternate, so that each sees the same machine load
        rates["before"].append(rate_and_bytes(before.train, n, clock)[0])
        rate, after_bytes = rate_and_bytes(after.train, n, clock)
        rates["after"].append(rate)
        geometry.draft = False
        rates["no_draft"].append(rate_and_bytes(after.train, n, clock)[0])
        geometry.draft = True
    before_bytes = rate_and_bytes(before.train, 2, clock)[1]
    row = {k: statistics.median(v) for k, v in rates.items()}
    row.update(before_bytes=before_bytes, after_bytes=after_bytes, colour_ms=colour_ms(after, clock, runs))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="synthetic training images (each run reads them all)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--recipes", nargs="+", choices=tuple(RECIPES), default=tuple(RECIPES))
    p.add_argument("--clock", choices=tuple(CLOCKS), default="cpu")
    p.add_argument("--quick", action="store_true", help="32 images, one run (a smoke test; numbers are rough)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.runs = 32, 1
    import torch
    torch.set_num_threads(1)    # one worker core
    clock = CLOCKS[args.clock]
    line, _ = host.header()
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as root:
        mean_bytes, quality = write_folder(root, args.images)
        print(line)
        print(f"{args.images} synthetic {WIDTH}x{HEIGHT} JPEGs (quality {quality}, {mean_bytes / 1e3:.0f} KB on "
              f"average); img/s per worker core = images / {args.clock} time of one thread, median of "
              f"{args.runs} run(s); colour: the device half timed on this CPU, batches of {COLOUR_BATCH}")
        header = (f"{'recipe':<17} {'before':>7} {'after':>7} {'x':>5} {'no draft':>8} {'B/img before':>12} "
                  f"{'B/img after':>11} {'bytes /':>7} {'colour ms':>9}")
        print(header)
        print("-" * len(header))
        decode = statistics.median(decode_rate(root, args.images, clock) for _ in range(args.runs))
        print(f"{LABELS['decode']:<17} {decode:7.0f} {decode:7.0f}")
        for recipe in args.recipes:
            r = measure(root, recipe, args.images, args.runs, clock)
            print(f"{LABELS[recipe]:<17} {r['before']:7.0f} {r['after']:7.0f} {r['after'] / r['before']:5.1f} "
                  f"{r['no_draft']:8.0f} {r['before_bytes']:12.0f} {r['after_bytes']:11.0f} {r['before_bytes'] / r['after_bytes']:7.1f} "
                  f"{r['colour_ms']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
