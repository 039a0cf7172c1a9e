"""The AMDIM encoder and its evaluation classifiers.

Architecture and parameter names follow the original code (Bachman, Hjelm & Buchwalter 2019) so that its
released checkpoints load with a plain key translation (see checkpoint.py). Pure modules: no device, process or
precision logic lives here.

Vocabulary used throughout:
- ndf: width (channels) of the encoder's first layer; later stages use 2x, 4x, 8x.
- n_rkhs: width of the embeddings that the NCE costs compare (the paper's "fake RKHS" space).
- r1, r5, r7: embeddings of the 1x1 (global), 5x5 and 7x7 (local) feature maps.

Besides AMDIM's encoder, the other methods (methods.py) can use torchvision's ResNets as backbones
(ResNetTrunk), and project backbone features with projection_head.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

ENCODER_SIZES = (32, 64, 128)


def maybe_bn2d(n_channels, use_bn):
    """BatchNorm2d when use_bn, else identity (the original kept unused BN parameters; we don't)."""
    return nn.BatchNorm2d(n_channels) if use_bn else nn.Identity()


class Conv3x3(nn.Module):
    """pad -> conv -> ReLU. The original's stem layer; it never uses BatchNorm, so the conv has a bias."""

    def __init__(self, n_in, n_out, kernel, stride, pad, pad_mode="constant"):
        super().__init__()
        self.pad = pad
        self.pad_mode = pad_mode
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride, 0, bias=True)

    def forward(self, x):
        """x: (B, n_in, H, W) -> (B, n_out, H', W')."""
        if self.pad > 0:
            x = F.pad(x, (self.pad,) * 4, mode=self.pad_mode)
        return F.relu(self.conv(x))


class ConvResNxN(nn.Module):
    """Residual unit: conv(width, stride) -> BN? -> ReLU -> 1x1 conv, plus an average-pooled shortcut.

    When n_out > n_in the shortcut is padded with zero channels after the existing ones. There is no ReLU after
    the sum (as in the original).
    """

    def __init__(self, n_in, n_out, width, stride, pad, use_bn=False):
        super().__init__()
        if n_out < n_in:
            raise ValueError(f"ConvResNxN needs n_out >= n_in, got {n_in} -> {n_out}")
        self.width, self.stride, self.pad = width, stride, pad
        self.n_grow = n_out - n_in
        self.conv1 = nn.Conv2d(n_in, n_out, width, stride, pad, bias=False)
        self.bn1 = maybe_bn2d(n_out, use_bn)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, 1, 0, bias=False)

    def init_weights(self, init_scale=1.0):
        fixup_init(self.conv1, self.conv2, init_scale)

    def forward(self, x):
        """x: (B, n_in, H, W) -> (B, n_out, H', W')."""
        h = self.conv2(F.relu(self.bn1(self._conv1(x))))
        # A 1x1 stride-1 average pool is the identity: the copy (and its backward's zero-fill) would only cost.
        shortcut = x if self.width == self.stride == 1 and self.pad == 0 else \
            F.avg_pool2d(x, self.width, self.stride, self.pad)
        if self.n_grow > 0:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.n_grow))
        return h + shortcut

    def _conv1(self, x):
        """conv1, as a matrix product where its kernel covers the whole unpadded input (the encoder's last unit:
        3x3 on 3x3 -> 1x1): the same sum, which oneDNN's convolution computes several times slower on CPU than a
        GEMM."""
        if self.pad == 0 and x.shape[-2:] == (self.width, self.width):
            return F.linear(x.flatten(1), self.conv1.weight.flatten(1))[:, :, None, None]
        return self.conv1(x)


class ConvResBlock(nn.Module):
    """One ConvResNxN that changes width/resolution, then depth-1 ConvResNxN 1x1 units."""

    def __init__(self, n_in, n_out, width, stride, pad, depth, use_bn):
        super().__init__()
        units = [ConvResNxN(n_in, n_out, width, stride, pad, use_bn)]
        units += [ConvResNxN(n_out, n_out, 1, 1, 0, use_bn) for _ in range(depth - 1)]
        # The original wrapped its units in an attribute called layer_list; keep the name for checkpoint keys.
        self.layer_list = nn.Sequential(*units)

    def forward(self, x):
        return self.layer_list(x)


class FakeRKHSConvNet(nn.Module):
    """Residual 1x1 head that maps a local feature map into the n_rkhs embedding space.

    conv -> BN? -> ReLU -> conv (zero-initialised), plus a 1x1 shortcut conv with bias that starts close to the
    identity when n_out >= n_in; the sum goes through an always-on BatchNorm.
    """

    def __init__(self, n_in, n_out, use_bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 1, bias=False)
        self.bn_hid = maybe_bn2d(n_out, use_bn)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, bias=False)
        self.shortcut = nn.Conv2d(n_in, n_out, 1, bias=True)
        self.bn_out = nn.BatchNorm2d(n_out)
        if n_out >= n_in:
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[:, :, 0, 0].fill_diagonal_(1.0)

    def init_weights(self, init_scale=1.0):
        fixup_init(self.conv1, self.conv2, init_scale)

    def forward(self, x):
        """x: (B, n_in, H, W) -> (B, n_out, H, W)."""
        h = self.conv2(F.relu(self.bn_hid(self.conv1(x))))
        return self.bn_out(h + self.shortcut(x))


def fixup_init(first, second, init_scale):
    """Fixup-style init of a residual branch: scaled default init for the first conv, zeros for the second,
    so every residual unit starts as its shortcut."""
    nn.init.kaiming_uniform_(first.weight, a=math.sqrt(5))
    with torch.no_grad():
        first.weight.mul_(init_scale)
    nn.init.zeros_(second.weight)


def _trunk(ndf, n_rkhs, n_depth, encoder_size, use_bn, in_channels=3):
    """The encoder's layer list for a given input size (in_channels image channels), and the index of its 7x7
    tap (the BN? layer)."""
    def block(n_in, n_out, width, stride):
        return ConvResBlock(n_in, n_out, width, stride, 0, n_depth, use_bn)

    if encoder_size == 32:
        w = 4 * ndf
        stem = [Conv3x3(in_channels, ndf, 3, 1, 0), ConvResNxN(ndf, ndf, 1, 1, 0, use_bn),
                block(ndf, 2 * ndf, 4, 2), block(2 * ndf, w, 2, 2)]
    elif encoder_size in (64, 128):
        w = 8 * ndf
        if encoder_size == 64:
            stem = [Conv3x3(in_channels, ndf, 3, 1, 0)]
        else:  # a strided 5x5 conv takes 128 px to 64 px; the rest is the 64 px encoder
            stem = [Conv3x3(in_channels, ndf, 5, 2, 2, pad_mode="reflect"), Conv3x3(ndf, ndf, 3, 1, 0)]
        stem += [block(ndf, 2 * ndf, 4, 2), block(2 * ndf, 4 * ndf, 4, 2), block(4 * ndf, w, 2, 2)]
    else:
        raise ValueError(f"encoder_size must be one of {ENCODER_SIZES}, got {encoder_size}")
    tail = [maybe_bn2d(w, use_bn),                       # 7x7 tap
            block(w, w, 3, 1),                           # 5x5 tap
            block(w, w, 3, 1),                           # 3x3
            ConvResNxN(w, n_rkhs, 3, 1, 0, use_bn),      # 1x1
            nn.BatchNorm2d(n_rkhs)]                      # 1x1 tap (always-on BN)
    return stem + tail, len(stem)


def last_width(ndf, encoder_size):
    """Width of the encoder's last block; n_rkhs may not be smaller (its final ConvResNxN only grows)."""
    return (4 if encoder_size == 32 else 8) * ndf


class Encoder(nn.Module):
    """Multiscale convolutional encoder: image (in_channels channels, 3 but for CMC's Lab views) -> (r1, r5, r7)
    embeddings."""

    def __init__(self, ndf=128, n_rkhs=1024, n_depth=3, encoder_size=32, use_bn=False, in_channels=3):
        super().__init__()
        if n_rkhs < last_width(ndf, encoder_size):
            raise ValueError(f"n_rkhs ({n_rkhs}) must be >= the last block's width "
                             f"({last_width(ndf, encoder_size)})")
        layers, self.tap7 = _trunk(ndf, n_rkhs, n_depth, encoder_size, use_bn, in_channels)
        self.tap5 = self.tap7 + 1
        self.layer_list = nn.ModuleList(layers)
        w = last_width(ndf, encoder_size)
        self.rkhs_block_5 = FakeRKHSConvNet(w, n_rkhs, use_bn)
        self.rkhs_block_7 = FakeRKHSConvNet(w, n_rkhs, use_bn)

    def init_weights(self, init_scale=1.0):
        for m in self.modules():
            if isinstance(m, (ConvResNxN, FakeRKHSConvNet)):
                m.init_weights(init_scale)

    def forward(self, x):
        """x: (B, in_channels, S, S) with S the encoder size -> r1 (B, n_rkhs, 1, 1), r5 (B, n_rkhs, 5, 5),
        r7 (B, n_rkhs, 7, 7)."""
        for i, layer in enumerate(self.layer_list):
            x = layer(x)
            if i == self.tap7:
                h7 = x
            elif i == self.tap5:
                h5 = x
        return x, self.rkhs_block_5(h5), self.rkhs_block_7(h7)

    def feature_layers(self):
        """The layers r1 comes from (not the r5 and r7 heads): what fine-tuning its features trains."""
        return self.layer_list


class MLPClassifier(nn.Module):
    """Linear classifier (n_hidden None) or one-hidden-layer MLP with dropout, as the original's."""

    def __init__(self, n_input, n_classes, n_hidden=None, p=0.0):
        super().__init__()
        if n_hidden is None:
            layers = [nn.Flatten(), nn.Dropout(p), nn.Linear(n_input, n_classes)]
        else:
            layers = [nn.Flatten(), nn.Dropout(p), nn.Linear(n_input, n_hidden, bias=False),
                      nn.BatchNorm1d(n_hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(n_hidden, n_classes)]
        self.block_forward = nn.Sequential(*layers)

    def forward(self, x):
        """x: (B, n_input) -> logits (B, n_classes)."""
        return self.block_forward(x)


class Evaluator(nn.Module):
    """Online evaluation classifiers on detached features (AMDIM's global embedding r1, or a backbone's pooled
    features): an MLP and a linear model, trained with costs.classifier_loss. heads: what each of forward's logits
    is, in order (an evaluator's contract: LinearProbe has one)."""
    heads = ("mlp", "lin")

    def __init__(self, n_features, n_classes):
        super().__init__()
        self.n_classes = n_classes
        self.block_glb_mlp = MLPClassifier(n_features, n_classes, n_hidden=1024, p=0.2)
        self.block_glb_lin = MLPClassifier(n_features, n_classes, n_hidden=None, p=0.0)

    def forward(self, r1):
        """r1: (B, n_features) or (B, n_features, 1, 1) -> (mlp_logits (B, n_classes), linear_logits (B,
        n_classes)).

        The input is detached: classifier gradients never reach the encoder.
        """
        h = r1.detach().flatten(1)
        return self.block_glb_mlp(h), self.block_glb_lin(h)


class LinearProbe(nn.Module):
    """The seeds' linear evaluation classifier (MoCo's fc in main_lincls.py, SwAV's RegLog with global pooling,
    CMC's LinearClassifierResNet at its pooled layer): one linear layer on the frozen, pooled features, its
    weights drawn from N(0, 0.01^2) and its bias zero, trained with plain cross-entropy."""
    heads = ("lin",)

    def __init__(self, n_features, n_classes):
        super().__init__()
        self.n_classes = n_classes
        self.linear = nn.Linear(n_features, n_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features):
        """features: (B, n_features) or (B, n_features, 1, 1) -> (logits (B, n_classes),); detached as
        Evaluator's."""
        return (self.linear(features.detach().flatten(1)),)


class FineTuneHead(nn.Module):
    """The classifier of SwAV's semi-supervised fine-tuning (eval_semisup.py: its projection head rebuilt as one
    linear layer, nn.Linear's default initialisation): it trains with the encoder, so features are not
    detached."""
    heads = ("lin",)

    def __init__(self, n_features, n_classes):
        super().__init__()
        self.n_classes = n_classes
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, features):
        """features: (B, n_features) -> (logits (B, n_classes),)."""
        return (self.linear(features.flatten(1)),)


# ----------------------------------------------------------------------------------------------------------
# Backbones for the other methods: image -> one pooled feature vector per image.

RESNETS = ("resnet18", "resnet50")
# CMC's own ResNets (HobbitLong/CMC models/resnet.py), one per view: torchvision's layout with the stem 64 wide and
# every stage's planes times the width, v1 0.5 (its default for ResNets), v2 1 (torchvision's), v3 2.
CMC_RESNETS = {f"{depth}v{version}": (depth, width) for depth in RESNETS
               for version, width in ((1, 0.5), (2, 1.0), (3, 2.0))}


class _ProbedAtOutput:
    """A backbone whose linear probe reads its output (r1; a ResNet's pooled features, CMC's LinearProbing.py
    --layer 6): probe is forward, nothing lies between them (top), probe_width is width.

    Backbones with intermediate layers to probe (CMC's --layer N) list them in PROBE_LAYERS and take `layer` in
    probe and probe_width; None is the default layer, this one's output."""
    PROBE_LAYERS = ()

    def probe(self, x, layer=None):
        return self.forward(x)

    @staticmethod
    def top(probed):
        return probed

    def probe_width(self, layer=None):
        return self.width


class GlobalEncoder(_ProbedAtOutput, nn.Module):
    """AMDIM's encoder used as a plain backbone: image (B, in_channels, S, S) -> r1 flattened, (B, n_rkhs)."""

    def __init__(self, ndf, n_rkhs, n_depth, encoder_size, use_bn, in_channels=3):
        super().__init__()
        self.encoder = Encoder(ndf, n_rkhs, n_depth, encoder_size, use_bn, in_channels)
        self.encoder.init_weights()
        self.width = n_rkhs

    def forward(self, x):
        """x: (B, in_channels, S, S) -> (B, n_rkhs)."""
        return self.encoder(x)[0].flatten(1)

    def feature_layers(self):
        return self.encoder.feature_layers()


class ResNetTrunk(_ProbedAtOutput, nn.Module):
    """A torchvision ResNet (no pretrained weights) without its classifier: image -> globally average-pooled
    features (B, 512) for resnet18, (B, 2048) for resnet50.

    For images of 64 px and less the stem is the usual small-image one (a 3x3 stride-1 first convolution and
    no max-pool), as CIFAR-sized ResNets use: the ImageNet stem would shrink a 32 px image to 8 px before the
    first block. in_channels: the image's channels (3; CMC's L and ab views have 1 and 2).
    """

    def __init__(self, arch, image_size, in_channels=3):
        super().__init__()
        if arch not in RESNETS and arch not in CMC_RESNETS:
            raise ValueError(f"arch must be one of {RESNETS + tuple(CMC_RESNETS)}, got {arch!r}")
        depth, width = CMC_RESNETS.get(arch, (arch, 1.0))
        net = getattr(torchvision.models, depth)(weights=None)
        if width != 1.0:
            _widen(net, width)
        if image_size <= 64:
            net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 7, 2, 3, bias=False)
        self.width = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        # stage 4's map side: the small-image stem keeps the size, the ImageNet one (and the max-pool) halve it
        self.last_map = math.ceil(image_size / (8 if image_size <= 64 else 32))

    def forward(self, x):
        """x: (B, in_channels, S, S) -> (B, width)."""
        return self.net(x)

    # CMC's LinearProbing.py --layer N on its ResNets (LinearClassifierResNet): 1 the stem, 2-4 stages 1-3, each
    # average-pooled to the seed's N x N; 5 stage 4's map as it is (7 x 7 at 224 px, 4 x 4 at our 32/128 px); 6
    # the globally pooled features, the default.
    PROBE_LAYERS = (1, 2, 3, 4, 5, 6)
    PROBE_POOL = {1: 8, 2: 6, 3: 4, 4: 3}

    def probe(self, x, layer=None):
        """x: (B, in_channels, S, S) -> layer's features flattened, (B, probe_width(layer))."""
        if layer in (None, 6):
            return self.forward(x)
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage in self._stages()[:layer - 1]:
            x = stage(x)
        if layer in self.PROBE_POOL:
            x = F.adaptive_avg_pool2d(x, self.PROBE_POOL[layer])
        return x.flatten(1)

    def probe_width(self, layer=None):
        if layer in (None, 6):
            return self.width
        channels = [self.net.conv1.out_channels] + [
            [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features for stage in self._stages()]
        side = self.PROBE_POOL.get(layer, self.last_map)
        return channels[layer - 1] * side * side

    def _stages(self):
        return [self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4]

    def feature_layers(self):
        """What its features come from: all of it."""
        return self


def _widen(net, width):
    """A torchvision ResNet rebuilt, in place, with every stage's planes times `width` (its stem stays 64 wide, as
    CMC's): the stages' layers made afresh by torchvision's own _make_layer, initialised as its constructor does
    (convolutions Kaiming-normal fan-out, BatchNorm weight 1 and bias 0)."""
    block = type(net.layer1[0])
    planes = int(64 * width)
    net.inplanes = 64
    for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        blocks = len(getattr(net, name))
        setattr(net, name, net._make_layer(block, planes * 2 ** i, blocks, stride=1 if i == 0 else 2))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    net.fc = nn.Linear(planes * 8 * block.expansion, net.fc.out_features)


class AlexNetHalf(nn.Module):
    """One view's half of CMC's AlexNet (HobbitLong/CMC models/alexnet.py alexnet_half, the seed's default encoder):
    five convolution blocks of half AlexNet's widths (48, 128, 192, 192, 128; convolutions without bias, each with
    BatchNorm and ReLU, max-pools after 1, 2 and 5), then fc6 and fc7 (2048 wide, BatchNorm1d, ReLU).

    At our sizes: the first convolution's stride is 4 at 224 px (the seed's, padding 2), 2 at 128 px and 1 at 64
    and 32 px (padding 5), and the last max-pool is adaptive to the seed's 6 x 6 map (at 224 px exactly the seed's
    MaxPool2d(3, 2) on 13 x 13). forward: image (B, in_channels, S, S) -> fc7's (B, 2048), what the contrastive
    head projects; probe: conv5's map flattened, (B, 128 * 6 * 6), the layer the seed's linear probe reads
    (LinearProbing.py --layer 5), or with `layer` 1-4 conv1-conv4's maps max-pooled to the seed's 10, 6, 5 and 5
    px (LinearClassifierAlexNet)."""
    PROBE_LAYERS = (1, 2, 3, 4, 5)
    PROBE_POOL = {1: 10, 2: 6, 3: 5, 4: 5, 5: 6}

    def __init__(self, in_channels, image_size):
        super().__init__()
        stride = 4 if image_size >= 224 else 2 if image_size >= 128 else 1

        def block(n_in, n_out, kernel, stride=1, pad=None, pool=None):
            layers = [nn.Conv2d(n_in, n_out, kernel, stride, kernel // 2 if pad is None else pad, bias=False),
                      nn.BatchNorm2d(n_out), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, *([pool] if pool is not None else []))

        self.conv_block_1 = block(in_channels, 48, 11, stride, 2 if stride == 4 else 5, nn.MaxPool2d(3, 2))
        self.conv_block_2 = block(48, 128, 5, pool=nn.MaxPool2d(3, 2))
        self.conv_block_3 = block(128, 192, 3)
        self.conv_block_4 = block(192, 192, 3)
        self.conv_block_5 = block(192, 128, 3, pool=nn.AdaptiveMaxPool2d(6))
        self.fc6 = nn.Sequential(nn.Linear(128 * 6 * 6, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True))
        self.width = 2048

    def probe(self, x, layer=None):
        """x: (B, in_channels, S, S) -> conv`layer`'s map (default 5) max-pooled to PROBE_POOL and flattened,
        (B, probe_width(layer)); conv5's (B, 4608) is what top reads."""
        layer = 5 if layer is None else layer
        for block in self._blocks()[:layer]:
            x = block(x)
        return (x if layer == 5 else F.adaptive_max_pool2d(x, self.PROBE_POOL[layer])).flatten(1)

    def probe_width(self, layer=None):
        layer = 5 if layer is None else layer
        return self._blocks()[layer - 1][0].out_channels * self.PROBE_POOL[layer] ** 2

    def top(self, probed):
        """probe's (B, 4608) -> fc7's (B, 2048)."""
        return self.fc7(self.fc6(probed))

    def forward(self, x):
        """x: (B, in_channels, S, S) -> fc7's (B, 2048)."""
        return self.top(self.probe(x))

    def feature_layers(self):
        """What the probe reads comes from: the five convolution blocks."""
        return nn.ModuleList(self._blocks())

    def _blocks(self):
        return [self.conv_block_1, self.conv_block_2, self.conv_block_3, self.conv_block_4, self.conv_block_5]


def projection_head(width, dim, hidden=False):
    """Linear map of backbone features (B, width) to (B, dim); with hidden, a width-wide hidden layer and ReLU
    first (MoCo v2's MLP head)."""
    if not hidden:
        return nn.Linear(width, dim)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))


def bn_projection_head(width, hidden, dim):
    """SwAV's projection head: backbone features (B, width) -> (B, dim) through a hidden layer of `hidden` units
    with BatchNorm and ReLU; hidden 0 gives a single linear map (the seed's hidden_mlp 0)."""
    if hidden == 0:
        return nn.Linear(width, dim)
    return nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))
