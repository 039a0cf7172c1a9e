"""CMC: the method's memory banks, negatives and NCE constants against direct computations with costs.py, the
state a checkpoint carries, the config and recipe, and two gloo processes whose banks stay identical."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import config
import costs
import distributed
import imageops
import methods
import utils
from helpers import BASE, shared_job, update_now

N_DATA, FEAT, K = 20, 8, 6


def _hp(**over):
    hp = dict(method="cmc", arch="amdim", encoder_size=32, n_classes=3, ndf=8, n_rkhs=32, n_depth=1, use_bn=False,
              feat_dim=FEAT, nce_k=K, nce_t=0.07, nce_m=0.5, softmax=False, crop_low=0.2, n_data=N_DATA,
              rgb_mean=[0.5, 0.4, 0.3], rgb_std=[0.2, 0.25, 0.3], view="Lab")
    hp.update(over)
    return hp


def _views(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 32, 32, generator=g), torch.randn(b, 2, 32, 32, generator=g)


def _out(feats_l, feats_ab, index, seed=0):
    return {"l": feats_l, "ab": feats_ab, "index": index, "shared_seed": seed}


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_banks_start_uniform_within_the_seeds_bound_and_the_constants_unset():
    torch.manual_seed(0)
    cmc = methods.CMC(_hp(n_data=5000))
    bound = 1 / (FEAT / 3) ** 0.5
    for bank in (cmc.memory_l, cmc.memory_ab):
        assert bank.shape == (5000, FEAT)
        assert bank.abs().max() <= bound and bank.abs().max() > 0.99 * bound
        assert abs(bank.mean().item()) < 0.01 and bank.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.02)
    assert not torch.equal(cmc.memory_l, cmc.memory_ab)
    assert cmc.z_l.item() < 0 and cmc.z_ab.item() < 0


def test_column_0_is_always_the_positive_and_negatives_cover_the_bank():
    torch.manual_seed(1)
    cmc = methods.CMC(_hp())
    index = torch.tensor([3, 0, 19, 7])
    seen = set()
    for seed in range(50):
        idx = cmc.draw_indices(index, seed)
        assert idx.shape == (4, K + 1) and torch.equal(idx[:, 0], index)
        assert idx.min() >= 0 and idx.max() < N_DATA
        seen |= set(idx[:, 1:].flatten().tolist())
    assert seen == set(range(N_DATA))
    torch.manual_seed(2)            # the draw depends on the seed alone, not on torch's global generator
    assert torch.equal(cmc.draw_indices(index, 7), cmc.draw_indices(index, 7))
    assert not torch.equal(cmc.draw_indices(index, 7), cmc.draw_indices(index, 8))


def test_nce_terms_score_each_view_against_the_other_bank_and_fix_z_at_the_first_update():
    torch.manual_seed(2)
    cmc = methods.CMC(_hp())
    f_l, f_ab, index = _unit(4, FEAT, 3), _unit(4, FEAT, 4), torch.tensor([1, 5, 9, 2])
    terms = cmc.loss_terms(_out(f_l, f_ab, index, seed=10), distributed.Dist())
    idx = cmc.draw_indices(index, 10)
    s_l = costs.cmc_scores(f_l, cmc.memory_ab[idx], 0.07)           # L features against the ab bank
    s_ab = costs.cmc_scores(f_ab, cmc.memory_l[idx], 0.07)
    z_l, z_ab = s_l.mean().item() * N_DATA, s_ab.mean().item() * N_DATA
    assert cmc.z_l.item() == pytest.approx(z_l, rel=1e-6) and cmc.z_ab.item() == pytest.approx(z_ab, rel=1e-6)
    assert terms["cmc_l"].item() == pytest.approx(costs.cmc_nce_loss(s_l / z_l, N_DATA).item(), rel=1e-5)
    assert terms["cmc_ab"].item() == pytest.approx(costs.cmc_nce_loss(s_ab / z_ab, N_DATA).item(), rel=1e-5)
    # Later updates keep the constants, also in a model rebuilt from a checkpoint's state.
    cmc.loss_terms(_out(_unit(4, FEAT, 5), _unit(4, FEAT, 6), index), distributed.Dist())
    assert cmc.z_l.item() == pytest.approx(z_l, rel=1e-6)
    resumed = checkpoint.model_from({"model": cmc.state_dict(), "hyperparams": cmc.hyperparams})
    assert resumed.z_l.item() == cmc.z_l.item() and resumed.z_ab.item() == cmc.z_ab.item()
    resumed.loss_terms(_out(_unit(4, FEAT, 7), _unit(4, FEAT, 8), index), distributed.Dist())
    assert resumed.z_l.item() == cmc.z_l.item() and resumed.z_ab.item() == cmc.z_ab.item()
    # A model that has set its constants and then loads a state without them sets them again at its next update.
    cmc.load_state_dict(methods.CMC(_hp()).state_dict())
    assert cmc.z_l.item() < 0
    terms = cmc.loss_terms(_out(f_l, f_ab, index), distributed.Dist())
    assert cmc.z_l.item() > 0 and cmc.z_ab.item() > 0 and all(torch.isfinite(v) for v in terms.values())


def test_softmax_terms_are_cross_entropy_over_positive_and_negatives():
    torch.manual_seed(3)
    cmc = methods.CMC(_hp(softmax=True))
    f_l, f_ab, index = _unit(3, FEAT, 9), _unit(3, FEAT, 10), torch.tensor([4, 8, 0])
    terms = cmc.loss_terms(_out(f_l, f_ab, index, seed=11), distributed.Dist())
    idx = cmc.draw_indices(index, 11)
    logits_l = torch.log(costs.cmc_scores(f_l, cmc.memory_ab[idx], 0.07))
    assert terms["cmc_l"].item() == pytest.approx(costs.nce_softmax_loss(logits_l).item(), rel=1e-5)
    assert cmc.z_l.item() < 0                                       # the softmax loss has no constant


def test_bank_update_writes_the_batchs_rows_only_and_keeps_them_unit():
    torch.manual_seed(4)
    cmc = methods.CMC(_hp())
    f_l, f_ab, index = _unit(3, FEAT, 12), _unit(3, FEAT, 13), torch.tensor([2, 11, 17])
    before_l, before_ab = cmc.memory_l.clone(), cmc.memory_ab.clone()
    cmc.after_step(_out(f_l, f_ab, index), distributed.Dist())
    assert torch.allclose(cmc.memory_l[index], costs.memory_update(before_l[index], f_l, 0.5))
    assert torch.allclose(cmc.memory_ab[index], costs.memory_update(before_ab[index], f_ab, 0.5))
    assert torch.allclose(cmc.memory_l[index].norm(dim=1), torch.ones(3))
    others = torch.ones(N_DATA, dtype=torch.bool)
    others[index] = False
    assert torch.equal(cmc.memory_l[others], before_l[others]) and torch.equal(cmc.memory_ab[others],
                                                                              before_ab[others])


def test_forward_gives_unit_embeddings_and_features_read_both_backbones():
    torch.manual_seed(5)
    cmc = methods.CMC(_hp())
    out = cmc(_views(4, 14), distributed.Dist())
    assert out["l"].shape == (4, FEAT) and torch.allclose(out["l"].norm(dim=1), torch.ones(4))
    assert out["ab"].shape == (4, FEAT) and torch.allclose(out["ab"].norm(dim=1), torch.ones(4))
    assert out["logits"][0].shape == (4, 3)
    assert cmc.backbone_l.encoder.layer_list[0].conv.in_channels == 1
    assert cmc.backbone_ab.encoder.layer_list[0].conv.in_channels == 2
    assert cmc.features(torch.randn(4, 3, 32, 32)).shape == (4, cmc.n_features) and cmc.n_features == 64


def test_config_recipe_and_schedule():
    import train
    args = train.parse_args(["--dataset", "C10", "--method", "cmc", "--nce_k", "16384", "--softmax",
                             "--crop_low", "0.08"])
    hp = config.from_flags(args, 32, 10)
    assert hp["arch"] == "resnet18" and hp["nce_k"] == 16384 and hp["softmax"] is True and hp["crop_low"] == 0.08
    assert hp["feat_dim"] == 128 and hp["nce_t"] == 0.07 and hp["nce_m"] == 0.5
    with pytest.raises(SystemExit):
        train.parse_args(["--method", "cmc", "--nce_m", "1"])
    with pytest.raises(SystemExit):
        train.parse_args(["--method", "cmc", "--crop_low", "0"])
    assert methods.CMC.training_views(hp).kind == "cmc"
    recipe = methods.CMC.RECIPE
    assert recipe.epochs_and_milestones(args.dataset, None) == (400, (250, 300, 350))
    assert recipe.epochs_and_milestones(args.dataset, 240) == (240, (150, 180, 210))
    assert recipe.base_lr(args) == 0.03
    stored = config.normalise(_hp())
    assert stored["n_data"] == N_DATA and stored["rgb_std"] == [0.2, 0.25, 0.3]


# ----------------------------------------------------------------------------------------------------------
# Two gloo processes.

WORLD, N_LOCAL, STEPS = 2, 3, 4


def _batch(step):
    """The global batch of one update: features (WORLD * N_LOCAL, FEAT) of both views and distinct indices."""
    index = torch.randperm(N_DATA, generator=torch.Generator().manual_seed(step))[:WORLD * N_LOCAL]
    return _unit(WORLD * N_LOCAL, FEAT, 100 + step), _unit(WORLD * N_LOCAL, FEAT, 200 + step), index


def _rank(dist, result_dir=None):
    rank = dist.rank
    torch.manual_seed(0)
    cmc = methods.CMC(_hp())
    mine = slice(rank, None, WORLD)                     # the sampler deals the global batch round-robin
    losses = []
    for step in range(STEPS):
        f_l, f_ab, index = _batch(step)
        torch.manual_seed(1000 * step + rank)           # each rank's global generator differs, as in training
        out = _out(f_l[mine], f_ab[mine], index[mine], seed=step)
        terms = cmc.loss_terms(out, dist)
        losses.append(torch.stack([terms["cmc_l"], terms["cmc_ab"]]))
        cmc.after_step(out, dist)
    return {"memory_l": cmc.memory_l, "memory_ab": cmc.memory_ab, "z_l": cmc.z_l, "z_ab": cmc.z_ab,
            "losses": torch.stack(losses)}


@pytest.mark.slow
def test_two_processes_keep_identical_banks_equal_to_one_process(two_ranks):
    results = [r["banks"] for r in two_ranks]
    for key in ("memory_l", "memory_ab", "z_l", "z_ab"):
        assert torch.equal(results[0][key], results[1][key]), key
    assert results[0]["z_l"].item() > 0
    # One process on the whole batch: the same negatives, constants, banks, and losses equal to the mean of the
    # ranks' (each rank's is the mean over its rows, which DDP's gradient average then averages).
    torch.manual_seed(0)
    single = methods.CMC(_hp())
    for step in range(STEPS):
        f_l, f_ab, index = _batch(step)
        out = _out(f_l, f_ab, index, seed=step)
        terms = single.loss_terms(out, distributed.Dist())
        mean_of_ranks = (results[0]["losses"][step] + results[1]["losses"][step]) / 2
        assert torch.allclose(mean_of_ranks, torch.stack([terms["cmc_l"], terms["cmc_ab"]]), rtol=1e-5), step
        single.after_step(out, distributed.Dist())
    for key in ("z_l", "z_ab"):
        assert results[0][key].item() == pytest.approx(single.state_dict()[key].item(), rel=1e-6)
    assert torch.allclose(results[0]["memory_l"], single.memory_l, atol=1e-6)
    assert torch.allclose(results[0]["memory_ab"], single.memory_ab, atol=1e-6)


def _rank_training(dist, result_dir):
    """Three real train.update calls of a tiny CMC run under DDP (gloo), on the loader's batches.

    On resnet18, not the AMDIM encoder: as a backbone that one leaves its 5x5 and 7x7 heads without gradients,
    which DistributedDataParallel refuses from the second update on (so do MoCo --arch amdim runs)."""
    import train
    args = train.parse_args(BASE + ["--method", "cmc", "--arch", "resnet18", "--nce_k", "64", "--feat_dim", "16",
                                    "--batch_size", "16", "--output_dir", result_dir, "--run_name", "ddp"])
    utils.seed_everything(args.seed)
    run, _ = train.setup(dist, args)
    start = {k: getattr(run.model, k).clone() for k in ("memory_l", "memory_ab")}
    seen = []
    for _, batch in zip(range(3), train.make_loaders(run)):
        values, stop = update_now(run, batch, epoch=0)
        assert values is not None and not stop
        seen.append(batch[2])
    run.log.close()
    return {"start": start, "seen": torch.cat(seen), "memory_l": run.model.memory_l,
            "memory_ab": run.model.memory_ab, "z_l": run.model.z_l, "z_ab": run.model.z_ab}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process job for both two-process tests: [rank 0's, rank 1's] {"banks": ..., "training": ...}."""
    return shared_job(tmp_path_factory, "cmc_ranks", WORLD, banks=_rank, training=_rank_training)


@pytest.mark.slow
def test_two_process_training_keeps_both_banks_identical(two_ranks):
    a, b = (r["training"] for r in two_ranks)
    for key in ("memory_l", "memory_ab", "z_l", "z_ab"):
        assert torch.equal(a[key], b[key]), key
    assert a["z_l"].item() > 0 and a["z_ab"].item() > 0
    # Every row either process's batches touched moved (to unit length); the others kept their initial values.
    touched = torch.zeros(a["memory_l"].shape[0], dtype=torch.bool)
    touched[torch.cat([a["seen"], b["seen"]])] = True
    for key in ("memory_l", "memory_ab"):
        assert torch.allclose(a[key][touched].norm(dim=1), torch.ones(int(touched.sum())), atol=1e-5)
        assert torch.equal(a[key][~touched], a["start"][key][~touched])
        assert not torch.equal(a[key][touched], a["start"][key][touched])


def test_features_run_under_bfloat16_autocast():
    """The evaluation path converts RGB to Lab inside the model, so inside the training loop's autocast region:
    the conversion stays float32 (its in-place blends refused the autocast matmul's bfloat16 output on a GPU)."""
    torch.manual_seed(5)
    cmc = methods.CMC(_hp()).eval()
    x = torch.randn(2, 3, 32, 32)
    lab = imageops.rgb_to_lab((x * cmc.rgb_std + cmc.rgb_mean).clamp(0, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = cmc.features(x)
        assert torch.equal(imageops.rgb_to_lab((x * cmc.rgb_std + cmc.rgb_mean).clamp(0, 1)), lab)
    assert feats.shape == (2, cmc.n_features) and torch.isfinite(feats).all()


# ----------------------------------------------------------------------------------------------------------
# --view YCbCr: the seed's other split (train_CMC.py --view YCbCr: skimage's rgb2ycbcr, then its Normalize).

SEED_YCBCR_MEAN, SEED_YCBCR_STD = [116.151, 121.080, 132.342], [109.500, 111.855, 111.964]


def seed_ycbcr_views(images):
    """The seed's pipeline on uint8 (B, 3, H, W): skimage.color.rgb2ycbcr of the HWC uint8 image, ToTensor,
    Normalize(mean, std), split [1, 2]."""
    color = pytest.importorskip("skimage.color")
    out = []
    for img in images:
        ycbcr = torch.tensor(color.rgb2ycbcr(img.permute(1, 2, 0).numpy()), dtype=torch.float64).permute(2, 0, 1)
        mean, std = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in (SEED_YCBCR_MEAN, SEED_YCBCR_STD))
        out.append((ycbcr - mean) / std)
    out = torch.stack(out).float()
    return out[:, :1], out[:, 1:]


def test_ycbcr_split_matches_the_seeds_skimage_conversion_and_normalisation():
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y, cbcr = seed_ycbcr_views(images)
    got = imageops.to_colour_space(images, "YCbCr")
    assert torch.allclose(got[:, :1], y, atol=1e-5) and torch.allclose(got[:, 1:], cbcr, atol=1e-5)
    buffer = images.float() / 255                                  # the batched views' in-place form
    assert torch.allclose(imageops.to_colour_space_(buffer, "YCbCr"), got, atol=1e-6)
    assert torch.allclose(buffer, got, atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_ycbcr_views_are_the_whole_image_split_at_area_one(batched):
    # Area 1 of a square image: the crop is the whole image, resized to S, mirrored or not.
    import augment
    from PIL import Image
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y, cbcr = seed_ycbcr_views(images)
    torch.manual_seed(0)
    views = augment.make_views("cmc", "cifar", batched=batched, crop_low=1.0, colour="YCbCr")
    if batched:
        got = views(images)
    else:
        pairs = [views(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images]
        got = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    for view, want in zip(got, (y, cbcr)):
        for v, w in zip(view, want):
            assert torch.allclose(v, w, atol=1e-4) or torch.allclose(v, w.flip(-1), atol=1e-4)


def test_ycbcr_cmc_reads_y_and_cbcr_and_older_checkpoints_are_lab():
    torch.manual_seed(6)
    cmc = methods.CMC(_hp(view="YCbCr")).eval()
    assert methods.CMC.training_views(cmc.hyperparams).options["colour"] == "YCbCr"
    rgb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    x = (rgb.float() / 255 - cmc.rgb_mean) / cmc.rgb_std
    y, cbcr = seed_ycbcr_views(rgb)
    expected = torch.cat([cmc.backbone_l(y), cmc.backbone_ab(cbcr)], dim=1)
    assert torch.allclose(cmc.features(x), expected, atol=1e-4)
    old = {k: v for k, v in cmc.hyperparams.items() if k != "view"}        # written before --view existed
    assert checkpoint.hyperparams({"hyperparams": old})["view"] == "Lab"
    with pytest.raises(utils.UserError, match="--view RGB is out of range: expected one of Lab, YCbCr"):
        config.validate(dict(cmc.hyperparams, view="RGB"))


# ----------------------------------------------------------------------------------------------------------
# CMC's own ResNets (--arch resnet18v1..v3, resnet50v1..v3; the seed's --model).

def bottleneck_parameters(in_channels, width, blocks=(3, 4, 6, 3)):
    """Parameters (weights and BatchNorm affine) of CMC's models/resnet.py Bottleneck ResNet without its fc,
    counted layer by layer: a 7x7 stem 64 wide, stage i's planes p = 64 * width * 2**i (1x1 p, 3x3 p, 1x1 4p),
    a 1x1 projection on each stage's first block."""
    total = in_channels * 64 * 49 + 2 * 64
    inplanes = 64
    for i, n in enumerate(blocks):
        p = int(64 * width) * 2 ** i
        for j in range(n):
            total += inplanes * p + 2 * p + 9 * p * p + 2 * p + p * 4 * p + 2 * 4 * p
            if j == 0:
                total += inplanes * 4 * p + 2 * 4 * p
            inplanes = 4 * p
    return total


@pytest.mark.parametrize("arch, width", [("resnet50v1", 0.5), ("resnet50v2", 1.0), ("resnet50v3", 2.0)])
def test_cmc_resnets_have_the_seeds_parameter_counts_at_224_px(arch, width):
    from model import ResNetTrunk
    for channels in (1, 2):
        trunk = ResNetTrunk(arch, 224, channels)
        assert sum(p.numel() for p in trunk.parameters()) == bottleneck_parameters(channels, width)
        assert trunk.width == int(2048 * width)
    # resnet50v1: 5,896,256 (L) + 5,899,392 (ab) parameters before the fc heads.
    assert bottleneck_parameters(1, 0.5) == 5896256


def test_cmc_resnet_variants_build_at_our_sizes_and_only_for_cmc():
    torch.manual_seed(0)
    for size in (32, 64, 128):
        cmc = methods.CMC(_hp(arch="resnet18v1", encoder_size=size))
        assert cmc.n_features == 2 * 256
        assert cmc.features(torch.randn(2, 3, size, size)).shape == (2, 512)
    import train
    args = train.parse_args(["--method", "moco", "--dataset", "IN128"])
    args.arch = "resnet50v1"
    with pytest.raises(utils.UserError, match="applies to --method cmc; use resnet50 for --method moco"):
        config.from_flags(args, 128, 10)
    args = train.parse_args(["--method", "cmc", "--model", "resnet50v3", "--dataset", "IN128"])   # the seed's flag
    assert config.from_flags(args, 128, 10)["arch"] == "resnet50v3"


def test_cmc_alexnet_half_has_the_seeds_parameters_and_pooling():
    from model import AlexNetHalf
    # alexnet_half(in_channel), counted layer by layer: five bias-free convolutions with BatchNorm, fc6 and fc7
    # with BatchNorm1d; fc8 is our head_l / head_ab.
    for channels in (1, 2):
        convs = [(channels, 48, 11), (48, 128, 5), (128, 192, 3), (192, 192, 3), (192, 128, 3)]
        expected = sum(n_in * n_out * k * k + 2 * n_out for n_in, n_out, k in convs)
        expected += (4608 * 2048 + 2048 + 2 * 2048) + (2048 * 2048 + 2048 + 2 * 2048)
        assert sum(p.numel() for p in AlexNetHalf(channels, 224).parameters()) == expected
    # (14,578,704 parameters for the L half, 14,584,512 for ab.)
    # The adaptive last pool is the seed's MaxPool2d(3, 2) on its 13 x 13 map at 224 px.
    x = torch.randn(2, 128, 13, 13)
    assert torch.equal(torch.nn.AdaptiveMaxPool2d(6)(x), torch.nn.MaxPool2d(3, 2)(x))
    for size, first in ((224, 4), (128, 2), (64, 1), (32, 1)):
        net = AlexNetHalf(1, size).eval()
        assert net.conv_block_1[0].stride == (first, first)
        assert net.probe(torch.randn(2, 1, size, size)).shape == (2, 4608)
        assert net(torch.randn(2, 1, size, size)).shape == (2, 2048)


def test_cmc_with_alexnet_classifies_its_probe_layer():
    torch.manual_seed(0)
    cmc = methods.CMC(_hp(arch="alexnet_cmc")).eval()
    assert cmc.n_features == 2 * 4608
    out = cmc(_views(2, 3), distributed.Dist())
    assert out["l"].shape == (2, FEAT) and out["logits"][0].shape == (2, 3)
    x = torch.rand(2, 3, 32, 32)
    lab = imageops.to_colour_space(x * cmc.rgb_std + cmc.rgb_mean, "Lab")
    expected = torch.cat([cmc.backbone_l.probe(lab[:, :1]), cmc.backbone_ab.probe(lab[:, 1:])], dim=1)
    assert torch.allclose(cmc.features(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# --layer N: the seed's LinearProbing.py probes an intermediate layer.

# LinearProbing.py's classifiers' inputs (models/LinearModel.py: nChannels * pool_size ** 2 of cat(L, ab) maps) at
# 224 px: LinearClassifierAlexNet layers 1-5, LinearClassifierResNet(width 1) on resnet50v1 layers 1-6.
SEED_PROBE_WIDTHS = {"alexnet_cmc": {1: 96 * 10 ** 2, 2: 256 * 6 ** 2, 3: 384 * 5 ** 2, 4: 384 * 5 ** 2,
                                     5: 256 * 6 ** 2},
                     "resnet50v1": {1: 128 * 8 ** 2, 2: 256 * 6 ** 2, 3: 512 * 4 ** 2, 4: 1024 * 3 ** 2,
                                    5: 2048 * 7 ** 2, 6: 2048}}


def seed_probe(backbones, x_l, x_ab, layer):
    """The seed's probe written out: each half's forward(x, layer) run module by module in its own order (AlexNet's
    conv blocks; the ResNet's conv1, bn1, relu, maxpool, layer1-4, then global pooling), the halves' maps
    concatenated along channels and then the classifier's pooling (AlexNet's max, the ResNet's average; none at
    the last map) and Flatten."""
    maps = []
    for net, x in zip(backbones, (x_l, x_ab)):
        if hasattr(net, "conv_block_1"):
            modules = [getattr(net, f"conv_block_{i}") for i in range(1, 6)]
        else:
            r = net.net
            modules = [torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool), r.layer1, r.layer2, r.layer3, r.layer4,
                       torch.nn.AdaptiveAvgPool2d(1)]
        for module in modules[:layer]:
            x = module(x)
        maps.append(x)
    feat = torch.cat(maps, dim=1)
    if layer < 5:
        alexnet = hasattr(backbones[0], "conv_block_1")
        size = ({1: 10, 2: 6, 3: 5, 4: 5} if alexnet else {1: 8, 2: 6, 3: 4, 4: 3})[layer]
        feat = (torch.nn.AdaptiveMaxPool2d if alexnet else torch.nn.AdaptiveAvgPool2d)(size)(feat)
    return feat.flatten(1)


@pytest.mark.parametrize("arch", ["alexnet_cmc", "resnet50v1"])
def test_probe_layers_give_the_seeds_classifier_inputs_at_224_px(arch):
    torch.manual_seed(0)
    cmc = methods.CMC(_hp(arch=arch, encoder_size=224)).eval()
    assert cmc.probe_layers(cmc.hyperparams) == tuple(SEED_PROBE_WIDTHS[arch])
    x_l, x_ab = torch.randn(2, 1, 224, 224), torch.randn(2, 2, 224, 224)
    with torch.no_grad():
        for layer, width in SEED_PROBE_WIDTHS[arch].items():
            cmc.reset_evaluator(3, "cmc", layer)
            assert cmc.n_features == width
            ours = torch.cat([cmc.backbone_l.probe(x_l, layer), cmc.backbone_ab.probe(x_ab, layer)], dim=1)
            assert torch.allclose(ours, seed_probe((cmc.backbone_l, cmc.backbone_ab), x_l, x_ab, layer), atol=1e-5)


@pytest.mark.parametrize("arch, size", [("alexnet_cmc", 32), ("resnet18v1", 32), ("resnet18v2", 128)])
def test_probe_layers_at_our_sizes_follow_the_seeds_modules(arch, size):
    torch.manual_seed(0)
    cmc = methods.CMC(_hp(arch=arch, encoder_size=size)).eval()
    x = torch.rand(2, 3, size, size)
    split = imageops.to_colour_space(x * cmc.rgb_std + cmc.rgb_mean, "Lab")
    with torch.no_grad():
        for layer in cmc.probe_layers(cmc.hyperparams):
            cmc.reset_evaluator(3, "cmc", layer)
            expected = seed_probe((cmc.backbone_l, cmc.backbone_ab), split[:, :1], split[:, 1:], layer)
            feats = cmc.features(x)
            assert feats.shape == (2, cmc.n_features) == expected.shape
            assert torch.allclose(feats, expected, atol=1e-5)
            assert cmc.classify(x)[0].shape == (2, 3)


def test_classifiers_at_a_layer_train_score_and_resume_only_at_it(tmp_path, capsys, monkeypatch):
    import train
    from helpers import DIGITS, load_test_py, one_line_error, run_entry_point, small_digits
    small_digits(monkeypatch, n_train=200, n_test=100)
    argv = DIGITS + ["--method", "cmc", "--arch", "alexnet_cmc", "--nce_k", "16", "--output_dir", str(tmp_path),
                     "--run_name", "cls", "--classifiers", "--protocol", "cmc", "--epochs", "1"]
    acc = train.main(argv + ["--layer", "3"])
    path = tmp_path / "cls" / "amdim_cpt.pth"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyperparams"]["probe_layer"] == 3
    assert ckpt["model"]["evaluator.linear.weight"].shape == (10, 384 * 5 ** 2)
    capsys.readouterr()
    assert run_entry_point(load_test_py().main, [str(path), "--dataset", "DIGITS", "--num_workers", "0",
                                                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["top1_linear"], result["top5_linear"]) == (acc["top1_linear"], acc["top5_linear"])

    saved = os.path.getmtime(path)
    one_line_error(capsys, train.main, argv + ["--epochs", "2", "--layer", "2"], "--layer 2", "--layer 3")
    one_line_error(capsys, train.main, argv + ["--epochs", "2", "--layer", "5"], "--layer 5", "--layer 3")
    assert os.path.getmtime(path) == saved
    base = DIGITS + ["--output_dir", str(tmp_path), "--classifiers", "--epochs", "1"]
    one_line_error(capsys, train.main, base + ["--method", "cmc", "--arch", "alexnet_cmc", "--layer", "6"],
                   "--layer 6", "choose one of 1, 2, 3, 4, 5")
    one_line_error(capsys, train.main, base + ["--method", "moco", "--arch", "resnet18", "--layer", "2"],
                   "--layer 2", "drop --layer")
    with pytest.raises(SystemExit):
        train.parse_args(DIGITS + ["--layer", "2"])
    assert "add --classifiers" in capsys.readouterr().err
