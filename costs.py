"""The training costs: the AMDIM objective (NCE infomax costs between global and local embeddings), MoCo's
alignment, uniformity and contrastive losses, CMC's memory-bank NCE, SwAV's Sinkhorn codes and swapped
prediction loss, and the classifiers' loss.

Pure functions of their inputs. Callers decide precision (the trainer runs these in float32; sinkhorn alone
computes in float32 whatever it is given) and, for multi-process training, pass target maps gathered from every
process together with the offset of their own samples in that global batch, or (sinkhorn) the distributed.Dist whose
collectives take its sums over every process.
"""
import math

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
    return nce_from_scores(raw_scores(src, trg.flatten(2)), tclip, pos_offset)


def raw_scores(src, trg):
    """src: (N, R), trg: (M, R, L) -> (N, M, L) scores src.trg / sqrt(R), in one matrix product."""
    n, r = src.shape
    m, _, length = trg.shape
    return (src @ trg.transpose(0, 1).reshape(r, m * length)).view(n, m, length) / r ** 0.5


def nce_from_scores(raw, tclip, pos_offset=0):
    """(loss, lgt_reg) of nce_g2l from its raw scores (N, M, L); see nce_g2l."""
    n, m, _ = raw.shape
    lgt_reg = 0.05 * raw.pow(2).mean()
    scores = tanh_clip(raw, tclip)
    rows = torch.arange(n, device=raw.device)
    pos = scores[rows, rows + pos_offset]                                      # (N, L)
    # Mask positives out of the negative set with an (N, M, 1) mask, broadcast over locations (a comparison:
    # writing True into a zero mask would upload the Python value, a host-device sync on a GPU).
    is_pos = (torch.arange(m, device=raw.device) == (rows + pos_offset)[:, None])[:, :, None]
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


class DenseGrad(torch.autograd.Function):
    """Identity whose backward hands the gradient back dense, in the memory format of its input (NCHW or
    channels_last). The costs cut the 5x5 and 7x7 maps' gradients out of one (M, R, 74) gradient: strided views
    that match neither format, on which the encoder's BatchNorm backward takes a generic, much slower CPU path
    (docs/benchmarks.md). One copy here is far cheaper.

    x: (N, C, H, W) -> the same tensor."""

    @staticmethod
    def forward(ctx, x):
        ctx.layout = torch.channels_last if (not x.is_contiguous() and
                                             x.is_contiguous(memory_format=torch.channels_last)) else \
            torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.layout)


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
    r5_a, r7_a, r5_b, r7_b = (DenseGrad.apply(r) for r in (r5_a, r7_a, r5_b, r7_b))
    # Each view's 5x5 and 7x7 locations side by side, (M, R, 25 + 49): one gather per view, and one matrix
    # product serves both 1->5 and 1->7, which share their source r1.
    trg_a = gather(torch.cat([r5_a.flatten(2), r7_a.flatten(2)], 2))
    trg_b = gather(torch.cat([r5_b.flatten(2), r7_b.flatten(2)], 2))
    terms = {"1t5": [], "1t7": [], "5t5": []}
    regs = []
    # Predict view b's local maps from view a's sources, and the reverse.
    for r1, r5, locs, trg in ((r1_a, r5_a, locs1, trg_b), (r1_b, r5_b, locs2, trg_a)):
        from_r1 = raw_scores(r1.flatten(1), trg)                                # (N, M, 74)
        from_r5 = raw_scores(select_locations(r5, locs), trg[:, :, :25])        # (N, M, 25)
        for name, raw in (("1t5", from_r1[:, :, :25]), ("1t7", from_r1[:, :, 25:]), ("5t5", from_r5)):
            loss, lgt_reg = nce_from_scores(raw, tclip, pos_offset)
            terms[name].append(loss)
            regs.append(lgt_reg)
    out = {name: 0.5 * (a + b) for name, (a, b) in terms.items()}
    out["lgt_reg"] = 0.5 * sum(regs)
    return out


def classifier_loss(logits, labels):
    """Loss of one classifier: CE(10 * tanh(logits / 10)) over labelled rows + 1e-3 * mean(logits^2) over all.

    logits: (B, C); labels: (B,) int64, -1 for unlabelled rows. A batch with no labelled row contributes 0 to
    the cross-entropy.
    """
    labelled = labels >= 0
    # ignore_index rather than selecting the labelled rows: a boolean index has a data-dependent shape, which
    # makes the host wait for the GPU.
    xent = F.cross_entropy(tanh_clip(logits, 10.0), labels, ignore_index=-1, reduction="sum")
    return xent / labelled.sum().clamp(min=1) + 1e-3 * logits.pow(2).mean()


def probe_loss(logits, labels):
    """The seeds' linear-evaluation loss: plain cross-entropy, the mean over labelled rows (0 when none is).

    logits: (B, C); labels: (B,) int64, -1 for unlabelled rows."""
    xent = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    return xent / (labels >= 0).sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------
# MoCo with alignment and uniformity (Wang & Isola 2020). q, k: (N, D) L2-normalised query and key embeddings of
# two views of the same N images; queue: (K, D) L2-normalised keys of earlier batches (the negatives).

def align_loss(q, k, alpha):
    """Alignment: mean over the batch of ||q_i - k_i||^alpha. q, k: (N, D) -> scalar."""
    return (q - k).norm(dim=1).pow(alpha).mean()


def _sq_dists(a, b):
    """(N, D), (M, D) -> (N, M) squared Euclidean distances, one matrix product (clamped at 0 against
    rounding)."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp(min=0)


def uniform_loss(q, queue, t, intra_batch=True):
    """Uniformity: log of the mean of exp(-t ||q_i - x||^2) over every (query, queue row) pair and, with
    intra_batch, also over the N (N - 1) / 2 distinct pairs of queries (the seed's default).

    q: (N, D); queue: (K, D) -> scalar. Computed as a log-sum-exp, so a large t cannot underflow to log 0.
    """
    n = q.shape[0]
    exponents = [(-t * _sq_dists(q, queue)).flatten()]
    if intra_batch and n > 1:
        i, j = torch.triu_indices(n, n, offset=1, device=q.device)
        exponents.append(-t * _sq_dists(q, q)[i, j])
    flat = torch.cat(exponents)
    return flat.logsumexp(0) - math.log(flat.numel())


def moco_contrastive_loss(q, k, queue, tau):
    """InfoNCE of MoCo: cross-entropy of [q.k, q.queue] / tau, the positive key first.

    q, k: (N, D); queue: (K, D) -> scalar, the mean over the batch.
    """
    pos = (q * k).sum(1, keepdim=True)                      # (N, 1)
    logits = torch.cat([pos, q @ queue.T], dim=1) / tau     # (N, 1 + K)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


# ----------------------------------------------------------------------------------------------------------
# CMC (Tian, Krishnan & Isola 2019): each view's features against the other view's memory bank. Rows and
# features are L2-normalised; column 0 of every (B, K + 1) score matrix is the positive (the sample's own bank
# row), columns 1..K are negatives drawn uniformly from the N rows of the bank.

def cmc_scores(features, rows, t):
    """exp(v . m / t) of each sample's feature against its K + 1 bank rows.

    features: (B, D); rows: (B, K + 1, D) -> (B, K + 1)."""
    return torch.exp(torch.einsum("bkd,bd->bk", rows, features) / t)


def cmc_nce_loss(scores, n_data):
    """CMC's NCE loss (the seed's NCECriterion) for one direction, noise distribution uniform over the n_data
    bank rows: with P the scores already divided by the normalisation constant Z, K = columns - 1,

        -[sum_b log(P_b0 / (P_b0 + K/N + 1e-7)) + sum_b sum_{k>=1} log((K/N) / (P_bk + K/N + 1e-7))] / B.

    scores: (B, K + 1), positive in column 0 -> scalar."""
    b, k = scores.shape[0], scores.shape[1] - 1
    noise = k / n_data
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + 1e-7))
    log_d0 = torch.log(noise / (neg + noise + 1e-7))
    return -(log_d1.sum() + log_d0.sum()) / b


def nce_softmax_loss(logits):
    """CMC's --softmax loss: cross-entropy over each row, the positive in column 0; mean over the batch.

    logits: (B, K + 1) (the scores v . m / t before exp) -> scalar."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def memory_update(rows, features, momentum):
    """CMC's bank update: normalise(momentum * row + (1 - momentum) * feature), row by row.

    rows, features: (B, D) -> (B, D) unit rows."""
    return F.normalize(momentum * rows + (1 - momentum) * features, dim=1)


# ----------------------------------------------------------------------------------------------------------
# SwAV (Caron et al. 2020). Prototype scores: dot products of each crop's L2-normalised embedding with K unit
# prototype vectors, (B, K) per crop. Codes: soft assignments of samples to prototypes that spread the batch
# evenly over the prototypes (an entropic optimal transport solved by Sinkhorn-Knopp), computed on some crops
# ("assigned") and predicted from every other crop of the same image ("swapped prediction").

# Below this, float32's exp is denormal or 0, and on CPU far slower than elsewhere: such terms are taken as 0.
EXP_FLOOR = -87.0


def _exp(x):
    """exp(x), 0 wherever x < EXP_FLOOR (e^-87 = 1.6e-38, about float32's smallest normal number)."""
    return x.clamp(min=EXP_FLOOR).exp_().masked_fill_(x < EXP_FLOOR, 0.0)


def _logsumexp(x, dim, dist=None):
    """log sum exp of x over dim; with dist, the sum also runs over every process's rows (dim then includes 0).

    x: (N, K), N free to differ between processes -> (1, K), (N, 1) or (1, 1) for dim 0, 1 or (0, 1). Shifted by
    the maximum (over every process: dist.all_gather), so each exp is <= 1 and their sum >= 1: nothing
    overflows, and the log never sees 0.
    """
    shift = x.amax(dim, keepdim=True)
    if dist is not None:
        shift = dist.all_gather(shift).amax(0, keepdim=True)
    # Terms below e^-87 (nothing next to the largest, 1) count as e^-87: no denormal exp (see EXP_FLOOR).
    total = (x - shift).clamp_(min=EXP_FLOOR).exp_().sum(dim, keepdim=True)
    if dist is not None:
        total = dist.all_reduce(total)
    return shift + total.log_()


def sinkhorn(scores, epsilon, n_iters, dist=None):
    """SwAV's codes: Sinkhorn-Knopp iterations on exp(scores / epsilon); no gradient.

    scores: (B, K) this process's prototype scores, any queue rows first and the batch's last (the caller keeps
    the last rows of the codes) -> codes (B, K), float32 (float64 stays float64), every row summing to 1 once
    n_iters >= 1. dist: a distributed.Dist whose collectives take the sums over every process (None: one process).

    The seed's order (main_swav.py, distributed_sinkhorn), with Q = exp(scores / epsilon) over the N rows of all
    processes together (queues included): Q /= its total; then n_iters times, every prototype's sum (a column
    here) is scaled to 1 / K, then every sample's (a row) to 1 / N; finally Q *= N. So each process's rows get
    the codes one process would give them within every process's rows at once. (N cancels out once n_iters >=
    1: each scaling by 1 / N is undone by the next normalisation or the last step.)

    Stability: the seed's exp overflows float32 once scores / epsilon > 88 (fp16 scores: > 11), and its sums
    can be 0 where every exp of a prototype or sample underflows. Here every step runs in the log domain on
    log Q = scores / epsilon: a normalisation subtracts a log-sum-exp (shifted by its maximum over every
    process, see _logsumexp) and one exp at the end returns Q. Same result as the seed wherever the seed's
    float32 neither overflows nor underflows (codes below 1.6e-38 come out 0), finite wherever the scores are.
    """
    with torch.no_grad():
        log_q = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / epsilon
        n_rows = log_q.new_full((), float(log_q.shape[0]))         # a fill on the device, no copy from the host
        log_n = (dist.all_reduce(n_rows) if dist is not None else n_rows).log()
        log_k = math.log(log_q.shape[1])
        log_q -= _logsumexp(log_q, (0, 1), dist)
        for _ in range(n_iters):
            log_q -= _logsumexp(log_q, 0, dist) + log_k         # each prototype's total: 1 / K
            log_q -= _logsumexp(log_q, 1) + log_n               # each sample's total: 1 / N
        return _exp(log_q + log_n)


def swav_loss(scores_per_crop, codes, temperature, crops_for_assign):
    """SwAV's swapped prediction loss: every crop other than an assigned one predicts that crop's codes.

    scores_per_crop: list of (B, K) prototype scores, one per crop in crop order. codes: list of (B, K) codes
    (rows summing to 1), one per entry of crops_for_assign, in its order; no gradient flows into them.
    crops_for_assign: indices into scores_per_crop.

    Returns the mean over assigned crops a of the mean over crops v != a of
    -mean over the batch of sum_k codes_a * log softmax(scores_v / temperature) (the seed's averaging).
    """
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores_per_crop]
    total = 0.0
    for assigned, q in zip(crops_for_assign, codes):
        q = q.detach()
        cross = [-(q * log_p[v]).sum(1).mean() for v in range(len(log_p)) if v != assigned]
        total = total + sum(cross) / len(cross)
    return total / len(crops_for_assign)


def spherical_kmeans(memory, k, n_iters, generator):
    """DeepCluster-v2's clustering of unit embeddings (the seed's cluster_memory, for one prototype head).

    memory: (N, D) unit rows. The k centroids start as k distinct rows (torch.randperm(N, generator), its first
    k); each of n_iters iterations assigns every row to its centroid of highest dot product, moves every centroid
    that has rows to their mean (an empty cluster keeps its centroid) and scales every centroid to unit length.

    Returns (centroids (k, D), assignments (N,) int64 to the final centroids)."""
    if k > memory.shape[0]:
        raise ValueError(f"{k} clusters need at least {k} embeddings, got {memory.shape[0]}")
    pick = torch.randperm(memory.shape[0], generator=generator)[:k].to(memory.device)
    centroids = memory[pick].clone()
    for _ in range(n_iters):
        assignments = (memory @ centroids.t()).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, memory)
        counts = torch.bincount(assignments, minlength=k)
        moved = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
        centroids = F.normalize(torch.where((counts > 0).unsqueeze(1), moved, centroids), dim=1)
    return centroids, (memory @ centroids.t()).argmax(1)


def deepcluster_loss(scores_per_head, targets, temperature):
    """DeepCluster-v2's loss: every crop's prototype scores predict its image's cluster, for each head.

    scores_per_head: list of (C B, K_h) scores, one per prototype head, the rows of crop c at c B..(c + 1) B.
    targets: (n_heads, B) int64, each image's cluster in each head, -100 where it has none yet.

    Returns the mean over heads of the cross-entropy of scores / temperature against the targets repeated for
    every crop, averaged over the rows with a target (0 when none has)."""
    total = 0.0
    for scores, target in zip(scores_per_head, targets):
        target = target.repeat(scores.shape[0] // target.shape[0])
        summed = F.cross_entropy(scores / temperature, target, ignore_index=-100, reduction="sum")
        total = total + summed / (target != -100).sum().clamp(min=1)
    return total / len(scores_per_head)
