"""What several test files share: the backends, where the worker scripts are, starting a worker process,
the `kcnn` command line, and small real-data fixtures' makers. (Fixtures themselves are in conftest.py.)"""

import os
import subprocess
import sys

BACKENDS = ("tensorflow", "torch", "jax")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WORKERS_DIR = os.path.join(TESTS_DIR, "workers")  # scripts the tests run in processes of their own
if WORKERS_DIR not in sys.path:
    sys.path.insert(0, WORKERS_DIR)  # test_zoo and test_weights import a worker's constants and helpers

# What every finished run directory holds (both workflows).
RUN_FILES = ("config.json", "model.keras", "history.csv", "metrics.json", "curves.png", "confusion.png",
             "samples.png")


def worker(name):
    """The path of tests/workers/NAME.py."""
    return os.path.join(WORKERS_DIR, f"{name}.py")


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


def kcnn_cli(backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.run([sys.executable, "-m", "kcnn", *args], capture_output=True, text=True, env=env)


def image_folder_of_the_sample(root, per_class=12):
    """An image folder (cat/, ship/) of real CIFAR-10 sample images, as PNG files."""
    from PIL import Image

    import kcnn.data

    sample = kcnn.data.load("cifar10_sample", "train")
    for class_name in ("cat", "ship"):
        (root / class_name).mkdir(parents=True)
        label = kcnn.data.sources.CIFAR10_CLASSES.index(class_name)
        for i, image in enumerate(sample.images[sample.labels == label][:per_class]):
            Image.fromarray(image).save(root / class_name / f"{i}.png")
    return root
