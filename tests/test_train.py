"""train.py and test.py end to end on the embedded DIGITS data with a tiny model, in-process and as CLIs."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import augment
import checkpoint
import distributed
import engine
import methods
import phases
import train
import utils
from helpers import DIGITS_TINY as TINY
from helpers import ON_CPU, TINY_ENCODER, load_test_py, run_entry_point, small_digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(tmp_path, *extra):
    return train.main(TINY + ["--output_dir", str(tmp_path)] + list(extra))


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def load(path):
    return torch.load(path, weights_only=True)


def _spy_on_training_steps(mp):
    """Record, at every training step's forward pass, whether its views and the model's convolution weights
    (those with a kernel wider than 1) are channels_last and whether they are contiguous; returns the list."""
    steps = []
    forward = methods.AMDIM.forward

    def spy(self, views, dist=None):
        convs = [w for w in self.parameters() if w.dim() == 4 and w.shape[-1] > 1]
        tensors = {"views": list(views), "weights": convs}
        steps.append({k: {"channels_last": all(t.is_contiguous(memory_format=torch.channels_last) for t in ts),
                          "contiguous": all(t.is_contiguous() for t in ts)} for k, ts in tensors.items()})
        return forward(self, views, dist)

    mp.setattr(methods.AMDIM, "forward", spy)
    return steps


SS_RUN_STEPS = []      # ss_run's training steps, as _spy_on_training_steps records them


@pytest.fixture(scope="module")
def ss_run(tmp_path_factory):
    """One self-supervised epoch on DIGITS, shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        steps = _spy_on_training_steps(mp)
        acc = run_train(out, "--epochs", "1", "--run_name", "ss")
        SS_RUN_STEPS[:] = steps
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


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path, capsys, monkeypatch):
    small_digits(monkeypatch)           # 300 training images: 3 updates an epoch, the warm-up's 5 cross epochs
    run_train(tmp_path, "--epochs", "2", "--run_name", "straight")
    capsys.readouterr()
    assert run_train(tmp_path, "--epochs", "1", "--run_name", "straight") is None       # asked for fewer epochs
    assert "already finished 2 epochs (--epochs 1)" in capsys.readouterr().out
    run_train(tmp_path, "--epochs", "1", "--run_name", "split")
    run_train(tmp_path, "--epochs", "2", "--run_name", "split")       # same command, longer: resumes
    a = load(os.path.join(tmp_path, "straight", "amdim_cpt.pth"))
    b = load(os.path.join(tmp_path, "split", "amdim_cpt.pth"))
    assert a["cursor"] == b["cursor"] == {"info_epoch": 2, "info_step": 6, "classifier_epoch": 0,
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


def _schedule(args, method="amdim"):
    """(epochs, milestones, base LR, schedule) of a run with these flags, as train.setup builds them."""
    phase = phases.PHASES[args.phase]
    hp = {"method": method}
    recipe = phase.recipe(hp)
    epochs, milestones = recipe.epochs_and_milestones(args.dataset, args.epochs, args.lr_decay_epochs)
    return epochs, milestones, recipe.base_lr(args), phase.schedule(hp, args, epochs, milestones, 10)


def test_learning_rate_warmup_and_milestones():
    args = train.parse_args(["--dataset", "DIGITS", "--learning_rate", "1.0", "--warmup_updates", "4"])
    epochs, milestones, lr, schedule = _schedule(args)
    assert (epochs, milestones) == (300, (250, 280))
    lrs = [lr * schedule(0, k) for k in range(6)]
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr * schedule(250, 10 ** 6) == pytest.approx(0.2)
    assert lr * schedule(280, 10 ** 6) == pytest.approx(0.04)
    args = train.parse_args(["--dataset", "IN128", "--epochs", "10", "--classifiers"])
    epochs, milestones, lr, schedule = _schedule(args)
    assert (epochs, milestones) == (10, (5, 8))          # 30 [15, 25] scaled to 10 epochs
    assert lr * schedule(0, 0) == 2e-4                   # no warm-up


def test_moco_schedule_follows_its_seed():
    """SGD at 0.03 per 128 images, x0.1 at epochs 120 and 160 of 200 (scaled), or a cosine with --cos."""
    args = train.parse_args(["--dataset", "DIGITS", "--method", "moco", "--batch_size", "256", "--epochs", "20"])
    epochs, milestones, lr, schedule = _schedule(args, "moco")
    assert (epochs, milestones) == (20, (12, 16))
    assert lr == pytest.approx(0.06)
    assert [lr * schedule(e, 10 ** 6) for e in (0, 11, 12, 16)] == pytest.approx([0.06, 0.06, 0.006, 0.0006])
    assert lr * schedule(0, 0) == pytest.approx(0.06)        # no warm-up by default
    cos = train.parse_args(["--dataset", "DIGITS", "--method", "moco", "--cos", "--epochs", "20"])
    _, _, lr, schedule = _schedule(cos, "moco")
    for e in (0, 5, 10, 19):
        want = 0.03 * 200 / 128 * 0.5 * (1 + math.cos(math.pi * e / 20))
        assert lr * schedule(e, 10 ** 6) == pytest.approx(want)


def test_lr_decay_epochs_replace_the_scaled_milestones_as_the_seed_cmcs_later_command_asks(tmp_path, monkeypatch,
                                                                                            capsys):
    """--lr_decay_epochs: CMC's later command (240 epochs, x0.1 at 120, 160, 200) where the scaled default gives
    150, 180, 210; any step-decay phase takes it (the classifiers' too); bad values are refused in one line; a
    real run decays at the given epochs and records them."""
    cmc = ["--dataset", "C10", "--method", "cmc", "--epochs", "240"]
    assert _schedule(train.parse_args(cmc), "cmc")[1] == (150, 180, 210)
    epochs, milestones, lr, schedule = _schedule(train.parse_args(cmc + ["--lr_decay_epochs", "120,160,200"]), "cmc")
    assert (epochs, milestones) == (240, (120, 160, 200))
    assert [lr * schedule(e, 0) for e in (0, 119, 120, 160, 200, 239)] == pytest.approx(
        [0.03, 0.03, 0.003, 3e-4, 3e-5, 3e-5])
    assert _schedule(train.parse_args(["--dataset", "IN128", "--classifiers", "--epochs", "10", "--lr_decay_epochs",
                                       "3"]))[1] == (3,)
    for bad in ("160,120", "0,5", "120,120", "a", ""):
        with pytest.raises(SystemExit):
            train.parse_args(cmc + ["--lr_decay_epochs", bad])
        assert "expected increasing epochs >= 1" in capsys.readouterr().err
    with pytest.raises(utils.UserError, match="240 is not inside the run's 240 epochs"):
        _schedule(train.parse_args(cmc + ["--lr_decay_epochs", "120,240"]), "cmc")
    with pytest.raises(utils.UserError, match="--lr_decay_epochs and --cos"):
        _schedule(train.parse_args(cmc + ["--lr_decay_epochs", "120", "--cos"]), "cmc")
    swav = train.parse_args(["--dataset", "C10", "--method", "swav", "--lr_decay_epochs", "120"])
    with pytest.raises(utils.UserError, match="--lr_decay_epochs does not apply to --method swav"):
        _schedule(swav, "swav")

    small_digits(monkeypatch)                     # 300 training images: 3 updates an epoch
    train.main(TINY + ["--epochs", "3", "--lr_decay_epochs", "1,2", "--learning_rate", "0.1", "--warmup_updates",
                       "0", "--output_dir", str(tmp_path), "--run_name", "decay"])
    with open(tmp_path / "decay" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[0]["config"]["milestones"] == [1, 2]
    assert [r["lr"] for r in records if r.get("event") == "epoch"] == pytest.approx([0.1, 0.02, 0.004])


def test_updates_trains_the_fewest_whole_epochs_holding_them(tmp_path, monkeypatch, capsys):
    small_digits(monkeypatch)                     # 300 training images: 3 updates an epoch
    train.main(TINY + ["--updates", "7", "--output_dir", str(tmp_path), "--run_name", "budget"])
    with open(tmp_path / "budget" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[0]["config"]["epochs"] == 3 == math.ceil(7 / 3)
    assert [(r["epoch"], r["step"]) for r in records if r.get("event") == "epoch"] == [(1, 3), (2, 6), (3, 9)]
    with pytest.raises(SystemExit):
        train.parse_args(TINY + ["--updates", "7", "--epochs", "2"])
    assert "--updates 7 and --epochs 2 both set the run's length" in capsys.readouterr().err


def test_bn_refresh_uses_at_most_50_batches():
    m = checkpoint.build_model(dict(ndf=8, n_classes=10, n_rkhs=32, tclip=20.0, n_depth=1, encoder_size=32,
                                    use_bn=False))
    seen = []

    class Loader:
        def __len__(self):
            return 80

        def __iter__(self):
            for i in range(80):
                seen.append(i)
                yield torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)

    engine.refresh_bn(m, Loader(), distributed.Dist(), amp=False)
    assert len(seen) == 50
    assert m.encoder.layer_list[8].num_batches_tracked.item() == 50


def test_amp_bfloat16_on_cpu_trains_with_finite_falling_loss(tmp_path, monkeypatch):
    """bfloat16 on the CPU is slow: 200 training images, 4 updates of 50 an epoch, 3 epochs."""
    small_digits(monkeypatch, n_train=200, n_test=50)
    argv = TINY + ["--output_dir", str(tmp_path), "--epochs", "3", "--amp", "--run_name", "amp", "--learning_rate",
                   "1e-3"]
    argv[argv.index("--batch_size") + 1] = "50"
    train.main(argv)
    assert load(os.path.join(tmp_path, "amp", "amdim_cpt.pth"))["cursor"]["info_step"] == 12
    records = [json.loads(l) for l in open(os.path.join(tmp_path, "amp", "metrics.jsonl"))]
    losses = [r["loss"] for r in records if r["event"] == "epoch"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_cli_test_py_reports_json(ss_run):
    _, cpt, acc = ss_run
    r = cli("test.py", cpt, "--dataset", "DIGITS", "--json", "--num_workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) == {"checkpoint", "dataset", "protocol", "n_images", "top1_linear", "top1_mlp", "top5_linear",
                           "top5_mlp", "n_skipped", "phase", "epoch", "update", "mid_epoch"}
    assert result["protocol"] == "amdim" and 0 <= result["top1_linear"] <= result["top5_linear"] <= 100
    assert (result["phase"], result["epoch"], result["update"], result["mid_epoch"], result["n_skipped"]) == \
        ("self_supervised", 1, 15, False, 0)
    assert result["n_images"] == 297 and 0 <= result["top1_linear"] <= 100


@pytest.mark.slow
def test_cli_errors_are_one_line_without_traceback(ss_run, tmp_path, capsys):
    """Each error through the entry point's main as its script runs it (utils.run_main), in this process; test.py's
    also through a real process: exit status 2, the message on stderr's last line, no traceback."""
    _, cpt, _ = ss_run
    test_py = load_test_py()
    cases = [
        (train.main, [*TINY, "--checkpoint_path", cpt, "--ndf", "16", "--output_dir", str(tmp_path)], "--ndf 16"),
        (train.main, ["--dataset", "DIGITS", "--ndf", "64", "--n_rkhs", "128"], "n_rkhs"),
        (train.main, ["--dataset", "MNIST"], "invalid choice"),
        (test_py.main, [cpt, "--dataset", "FOLDER", "--image_size", "32", "--input_dir", str(tmp_path / "nope")],
         "input_dir"),
        (train.main, [*TINY, "--classifiers", "--output_dir", os.path.dirname(os.path.dirname(cpt)),
                      "--run_name", "ss"], "--run_name"),
    ]
    for main, argv, needle in cases:
        capsys.readouterr()
        status = run_entry_point(main, argv)
        err = capsys.readouterr().err
        assert status == 2, (argv, err)
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert "error" in last and needle in last, (argv, err)
    r = cli("test.py", *cases[3][1])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "input_dir" in last, r.stderr


def test_resumable_sampler_deals_like_distributed_sampler_and_skips_the_trained_images():
    data = list(range(50))
    for world in (1, 2, 3):
        for rank in range(world):
            ours = engine.ResumableSampler(data, distributed.Dist(rank=rank, world_size=world), seed=3, batch_size=4)
            ref = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, seed=3, drop_last=True)
            ours.set_epoch(2)
            ref.set_epoch(2)
            assert list(ours) == list(ref) and len(ours) == len(ref)
    # Two ranks, batches of 4, 3 updates done: the first 24 images of the epoch's permutation are trained.
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3 + 2)).tolist()
    trained = set(order[:24])
    full = []
    for rank in range(2):
        sampler = engine.ResumableSampler(data, distributed.Dist(rank=rank, world_size=2), 3, 4)
        sampler.set_epoch(2)
        full.append(list(sampler))
    assert trained == {i for r in range(2) for i in full[r][:12]}
    for world, batch in ((2, 4), (1, 8), (4, 2)):        # resumed with the same or another batch/world size
        parts = []
        for rank in range(world):
            part = engine.ResumableSampler(data, distributed.Dist(rank=rank, world_size=world), 3, batch)
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

    sampler = engine.ResumableSampler(list(range(10)), distributed.Dist(), seed=5, batch_size=2, seed_items=True)
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
        train.worker(distributed.Dist(rank=0, world_size=2), args)
    args = train.parse_args(TINY + ["--batch_size", "6"])
    with pytest.raises(utils.UserError, match="at least 2 images per process"):
        train.worker(distributed.Dist(rank=0, world_size=4), args)


# ----------------------------------------------------------------------------------------------------------
# Flags and fallbacks that change which code runs: checked by what actually ran.

def test_default_run_trains_on_channels_last_images_and_weights(ss_run):
    assert len(SS_RUN_STEPS) == 15
    for step in SS_RUN_STEPS:
        assert step["views"] == step["weights"] == {"channels_last": True, "contiguous": False}


def test_per_image_aug_contiguous_layout_and_test_split_bn_warmup(tmp_path, monkeypatch):
    """One short run with three non-default flags, each checked by what ran: --per_image_aug (every training
    image went through the per-image views, none through the batched ones), --memory_format contiguous (the
    training steps' images and convolution weights), --bn_warmup test (the BatchNorm refresh saw exactly the
    test images, in order, through the test-time transform)."""
    (x_tr, _), (x_te, _) = small_digits(monkeypatch)
    calls = {"per_image": 0, "batched": 0}
    for cls, key in ((augment.TwoViews, "per_image"), (augment.BatchTwoViews, "batched")):
        def counted(self, *args, _call=cls.__call__, _key=key, **kwargs):
            calls[_key] += 1
            return _call(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__call__", counted)
    steps = _spy_on_training_steps(monkeypatch)
    refreshed = []
    classify = methods.Method.classify

    def spy_classify(self, x):
        if self.training:          # the BatchNorm refresh (scoring runs in eval mode)
            refreshed.append(x.detach().clone())
        return classify(self, x)

    monkeypatch.setattr(methods.Method, "classify", spy_classify)
    run_train(tmp_path, "--epochs", "1", "--run_name", "flags", "--per_image_aug", "--memory_format",
              "contiguous", "--bn_warmup", "test", "--use_bn", "1", "--view_grid", "0")

    ckpt = load(os.path.join(tmp_path, "flags", "amdim_cpt.pth"))
    assert ckpt["cursor"]["info_epoch"] == 1 and ckpt["cursor"]["info_step"] == 3      # 300 images, 100 a batch
    assert calls["batched"] == 0 and calls["per_image"] == 300
    assert len(steps) == 3
    for step in steps:
        assert step["views"] == step["weights"] == {"channels_last": False, "contiguous": True}
    # The test split through the test-time transform, computed here: DIGITS normalises by the training split's
    # own per-channel mean and standard deviation.
    pixels = x_tr.reshape(-1, 3).astype(np.float64) / 255
    mean, std = pixels.mean(0), pixels.std(0)
    expected = torch.from_numpy(((x_te / 255 - mean) / std).transpose(0, 3, 1, 2)).float()
    assert torch.allclose(torch.cat(refreshed), expected, atol=1e-5)


def test_unreadable_checkpoint_falls_back_to_the_previous_one_with_a_warning(ss_run, tmp_path, capsys):
    _, cpt, _ = ss_run
    good = open(cpt, "rb").read()
    os.makedirs(tmp_path / "fb")
    (tmp_path / "fb" / "amdim_cpt.pth").write_bytes(good[:len(good) // 2])      # this run's file, truncated
    (tmp_path / "fb" / "amdim_cpt.pth.prev").write_bytes(good)                   # its previous one: epoch 1 done
    acc = run_train(tmp_path, "--epochs", "1", "--run_name", "fb")
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "truncated" in warnings[0] and "previous checkpoint" in warnings[0], err
    resumed = [line for line in out.splitlines() if line.startswith("resuming from")]
    assert len(resumed) == 1 and "amdim_cpt.pth.prev" in resumed[0], out
    assert acc is None          # nothing left to train: the previous checkpoint had finished the run's epoch


# Two tiny image folders with different class counts: a self-supervised run on one, classifiers on the other
# (as ImageNet -> Places205).

def _image_folder(root, n_classes, n_train=8, n_val=2, seed=0):
    rng = np.random.RandomState(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(n_classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return str(root)


FOLDER = ["--dataset", "FOLDER", "--image_size", "32", *TINY_ENCODER, "--batch_size", "8", *ON_CPU, "--log_every",
          "1000", "--epochs", "1"]


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    """A one-epoch self-supervised run on a 3-class folder, and a 2-class folder to take it to."""
    root = tmp_path_factory.mktemp("folders")
    three, two = _image_folder(root / "three", 3), _image_folder(root / "two", 2, seed=1)
    train.main(FOLDER + ["--input_dir", three, "--output_dir", str(root / "runs"), "--run_name", "three"])
    return str(root / "runs" / "three" / "amdim_cpt.pth"), two, root


def test_classifiers_for_a_dataset_with_another_class_count_are_fresh(three_class_run, tmp_path):
    cpt, two, _ = three_class_run
    train.main(FOLDER + ["--input_dir", two, "--output_dir", str(tmp_path), "--run_name", "two", "--classifiers",
                         "--checkpoint_path", cpt])
    before, after = load(cpt), load(os.path.join(tmp_path, "two", "amdim_cpt.pth"))
    assert before["hyperparams"]["n_classes"] == 3 and after["hyperparams"]["n_classes"] == 2
    heads = {"evaluator.block_glb_lin.block_forward.2": 32, "evaluator.block_glb_mlp.block_forward.6": 1024}
    for head, width in heads.items():
        assert before["model"][head + ".weight"].shape == (3, width)
        assert after["model"][head + ".weight"].shape == (2, width) and after["model"][head + ".bias"].shape == (2,)
    # The frozen encoder's weights stay; its always-on BatchNorm ran in train mode, so its statistics moved.
    encoder = [k for k in before["model"] if k.startswith("encoder.") and
               not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert encoder and all(torch.equal(before["model"][k], after["model"][k]) for k in encoder)
    assert after["cursor"]["classifier_epoch"] == 1 and after["cursor"]["classifier_step"] == 2   # 16 images
    model = checkpoint.model_from(after)
    mlp, lin = model.eval().classify(torch.zeros(1, 3, 32, 32))
    assert mlp.shape == lin.shape == (1, 2)


def _one_line_error(capsys, main):
    """Run main as an entry point does (utils.run_main): it must exit 2 with one `error:` line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        utils.run_main(main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_a_checkpoint_for_another_image_size_is_a_one_line_error(three_class_run, capsys):
    cpt, two, root = three_class_run
    argv = FOLDER + ["--image_size", "64", "--input_dir", two, "--output_dir", str(root / "runs"),
                     "--run_name", "sizes", "--classifiers", "--checkpoint_path", cpt]
    err = _one_line_error(capsys, lambda: train.main(argv))
    assert "the checkpoint's encoder takes 32 px" in err and "64 px" in err, err


def test_test_py_on_a_dataset_with_another_class_count_is_a_one_line_error(three_class_run, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("amdim_test_py", os.path.join(ROOT, "test.py"))
    test_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_py)
    cpt, two, _ = three_class_run
    err = _one_line_error(capsys, lambda: test_py.main([cpt, "--dataset", "FOLDER", "--image_size", "32",
                                                        "--input_dir", two, "--num_workers", "0",
                                                        "--device", "cpu"]))
    assert "classifiers predict 3 classes" in err and "has 2" in err, err


def test_a_folder_read_file_by_file_trains_on_uint8_crops_coloured_on_the_device(tmp_path):
    """Without the cache a loader worker (a real process, kept across epochs) cuts uint8 crops, one tensor per
    view, and the training device colours them; two epochs train through it."""
    data = _image_folder(tmp_path / "data", 2, n_train=12)
    argv = FOLDER + ["--input_dir", data, "--cache_images", "off", "--num_workers", "1", "--epochs", "2",
                     "--output_dir", str(tmp_path), "--view_grid", "2"]
    run, _ = train.setup(distributed.Dist(), train.parse_args(argv))
    assert run.splits.crops and run.splits.per_image_items
    loader = train.make_loaders(run)
    assert loader.num_workers == 1 and loader.persistent_workers
    crops, y, index = next(iter(loader))
    assert [(tuple(c.shape), c.dtype) for c in crops] == [((8, 3, 32, 32), torch.uint8)] * 2
    views, _, _ = engine.training_views((crops, y, index), run.splits.batch_augment, torch.device("cpu"), 2)
    assert [(tuple(v.shape), v.dtype) for v in views] == [((8, 3, 32, 32), torch.float32)] * 2
    run.log.close()
    del loader
    train.main(argv)
    done = load(os.path.join(tmp_path, "default_run", "amdim_cpt.pth"))
    assert done["cursor"]["info_epoch"] == 2 and done["cursor"]["info_step"] == 6          # 24 images, batch 8
