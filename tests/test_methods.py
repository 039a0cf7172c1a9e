"""The method interface: one contract every registered method meets (a new method adds its tiny flags to
helpers.TINY_FLAGS; test_resume.py kills and resumes each), and torch.hub loading of every kind of checkpoint."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import distributed
import methods
import recipes
import test as test_py
import train
import utils
from helpers import AMDIM_ENCODER, BASE, TINY_FLAGS, small_digits, update_now
from hparams import AT_LEAST_1, Param
from model import Evaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINAL = os.path.join(ROOT, "tests", "fixtures", "amdim_original_c10_tiny.pth")


def test_every_registered_method_has_a_tiny_config():
    assert set(TINY_FLAGS) == set(methods.METHODS)


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_method_contract(method, tmp_path):
    """Finite named loss terms, a real update, a state-dict round trip through a checkpoint file, test.py (with
    kNN) on the result."""
    args = train.parse_args(BASE + TINY_FLAGS[method] + ["--output_dir", str(tmp_path), "--run_name", method])
    utils.seed_everything(args.seed)
    run, _ = train.setup(distributed.Dist(), args)
    assert run.model.hyperparams["method"] == method
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    batch = next(iter(train.make_loaders(run)))
    values, stop = update_now(run, batch, epoch=0)
    assert values is not None and not stop
    terms = {k: v for k, v in values.items() if k not in ("loss", "lr", "n_labelled", "correct_mlp", "correct_lin")}
    assert {"class_mlp", "class_lin"} < set(terms) and len(terms) > 2
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    changed = [k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("evaluator.") for k in changed) and any(not k.startswith("evaluator.") for k in changed)

    checkpoint.save_run(run)
    run.log.close()
    cpt = str(tmp_path / method / "amdim_cpt.pth")
    reloaded = checkpoint.load_model(cpt)
    assert reloaded.hyperparams == run.model.hyperparams
    for k, v in run.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    result = test_py.main([cpt, "--dataset", "DIGITS", "--json", "--knn", "20", "--num_workers", "0",
                           "--device", "cpu"])
    assert result["n_images"] == 297
    for key in ("top1_linear", "top1_mlp", "top1_knn"):
        assert 0 <= result[key] <= 100


class _Toy(methods.Method):
    """A method this code has never seen: each image's two views' unit embeddings pulled together (no negatives,
    so it collapses, which does not matter here), with a hyperparameter, a recipe and views of its own."""
    name = "toy"
    PARAMS = (Param("toy_dim", int, 8, "the toy's embedding width", allowed=AT_LEAST_1),)
    RECIPE = recipes.Recipe("sgd", 0.05, decay=0.5, classifier_lr=0.1, epochs=4, milestones=(2,))

    @classmethod
    def training_views(cls, hp):
        return methods.ViewSpec("moco_v1")

    def __init__(self, hp):
        super().__init__(hp)
        self.backbone = methods.make_backbone(hp)
        self.n_features = self.backbone.width
        self.head = torch.nn.Linear(self.n_features, hp["toy_dim"])
        self.evaluator = Evaluator(self.n_features, hp["n_classes"])

    def forward(self, views, dist=None):
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])
        return {"z1": F.normalize(self.head(h1), dim=1), "z2": F.normalize(self.head(h2), dim=1),
                "logits": self.evaluator(h1)}

    def loss_terms(self, out, dist):
        return {"toy": (out["z1"] - out["z2"]).pow(2).sum(1).mean()}

    def features(self, x):
        return self.backbone(x)


def test_a_new_method_is_one_class_and_one_registry_line(tmp_path, monkeypatch, capsys):
    """Registering a class is all it takes: its flag in --help and its checks, a run trained with its recipe
    (base LR, milestone scaled to --epochs), its checkpoint read back and scored by test.py."""
    monkeypatch.setitem(methods.METHODS, "toy", _Toy)
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "[toy] the toy's embedding width (default: 8)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        train.parse_args(["--method", "toy", "--toy_dim", "0"])
    assert "--toy_dim: got 0, expected an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--method", "amdim", "--toy_dim", "4"])
    assert "--toy_dim does not apply to --method amdim" in capsys.readouterr().err

    small_digits(monkeypatch)                     # 300 training images: 3 updates an epoch; 100 test images
    flags = BASE + AMDIM_ENCODER + ["--method", "toy", "--toy_dim", "4", "--epochs", "3", "--compile", "off",
                                    "--output_dir", str(tmp_path), "--run_name", "toy"]
    train.main(flags)
    cpt = str(tmp_path / "toy" / "amdim_cpt.pth")
    saved = torch.load(cpt, weights_only=True)
    assert saved["hyperparams"]["method"] == "toy" and saved["hyperparams"]["toy_dim"] == 4
    assert saved["cursor"]["info_epoch"] == 3 and saved["cursor"]["info_step"] == 9
    with open(tmp_path / "toy" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    config = records[0]["config"]
    assert config["milestones"] == [2] and config["learning_rates"] == [0.05, 0.1]     # 2 of 4 epochs -> 2 of 3
    lrs = [r["lr"] for r in records if r.get("event") == "epoch"]
    assert lrs == pytest.approx([0.05, 0.05, 0.025])
    assert checkpoint.load_model(cpt).head.out_features == 4
    result = test_py.main([cpt, "--dataset", "DIGITS", "--json", "--num_workers", "0", "--device", "cpu"])
    assert result["n_images"] == 100 and 0 <= result["top1_linear"] <= 100


def test_moco_on_a_resnet_takes_a_real_update(tmp_path):
    args = train.parse_args(["--dataset", "DIGITS", "--method", "moco", "--arch", "resnet18", "--batch_size", "8",
                             "--num_workers", "0", "--device", "cpu", "--mlp", "--aug-plus", "--view_grid", "0",
                             "--output_dir", str(tmp_path)])
    run, _ = train.setup(distributed.Dist(), args)
    assert run.model.hyperparams["moco_k"] == 1500           # capped at the training split
    assert isinstance(run.optimizer, torch.optim.SGD) and len(run.optimizer.param_groups) == 2
    values, _ = update_now(run, next(iter(train.make_loaders(run))), epoch=0)
    assert set(values) >= {"align", "uniform", "class_mlp"} and all(map(torch.isfinite, map(torch.tensor,
                                                                                              values.values())))
    assert int(run.model.queue_ptr) == 8
    run.log.close()


def test_hub_loads_the_frozen_encoder_of_every_kind_of_checkpoint(tmp_path):
    paths = {"original": ORIGINAL}
    for method in sorted(methods.METHODS):
        args = train.parse_args(BASE + TINY_FLAGS[method] + ["--output_dir", str(tmp_path), "--run_name", method])
        run, _ = train.setup(distributed.Dist(), args)
        checkpoint.save_run(run)
        run.log.close()
        paths[method] = str(tmp_path / method / "amdim_cpt.pth")
    x = torch.randn(3, 3, 32, 32)
    for name, path in paths.items():
        enc = torch.hub.load(ROOT, "encoder", checkpoint=path, source="local")
        feats = enc.features(x)
        assert feats.shape == (3, enc.n_features) and not feats.requires_grad, name
        enc.train()
        assert not enc.method.training                       # stays frozen
        expected = checkpoint.load_model(path).eval().features(x)
        assert torch.allclose(feats, expected), name


def test_knn_accuracy_matches_features_scored_by_hand_and_test_py_reports_it(monkeypatch):
    """engine.knn_accuracy (batched extraction, chunked voting) against features extracted one image at a time
    and voted by knn.py, on the original AMDIM code's checkpoint; then test.py --knn on the same file. DIGITS cut
    to 600 memory and 150 test images."""
    import datasets
    import engine
    import knn
    small_digits(monkeypatch, n_train=600, n_test=150)
    splits = datasets.build_splits("DIGITS", "./data", "classifiers")
    model = checkpoint.load_model(ORIGINAL).eval()
    got = engine.knn_accuracy(model, splits.memory, splits.test, distributed.Dist(), amp=False, batch_size=64,
                              num_workers=0, k=50)
    with torch.no_grad():
        memory = torch.cat([model.features(x[None]) for x, _ in splits.memory])
        queries = torch.cat([model.features(x[None]) for x, _ in splits.test])
    memory_labels = torch.tensor([y for _, y in splits.memory])
    query_labels = torch.tensor([y for _, y in splits.test])
    assert len(memory) == 600 and len(queries) == 150
    by_hand = knn.knn_top1(memory, memory_labels, queries, query_labels, 10, k=50)
    assert abs(got - by_hand) <= 100 / 150 + 1e-9        # at most one near-tie flipped by batched rounding
    result = test_py.main([ORIGINAL, "--dataset", "DIGITS", "--knn", "50", "--json", "--num_workers", "0",
                           "--device", "cpu"])
    assert result["knn_k"] == 50 and 0 <= result["top1_knn"] <= 100 and result["n_images"] == 150


def test_each_method_fits_a_fresh_model_to_its_training_data():
    """Method.fit_to_data: MoCo caps its queue at the split, CMC takes one bank row per image and the data's RGB
    statistics, SwAV says that a queue shorter than a batch rounds down to none; AMDIM changes nothing. Each
    returns a new dict and says what it changed."""
    import config
    data = methods.TrainingData(n_images=120, mean_std=((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), batch_size=50)

    def fit(method, *flags):
        hp = config.from_flags(train.parse_args(["--dataset", "DIGITS", "--method", method, *flags]), 32, 10)
        notes = []
        fitted = methods.METHODS[method].fit_to_data(hp, data, notes.append)
        assert fitted is not hp
        return hp, fitted, notes

    hp, fitted, notes = fit("amdim")
    assert fitted == hp and notes == []
    hp, fitted, notes = fit("moco", "--moco-k", "4096")
    assert fitted["moco_k"] == 120 and hp["moco_k"] == 4096 and "capped at 120" in notes[0]
    assert fit("moco", "--moco-k", "100")[1]["moco_k"] == 100
    hp, fitted, notes = fit("cmc", "--nce_k", "200")
    assert fitted["n_data"] == 120 and fitted["rgb_mean"] == [0.1, 0.2, 0.3] and fitted["rgb_std"] == [0.4, 0.5, 0.6]
    assert "--nce_k 200" in notes[0]
    assert fit("cmc", "--nce_k", "64")[2] == []
    hp, fitted, notes = fit("swav", "--queue_length", "30")
    assert fitted == hp and "rounds down to 0" in notes[0]
    assert fit("swav", "--queue_length", "100")[2] == []
