"""Shared fixtures. The in-process tests run on the JAX backend unless
KERAS_BACKEND says otherwise (JAX builds a model in a StatelessScope without
allocating its weights, which makes the full-size parameter counts cheap);
the cross-backend tests start one process per backend themselves."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The official MNIST and CIFAR-10 files, beside the project root here and in CI.
os.environ.setdefault(
    "KCNN_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKENDS = ("tensorflow", "torch", "jax")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_python(args, backend, log_path):
    """Start `python args...` on `backend`, its output going to `log_path`
    (a file, not a pipe nobody reads while it runs)."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def _tail(path, size=3000):
    with open(path, errors="replace") as f:
        return f.read()[-size:]


_STARTED = {}


def pytest_collection_modifyitems(session, config, items):
    """Start the per-backend builders as soon as the tests that need them are
    collected, so that they run while the in-process tests do."""
    if any("backend_runs" in getattr(item, "fixturenames", ()) for item in items):
        _start_builders()


def _start_builders():
    if not _STARTED:
        root = tempfile.mkdtemp(prefix="kcnn-backends-")
        _STARTED["root"] = root
        _STARTED["builders"] = {
            b: run_python([os.path.join(TESTS_DIR, "backend_worker.py"), os.path.join(root, b)], b,
                          os.path.join(root, b, "build.log"))
            for b in BACKENDS
        }
    return _STARTED["root"], _STARTED["builders"]


@pytest.fixture(scope="session")
def backend_runs():
    """Per backend: every registered model built with the same weights
    (outputs.npz, report.json), saved as .keras, and loaded back in a fresh
    process that never imports kcnn (loaded.npz). The three backends run in
    parallel; their files are deleted at the end of the session."""
    root, builders = _start_builders()
    root = pathlib.Path(root)
    for process in builders.values():
        process.wait()
    loaders = {
        b: run_python([os.path.join(TESTS_DIR, "load_worker.py"), str(root / b / "models"), str(root / b / "loaded.npz")],
                      b, str(root / b / "load.log"))
        for b in BACKENDS
        if builders[b].returncode == 0
    }
    for process in loaders.values():
        process.wait()
    runs = {}
    for b in BACKENDS:
        assert builders[b].returncode == 0, f"{b} worker failed:\n{_tail(root / b / 'build.log')}"
        assert loaders[b].returncode == 0, f"{b} loader failed:\n{_tail(root / b / 'load.log')}"
        runs[b] = {
            "outputs": dict(np.load(root / b / "outputs.npz")),
            "loaded": dict(np.load(root / b / "loaded.npz")),
            "load_errors": json.loads((root / b / "loaded.npz.errors.json").read_text()),
            "report": json.loads((root / b / "report.json").read_text()),
        }
    yield runs
    shutil.rmtree(root, ignore_errors=True)


def pytest_unconfigure(config):
    """Stop builders a failed or interrupted session never waited for."""
    for process in _STARTED.get("builders", {}).values():
        if process.poll() is None:
            process.kill()
    if "root" in _STARTED:
        shutil.rmtree(_STARTED["root"], ignore_errors=True)
