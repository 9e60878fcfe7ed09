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

.PHONY: demo tour test test-fast clean browser

# pip -qq: errors only. With one -q, a machine whose pip configuration names find-links folders that are not there
# printed 143 "Location ... is ignored" warnings, and setuptools 9 lines on editable installs, before the main job.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	KERAS_BACKEND=$(DEMO_BACKEND) $(PY) workflows/finetune.py --overwrite

tour: $(STAMP)
	KERAS_BACKEND=$(or $(KERAS_BACKEND),jax) $(PY) workflows/zoo_tour.py

# Two pytest processes (pytest-xdist): in one, 1.4 of the 2 cores were busy on average. Whole files
# go to one process (loadfile), so that a module fixture runs once. (loadgroup's xdist_group marks do
# nothing with pytest 9.2: xdist 3.8 renames items through the `_nodeid` attribute pytest 9 no longer reads.)
# --no-loadscope-reorder: xdist otherwise hands files out by their number of tests, not in the order
# tests/conftest.py gives them (longest first, test_zoo.py last): test_zoo.py (the most tests) went first and
# waited 328 s for the backend runs, and few-but-long files such as test_crash.py came late (`make test`,
# 2026-12-06: 1,258 s, 161% of the 2 cores).
PYTEST := $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# tests/test_serve_browser.py drives Debian's Chromium through its chromedriver (selenium; nothing downloaded at
# run time). Installed here where it is missing and this is a Debian machine run as root (as CI is); elsewhere
# one line says how, and that test skips with the same words.
BROWSER := /usr/bin/chromedriver

browser:
	@test -x $(BROWSER) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's chromium and chromium-driver for the browser test ..."; \
	  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "Could not install chromium and chromium-driver with apt-get: the browser test will skip."; \
	else echo "The browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"; fi; }

test: $(STAMP) browser
	$(PYTEST) --durations=25

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) kcnn.egg-info .pytest_cache
