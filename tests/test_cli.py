"""train.py's command line: every number range-checked by argparse (a one-line usage error, nothing on disk),
--help showing every default, and LR schedules that short runs cannot start decayed."""
import argparse
import os
import re
import subprocess
import sys

import pytest

import config
import datasets
import methods
import phases
import train
from utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--dataset", "DIGITS"]


def parse_error(capsys, argv):
    """The error line of a parse_args call that must fail with argparse's usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


# The cases, then one out-of-range value for each kind of bound; the bad value comes last.
BAD = [
    (["--learning_rate", "-0.001"], "--learning_rate"),
    (["--learning_rate", "nan"], "--learning_rate"),
    (["--lr", "inf"], "--learning_rate"),
    (["--ndf", "0"], "--ndf"),
    (["--ndf", "-4"], "--ndf"),
    (["--num_workers", "-1"], "--num_workers"),
    (["--n_depth", "0"], "--n_depth"),
    (["--n_rkhs", "64", "--ndf", "0"], "--ndf"),            # the range, not the n_rkhs >= 4*ndf check
    (["--epochs", "0"], "--epochs"),
    (["--checkpoint_every", "-1"], "--checkpoint_every"),
    (["--warmup_updates", "-5"], "--warmup_updates"),
    (["--batch_size", "1"], "--batch_size"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--knn_k", "0"], "--knn_k"),
    (["--knn_every", "-2"], "--knn_every"),
    (["--log_every", "0"], "--log_every"),
    (["--view_grid", "-1"], "--view_grid"),
    (["--tclip", "0"], "--tclip"),
    (["--tclip=-inf"], "--tclip"),                          # "-inf" alone reads as an option to argparse
    (["--method", "moco", "--moco-m", "1"], "--moco-m"),
    (["--method", "moco", "--moco-m", "-0.1"], "--moco-m"),
    (["--method", "moco", "--moco-k", "0"], "--moco-k"),
    (["--method", "moco", "--moco-dim", "2.5"], "--moco-dim"),
    (["--method", "moco", "--moco-unif-t", "0"], "--moco-unif-t"),
    (["--method", "moco", "--moco-contr-tau", "nan"], "--moco-contr-tau"),
    (["--method", "moco", "--moco-align-w", "-1"], "--moco-align-w"),
    (["--moco-m", "1"], "--moco-m"),                        # the range before "does not apply to amdim"
    (["--checkpoint_path", "absent.pth", "--ndf", "0"], "--ndf"),   # also when a checkpoint gives the model
]


@pytest.mark.parametrize("argv, flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_number_is_a_usage_error_naming_the_flag(capsys, argv, flag):
    line = parse_error(capsys, BASE + argv)
    assert f"argument {flag}" in line and f"got {argv[-1].split('=')[-1]}, expected " in line


def the_parser(monkeypatch):
    """train.py's parser, caught as parse_args uses it."""
    seen = []
    real = argparse.ArgumentParser.parse_args

    def spy(self, *args, **kwargs):
        seen.append(self)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    train.parse_args(BASE)
    return seen[0]


def value_flags(parser):
    return [a for a in parser._actions if a.option_strings and a.nargs is None and a.const is None]


def test_every_numeric_flag_rejects_negative_nan_and_inf(capsys, monkeypatch):
    """A flag added later with a bare type=int/float fails here: only choices, strings and range-checked
    numbers are allowed, and every range starts at 0 or above."""
    parser = the_parser(monkeypatch)
    numeric = [a for a in value_flags(parser) if a.choices is None and a.type not in (None, str.upper)]
    assert len(numeric) >= 24
    for action in numeric:
        flag = action.option_strings[0]
        for text in ("-1", "nan", "inf"):
            line = parse_error(capsys, BASE + [f"{flag}={text}"])
            assert f"argument {flag}" in line and f"got {text}," in line


# Each flag at the edge of its range, and the value it must parse to (of the flag's type).
BOUNDARIES = [
    (["--learning_rate", "0"], {"learning_rate": 0.0}),
    (["--num_workers", "0"], {"num_workers": 0}),
    (["--checkpoint_every", "0"], {"checkpoint_every": 0}),
    (["--warmup_updates", "0"], {"warmup_updates": 0}),
    (["--batch_size", "2"], {"batch_size": 2}),
    (["--seed", "0"], {"seed": 0}),
    (["--method", "moco", "--moco-m", "0"], {"moco_m": 0.0}),
    (["--method", "moco", "--moco-contr-w", "1", "--moco-align-w", "0"], {"moco_contr_w": 1.0, "moco_align_w": 0.0}),
]


@pytest.mark.parametrize("argv, parsed", BOUNDARIES, ids=[" ".join(a) for a, _ in BOUNDARIES])
def test_boundary_values_are_accepted(argv, parsed):
    args = train.parse_args(BASE + argv)
    for dest, value in parsed.items():
        assert getattr(args, dest) == value and type(getattr(args, dest)) is type(value), (dest, getattr(args, dest))


def test_a_checkpoint_value_out_of_range_is_named():
    hp = config.from_flags(train.parse_args(BASE + ["--method", "moco"]), 32, 10)
    with pytest.raises(UserError, match="--moco-m nan is out of range: expected a finite number >= 0 and < 1"):
        config.validate(dict(hp, moco_m=float("nan")))


@pytest.mark.slow
def test_bad_flag_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "train.py", *BASE, "--ndf", "0", "--output_dir", str(tmp_path),
                        "--run_name", "bad"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "train.py: error: argument --ndf: got 0, expected an integer >= 1"
    assert os.listdir(tmp_path) == []


def help_entries(capsys, monkeypatch):
    """{first option string: its whole help entry} from train.py --help."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--help"])
    assert exit_info.value.code == 0
    entries, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        head = re.match(r"  (-[-\w]+)", line)
        if head:
            current = head.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_help_shows_every_default(capsys, monkeypatch):
    parser = the_parser(monkeypatch)
    entries = help_entries(capsys, monkeypatch)
    assert set(entries) == {a.option_strings[0] for a in parser._actions}
    for flag, text in entries.items():
        if flag != "-h":
            assert "default" in text and "(default: None)" not in text, text
    assert "(default: STL10)" in entries["--dataset"] and "(default: 1)" in entries["--seed"]
    assert "(default: 128)" in entries["--ndf"] and "amdim 2e-4" in entries["--learning_rate"]


COMBINATIONS = [(d, m, c) for d in datasets.DATASETS for m in sorted(methods.METHODS) for c in (False, True)]


def args_for(dataset, method, classifiers, epochs):
    argv = ["--dataset", dataset, "--method", method] + (["--image_size", "32"] if dataset == "FOLDER" else [])
    argv += (["--classifiers"] if classifiers else []) + (["--epochs", str(epochs)] if epochs else [])
    if method == "deepclusterv2" and not classifiers:
        argv += ["--warmup_epochs", "0"]          # the seed's 10 would not fit a 1-3 epoch run (a UserError)
    return train.parse_args(argv)


@pytest.mark.parametrize("dataset, method, classifiers", COMBINATIONS)
def test_short_runs_start_at_the_base_learning_rate(dataset, method, classifiers):
    """Every milestone falls inside the run (epochs 1 .. epochs-1), and the first update after any warm-up
    trains at the base LR; the default schedule itself is unchanged."""
    args = args_for(dataset, method, classifiers, None)
    hp = config.from_flags(args, datasets.encoder_size(dataset, args.image_size), 10)
    phase = phases.PHASES[args.phase]
    recipe = phase.recipe(hp)
    assert recipe.epochs_and_milestones(dataset, args.epochs) == recipe.default_schedule(dataset)
    per_epoch = 7                                         # SwAV's schedule runs per update
    swav = method in ("swav", "deepclusterv2") and not classifiers       # the SwAV repository's schedule
    for epochs in (1, 2, 3):
        args = args_for(dataset, method, classifiers, epochs)
        n, milestones = recipe.epochs_and_milestones(dataset, args.epochs)
        assert n == epochs and list(milestones) == sorted(set(milestones))
        assert all(1 <= m < epochs for m in milestones), milestones
        factor = phase.schedule(hp, args, n, milestones, per_epoch)
        step = max(factor.warmup_updates - 1, 0)
        assert factor(0, step) == (pytest.approx(1.0, rel=1e-12) if swav else 1.0)
        last = factor(epochs - 1, 10 ** 6)
        assert last == pytest.approx(hp["final_lr"] / hp["base_lr"] if swav else recipe.decay ** len(milestones))


def test_in128_classifiers_one_epoch_trains_at_2e_4():
    args = args_for("IN128", "amdim", True, 1)
    recipe = phases.Classifiers.recipe({})
    epochs, milestones = recipe.epochs_and_milestones("IN128", args.epochs)
    assert milestones == ()
    schedule = phases.Classifiers.schedule({}, args, epochs, milestones, 10)
    assert recipe.base_lr(args) * schedule(0, 0) == 2e-4
    assert recipe.epochs_and_milestones("IN128", 2) == (2, (1,))
