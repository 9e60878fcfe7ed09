# Two commands do all the set-up on a fresh machine (see README):
#   make demo   builds the virtual environment, then runs the main job (workflows/finetune.py)
#   make test   builds the virtual environment, then runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The main job fine-tunes the pretrained EfficientNet-Lite0 on the embedded CIFAR-10 sample, on the
# PyTorch backend unless KERAS_BACKEND says otherwise (KERAS_BACKEND=tensorflow make demo).
# `make tour` builds every architecture of the zoo (JAX: it counts the 1.5-billion-parameter `mlp`
# without allocating its weights there).
DEMO_BACKEND := $(or $(KERAS_BACKEND),torch)
export KCNN_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: demo tour test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	KERAS_BACKEND=$(DEMO_BACKEND) $(PY) workflows/finetune.py --overwrite

tour: $(STAMP)
	KERAS_BACKEND=$(or $(KERAS_BACKEND),jax) $(PY) workflows/zoo_tour.py

# Two pytest processes (pytest-xdist): in one, 1.4 of the 2 cores were busy on average. Whole files
# go to one process (loadfile), so that a module fixture runs once. (loadgroup's xdist_group marks do
# nothing with pytest 9.2: xdist 3.8 renames items through the `_nodeid` attribute pytest 9 no longer reads.)
PYTEST := $(PY) -m pytest -n 2 --dist loadfile

test: $(STAMP)
	$(PYTEST) --durations=25

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) kcnn.egg-info .pytest_cache
