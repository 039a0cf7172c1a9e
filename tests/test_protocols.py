"""The seeds' linear evaluation protocols (protocols.py, train.py --classifiers --protocol): each one's learning rate
per epoch, optimiser, classifier and training view against what the seed's script does (its formulas written out
here, or torch's schedulers it calls), the loss and top-k against naive loops, and whole runs on DIGITS."""
import argparse
import json
import math
import os

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

import augment
import checkpoint
import costs
import engine
import phases
import protocols
import train
from helpers import DIGITS, load_test_py, one_line_error, run_entry_point, small_digits
from model import Evaluator, LinearProbe

SEED_BATCH = 256        # every seed's linear evaluation ran at a global batch of 256


def flags(**given):
    """train.py's flags that the protocols read, at their defaults."""
    values = dict(learning_rate=None, batch_size=SEED_BATCH, lr_decay_epochs=None, eval_encoder=False, cos=False)
    return argparse.Namespace(**dict(values, **given))


def rates(name, args=None, dataset="IN128"):
    """The learning rate at each epoch of the protocol's default run, as train.setup builds its schedule."""
    hp = {"protocol": name}
    args = args or flags()
    recipe = phases.Classifiers.recipe(hp)
    epochs, milestones = recipe.epochs_and_milestones(dataset, None, args.lr_decay_epochs)
    schedule = phases.Classifiers.schedule(hp, args, epochs, milestones, updates_per_epoch=7)
    base = recipe.base_lr(args)
    return [base * schedule(epoch, 7 * epoch + 3) for epoch in range(epochs)]


def test_moco_protocol_follows_main_lincls_adjust_learning_rate():
    # main_lincls.py: lr 30, for each milestone of --schedule 60 80: lr *= 0.1 if epoch >= milestone; 100 epochs.
    expected = []
    for epoch in range(100):
        lr = 30.0
        for milestone in (60, 80):
            lr *= 0.1 if epoch >= milestone else 1.0
        expected.append(lr)
    assert rates("moco") == pytest.approx(expected, rel=1e-12)


def test_swav_protocol_follows_eval_linear_cosine_annealing_stepped_per_epoch():
    # eval_linear.py: SGD(lr 0.3), CosineAnnealingLR(optimizer, 100, eta_min=0), scheduler.step() after each epoch.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 100, eta_min=0)
    expected = []
    for _ in range(100):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates("swav") == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_cmc_protocol_follows_linear_probing_adjust_learning_rate():
    # LinearProbing.py counts epochs from 1: steps = sum(epoch > lr_decay_epochs 30,40,50), lr = 30 * 0.2 ** steps
    # (the README's rate for ResNets at layer 6), 60 epochs.
    expected = [30.0 * 0.2 ** sum(epoch > m for m in (30, 40, 50)) for epoch in range(1, 61)]
    assert rates("cmc") == pytest.approx(expected, rel=1e-12)


def test_seed_rates_do_not_scale_with_the_batch_but_learning_rate_overrides_them():
    assert rates("moco", flags(batch_size=64))[0] == 30.0
    assert rates("swav", flags(learning_rate=0.1))[0] == 0.1


def test_cmc_protocol_takes_the_seeds_later_decay_epochs():
    assert rates("cmc", flags(lr_decay_epochs=(20, 40)))[19:22] == pytest.approx([30.0, 6.0, 6.0])


def tiny_model(name, n_features=64, n_classes=10):
    hp = {"method": "amdim", "arch": "amdim", "encoder_size": 32, "n_classes": n_classes, "ndf": 8,
          "n_rkhs": n_features, "n_depth": 1, "use_bn": False, "tclip": 20.0}
    if name != "amdim":
        hp["protocol"] = name
    return checkpoint.build_model(checkpoint.hyperparams({"hyperparams": hp}))


@pytest.mark.parametrize("name, weight_decay", [("moco", 0.0), ("swav", 1e-6), ("cmc", 0.0)])
def test_seed_protocol_optimises_a_fresh_linear_layer_alone_as_the_seed(name, weight_decay):
    torch.manual_seed(0)
    model = tiny_model(name, n_features=2048, n_classes=1000)
    phase = phases.Classifiers(model, flags())
    probe = model.evaluator
    assert isinstance(probe, LinearProbe) and probe.heads == ("lin",)
    assert [p.requires_grad for p in model.parameters()].count(True) == 2          # the seeds' fc weight and bias
    # The seeds' init: weight ~ N(0, 0.01^2), bias 0 (1000 x 2048 draws: the std is within 1 %).
    assert abs(probe.linear.weight.std().item() - 0.01) < 1e-4 and abs(probe.linear.weight.mean().item()) < 1e-4
    assert torch.equal(probe.linear.bias, torch.zeros(1000))
    optimizer = phase.optimizer(flags())
    (group,) = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.SGD)
    assert {id(p) for p in group["params"]} == {id(probe.linear.weight), id(probe.linear.bias)}
    expected_lr = {"moco": 30.0, "swav": 0.3, "cmc": 30.0}[name]
    assert (group["lr"], group["base_lr"], group["momentum"], group["weight_decay"], group["nesterov"],
            group["dampening"]) == (expected_lr, expected_lr, 0.9, weight_decay, False, 0)
    assert phase.eval_encoder and phase.classifier_loss is costs.probe_loss


def test_amdim_protocol_is_the_classifier_phase_as_before():
    model = tiny_model("amdim")
    phase = phases.Classifiers(model, flags())
    assert isinstance(model.evaluator, Evaluator) and "protocol" not in model.hyperparams
    optimizer = phase.optimizer(flags())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 2e-4
    assert not phase.eval_encoder and phase.classifier_loss is costs.classifier_loss
    assert phase.views({}) == phases.Classifiers.views({"protocol": "amdim"})
    assert phase.views({}).kind == "amdim"


@pytest.mark.parametrize("name, scale", [("moco", (0.08, 1.0)), ("swav", (0.08, 1.0)), ("cmc", (0.2, 1.0))])
def test_seed_protocol_trains_on_the_seeds_crop_and_flip_only(name, scale):
    spec = phases.Classifiers.views({"protocol": name})
    assert (spec.kind, spec.count) == ("probe", 1)
    per_image = augment.make_views(spec.kind, "stl", **spec.options)
    ops = per_image.view_transform.transforms
    # main_lincls.py / eval_linear.py: RandomResizedCrop(224) (CMC: scale=(crop_low 0.2, 1)), RandomHorizontalFlip,
    # ToTensor, Normalize; nothing else.
    assert [type(op) for op in ops] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    crop = ops[0]
    assert (crop.size, crop.scale, crop.ratio, crop.interpolation) == \
        ((64, 64), scale, (3 / 4, 4 / 3), T.InterpolationMode.BILINEAR)
    assert ops[1].p == 0.5
    assert per_image.n_views == 1


def test_batched_probe_view_is_the_resized_image_or_its_mirror_without_colour():
    # Area 1 of a square image: every try's box overflows (its aspect ratio differs from 1), so RandomResizedCrop
    # falls back to the whole image; the view is then the image resized, flipped or not, and normalised only.
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 48, 48), dtype=torch.uint8)
    views = augment.make_views("probe", "cifar", batched=True, scale=(1.0, 1.0))
    (out,) = views(images, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in augment.NORMALIZATION["cifar"])
    resized = TF.resize(images.float() / 255, [32, 32], antialias=True)
    expected = (resized - mean) / std
    flipped = [torch.allclose(o, e.flip(-1), atol=2e-3) for o, e in zip(out, expected)]
    kept = [torch.allclose(o, e, atol=2e-3) for o, e in zip(out, expected)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 16


def test_probe_loss_is_the_mean_cross_entropy_of_the_labelled_rows():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([2, -1, 0, 3, -1, 1])
    naive = [-(logits[i, labels[i]] - logits[i].exp().sum().log()) for i in range(6) if labels[i] >= 0]
    assert costs.probe_loss(logits, labels).item() == pytest.approx(sum(naive).item() / len(naive), rel=1e-12)
    assert costs.probe_loss(logits, torch.full((6,), -1)).item() == 0.0


def test_top_k_correct_counts_labels_among_the_k_highest_scores():
    torch.manual_seed(0)
    scores, labels = torch.randn(50, 8), torch.randint(0, 8, (50,))
    top1, top5 = engine.top_k_correct(scores, labels)
    order = [sorted(range(8), key=lambda c: -scores[i, c].item()) for i in range(50)]
    assert top1.item() == sum(order[i][0] == labels[i].item() for i in range(50))
    assert top5.item() == sum(labels[i].item() in order[i][:5] for i in range(50))
    assert engine.top_k_correct(scores[:, :3], labels.clamp(max=2))[1].item() == 50     # k above the classes


# ----------------------------------------------------------------------------------------------------------
# Whole runs on DIGITS.

def test_swav_protocol_run_is_scored_by_test_py_with_its_protocol_and_top5(ss_checkpoint, tmp_path, capsys,
                                                                           monkeypatch):
    small_digits(monkeypatch, n_train=300, n_test=100)
    argv = DIGITS + ["--output_dir", str(tmp_path), "--run_name", "cls", "--classifiers", "--protocol", "swav",
                     "--checkpoint_path", ss_checkpoint, "--epochs", "2"]
    acc = train.main(argv)
    ckpt = torch.load(os.path.join(tmp_path, "cls", "amdim_cpt.pth"), weights_only=True)
    before = torch.load(ss_checkpoint, weights_only=True)
    assert ckpt["hyperparams"]["protocol"] == "swav" and ckpt["eval_encoder"] is True
    assert sorted(k for k in ckpt["model"] if k.startswith("evaluator.")) == ["evaluator.linear.bias",
                                                                              "evaluator.linear.weight"]
    # The frozen encoder in eval mode: every entry, BatchNorm statistics included, as it was.
    assert all(torch.equal(before["model"][k], v) for k, v in ckpt["model"].items() if k.startswith("encoder."))
    assert set(acc) == {"n_images", "top1_linear", "top5_linear"} and acc["top5_linear"] >= acc["top1_linear"]
    records = [json.loads(line) for line in open(os.path.join(tmp_path, "cls", "metrics.jsonl"))]
    assert {"class_lin", "train_acc_lin"} <= set(records[-1]) and "class_mlp" not in records[-1]
    # The second epoch's rate: SwAV's cosine over the run's 2 epochs, half of 0.3.
    assert records[-1]["lr"] == pytest.approx(0.15)

    capsys.readouterr()
    test_py = load_test_py()
    assert run_entry_point(test_py.main, [os.path.join(tmp_path, "cls", "amdim_cpt.pth"), "--dataset", "DIGITS",
                                          "--num_workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "swav" and "top1_mlp" not in result
    # The encoder's BatchNorm stays in eval mode for the refresh too: test.py scores what training scored.
    assert (result["top1_linear"], result["top5_linear"]) == (acc["top1_linear"], acc["top5_linear"])


def test_resuming_with_another_protocol_is_a_one_line_error(ss_checkpoint, tmp_path, capsys, monkeypatch):
    small_digits(monkeypatch, n_train=300, n_test=100)
    argv = DIGITS + ["--output_dir", str(tmp_path), "--run_name", "cls", "--classifiers", "--checkpoint_path",
                     ss_checkpoint, "--epochs", "1"]
    train.main(argv + ["--protocol", "cmc"])
    saved = os.path.getmtime(os.path.join(tmp_path, "cls", "amdim_cpt.pth"))
    one_line_error(capsys, train.main, argv + ["--epochs", "2", "--protocol", "moco"], "--protocol moco",
                   "--protocol cmc")
    assert os.path.getmtime(os.path.join(tmp_path, "cls", "amdim_cpt.pth")) == saved
    # The same command without --protocol resumes the run's own.
    train.main(argv + ["--epochs", "2"])
    ckpt = torch.load(os.path.join(tmp_path, "cls", "amdim_cpt.pth"), weights_only=True)
    assert ckpt["hyperparams"]["protocol"] == "cmc" and ckpt["cursor"]["classifier_epoch"] == 2


def test_protocol_flags_that_cannot_apply_are_one_line_errors(ss_checkpoint, tmp_path, capsys):
    base = DIGITS + ["--output_dir", str(tmp_path), "--epochs", "2"]
    with pytest.raises(SystemExit):
        train.parse_args(base + ["--protocol", "moco"])
    assert "add --classifiers" in capsys.readouterr().err
    one_line_error(capsys, train.main, base + ["--classifiers", "--protocol", "swav", "--checkpoint_path",
                                               ss_checkpoint, "--lr_decay_epochs", "1"], "cosine", "--lr_decay_epochs")
    assert not os.path.exists(os.path.join(tmp_path, "default_run", "amdim_cpt.pth"))


def test_a_checkpoint_naming_an_unknown_protocol_is_refused():
    hp = dict(tiny_model("moco").hyperparams, protocol="byol")
    with pytest.raises(Exception, match="evaluation protocol 'byol' is unknown"):
        checkpoint.hyperparams({"hyperparams": hp})


def test_every_protocol_is_documented_in_protocols_py():
    for name, p in protocols.PROTOCOLS.items():
        assert f"    {name} " in protocols.__doc__ and p.name == name
    assert math.isclose(protocols.PROTOCOLS["swav"].recipe.weight_decay, 1e-6)


def test_a_protocol_run_resumed_after_each_epoch_matches_the_uninterrupted_run(ss_checkpoint, tmp_path, monkeypatch):
    small_digits(monkeypatch, n_train=300, n_test=100)       # 3 updates an epoch
    # MoCo's milestones 60, 80 of 100 scale to 1 of 2 epochs (none of 1: the first run's epoch is the same).
    argv = DIGITS + ["--output_dir", str(tmp_path), "--classifiers", "--protocol", "moco", "--checkpoint_path",
                     ss_checkpoint]
    train.main(argv + ["--run_name", "straight", "--epochs", "2"])
    train.main(argv + ["--run_name", "split", "--epochs", "1"])
    train.main(argv + ["--run_name", "split", "--epochs", "2"])
    a, b = (torch.load(tmp_path / run / "amdim_cpt.pth", weights_only=True) for run in ("straight", "split"))
    assert a["cursor"] == b["cursor"] and a["cursor"]["classifier_step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3.0)       # x0.1 from epoch 1 on
