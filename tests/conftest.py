import os
import sys

# Tests import the top-level modules (model, costs, ...) the way train.py does.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Under pytest-xdist (`make test` runs one worker per core) each worker, and every process it starts, computes on
# one thread: two workers with a thread per core each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
