"""SwAV (methods.SwAV) on the pipeline: multi-crop views (sizes, counts, area ranges, per image against batched),
the multi-resolution forward, prototypes normalised before every forward, the queue (start, first-in first-out,
use once full, codes with it against one Sinkhorn call), the prototype freeze, the learning rate against the
seed's formula, the flags' defaults and errors, and real 2-process gloo runs (codes equal to one process's on the
whole batch with queues; training keeps both processes' prototypes and queues identical)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

import augment
import config
import costs
import distributed
import imageops
import methods
import train
import utils
from helpers import AMDIM_ENCODER, BASE, shared_job, update_now
from utils import UserError

# ----------------------------------------------------------------------------------------------------------
# Helpers.


def _hp(*flags, size=32, dataset="C10"):
    """A SwAV model's hyperparameters from command-line flags (3 classes)."""
    args = train.parse_args(["--dataset", dataset, "--method", "swav", *flags])
    return dict(config.from_flags(args, size, 0), n_classes=3)


TINY_RESNET = ["--arch", "resnet18", "--feat_dim", "8", "--hidden_mlp", "16", "--nmb_prototypes", "10"]
TINY_AMDIM = AMDIM_ENCODER + ["--feat_dim", "8", "--hidden_mlp", "16", "--nmb_prototypes", "10"]


def _images(n, size, seed=0):
    """Smooth colourful uint8 images (N, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return ((x + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1) * 255).round().to(torch.uint8)


def _pil(img):
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


CROPS = augment.MultiCrop((2, 4), (32, 16), (0.14, 0.05), (1.0, 0.14))


# ----------------------------------------------------------------------------------------------------------
# Views.

def test_multi_crop_views_come_in_crop_order_with_their_sizes_per_image_and_batched():
    torch.manual_seed(0)
    per_image = augment.make_views("swav", "cifar", crops=CROPS)(_pil(_images(1, 48)[0]))
    batched = augment.make_views("swav", "cifar", crops=CROPS, batched=True)(_images(5, 48))
    sizes = [32, 32, 16, 16, 16, 16]
    assert [tuple(v.shape) for v in per_image] == [(3, s, s) for s in sizes]
    assert [tuple(v.shape) for v in batched] == [(5, 3, s, s) for s in sizes]
    assert all(v.dtype == torch.float32 for v in per_image + batched)
    # Each crop draws its own parameters: no two crops of an image are the same.
    for views in (per_image, [v[0] for v in batched]):
        assert all(not torch.equal(views[i], views[j]) for i in range(6) for j in range(i) if sizes[i] == sizes[j])
    # The classifier phase and the BatchNorm refresh take the first (large) crop alone.
    first = augment.make_views("swav", "cifar", crops=CROPS, batched=True)(_images(5, 48), n_views=1)
    assert len(first) == 1 and first[0].shape == (5, 3, 32, 32)


def _record_batched_boxes(monkeypatch):
    """Every crop box the batched path draws, with the scale range and output size asked for."""
    calls = []
    real_draws, real_boxes, real_weights = imageops.crop_box_draws, imageops.crop_boxes, imageops.crop_weights

    def draws(n, scale, ratio, device=None, attempts=10):
        calls.append({"scale": scale})
        return real_draws(n, scale, ratio, device, attempts)

    def boxes(draws, height, width, ratio):
        top, left, h, w = real_boxes(draws, height, width, ratio)
        calls[-1]["area"] = (h * w).double() / (height * width)         # the box drawn last
        return top, left, h, w

    def weights(boxes, height, width, size, mode):
        calls[-1]["size"] = size
        return real_weights(boxes, height, width, size, mode)

    # Where the batched views read them.
    for name, fn in (("crop_box_draws", draws), ("crop_boxes", boxes), ("crop_weights", weights)):
        monkeypatch.setattr(augment, name, fn)
    return calls


def test_crop_area_ranges_are_honoured_per_crop_kind(monkeypatch):
    """The boxes each crop is cut from cover min..max of the source's area (up to the rounding of a box's sides to
    whole pixels), per image and batched."""
    crops = augment.MultiCrop((1, 2), (32, 16), (0.5, 0.05), (1.0, 0.14))
    calls = _record_batched_boxes(monkeypatch)
    torch.manual_seed(1)
    augment.make_views("swav", "stl", crops=crops, batched=True)(_images(400, 96))
    assert [c["size"] for c in calls] == [32, 16, 16]
    assert [c["scale"] for c in calls] == [(0.5, 1.0), (0.05, 0.14), (0.05, 0.14)]
    slack = 2 * 96 / 96 ** 2 + 1 / 96 ** 2                  # one pixel of rounding on each side
    for c in calls:
        low, high = c["scale"]
        assert c["area"].min() >= low - slack and c["area"].max() <= high + slack
        assert c["area"].max() - c["area"].min() > 0.7 * (high - low)         # the range is used, not a point

    areas = []
    real_params = T.RandomResizedCrop.get_params

    def params(img, scale, ratio):
        top, left, h, w = real_params(img, scale, ratio)
        areas.append((scale, h * w / (img.size[0] * img.size[1])))
        return top, left, h, w

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(params))
    per_image = augment.make_views("swav", "stl", crops=crops)
    for img in _images(150, 96, seed=2):
        per_image(_pil(img))
    assert [s for s, _ in areas[:3]] == [(0.5, 1.0), (0.05, 0.14), (0.05, 0.14)]
    for (low, high) in ((0.5, 1.0), (0.05, 0.14)):
        got = [a for s, a in areas if s == (low, high)]
        assert min(got) >= low - slack and max(got) <= high + slack and max(got) - min(got) > 0.7 * (high - low)


def test_batched_crops_follow_the_per_image_distribution():
    """Over many images, the batched crops' pixel statistics, grey fraction and blur match the per-image
    (torchvision/PIL) recipe's, crop kind by crop kind."""
    n = 600
    images = _images(n, 48, seed=3)
    torch.manual_seed(4)
    per_image = [augment.make_views("swav", "cifar", crops=CROPS)(_pil(img)) for img in images]
    torch.manual_seed(5)
    batched = augment.make_views("swav", "cifar", crops=CROPS, batched=True)(images)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in augment.NORMALIZATION["cifar"])
    for crop in (0, 2):
        ref = torch.stack([views[crop] for views in per_image]) * std + mean
        got = batched[crop] * std + mean
        for stat in (lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.std(dim=(1, 2, 3))):
            a, b = stat(ref), stat(got)
            assert abs(a.mean() - b.mean()) < 0.03 and abs(a.std() - b.std()) < 0.03, crop
        grey = lambda x: ((x - x.mean(1, keepdim=True)).abs().amax(dim=(1, 2, 3)) < 2 / 255).float().mean()
        assert abs(grey(ref) - 0.2) < 0.06 and abs(grey(got) - 0.2) < 0.06, crop
        # Horizontal detail (mean absolute neighbour difference) drops alike under the blur p 0.5.
        detail = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean().item()
        assert detail(got) == pytest.approx(detail(ref), rel=0.25), crop


# ----------------------------------------------------------------------------------------------------------
# The model.

def test_forward_runs_the_backbone_once_per_crop_size_and_the_head_once_on_all_crops():
    torch.manual_seed(0)
    swav = methods.SwAV(_hp(*TINY_RESNET))
    assert swav.n_views == 6 and methods.SwAV.training_views(swav.hyperparams).count == 6
    backbone_rows, head_rows = [], []
    swav.backbone.register_forward_hook(lambda m, args, out: backbone_rows.append(tuple(args[0].shape)))
    swav.head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[0]))
    b = 3
    views = [torch.randn(b, 3, s, s) for s in (32, 32, 16, 16, 16, 16)]
    out = swav(views)
    assert backbone_rows == [(2 * b, 3, 32, 32), (4 * b, 3, 16, 16)] and head_rows == [6 * b]
    assert out["embedding"].shape == (6 * b, 8) and out["scores"].shape == (6 * b, 10)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(6 * b), atol=1e-5)
    assert torch.allclose(out["scores"], out["embedding"] @ swav.prototypes.weight.t())
    assert out["logits"][0].shape == (2 * b, 3)              # the classifiers read the two large crops
    # Rows in crop order: crop 3 alone through the network (eval mode: no batch statistics) gives rows 3B..4B.
    swav.eval()
    alone = F.normalize(swav.head(swav.backbone(views[3])), dim=1)
    assert torch.allclose(swav(views)["embedding"][3 * b:4 * b], alone, atol=1e-5)
    assert isinstance(swav.head[1], torch.nn.BatchNorm1d) and swav.prototypes.bias is None
    assert swav.features(views[0]).shape == (b, 512)


def test_backbones_take_the_default_crops_and_the_amdim_encoder_only_its_size():
    torch.manual_seed(0)
    for arch, size, dataset in (("resnet18", 64, "STL10"), ("resnet50", 128, "IN128")):
        hp = _hp("--arch", arch, "--feat_dim", "8", "--hidden_mlp", "0", "--nmb_prototypes", "4", size=size,
                 dataset=dataset)
        swav = methods.SwAV(hp)
        views = [torch.randn(2, 3, s, s) for s, _ in augment.MultiCrop.from_hyperparams(hp).each()]
        assert swav(views)["scores"].shape == (2 * len(views), 4) and isinstance(swav.head, torch.nn.Linear)
    hp = _hp(*TINY_AMDIM)
    assert hp["size_crops"] == [32] and hp["nmb_crops"] == [2]
    assert methods.SwAV(hp)([torch.randn(2, 3, 32, 32)] * 2)["scores"].shape == (4, 10)
    # The encoder really refuses other sizes: its 1x1 output needs exactly its input size.
    with pytest.raises(RuntimeError):
        methods.SwAV(hp).backbone(torch.randn(2, 3, 16, 16))


def _tiny_run(tmp_path, *flags, name="run"):
    args = train.parse_args(BASE + TINY_AMDIM + ["--method", "swav", "--output_dir", str(tmp_path), "--run_name",
                                                 name, *flags])
    utils.seed_everything(args.seed)
    run, _ = train.setup(distributed.Dist(), args)
    return run, train.make_loaders(run)


def test_prototype_rows_are_unit_at_every_forward_and_frozen_below_the_count(tmp_path):
    run, loader = _tiny_run(tmp_path, "--freeze_prototypes_niters", "3", "--base_lr", "2")
    swav = run.model
    norms = []
    swav.prototypes.register_forward_pre_hook(lambda m, args: norms.append(m.weight.norm(dim=1).clone()))
    weight = swav.prototypes.weight
    for i, batch in zip(range(5), loader):
        before = weight.detach().clone()
        values, _ = update_now(run, batch, epoch=0)
        assert values is not None
        state = run.optimizer.state.get(weight, {})
        momentum = state["momentum_buffer"]       # zeros from the start (recipes.zero_momentum)
        if i < 3:       # frozen: the normalisation alone moved them; no momentum yet
            assert torch.equal(weight.detach(), F.normalize(before, dim=1)) and not momentum.any()
        else:
            assert not torch.allclose(weight.detach(), F.normalize(before, dim=1)) and momentum.any()
            assert not torch.allclose(weight.norm(dim=1), torch.ones(10), atol=1e-4)       # the step left them
    assert len(norms) == 5
    for n in norms:
        assert torch.allclose(n, torch.ones(10), atol=1e-6)
    run.log.close()


def test_per_image_crops_of_two_sizes_train_through_the_loader(tmp_path):
    """Image folders' path: crops made per image in a loader worker, collated by crop, one real update."""
    args = train.parse_args(BASE + TINY_RESNET + ["--method", "swav", "--per_image_aug", "--batch_size", "6",
                                                  "--num_workers", "1", "--output_dir", str(tmp_path)])
    run, _ = train.setup(distributed.Dist(), args)
    assert run.splits.batch_augment is None and run.n_views == 6
    batch = next(iter(train.make_loaders(run)))
    assert [tuple(v.shape) for v in batch[0]] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 4
    values, _ = update_now(run, batch, epoch=0)
    assert values is not None and math.isfinite(values["swav"])
    run.log.close()


# ----------------------------------------------------------------------------------------------------------
# The queue.

def _out(embedding, swav):
    return {"embedding": embedding, "scores": embedding @ swav.prototypes.weight.t()}


def test_queue_starts_at_its_epoch_fills_first_in_first_out_and_is_used_once_full(monkeypatch):
    """queue_length 14 with batches of 4 rounds down to 12 rows (3 batches); crops_for_assign 0 2 of 3 crops."""
    torch.manual_seed(0)
    swav = methods.SwAV(_hp(*TINY_AMDIM, "--nmb_crops", "3", "--size_crops", "32", "--min_scale_crops", "0.2",
                            "--max_scale_crops", "1", "--crops_for_assign", "0", "2", "--queue_length", "14",
                            "--epoch_queue_starts", "2"))
    b, seen, pushed = 4, [], []
    real_sinkhorn = costs.sinkhorn

    def sinkhorn(scores, epsilon, n_iters, dist=None):
        seen.append(scores.clone())
        return real_sinkhorn(scores, epsilon, n_iters, dist)

    monkeypatch.setattr(costs, "sinkhorn", sinkhorn)
    for step in range(8):
        epoch = step // 2                                    # two updates an epoch: the queue starts at step 4
        swav.start_update(epoch, step, None)
        out = _out(_unit(3 * b, 8, step), swav)
        seen.clear()
        swav.loss_terms(out, None)
        queued = step >= 7                                   # 3 pushes fill it (steps 4, 5, 6): used from step 7
        assert [s.shape[0] for s in seen] == [b + 12 * queued] * 2, step
        swav.after_step(out, None)
        if epoch < 2:
            assert swav.queue.shape == (2, 0, 8), step
            continue
        pushed.append(out["embedding"])
        assert swav.queue.shape == (2, 12, 8)
        # Newest first: crop 0's and crop 2's rows of the last three pushes, zeros where none came yet.
        for i, crop in enumerate((0, 2)):
            expected = torch.zeros(12, 8)
            for k, emb in enumerate(reversed(pushed[-3:])):
                expected[k * b:(k + 1) * b] = emb[crop * b:(crop + 1) * b]
            assert torch.equal(swav.queue[i], expected), (step, crop)
    # Once full, the codes are the batch's rows of one Sinkhorn call over [queue scores; batch scores], the
    # queue's scores taken with the current prototypes.
    out = _out(_unit(3 * b, 8, 99), swav)
    seen.clear()
    with torch.no_grad():
        swav.prototypes.weight.mul_(0.5)
    codes = [swav.codes(out["scores"][c * b:(c + 1) * b], i, None) for i, c in enumerate((0, 2))]
    for i, c in enumerate((0, 2)):
        scores = torch.cat([swav.queue[i] @ swav.prototypes.weight.t(), out["scores"][c * b:(c + 1) * b]])
        assert torch.allclose(seen[i], scores)
        assert torch.allclose(codes[i], real_sinkhorn(scores, 0.05, 3)[-b:])


def test_queue_length_below_one_global_batch_keeps_no_queue_and_the_loss_is_the_costs_one():
    torch.manual_seed(0)
    swav = methods.SwAV(_hp(*TINY_AMDIM, "--queue_length", "3", "--epoch_queue_starts", "0"))
    out = _out(_unit(8, 8, 1), swav)
    swav.start_update(0, 0, None)
    loss = swav.loss_terms(out, None)["swav"]
    swav.after_step(out, None)
    assert swav.queue.shape[1] == 0
    per_crop = list(out["scores"].split(4))
    codes = [costs.sinkhorn(per_crop[c], 0.05, 3) for c in (0, 1)]
    assert torch.allclose(loss, costs.swav_loss(per_crop, codes, 0.1, [0, 1]))


def test_a_checkpoints_queue_loads_with_its_shape_and_another_layout_starts_afresh():
    torch.manual_seed(0)
    hp = _hp(*TINY_AMDIM, "--queue_length", "8", "--epoch_queue_starts", "0")
    swav = methods.SwAV(hp)
    swav.start_update(0, 0, None)
    for step in range(2):
        swav.after_step(_out(_unit(8, 8, step), swav), None)                 # batches of 4: 8 rows
    fresh = methods.SwAV(hp)
    fresh.load_state_dict(swav.state_dict())
    assert torch.equal(fresh.queue, swav.queue) and fresh.queued(0, 4, None) is not None
    # Batches of 3: 8 rounds down to 6 rows; the loaded 8 do not fit, are not used, and a fresh queue starts.
    assert fresh.queued(0, 3, None) is None
    fresh.start_update(0, 0, None)
    new = _unit(6, 8, 5)
    fresh.after_step(_out(new, fresh), None)
    assert fresh.queue.shape == (2, 6, 8) and torch.equal(fresh.queue[:, 3:], torch.zeros(2, 3, 8))
    assert torch.equal(fresh.queue[0, :3], new[:3]) and torch.equal(fresh.queue[1, :3], new[3:])


# ----------------------------------------------------------------------------------------------------------
# Learning rate, config.

def _schedule(hp, epochs, per_epoch):
    """SwAV's schedule as a run of `epochs` epochs of `per_epoch` updates builds it."""
    args = train.parse_args(["--dataset", "C10", "--method", "swav"])
    return methods.SwAV.schedule(hp, args, epochs, (), per_epoch)


def _seed_schedule(hp, epochs, per_epoch):
    """main_swav.py's lr_schedule array."""
    warmup = np.linspace(hp["start_warmup"], hp["base_lr"], per_epoch * hp["warmup_epochs"])
    total = per_epoch * (epochs - hp["warmup_epochs"])
    cosine = np.array([hp["final_lr"] + 0.5 * (hp["base_lr"] - hp["final_lr"]) *
                       (1 + math.cos(math.pi * t / total)) for t in np.arange(total)])
    return np.concatenate((warmup, cosine))


def test_learning_rate_is_the_seeds_warm_up_then_cosine_per_update():
    hp = _hp("--base_lr", "4.8", "--final_lr", "0.0048", "--warmup_epochs", "3", "--start_warmup", "0.3")
    expected = _seed_schedule(hp, 10, 7)
    schedule = _schedule(hp, 10, 7)
    got = [schedule.lr(i) for i in range(70)]
    assert got == expected.tolist()                           # exactly, float for float
    assert got[0] == 0.3 and got[20] == 4.8 and schedule.lr(10 ** 6) == 0.0048
    hp = _hp()                                                # the defaults: no warm-up, 0.6 -> 0.0006
    assert [_schedule(hp, 4, 5).lr(i) for i in range(20)] == _seed_schedule(hp, 4, 5).tolist()


def test_the_loop_sets_the_schedules_rate_on_the_larc_group_and_the_classifiers_follow(tmp_path):
    run, loader = _tiny_run(tmp_path, "--warmup_epochs", "1", "--start_warmup", "0.1", "--epochs", "3")
    assert run.schedule.updates_per_epoch == 15
    opt = run.optimizer
    import larc
    assert isinstance(opt, larc.LARC) and opt.trust_coefficient == 0.001 and len(opt.param_groups) == 2
    encoder_group, classifier_group = opt.param_groups
    assert encoder_group.get("larc", True) and encoder_group["weight_decay"] == 1e-6
    assert classifier_group["larc"] is False and classifier_group["weight_decay"] == 0
    assert {id(p) for p in classifier_group["params"]} == {id(p) for p in run.model.evaluator.parameters()}
    assert len(encoder_group["params"]) + len(classifier_group["params"]) == len(list(run.model.parameters()))
    expected = _seed_schedule(run.model.hyperparams, 3, 15)
    batches = iter(loader)
    for step in range(4):
        run.cursor["info_step"] = [0, 7, 14, 15][step]     # the rate is a function of the cursor alone
        values, _ = update_now(run, next(batches), epoch=run.cursor["info_step"] // 15)
        assert values["lr"] == pytest.approx(expected[[0, 7, 14, 15][step]], rel=1e-12)
        assert classifier_group["lr"] == pytest.approx(0.1 * values["lr"] / 0.6, rel=1e-12)
    run.log.close()


def test_flag_defaults_scale_with_the_image_size():
    for dataset, size, nmb, sizes in (("C10", 32, [2, 4], [32, 16]), ("STL10", 64, [2, 4], [64, 32]),
                                      ("IN128", 128, [2, 6], [128, 64])):
        hp = _hp(size=size, dataset=dataset)
        assert hp["nmb_crops"] == nmb and hp["size_crops"] == sizes
        assert hp["min_scale_crops"] == [0.14, 0.05] and hp["max_scale_crops"] == [1.0, 0.14]
        assert hp["arch"] == ("resnet50" if size == 128 else "resnet18")
    hp = _hp()
    assert hp["crops_for_assign"] == [0, 1] and hp["temperature"] == 0.1 and hp["epsilon"] == 0.05
    assert hp["sinkhorn_iterations"] == 3 and hp["feat_dim"] == 128 and hp["nmb_prototypes"] == 3000
    assert hp["queue_length"] == 0 and hp["epoch_queue_starts"] == 15 and hp["hidden_mlp"] == 2048
    assert hp["base_lr"] == 0.6 and hp["final_lr"] == 0.0006 and hp["wd"] == 1e-6 and hp["warmup_epochs"] == 0
    views = methods.SwAV.training_views(hp)
    assert views.kind == "swav" and views.options["crops"] == augment.MultiCrop(
        (2, 4), (32, 16), (0.14, 0.05), (1.0, 0.14))
    stored = config.normalise(dict(hp, size_crops=[32.0, 16.0]))
    assert stored["size_crops"] == [32, 16] and stored == config.normalise(hp)


@pytest.mark.parametrize("flags, message", [
    (["--nmb_crops", "2", "4", "--size_crops", "32"], "need one value per crop kind each (got 2, 1, 2, 2"),
    (["--crops_for_assign", "0", "6"], "--crops_for_assign 0 6 must name distinct crops 0..5"),
    (["--crops_for_assign", "1", "1"], "must name distinct crops"),
    (["--min_scale_crops", "0.5", "0.05", "--max_scale_crops", "0.4", "0.14"], "--min_scale_crops 0.5 is above"),
    (["--nmb_crops", "1", "--size_crops", "32", "--min_scale_crops", "0.1", "--max_scale_crops", "1",
      "--crops_for_assign", "0"], "makes 1 crop"),
    (["--arch", "amdim", "--ndf", "8", "--n_rkhs", "32", "--nmb_crops", "2", "4", "--size_crops", "32", "16",
      "--min_scale_crops", "0.14", "0.05", "--max_scale_crops", "1", "0.14"], "--arch amdim takes only 32 px inputs"),
    (["--max_scale_crops", "1", "1.5"], "--max_scale_crops: got 1.5, expected a finite number > 0 and <= 1"),
    (["--size_crops", "32", "2"], "--size_crops: got 2, expected an integer >= 4"),
    (["--temperature", "0"], "--temperature: got 0"),
    (["--moco-k", "10"], "--moco-k does not apply to --method swav"),
])
def test_inconsistent_flags_are_one_line_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--dataset", "C10", "--method", "swav", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


def test_other_methods_schedule_flags_are_refused(tmp_path):
    for i, (flags, message) in enumerate((
            (["--lr", "0.1"], "--learning_rate does not apply to --method swav"),
            (["--cos", "--warmup_updates", "5"], "--warmup_updates, --cos do not apply"),
            (["--warmup_epochs", "3", "--epochs", "2"], "--warmup_epochs 3 is longer than the run's 2 epochs"))):
        with pytest.raises(UserError, match=message):
            train.main(BASE + TINY_AMDIM + ["--method", "swav", "--output_dir", str(tmp_path), "--run_name",
                                            f"refused{i}", *flags])


# ----------------------------------------------------------------------------------------------------------
# Two gloo processes.

WORLD, B_LOCAL = 2, 3


def _codes_rank(dist, result_dir=None):
    """Each rank computes its codes with its own queue rows; the single-process reference runs in the test."""
    rank = dist.rank
    torch.manual_seed(0)
    swav = methods.SwAV(_hp(*TINY_AMDIM, "--queue_length", str(2 * WORLD * B_LOCAL), "--epoch_queue_starts", "0"))
    swav.start_update(0, 0, dist)
    mine = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    results = {}
    for step in range(3):                 # queue of 2 batches per process: full after 2 pushes, used at step 2
        everyone = _unit(2 * WORLD * B_LOCAL, 8, step).view(2, WORLD * B_LOCAL, 8)     # (crops, global batch)
        out = _out(torch.cat([everyone[0, mine], everyone[1, mine]]), swav)
        results[f"queue{step}"] = swav.queue.clone()
        results[f"codes{step}"] = [swav.codes(out["scores"][c * B_LOCAL:(c + 1) * B_LOCAL], c, dist)
                                   for c in (0, 1)]
        swav.after_step(out, dist)
    results["prototypes"] = swav.prototypes.weight.detach().clone()
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process job for both tests below: [rank 0's, rank 1's] {"codes": ..., "training": ...}."""
    return shared_job(tmp_path_factory, "swav_ranks", WORLD, codes=_codes_rank, training=_training_rank)


@pytest.mark.slow
def test_two_processes_give_the_codes_of_one_process_on_everyones_rows_with_and_without_a_queue(two_ranks):
    ranks = [r["codes"] for r in two_ranks]
    w = ranks[0]["prototypes"]
    for step in range(3):
        everyone = _unit(2 * WORLD * B_LOCAL, 8, step).view(2, WORLD * B_LOCAL, 8)
        queue = ranks[0][f"queue{step}"]
        assert torch.equal(queue, ranks[1][f"queue{step}"])                       # every process holds all
        for c in (0, 1):
            rows = everyone[c] @ w.t()
            if step == 2:        # every process's queue rows join: one process on all of them at once
                rows = torch.cat([queue[c] @ w.t(), rows])
            single = costs.sinkhorn(rows, 0.05, 3)[-WORLD * B_LOCAL:]
            got = torch.cat([ranks[r][f"codes{step}"][c] for r in range(WORLD)])
            assert torch.allclose(got, single, atol=1e-6), (step, c)
    # Rank r's queue rows hold its own embeddings, newest first (step 1's, then step 0's).
    final = ranks[0]["queue2"]
    for r in range(WORLD):
        mine = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
        for c in (0, 1):
            expected = torch.cat([_unit(2 * WORLD * B_LOCAL, 8, s).view(2, WORLD * B_LOCAL, 8)[c, mine]
                                  for s in (1, 0)])
            assert torch.equal(final[c, r * 2 * B_LOCAL:(r + 1) * 2 * B_LOCAL], expected)


def _training_rank(dist, result_dir):
    """Four real train.update calls of a tiny SwAV run under DDP (gloo) on resnet18 with 2 x 32 + 2 x 16 px crops,
    a queue of two global batches from the first update and prototypes frozen for the first two."""
    args = train.parse_args(BASE + TINY_RESNET + [
        "--method", "swav", "--nmb_crops", "2", "2", "--batch_size", "8", "--queue_length", "16",
        "--epoch_queue_starts", "0", "--freeze_prototypes_niters", "2", "--output_dir", result_dir,
        "--run_name", "ddp"])
    utils.seed_everything(args.seed)
    run, _ = train.setup(dist, args)
    start = run.model.prototypes.weight.detach().clone()
    losses = []
    for _, batch in zip(range(4), train.make_loaders(run)):
        values, stop = update_now(run, batch, epoch=0)
        assert values is not None and not stop
        losses.append(values["swav"])
    run.log.close()
    return {"state": run.model.state_dict(), "start": start, "losses": losses}


@pytest.mark.slow
def test_two_process_training_keeps_prototypes_and_queues_identical(two_ranks):
    a, b = (r["training"] for r in two_ranks)
    for key in ("prototypes.weight", "queue", "head.0.weight", "backbone.net.conv1.weight"):
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert torch.equal(a["start"], b["start"])
    assert not torch.allclose(a["state"]["prototypes.weight"], F.normalize(a["start"], dim=1))    # unfrozen: moved
    queue = a["state"]["queue"]
    assert queue.shape == (2, 16, 8) and bool(queue.ne(0).any(-1).all())       # full, both processes' rows
    assert all(math.isfinite(v) for v in a["losses"] + b["losses"]) and a["losses"] != b["losses"]
