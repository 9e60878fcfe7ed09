"""The one place kcnn keeps the backends' start-up noise off stderr, and its own progress off pipes.

TensorFlow, XLA and absl print several lines per process on stderr (oneDNN notices, `cudart_stub` and
`E0000 ... failed call to cuInit: UNKNOWN ERROR (303)` on a machine without a GPU), whatever the command. `quiet()`
runs in `import kcnn` (so in every `kcnn` command too), before anything imports a backend, and sets only what the
user left unset:

- TF_CPP_MIN_LOG_LEVEL=3: TensorFlow's and XLA's C++ logging, errors included (a Python exception still says what
  failed);
- CUDA_VISIBLE_DEVICES="" where no NVIDIA device exists (/dev/nvidia*): the CUDA libraries then skip the driver
  call whose failure is the cuInit line; a machine with a GPU, or a user who chose devices, is left alone;
- `import tensorflow` with file descriptor 2 on /dev/null, at that level: TensorFlow 2.19+ writes `cudart_stub`
  and `absl::InitializeLog` lines while it loads, whatever TF_CPP_MIN_LOG_LEVEL says (tensorflow/tensorflow#100442);
  an import that fails still raises, and Python prints its traceback after the import;
- absl's Python logging at ERROR once TensorFlow has imported it (its `WARNING:absl:` lines): `quiet()` runs
  again when kcnn first imports Keras.

To see everything again: set TF_CPP_MIN_LOG_LEVEL=0 (and CUDA_VISIBLE_DEVICES to the devices wanted).
"""

import contextlib
import glob
import importlib.abc
import os
import sys


def quiet() -> None:
    """Set what keeps TensorFlow, XLA, absl and CUDA quiet, where the user has not set it (idempotent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "CUDA_VISIBLE_DEVICES" not in os.environ and not has_nvidia_device():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    if "absl.logging" in sys.modules:  # else kcnn.backends.lazy calls this again once Keras is imported
        sys.modules["absl.logging"].set_verbosity("error")


_QUIET_MODULES = ("tensorflow",)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports the modules of _QUIET_MODULES as the other finders would, with stderr (the file descriptor, which C++
    writes to) on /dev/null while each module's top runs; finds nothing itself."""

    def find_spec(self, name, path, target=None):
        if name not in _QUIET_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _QuietLoader(spec.loader)
                    return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        with _stderr_to_devnull():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # is_package, get_resource_reader, ...: the real loader's
        return getattr(self._loader, name)


@contextlib.contextmanager
def _stderr_to_devnull():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2 (embedded, closed): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def has_nvidia_device() -> bool:
    """Whether the machine shows an NVIDIA device node (Linux); elsewhere, assume it may (nothing is hidden)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/nvidiactl")


def progress_verbosity(verbose: int) -> int:
    """Keras' `verbose` for fit() and progress bars: its animated bar (1) on a terminal, one line per epoch (2) when
    stdout is a pipe or a file, which would otherwise fill with carriage returns and colour codes."""
    if verbose == 1 and not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()):
        return 2
    return verbose
