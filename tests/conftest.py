import os
import sys

# Tests import the top-level modules (model, costs, ...) the way train.py does.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
