"""The AMDIM objective: NCE infomax costs between global and local embeddings, and the classifiers' loss.

Pure functions of their inputs. Callers decide precision (the trainer runs these in float32) and, for
multi-process training, pass target maps gathered from every process together with the offset of their own
samples in that global batch.
"""
import torch
import torch.nn.functional as F


def tanh_clip(x, clip):
    """Soft clip to (-clip, clip): clip * tanh(x / clip)."""
    return clip * torch.tanh(x / clip)


def nce_g2l(src, trg, tclip, pos_offset=0):
    """NCE cost of predicting local target features from source vectors.

    src: (N, R) source vectors. trg: (M, R, H, W) target maps, M >= N; source i's positives are the H*W
    locations of map i + pos_offset, its negatives every location of every other map (shared by all of i's
    positives). Scores are src.trg / sqrt(R), soft-clipped by tanh to (-tclip, tclip).

    Returns (loss, lgt_reg): loss = -mean over (i, location) of log(e^pos / (e^pos + sum_neg e^neg)); lgt_reg =
    0.05 * mean of the squared raw scores (a penalty that keeps them from growing into the clip).
    """
    n, r = src.shape
    m = trg.shape[0]
    # raw[i, j, l]: source i against location l of map j; one matrix product for every pair.
    raw = (src @ trg.flatten(2).transpose(0, 1).reshape(r, -1)).view(n, m, -1) / r ** 0.5
    lgt_reg = 0.05 * raw.pow(2).mean()
    scores = tanh_clip(raw, tclip)
    rows = torch.arange(n, device=src.device)
    pos = scores[rows, rows + pos_offset]                                      # (N, L)
    is_pos = torch.zeros(n, m, 1, dtype=torch.bool, device=src.device)
    is_pos[rows, rows + pos_offset] = True
    neg_lse = scores.masked_fill(is_pos, float("-inf")).flatten(1).logsumexp(1, keepdim=True)  # (N, 1)
    log_p = pos - torch.logaddexp(pos, neg_lse)
    return -log_p.mean(), lgt_reg


def sample_locations(n, generator=None, device=None):
    """One random location index k in [0, 25) per sample: row k // 5, column k % 5 of a 5x5 map."""
    return torch.randint(0, 25, (n,), generator=generator, device=device)


def select_locations(r5, locs):
    """r5: (N, R, 5, 5), locs: (N,) indices in [0, 25) -> (N, R) the feature vector at each sample's location."""
    rows = torch.arange(r5.shape[0], device=r5.device)
    return r5[rows, :, locs // 5, locs % 5]


def infomax_costs(f1, f2, tclip, locs1, locs2, gather=None, pos_offset=0):
    """The AMDIM infomax costs between two views.

    f1, f2: (r1, r5, r7) of view 1 and view 2, shapes (N, R, 1, 1), (N, R, 5, 5), (N, R, 7, 7).
    locs1, locs2: (N,) 5x5 source locations for the 5->5 cost (see sample_locations).
    gather: optional function mapping a local (N, ...) target tensor to the global (M, ...) batch (identity by
    default); pos_offset: where this process's N samples start in it.

    Returns dict with "1t5", "1t7", "5t5" (each averaged over both directions x1->x2, x2->x1) and "lgt_reg"
    (0.5 * the sum of the six score penalties).
    """
    gather = gather or (lambda t: t)
    (r1_a, r5_a, r7_a), (r1_b, r5_b, r7_b) = f1, f2
    # Predict view b's local maps from view a's sources, and the reverse.
    pairs = {
        "1t5": ((r1_a.flatten(1), gather(r5_b)), (r1_b.flatten(1), gather(r5_a))),
        "1t7": ((r1_a.flatten(1), gather(r7_b)), (r1_b.flatten(1), gather(r7_a))),
        "5t5": ((select_locations(r5_a, locs1), gather(r5_b)), (select_locations(r5_b, locs2), gather(r5_a))),
    }
    out, reg = {}, 0.0
    for name, directions in pairs.items():
        losses = []
        for src, trg in directions:
            loss, lgt_reg = nce_g2l(src, trg, tclip, pos_offset)
            losses.append(loss)
            reg = reg + lgt_reg
        out[name] = 0.5 * (losses[0] + losses[1])
    out["lgt_reg"] = 0.5 * reg
    return out


def classifier_loss(logits, labels):
    """Loss of one classifier: CE(10 * tanh(logits / 10)) over labelled rows + 1e-3 * mean(logits^2) over all.

    logits: (B, C); labels: (B,) int64, -1 for unlabelled rows. A batch with no labelled row contributes 0 to
    the cross-entropy (the original returned NaN).
    """
    labelled = labels >= 0
    clipped = tanh_clip(logits[labelled], 10.0)
    xent = F.cross_entropy(clipped, labels[labelled], reduction="sum") / labelled.sum().clamp(min=1)
    return xent + 1e-3 * logits.pow(2).mean()
