"""Semi-supervised evaluation: the labelled images (--labels_file, --label_fraction: subset.LabelSubset) and SwAV's
fine-tuning protocol (--protocol semisup, eval_semisup.py), against the seed's script and naive counts, and in
whole runs on DIGITS and a real image folder."""
import json
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import checkpoint
import datasets
import phases
import protocols
import subset
import train
from helpers import DIGITS, TINY_FLAGS, load_test_py, one_line_error, run_entry_point, small_digits
from model import FineTuneHead
from test_protocols import flags, rates, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_semisup_follows_eval_semisup_multistep_lr_for_trunk_and_head():
    # eval_semisup.py: SGD([trunk lr 0.01, head lr_last_layer 0.2]), MultiStepLR([12, 16], gamma 0.2) stepped after
    # each of 20 epochs; neither rate scales with the batch.
    trunk, head = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([{"params": [trunk]}, {"params": [head], "lr": 0.2}], lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [12, 16], gamma=0.2)
    expected = []
    for _ in range(20):
        expected.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert rates("semisup") == pytest.approx([lrs[0] for lrs in expected], rel=1e-12)
    assert [lr * 20 for lr in rates("semisup", flags(batch_size=32))] == pytest.approx([h for _, h in expected])


def test_semisup_trains_the_encoder_and_a_fresh_linear_head_in_two_groups():
    torch.manual_seed(0)
    model = tiny_model("semisup", n_features=2048, n_classes=1000)
    phase = phases.Classifiers(model, flags())
    head = model.evaluator
    assert isinstance(head, FineTuneHead) and not phase.eval_encoder and not phase.refresh_bn
    # nn.Linear's own initialisation (eval_semisup.py rebuilds the projection head as Linear(2048, 1000)):
    # uniform in +-1/sqrt(fan_in), so its std is that bound / sqrt(3).
    bound = 1 / math.sqrt(2048)
    assert head.linear.weight.abs().max() <= bound and head.linear.bias.abs().max() <= bound
    assert abs(head.linear.weight.std().item() - bound / math.sqrt(3)) < 0.01 * bound
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    # r1's layers: the r5 and r7 heads do not feed the features (they would get no gradient).
    encoder = {id(p) for p in model.encoder.layer_list.parameters()}
    assert trainable == encoder | {id(p) for p in head.parameters()}
    trunk, last = phase.optimizer(flags()).param_groups
    assert {id(p) for p in trunk["params"]} == encoder
    assert {id(p) for p in last["params"]} == {id(head.linear.weight), id(head.linear.bias)}
    for group, lr in ((trunk, 0.01), (last, 0.2)):
        assert (group["lr"], group["base_lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == \
            pytest.approx((lr, lr, 0.9, 0.0, False))
    # The features keep their graph: the encoder gets gradients through the head.
    x = torch.randn(2, 3, 32, 32)
    phase.forward(phase.step_module(), (x,), None)["logits"][0].sum().backward()
    assert all((p.grad is not None) == (id(p) in encoder) for p in model.encoder.parameters())


def test_fine_tuning_leaves_a_methods_other_state_to_itself():
    hp = train.resolve_hyperparams(train.parse_args(DIGITS + TINY_FLAGS["moco"]), None, 32)
    model = checkpoint.build_model(dict(hp, n_classes=10, protocol="semisup"))
    phase = phases.Classifiers(model, flags())
    ignored = set(phase.ddp_ignored_state())
    assert {"model.queue", "model.queue_ptr", "model.head.weight"} <= ignored
    assert any(name.startswith("model.backbone_k.") for name in ignored)
    trained = ("model.backbone.encoder.layer_list.", "model.evaluator.")
    assert not any(name.startswith(trained) for name in ignored)
    assert "model.backbone.encoder.rkhs_block_5.conv1.weight" in ignored         # not on r1's path
    assert not any(p.requires_grad for p in [*model.backbone_k.parameters(), *model.head.parameters()])


# ----------------------------------------------------------------------------------------------------------
# The labelled images.

def test_balanced_draw_keeps_a_rounded_fraction_of_every_class():
    labels = torch.randint(0, 7, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    labels += [7]                                                  # a class of one image keeps it
    keep = subset.balanced_draw(labels, 0.1, seed=3)
    per_class = Counter(labels)
    kept = Counter(labels[i] for i in keep)
    assert kept == {c: max(1, round(0.1 * n)) for c, n in per_class.items()}
    assert keep == sorted(set(keep))
    assert subset.balanced_draw(labels, 0.1, seed=3) == keep and subset.balanced_draw(labels, 0.1, seed=4) != keep
    assert subset.balanced_draw(labels, 1.0, seed=0) == list(range(len(labels)))


def write_folder(root, per_class=4, size=20):
    """A real image folder: ImageNet-style file names (<class>_<n>.JPEG) in train/ and val/."""
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            os.makedirs(root / split / c)
            for i in range(per_class):
                Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{c}_{i}.JPEG", format="JPEG")
    return str(root)


def test_labels_file_keeps_the_named_images_of_an_image_folder(tmp_path):
    root = write_folder(tmp_path / "data")
    names = tmp_path / "1percent.txt"
    names.write_text("n02_3.JPEG\nn01_0.JPEG\n\nn01_2.JPEG\n")
    splits = datasets.build_splits("FOLDER", root, "classifiers", image_size=32, cache_images="off",
                                   labels=subset.LabelSubset(file=str(names)))
    kept = [(os.path.basename(path), label) for path, label in splits.train.base.samples]
    assert kept == [("n01_0.JPEG", 0), ("n01_2.JPEG", 0), ("n02_3.JPEG", 1)]
    assert len(splits.test) == 8 and splits.n_classes == 2
    cached = datasets.build_splits("FOLDER", root, "classifiers", image_size=32, cache_images="on",
                                   labels=subset.LabelSubset(file=str(names)))
    assert len(cached.train) == 3 and sorted(cached.train.labels.tolist()) == [0, 0, 1]


def test_label_fraction_restricts_in_memory_training_images_only(monkeypatch):
    (_, y_tr), _ = small_digits(monkeypatch, n_train=300, n_test=100)
    full = datasets.build_splits("DIGITS", "", "classifiers")
    part = datasets.build_splits("DIGITS", "", "classifiers", labels=subset.LabelSubset(fraction=0.1, seed=1))
    keep = subset.balanced_draw(y_tr, 0.1, 1)
    assert part.train.labels.tolist() == y_tr[keep].tolist() and len(part.train) < len(full.train)
    assert torch.equal(part.train.images, full.train.images[keep])
    assert len(part.test) == len(full.test) and part.mean_std == full.mean_std     # normalisation: the whole split


def test_label_flags_errors_are_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "data")
    names = tmp_path / "10percent.txt"
    names.write_text("n01_0.JPEG\nn03_7.JPEG\nn01_9.JPEG\n")
    base = ["--dataset", "FOLDER", "--input_dir", root, "--image_size", "32", "--output_dir", str(tmp_path / "runs"),
            "--num_workers", "0", "--device", "cpu", "--batch_size", "2", "--epochs", "1"]
    one_line_error(capsys, train.main, base + ["--classifiers", "--labels_file", str(names)], "2 image(s)",
                   "n03_7.JPEG, n01_9.JPEG", "--input_dir")
    assert not os.path.exists(tmp_path / "runs" / "default_run" / "amdim_cpt.pth")
    for argv, needle in ((base + ["--labels_file", str(names)], "add --classifiers"),
                         (base + ["--classifiers", "--labels_file", str(names), "--label_fraction", "0.1"],
                          "give one of them"),
                         (DIGITS + ["--classifiers", "--labels_file", str(names)], "use --label_fraction for DIGITS"),
                         (base + ["--classifiers", "--label_fraction", "0"], "--label_fraction")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert needle in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Whole runs.

def semisup_argv(tmp_path, ss_checkpoint, run_name, epochs):
    return DIGITS + ["--output_dir", str(tmp_path), "--run_name", run_name, "--classifiers", "--protocol", "semisup",
                     "--label_fraction", "0.2", "--batch_size", "10", "--checkpoint_path", ss_checkpoint,
                     "--epochs", str(epochs)]


def test_semisup_run_fine_tunes_the_encoder_and_test_py_scores_it_as_trained(ss_checkpoint, tmp_path, capsys,
                                                                           monkeypatch):
    (_, y_tr), _ = small_digits(monkeypatch, n_train=300, n_test=100)
    acc = train.main(semisup_argv(tmp_path, ss_checkpoint, "semi", 2))
    path = os.path.join(tmp_path, "semi", "amdim_cpt.pth")
    ckpt, before = (torch.load(p, weights_only=True) for p in (path, ss_checkpoint))
    assert ckpt["hyperparams"]["protocol"] == "semisup" and ckpt["eval_encoder"] is False
    tuned, start = checkpoint.model_from(ckpt), checkpoint.model_from(before)
    for (name, p), q in zip(tuned.encoder.named_parameters(), start.encoder.parameters()):
        assert torch.equal(p, q) == name.startswith("rkhs_block"), name     # every weight r1 comes from moved
    # 20 % of each class of the 300 images, 10 a batch: the updates of an epoch count them.
    n_labelled = len(subset.balanced_draw(y_tr, 0.2, 0))
    assert ckpt["cursor"]["classifier_step"] == 2 * (n_labelled // 10)
    capsys.readouterr()
    assert run_entry_point(load_test_py().main, [path, "--dataset", "DIGITS", "--num_workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # No BatchNorm refresh, in training's test or test.py's: the same numbers.
    assert result["protocol"] == "semisup"
    assert (result["top1_linear"], result["top5_linear"]) == (acc["top1_linear"], acc["top5_linear"])


def test_semisup_run_resumed_after_its_first_epoch_matches_the_uninterrupted_run(ss_checkpoint, tmp_path,
                                                                               monkeypatch):
    small_digits(monkeypatch, n_train=300, n_test=100)
    train.main(semisup_argv(tmp_path, ss_checkpoint, "straight", 2))
    train.main(semisup_argv(tmp_path, ss_checkpoint, "split", 1))
    train.main(semisup_argv(tmp_path, ss_checkpoint, "split", 2))
    a, b = (torch.load(tmp_path / run / "amdim_cpt.pth", weights_only=True) for run in ("straight", "split"))
    assert a["cursor"] == b["cursor"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx([0.002, 0.04])   # x0.2 at epoch 2


def test_every_protocol_builds_its_evaluator_from_the_hyperparams():
    for name, protocol in protocols.PROTOCOLS.items():
        model = tiny_model(name, n_features=32, n_classes=5)
        assert type(model.evaluator) is protocol.evaluator and isinstance(model.evaluator, nn.Module)


def test_torchrun_two_process_fine_tuning_of_a_moco_encoder(tmp_path):
    """Under DistributedDataParallel only the encoder's feature layers and the head train; MoCo's key encoder,
    head and queue stay out of the reducer (an unused parameter there would stop the job)."""
    train.main(DIGITS + TINY_FLAGS["moco"] + ["--epochs", "1", "--output_dir", str(tmp_path), "--run_name", "moco"])
    ss = tmp_path / "moco" / "amdim_cpt.pth"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           *DIGITS, "--classifiers", "--protocol", "semisup", "--label_fraction", "0.1", "--batch_size", "20",
           "--checkpoint_path", str(ss), "--epochs", "1", "--output_dir", str(tmp_path), "--run_name", "semi"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stdout
    tuned, start = (checkpoint.load_model(str(p)) for p in (tmp_path / "semi" / "amdim_cpt.pth", ss))
    assert tuned.hyperparams["protocol"] == "semisup"
    first = "backbone.encoder.layer_list.0.conv.weight"
    assert not torch.equal(tuned.state_dict()[first], start.state_dict()[first])
    for name in ("queue", "backbone_k.encoder.layer_list.0.conv.weight", "head.weight"):
        assert torch.equal(tuned.state_dict()[name], start.state_dict()[name]), name
