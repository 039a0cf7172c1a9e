"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination"; the kNN monitor MoCo users run).

The training split's features are the memory, the test split's features the queries. Both are L2-normalised
per row, so their dot product is the cosine similarity. Each query takes its k most similar memory items,
weights each by exp(similarity / temperature), sums the weights per class, and predicts the class with the
largest sum.

Cost: one matrix product per chunk of queries against the whole memory, then a top-k and a scatter-add per
chunk; no per-sample Python loops. Memory: one normalised float32 copy of the memory (N * D * 4 bytes) plus,
per chunk, the (chunk, N) similarity matrix, kept near SIM_CHUNK_BYTES by default.

Pure functions on tensors: they compute on the device the inputs are on and hold no state.
"""
import torch

# Default bound on the (chunk, N) float32 similarity matrix of one chunk of queries: 64 MiB, i.e.
# 16,777,216 // N query rows per chunk (335 rows for N = 50,000; 3,355 rows for N = 5,000).
SIM_CHUNK_BYTES = 64 * 2 ** 20


def default_chunk_size(n_memory):
    """Query rows per chunk so that a (chunk, n_memory) float32 similarity matrix takes at most
    SIM_CHUNK_BYTES (at least one row)."""
    return max(1, SIM_CHUNK_BYTES // (4 * max(1, n_memory)))


def _unit_rows(x, copy):
    """x (M, D), any floating dtype -> (M, D) float32 with unit L2 norm per row (all-zero rows stay zero).
    With copy=False, x may be overwritten when it is already float32 (the caller owns it)."""
    out = x.to(torch.float32, copy=copy)
    return out.div_(out.norm(dim=1, keepdim=True).clamp_min_(1e-12))


def knn_predict(memory, memory_labels, queries, n_classes, k=200, temperature=0.07, chunk_size=None):
    """Weighted kNN prediction of each query's class.

    memory: (N, D) floating features of the labelled set (raw: they are L2-normalised here).
    memory_labels: (N,) int64 classes in [0, n_classes); rows labelled < 0 (unlabelled, e.g. STL10's
        unlabeled split) are dropped from the memory.
    queries: (Q, D) floating features (raw; normalised here, one chunk at a time).
    n_classes: number of classes C.
    k: neighbours per query, capped at the number of labelled memory rows.
    temperature: T in the weight exp(cosine / T).
    chunk_size: query rows per matrix product; None picks default_chunk_size(N) (a ~64 MiB similarity
        matrix). The result does not depend on it.

    Everything is computed in float32 whatever the input dtype. A tie between class scores goes to the
    smallest class index (torch.argmax returns the first maximum); a tie in similarity at the k-th place
    keeps whichever item torch.topk returns.

    Returns: (Q,) int64 predicted classes, on the memory's device (queries must be on it too).
    """
    if memory.dim() != 2 or queries.dim() != 2 or memory.shape[1] != queries.shape[1]:
        raise ValueError(f"memory (N, D) and queries (Q, D) must be 2-D with the same D; got "
                         f"{tuple(memory.shape)} and {tuple(queries.shape)}")
    if memory_labels.shape != (memory.shape[0],):
        raise ValueError(f"memory_labels must have shape ({memory.shape[0]},); got {tuple(memory_labels.shape)}")
    if k < 1 or temperature <= 0 or (chunk_size is not None and chunk_size < 1):
        raise ValueError(f"need k >= 1, temperature > 0 and chunk_size >= 1; got {k}, {temperature}, {chunk_size}")

    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1; got {n_classes}")

    labels = memory_labels.to(device=memory.device, dtype=torch.int64)
    keep = labels >= 0
    if bool(keep.all()):
        bank = _unit_rows(memory, copy=True)
    else:
        labels = labels[keep]
        bank = _unit_rows(memory[keep], copy=False)     # indexing already made a copy
    n_memory = bank.shape[0]
    if n_memory == 0:
        raise ValueError("no labelled memory rows (every memory label is < 0)")
    if int(labels.max()) >= n_classes:
        raise ValueError(f"memory label {int(labels.max())} is out of range for n_classes={n_classes}")

    k = min(k, n_memory)
    chunk_size = chunk_size or default_chunk_size(n_memory)
    bank_t = bank.t()                                   # (D, N) view
    preds = []
    for start in range(0, queries.shape[0], chunk_size):
        q = _unit_rows(queries[start:start + chunk_size], copy=True)   # (c, D)
        sim = q @ bank_t                                # (c, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)           # (c, k) each
        del sim
        weights = top_sim.div_(temperature).exp_()      # (c, k)
        scores = torch.zeros(q.shape[0], n_classes, dtype=torch.float32, device=q.device)
        scores.scatter_add_(1, labels[top_idx], weights)    # (c, C) summed weight per class
        preds.append(scores.argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.int64, device=bank.device)
    return torch.cat(preds)


def knn_top1(memory, memory_labels, queries, query_labels, n_classes, k=200, temperature=0.07, chunk_size=None):
    """Weighted kNN top-1 accuracy of the queries, in percent (0-100).

    memory (N, D), memory_labels (N,), queries (Q, D) and the other arguments as in knn_predict;
    query_labels: (Q,) int64 true classes of the queries (Q >= 1).

    Returns: float, 100 * (fraction of queries whose predicted class equals query_labels).
    """
    if query_labels.shape != (queries.shape[0],):
        raise ValueError(f"query_labels must have shape ({queries.shape[0]},); got {tuple(query_labels.shape)}")
    if queries.shape[0] == 0:
        raise ValueError("no queries to score")
    preds = knn_predict(memory, memory_labels, queries, n_classes, k, temperature, chunk_size)
    return 100.0 * (preds == query_labels.to(preds.device).long()).double().mean().item()
