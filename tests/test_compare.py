"""compare.py: a real comparison on DIGITS (two methods that train, one that fails), killed with SIGKILL in the
middle of its second method and run again: the table, JSON and picture agree with the runs' own metrics and
test.py's, what finished is not run again, and the killed run continues where it stopped."""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from helpers import ROOT

sys.path.insert(0, ROOT)
import compare  # noqa: E402

TINY = ["--ndf", "8", "--n_rkhs", "32", "--n_depth", "1", "--arch", "amdim", "--batch_size", "100",
        "--num_workers", "0", "--device", "cpu", "--log_every", "1000", "--view_grid", "0"]


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def epochs_of(run_dir):
    return [r for r in records(run_dir) if r["event"] == "epoch"]


def compare_cmd():
    """Run from the test's folder: paths on its command line are the caller's, not the repository's."""
    return [sys.executable, os.path.join(ROOT, "compare.py"), "--dataset", "DIGITS", "--methods", "amdim", "moco",
            "cmc", "--epochs", "2", "--cls_epochs", "1", "--knn_k", "20", "--output_dir", "cmp", "--quiet", *TINY,
            "--moco.moco-k", "300", "--cmc.nce_k", "0"]


@pytest.mark.slow
def test_a_killed_comparison_resumes_and_its_results_agree_with_the_runs(tmp_path):
    out = tmp_path / "cmp"          # compare_cmd's --output_dir, relative to the test's folder
    moco_ss = out / "moco_seed1" / "ss"
    proc = subprocess.Popen(compare_cmd(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # Kill the whole comparison once MoCo's first epoch is saved: it is then inside MoCo's second epoch.
    deadline = time.time() + 600
    while not (moco_ss.joinpath("amdim_cpt.pth").exists() and (moco_ss / "metrics.jsonl").exists()
               and epochs_of(moco_ss)):
        assert proc.poll() is None and time.time() < deadline, "compare.py ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(epochs_of(moco_ss)) == 1
    finished = {p: os.path.getmtime(out / "amdim_seed1" / p) for p in ("ss/amdim_cpt.pth", "knn.json",
                                                                        "cls_amdim/amdim_cpt.pth")}

    done = subprocess.run(compare_cmd(), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # What finished before the kill ran once; MoCo's run continued from its first epoch's checkpoint.
    assert {p: os.path.getmtime(out / "amdim_seed1" / p) for p in finished} == finished
    starts = [r for r in records(moco_ss) if r["event"] == "start"]
    assert [s["start"] for s in starts] == ["scratch", "resume"]
    assert [r["epoch"] for r in epochs_of(moco_ss)] == [1, 2]

    results = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    for method in ("amdim", "moco"):
        job = out / f"{method}_seed1"
        ss = epochs_of(job / "ss")
        cls = epochs_of(job / "cls_amdim")[-1]
        row = rows[method]
        assert row["errors"] == [] and row["backbone"] == "amdim"
        assert (row["epochs"], row["updates"]) == ([2], [ss[-1]["step"]]) and row["updates"] == [30]
        assert row["wall_s"] == [pytest.approx(sum(r["epoch_seconds"] for r in ss))]
        assert (row["linear"], row["MLP"]) == ([cls["top1_linear"]], [cls["top1_mlp"]])
        # kNN as test.py computes it on the self-supervised checkpoint, run here again.
        knn = subprocess.run([sys.executable, "test.py", str(job / "ss" / "amdim_cpt.pth"), "--dataset", "DIGITS",
                              "--knn", "20", "--json", "--num_workers", "0"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        assert row["kNN"] == [json.loads(knn.stdout.strip().splitlines()[-1])["top1_knn"]]
        run = next(r for r in results["runs"] if r["method"] == method)
        assert run["config"]["method"] == method and run["environment"]["torch"]
        assert [p["top1"] for p in run["curve"]] == [r["top1_linear"] for r in ss]
    # The failing method: its one-line error in the table and the JSON; the others still ran.
    assert rows["cmc"]["errors"] == ["seed 1: self-supervised training: argument --nce_k: got 0, expected an "
                                     "integer >= 1"]
    table = (out / "results.md").read_text()
    for method in ("amdim", "moco"):
        cells = [c.strip() for c in next(line for line in table.splitlines()
                                         if line.startswith(f"| {method} |")).split("|")[1:-1]]
        assert cells[:4] == [method, "amdim", "2", "30"]
        assert cells[6:] == [f"{rows[method][c][0]:.1f}" for c in ("linear", "MLP", "kNN")] + [rows[method]["recipe"]]
    assert "- cmc seed 1: self-supervised training: argument --nce_k: got 0" in table
    png = (out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    # TensorBoard holds one comparison's events: each comparison replaces the previous one's files.
    assert len([n for n in os.listdir(out / "tensorboard") if n.startswith("events.out.tfevents")]) == 1


def test_flags_it_does_not_know_go_to_every_run_or_to_one_method():
    args = compare.parse_args(["--dataset", "C10", "--methods", "moco", "swav", "--epochs", "3", "--amp",
                               "--moco.mlp", "--moco.moco-k", "4096", "--batch_size", "64",
                               "--swav.nmb_prototypes=300", "--swav.size_crops", "32", "16"])
    assert args.shared == ["--amp", "--batch_size", "64"]
    assert args.per_method == {"moco": ["--mlp", "--moco-k", "4096"], "swav": ["--nmb_prototypes=300",
                                                                               "--size_crops", "32", "16"]}
    job = compare.Job(args, "moco", 2, compare.budget_of(args))
    argv = job.train_argv()
    # The method's own flags come after the shared ones (argparse keeps the last), seed and budget after both.
    assert argv.index("--amp") < argv.index("--mlp") < argv.index("--seed")
    assert argv[argv.index("--seed") + 1] == "2" and argv[argv.index("--epochs") + 1] == "3"
    assert "--nmb_prototypes=300" not in argv
    for bad in (["--byol.lr", "1"], ["stray"]):
        with pytest.raises(SystemExit):
            compare.parse_args(["--dataset", "C10", "--epochs", "1", *bad])


def test_cifar_preset_scales_the_anchors_rates_to_the_batch_and_its_epochs():
    budget = compare.Budget(epochs=100, updates_per_epoch=50, batch_size=128, image_size=32)
    flags, what = compare.recipe_of("cifar", "swav", budget)
    value = {flags[i]: flags[i + 1] for i in range(len(flags) - 1) if flags[i].startswith("--")}
    assert float(value["--base_lr"]) == pytest.approx(0.6 * 128 / 256)
    assert value["--epoch_queue_starts"] == "5" and value["--freeze_prototypes_niters"] == "100"
    assert what.startswith("cifar preset: solo-learn")
    assert compare.recipe_of("seed", "swav", budget) == ([], compare.SEED_RECIPE)


def test_the_table_gives_mean_and_sd_over_seeds_and_names_failures():
    args = compare.parse_args(["--dataset", "C10", "--methods", "moco", "swav", "--epochs", "3", "--seeds", "1", "2",
                               "3", "--protocols", "swav"])
    scores = [(61.0, 70.5, 55.0, 66.0), (64.0, 71.5, 57.0, 65.0), (62.5, 69.0, 56.5, 67.5)]
    results = [{"method": "moco", "seed": s, "arch": "resnet18", "recipe": compare.SEED_RECIPE, "error": None,
                "epochs": 3, "updates": 588, "wall_s": 600.0 + s, "img_per_s": 250.0 + s, "curve": [],
                "scores": dict(zip(("linear", "MLP", "swav", "kNN"), v))} for s, v in zip((1, 2, 3), scores)]
    results.append({"method": "swav", "seed": 1, "arch": None, "recipe": compare.SEED_RECIPE, "curve": [],
                    "error": "self-supervised training: --nmb_crops 0 is out of range", "scores": {}})
    rows = compare.summarise(results, args)
    line = next(x for x in compare.table(rows, args).splitlines() if x.startswith("| moco |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    columns = list(zip(*scores))
    expected = [f"{statistics.mean(c):.1f} ± {statistics.stdev(c):.1f}" for c in columns]
    assert cells[:6] == ["moco", "resnet18", "3", "588", "10.0 ± 0.0", "252 ± 1"]
    assert cells[6:10] == expected and cells[10] == compare.SEED_RECIPE
    table = compare.table(rows, args)
    assert "| swav | - | - | - |" in table and "- swav seed 1: self-supervised training: --nmb_crops 0" in table


@pytest.mark.slow
def test_budget_hours_trains_the_epochs_a_calibration_epoch_says_fit(tmp_path):
    argv = ["--dataset", "DIGITS", "--methods", "moco", "--budget_hours", "0.002", "--cls_epochs", "1", "--knn_k",
            "5", "--output_dir", str(tmp_path), "--quiet", *TINY, "--moco.moco-k", "300"]
    done = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job = tmp_path / "moco_seed1"
    calibration = json.loads((job / "calibration.json").read_text())
    assert calibration["epochs"] == max(1, int(0.002 * 3600 // calibration["epoch_seconds"]))
    assert [r["epoch"] for r in epochs_of(job / "ss")][-1] == calibration["epochs"]
    assert not (job / "calibrate").exists()
    assert "0.002 hours" in (tmp_path / "results.md").read_text()
