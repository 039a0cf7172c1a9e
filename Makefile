# `make demo` and `make test` each create .venv when absent, install the requirements, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := runs/demo

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

# Self-supervised training on the embedded DIGITS data (a few minutes on 2 CPU cores), then test.py.
demo: $(STAMP)
	$(BIN)/python train.py --dataset DIGITS --output_dir runs --run_name demo \
		--ndf 16 --n_rkhs 128 --n_depth 1 --batch_size 100 --epochs 30 --warmup_updates 50 --num_workers 2
	$(BIN)/python test.py $(DEMO_DIR)/amdim_cpt.pth --dataset DIGITS

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) runs
