"""The one place kcnn keeps the backends' start-up noise off stderr, and its own progress off pipes.

TensorFlow, XLA and absl print several lines per process on stderr (oneDNN notices, `cudart_stub` and
`E0000 ... failed call to cuInit: UNKNOWN ERROR (303)` on a machine without a GPU), whatever the command. `quiet()`
runs in `import kcnn` (so in every `kcnn` command too), before anything imports a backend, and sets only what the
user left unset:

- TF_CPP_MIN_LOG_LEVEL=3: TensorFlow's and XLA's C++ logging, errors included (a Python exception still says what
  failed);
- CUDA_VISIBLE_DEVICES="" where no NVIDIA device exists (/dev/nvidia*): the CUDA libraries then skip the driver
  call whose failure is the cuInit line; a machine with a GPU, or a user who chose devices, is left alone;
- absl's Python logging at ERROR once TensorFlow has imported it (its `WARNING:absl:` lines): `quiet()` runs
  again when kcnn first imports Keras.

To see everything again: set TF_CPP_MIN_LOG_LEVEL=0 (and CUDA_VISIBLE_DEVICES to the devices wanted).
"""

import glob
import os
import sys


def quiet() -> None:
    """Set what keeps TensorFlow, XLA, absl and CUDA quiet, where the user has not set it (idempotent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "CUDA_VISIBLE_DEVICES" not in os.environ and not has_nvidia_device():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if "absl.logging" in sys.modules:  # else kcnn.backends.lazy calls this again once Keras is imported
        sys.modules["absl.logging"].set_verbosity("error")


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
