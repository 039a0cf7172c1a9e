"""SwAV's pure pieces against independent naive computations: costs.sinkhorn (the seed's order, element by
element in double precision), costs.swav_loss (values and gradients), larc.LARC (its formula, parameter by
parameter), distributed.Dist.all_reduce, and sinkhorn in two real gloo processes."""
import math

import pytest
import torch

import costs
import distributed
import larc
from helpers import run_ranks


def naive_sinkhorn(scores, epsilon, n_iters):
    """The seed's distributed_sinkhorn in one process, element by element in Python floats (double precision).

    scores: (B, K) -> (B, K) float64 codes. Q is kept K x B as in the seed: Q[j][i] for prototype j, sample i."""
    rows = scores.tolist()
    b, k = len(rows), len(rows[0])
    q = [[math.exp(rows[i][j] / epsilon) for i in range(b)] for j in range(k)]
    total = sum(sum(prototype) for prototype in q)
    q = [[x / total for x in prototype] for prototype in q]
    for _ in range(n_iters):
        for j in range(k):                                   # every prototype's total to 1 / K
            s = sum(q[j])
            q[j] = [x / s / k for x in q[j]]
        for i in range(b):                                   # every sample's total to 1 / B
            s = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / s / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=torch.float64)


def _uniform(shape, seed, low=-1.0, high=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# sinkhorn, one process.

def test_sinkhorn_matches_naive_loop_of_the_seed_order():
    scores = _uniform((7, 5), 0)
    for n_iters in (0, 1, 3):
        expected = naive_sinkhorn(scores, 0.1, n_iters)
        got64 = costs.sinkhorn(scores, 0.1, n_iters)
        got32 = costs.sinkhorn(scores.float(), 0.1, n_iters)
        assert got64.dtype == torch.float64 and got32.dtype == torch.float32
        assert torch.allclose(got64, expected, rtol=1e-10, atol=1e-14), n_iters
        assert torch.allclose(got32.double(), expected, rtol=1e-5, atol=1e-7), n_iters


def test_sinkhorn_marginals_after_enough_iterations():
    b, k = 12, 4
    scores = _uniform((b, k), 1, dtype=torch.float32)
    codes = costs.sinkhorn(scores, 0.1, 100)
    assert torch.allclose(codes.sum(1), torch.ones(b), atol=1e-5)
    assert torch.allclose(codes.sum(0), torch.full((k,), b / k), atol=1e-3)
    # Not the trivial answer: the assignments are far from uniform.
    assert (codes - 1 / k).abs().max() > 0.1


def test_sinkhorn_stable_where_the_seed_overflows_float32():
    scores = _uniform((6, 5), 2, dtype=torch.float32)
    epsilon = 0.005
    assert torch.exp(scores / epsilon).isinf().any()         # the seed's first step in float32
    codes = costs.sinkhorn(scores, epsilon, 3)
    assert codes.dtype == torch.float32 and codes.isfinite().all()
    # A constant subtracted from every score cancels in the first normalisation, so the naive loop on shifted
    # scores (which double precision holds) is the reference.
    shifted = scores.double() - scores.double().max()
    assert torch.allclose(codes.double(), naive_sinkhorn(shifted, epsilon, 3), atol=1e-6)


def test_sinkhorn_finite_where_every_exp_of_a_sample_underflows():
    scores = _uniform((5, 4), 3, dtype=torch.float32)
    scores[0] = -1.0                                         # far below the others' best scores
    scores[1, 0] = 1.0
    epsilon = 0.001
    shifted = (scores.double() - scores.double().max()) / epsilon
    assert shifted.exp()[0].sum() == 0                       # even double precision loses sample 0 entirely
    codes = costs.sinkhorn(scores, epsilon, 3)
    assert codes.isfinite().all()
    assert torch.allclose(codes.sum(1), torch.ones(5), atol=1e-5)


def test_sinkhorn_of_half_and_bfloat16_scores_computes_in_float32():
    scores = _uniform((8, 6), 4, dtype=torch.float32)
    assert torch.exp(scores.half() / 0.05).isinf().any()      # fp16 overflows at scores / epsilon > 11
    for dtype in (torch.float16, torch.bfloat16):
        low = scores.to(dtype)
        codes = costs.sinkhorn(low, 0.05, 3)
        assert codes.dtype == torch.float32 and codes.isfinite().all()
        assert torch.allclose(codes, costs.sinkhorn(low.float(), 0.05, 3), atol=1e-6)
        assert torch.allclose(codes, costs.sinkhorn(scores, 0.05, 3), atol=0.05)


def test_sinkhorn_has_no_gradient_and_leaves_its_input():
    scores = _uniform((4, 3), 5, dtype=torch.float32).requires_grad_()
    before = scores.detach().clone()
    codes = costs.sinkhorn(scores, 0.05, 3)
    assert not codes.requires_grad
    assert torch.equal(scores.detach(), before)


# ----------------------------------------------------------------------------------------------------------
# swav_loss.

def naive_swav_loss(scores_per_crop, codes, temperature, crops_for_assign):
    """Sum by sum over crops, samples and prototypes, the log softmax written out."""
    n_crops = len(scores_per_crop)
    b, k = scores_per_crop[0].shape
    total = 0.0
    for assigned, q in zip(crops_for_assign, codes):
        q = q.detach()
        subloss = 0.0
        for v in range(n_crops):
            if v == assigned:
                continue
            s = scores_per_crop[v]
            for i in range(b):
                log_norm = torch.log(sum(torch.exp(s[i, j] / temperature) for j in range(k)))
                subloss = subloss - sum(q[i, j] * (s[i, j] / temperature - log_norm) for j in range(k)) / b
        total = total + subloss / (n_crops - 1)
    return total / len(crops_for_assign)


def _crops(n_crops, b, k, seed):
    return [_uniform((b, k), seed + c).requires_grad_() for c in range(n_crops)]


def test_swav_loss_matches_naive_loop_values_and_gradients():
    for n_crops, assign in ((4, (0, 1)), (3, (2, 0)), (2, (1,))):
        scores = _crops(n_crops, 3, 5, 10 * n_crops)
        codes = [costs.sinkhorn(scores[a], 0.05, 3) for a in assign]
        loss = costs.swav_loss(scores, codes, 0.1, assign)
        expected = naive_swav_loss(scores, codes, 0.1, assign)
        assert torch.allclose(loss, expected, rtol=1e-12), (n_crops, assign)
        grads = torch.autograd.grad(loss, scores, allow_unused=True)
        expected_grads = torch.autograd.grad(expected, scores, allow_unused=True)
        for c, (g, e) in enumerate(zip(grads, expected_grads)):
            # A crop gets a gradient only as a predictor: the one assigned crop of a single assignment gets none.
            if assign == (c,):
                assert g is None and e is None
            else:
                assert g.abs().sum() > 0 and torch.allclose(g, e, rtol=1e-10, atol=1e-14), (n_crops, assign, c)


def test_swav_loss_sends_no_gradient_into_the_codes():
    scores = _crops(3, 4, 6, 7)
    codes = [torch.softmax(_uniform((4, 6), 70), 1).requires_grad_() for _ in range(2)]
    loss = costs.swav_loss(scores, codes, 0.1, (0, 1))
    assert all(g is None for g in torch.autograd.grad(loss, codes, allow_unused=True))


# ----------------------------------------------------------------------------------------------------------
# LARC.

def _norm(t):
    """Euclidean norm, summed element by element."""
    return math.sqrt(sum(x * x for x in t.flatten().tolist()))


def naive_larc_step(params, grads, buffers, groups, eta, momentum):
    """One step of apex's LARC (clip=False) around SGD, parameter by parameter. params, grads, buffers: dicts by
    name (grads[name] None: no gradient); groups: list of (names, lr, weight_decay, larc)."""
    for names, lr, wd, adapted in groups:
        for name in names:
            w, g = params[name], grads[name]
            if g is None:
                continue
            if not adapted:
                d = g + wd * w
            elif _norm(w) > 0 and _norm(g) > 0:
                a = eta * _norm(w) / (_norm(g) + wd * _norm(w) + 1e-8)
                d = (g + wd * w) * a
            else:
                d = g
            buffers[name] = d.clone() if name not in buffers else momentum * buffers[name] + d
            params[name] = w - lr * buffers[name]


LARC_SHAPES = {"weight": (3, 4), "zero_grad": (4,), "zero_weight": (2, 3), "no_grad": (2,), "second": (5,),
               "plain": (3,)}


def _larc_setup(seed):
    """Parameters (float64) in three groups: the constructor's lr and weight decay; their own lr, weight decay and
    base_lr; and a group that opts out of the scaling (plain SGD with weight decay)."""
    values = {name: _uniform(shape, seed + i) for i, (name, shape) in enumerate(LARC_SHAPES.items())}
    values["zero_weight"].zero_()
    params = {name: torch.nn.Parameter(v.clone()) for name, v in values.items()}
    group_a = dict(params=[params[n] for n in ("weight", "zero_grad", "zero_weight", "no_grad")], base_lr=7.0)
    group_b = dict(params=[params["second"]], lr=0.05, weight_decay=0.5, base_lr=3.0)
    group_c = dict(params=[params["plain"]], lr=0.2, weight_decay=0.1, larc=False)
    optimizer = larc.LARC([group_a, group_b, group_c], lr=0.1, momentum=0.9, weight_decay=1e-2,
                          trust_coefficient=0.02)
    naive_groups = [(("weight", "zero_grad", "zero_weight", "no_grad"), 0.1, 1e-2, True),
                    (("second",), 0.05, 0.5, True), (("plain",), 0.2, 0.1, False)]
    return values, params, optimizer, naive_groups


def _larc_grads(step):
    grads = {name: _uniform(shape, 100 * step + i) for i, (name, shape) in enumerate(LARC_SHAPES.items())}
    grads["zero_grad"].zero_()
    grads["no_grad"] = None
    return grads


def test_larc_matches_its_formula_over_steps():
    values, params, optimizer, naive_groups = _larc_setup(0)
    naive, buffers = dict(values), {}
    for step in range(4):
        grads = _larc_grads(step)
        for name, p in params.items():
            p.grad = None if grads[name] is None else grads[name].clone()
        optimizer.step()
        naive_larc_step(naive, grads, buffers, naive_groups, eta=0.02, momentum=0.9)
        for name, p in params.items():
            assert torch.allclose(p.detach(), naive[name], rtol=1e-12, atol=1e-15), (step, name)
    # The cases the formula singles out: a zero gradient moves nothing (no weight decay either); a zero weight
    # takes its raw gradient at the first step and is scaled from then on; no gradient, no step and no state.
    assert torch.equal(params["zero_grad"].detach(), values["zero_grad"])
    assert params["zero_weight"].detach().abs().sum() > 0
    assert torch.equal(params["no_grad"].detach(), values["no_grad"])
    assert params["no_grad"] not in optimizer.state
    # The groups keep their own settings and extra keys.
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-2, 0.5, 0.1]
    assert [g["base_lr"] for g in optimizer.param_groups[:2]] == [7.0, 3.0]
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.05, 0.2]


def test_larc_scales_float32_and_float64_parameters_of_one_group_each_by_its_own_norms():
    ws = [torch.nn.Parameter(_uniform((3, 3), 20, dtype=torch.float32)), torch.nn.Parameter(_uniform((4,), 21))]
    gs = [_uniform((3, 3), 22, dtype=torch.float32), _uniform((4,), 23)]
    before = [w.detach().clone() for w in ws]
    optimizer = larc.LARC(ws, lr=0.5, weight_decay=0.1, trust_coefficient=0.05)
    for w, g in zip(ws, gs):
        w.grad = g.clone()
    optimizer.step()
    for w, w0, g in zip(ws, before, gs):
        a = 0.05 * _norm(w0) / (_norm(g) + 0.1 * _norm(w0) + 1e-8)
        expected = w0.double() - 0.5 * a * (g.double() + 0.1 * w0.double())
        assert w.dtype == w0.dtype
        assert torch.allclose(w.detach().double(), expected, rtol=1e-6 if w.dtype == torch.float32 else 1e-12)


def test_larc_default_trust_coefficient_is_the_seeds():
    w = torch.nn.Parameter(_uniform((4, 4), 1))
    optimizer = larc.LARC([w], lr=0.3, weight_decay=1e-6)
    assert optimizer.trust_coefficient == 0.001 and optimizer.param_groups[0]["momentum"] == 0.9
    w0, g = w.detach().clone(), _uniform((4, 4), 2)
    w.grad = g.clone()
    optimizer.step()
    a = 0.001 * _norm(w0) / (_norm(g) + 1e-6 * _norm(w0) + 1e-8)
    assert torch.allclose(w.detach(), w0 - 0.3 * a * (g + 1e-6 * w0), rtol=1e-12)


def test_larc_state_dict_round_trip_is_exact_and_sgds(tmp_path):
    values, params, optimizer, _ = _larc_setup(1)
    for step in range(2):
        for name, g in _larc_grads(step).items():
            params[name].grad = g
        optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    # A fresh optimiser over copies of the parameters, built with other learning rates, resumes exactly.
    _, copies, resumed, _ = _larc_setup(1)
    with torch.no_grad():
        for name, p in copies.items():
            p.copy_(params[name])
    for group in resumed.param_groups:
        group["lr"] = 123.0
    resumed.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert [g["lr"] for g in resumed.param_groups] == [0.1, 0.05, 0.2]
    for step in range(2, 4):
        grads = _larc_grads(step)
        for group in (params, copies):
            for name, g in grads.items():
                group[name].grad = None if g is None else g.clone()
        optimizer.step()
        resumed.step()
        for name in params:
            assert torch.equal(params[name], copies[name]), (step, name)
    # The state is SGD's: an SGD over the same parameters loads it, and its keys are the same.
    sgd = torch.optim.SGD([dict(params=g["params"]) for g in optimizer.param_groups], lr=1.0)
    sgd.load_state_dict(optimizer.state_dict())
    state = optimizer.state_dict()
    assert state["state"].keys() == sgd.state_dict()["state"].keys()
    assert all(s.keys() == {"momentum_buffer"} for s in state["state"].values())


# ----------------------------------------------------------------------------------------------------------
# Dist.all_reduce and sinkhorn over two gloo processes.

def test_all_reduce_in_one_process_is_the_identity():
    t = torch.tensor([1.0, 2.0])
    assert distributed.Dist().all_reduce(t) is t and torch.equal(t, torch.tensor([1.0, 2.0]))


WORLD, N_LOCAL, QUEUE_LOCAL, K, EPSILON, ITERS = 2, 4, 3, 6, 0.05, 3


def _global_scores():
    """The global batch's (WORLD * N_LOCAL, K) and the queues' (WORLD * QUEUE_LOCAL, K) scores, rank by rank."""
    return _uniform((WORLD * N_LOCAL, K), 50, dtype=torch.float32), \
        _uniform((WORLD * QUEUE_LOCAL, K), 60, dtype=torch.float32)


def _rank_sinkhorn(dist):
    rank = dist.rank
    batch, queue = _global_scores()
    mine = batch[rank * N_LOCAL:(rank + 1) * N_LOCAL]
    my_queue = queue[rank * QUEUE_LOCAL:(rank + 1) * QUEUE_LOCAL]
    return {"batch": costs.sinkhorn(mine, EPSILON, ITERS, dist),
            "queue": costs.sinkhorn(torch.cat([my_queue, mine]), EPSILON, ITERS, dist),
            # No iteration: Q / total * N, where N counts every process's rows (with more it cancels out).
            "no_iteration": costs.sinkhorn(torch.cat([my_queue, mine]), EPSILON, 0, dist),
            "sum": dist.all_reduce(torch.tensor([rank + 1.0, 10.0 * rank]))}


@pytest.mark.slow
def test_two_processes_give_the_codes_of_one_process_on_the_whole_batch(tmp_path):
    results = run_ranks(_rank_sinkhorn, WORLD, tmp_path)
    batch, queue = _global_scores()
    whole = costs.sinkhorn(batch, EPSILON, ITERS)
    # With queues: each rank's rows are its queue then its batch; one process sees them all, in rank order.
    rows = [torch.cat([queue[r * QUEUE_LOCAL:(r + 1) * QUEUE_LOCAL], batch[r * N_LOCAL:(r + 1) * N_LOCAL]])
            for r in range(WORLD)]
    whole_with_queue = costs.sinkhorn(torch.cat(rows), EPSILON, ITERS)
    whole_no_iteration = costs.sinkhorn(torch.cat(rows), EPSILON, 0)
    per_rank = QUEUE_LOCAL + N_LOCAL
    for r, result in enumerate(results):
        assert torch.equal(result["sum"], torch.tensor([3.0, 10.0]))
        assert torch.allclose(result["batch"], whole[r * N_LOCAL:(r + 1) * N_LOCAL], atol=1e-6), r
        assert torch.allclose(result["queue"], whole_with_queue[r * per_rank:(r + 1) * per_rank], atol=1e-6), r
        assert torch.allclose(result["no_iteration"], whole_no_iteration[r * per_rank:(r + 1) * per_rank],
                              rtol=1e-5), r
        # The sums over processes matter: this rank's rows alone give other codes.
        alone = costs.sinkhorn(batch[r * N_LOCAL:(r + 1) * N_LOCAL], EPSILON, ITERS)
        assert (result["batch"] - alone).abs().max() > 1e-3, r
        assert (result["queue"][-N_LOCAL:] - result["batch"]).abs().max() > 1e-3, r
