import os
import sys

import pytest

# Tests import the top-level modules (model, costs, ...) the way train.py does.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Tests that set up a run with the default epochs (and every process such a test starts) would compile its step
# under --compile auto, a minute or more each time: tests of behaviour train eagerly. test_compiling.py turns
# compilation back on for its own tests (torch.compile reads the variable at every call; subprocesses inherit it).
os.environ["TORCHDYNAMO_DISABLE"] = "1"

# Under pytest-xdist (`make test` runs one worker per core) each worker, and every process it starts, computes on
# one thread: two workers with a thread per core each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ss_checkpoint(tmp_path_factory):
    """A tiny AMDIM encoder after one self-supervised epoch on 300 DIGITS images: what classifier runs start from."""
    import train
    from helpers import DIGITS_TINY, small_digits
    out = tmp_path_factory.mktemp("ss")
    with pytest.MonkeyPatch.context() as mp:
        small_digits(mp, n_train=300, n_test=100)
        train.main(DIGITS_TINY + ["--output_dir", str(out), "--run_name", "ss", "--epochs", "1"])
    return os.path.join(out, "ss", "amdim_cpt.pth")
