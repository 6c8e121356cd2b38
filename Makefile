# `make demo` and `make test` work on a fresh clone: both create .venv and install the pinned
# requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 needed (the pinned requirements); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# lmms-eval lives in a virtualenv of its own (README, "Evaluation"): it needs other pins than the main stack
# (lmms-eval goes in with --no-deps: its wandb pin needs protobuf<7), and a CPU torch cannot load the CUDA
# torchvision wheel that lmms-eval requires, so that one is removed again where torch is the CPU build.
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
LMMS_EVAL := lmms-eval==0.7.3

$(LMMS_VENV)/.installed: requirements.txt requirements-dev.txt requirements-lmms-eval.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 needed (the pinned requirements); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install --quiet --upgrade pip
	$(LMMS_PY) -m pip install --quiet -r requirements-dev.txt -r requirements-lmms-eval.txt
	$(LMMS_PY) -m pip install --quiet --no-deps $(LMMS_EVAL)
	$(LMMS_PY) -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' || $(LMMS_PY) -m pip uninstall --quiet -y torchvision
	$(LMMS_PY) -m pip install --quiet --no-deps -e .
	@# latex2sympy2 (an lmms-eval requirement) installs its own tests as a top-level package `tests`,
	@# which hides this repository's tests/ package from pytest
	rm -rf $(LMMS_VENV)/lib/python3*/site-packages/tests
	touch $@

.PHONY: install demo test test-fast lmms-venv test-lmms-eval
install: $(VENV)/.installed

lmms-venv: $(LMMS_VENV)/.installed

# the lmms-eval tier: the adapter's tests and the real evaluator on local tasks (skipped by `make test`)
test-lmms-eval: $(LMMS_VENV)/.installed
	$(LMMS_PY) -m pytest -n 0 tests/eval/test_lmms_eval_adapter.py tests/eval/test_lmms_eval_tasks.py

demo: $(VENV)/.installed
	$(PY) ray_jobs/train.py

test: $(VENV)/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not integration and not slow"
