"""Launching a job on several processes or nodes, checked on CPU: the first download, a loader error in a spawned
rank, loader workers' memory, rank 0's checkpoint on ranks without a shared filesystem, device choice, the
collective timeout and the messages of a job that ends. Real gloo processes where the mechanism is about
processes; test hooks are module functions here, which spawned ranks import by name."""
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from PIL import Image

import distributed
import engine
import runlog
import utils
from helpers import CHILD_PATH, ON_CPU, TINY_ENCODER, run_ranks

# Spawned ranks import this module by name to find their hooks: train and checkpoint (torchvision, ~half of the
# start-up time) are imported where needed, so that the ranks of the tests that do not train skip them.


@pytest.fixture
def train():
    import train
    return train


@pytest.fixture
def checkpoint():
    import checkpoint
    return checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*TINY_ENCODER, *ON_CPU, "--epochs", "1", "--log_every", "1000", "--view_grid", "0", "--warmup_updates", "5"]


DIST_TIMEOUT_S = 60


def spawn_train(worker, flags, timeout=60, dist_timeout=DIST_TIMEOUT_S):
    """Run train.py's worker through distributed.spawn with 2 gloo ranks, each calling test_launch.<worker>(dist,
    flags) (a test hook that ends in train_worker), in a fresh session: (CompletedProcess, seconds). On a timeout
    every process of the job is killed (a hung rank ignores the launcher's SIGINT) and the test fails."""
    code = (CHILD_PATH + "import os, distributed, test_launch as t\n"
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(distributed.free_port()))\n"
            f"distributed.spawn(t.{worker}, 2, 'cpu', {flags!r}, timeout_s={dist_timeout})\n")
    start = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"the job did not end within {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), time.monotonic() - start


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------------------------------------
# 1. The first use of a torchvision dataset: one download per node, the other ranks wait for it.

DOWNLOAD_SECONDS = 2.0


class FakeCIFAR10:
    """torchvision.datasets.CIFAR10's interface on 200 + 40 random images; its download sleeps, logs itself and
    then writes the files, as a slow real one would."""

    def __init__(self, root, train=True, download=False, **_):
        path = os.path.join(root, "fake_cifar", "train.npz" if train else "test.npz")
        if not os.path.isfile(path):
            if not download:
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            self._download(root)
        with np.load(path) as f:
            self.data, self.targets = f["data"], f["targets"].tolist()

    @staticmethod
    def _download(root):
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "downloads.log"), "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(DOWNLOAD_SECONDS)
        os.makedirs(os.path.join(root, "fake_cifar"), exist_ok=True)
        rng = np.random.RandomState(0)
        for name, n in (("train", 200), ("test", 40)):
            np.savez(os.path.join(root, "fake_cifar", f"{name}.npz"),
                     data=rng.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8), targets=rng.randint(0, 10, n))

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return Image.fromarray(self.data[i]), self.targets[i]


def train_worker(dist, flags, change=None):
    """train.py's worker on the parsed flags, after change(args) where given."""
    import train
    args = train.parse_args(flags)
    if change is not None:
        change(args)
    return train.locked_worker(dist, args)


def _worker_with_fake_cifar(dist, flags):
    import torchvision
    torchvision.datasets.CIFAR10 = FakeCIFAR10
    return train_worker(dist, flags)


@pytest.mark.slow
def test_first_use_downloads_once_while_the_other_rank_waits(tmp_path):
    data = tmp_path / "data"
    r, _ = spawn_train("_worker_with_fake_cifar", ["--dataset", "C10", "--input_dir", str(data), "--batch_size",
                                                   "100", "--output_dir", str(tmp_path), *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    assert len((data / "downloads.log").read_text().split()) == 1
    assert "waiting for another process's download of CIFAR-10" in r.stderr
    assert torch.load(tmp_path / "default_run" / "amdim_cpt.pth", weights_only=True)["cursor"]["info_step"] == 2


def _rank_waits_for_a_late_peer(dist):
    if dist.rank == 1:
        time.sleep(5)                     # a download longer than the collectives' timeout
    distributed.wait_for_every_rank(dist, "late")
    tdist.all_reduce(torch.ones(1))       # the group still works
    try:
        distributed.wait_for_every_rank(dist, "second", error="no data here" if dist.rank == 1 else None)
    except utils.UserError as e:
        return str(e)


@pytest.mark.slow
def test_the_data_barrier_outlasts_the_collective_timeout_and_shares_errors(tmp_path):
    """A collective (here with a 4 s timeout) would give up on a rank that downloads for 5 s: the barrier that
    load_data uses waits through the job's store instead."""
    errors = run_ranks(_rank_waits_for_a_late_peer, 2, tmp_path, timeout_s=4)
    for rank in (0, 1):
        assert errors[rank] == "rank 1: no data here"


# ----------------------------------------------------------------------------------------------------------
# 2. A loader worker's error in a spawned rank ends the job; the other rank says why it stops.

def _folder_with_one_corrupt_training_image(root):
    """11 readable training images and a corrupt one (12: both ranks train 6, nothing dropped); 4 test images."""
    rng = np.random.RandomState(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n - (split == "train" and c == "a")):
                Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)


@pytest.mark.slow
def test_a_loader_worker_error_in_a_spawned_rank_ends_the_job_without_waiting_for_a_timeout(tmp_path):
    """The job ends within the subprocess timeout, which is shorter than the collectives' timeout: so the other
    rank learnt of the failure, rather than timing out in a collective (no bound on seconds: hosts differ)."""
    _folder_with_one_corrupt_training_image(tmp_path / "data")
    flags = ["--dataset", "FOLDER", "--image_size", "32", "--input_dir", str(tmp_path / "data"), "--batch_size",
             "12", "--output_dir", str(tmp_path), *TINY, "--num_workers", "1", "--cache_images", "off"]
    r, _ = spawn_train("_plain_worker", flags, timeout=240, dist_timeout=900)
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = error_lines(r.stderr)
    assert "cannot read image" in line and "broken.png" in line
    assert "failed (its error is above)" in r.stderr           # the other rank names the rank that failed
    assert "saving a checkpoint" not in r.stderr and "Traceback" not in r.stderr


def _plain_worker(dist, flags):
    return train_worker(dist, flags)


# ----------------------------------------------------------------------------------------------------------
# 3. Loader workers of a spawned rank share the dataset's memory.

DATASET_MB = 200


class BigInMemory(torch.utils.data.Dataset):
    """200 MB of in-memory images; each item reports the private and proportional memory of the process that
    made it (a loader worker), from /proc."""

    def __init__(self):
        self.images = np.full((DATASET_MB, 1024, 1024), 7, dtype=np.uint8)     # every page written

    def __len__(self):
        return 16

    def __getitem__(self, i):
        image = self.images[i * 10].astype(np.float32)
        fields = {}
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    fields[key] = int(value.split()[0])
        private = fields["Private_Clean"] + fields["Private_Dirty"]
        return torch.tensor([os.getpid(), private / 1024, fields["Pss"] / 1024, float(image[0, 0])])


def _rank_measuring_its_workers(dist, out):
    dataset = BigInMemory()
    rows = torch.cat([b for b in engine.make_loader(dataset, 1, 2, dist.device)])
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
    per_worker = {int(pid): {"private_mb": 0.0, "pss_mb": 0.0} for pid in rows[:, 0].tolist()}
    for pid, private, pss, _ in rows.tolist():
        worker = per_worker[int(pid)]
        worker["private_mb"], worker["pss_mb"] = max(worker["private_mb"], private), max(worker["pss_mb"], pss)
    with open(out, "w") as f:
        json.dump({"rank_rss_mb": rss, "workers": per_worker}, f)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux's /proc")
def test_loader_workers_of_a_spawned_rank_share_the_dataset_memory(tmp_path):
    out = tmp_path / "memory.json"
    code = (CHILD_PATH + "import os, distributed, test_launch as t\n"
            f"distributed.spawn(t._rank_measuring_its_workers, 1, 'cpu', {str(out)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    memory = json.loads(out.read_text())
    print(f"\nspawned rank: RSS {memory['rank_rss_mb']:.0f} MB with a {DATASET_MB} MB dataset")
    for pid, m in memory["workers"].items():
        print(f"  loader worker {pid}: private {m['private_mb']:.0f} MB, PSS {m['pss_mb']:.0f} MB")
    assert memory["rank_rss_mb"] > DATASET_MB
    assert len(memory["workers"]) == 2
    # A worker holding its own copy of the dataset would have more than DATASET_MB of private memory.
    assert all(m["private_mb"] < DATASET_MB / 4 for m in memory["workers"].values()), memory


# ----------------------------------------------------------------------------------------------------------
# 4. Resuming: rank 0 decides; a rank that cannot see its checkpoint stops the job with a clear message.

def _worker_with_its_own_output_dir(dist, flags):
    """Rank 1 sees another --output_dir, as a node without the filesystem rank 0 writes to would."""
    def other_dir(args):
        args.output_dir += "_rank1"
    return train_worker(dist, flags, other_dir if dist.rank == 1 else None)


@pytest.mark.slow
def test_a_rank_without_rank_0s_checkpoint_stops_the_job_naming_a_shared_output_dir(tmp_path, train, checkpoint):
    flags = ["--dataset", "DIGITS", "--batch_size", "100", "--output_dir", str(tmp_path / "out"), *TINY,
             "--epochs", "2"]
    run, _ = train.setup(distributed.Dist(), train.parse_args(flags))
    run.cursor.update(info_epoch=1, info_step=15)            # rank 0 resumes at epoch 2, rank 1 would start over
    checkpoint.save_run(run)
    runlog.RunDirLock.release_all(failed=False)
    r, _ = spawn_train("_worker_with_its_own_output_dir", flags)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = error_lines(r.stderr)
    assert lines and len(set(lines)) == 1                     # the ranks stop with the same message
    assert f"rank 1 cannot read {tmp_path / 'out_rank1' / 'default_run' / 'amdim_cpt.pth'}" in lines[0]
    assert "rank 0 resumes from (no such file" in lines[0]
    assert "--output_dir on a filesystem every node shares" in lines[0]


def test_every_rank_reads_the_file_rank_0_chose(tmp_path, train, checkpoint, monkeypatch):
    """The decision travels by broadcast: here rank 1 (faked in-process) follows rank 0 to the .prev file, and
    refuses a copy that differs from rank 0's."""
    flags = ["--dataset", "DIGITS", "--batch_size", "100", "--output_dir", str(tmp_path), *TINY]
    args = train.parse_args(flags)
    run, _ = train.setup(distributed.Dist(), args)
    checkpoint.save_run(run)
    run.cursor.update(info_step=3)
    checkpoint.save_run(run)                                   # amdim_cpt.pth at step 3, .prev at step 0
    runlog.RunDirLock.release_all(failed=False)
    cpt = os.path.join(str(tmp_path), "default_run", "amdim_cpt.pth")
    prev = checkpoint.fingerprint(checkpoint.read(cpt + ".prev"), cpt + ".prev")
    decision = {"how": "resume", "path": cpt + ".prev", "fingerprint": prev, "suffix": ".prev"}
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, dist: decision)
    agreed = []
    monkeypatch.setattr(distributed, "agree", lambda error, dist: agreed.append(error))
    ckpt, how, path = checkpoint.find_start(args, cpt, distributed.Dist(rank=1, world_size=2))
    assert (how, path, agreed) == ("resume", cpt + ".prev", [None]) and ckpt["cursor"]["info_step"] == 0
    decision["suffix"] = ""                                    # rank 0 chose a file whose copy here differs
    ckpt, _, _ = checkpoint.find_start(args, cpt, distributed.Dist(rank=1, world_size=2))
    assert ckpt is None and "this rank's copy differs from rank 0's" in agreed[-1]


# ----------------------------------------------------------------------------------------------------------
# 5, 6. The device of a rank, and the collectives' timeout.

@pytest.mark.parametrize("visible, local_rank, expected", [(1, 3, 0), (4, 5, 1), (8, 5, 5)])
def test_a_ranks_gpu_is_its_local_rank_modulo_the_gpus_it_sees(monkeypatch, visible, local_rank, expected):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    dist = distributed.init_distributed(local_rank, 1, local_rank, "cuda")
    assert dist.device == torch.device("cuda", expected) and chosen == [dist.device]


def test_dist_timeout_reaches_the_process_group(monkeypatch, train):
    assert train.parse_args([]).dist_timeout >= 1800
    assert train.parse_args(["--dist_timeout", "7200"]).dist_timeout == 7200
    seen = {}
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, **kw: seen.update(kw))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "init_distributed", lambda *a: seen.update(args=a) or distributed.Dist())
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    distributed.launch(lambda dist: None, "cpu", timeout_s=7200)
    assert seen["args"] == (0, 2, 0, "cpu", 7200)
    monkeypatch.undo()
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, **kw: seen.update(kw))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    distributed.init_distributed(0, 2, 0, "cpu", timeout_s=7200)
    assert seen["timeout"] == datetime.timedelta(seconds=7200)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_dist_timeout_must_be_positive(value, capsys, train):
    with pytest.raises(SystemExit):
        train.parse_args(["--dist_timeout", value])
    assert "argument --dist_timeout: got" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# 7. Messages: the rank whose loss went non-finite, GPUs torch cannot use.

printed = []


def _fake_run(tmp_path, rank, nan_policy="stop"):
    return SimpleNamespace(cursor={"info_step": 16}, step_key="info_step",
                           dist=distributed.Dist(rank=rank, world_size=2),
                           args=SimpleNamespace(nan_policy=nan_policy), cpt_path=str(tmp_path / "none.pth"),
                           optimizer=SimpleNamespace(zero_grad=lambda set_to_none: None), non_finite_skipped=0,
                           log=SimpleNamespace(print=lambda *a: printed.append(" ".join(a))))


def test_a_non_finite_loss_is_reported_with_the_failing_ranks_values(tmp_path, monkeypatch, train):
    finite = {"loss": 1.5, "1t5": 0.75, "class_lin": 2.25, "n_labelled": 3}
    broken = {"loss": float("nan"), "1t5": float("nan"), "class_lin": 2.5, "n_labelled": 3}
    monkeypatch.setattr(distributed, "all_gather_objects", lambda values: [finite, broken])
    with pytest.raises(utils.UserError) as e:
        train.handle_non_finite(_fake_run(tmp_path, rank=0), finite, epoch=1, update=17)   # rank 0's own values are finite
    assert "non-finite loss at update 17 (epoch 2) on rank 1: 1t5=nan, class_lin=2.5; stopped" in str(e.value)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda values: [broken, finite, broken])
    train.handle_non_finite(_fake_run(tmp_path, rank=0, nan_policy="skip"), broken, epoch=1, update=17)
    assert "on ranks 0, 2 (rank 0's values): 1t5=nan" in printed[-1]


def test_gpus_that_torch_cannot_use_are_named_once_at_start_up(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "nvidia_gpus_present", lambda: True)
    assert distributed.pick_device("auto") == torch.device("cpu")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: NVIDIA GPUs are present but torch") and "training on the CPU" in line
    distributed.pick_device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")                      # one line per machine, from its first process
    distributed.pick_device("auto")
    assert capsys.readouterr().err == ""
    with pytest.raises(utils.UserError, match="NVIDIA GPUs are present but torch .* cannot use them"):
        distributed.pick_device("cuda")


def test_nvidia_gpus_are_found_by_device_file_or_nvidia_smi(monkeypatch):
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    assert not distributed.nvidia_gpus_present()
    monkeypatch.setattr(distributed.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    listing = SimpleNamespace(returncode=0, stdout="GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n")
    monkeypatch.setattr(distributed.subprocess, "run", lambda *a, **kw: listing)
    assert distributed.nvidia_gpus_present()
    listing.returncode, listing.stdout = 9, "NVIDIA-SMI has failed because it couldn't communicate with the driver"
    assert not distributed.nvidia_gpus_present()
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/dev/nvidia0")
    assert distributed.nvidia_gpus_present()
