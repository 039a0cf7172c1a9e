"""costs.py against independent, naive loops over the formulas (float64), values and gradients."""
import math

import pytest
import torch

import costs


def naive_nce(src, trg, tclip, pos_offset=0):
    """Loop over every (source, positive location) pair; negatives are all locations of all other maps."""
    n, r = src.shape
    m, _, h, w = trg.shape
    locs = [(a, b) for a in range(h) for b in range(w)]

    def score(i, j, a, b):
        raw = sum(src[i, c] * trg[j, c, a, b] for c in range(r)) / math.sqrt(r)
        return raw

    raws, terms = [], []
    for i in range(n):
        neg = [score(i, j, a, b) for j in range(m) if j != i + pos_offset for (a, b) in locs]
        neg_clipped = [tclip * torch.tanh(s / tclip) for s in neg]
        for (a, b) in locs:
            pos = tclip * torch.tanh(score(i, i + pos_offset, a, b) / tclip)
            denom = torch.exp(pos) + sum(torch.exp(s) for s in neg_clipped)
            terms.append(-(pos - torch.log(denom)))
        raws += [score(i, j, a, b) for j in range(m) for (a, b) in locs]
    loss = sum(terms) / len(terms)
    lgt_reg = 0.05 * sum(s ** 2 for s in raws) / len(raws)
    return loss, lgt_reg


def _inputs(n, m, r, hw, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    src = (scale * torch.randn(n, r, generator=g, dtype=torch.float64)).requires_grad_()
    trg = (scale * torch.randn(m, r, hw, hw, generator=g, dtype=torch.float64)).requires_grad_()
    return src, trg


@pytest.mark.parametrize("n,m,r,hw,offset,tclip", [(3, 3, 4, 2, 0, 20.0), (2, 5, 3, 3, 2, 5.0),
                                                   (4, 4, 6, 1, 0, 1.0)])
def test_nce_matches_naive_loop_values_and_grads(n, m, r, hw, offset, tclip):
    src, trg = _inputs(n, m, r, hw, seed=n * 10 + m)
    loss, reg = costs.nce_g2l(src, trg, tclip, pos_offset=offset)
    ref_loss, ref_reg = naive_nce(src, trg, tclip, offset)
    assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert torch.allclose(reg, ref_reg, rtol=1e-10, atol=1e-12)
    g = torch.autograd.grad(loss + reg, (src, trg))
    g_ref = torch.autograd.grad(ref_loss + ref_reg, (src, trg))
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_nce_is_small_when_positives_dominate_and_large_otherwise():
    # Sanity of the sign convention: aligned positives give a lower loss than shuffled ones.
    src = 6 * torch.eye(8, 16)                       # orthogonal sources: score 9 with their own map, 0 else
    trg = src[:, :, None, None].expand(8, 16, 2, 2).contiguous()
    aligned, _ = costs.nce_g2l(src, trg, 20.0)
    shuffled, _ = costs.nce_g2l(src, trg.roll(1, 0), 20.0)
    p = 20 * math.tanh(9 / 20)                       # the soft clip of a raw score of 9
    assert aligned.item() == pytest.approx(math.log(1 + 28 * math.exp(-p)), rel=1e-4)
    # Shuffled: the positive scores 0; the 4 locations of the matching map sit among the 28 negatives.
    assert shuffled.item() == pytest.approx(math.log(1 + 4 * math.exp(p) + 24), rel=1e-4)


def test_select_locations_reads_row_k_div_5_column_k_mod_5():
    r5 = torch.randn(4, 3, 5, 5)
    locs = torch.tensor([0, 7, 24, 13])
    picked = costs.select_locations(r5, locs)
    for i, k in enumerate(locs.tolist()):
        assert torch.equal(picked[i], r5[i, :, k // 5, k % 5])


def test_infomax_costs_match_naive_loops():
    n, r = 3, 4
    g = torch.Generator().manual_seed(1)

    def feats():
        return [torch.randn(n, r, s, s, generator=g, dtype=torch.float64).requires_grad_() for s in (1, 5, 7)]

    f1, f2 = feats(), feats()
    locs1, locs2 = torch.tensor([0, 12, 24]), torch.tensor([3, 5, 19])
    out = costs.infomax_costs(f1, f2, 20.0, locs1, locs2)

    def src5(r5, locs):
        return torch.stack([r5[i, :, k // 5, k % 5] for i, k in enumerate(locs.tolist())])

    pairs = {"1t5": [(f1[0].flatten(1), f2[1]), (f2[0].flatten(1), f1[1])],
             "1t7": [(f1[0].flatten(1), f2[2]), (f2[0].flatten(1), f1[2])],
             "5t5": [(src5(f1[1], locs1), f2[1]), (src5(f2[1], locs2), f1[1])]}
    reg = 0.0
    for name, dirs in pairs.items():
        results = [naive_nce(s, t, 20.0) for s, t in dirs]
        assert torch.allclose(out[name], 0.5 * (results[0][0] + results[1][0]), rtol=1e-10)
        reg = reg + results[0][1] + results[1][1]
    assert torch.allclose(out["lgt_reg"], 0.5 * reg, rtol=1e-10)
    total = sum(out.values())
    total_ref = sum(0.5 * (naive_nce(s, t, 20.0)[0] + naive_nce(s2, t2, 20.0)[0])
                    for (s, t), (s2, t2) in pairs.values()) + 0.5 * reg
    grads = torch.autograd.grad(total, f1 + f2)
    grads_ref = torch.autograd.grad(total_ref, f1 + f2)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def naive_classifier_loss(logits, labels):
    rows = [i for i in range(len(labels)) if labels[i] >= 0]
    xent = 0.0
    for i in rows:
        z = [10 * math.tanh(v / 10) for v in logits[i].tolist()]
        lse = math.log(sum(math.exp(v) for v in z))
        xent += lse - z[labels[i]]
    xent = xent / len(rows) if rows else 0.0
    return xent + 1e-3 * sum(v * v for v in logits.flatten().tolist()) / logits.numel()


def test_classifier_loss_matches_naive_and_ignores_unlabelled_rows():
    g = torch.Generator().manual_seed(2)
    logits = 8 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, -1, 4, 2, -1, 1])
    got = costs.classifier_loss(logits, labels).item()
    assert got == pytest.approx(naive_classifier_loss(logits, labels), rel=1e-12)


def test_classifier_loss_without_labels_is_finite_penalty_only():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = costs.classifier_loss(logits, torch.full((4,), -1))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(1e-3 * logits.pow(2).mean().item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------------------------------------
# CMC

def naive_cmc_nce(scores, n_data):
    """Loop over every row and column: the seed's NCECriterion written out."""
    b, width = scores.shape
    k = width - 1
    pn = 1.0 / n_data
    total = 0.0
    for i in range(b):
        pos = scores[i, 0]
        total = total + torch.log(pos / (pos + k * pn + 1e-7))
        for j in range(1, width):
            total = total + torch.log((k * pn) / (scores[i, j] + k * pn + 1e-7))
    return -total / b


def test_cmc_nce_loss_matches_naive_loops_values_and_gradients():
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(4, 7, generator=g, dtype=torch.float64).mul(3).add(0.01).requires_grad_()
    for n_data in (10, 1000):
        got, ref = costs.cmc_nce_loss(scores, n_data), naive_cmc_nce(scores, n_data)
        assert got.item() == pytest.approx(ref.item(), rel=1e-12)
        grad, = torch.autograd.grad(got, scores)
        grad_ref, = torch.autograd.grad(ref, scores)
        assert torch.allclose(grad, grad_ref, rtol=1e-10)


def test_nce_softmax_loss_matches_naive_loops_values_and_gradients():
    g = torch.Generator().manual_seed(6)
    logits = (5 * torch.randn(3, 6, generator=g, dtype=torch.float64)).requires_grad_()
    ref = sum(torch.log(sum(torch.exp(logits[i, j]) for j in range(6))) - logits[i, 0] for i in range(3)) / 3
    got = costs.nce_softmax_loss(logits)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(torch.autograd.grad(got, logits)[0], torch.autograd.grad(ref, logits)[0], rtol=1e-10)


def test_cmc_scores_are_exp_dot_over_t_per_row():
    g = torch.Generator().manual_seed(7)
    features = torch.randn(3, 5, generator=g, dtype=torch.float64)
    rows = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    got = costs.cmc_scores(features, rows, 0.07)
    for i in range(3):
        for j in range(4):
            dot = sum(features[i, d] * rows[i, j, d] for d in range(5))
            assert got[i, j].item() == pytest.approx(math.exp(dot.item() / 0.07), rel=1e-12)


def test_memory_update_matches_naive_loops_and_writes_unit_rows():
    g = torch.Generator().manual_seed(8)
    rows = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    features = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    features.requires_grad_()
    got = costs.memory_update(rows, features, 0.5)
    for i in range(4):
        mixed = [0.5 * rows[i, d] + 0.5 * features[i, d] for d in range(6)]
        norm = math.sqrt(sum(v.item() ** 2 for v in mixed))
        assert got[i].tolist() == pytest.approx([v.item() / norm for v in mixed], rel=1e-12)
    assert torch.allclose(got.norm(dim=1), torch.ones(4, dtype=torch.float64))
    # Momentum 0 writes the (normalised) feature; momentum 1 keeps the row.
    assert torch.allclose(costs.memory_update(rows, features, 0.0), features)
    assert torch.allclose(costs.memory_update(rows, features, 1.0), rows)
    # Gradients flow like the naive expression's (the method calls it on detached features).
    ref = torch.nn.functional.normalize(0.5 * rows + 0.5 * features, dim=1)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(torch.autograd.grad((got * w).sum(), features)[0],
                          torch.autograd.grad((ref * w).sum(), features)[0])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_infomax_costs_hand_the_maps_dense_gradients_in_their_own_layout(layout):
    """The 5x5 and 7x7 maps' gradients come back dense in the maps' memory format (a strided gradient sends the
    encoder's BatchNorm backward down a slow path), with the values the same maps give in NCHW (whose values the
    naive-loop test above checks)."""
    torch.manual_seed(0)
    n, r = 4, 8
    base = [torch.randn(n, r, s, s, dtype=torch.float64) for s in (1, 5, 7) for _ in "ab"]
    locs = costs.sample_locations(n), costs.sample_locations(n)

    def grads_of(maps):
        f1, f2 = (maps[0], maps[2], maps[4]), (maps[1], maps[3], maps[5])
        return torch.autograd.grad(sum(costs.infomax_costs(f1, f2, 20.0, *locs).values()), maps)

    grads = grads_of([m.to(memory_format=layout).requires_grad_() for m in base])
    grads_ref = grads_of([m.clone().requires_grad_() for m in base])
    for g in grads[2:]:
        assert g.is_contiguous(memory_format=layout)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
