"""Small helpers shared by the API and the tests."""

import contextlib

import keras
from keras.src.backend.common import global_state  # no public way to forget deferred variables


@contextlib.contextmanager
def weightless_scope():
    """Build models for their shapes only.

    Inside a `keras.StatelessScope`, the JAX backend defers creating weight
    values, so counting the 1.5 billion parameters of `mlp` allocates
    nothing. Keras would initialise the deferred weights when the scope
    closes; here they are dropped instead, so models built inside must not
    be run afterwards. Other backends allocate the weights as usual.
    """
    before = list(global_state.get_global_attribute("uninitialized_variables", []) or [])
    with keras.StatelessScope(initialize_variables=False):
        yield
    global_state.set_global_attribute("uninitialized_variables", before)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Open a temporary file beside `path` and rename it into place when the
    block ends without an error; on an error, remove it. Readers never see a
    half-written file, and an existing `path` stays intact until the rename."""
    import os

    root, extension = os.path.splitext(path)
    temporary = f"{root}.tmp{extension}"
    try:
        with open(temporary, mode, **kwargs) as f:
            yield f
        replace_file(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def replace_file(temporary, path):
    """Flush `temporary` to disk, then rename it to `path` (atomic on POSIX
    and Windows). The flush makes the rename safe against a power cut too."""
    import os

    with open(temporary, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


def mixed_precision_policy():
    """Keras' mixed-precision policy for the active backend and device: float16 where torch runs on a
    CUDA GPU (its usual choice there), bfloat16 everywhere else. On a CPU float16 has no fast kernels:
    airbench's training step on torch ran at 10 images/s in float16 against 185 in float32 and 262 in
    bfloat16 (`KERAS_BACKEND=torch python bench/mixed_precision.py`, this 2-core CPU with AVX512-BF16)."""
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return "mixed_float16"
    return "mixed_bfloat16"
