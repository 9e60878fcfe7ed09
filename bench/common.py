"""Shared by the bench scripts: run a training config in a fresh process per backend."""

import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "torch", "jax")


def run_training(backend, output_dir, **config):
    """Train in a fresh process with `backend`; return the worker's result dict."""
    config = dict(config, output_dir=output_dir, overwrite=True, verbose=0)
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("KCNN_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
    process = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train_worker.py"), json.dumps(config)],
                             capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"training on {backend} failed:\n{process.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def time_to(result, target):
    """Training seconds (validation excluded) until the first epoch whose
    validation accuracy reaches `target`; None if none does."""
    elapsed = 0.0
    for seconds, accuracy in zip(result["epoch_train_seconds"], result["epoch_val_accuracy"]):
        elapsed += seconds
        if accuracy >= target:
            return elapsed
    return None


def mean_spread(values):
    """'mean ± standard deviation' of percentages."""
    values = [100 * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"
