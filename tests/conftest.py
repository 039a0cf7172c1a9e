import os
import sys

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
