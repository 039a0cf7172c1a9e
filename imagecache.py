"""Image folder splits decoded once into memory (--cache_images): every image of a split in one uint8 tensor
(N, 3, H, W), so that training takes the batched on-device augmentation path of the in-memory datasets instead
of decoding and augmenting image by image in loader workers, which on a small host take the cores the training
step needs.

What is kept of each image: with `size` (FOLDER data at 32 px, whose per-image path starts with a bicubic
resize of the shorter side to 32 and a centre crop) the result of those two deterministic ops, so a folder of
any mix of sizes decodes to (N, 3, size, size); without it the image as decoded, which needs one size for the
whole split (the 64 and 128 px recipes crop at random from the whole source image, so resizing it would change
what they see).

The decode runs once, in parallel processes, and is saved beside the data as
<split folder>/.amdim_cache_<kind>_<classes>.pt, or in $XDG_CACHE_HOME/amdim (default ~/.cache/amdim) where the
split folder is not writable (its permission bits are respected, also by root). The file holds a key: a
checksum of the format version, the decode size, the classes and the file list (relative path, label, size and
modification time of every file), so a file added, changed or removed makes it stale. It is written under a
temporary name and renamed (never half written), by one process at a time (an flock beside it, so the
processes of a job that share the folder decode once and the others read the result), and read with
weights_only=True into each process's memory (not memory-mapped: a file truncated or replaced under a mapping,
by hand or on a network filesystem, would kill the run with SIGBUS). A stale or unreadable cache is rebuilt with
a one-line note.
"""
import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
import types
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

import utils
from utils import UserError

MODES = ("auto", "on", "off")
FORMAT = 1                        # bump when what a cache file holds changes: older files then count as stale
BUDGET_BYTES = 2 * 1024 ** 3      # auto caches a split whose decoded images take at most this much memory ...
AUTO_RAM_FRACTION = 0.5           # ... and at most this fraction of the memory available when the run starts
ON_RAM_FRACTION = 0.9             # "on" caches whatever fits in this fraction of the available memory
CHUNK = 64                        # images per task of the decoding processes
LOCK_NAME = ".amdim_cache.lock"


@dataclass
class Decoded:
    """A split's images as decoded: images uint8 (N, 3, H, W) in the folder's sample order (zeros where a file
    is unreadable), labels int64 (N,), bad the unreadable files' indices in ascending order, path the cache
    file (None when kept in memory only)."""
    images: torch.Tensor
    labels: torch.Tensor
    bad: list = field(default_factory=list)
    path: str = None


class MixedSizes(Exception):
    """The split's images come in more than one size, and its recipe needs them as they are (no `size`)."""


def decode_split(root, samples, classes, size, mode, *, loader, budget=BUDGET_BYTES, processes=None, report=True,
                 copies=1):
    """The images of one image folder split (samples: (path, label) in the folder's order; classes: its class
    names) decoded by `loader` (path -> PIL RGB image; raises UserError for an unreadable file), resized and
    centre-cropped to `size` px when size is given; see the module's docstring.

    mode: "off" (None at once), "auto" (None, with a one-line note, when the decoded images would exceed
    `budget` bytes or AUTO_RAM_FRACTION of the available memory, or come in several sizes without `size`) or
    "on" (a UserError where auto would give None, except that only ON_RAM_FRACTION of the available memory
    bounds it). processes: decoding processes (default: this process's CPUs). report: print progress (rank 0
    of a job). copies: the training processes on this machine, each holding its own copy: they share the
    fractions of the available memory, so that every one of them decides alike and all copies fit together.
    The cache file goes in the first of cache_places that can be used; where none can, the images stay in
    memory only.

    Returns Decoded, or None for the per-image path."""
    if mode == "off":
        return None
    n = len(samples)
    height, width = (size, size) if size else _first_size(samples, loader)
    nbytes = n * 3 * height * width
    limit, what_limit = memory_limit(mode, budget, copies)
    if nbytes > limit:
        return _not_cached(mode, report, f"the {n:,} images of {root} take {_gib(nbytes)} decoded, more than "
                                         f"{what_limit}")
    key = checksum(root, samples, classes, size)
    name = cache_name(classes, size)
    places = cache_places(root, name)
    try:
        for folder, filename in places:
            with _locked(folder, report) as locked:
                if not locked:
                    continue
                path = os.path.join(folder, filename)
                _remove_temporaries(path)
                decoded = read(path, key)
                if decoded is None:
                    decoded = decode_all(root, samples, size, (height, width), loader, processes, report)
                    if save(decoded, path, key):
                        decoded.path = path
                elif report:
                    print(f"images of {root}: read {path} ({n:,} images, {_gib(nbytes)})", flush=True)
                return decoded
        if report:
            print(f"note: no writable folder for the image cache of {root} (tried "
                  f"{', '.join(d for d, _ in places)}): decoding into memory only", flush=True)
        return decode_all(root, samples, size, (height, width), loader, processes, report)
    except MixedSizes as e:
        return _not_cached(mode, report, str(e))


def _not_cached(mode, report, reason):
    if mode == "on":
        raise UserError(f"--cache_images on: {reason}; pass --cache_images off (or auto)")
    if report:
        print(f"note: {reason}: reading it image by image (--cache_images auto)", flush=True)
    return None


def _gib(nbytes):
    return f"{nbytes / 1024 ** 3:.2f} GiB" if nbytes >= 1024 ** 3 else f"{nbytes / 1024 ** 2:.1f} MiB"


def memory_limit(mode, budget, copies=1):
    """(bytes, description) a split may take decoded under `mode`, in each of `copies` processes on this
    machine (they share the fractions of the available memory; auto's budget is per process)."""
    available = available_memory()
    fraction = AUTO_RAM_FRACTION if mode == "auto" else ON_RAM_FRACTION
    share = fraction * available / copies
    what = f"{fraction:.0%} of the available memory ({_gib(available)})"
    if copies > 1:
        what = f"{what} shared by this machine's {copies} training processes"
    if mode == "auto" and budget <= share:
        return budget, f"the --cache_images auto budget ({_gib(budget)})"
    return share, what


def available_memory():
    """Bytes of memory available to new allocations: Linux's MemAvailable, or less where this process's cgroup
    (a container's limit, cgroup v2) leaves less; elsewhere the free pages."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return float("inf")
    try:
        with open("/sys/fs/cgroup/memory.max") as f_max, open("/sys/fs/cgroup/memory.current") as f_current:
            limit = f_max.read().strip()
            if limit != "max":
                available = min(available, int(limit) - int(f_current.read()))
    except (OSError, ValueError):
        pass
    return available


def _first_size(samples, loader):
    """(height, width) of the split's first readable image, from its header."""
    for path, _ in samples[:100]:
        try:
            with Image.open(path) as img:
                width, height = img.size
                return height, width
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
    loader(samples[0][0])      # raises the unreadable file's error
    raise UserError(f"the first 100 images from {samples[0][0]} on are unreadable; check the dataset's files")


# ----------------------------------------------------------------------------------------------------------
# The cache file: its name, key, place, and reading and writing it.

def checksum(root, samples, classes, size):
    """The cache key: sha256 of the format version, decode size, classes and every file's path relative to
    root, label, size and modification time (a file that cannot be stat'ed counts with size -1)."""
    h = hashlib.sha256(json.dumps([FORMAT, size, list(classes)]).encode())
    for path, label in samples:
        try:
            st = os.stat(path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, 0)
        h.update(json.dumps([os.path.relpath(path, root), int(label), *stamp]).encode())
    return h.hexdigest()


def cache_name(classes, size):
    """.amdim_cache_<resized32 | native>_<classes' hash>.pt: one file per decode kind and class selection
    (--subset), which a change of the files then replaces."""
    digest = hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()[:10]
    return f".amdim_cache_{f'resized{size}' if size else 'native'}_{digest}.pt"


def cache_places(root, name):
    """[(folder, file name)]: the split folder where this user may write it, then the user's cache folder
    (the file named after the split folder's real path there)."""
    places = [(root, name)] if writable(root) else []
    user = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "amdim")
    where = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:12]
    return places + [(user, f"{where}{name}")]


def writable(folder):
    """Whether this process may create files in `folder`: root's writes would succeed everywhere, but a folder
    whose permission bits let nobody write (a shared, read-only dataset) is left alone."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and (os.geteuid() != 0 or bool(mode & 0o222))


def _locked(folder, report):
    """Hold an exclusive flock on <folder>/.amdim_cache.lock (utils.waiting_lock; on a filesystem without
    locks it goes on without, the rename still keeping the file whole); yields False when the folder cannot be
    used. A process that waits here reads what the holder wrote."""
    waiting = lambda: print(f"waiting for another process's image cache in {folder}", flush=True)
    return utils.waiting_lock(folder, LOCK_NAME, waiting if report else None)


def _remove_temporaries(path):
    """Remove what a killed writer of `path` left (called under the lock, so no writer is at work)."""
    folder, name = os.path.split(path)
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if entry.startswith(name + ".tmp"):
                os.remove(os.path.join(folder, entry))


def read(path, key):
    """The Decoded held in the cache file at `path` when its key is `key`; None when there is no such file or it
    is stale or unreadable (then with a one-line note: it is about to be rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, weights_only=True)
        images, labels, bad = saved["images"], saved["labels"], saved["bad"]
        if saved.get("format") != FORMAT or saved.get("key") != key:
            print(f"note: the image cache {path} does not match the folder's files (added, changed or removed "
                  f"since); rebuilding it", flush=True)
            return None
        if not (images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3
                and labels.dtype == torch.int64 and labels.shape == images.shape[:1] and bad.dtype == torch.int64):
            raise ValueError("unexpected contents")
    except Exception as e:  # noqa: BLE001 -- truncated, overwritten, not a torch file: all mean rebuild it
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"note: the image cache {path} is unreadable ({reason}); rebuilding it", flush=True)
        return None
    return Decoded(images, labels, bad.tolist(), path)


def save(decoded, path, key):
    """Write the cache file: a temporary file beside it, flushed to disk, then renamed over it. Returns whether
    it was written (a full disk or a vanished folder leaves the images in memory, with a note)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save({"format": FORMAT, "key": key, "images": decoded.images, "labels": decoded.labels,
                    "bad": torch.tensor(decoded.bad, dtype=torch.int64)}, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:      # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"note: cannot save the image cache {path} ({reason}); keeping the images in memory only",
              flush=True)
        return False
    return True


# ----------------------------------------------------------------------------------------------------------
# Decoding.

def decode_all(root, samples, size, shape, loader, processes=None, report=True):
    """Decode every sample into a Decoded (in memory): chunks of CHUNK images in `processes` processes (forked
    on Linux; in this process for one process or a small split), progress on the terminal when report.
    Raises MixedSizes when an image decodes to another size than `shape` (height, width)."""
    n = len(samples)
    processes = max(1, min(processes or _cpus(), (n + CHUNK - 1) // CHUNK))
    paths = [path for path, _ in samples]
    tasks = [(paths[i:i + CHUNK], size, shape, loader) for i in range(0, n, CHUNK)]
    images = torch.empty((n, 3, *shape), dtype=torch.uint8)
    bad = []
    t0 = time.perf_counter()
    if report:
        print(f"images of {root}: decoding {n:,} into memory ({_gib(images.numel())} as uint8 {tuple(shape)}"
              f"{f', resized to {size} px' if size else ''}) with {processes} process"
              f"{'es' * (processes > 1)}", flush=True)
    bar = _bar(n, report)
    with _pool(processes) as pool:
        for k, (array, bad_positions, mismatch) in enumerate(pool.imap(_decode_chunk, tasks)):
            if mismatch is not None:
                j, found = mismatch
                raise MixedSizes(f"the images of {root} come in several sizes ({shape[1]}x{shape[0]}, and "
                                 f"{found[1]}x{found[0]} for {paths[k * CHUNK + j]}), which this recipe "
                                 f"crops from as they are")
            start = k * CHUNK
            images[start:start + len(array)] = torch.from_numpy(array).permute(0, 3, 1, 2)
            bad += [start + j for j in bad_positions]
            if bar is not None:
                bar.update(len(array))
    if bar is not None:
        bar.close()
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    if report:
        print(f"images of {root}: decoded {n:,} in {time.perf_counter() - t0:.1f} s"
              f"{f', {len(bad)} unreadable' if bad else ''}", flush=True)
    return Decoded(images, labels, bad)


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _bar(total, report):
    if not (report and sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="decoding images", unit="img", dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def _pool(processes):
    """Something with imap: a process pool (forked where the platform allows, as the loaders' workers are:
    nothing here touches CUDA), or this process for one."""
    if processes <= 1:
        yield types.SimpleNamespace(imap=map)
        return
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else multiprocessing
    with context.Pool(processes, initializer=_ignore_interrupt) as pool:
        yield pool


def _ignore_interrupt():
    """Pool workers leave Ctrl-C to the main process, which stops the pool (terminate: SIGTERM, not ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_chunk(task):
    """One pool task: (paths, size, (height, width), loader) -> (uint8 array (n, height, width, 3), positions
    of the unreadable files in the chunk, None or (position, (height, width)) of the first image of another
    size)."""
    paths, size, shape, loader = task
    out = np.zeros((len(paths), *shape, 3), dtype=np.uint8)
    resize = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]) \
        if size else None
    bad = []
    for j, path in enumerate(paths):
        try:
            img = loader(path)
        except UserError:
            bad.append(j)
            continue
        pixels = np.asarray(resize(img) if resize else img)
        if pixels.shape[:2] != tuple(shape):
            return out, bad, (j, pixels.shape[:2])
        out[j] = pixels
    return out, bad, None
