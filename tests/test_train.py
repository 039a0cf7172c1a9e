"""train.py and test.py end to end on the embedded DIGITS data with a tiny model, in-process and as CLIs."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import engine
import recipes
import train
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "DIGITS", "--ndf", "8", "--n_rkhs", "32", "--n_depth", "1", "--batch_size", "100",
        "--warmup_updates", "5", "--num_workers", "0", "--device", "cpu", "--log_every", "1000"]


def run_train(tmp_path, *extra):
    return train.main(TINY + ["--output_dir", str(tmp_path)] + list(extra))


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def ss_run(tmp_path_factory):
    """One self-supervised epoch on DIGITS, shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    acc = run_train(out, "--epochs", "1", "--run_name", "ss")
    return out, os.path.join(out, "ss", "amdim_cpt.pth"), acc


def test_self_supervised_epoch_writes_checkpoint_logs_and_scores_every_test_image(ss_run):
    out, cpt, acc = ss_run
    ckpt = load(cpt)
    assert ckpt["phase"] == "self_supervised"
    assert ckpt["cursor"] == {"info_epoch": 1, "info_step": 15, "classifier_epoch": 0, "classifier_step": 0}
    assert ckpt["hyperparams"] == {"method": "amdim", "arch": "amdim", "ndf": 8, "n_classes": 10, "n_rkhs": 32,
                                   "tclip": 20.0, "n_depth": 1, "encoder_size": 32, "use_bn": False}
    assert acc["n_images"] == 297
    records = [json.loads(l) for l in open(os.path.join(out, "ss", "metrics.jsonl"))]
    assert [r["event"] for r in records] == ["start", "epoch"] and records[1]["epoch"] == 1
    for k in ("1t5", "1t7", "5t5", "lgt_reg", "class_mlp", "class_lin", "top1_linear", "top1_mlp"):
        assert k in records[1]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "ss")))


def test_classifiers_phase_freezes_encoder_and_trains_fresh_classifiers(ss_run, tmp_path):
    _, cpt, _ = ss_run
    run_train(tmp_path, "--classifiers", "--checkpoint_path", cpt, "--epochs", "1", "--run_name", "cls")
    before, after = load(cpt), load(os.path.join(tmp_path, "cls", "amdim_cpt.pth"))
    assert after["phase"] == "classifiers"
    assert after["cursor"] == {"info_epoch": 1, "info_step": 15, "classifier_epoch": 1, "classifier_step": 15}
    enc_params = [k for k in before["model"] if k.startswith("encoder.") and
                  not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert enc_params and all(torch.equal(before["model"][k], after["model"][k]) for k in enc_params)
    # BatchNorm inside the frozen encoder ran in train mode, as the original: its statistics moved.
    assert not torch.equal(before["model"]["encoder.layer_list.8.running_mean"],
                           after["model"]["encoder.layer_list.8.running_mean"])
    lin = "evaluator.block_glb_lin.block_forward.2.weight"
    assert not torch.equal(before["model"][lin], after["model"][lin])


def test_eval_encoder_keeps_encoder_statistics(ss_run, tmp_path):
    _, cpt, _ = ss_run
    run_train(tmp_path, "--classifiers", "--eval_encoder", "--checkpoint_path", cpt, "--epochs", "1",
              "--run_name", "cls")
    before, after = load(cpt), load(os.path.join(tmp_path, "cls", "amdim_cpt.pth"))
    for k in before["model"]:
        if k.startswith("encoder."):
            assert torch.equal(before["model"][k], after["model"][k]), k


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path, capsys):
    run_train(tmp_path, "--epochs", "2", "--run_name", "straight")
    capsys.readouterr()
    assert run_train(tmp_path, "--epochs", "1", "--run_name", "straight") is None       # asked for fewer epochs
    assert "already finished 2 epochs (--epochs 1)" in capsys.readouterr().out
    run_train(tmp_path, "--epochs", "1", "--run_name", "split")
    run_train(tmp_path, "--epochs", "2", "--run_name", "split")       # same command, longer: resumes
    a = load(os.path.join(tmp_path, "straight", "amdim_cpt.pth"))
    b = load(os.path.join(tmp_path, "split", "amdim_cpt.pth"))
    assert a["cursor"] == b["cursor"] == {"info_epoch": 2, "info_step": 30, "classifier_epoch": 0,
                                          "classifier_step": 0}
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_classifier_run_resumes_with_its_trained_classifiers(ss_run, tmp_path):
    _, cpt, _ = ss_run
    args = ["--classifiers", "--checkpoint_path", cpt, "--run_name", "cls", "--eval_encoder"]
    run_train(tmp_path, *args, "--epochs", "1")
    first = load(os.path.join(tmp_path, "cls", "amdim_cpt.pth"))
    run_train(tmp_path, *args, "--epochs", "2", "--learning_rate", "0")   # lr 0: classifiers must stay put
    second = load(os.path.join(tmp_path, "cls", "amdim_cpt.pth"))
    assert second["cursor"]["classifier_epoch"] == 2 and second["cursor"]["info_epoch"] == 1
    lin = "evaluator.block_glb_lin.block_forward.2.weight"
    assert torch.equal(first["model"][lin], second["model"][lin])


def _lr(args, epoch, step, epochs, milestones, method="amdim"):
    return recipes.base_lr(args, method) * recipes.lr_factor(args, method, epoch, step, epochs, milestones)


def test_learning_rate_warmup_and_milestones():
    args = train.parse_args(["--dataset", "DIGITS", "--learning_rate", "1.0", "--warmup_updates", "4"])
    epochs, milestones = recipes.schedule(args, "amdim")
    assert (epochs, milestones) == (300, (250, 280))
    lrs = [_lr(args, 0, k, epochs, milestones) for k in range(6)]
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert _lr(args, 250, 10 ** 6, epochs, milestones) == pytest.approx(0.2)
    assert _lr(args, 280, 10 ** 6, epochs, milestones) == pytest.approx(0.04)
    args = train.parse_args(["--dataset", "IN128", "--epochs", "10", "--classifiers"])
    epochs, milestones = recipes.schedule(args, "amdim")
    assert (epochs, milestones) == (10, (5, 8))          # 30 [15, 25] scaled to 10 epochs
    assert _lr(args, 0, 0, epochs, milestones) == 2e-4   # no warm-up


def test_moco_schedule_follows_its_seed():
    """SGD at 0.03 per 128 images, x0.1 at epochs 120 and 160 of 200 (scaled), or a cosine with --cos."""
    args = train.parse_args(["--dataset", "DIGITS", "--method", "moco", "--batch_size", "256", "--epochs", "20"])
    epochs, milestones = recipes.schedule(args, "moco")
    assert (epochs, milestones) == (20, (12, 16))
    assert recipes.base_lr(args, "moco") == pytest.approx(0.06)
    assert [_lr(args, e, 10 ** 6, epochs, milestones, "moco") for e in (0, 11, 12, 16)] == \
        pytest.approx([0.06, 0.06, 0.006, 0.0006])
    assert _lr(args, 0, 0, epochs, milestones, "moco") == pytest.approx(0.06)        # no warm-up by default
    cos = train.parse_args(["--dataset", "DIGITS", "--method", "moco", "--cos", "--epochs", "20"])
    for e in (0, 5, 10, 19):
        want = 0.03 * 200 / 128 * 0.5 * (1 + math.cos(math.pi * e / 20))
        assert _lr(cos, e, 10 ** 6, 20, milestones, "moco") == pytest.approx(want)


def test_bn_refresh_uses_at_most_50_batches():
    m = checkpoint.build_model(dict(ndf=8, n_classes=10, n_rkhs=32, tclip=20.0, n_depth=1, encoder_size=32,
                                    use_bn=False))
    seen = []

    class Loader:
        def __iter__(self):
            for i in range(80):
                seen.append(i)
                yield torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)

    engine.refresh_bn(m, Loader(), torch.device("cpu"), amp=False)
    assert len(seen) == 51                     # the 51st is fetched and not used
    assert m.encoder.layer_list[8].num_batches_tracked.item() == 50


def test_amp_bfloat16_on_cpu_trains_with_finite_falling_loss(tmp_path):
    run_train(tmp_path, "--epochs", "3", "--amp", "--run_name", "amp", "--learning_rate", "1e-3")
    records = [json.loads(l) for l in open(os.path.join(tmp_path, "amp", "metrics.jsonl"))]
    losses = [r["loss"] for r in records if r["event"] == "epoch"]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_cli_test_py_reports_json(ss_run):
    _, cpt, acc = ss_run
    r = cli("test.py", cpt, "--dataset", "DIGITS", "--json", "--num_workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) == {"checkpoint", "dataset", "n_images", "top1_linear", "top1_mlp"}
    assert result["n_images"] == 297 and 0 <= result["top1_linear"] <= 100


def test_cli_errors_are_one_line_without_traceback(ss_run, tmp_path):
    _, cpt, _ = ss_run
    cases = [
        (["train.py", *TINY, "--checkpoint_path", cpt, "--ndf", "16", "--output_dir", str(tmp_path)], "--ndf 16"),
        (["train.py", "--dataset", "DIGITS", "--ndf", "64", "--n_rkhs", "128"], "n_rkhs"),
        (["train.py", "--dataset", "MNIST"], "invalid choice"),
        (["test.py", cpt, "--dataset", "FOLDER", "--image_size", "32", "--input_dir", str(tmp_path / "nope")],
         "input_dir"),
        (["train.py", *TINY, "--classifiers", "--output_dir", os.path.dirname(os.path.dirname(cpt)),
          "--run_name", "ss"], "--run_name"),
    ]
    for argv, needle in cases:
        r = cli(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert "error" in last and needle in last, (argv, r.stderr)


def test_resumable_sampler_deals_like_distributed_sampler_and_skips_the_trained_images():
    data = list(range(50))
    for world in (1, 2, 3):
        for rank in range(world):
            ours = engine.ResumableSampler(data, utils.Dist(rank=rank, world_size=world), seed=3, batch_size=4)
            ref = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, seed=3, drop_last=True)
            ours.set_epoch(2)
            ref.set_epoch(2)
            assert list(ours) == list(ref) and len(ours) == len(ref)
    # Two ranks, batches of 4, 3 updates done: the first 24 images of the epoch's permutation are trained.
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3 + 2)).tolist()
    trained = set(order[:24])
    full = []
    for rank in range(2):
        sampler = engine.ResumableSampler(data, utils.Dist(rank=rank, world_size=2), 3, 4)
        sampler.set_epoch(2)
        full.append(list(sampler))
    assert trained == {i for r in range(2) for i in full[r][:12]}
    for world, batch in ((2, 4), (1, 8), (4, 2)):        # resumed with the same or another batch/world size
        parts = []
        for rank in range(world):
            part = engine.ResumableSampler(data, utils.Dist(rank=rank, world_size=world), 3, batch)
            part.set_epoch(2)
            part.skip_samples = 24
            parts.append(list(part))
            assert len(part) == len(parts[-1])
        rest = [i for p in parts for i in p]
        assert not trained & set(rest) and len(rest) == len(set(rest)) >= 26 - world + 1
        if world == 2:
            assert parts == [f[12:] for f in full]


def test_seeded_items_make_the_same_views_whatever_came_before():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(3) + i

    sampler = engine.ResumableSampler(list(range(10)), utils.Dist(), seed=5, batch_size=2, seed_items=True)
    keys = list(sampler)
    items = engine.SeededItems(Noisy())
    first = [items[k] for k in keys]
    torch.rand(7)                                           # another stream position, as after a resume
    assert all(torch.equal(items[k], v) for k, v in zip(reversed(keys), reversed(first)))
    sampler.set_epoch(1)
    assert not torch.equal(items[next(k for k in sampler if k[0] == keys[0][0])], first[0])   # new epoch


def test_batch_size_must_split_over_processes():
    args = train.parse_args(TINY + ["--batch_size", "101"])
    with pytest.raises(utils.UserError, match="multiple of 2"):
        train.worker(utils.Dist(rank=0, world_size=2), args)
    args = train.parse_args(TINY + ["--batch_size", "6"])
    with pytest.raises(utils.UserError, match="at least 2 images per process"):
        train.worker(utils.Dist(rank=0, world_size=4), args)
