"""Weighted kNN on frozen features: knn_predict against a naive per-query computation in float64."""
import math

import pytest
import torch

import knn

N_CLASSES = 5


def clustered(n, n_queries, dim=16, n_classes=N_CLASSES, spread=1.5, seed=0):
    """Overlapping Gaussian clusters, so that votes are mixed: memory (n, dim), its labels (n,), queries
    (n_queries, dim) and their labels (n_queries,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g)
    mem_y = torch.randint(0, n_classes, (n,), generator=g)
    q_y = torch.randint(0, n_classes, (n_queries,), generator=g)
    mem = centres[mem_y] + spread * torch.randn(n, dim, generator=g)
    queries = centres[q_y] + spread * torch.randn(n_queries, dim, generator=g)
    return mem, mem_y, queries, q_y


def naive_scores(memory, labels, queries, n_classes, k, temperature):
    """Per query, in Python floats (float64) with loops: cosine to every labelled memory row, sorted descending, the
    first k, exp(cos / T) summed per class. Returns a list of per-class score lists."""
    def norm(v):
        return math.sqrt(sum(x * x for x in v))

    rows = [(m, norm(m), y) for m, y in zip(memory.double().tolist(), labels.tolist()) if y >= 0]
    out = []
    for q in queries.double().tolist():
        sims = [(sum(a * b for a, b in zip(q, m)) / (norm(q) * m_norm), y) for m, m_norm, y in rows]
        sims.sort(key=lambda pair: -pair[0])
        scores = [0.0] * n_classes
        for sim, y in sims[:k]:
            scores[y] += math.exp(sim / temperature)
        out.append(scores)
    return out


def assert_matches_naive(pred, memory, labels, queries, k, temperature=0.07, n_classes=N_CLASSES):
    assert pred.dtype == torch.int64 and pred.shape == (queries.shape[0],)
    for p, scores in zip(pred.tolist(), naive_scores(memory, labels, queries, n_classes, k, temperature)):
        # The naive argmax, up to float32 rounding in a near-tie.
        assert scores[p] >= max(scores) * (1 - 1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 50, 1000])
@pytest.mark.parametrize("k", [1, 20, 500])
def test_matches_naive_for_any_chunking_and_k(chunk_size, k):
    mem, mem_y, queries, _ = clustered(n=120, n_queries=50)        # 7 does not divide 50; k=500 > N
    pred = knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=k, chunk_size=chunk_size)
    assert_matches_naive(pred, mem, mem_y, queries, k)


def test_chunking_does_not_change_predictions_and_k_is_capped_at_n():
    mem, mem_y, queries, _ = clustered(n=150, n_queries=64, seed=1)
    ref = knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=30)
    for chunk_size in (1, 5, 13, 64, 65):
        assert torch.equal(knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=30, chunk_size=chunk_size), ref)
    assert torch.equal(knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=10_000),
                       knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=150))


def test_temperature_changes_the_weighting():
    mem, mem_y, queries, _ = clustered(n=100, n_queries=40, seed=2)
    for temperature in (0.01, 1.0):
        pred = knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=40, temperature=temperature, chunk_size=9)
        assert_matches_naive(pred, mem, mem_y, queries, k=40, temperature=temperature)


def test_unlabelled_memory_rows_are_dropped():
    mem, mem_y, queries, _ = clustered(n=120, n_queries=30, seed=3)
    mem_y = mem_y.clone()
    mem_y[::3] = -1
    pred = knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=25, chunk_size=8)
    assert_matches_naive(pred, mem, mem_y, queries, k=25)
    keep = mem_y >= 0
    assert torch.equal(pred, knn.knn_predict(mem[keep], mem_y[keep], queries, N_CLASSES, k=25))
    # k beyond the labelled rows (80) is capped at them, not at all rows.
    assert torch.equal(knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=100),
                       knn.knn_predict(mem[keep], mem_y[keep], queries, N_CLASSES, k=80))
    with pytest.raises(ValueError, match="no labelled memory"):
        knn.knn_predict(mem, torch.full_like(mem_y, -1), queries, N_CLASSES)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs_are_computed_in_float32(dtype):
    mem, mem_y, queries, _ = clustered(n=100, n_queries=40, seed=4)
    mem, queries = mem.to(dtype), queries.to(dtype)
    pred = knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=15, chunk_size=16)
    assert_matches_naive(pred, mem, mem_y, queries, k=15)
    assert torch.equal(pred, knn.knn_predict(mem.float(), mem_y, queries.float(), N_CLASSES, k=15))


def test_features_are_normalised_inside():
    mem, mem_y, queries, _ = clustered(n=80, n_queries=20, seed=5)
    scale = torch.rand(80, 1) * 100 + 0.01
    assert torch.equal(knn.knn_predict(mem * scale, mem_y, queries * 7, N_CLASSES, k=10),
                       knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=10))


def test_a_tie_between_classes_goes_to_the_smaller_class():
    memory = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pred = knn.knn_predict(memory, torch.tensor([3, 1, 0]), torch.tensor([[1.0, 0.0]]), 4, k=2)
    assert pred.tolist() == [1]


def test_well_separated_clusters_score_100_and_random_labels_score_chance():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(10, 32, generator=g) * 10
    mem_y, q_y = torch.randint(0, 10, (500,), generator=g), torch.randint(0, 10, (300,), generator=g)
    mem = centres[mem_y] + 0.1 * torch.randn(500, 32, generator=g)
    queries = centres[q_y] + 0.1 * torch.randn(300, 32, generator=g)
    assert knn.knn_top1(mem, mem_y, queries, q_y, 10, k=20) == 100.0
    # Query labels independent of everything: the hits are Binomial(2000, 0.1), 10 % +- 0.67 %.
    mem, queries = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    mem_y, q_y = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (2000,), generator=g)
    assert 6.5 < knn.knn_top1(mem, mem_y, queries, q_y, 10) < 13.5


def test_shapes_and_bad_arguments():
    mem, mem_y, queries, q_y = clustered(n=30, n_queries=10, seed=7)
    assert knn.knn_predict(mem, mem_y, queries[:0], N_CLASSES).shape == (0,)
    assert knn.default_chunk_size(50_000) == 335 and knn.default_chunk_size(0) >= 1
    with pytest.raises(ValueError, match="out of range"):
        knn.knn_predict(mem, mem_y, queries, n_classes=int(mem_y.max()))
    with pytest.raises(ValueError, match="same D"):
        knn.knn_predict(mem, mem_y, queries[:, :3], N_CLASSES)
    with pytest.raises(ValueError, match="memory_labels"):
        knn.knn_predict(mem, mem_y[:5], queries, N_CLASSES)
    with pytest.raises(ValueError, match="k >= 1"):
        knn.knn_predict(mem, mem_y, queries, N_CLASSES, k=0)
    with pytest.raises(ValueError, match="query_labels"):
        knn.knn_top1(mem, mem_y, queries, q_y[:3], N_CLASSES)
    with pytest.raises(ValueError, match="no queries"):
        knn.knn_top1(mem, mem_y, queries[:0], q_y[:0], N_CLASSES)
