"""Shared fixtures. The in-process tests run on the JAX backend unless
KERAS_BACKEND says otherwise (JAX builds a model in a StatelessScope without
allocating its weights, which makes the full-size parameter counts cheap);
the cross-backend tests start one process per backend themselves."""

import json
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKENDS = ("tensorflow", "torch", "jax")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_python(args, backend, **kwargs):
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope="session")
def backend_runs(tmp_path_factory):
    """Per backend: every registered model built with the same weights
    (outputs.npz, report.json), saved as .keras, and loaded back in a fresh
    process that never imports kcnn (loaded.npz). The three backends run in
    parallel; the .keras files are deleted at the end of the session."""
    root = tmp_path_factory.mktemp("backends")
    builders = {b: run_python([os.path.join(TESTS_DIR, "backend_worker.py"), str(root / b)], b) for b in BACKENDS}
    logs = {b: p.communicate()[0] for b, p in builders.items()}
    loaders = {
        b: run_python([os.path.join(TESTS_DIR, "load_worker.py"), str(root / b / "models"), str(root / b / "loaded.npz")], b)
        for b in BACKENDS
        if builders[b].returncode == 0
    }
    for b, p in loaders.items():
        logs[b] += p.communicate()[0]
    runs = {}
    for b in BACKENDS:
        assert builders[b].returncode == 0, f"{b} worker failed:\n{logs[b][-3000:]}"
        assert loaders[b].returncode == 0, f"{b} loader failed:\n{logs[b][-3000:]}"
        runs[b] = {
            "outputs": dict(np.load(root / b / "outputs.npz")),
            "loaded": dict(np.load(root / b / "loaded.npz")),
            "load_errors": json.loads((root / b / "loaded.npz.errors.json").read_text()),
            "report": json.loads((root / b / "report.json").read_text()),
        }
    yield runs
    for b in BACKENDS:
        _remove_tree(root / b / "models")


def _remove_tree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)
