"""--compile auto|on|off: when a run compiles, the fallback to eager when compilation fails, and a real
inductor-compiled training run through train.py."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import augment
import compiling
import distributed
import engine
import imageops
import train
from helpers import BASE, TINY_ENCODER, TINY_FLAGS, run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def dynamo_enabled(monkeypatch):
    """conftest.py disables torch.compile for the other tests' sake (torch reads TORCHDYNAMO_DISABLE at every
    torch.compile); these tests need it, in this process and the ones they start."""
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)


def test_auto_compiles_only_long_self_supervised_runs_with_a_toolchain(monkeypatch):
    long = compiling.AUTO_MIN_UPDATES
    assert compiling.decide("auto", True, long, CPU)[0]
    assert not compiling.decide("auto", True, long - 1, CPU)[0]
    assert not compiling.decide("auto", False, 10 * long, CPU)[0]           # classifier phase
    assert compiling.decide("on", False, 1, CPU)[0] and not compiling.decide("off", True, 10 * long, CPU)[0]
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    compile_step, why = compiling.decide("auto", True, long, CPU)
    assert not compile_step and "no C++ compiler" in why
    assert compiling.decide("on", True, long, CPU)[0]                      # on tries anyway


def _failing_backend(gm, example_inputs):
    raise RuntimeError("compiler exploded\nsecond line of a long report")


def test_a_failed_compilation_warns_once_and_runs_eager_with_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    warnings = []
    step = compiling.EagerFallback(net, warnings.append, backend=_failing_backend)
    x = torch.randn(5, 4)
    for _ in range(3):
        out = step(x)
        assert torch.equal(out, net(x))
    assert len(warnings) == 1 and "compiler exploded" in warnings[0] and "second line" not in warnings[0]
    assert "\n" not in warnings[0]
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    # The wrapper holds the module's parameters once.
    assert list(step.state_dict()) == [f"module.{k}" for k in net.state_dict()]


def test_an_error_of_the_model_itself_is_raised_not_hidden():
    step = compiling.EagerFallback(nn.Linear(4, 2), lambda line: None, backend=_failing_backend)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        step(torch.randn(3, 5))


def test_a_compiled_module_matches_eager():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    step = compiling.EagerFallback(net, pytest.fail, backend="eager")      # dynamo's tracing, no code generation
    x = torch.randn(5, 4)
    assert torch.allclose(step(x), net(x)) and not step.failed


def _train(tmp_path, name, *flags):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))       # no TORCHDYNAMO_DISABLE
    cmd = [sys.executable, "train.py", "--dataset", "DIGITS", *TINY_ENCODER, "--batch_size", "100", "--epochs", "1",
           "--num_workers", "0", "--output_dir", str(tmp_path), "--run_name", name, *flags]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / name / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return out.stdout, records


@pytest.mark.slow
@pytest.mark.skipif(compiling.toolchain_missing(CPU) is not None, reason="inductor needs a C++ compiler")
def test_train_py_compiles_with_inductor_and_learns_like_eager(tmp_path):
    """The classifier phase with --compile on: inductor really compiles the classifiers' step (C++ on the CPU,
    cached under TORCHINDUCTOR_CACHE_DIR) and the epoch's losses match the eager run's."""
    stdout, records = _train(tmp_path, "eager", "--classifiers")
    assert "torch.compile off (auto: the classifier phase" in stdout
    assert records[0]["config"]["compiled"] is False
    stdout, compiled = _train(tmp_path, "compiled", "--classifiers", "--compile")
    assert "torch.compile on (--compile on)" in stdout and "warning" not in stdout
    assert compiled[0]["config"]["compiled"] is True
    assert os.listdir(tmp_path / "inductor")
    eager_epoch, compiled_epoch = records[-1], compiled[-1]
    assert compiled_epoch["class_lin"] == pytest.approx(eager_epoch["class_lin"], rel=1e-3)
    # The MLP's dropout draws from inductor's own generator in the compiled step: the same loss, other masks.
    assert compiled_epoch["class_mlp"] == pytest.approx(eager_epoch["class_mlp"], rel=0.05)


def test_a_compiled_function_that_fails_to_compile_warns_once_and_runs_eager():
    warnings = []
    double = compiling.function(lambda x: 2 * x, warnings.append, backend=_failing_backend)
    for _ in range(3):
        assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
    assert len(warnings) == 1 and "compiler exploded" in warnings[0]


RANDOM_OPS = ("rand", "uniform", "normal", "bernoulli", "multinomial", "exponential", "geometric", "cauchy")


def _views_of(kind, path):
    crops = augment.MultiCrop((1, 1), (32, 16), (0.3, 0.05), (1.0, 0.3))
    options = {"crops": crops} if kind == "swav" else {}
    if path == "memory":
        return augment.make_views(kind, "cifar", batched=True, **options)
    return augment.make_crop_views(kind, "cifar", **options).colour


@pytest.mark.parametrize("kind, path", [("amdim", "memory"), ("moco_v2", "memory"), ("cmc", "memory"),
                                        ("amdim", "crops"), ("swav", "crops")])
def test_compiled_views_trace_whole_draw_eagerly_and_equal_eager_views(kind, path, monkeypatch):
    """Where a view's passes run masked (a GPU; here the CPU with imageops.SKIPS_ON emptied), compile_views
    compiles each of its pixel functions as one graph (fullgraph: no break, so no host read inside), the random
    numbers drawn outside it (no random op in any graph), once (a second batch reuses the graphs); the views
    equal eager views of the same seed, since dynamo's eager backend runs the traced ops as they are."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(imageops, "SKIPS_ON", ())
    views = _views_of(kind, path)
    gen = torch.Generator().manual_seed(0)
    if path == "memory":
        images = torch.randint(0, 256, (4, 3, 40, 36), dtype=torch.uint8, generator=gen)
    else:
        images = [torch.randint(0, 256, (4, 3, s, s), dtype=torch.uint8, generator=gen) for s in (32, 16)]
    torch.manual_seed(5)
    eager = views(images)
    augment.compile_views(views, pytest.fail, backend=backend)
    torch.manual_seed(5)
    compiled = views(images)
    assert len(compiled) == len(eager) and all(torch.equal(c, e) for c, e in zip(compiled, eager))
    assert graphs
    for gm in graphs:
        targets = [str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes
                   if n.op in ("call_function", "call_method")]
        assert not [t for t in targets if any(r in t for r in RANDOM_OPS)], targets
    n_graphs = len(graphs)
    views(images)
    assert len(graphs) == n_graphs


def test_views_stay_uncompiled_where_they_skip_samples(monkeypatch):
    """On the CPU (imageops.SKIPS_ON) a view reads its draws to skip samples: compile_views leaves it eager."""
    views = _views_of("moco_v2", "memory")
    augment.compile_views(views, pytest.fail, backend=lambda gm, inputs: pytest.fail("compiled on the skip path"))
    torch.manual_seed(2)
    out = views(torch.randint(0, 256, (4, 3, 40, 36), dtype=torch.uint8))
    assert [v.shape for v in out] == [(4, 3, 32, 32)] * 2


@pytest.mark.parametrize("method", list(TINY_FLAGS))
def test_a_compiled_step_computes_each_methods_losses_as_eager_does(method, tmp_path, monkeypatch):
    """wrap_step with compilation also compiles the phase's loss_terms (the losses and their backward fuse
    too), random draws kept on the eager generator (fallback_random); traced by dynamo (its eager backend: no
    code generation), every term equals the eager one for the same seed, AMDIM's random locations included."""
    asked = []

    def function(fn, warn, **options):
        asked.append(options)
        return torch.compile(fn, backend="eager")
    monkeypatch.setattr(compiling, "function", function)
    args = train.parse_args([*BASE, *TINY_FLAGS[method], "--output_dir", str(tmp_path), "--run_name", "r",
                             "--compile", "off"])
    train.seed_everything(0)
    run, _ = train.setup(distributed.Dist(), args)
    loader = train.make_loaders(run)
    loader.sampler.set_epoch(0)
    views, _, index = engine.training_views(next(iter(loader)), run.splits.batch_augment, CPU, run.n_views)
    out = run.phase.forward(run.model, views, run.dist)
    out.update(index=index, shared_seed=3)
    torch.manual_seed(1)
    eager = run.phase.loss_terms(out, run.dist)
    train.wrap_step(run.phase, run.dist, compile_step=True)
    assert asked == [{"options": {"fallback_random": True}}]
    torch.manual_seed(1)
    compiled = run.phase.loss_terms(out, run.dist)
    assert compiled.keys() == eager.keys()
    assert all(torch.equal(compiled[k], eager[k]) for k in eager), {k: (compiled[k], eager[k]) for k in eager}


def _compiled_losses_rank(dist, method, out_dir):
    """A rank of test_two_ranks_compute_compiled_losses_as_eager: (eager terms and gradients, compiled ones)."""
    os.environ.pop("TORCHDYNAMO_DISABLE", None)             # conftest's, inherited by this process
    compiling.function = lambda fn, warn, **options: torch.compile(fn, backend="aot_eager")
    args = train.parse_args([*BASE, *TINY_FLAGS[method], "--output_dir", out_dir, "--run_name", "r",
                             "--compile", "off"])
    train.seed_everything(0)
    run, _ = train.setup(dist, args)
    loader = train.make_loaders(run)
    loader.sampler.set_epoch(0)
    views, _, index = engine.training_views(next(iter(loader)), run.splits.batch_augment, CPU, run.n_views)
    results = []
    for compiled in (False, True):
        if compiled:
            run.phase.compile_losses(print)
        run.model.zero_grad(set_to_none=True)
        torch.manual_seed(1)                                # MoCo's forward shuffles the batch over the ranks
        out = run.phase.forward(run.model, views, dist)
        out.update(index=index, shared_seed=3)
        terms = run.phase.loss_terms(out, dist)
        sum(terms.values()).backward()
        results.append({"terms": {k: v.detach() for k, v in terms.items()},
                        "grads": [p.grad.clone() for p in run.model.parameters() if p.grad is not None]})
    return results


@pytest.mark.slow
@pytest.mark.parametrize("method", ["amdim", "moco"])
def test_two_ranks_compute_compiled_losses_as_eager(method, tmp_path):
    """Under two gloo processes the losses gather every rank's rows (AMDIM's negatives, MoCo's keys: functional
    collectives): traced with them (AOTAutograd, no code generation), every term and gradient equals eager on
    each rank."""
    for eager, compiled in run_ranks(_compiled_losses_rank, 2, tmp_path, method, str(tmp_path), timeout_s=120):
        assert compiled["terms"].keys() == eager["terms"].keys()
        for k in eager["terms"]:
            assert torch.allclose(compiled["terms"][k], eager["terms"][k], rtol=1e-5, atol=1e-6), k
        assert len(compiled["grads"]) == len(eager["grads"]) > 0
        assert all(torch.allclose(c, e, rtol=1e-4, atol=1e-6) for c, e in zip(compiled["grads"], eager["grads"]))
