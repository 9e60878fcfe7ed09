"""The cross-backend runs behind conftest's `backend_runs` fixture, for all
three backends at once, detached from the pytest process that starts them.

    python tests/workers/backend_runs.py ROOT [MODELS]

Per backend B, in parallel: tests/workers/backend_worker.py into ROOT/B (build
MODELS, a comma-separated list or a wildcard, default every model; save them),
then tests/workers/load_worker.py (load the files with plain Keras
in a fresh process), then ROOT/B/done.json with both exit codes. Detached so
that, under pytest-xdist, the worker that happened to start it may finish
first while the one running tests/test_zoo.py waits for done.json; it ends
itself (and deletes ROOT) if the pytest process named in ROOT/owner.pid is
killed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

WORKERS_DIR = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "torch", "jax")


# XLA's cheapest compilation for the JAX runs: each model is compiled once and run on two images, so compiling
# is most of their time (JAX's build and load workers alone, AVX2: 650 -> 583 CPU-s).
FAST_XLA_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def run(args, backend, log_path):
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_XLA_COMPILE}".strip()
    with open(log_path, "w") as log:
        return subprocess.run([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def build_then_load(root, backend, models="*"):
    out_dir = os.path.join(root, backend)
    codes = {"build": None, "load": None}
    try:
        codes["build"] = run([os.path.join(WORKERS_DIR, "backend_worker.py"), out_dir, models], backend,
                             os.path.join(out_dir, "build.log"))
        if codes["build"] == 0:
            codes["load"] = run([os.path.join(WORKERS_DIR, "load_worker.py"), os.path.join(out_dir, "models"),
                                 os.path.join(out_dir, "loaded.npz")], backend, os.path.join(out_dir, "load.log"))
    finally:  # always answer, so that the fixture never waits for nothing
        with open(os.path.join(out_dir, "done.json.tmp"), "w") as f:
            json.dump(codes, f)
        os.replace(os.path.join(out_dir, "done.json.tmp"), os.path.join(out_dir, "done.json"))


def end_with_owner(root):
    """Kill this process group (the runs and their workers) once the pytest
    process that owns ROOT is gone: killed, it could not stop them itself."""
    with open(os.path.join(root, "owner.pid")) as f:
        owner = int(f.read())
    while True:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(root, ignore_errors=True)
            os.killpg(os.getpgid(0), signal.SIGKILL)
        time.sleep(2)


def main(root, models="*"):
    for backend in BACKENDS:
        os.makedirs(os.path.join(root, backend), exist_ok=True)
    if os.path.exists(os.path.join(root, "owner.pid")):
        threading.Thread(target=end_with_owner, args=(root,), daemon=True).start()
    threads = [threading.Thread(target=build_then_load, args=(root, b, models)) for b in BACKENDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(*sys.argv[1:])
