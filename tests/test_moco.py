"""MoCo with alignment and uniformity: the losses against naive loops over their formulas, the queue, the momentum
update, the ResNet backbones, and two gloo processes against one."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import config
import costs
import distributed
import methods
import model as M
from helpers import TINY_ENCODER, run_ranks


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _sq(a, b):
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


def naive_align(q, k, alpha):
    return sum(_sq(q[i], k[i]) ** (alpha / 2) for i in range(len(q))) / len(q)


def naive_uniform(q, queue, t, intra_batch):
    terms = [math.exp(-t * _sq(q[i], queue[j])) for i in range(len(q)) for j in range(len(queue))]
    if intra_batch:
        terms += [math.exp(-t * _sq(q[i], q[j])) for i in range(len(q)) for j in range(i + 1, len(q))]
    return math.log(sum(terms) / len(terms))


def naive_contrastive(q, k, queue, tau):
    total = 0.0
    for i in range(len(q)):
        pos = sum(float(a) * float(b) for a, b in zip(q[i], k[i])) / tau
        negs = [sum(float(a) * float(b) for a, b in zip(q[i], queue[j])) / tau for j in range(len(queue))]
        total += -(pos - math.log(math.exp(pos) + sum(math.exp(s) for s in negs)))
    return total / len(q)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_align_loss_matches_the_formula(alpha):
    q, k = _unit(5, 4, 0), _unit(5, 4, 1)
    assert costs.align_loss(q, k, alpha).item() == pytest.approx(naive_align(q, k, alpha), rel=1e-12)


@pytest.mark.parametrize("intra_batch,t", [(True, 3.0), (False, 3.0), (True, 0.5)])
def test_uniform_loss_matches_the_formula(intra_batch, t):
    q, queue = _unit(5, 4, 2), _unit(7, 4, 3)
    got = costs.uniform_loss(q, queue, t, intra_batch=intra_batch).item()
    assert got == pytest.approx(naive_uniform(q, queue, t, intra_batch), rel=1e-12)


def test_contrastive_loss_matches_the_formula():
    q, k, queue = _unit(4, 3, 4), _unit(4, 3, 5), _unit(6, 3, 6)
    assert costs.moco_contrastive_loss(q, k, queue, 0.07).item() == \
        pytest.approx(naive_contrastive(q, k, queue, 0.07), rel=1e-10)


def test_gradients_match_finite_differences_of_the_naive_formulas():
    """Autograd gradients of the three losses against central differences of the naive loops (float64)."""
    q, k, queue = _unit(3, 3, 7), _unit(3, 3, 8), _unit(4, 3, 9)
    cases = [(lambda a: costs.align_loss(a, k, 3.0), lambda a: naive_align(a, k, 3.0)),
             (lambda a: costs.uniform_loss(a, queue, 2.0), lambda a: naive_uniform(a, queue, 2.0, True)),
             (lambda a: costs.moco_contrastive_loss(a, k, queue, 0.2), lambda a: naive_contrastive(a, k, queue, 0.2))]
    for fast, naive in cases:
        leaf = q.clone().requires_grad_()
        (grad,) = torch.autograd.grad(fast(leaf), leaf)
        eps = 1e-6
        for i, j in itertools.product(range(3), range(3)):
            up, down = q.clone(), q.clone()
            up[i, j] += eps
            down[i, j] -= eps
            assert grad[i, j].item() == pytest.approx((naive(up) - naive(down)) / (2 * eps), rel=1e-5, abs=1e-8)


def _hp(**over):
    hp = dict(method="moco", arch="amdim", encoder_size=32, n_classes=3, ndf=8, n_rkhs=32, n_depth=1, use_bn=False,
              moco_dim=8, moco_k=10, moco_m=0.9, mlp=False, aug_plus=False, moco_align_w=3.0, moco_align_alpha=2.0,
              moco_unif_w=1.0, moco_unif_t=3.0, moco_unif_no_intra_batch=False, moco_contr_w=0.5,
              moco_contr_tau=0.07)
    hp.update(over)
    return hp


def test_queue_is_a_fifo_that_wraps_around():
    torch.manual_seed(0)
    moco = methods.MoCo(_hp(moco_k=10))
    reference = [row.clone() for row in moco.queue]          # slot i of the queue, written in order
    ptr = 0
    for n in (4, 4, 4, 7, 3, 12):                          # wraps several times; 12 > K keeps the newest 10
        keys = F.normalize(torch.randn(n, 8), dim=1)
        moco.push(keys)
        for row in keys[-10:]:             # more than K keys: only the newest K stay
            reference[ptr] = row
            ptr = (ptr + 1) % 10
        assert torch.equal(moco.queue, torch.stack(reference))
        assert int(moco.queue_ptr) == ptr


def test_momentum_update_moves_keys_towards_queries_and_pushes_the_batch():
    torch.manual_seed(0)
    moco = methods.MoCo(_hp(moco_m=0.9))
    q_params = dict(moco.backbone.named_parameters()) | {f"h.{k}": v for k, v in moco.head.named_parameters()}
    k_params = dict(moco.backbone_k.named_parameters()) | {f"h.{k}": v for k, v in moco.head_k.named_parameters()}
    for name in q_params:                                   # the key encoder starts as an exact copy
        assert torch.equal(q_params[name], k_params[name]) and not k_params[name].requires_grad
    with torch.no_grad():
        for p in q_params.values():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in k_params.items()}
    keys = F.normalize(torch.randn(4, 8), dim=1)
    moco.after_step({"k": keys}, distributed.Dist())
    for name, p in k_params.items():
        assert torch.allclose(p, 0.9 * before[name] + 0.1 * q_params[name], atol=1e-6), name
    assert torch.equal(moco.queue[:4], keys) and int(moco.queue_ptr) == 4


def test_key_encoder_gets_no_gradient_and_losses_are_finite():
    torch.manual_seed(0)
    moco = methods.MoCo(_hp())
    views = (torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    out = moco(views, distributed.Dist())
    terms = moco.loss_terms(out, distributed.Dist())
    assert set(terms) == {"align", "uniform", "contrastive"}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in moco.backbone_k.parameters())
    assert all(p.grad is not None for p in moco.head.parameters())
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.allclose(out["q"].norm(dim=1), torch.ones(4)) and torch.allclose(out["k"].norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("arch,size,width", [("resnet18", 32, 512), ("resnet18", 128, 512), ("resnet50", 64, 2048)])
def test_resnet_trunk_stem_and_features(arch, size, width):
    trunk = M.ResNetTrunk(arch, size).eval()
    small = size <= 64
    assert trunk.net.conv1.kernel_size == ((3, 3) if small else (7, 7))
    assert trunk.net.conv1.stride == ((1, 1) if small else (2, 2))
    assert isinstance(trunk.net.maxpool, torch.nn.Identity) == small
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, size, size)).shape == (2, width)


def test_config_defaults_checks_and_contradictions():
    import train
    args = train.parse_args(["--dataset", "C10", "--method", "moco"])
    hp = config.from_flags(args, 32, 10)
    assert hp["arch"] == "resnet18" and hp["moco_k"] == 65536 and hp["moco_align_w"] == 3.0
    assert config.from_flags(train.parse_args(["--dataset", "IN128", "--method", "moco"]), 128, 10)["arch"] == \
        "resnet50"
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset", "C10", "--method", "amdim", "--arch", "resnet18"])
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset", "C10", "--method", "amdim", "--moco-k", "10"])   # not an AMDIM flag
    moco_args = train.parse_args(["--dataset", "C10", "--method", "moco", "--moco-m", "0.99", "--mlp"])
    hp = config.from_flags(moco_args, 32, 10)
    assert hp["moco_m"] == 0.99 and hp["mlp"] is True
    clashes = config.contradictions(train.parse_args(["--moco_m", "0.9", "--method", "moco"]), hp)
    assert clashes == ["--moco-m 0.9 (checkpoint: 0.99)"]


def test_state_dict_round_trip_keeps_queue_and_key_encoder():
    torch.manual_seed(0)
    a = methods.MoCo(_hp())
    a.push(F.normalize(torch.randn(3, 8), dim=1))
    with torch.no_grad():
        next(a.backbone_k.parameters()).add_(1.0)
    b = checkpoint.model_from({"model": a.state_dict(), "hyperparams": a.hyperparams})
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert int(b.queue_ptr) == 3


# ----------------------------------------------------------------------------------------------------------
# Two gloo processes.

WORLD, N_LOCAL = 2, 3


def _global_batch():
    return _unit(WORLD * N_LOCAL, 8, 11).float(), _unit(WORLD * N_LOCAL, 8, 12).float()


def _rank(dist):
    rank = dist.rank
    torch.manual_seed(0)
    moco = methods.MoCo(_hp(moco_k=10, moco_unif_w=0.0))
    q, k = _global_batch()
    mine = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    terms = moco.loss_terms({"q": q[mine], "k": k[mine]}, dist)
    moco.after_step({"k": k[mine]}, dist)
    moco.after_step({"k": k[mine].flip(0)}, dist)
    # Shuffling BN: a random spread of the global batch over the ranks, undone exactly.
    torch.manual_seed(100 + rank)
    x = torch.arange(WORLD * N_LOCAL, dtype=torch.float32)[mine].view(-1, 1)
    shuffled, undo = dist.shuffle(x)
    back = dist.unshuffle(shuffled * 10, undo)
    return {"terms": {n: v.item() for n, v in terms.items()}, "queue": moco.queue, "ptr": int(moco.queue_ptr),
            "shuffled": shuffled, "back": back}


@pytest.mark.slow
def test_two_processes_fill_one_queue_and_match_one_process(tmp_path):
    results = run_ranks(_rank, WORLD, tmp_path)
    torch.manual_seed(0)
    single = methods.MoCo(_hp(moco_k=10, moco_unif_w=0.0))
    q, k = _global_batch()
    terms = single.loss_terms({"q": q, "k": k}, distributed.Dist())
    # Both queues hold both processes' keys in rank order, and equal one process pushing the whole batch.
    single.push(k)
    single.push(torch.cat([k[r * N_LOCAL:(r + 1) * N_LOCAL].flip(0) for r in range(WORLD)]))
    for res in results:
        assert torch.equal(res["queue"], single.queue) and res["ptr"] == int(single.queue_ptr)
    # Alignment and contrastive losses are means over the batch's rows: the ranks' mean is the whole batch's.
    # (Uniformity is a log of a mean, per process, as in the seed: not comparable this way, so it is off here.)
    for name, value in terms.items():
        assert sum(res["terms"][name] for res in results) / WORLD == pytest.approx(value.item(), rel=1e-6), name
    shuffled = torch.cat([res["shuffled"] for res in results]).flatten()
    assert sorted(shuffled.tolist()) == list(range(WORLD * N_LOCAL))
    for r, res in enumerate(results):
        assert torch.equal(res["back"].flatten(), 10 * torch.arange(r * N_LOCAL, (r + 1) * N_LOCAL).float())


def test_ddp_looks_for_unused_parameters_only_where_a_backbone_leaves_some_unused():
    """MoCo on the AMDIM encoder leaves its 5x5/7x7 heads without gradients (DDP's second update failed without
    find_unused_parameters; seen with torchrun, 2 gloo ranks); ResNets and AMDIM itself use everything."""
    import config
    import methods
    import train
    small = ["--dataset", "DIGITS", *TINY_ENCODER]
    for flags, expected in ((["--method", "moco", "--arch", "amdim"] + small, True),
                            (["--method", "moco", "--arch", "resnet18", "--dataset", "DIGITS"], False),
                            (small, False)):
        model = methods.build(config.from_flags(train.parse_args(flags), 32, n_classes=10))
        assert model.has_unused_parameters() is expected, flags
        if hasattr(model, "backbone"):
            model.backbone(torch.randn(4, 3, 32, 32)).sum().backward()
            unused = [n for n, p in model.backbone.named_parameters() if p.grad is None]
            assert bool(unused) is expected, unused
