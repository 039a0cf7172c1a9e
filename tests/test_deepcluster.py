"""DeepCluster-v2's pieces (costs.spherical_kmeans, costs.deepcluster_loss) against naive loops over the seed's
formulas (facebookresearch/swav main_deepclusterv2.py: cluster_memory, the cross-entropy with ignore_index)."""
import torch
import torch.nn.functional as F

import costs


def naive_kmeans(memory, k, n_iters, seed):
    """cluster_memory for one head, row by row: centroids from randperm's first k rows; n_iters rounds of
    assignment by the largest dot product (the first on a tie), the mean of each non-empty cluster, unit length;
    then the final assignment. Also returns the smallest cluster size seen in a round."""
    pick = torch.randperm(len(memory), generator=torch.Generator().manual_seed(seed))[:k]
    centroids = [memory[i].clone() for i in pick]
    smallest = len(memory)

    def assign():
        out = []
        for row in memory:
            dots = [float(torch.dot(row, c)) for c in centroids]
            out.append(dots.index(max(dots)))
        return out

    for _ in range(n_iters):
        assignment = assign()
        for j in range(k):
            members = [memory[i] for i in range(len(memory)) if assignment[i] == j]
            smallest = min(smallest, len(members))
            if members:
                centroids[j] = sum(members) / len(members)
            centroids[j] = centroids[j] / centroids[j].norm()
    return torch.stack(centroids), torch.tensor(assign()), smallest


def test_spherical_kmeans_equals_the_seeds_loop():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    memory = F.normalize(centres[torch.randint(0, 5, (60,), generator=g)] + 0.3 * torch.randn(60, 8, generator=g,
                         dtype=torch.float64), dim=1)
    centroids, assignments = costs.spherical_kmeans(memory, 7, 10, torch.Generator().manual_seed(3))
    expected_c, expected_a, _ = naive_kmeans(memory, 7, 10, seed=3)
    assert torch.allclose(centroids, expected_c, atol=1e-12) and torch.equal(assignments, expected_a)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(7, dtype=torch.float64))


def test_an_empty_cluster_keeps_its_centroid():
    # Rows 0 and 1 are the same point: as centroids, the later one never wins a row (ties go to the first).
    memory = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64), dim=1)
    centroids, assignments = costs.spherical_kmeans(memory, 4, 3, torch.Generator().manual_seed(1))
    expected_c, expected_a, smallest = naive_kmeans(memory, 4, 3, seed=1)
    assert smallest == 0
    assert torch.allclose(centroids, expected_c, atol=1e-12) and torch.equal(assignments, expected_a)
    assert len(set(assignments.tolist())) == 3


def test_deepcluster_loss_and_gradients_equal_a_loop_over_labelled_rows():
    g = torch.Generator().manual_seed(0)
    n_crops, batch, temperature = 3, 4, 0.1
    scores = [torch.randn(n_crops * batch, k, generator=g, dtype=torch.float64, requires_grad=True) for k in (5, 7)]
    targets = torch.tensor([[2, -100, 0, 4], [-100, -100, -100, -100]])      # head 1: nothing assigned yet
    loss = costs.deepcluster_loss(scores, targets, temperature)
    naive = []
    for s, t in zip(scores, targets):
        terms = [-F.log_softmax(s[c * batch + i] / temperature, dim=0)[t[i]]
                 for c in range(n_crops) for i in range(batch) if t[i] != -100]
        naive.append(sum(terms) / len(terms) if terms else torch.zeros((), dtype=torch.float64))
    expected = sum(naive) / 2
    assert torch.allclose(loss, expected, rtol=1e-12)
    got = torch.autograd.grad(loss, scores)
    want = torch.autograd.grad(expected, scores[0])
    assert torch.allclose(got[0], want[0], rtol=1e-10) and torch.equal(got[1], torch.zeros_like(got[1]))
