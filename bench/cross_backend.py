"""Cross-backend agreement of every registered model: the same NumPy weights on
TensorFlow, PyTorch and JAX, relative difference of the logits against TensorFlow.

    python bench/cross_backend.py [PATTERN]

Runs tests/workers/backend_worker.py once per backend (in parallel) and prints a table,
the largest difference last. The test suite asserts at most 1e-4 per model.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "torch", "jax")


def main(pattern="*"):
    with tempfile.TemporaryDirectory(prefix="kcnn-cross-") as folder:
        workers = {
            b: subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "workers", "backend_worker.py"),
                                 os.path.join(folder, b), pattern],
                                env=dict(os.environ, KERAS_BACKEND=b), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
            for b in BACKENDS
        }
        for b, worker in workers.items():
            if worker.wait() != 0:
                sys.exit(f"the {b} worker failed")
        outputs = {b: dict(np.load(os.path.join(folder, b, "outputs.npz"))) for b in BACKENDS}
    rows = []
    for name, reference in sorted(outputs["tensorflow"].items()):
        diffs = [np.linalg.norm(outputs[b][name] - reference) / np.linalg.norm(reference) for b in ("torch", "jax")]
        rows.append((name, *diffs))
    print(f"{'model':20s} {'torch vs tf':>12s} {'jax vs tf':>12s}")
    for name, torch_diff, jax_diff in rows:
        print(f"{name:20s} {torch_diff:12.2e} {jax_diff:12.2e}")
    worst = max(rows, key=lambda r: max(r[1:]))
    print(f"largest: {max(worst[1:]):.2e} ({worst[0]}) over {len(rows)} models")


if __name__ == "__main__":
    main(*sys.argv[1:])
