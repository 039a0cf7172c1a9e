"""The encoder's structure, initialisation and outputs, checked against the architecture's definition."""
import pytest
import torch

import checkpoint
import model as M


@pytest.mark.parametrize("size", [32, 64, 128])
def test_output_shapes_at_every_encoder_size(size):
    m = checkpoint.build_model(dict(ndf=8, n_classes=7, n_rkhs=64, n_depth=2, encoder_size=size, use_bn=True,
                                    tclip=20.0))
    out = m((torch.randn(3, 3, size, size), torch.randn(3, 3, size, size)))
    for view in ("x1", "x2"):
        r1, r5, r7 = out[view]
        assert r1.shape == (3, 64, 1, 1) and r5.shape == (3, 64, 5, 5) and r7.shape == (3, 64, 7, 7)
    mlp, lin = out["logits"]
    assert mlp.shape == lin.shape == (6, 7)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_taps_are_the_last_layer_at_each_spatial_size(size):
    """r7 comes from the BN? layer (last 7x7 output), r5 from the block after it, r1 is the final BN output."""
    enc = M.Encoder(ndf=8, n_rkhs=64, n_depth=1, encoder_size=size, use_bn=True).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        r1, r5, r7 = enc(x)
        acts, h = [], x
        for layer in enc.layer_list:       # replay the trunk by hand, keeping every activation
            h = layer(h)
            acts.append(h)
        sizes = [a.shape[-1] for a in acts]
        last = {s: max(i for i, v in enumerate(sizes) if v == s) for s in (1, 5, 7)}
        assert isinstance(enc.layer_list[last[7]], torch.nn.BatchNorm2d)
        assert isinstance(enc.layer_list[last[1]], torch.nn.BatchNorm2d)
        assert torch.equal(r1, acts[last[1]])
        assert torch.equal(r5, enc.rkhs_block_5(acts[last[5]]))
        assert torch.equal(r7, enc.rkhs_block_7(acts[last[7]]))


def test_stem_and_widths_follow_the_32px_recipe():
    enc = M.Encoder(ndf=8, n_rkhs=40, n_depth=3, encoder_size=32, use_bn=False)
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
             for m in enc.layer_list.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1]
    assert convs == [(3, 8, 3, 1), (8, 16, 4, 2), (16, 32, 2, 2), (32, 32, 3, 1), (32, 32, 3, 1), (32, 40, 3, 1)]
    # three residual units per block: 1 + 4 blocks * 3 + final unit
    assert sum(isinstance(m, M.ConvResNxN) for m in enc.modules()) == 1 + 4 * 3 + 1
    # without --use_bn only the always-on BatchNorms exist: the final one and the heads' outputs
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules()) == 3


def test_128px_stem_uses_reflect_padded_strided_5x5():
    enc = M.Encoder(ndf=8, n_rkhs=64, n_depth=1, encoder_size=128)
    stem = enc.layer_list[0]
    assert stem.conv.kernel_size == (5, 5) and stem.conv.stride == (2, 2) and stem.pad_mode == "reflect"
    assert enc.layer_list[0](torch.randn(1, 3, 128, 128)).shape[-1] == 64


def test_residual_unit_starts_as_its_zero_padded_average_pool_shortcut():
    unit = M.ConvResNxN(4, 6, 2, 2, 0, use_bn=False)
    unit.init_weights()
    x = torch.randn(2, 4, 8, 8)
    expected = torch.zeros(2, 6, 4, 4)
    for c in range(4):                    # naive 2x2 stride-2 average, channel by channel
        for i in range(4):
            for j in range(4):
                expected[:, c, i, j] = x[:, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(1, 2))
    assert torch.allclose(unit(x), expected, atol=1e-6)
    assert not torch.all(unit.conv1.weight == 0)


def test_fake_rkhs_head_shortcut_starts_near_identity():
    head = M.FakeRKHSConvNet(8, 12)
    w = head.shortcut.weight[:, :, 0, 0]
    assert torch.all(w[:8].diagonal() == 1)
    off = w.clone()
    off[range(8), range(8)] = 0
    assert off.abs().max() <= 0.01
    head.init_weights()
    assert torch.all(head.conv2.weight == 0)


def test_evaluator_sends_no_gradient_into_the_encoder():
    m = checkpoint.build_model(dict(ndf=8, n_classes=3, n_rkhs=32, n_depth=1, encoder_size=32, use_bn=False,
                                    tclip=20.0))
    mlp, lin = m.classify(torch.randn(4, 3, 32, 32))
    (mlp.sum() + lin.sum()).backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.evaluator.parameters())


def test_mlp_classifier_layout():
    ev = M.Evaluator(32, 5)
    kinds = [type(l).__name__ for l in ev.block_glb_mlp.block_forward]
    assert kinds == ["Flatten", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert ev.block_glb_mlp.block_forward[2].bias is None
    assert ev.block_glb_mlp.block_forward[1].p == 0.2
    assert ev.block_glb_mlp.block_forward[2].out_features == 1024


def test_n_rkhs_below_last_width_is_rejected():
    with pytest.raises(ValueError, match="n_rkhs"):
        M.Encoder(ndf=16, n_rkhs=32, encoder_size=32)   # last width 64
    with pytest.raises(ValueError, match="n_rkhs"):
        M.Encoder(ndf=8, n_rkhs=32, encoder_size=64)    # last width 64


@pytest.mark.parametrize("width,stride,size", [(1, 1, 6), (3, 1, 3), (3, 1, 5), (4, 2, 8)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_residual_unit_equals_its_definition_with_plain_conv_and_pool(width, stride, size, layout):
    """The unit's shortcuts (identity for a 1x1 stride-1 pool, a matrix product where the kernel covers the whole
    input) give what conv -> ReLU -> 1x1 conv plus the average-pooled, zero-padded input gives, values and
    gradients, in either memory format."""
    torch.manual_seed(0)
    unit = M.ConvResNxN(6, 10, width, stride, 0)
    torch.nn.init.normal_(unit.conv2.weight)            # a non-zero residual branch, unlike the Fixup init
    x = torch.randn(4, 6, size, size).to(memory_format=layout).requires_grad_()
    y = unit(x)
    x_ref = x.detach().clone().requires_grad_()
    h = torch.nn.functional.conv2d(torch.relu(torch.nn.functional.conv2d(x_ref, unit.conv1.weight, stride=stride)),
                                   unit.conv2.weight)
    pooled = torch.nn.functional.avg_pool2d(x_ref, width, stride)
    y_ref = h + torch.cat([pooled, pooled.new_zeros(4, 4, *pooled.shape[2:])], 1)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, [x, unit.conv1.weight, unit.conv2.weight], g)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, unit.conv1.weight, unit.conv2.weight], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
