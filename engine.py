"""The training and evaluation machinery that train.py, test.py and bench/ share: loaders, the resumable sampler,
training views on the device, the BatchNorm refresh, classifier accuracy and kNN accuracy.

Training items are (views, y, index): views is a tuple of augmented images (per-image augmentation in the
loader), one uint8 image that a batched augmentation turns into views on the device, or a tuple of uint8 crops
(image folders' crop path) that it colours there; y is -1 for unlabelled
images; index is the item's position in the training split. Test items are (x, y).
"""
import itertools
import multiprocessing
import os
import sys

import torch

import distributed
import knn
import mixed_precision as mp
import utils

BN_REFRESH_BATCHES = 50


MAX_WORKERS = 16          # default loader workers per training process, at most
BATCHES_IN_FLIGHT = 8     # a loader's prefetched batches, at least, over all its workers


def make_loader(dataset, batch_size, num_workers, device, shuffle=False, drop_last=False, sampler=None,
                persistent=False):
    """A DataLoader. Training augmentation does not depend on its workers' seeds: SeededItems re-seeds per image.
    Workers ignore Ctrl-C/SIGTERM: the training process handles them at the next update boundary. Items that are
    None (unreadable test images under --skip_bad_images) are left out of their batch; see collate_present.
    Batches are pinned on CUDA (so copies to the device overlap the step); each worker prefetches at least two,
    more where there are few workers (BATCHES_IN_FLIGHT in all), to ride out slow images.

    Workers are forked where the platform allows (worker_context), so they share the dataset's memory with the
    training process instead of each unpickling a copy. persistent: the workers live as long as the loader,
    not one epoch (the training loader: its sampler runs in this process, its items are re-seeded per image, so
    a worker carries nothing from one epoch to the next)."""
    extra = dict(prefetch_factor=max(2, -(-BATCHES_IN_FLIGHT // num_workers)), persistent_workers=persistent) \
        if num_workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                       num_workers=num_workers, drop_last=drop_last, collate_fn=collate_present,
                                       pin_memory=device.type == "cuda",
                                       worker_init_fn=utils.ignore_stop_signals if num_workers else None,
                                       multiprocessing_context=worker_context(num_workers), **extra)


def default_num_workers(processes_on_machine):
    """Loader workers per training process when --num_workers is not given: the cores this process may run on
    (its CPU affinity), shared by the training processes on this machine, less one for the training process
    itself; at least 1, at most MAX_WORKERS (beyond that a worker's start-up and memory cost more than it
    adds)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores // max(1, processes_on_machine) - 1))


def worker_context(num_workers):
    """fork on Linux, else the platform's default (None).

    A rank that distributed.spawn started (several GPUs) has spawn as its default, and a spawned worker re-imports
    train.py and unpickles the whole dataset (2.9 GB for per-image STL-10) every epoch. Forked workers share
    those pages copy-on-write and start at once. Fork after CUDA is initialised is safe for them because they
    never use CUDA: items, SeededItems' re-seeding (CPU generators only), collate_present and worker_init_fn
    all stay on the CPU; pinning happens in a thread of the training process, batched augmentation runs there
    too. (macOS has fork but it is unsafe with its system frameworks.)"""
    if num_workers and sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return None


def collate_present(items):
    """default_collate of the items that are not None; None when every item of the batch is (scoring loops skip
    such a batch). Training splits never give None: they substitute a readable image instead."""
    present = [item for item in items if item is not None]
    return torch.utils.data.default_collate(present) if present else None


class ResumableSampler(torch.utils.data.Sampler):
    """This rank's training items of an epoch: a seeded permutation of the split, dealt round-robin to the ranks
    (DistributedSampler's order, drop_last), which can skip the images an interrupted epoch already trained on.

    Round-robin dealing makes the images trained by the first b updates the permutation's first
    b * batch_size * world_size entries, whatever the batch size and world size. Resuming skips `skip_samples`
    of them and deals the rest, so a run resumed with another --batch_size or world size still trains every
    image of the epoch once.

    With seed_items, each item comes as (index, seed): SeededItems then re-seeds the random generators before
    augmenting that image, so its views depend on the run's seed, the epoch and the image alone, not on which
    loader worker made them or whether the run was resumed in between.
    """

    def __init__(self, dataset, dist, seed, batch_size, seed_items=False):
        self.n, self.rank, self.world_size = len(dataset), dist.rank, dist.world_size
        self.seed, self.batch_size, self.seed_items = seed, batch_size, seed_items
        self.epoch, self.skip_samples = 0, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _indices(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        rest = order[self.skip_samples:]
        per_rank = len(rest) // self.world_size
        return rest[self.rank:per_rank * self.world_size:self.world_size].tolist()

    def __iter__(self):
        indices = self._indices()
        if not self.seed_items:
            return iter(indices)
        return iter([(i, utils.stream_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self):
        return max(self.n - self.skip_samples, 0) // self.world_size

    def batches(self):
        """Full batches this rank trains in the (rest of the) epoch."""
        return len(self) // self.batch_size


class SeededItems(torch.utils.data.Dataset):
    """Items keyed (index, seed) (ResumableSampler with seed_items): the random generators are re-seeded before
    the item is made, so per-image augmentation is reproducible item by item."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        utils.reseed(seed)
        return self.dataset[index]


def shard(dataset, dist):
    """This rank's share of a test set: every world_size-th item, no padding, so each item is scored once."""
    if not dist.active:
        return dataset
    return torch.utils.data.Subset(dataset, range(dist.rank, len(dataset), dist.world_size))


def layout(memory_format):
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


def training_views(batch, augment, device, n_views, memory_format="contiguous"):
    """(views, y, index) of a training batch on the device: the loader's views, or (batched augmentation) the
    views made here from its uint8 images, or (the crop path) from its uint8 crops, a list of (B, 3, s, s), one
    per view. views: a tuple of n_views tensors (B, 3, S, S)."""
    first, y, index = batch
    if augment is None:
        views = tuple(first)[:n_views]
    elif isinstance(first, torch.Tensor):
        views = augment(first.to(device, non_blocking=True), n_views=n_views)
    else:
        views = augment([c.to(device, non_blocking=True) for c in first[:n_views]], n_views=n_views)
    views = tuple(v.to(device, non_blocking=True, memory_format=layout(memory_format)) for v in views)
    return views, y.to(device, non_blocking=True), index


def first_view(augment, device, memory_format="contiguous"):
    """Batch -> view 1 of its images, for the BatchNorm refresh."""
    return lambda batch: training_views(batch, augment, device, 1, memory_format)[0][0]


@torch.no_grad()
def refresh_bn(model, loader, dist, amp, eval_encoder=False, n_batches=BN_REFRESH_BATCHES, images=None):
    """Re-estimate BatchNorm running statistics as the original did before testing: up to n_batches batches
    through the evaluation path (features and classifiers) in train mode, without gradients. images(batch)
    gives the images to use (default: the first entry of each batch).

    Every rank runs the same number of batches, the fewest any rank's loader has (at most n_batches), agreed in
    one all-reduce before the loop: under SyncBatchNorm each forward is a collective, and the test shards (and
    so their loaders) differ by an image. A batch train-mode BatchNorm cannot take alone (None: every image
    unreadable; or a single image) is skipped where statistics are per process; under SyncBatchNorm the rank
    takes part with what it has (no rows for None), as the other ranks' images make the statistics."""
    set_train_mode(model, eval_encoder)
    synced = dist.active and syncs_batchnorm(model)
    for batch in itertools.islice(loader, distributed.fewest(min(n_batches, len(loader)), dist)):
        x = refresh_images(batch, images, dist.device, model.hyperparams["encoder_size"])
        if x.shape[0] < 2 and not synced:
            continue
        with mp.autocast(dist.device, amp):
            model.classify(x)


def refresh_images(batch, images, device, size):
    """The images of a refresh batch on the device: images(batch), the batch's first entry, or (batch None)
    no images, (0, 3, size, size)."""
    if batch is None:
        return torch.empty(0, 3, size, size, device=device)
    return images(batch) if images is not None else batch[0].to(device, non_blocking=True)


def syncs_batchnorm(model):
    """Whether `model` has SyncBatchNorm layers (train.py's --sync_bn), whose train-mode forward is a
    collective."""
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def set_train_mode(model, eval_encoder=False):
    """Train mode; with eval_encoder (a frozen encoder's BatchNorm kept as it is) only the classifiers train."""
    model.train(not eval_encoder)
    model.evaluator.train()


SCORE_NAMES = {"mlp": "mlp", "lin": "linear"}     # an evaluator head -> the name its test scores carry


@torch.no_grad()
def evaluate(model, dataset, dist, amp, batch_size, num_workers):
    """Top-1 and top-5 accuracy (percent) of every evaluation classifier (model.evaluator.heads) over every item
    of `dataset` (items (x, y)), in eval mode. In a multi-process job pass each rank its shard(); the counts are
    summed over ranks, the loop's only collective (eval-mode forwards, SyncBatchNorm's too, issue none, so shards
    of different lengths are fine).

    Returns {"n_images", "top1_<name>", "top5_<name>" for each head's name: "linear", and "mlp" for AMDIM's
    pair}."""
    model.eval()
    heads = model.evaluator.heads
    loader = make_loader(dataset, batch_size, num_workers, dist.device)
    correct = torch.zeros(2 * len(heads) + 1, dtype=torch.float64, device=dist.device)
    for x, y in filter(None, loader):      # None: a batch of unreadable images only
        y = y.to(dist.device)
        with mp.autocast(dist.device, amp):
            logits = model.classify(x.to(dist.device, non_blocking=True))
        counts = [n for scores in logits for n in top_k_correct(scores, y)]
        correct += torch.stack(counts + [torch.tensor(y.shape[0], device=y.device)]).double()
    *counts, total = distributed.all_reduce_sum(correct.tolist(), dist.device)
    total = int(total)
    out = {"n_images": total}
    for i, head in enumerate(heads):
        name = SCORE_NAMES[head]
        out[f"top1_{name}"] = 100.0 * counts[2 * i] / max(total, 1)
        out[f"top5_{name}"] = 100.0 * counts[2 * i + 1] / max(total, 1)
    return out


def top_k_correct(scores, labels, ks=(1, 5)):
    """How many rows of scores (B, C) have their label (B,) among their k highest, for each k (k above C: all
    classes count), as tensors (no sync)."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices        # (B, k) best first
    hits = ranked == labels[:, None]
    return [hits[:, :k].sum() for k in ks]


@torch.no_grad()
def extract_features(model, dataset, device, amp, batch_size, num_workers):
    """Frozen features of every item of `dataset` (items (x, y)), in eval mode: (features (N, D) float32 on the
    device, labels (N,) int64); N may be 0 (a rank's shard of a set smaller than the job, or unreadable
    images only). No collectives."""
    model.eval()
    feats = [torch.empty(0, model.n_features, device=device)]
    labels = [torch.empty(0, dtype=torch.int64, device=device)]
    for x, y in filter(None, make_loader(dataset, batch_size, num_workers, device)):
        with mp.autocast(device, amp):
            feats.append(model.features(x.to(device, non_blocking=True)).float())
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(model, memory_set, query_set, dist, amp, batch_size, num_workers, k=200, temperature=0.07):
    """Weighted kNN top-1 (percent, knn.py) of the test split (queries) against the training split (memory),
    both through the test-time transform. Each rank extracts its shard of both; the memory is gathered on every
    rank and each rank scores its own queries. Collectives: gather_uneven's two all-gathers for each of memory
    and labels, then one all-reduce, on every rank whatever its shards' lengths."""
    memory, memory_labels = extract_features(model, shard(memory_set, dist), dist.device, amp, batch_size,
                                             num_workers)
    queries, query_labels = extract_features(model, shard(query_set, dist), dist.device, amp, batch_size,
                                             num_workers)
    if dist.active:
        memory, memory_labels = gather_uneven(memory, dist), gather_uneven(memory_labels, dist)
    n_classes = model.hyperparams["n_classes"]
    pred = knn.knn_predict(memory, memory_labels, queries, n_classes, k=k, temperature=temperature)
    correct, total = distributed.all_reduce_sum([(pred == query_labels).sum().item(), query_labels.shape[0]],
                                                dist.device)
    return 100.0 * correct / max(total, 1)


def gather_uneven(tensor, dist):
    """Concatenate every rank's (N_r, ...) tensor in rank order, where N_r differ (0 included): one all-gather
    of the lengths, one of the rows padded to the longest."""
    sizes = dist.all_gather(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
    longest = max(sizes)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:tensor.shape[0]] = tensor
    everything = dist.all_gather(padded)
    return torch.cat([everything[r * longest:r * longest + n] for r, n in enumerate(sizes)])
