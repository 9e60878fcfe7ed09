"""Shared fixtures. The in-process tests run on the JAX backend unless
KERAS_BACKEND says otherwise (JAX builds a model in a StatelessScope without
allocating its weights, which makes the full-size parameter counts cheap);
the cross-backend tests start one process per backend themselves."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The official MNIST and CIFAR-10 files, beside the project root here and in CI.
os.environ.setdefault(
    "KCNN_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import BACKENDS, WORKERS_DIR, _tail  # noqa: E402


# One folder per pytest session for the cross-backend runs, named by the main
# process (pytest-xdist's controller, or pytest itself) before any worker starts,
# so that every worker finds the same one in its environment.
BACKEND_RUNS_ENV = "KCNN_TEST_BACKEND_RUNS"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        os.environ[BACKEND_RUNS_ENV] = tempfile.mkdtemp(prefix="kcnn-backends-")
        # tests/workers/backend_runs.py ends itself when this process is gone (killed: no pytest_unconfigure)
        (pathlib.Path(os.environ[BACKEND_RUNS_ENV]) / "owner.pid").write_text(str(os.getpid()))
        # One JAX compilation cache for the session's JAX processes (both pytest workers, the backend runs,
        # the CLI runs): they compile the same initialisers and layers for the same shapes, and a compile
        # costs ~50-150 ms of CPU each time. Set here, before any worker imports JAX; removed with the folder.
        os.environ.update({"JAX_COMPILATION_CACHE_DIR": os.path.join(os.environ[BACKEND_RUNS_ENV], "jax-cache"),
                           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
        # The session's processes share 2 cores, so each keeps to one compute thread: torch's OpenMP threads
        # spin while they wait (PyTorch backend worker, AVX-512: 29 -> 21 CPU-s for the same wall time), and
        # TensorFlow's intra-op pool too (its worker, AVX-512: 24.1 -> 22.6 CPU-s; the inter-op pool stays: collectives
        # on two logical devices need it).
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            os.environ.setdefault(name, "1")
        # (XLA's cheapest compilation stays in the backend runs: for the whole session it saved 12 CPU-s in
        # test_bad_input.py but made each VGG's first predict 6 CPU-s dearer, AVX-512.)


# The files that take longest go first (pytest-xdist's loadfile hands files out in collection order, each to the
# worker that is free, with --no-loadscope-reorder as the Makefile runs it; without, by number of tests): with
# the alphabetical order, test_weights.py (five minutes of a worker) started near the end and one core idled
# while the other finished it (`make test`, 2026-12-05: 170% of the 2 cores on average).
# test_zoo.py comes last: it waits for the backend runs (JAX's build and load the longest), and as the 7th file its
# worker waited 370 s for them (`make test`, 2026-12-05: 1,214 s, 163% of the 2 cores).
LONGEST_FIRST = ("test_weights.py", "test_crash.py", "test_export.py", "test_distribute.py", "test_train.py",
                 "test_finetune.py", "test_notebooks.py", "test_keras_applications.py", "test_api.py",
                 "test_explain.py", "test_litert.py", "test_bad_input.py")
LAST = "test_zoo.py"


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: `make test-fast` needs no backend runs
def pytest_collection_modifyitems(session, config, items):
    """Order the files longest first; start the per-backend runs as soon as the tests that need them are
    collected, so that they run while the in-process tests do."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    last = len(rank) + 1
    items.sort(key=lambda item: last if item.path.name == LAST else rank.get(item.path.name, len(rank)))  # stable
    needing = [item for item in items if "backend_runs" in getattr(item, "fixturenames", ())]
    if needing:
        # `pytest -k lenet5` builds only the models the selected tests ask for (their `name` parameter)
        names = {getattr(item, "callspec", None) and item.callspec.params.get("name") for item in needing}
        _start_backend_runs(None if None in names else sorted(names))


def _start_backend_runs(models=None):
    """Start tests/workers/backend_runs.py once per session for `models` (None: every registered model):
    the first process to create ROOT/started starts it (xdist workers collect the same tests at the same
    time, so they ask for the same models)."""
    root = pathlib.Path(os.environ[BACKEND_RUNS_ENV])
    try:
        (root / "started").mkdir()
    except FileExistsError:
        return
    with open(root / "runs.log", "w") as log:
        process = subprocess.Popen([sys.executable, os.path.join(WORKERS_DIR, "backend_runs.py"), str(root),
                                    ",".join(models) if models else "*"],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (root / "started" / "pid").write_text(str(process.pid))


@pytest.fixture(scope="session")
def backend_runs():
    """Per backend: every registered model built with the same weights
    (outputs.npz, report.json), saved as .keras, and loaded back in a fresh
    process that never imports kcnn (loaded.npz). The three backends run in
    parallel (tests/workers/backend_runs.py); their files are deleted at the end of
    the session."""
    _start_backend_runs()
    root = pathlib.Path(os.environ[BACKEND_RUNS_ENV])
    deadline = time.monotonic() + 3600
    while not all((root / b / "done.json").exists() for b in BACKENDS):
        assert time.monotonic() < deadline, f"the backend runs did not finish in an hour:\n{_tail(root / 'runs.log')}"
        pid_file = root / "started" / "pid"
        assert not pid_file.exists() or _running(int(pid_file.read_text())), \
            f"tests/workers/backend_runs.py ended without its results:\n{_tail(root / 'runs.log')}"
        time.sleep(1)
    runs = {}
    for b in BACKENDS:
        codes = json.loads((root / b / "done.json").read_text())
        assert codes["build"] == 0, f"{b} worker failed:\n{_tail(root / b / 'build.log')}"
        assert codes["load"] == 0, f"{b} loader failed:\n{_tail(root / b / 'load.log')}"
        runs[b] = {
            "outputs": dict(np.load(root / b / "outputs.npz")),
            "loaded": dict(np.load(root / b / "loaded.npz")),
            "load_errors": json.loads((root / b / "loaded.npz.errors.json").read_text()),
            "report": json.loads((root / b / "report.json").read_text()),
        }
    return runs


def _running(pid):
    """Whether process `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pytest_unconfigure(config):
    """The main process ends the runs a failed or interrupted session never
    waited for, and deletes their folder."""
    if hasattr(config, "workerinput") or BACKEND_RUNS_ENV not in os.environ:
        return
    root = pathlib.Path(os.environ[BACKEND_RUNS_ENV])
    pid_file = root / "started" / "pid"
    if pid_file.exists() and not all((root / b / "done.json").exists() for b in BACKENDS):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # ended already
            pass
    shutil.rmtree(root, ignore_errors=True)
