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

test: $(STAMP)
	$(PY) -m pytest --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) kcnn.egg-info .pytest_cache
