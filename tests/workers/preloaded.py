"""Python processes forked from one that has imported TensorFlow, Keras and kcnn already.

A test that starts many short kcnn processes on the same backend (tests/test_crash.py: 35 of them) would
spend about 5 CPU-seconds in each importing TensorFlow and kcnn (AVX-512). `start(argv, log_path, backend)`
starts `python ARGV...` as a child of multiprocessing's fork server, which imported them once: the child is
a real process of its own (its own pid, exit code, -9 when killed, nothing shared with the test), it only
skips the imports. The fork server forks from its main thread before any TensorFlow op has run, which is what
multiprocessing's "forkserver" start method is for.
"""

import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
import threading

PRELOAD = ["numpy", "h5py", "tensorflow", "keras", "kcnn", "kcnn.cli", "kcnn.training.train", "kcnn.training.finetune",
           "kcnn.deploy.export", "crash_worker", "preloaded"]
_SERVER_BACKEND = []  # the backend the fork server imported (one per pytest process)
_SERVER_LOCK = threading.Lock()  # tests start processes from several threads


def _run(argv, log_path):
    """In the child: stdout and stderr into log_path, then run argv as `python` would."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


class Started:
    """The part of subprocess.Popen's interface the tests use: wait(timeout) and returncode."""

    def __init__(self, process, argv):
        self._process, self.args = process, argv

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    @property
    def returncode(self):
        return self._process.exitcode

    def kill(self):
        self._process.kill()


def start(argv, log_path, backend):
    """Start `python ARGV...` (a script path or "-m", module) with KERAS_BACKEND=backend, output into log_path."""
    with _SERVER_LOCK:
        _ensure_server(backend)
    process = multiprocessing.get_context("forkserver").Process(target=_run, args=(list(argv), str(log_path)))
    process.start()
    return Started(process, argv)


def _ensure_server(backend):
    if not _SERVER_BACKEND:
        multiprocessing.forkserver.set_forkserver_preload(PRELOAD)
        previous = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = backend  # the fork server reads the environment once, when it starts
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if previous is None:
                del os.environ["KERAS_BACKEND"]
            else:
                os.environ["KERAS_BACKEND"] = previous
        _SERVER_BACKEND.append(backend)
    assert _SERVER_BACKEND == [backend], f"this process's fork server imported {_SERVER_BACKEND[0]}, not {backend}"
