"""The seed repositories' checkpoint files (seeds.py) through test.py, hubconf.py and train.py --classifiers.

Fixtures are written in each seed's layout with random values: the ResNets are torchvision's (MoCo builds them
from torchvision; SwAV's and CMC's own ResNets use torchvision's entry names, CMC with 1- and 2-channel stems),
and the entries around them are the manifest below, read once from the seeds' code. Features are checked against
the same weights loaded by hand, the way each seed's hubconf.py or evaluation script loads them.
"""
import argparse
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

import checkpoint
import datasets
import hubconf
import train
from imageops import normalize_lab, rgb_to_lab
from tests.helpers import load_test_py, one_line_error, run_entry_point

# Entries besides the ResNet's, from the seeds' code: name -> shape (d: embedding, k: queue, h: the ResNet's width).
MOCO_MLP_HEAD = {"fc.0.weight": ("h", "h"), "fc.0.bias": ("h",), "fc.2.weight": ("d", "h"), "fc.2.bias": ("d",)}
MOCO_HEAD = {"fc.weight": ("d", "h"), "fc.bias": ("d",)}                      # without --mlp: torchvision's fc
MOCO_STATE = {"queue": ("d", "k"), "queue_ptr": (1,)}                         # moco/builder.py's buffers
SWAV_HEAD = {"projection_head.0.weight": ("m", "h"), "projection_head.0.bias": ("m",),
             "projection_head.1.weight": ("m",), "projection_head.1.bias": ("m",),
             "projection_head.1.running_mean": ("m",), "projection_head.1.running_var": ("m",),
             "projection_head.1.num_batches_tracked": (), "projection_head.3.weight": ("d", "m"),
             "projection_head.3.bias": ("d",)}                                  # src/resnet50.py, hidden_mlp m
CMC_CONTRAST = {"params": (5,), "memory_l": ("n", "d"), "memory_ab": ("n", "d")}   # NCE/NCEAverage.py


def shape(spec, **sizes):
    return tuple(sizes[s] if isinstance(s, str) else s for s in spec)


def random_entries(manifest, generator, **sizes):
    out = {}
    for name, spec in manifest.items():
        if name.endswith("num_batches_tracked") or name == "queue_ptr":
            out[name] = torch.tensor(7) if not spec else torch.zeros(spec, dtype=torch.long) + 3
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape(spec, **sizes), generator=generator) + 0.5
        else:
            out[name] = torch.randn(shape(spec, **sizes), generator=generator) * 0.05
    return out


def torchvision_resnet(arch, seed, in_channels=3, num_classes=1000):
    """A torchvision ResNet with random weights and BatchNorm statistics (so that loading them shows)."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def prefixed(prefix, state):
    return {prefix + k: v for k, v in state.items()}


def moco_file(path, arch="resnet18", dim=16, k=32, mlp=True):
    """main_moco.py [--mlp]: {"epoch", "arch", "state_dict" (DistributedDataParallel's module.), "optimizer"}."""
    g = torch.Generator().manual_seed(1)
    q, k_net = torchvision_resnet(arch, 1), torchvision_resnet(arch, 2)
    width = q.fc.in_features

    def trunk(net):
        return {n: v for n, v in net.state_dict().items() if not n.startswith("fc.")}

    head = MOCO_MLP_HEAD if mlp else MOCO_HEAD
    state = {**prefixed("module.encoder_q.", trunk(q)),
             **prefixed("module.encoder_q.", random_entries(head, g, h=width, d=dim)),
             **prefixed("module.encoder_k.", trunk(k_net)),
             **prefixed("module.encoder_k.", random_entries(head, g, h=width, d=dim)),
             **prefixed("module.", random_entries(MOCO_STATE, g, d=dim, k=k))}
    torch.save({"epoch": 200, "arch": arch, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0]}]}}, path)
    return state


def swav_file(path, prototypes=(30,), hidden=64, dim=16):
    """The SwAV model zoo's files: a bare state_dict with module. (DeepCluster-v2: several prototype sets)."""
    g = torch.Generator().manual_seed(3)
    net = torchvision_resnet("resnet50", 3)
    state = {n: v for n, v in net.state_dict().items() if not n.startswith("fc.")}
    state.update(random_entries(SWAV_HEAD, g, h=2048, m=hidden, d=dim))
    if len(prototypes) == 1:
        state["prototypes.weight"] = torch.randn(prototypes[0], dim, generator=g)
    else:
        state.update({f"prototypes.prototypes{i}.weight": torch.randn(n, dim, generator=g)
                      for i, n in enumerate(prototypes)})
    state = prefixed("module.", state)
    torch.save(state, path)
    return state


def cmc_file(path, n_data=20, dim=16, with_opt=True):
    """train_CMC.py --model resnet18v2: {"opt", "model" (encoder.module.l_to_ab / ab_to_l), "contrast", ...}."""
    g = torch.Generator().manual_seed(4)
    nets = torchvision_resnet("resnet18", 5, 1, num_classes=dim), torchvision_resnet("resnet18", 6, 2, dim)
    model = {**prefixed("encoder.module.l_to_ab.", nets[0].state_dict()),
             **prefixed("encoder.module.ab_to_l.", nets[1].state_dict())}
    contrast = random_entries(CMC_CONTRAST, g, n=n_data, d=dim)
    contrast["params"] = torch.tensor([8.0, 0.07, 123.5, 456.5, 0.5])
    state = {"model": model, "contrast": contrast, "epoch": 240,
             "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0]}]}}
    if with_opt:
        state["opt"] = argparse.Namespace(model="resnet18v2", softmax=True, nce_k=8, layer=6)
    torch.save(state, path)
    return nets


def by_hand(state, prefix, arch, in_channels=3):
    """The seeds' own way to read an encoder: strip the prefix, load into torchvision's ResNet (strict=False, as
    SwAV's hubconf.py), drop the head: (B, C, S, S) -> pooled features."""
    net = torchvision_resnet(arch, 99, in_channels)
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and ".fc." not in "." + k}
    missing, _ = net.load_state_dict(own, strict=False)
    assert set(missing) <= {"fc.weight", "fc.bias"}
    net.fc = nn.Identity()
    return net.eval()


def images(n=4, size=128, channels=3, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def image_folder(root, n_classes=2, per_class=3, size=40):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in range(n_classes):
            os.makedirs(root / split / f"c{c}")
            for i in range(per_class):
                pixels = rng.randint(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return str(root)


# ----------------------------------------------------------------------------------------------------------
# Features equal the seeds' own reading.

def test_moco_file_features_head_queue_equal_the_seed_layout(tmp_path):
    path = tmp_path / "checkpoint_0199.pth.tar"
    state = moco_file(path)
    enc = hubconf.encoder(str(path))
    x = images()
    ours = enc.features(x)
    seed = by_hand(state, "module.encoder_q.", "resnet18")(x)
    assert torch.equal(ours, seed)
    method = enc.method
    assert method.hyperparams["mlp"] and method.hyperparams["moco_dim"] == 16
    assert method.hyperparams["moco_k"] == 32 and method.hyperparams["protocol"] == "moco"
    # The head is the seed's fc (Linear, ReLU, Linear); the key encoder is encoder_k; the queue is (K, dim).

    def fc(h, p):
        hidden = F.relu(F.linear(h, state[p + "fc.0.weight"], state[p + "fc.0.bias"]))
        return F.linear(hidden, state[p + "fc.2.weight"], state[p + "fc.2.bias"])
    assert torch.allclose(method.head(ours), fc(seed, "module.encoder_q."), atol=1e-6)
    seed_k = by_hand(state, "module.encoder_k.", "resnet18")(x)
    assert torch.equal(method.backbone_k(x), seed_k)
    assert torch.allclose(method.head_k(seed_k), fc(seed_k, "module.encoder_k."), atol=1e-6)
    assert torch.equal(method.queue, state["module.queue"].t()) and int(method.queue_ptr) == 3


def test_moco_file_without_mlp_has_a_linear_head(tmp_path):
    path = tmp_path / "checkpoint_0199.pth.tar"
    state = moco_file(path, mlp=False)
    model = checkpoint.load_model(str(path))
    assert not model.hyperparams["mlp"] and isinstance(model.head, nn.Linear)
    assert torch.equal(model.head.weight, state["module.encoder_q.fc.weight"])
    assert torch.equal(model.head_k.bias, state["module.encoder_k.fc.bias"])


def test_swav_zoo_file_features_and_head_equal_the_seed_layout(tmp_path):
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    state = swav_file(path)
    enc = hubconf.encoder(str(path))
    x = images(n=2)
    ours = enc.features(x)
    # SwAV's hubconf: every "module." removed, loaded with strict=False into torchvision's resnet50.
    seed = by_hand({k.replace("module.", ""): v for k, v in state.items()}, "", "resnet50")(x)
    assert torch.equal(ours, seed)
    hp = enc.method.hyperparams
    assert (hp["hidden_mlp"], hp["feat_dim"], hp["nmb_prototypes"], hp["protocol"]) == (64, 16, 30, "swav")
    # forward_head: projection head (Linear, BN in eval mode, ReLU, Linear), L2 normalisation, prototypes.
    p = "module.projection_head."
    hidden = F.linear(seed, state[p + "0.weight"], state[p + "0.bias"])
    hidden = (hidden - state[p + "1.running_mean"]) / torch.sqrt(state[p + "1.running_var"] + 1e-5)
    hidden = F.relu(hidden * state[p + "1.weight"] + state[p + "1.bias"])
    z = F.normalize(F.linear(hidden, state[p + "3.weight"], state[p + "3.bias"]), dim=1)
    assert torch.allclose(F.normalize(enc.method.head(ours), dim=1), z, atol=1e-5)
    assert torch.equal(enc.method.prototypes.weight, state["module.prototypes.weight"])


def test_deepcluster_v2_file_becomes_deepclusterv2_with_every_prototype_head(tmp_path):
    path = tmp_path / "deepclusterv2_800ep_pretrain.pth.tar"
    state = swav_file(path, prototypes=(30, 20, 10))
    model = checkpoint.load_model(str(path))
    assert model.hyperparams["method"] == "deepclusterv2" and model.hyperparams["nmb_prototypes"] == [30, 20, 10]
    for i, head in enumerate(model.prototypes):
        assert torch.equal(head.weight, state[f"module.prototypes.prototypes{i}.weight"])
    x = images(n=2)
    seed = by_hand({k.replace("module.", ""): v for k, v in state.items()}, "", "resnet50")(x)
    assert torch.equal(hubconf.encoder(str(path)).features(x), seed)


def test_cmc_file_features_banks_and_options_equal_the_seed_layout(tmp_path):
    path = tmp_path / "ckpt_epoch_240.pth"
    nets = cmc_file(path)
    enc = hubconf.encoder(str(path))
    method = enc.method
    hp = method.hyperparams
    assert (hp["arch"], hp["feat_dim"], hp["n_data"], hp["nce_k"], hp["softmax"]) == ("resnet18", 16, 20, 8, True)
    assert (hp["nce_t"], hp["nce_m"], hp["protocol"]) == (0.07, 0.5, "cmc")
    assert float(method.z_l) == 123.5 and float(method.z_ab) == 456.5
    # The seed's linear probe at layer 6: cat(l_to_ab(L), ab_to_l(ab)) pooled, on Lab normalised as training.
    rgb = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (hp["rgb_mean"], hp["rgb_std"]))
    x = (rgb - mean) / std
    lab = normalize_lab(rgb_to_lab(rgb))
    for net in nets:
        net.fc = nn.Identity()
    seed = torch.cat([nets[0](lab[:, :1]), nets[1](lab[:, 1:])], dim=1)
    assert torch.allclose(enc.features(x), seed, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Scored through test.py: a seed's trained classifiers, and encoders without one.

def hand_accuracy(net, fc_weight, fc_bias, root):
    splits = datasets.build_splits("FOLDER", root, "classifiers", image_size=128, cache_images="off")
    correct = total = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(splits.test, batch_size=8):
            logits = F.linear(net(x), fc_weight, fc_bias)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def test_moco_lincls_file_is_scored_as_trained(tmp_path, capsys):
    """main_lincls.py's checkpoint: a module.-prefixed torchvision ResNet-50 with its trained fc."""
    net = torchvision_resnet("resnet50", 7, num_classes=2)
    state = prefixed("module.", net.state_dict())
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": state, "best_acc1": torch.tensor([67.7]),
                "optimizer": {"state": {}, "param_groups": []}}, path)
    root = image_folder(tmp_path / "data")
    capsys.readouterr()
    result = load_test_py().main([str(path), "--dataset", "FOLDER", "--input_dir", root, "--device", "cpu",
                                  "--json", "--num_workers", "0"])
    assert result["protocol"] == "moco" and result["seed_format"] == "moco_lincls"
    expected = hand_accuracy(by_hand(state, "module.", "resnet50"), state["module.fc.weight"],
                             state["module.fc.bias"], root)
    assert result["top1_linear"] == pytest.approx(expected) and result["n_images"] == 6
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top5_linear"] == 100.0


def test_seed_classifier_only_files_score_with_linear_classifier(tmp_path):
    """SwAV's eval_linear.py keeps the classifier alone: test.py takes it with the trunk's file."""
    trunk_path, linear_path = tmp_path / "swav_800ep_pretrain.pth.tar", tmp_path / "checkpoint.pth.tar"
    state = swav_file(trunk_path)
    g = torch.Generator().manual_seed(8)
    linear = {"module.linear.weight": torch.randn(2, 2048, generator=g) * 0.05, "module.linear.bias": torch.zeros(2)}
    torch.save({"epoch": 100, "state_dict": linear, "optimizer": {}, "scheduler": {}, "best_acc": 75.3},
               linear_path)
    root = image_folder(tmp_path / "data")
    result = load_test_py().main([str(trunk_path), "--linear_classifier", str(linear_path), "--dataset", "FOLDER",
                                  "--input_dir", root, "--device", "cpu", "--json", "--num_workers", "0"])
    seed = by_hand({k.replace("module.", ""): v for k, v in state.items()}, "", "resnet50")
    assert result["protocol"] == "swav"
    assert result["top1_linear"] == pytest.approx(hand_accuracy(seed, linear["module.linear.weight"],
                                                                linear["module.linear.bias"], root))


def test_cmc_probe_file_attaches_to_the_cmc_encoder(tmp_path):
    path, probe_path = tmp_path / "ckpt_epoch_240.pth", tmp_path / "resnet18v2_layer6.pth"
    nets = cmc_file(path)
    weight = torch.randn(3, 1024)
    torch.save({"opt": argparse.Namespace(layer=6, model="resnet18v2"), "epoch": 60, "best_acc1": 50.0,
                "classifier": {"classifier.LiniearClassifier.weight": weight,
                               "classifier.LiniearClassifier.bias": torch.ones(3)}, "optimizer": {}}, probe_path)
    model = checkpoint.load_model(str(path)).eval()
    load_test_py().attach_classifier(model, str(probe_path))
    assert model.hyperparams["protocol"] == "cmc" and model.hyperparams["n_classes"] == 3
    x = images(n=2)
    assert torch.allclose(model.classify(x)[0], F.linear(model.features(x), weight, torch.ones(3)), atol=1e-5)

    # A --layer 3 probe (stage 2's maps of both halves average-pooled to 4 x 4 by LinearClassifierResNet) reads
    # that layer: (128 + 128) * 4 * 4 inputs.
    weight = torch.randn(3, 4096) * 0.01
    torch.save({"opt": argparse.Namespace(layer=3, model="resnet18v2"), "epoch": 60, "best_acc1": 50.0,
                "classifier": {"classifier.LiniearClassifier.weight": weight,
                               "classifier.LiniearClassifier.bias": torch.zeros(3)}, "optimizer": {}}, probe_path)
    load_test_py().attach_classifier(model, str(probe_path))
    assert model.hyperparams["probe_layer"] == 3
    hp = model.hyperparams
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (hp["rgb_mean"], hp["rgb_std"]))
    lab = normalize_lab(rgb_to_lab((x * std + mean).clamp(0, 1)))
    maps = []
    for net, view in zip(nets, (lab[:, :1], lab[:, 1:])):
        maps.append(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(view)))))))
    seed = nn.AdaptiveAvgPool2d(4)(torch.cat(maps, dim=1)).flatten(1)
    assert torch.allclose(model.classify(x)[0], F.linear(seed, weight), atol=1e-4)


def test_encoder_only_seed_file_scores_with_knn_and_says_how_to_train_a_classifier(tmp_path, capsys):
    path = tmp_path / "checkpoint_0199.pth.tar"
    moco_file(path)
    root = image_folder(tmp_path / "data")
    argv = [str(path), "--dataset", "FOLDER", "--input_dir", root, "--device", "cpu", "--num_workers", "0"]
    one_line_error(capsys, load_test_py().main, argv, "without a trained classifier", "--knn",
                   "--classifiers --checkpoint_path", "--protocol moco")
    result = load_test_py().main(argv + ["--knn", "2", "--json"])
    assert "top1_linear" not in result and 0 <= result["top1_knn"] <= 100 and result["n_images"] == 6


def test_classifiers_train_on_a_seed_file_and_test_py_scores_them(tmp_path):
    path = tmp_path / "checkpoint_0199.pth.tar"
    moco_file(path)
    root = image_folder(tmp_path / "data", per_class=4)
    assert run_entry_point(train.main, [
        "--classifiers", "--checkpoint_path", str(path), "--protocol", "moco", "--dataset", "FOLDER",
        "--input_dir", root, "--image_size", "128", "--output_dir", str(tmp_path / "runs"), "--run_name", "lin",
        "--epochs", "1", "--batch_size", "4", "--num_workers", "0", "--device", "cpu"]) == 0
    out = tmp_path / "runs" / "lin" / "amdim_cpt.pth"
    trained = checkpoint.load_model(str(out))
    seed = checkpoint.load_model(str(path))
    for name, value in seed.backbone.state_dict().items():      # the frozen encoder is the file's
        assert torch.equal(trained.backbone.state_dict()[name], value), name
    result = load_test_py().main([str(out), "--dataset", "FOLDER", "--input_dir", root, "--device", "cpu",
                                  "--json", "--num_workers", "0"])
    assert result["protocol"] == "moco" and 0 <= result["top1_linear"] <= 100


# ----------------------------------------------------------------------------------------------------------
# What cannot be read says so in one line.

def test_unknown_and_unsupported_files_give_one_line_errors(tmp_path, capsys):
    test_py = load_test_py().main

    def argv(p, *more):
        return [str(p), "--dataset", "FOLDER", "--input_dir", str(tmp_path), "--device", "cpu", *more]
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.ones(1), "step": 3}, other)
    one_line_error(capsys, test_py, argv(other), "not a checkpoint this code reads", "step, weights",
                   "docs/checkpoints.md")
    linear = tmp_path / "linear.pth.tar"
    torch.save({"state_dict": {"module.linear.weight": torch.ones(2, 2048), "module.linear.bias": torch.ones(2)}},
               linear)
    one_line_error(capsys, test_py, argv(linear), "without its encoder", "eval_linear.py", "--linear_classifier")
    moco = tmp_path / "moco.pth.tar"
    moco_file(moco)
    one_line_error(capsys, test_py, argv(moco, "--linear_classifier", str(linear)), "reads 2048 features",
                   "gives 512")
    one_line_error(capsys, test_py, argv(moco, "--linear_classifier", str(other)), "not a seed's linear classifier")


def test_wide_and_unsupported_backbones_are_named(tmp_path, capsys):
    state = {k: v for k, v in torchvision_resnet("resnet50", 9).state_dict().items() if not k.startswith("fc.")}
    state["conv1.weight"] = torch.zeros(128, 3, 7, 7)             # SwAV's RN50-w2 (widen 2): every stage twice
    state["layer1.0.conv1.weight"] = torch.zeros(128, 128, 1, 1)
    state.update({"projection_head.weight": torch.zeros(16, 4096), "prototypes.weight": torch.zeros(30, 16)})
    wide = tmp_path / "swav_RN50w2_400ep_pretrain.pth.tar"
    torch.save(prefixed("module.", state), wide)
    one_line_error(capsys, load_test_py().main, [str(wide), "--device", "cpu"], "2x as wide", "standard width")


def alexnet_half_manifest(in_channels, feat_dim=16):
    """CMC's models/alexnet.py alexnet_half, written out: names and shapes."""
    shapes = {}
    convs = [(in_channels, 48, 11), (48, 128, 5), (128, 192, 3), (192, 192, 3), (192, 128, 3)]
    for i, (n_in, n_out, k) in enumerate(convs, 1):
        shapes.update({f"conv_block_{i}.0.weight": (n_out, n_in, k, k), **bn(f"conv_block_{i}.1", n_out)})
    for name, n_in in (("fc6", 4608), ("fc7", 2048)):
        shapes.update({f"{name}.0.weight": (2048, n_in), f"{name}.0.bias": (2048,), **bn(f"{name}.1", 2048)})
    shapes.update({"fc8.0.weight": (feat_dim, 2048), "fc8.0.bias": (feat_dim,)})
    return shapes


def test_cmc_alexnet_file_loads_into_alexnet_cmc(tmp_path):
    g = torch.Generator().manual_seed(12)
    nets = [{k: torch.tensor(3) if not shape else torch.rand(shape, generator=g) + 0.5
             for k, shape in alexnet_half_manifest(c).items()} for c in (1, 2)]
    path = tmp_path / "CMC_alexnet.pth"
    torch.save({"opt": argparse.Namespace(model="alexnet"), "model": {
        **prefixed("encoder.module.l_to_ab.", nets[0]), **prefixed("encoder.module.ab_to_l.", nets[1])}}, path)
    model = checkpoint.load_model(str(path))
    assert model.hyperparams["arch"] == "alexnet_cmc" and model.n_features == 2 * 4608
    for name, value in nets[1].items():
        target = model.head_ab if name.startswith("fc8.") else model.backbone_ab
        assert torch.equal(target.state_dict()[name.removeprefix("fc8.0.")], value), name


def bn(name, n):
    """A BatchNorm layer's entries (names and shapes) in the seeds' modules."""
    return {f"{name}.weight": (n,), f"{name}.bias": (n,), f"{name}.running_mean": (n,),
            f"{name}.running_var": (n,), f"{name}.num_batches_tracked": ()}


def basic_resnet_manifest(in_channels, planes, blocks=(2, 2, 2, 2), feat_dim=16):
    """CMC's models/resnet.py ResNet with BasicBlocks, written out: the stem 64 wide whatever the width, stage i
    `planes * 2**i` wide; names and shapes only."""
    shapes = {"conv1.weight": (64, in_channels, 7, 7)}
    shapes.update(bn("bn1", 64))
    inplanes = 64
    for i, n in enumerate(blocks):
        p = planes * 2 ** i
        for j in range(n):
            name = f"layer{i + 1}.{j}"
            shapes.update({f"{name}.conv1.weight": (p, inplanes, 3, 3), f"{name}.conv2.weight": (p, p, 3, 3),
                           **bn(f"{name}.bn1", p), **bn(f"{name}.bn2", p)})
            if j == 0 and (i > 0 or inplanes != p):
                shapes.update({f"{name}.downsample.0.weight": (p, inplanes, 1, 1), **bn(f"{name}.downsample.1", p)})
            inplanes = p
    shapes.update({"fc.weight": (feat_dim, inplanes), "fc.bias": (feat_dim,)})
    return shapes


@pytest.mark.parametrize("version, planes", [("v1", 32), ("v3", 128)])
def test_cmc_half_and_double_width_resnets_load_into_their_arch(tmp_path, version, planes):
    g = torch.Generator().manual_seed(11)

    def net(channels):
        out = {}
        for k, shape in basic_resnet_manifest(channels, planes).items():
            out[k] = torch.tensor(5) if k.endswith("num_batches_tracked") else \
                torch.rand(shape, generator=g) + (0.5 if k.endswith("running_var") else -0.5)
        return out

    nets = net(1), net(2)
    path = tmp_path / f"CMC_resnet18{version}.pth"
    torch.save({"opt": argparse.Namespace(model=f"resnet18{version}", softmax=False), "model": {
        **prefixed("encoder.module.l_to_ab.", nets[0]), **prefixed("encoder.module.ab_to_l.", nets[1])}}, path)
    model = checkpoint.load_model(str(path))
    assert model.hyperparams["arch"] == f"resnet18{version}" and model.n_features == 2 * 8 * planes
    for name, value in nets[0].items():
        target = model.head_l if name.startswith("fc.") else model.backbone_l.net
        assert torch.equal(target.state_dict()[name.removeprefix("fc.")], value), name


def test_self_supervised_training_continues_from_a_seed_file_of_its_data(tmp_path, capsys):
    """train.py --checkpoint_path on CMC's file: its banks and constants carry on; banks of another split's size
    are refused."""
    path = tmp_path / "ckpt_epoch_240.pth"
    cmc_file(path, n_data=8)
    root = image_folder(tmp_path / "data", per_class=4)           # 8 training images
    argv = ["--checkpoint_path", str(path), "--dataset", "FOLDER", "--input_dir", root, "--image_size", "128",
            "--output_dir", str(tmp_path / "runs"), "--run_name", "more", "--epochs", "1", "--batch_size", "4",
            "--num_workers", "0", "--device", "cpu"]
    assert run_entry_point(train.main, argv) == 0
    seed, more = checkpoint.load_model(str(path)), checkpoint.load_model(str(tmp_path / "runs/more/amdim_cpt.pth"))
    assert more.hyperparams["nce_k"] == 8 and more.hyperparams["n_data"] == 8 and float(more.z_l) == 123.5
    assert not torch.equal(more.memory_l, seed.memory_l)
    other = tmp_path / "ckpt_epoch_100.pth"
    cmc_file(other, n_data=20)
    argv[1], argv[argv.index("more")] = str(other), "other"
    one_line_error(capsys, train.main, argv, "20-image training split", "has 8 training images")
