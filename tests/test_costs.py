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
