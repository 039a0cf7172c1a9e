"""The training loader's defaults (engine.make_loader, engine.default_num_workers, train.py's --num_workers):
workers from the cores each training process has, persistent workers that follow the resumable sampler epoch by
epoch and re-seed every image, prefetching."""
import os

import pytest
import torch

import distributed
import engine
import train
import utils
from helpers import BASE, TINY_FLAGS


def test_default_workers_share_this_process_cores_among_the_training_processes(monkeypatch):
    for cores, processes, expected in ((16, 1, 15), (16, 4, 3), (16, 16, 1), (2, 1, 1), (1, 1, 1), (128, 1, 16),
                                       (128, 8, 15)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert engine.default_num_workers(processes) == expected, (cores, processes)


def test_train_resolves_num_workers_when_not_given_and_keeps_a_given_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")        # two training processes on this machine
    at = BASE.index("--num_workers")
    base = BASE[:at] + BASE[at + 2:] + TINY_FLAGS["amdim"]
    args = train.parse_args(base + ["--output_dir", str(tmp_path)])
    assert args.num_workers is None
    run, _ = train.setup(distributed.Dist(), args)
    assert args.num_workers == 3                        # 8 cores / 2 processes, less one
    run.log.close()
    assert train.parse_args(base + ["--num_workers", "5"]).num_workers == 5


@pytest.mark.filterwarnings("ignore:This DataLoader will create")       # 16 workers on a 2-core machine
def test_prefetching_keeps_at_least_eight_batches_in_flight_and_two_per_worker():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    cpu = torch.device("cpu")
    for workers, factor in ((1, 8), (3, 3), (4, 2), (16, 2)):
        loader = engine.make_loader(data, 2, workers, cpu)
        assert loader.prefetch_factor == factor and not loader.pin_memory and not loader.persistent_workers
    assert engine.make_loader(data, 2, 0, cpu).prefetch_factor is None


class _Probe(torch.utils.data.Dataset):
    """Items (index, the pid of the process that made it, a draw from torch's global generator)."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return i, os.getpid(), torch.rand(1).item()


def test_persistent_workers_follow_the_sampler_epoch_by_epoch_and_reseed_every_image():
    """One worker process serves every epoch (also after an epoch broken off, as the BatchNorm refresh does);
    each epoch deals the seeded permutation of its epoch, less the samples a resumed epoch skips, and each item's
    draws follow from (seed, epoch, index) alone."""
    seed, batch = 5, 4
    sampler = engine.ResumableSampler(_Probe(), distributed.Dist(), seed, batch, seed_items=True)
    loader = engine.make_loader(engine.SeededItems(_Probe()), batch, 1, torch.device("cpu"), sampler=sampler,
                                drop_last=True, persistent=True)
    pids = set()
    for epoch, skip in ((0, 0), (1, 8), (2, 0)):
        sampler.set_epoch(epoch)
        sampler.skip_samples = skip
        if epoch == 1:                                    # broken off after one batch
            next(iter(loader))
        indices, who, draws = (torch.cat(t).tolist() for t in zip(*loader))
        order = torch.randperm(20, generator=torch.Generator().manual_seed(seed + epoch)).tolist()[skip:]
        assert indices == order[:len(order) // batch * batch], epoch
        expected = []
        for i in indices:
            utils.reseed(utils.stream_seed(seed, epoch, i))
            expected.append(torch.rand(1).item())
        assert draws == expected, epoch
        pids |= set(who)
    assert len(pids) == 1 and os.getpid() not in pids
