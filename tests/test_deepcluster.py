"""DeepCluster-v2: its pieces (costs.spherical_kmeans, costs.deepcluster_loss) against naive loops over the seed's
formulas (facebookresearch/swav main_deepclusterv2.py: cluster_memory, the cross-entropy with ignore_index), and the
method's memory, clustering, loss and freeze, in one and two gloo processes and in whole runs."""
import json

import pytest
import torch
import torch.nn.functional as F

import config
import costs
import methods
import train
from helpers import DIGITS, TINY_FLAGS, run_ranks, small_digits


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


# ----------------------------------------------------------------------------------------------------------
# The method: memory, clustering at each epoch's start, loss, and two processes.

N_DATA, FEAT, HEADS, BATCH = 24, 8, (5, 3), 6


def _model(**over):
    hp = dict(method="deepclusterv2", arch="amdim", encoder_size=32, n_classes=3, ndf=8, n_rkhs=32, n_depth=1,
              use_bn=False, nmb_crops=[2, 1], size_crops=[32, 32], min_scale_crops=[0.3, 0.1],
              max_scale_crops=[1.0, 0.3], crops_for_assign=[0, 1], temperature=0.1, feat_dim=FEAT,
              nmb_prototypes=list(HEADS), hidden_mlp=16, freeze_prototypes_niters=0, base_lr=0.6, final_lr=0.0,
              start_warmup=0.0, warmup_epochs=0, wd=1e-6, n_data=N_DATA)
    hp.update(over)
    torch.manual_seed(0)
    return methods.DeepClusterV2(config.normalise(hp))


def _out(step, index):
    """A batch's outputs: unit embeddings of 3 crops (3 B, FEAT), crop c's rows at c B, and its indices."""
    g = torch.Generator().manual_seed(100 + step)
    return {"embedding": F.normalize(torch.randn(3 * len(index), FEAT, generator=g), dim=1), "index": index}


def _batches(n_batches, world=1):
    """Global batches of WORLD x BATCH distinct indices; the images past n_batches x ... stay unseen."""
    order = torch.randperm(N_DATA, generator=torch.Generator().manual_seed(5))
    return [order[i * BATCH * world:(i + 1) * BATCH * world] for i in range(n_batches)]


def test_memory_keeps_each_images_assigned_crops_and_clusters_once_an_epoch():
    model = _model()
    batches = _batches(3)                                     # 18 of 24 images seen
    outs = [_out(i, index) for i, index in enumerate(batches)]
    for out in outs:
        model.prepare(out, None)
    for out, index in zip(outs, batches):
        for slot, crop in enumerate((0, 1)):
            assert torch.equal(model.memory[slot, index], out["embedding"][crop * BATCH:(crop + 1) * BATCH])
    seen = torch.cat(batches)
    assert model.filled.sum() == 18 and model.filled[seen].all()
    model.start_update(0, 0, None, shared_seed=7)
    # Head h clusters memory h mod 2, one generator seeded by the update's shared seed drawing for the heads in turn.
    rows = torch.nonzero(model.filled).flatten()
    g = torch.Generator().manual_seed(7)
    for h, k in enumerate(HEADS):
        centroids, assigned = costs.spherical_kmeans(model.memory[h % 2, rows], k, 10, g)
        assert torch.equal(model.prototypes[h].weight, centroids)
        assert torch.equal(model.assignments[h, rows], assigned)
        assert (model.assignments[h][~model.filled] == -100).all()
    before = model.assignments.clone()
    model.after_step(_out(9, batches[0]), None)               # the memory moves ...
    model.start_update(0, 1, None, shared_seed=8)             # ... but within the epoch nothing is re-clustered
    assert torch.equal(model.assignments, before) and int(model.clustered) == 0
    model.start_update(1, 3, None, shared_seed=9)
    assert int(model.clustered) == 1 and not torch.equal(model.assignments, before)


def test_loss_reads_the_batchs_assignments_and_a_skipped_step_writes_no_memory():
    model = _model()
    for i, index in enumerate(_batches(4)):
        model.prepare(_out(i, index), None)
    model.start_update(0, 0, None, shared_seed=1)
    index = _batches(4)[1]
    scores = [torch.randn(3 * BATCH, k) for k in HEADS]
    terms = model.loss_terms({"scores": scores, "index": index}, None)
    expected = costs.deepcluster_loss(scores, model.assignments[:, index], 0.1)
    assert set(terms) == {"deepcluster"} and torch.equal(terms["deepcluster"], expected)
    memory = model.memory.clone()
    model.after_step(dict(_out(20, index), skipped=torch.tensor(True)), None)
    assert torch.equal(model.memory, memory)
    model.after_step(dict(_out(20, index), skipped=torch.tensor(False)), None)
    assert not torch.equal(model.memory, memory)


def test_prototypes_are_frozen_for_freeze_prototypes_niters():
    model = _model(freeze_prototypes_niters=2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.before_optimizer_step(1)
    assert all(head.weight.grad is None for head in model.prototypes)
    assert model.head[0].weight.grad is not None
    for head in model.prototypes:
        head.weight.grad = torch.ones_like(head.weight)
    model.before_optimizer_step(2)
    assert all(head.weight.grad is not None for head in model.prototypes)


WORLD, STEPS = 2, 3


def _rank(dist, result_dir=None):
    """Each rank remembers its round-robin half of every global batch, clusters, and scores its half."""
    model = _model()
    mine = slice(dist.rank, None, WORLD)
    for step, index in enumerate(_batches(STEPS, WORLD)):
        out = _out(step, index)
        local = torch.cat([out["embedding"][c * len(index):(c + 1) * len(index)][mine] for c in range(3)])
        model.prepare({"embedding": local, "index": index[mine]}, dist)
    model.start_update(0, 0, dist, shared_seed=3)
    index = _batches(STEPS, WORLD)[0]
    scores = [torch.randn(3 * len(index), k, generator=torch.Generator().manual_seed(k)) for k in HEADS]
    local = [torch.cat([s[c * len(index):(c + 1) * len(index)][mine] for c in range(3)]) for s in scores]
    loss = model.loss_terms({"scores": local, "index": index[mine]}, dist)["deepcluster"]
    return {"memory": model.memory, "filled": model.filled, "assignments": model.assignments,
            "prototypes": [h.weight for h in model.prototypes], "loss": loss}


@pytest.mark.slow
def test_two_processes_compute_the_assignments_and_losses_of_one_process_on_the_whole_batch(tmp_path):
    ranks = run_ranks(_rank, WORLD, tmp_path)
    single = _model()
    for step, index in enumerate(_batches(STEPS, WORLD)):
        single.prepare(_out(step, index), None)
    single.start_update(0, 0, None, shared_seed=3)
    for r in ranks:
        assert torch.equal(r["memory"], single.memory) and torch.equal(r["filled"], single.filled)
        assert torch.equal(r["assignments"], single.assignments)
        assert all(torch.equal(a, h.weight) for a, h in zip(r["prototypes"], single.prototypes))
    index = _batches(STEPS, WORLD)[0]
    scores = [torch.randn(3 * len(index), k, generator=torch.Generator().manual_seed(k)) for k in HEADS]
    whole = single.loss_terms({"scores": scores, "index": index}, None)["deepcluster"]
    # Every image is assigned and the halves are equal: DDP's average of the ranks' means is the whole batch's.
    assert torch.allclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, whole, rtol=1e-6)


def test_a_run_prepares_its_memory_and_resumes_across_an_epoch_exactly(tmp_path, monkeypatch):
    small_digits(monkeypatch, n_train=300, n_test=100)
    argv = DIGITS + TINY_FLAGS["deepclusterv2"] + ["--output_dir", str(tmp_path), "--view_grid", "0"]
    train.main(argv + ["--run_name", "straight", "--epochs", "2"])
    train.main(argv + ["--run_name", "split", "--epochs", "1"])
    train.main(argv + ["--run_name", "split", "--epochs", "2"])
    a, b = (torch.load(tmp_path / run / "amdim_cpt.pth", weights_only=True) for run in ("straight", "split"))
    assert a["cursor"] == b["cursor"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    model = a["model"]
    assert model["filled"].all() and int(model["clustered"]) == 1 and (model["assignments"] >= 0).all()
    records = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl") if '"deepcluster"' in line]
    assert records and all(r["deepcluster"] > 0 for r in records)     # assigned from the first update on
