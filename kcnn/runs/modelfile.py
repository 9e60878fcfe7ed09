"""Reading .keras files kcnn did not necessarily write: in Keras' safe mode, with one sentence on a refusal.

Before Keras opens a file, its zip directory is read and bounded (Keras extracts the weights to a temporary
folder or into memory, whatever their size): at most MAX_MEMBERS members, and at most MAX_MODEL_GB of
uncompressed data in all (the environment variable KCNN_MAX_MODEL_GB raises it), of which anything beyond
RATIO_FLOOR_MB may not be more than MAX_RATIO times the file's size (weights hardly compress; a zip bomb of
1-2 MB that unpacks to 2 GB does). After loading, a model whose outputs on a probe input are NaN or infinite
is refused too: it diverged in training, and every answer it gives would be `nan%`.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import TYPE_CHECKING, Any

from kcnn.errors import DivergedError, KcnnError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    import numpy as np

MAX_MEMBERS = 10_000  # a .keras file has three (config.json, metadata.json, model.weights.h5) and its assets
MAX_MODEL_GB = 16.0  # uncompressed, in all: VGG-19 is 0.55, the zoo's 1.5-billion-parameter mlp 6
MAX_RATIO = 100  # uncompressed / compressed, above RATIO_FLOOR_MB
RATIO_FLOOR_MB = 256


def load_model(model_path: str, *, error: type = KcnnError, compile: bool = True,
               accelerate: bool = False) -> keras.Model:
    """The model of a .keras file, loaded in Keras' safe mode (no code from the file runs); `error`: the
    KcnnError type raised with `refusal`'s sentence; `accelerate`: on torch with kcnn.backends.torch_fast's kernels.
    A path that is not a regular file (a named pipe, a device) is refused without being opened."""
    from kcnn.data.folder import special_file

    kind = special_file(model_path)
    if kind is not None:  # Keras would open it, and a named pipe blocks until something writes to it
        raise error(f"{model_path} is {kind}, not a model file; pass a .keras file.")
    import keras

    import kcnn.training.optim  # noqa: F401 (the recipes' schedules and optimizer, registered with Keras)
    from kcnn.backends.initializers import without_initializer_draws

    check_model_file(model_path, error)
    try:
        model = without_initializer_draws(lambda: keras.saving.load_model(model_path, compile=compile))
    except Exception as caught:  # zip, JSON, unknown-layer and safe-mode errors all mean one thing here
        raise error(refusal(model_path, caught)) from None
    check_finite_outputs(model, model_path)
    if getattr(model, "compiled", False):
        from kcnn.backends import keras_private

        # Keras saves what jit_compile="auto" meant where the model was trained (True on JAX and TensorFlow):
        # on torch that is torch.compile (a JAX run's cifar_resnet20 evaluated on 4 images: 20 s of compiling),
        # and a torch run's False would run JAX op by op. "auto" means what it means here.
        model.jit_compile = keras_private.auto_jit_compile(model)
    if accelerate:
        from kcnn.backends import torch_fast

        model = torch_fast.accelerate(model)
    return model


def refusal(model_path: str, error: BaseException) -> str:
    """One sentence on why Keras (in safe mode) did not load the .keras file `model_path`."""
    text = str(error)
    if "safe_mode" in text and "lambda" in text.lower():  # Keras' safe mode refused Python code
        what = "a Lambda layer with Python code" if "`Lambda` layer" in text else "Python code (a lambda)"
        return (f"{model_path} holds {what}, which kcnn never runs (it loads models in Keras' safe mode); rebuild "
                f"the model with built-in or registered layers and functions in its place and save it again.")
    located = re.search(r"Could not locate (class|function) '([^']+)'(?:.*?Full object config: \{'module': "
                        r"'([^']*)')?", text, re.DOTALL)
    unknown_layer = re.search(r"Unknown layer: '?([^'.]+)", text)
    if located or unknown_layer:
        kind, name, module = located.groups() if located else ("class", unknown_layer.group(1), None)
        return (f"{model_path} uses a {'function' if kind == 'function' else 'layer'} Keras does not know ({name})"
                f"{f' from the module {module}' if module else ''}, and safe mode imports no code a model file names; "
                f"if you trust the file, use it from a program that imports and registers it.")
    forbidden = re.search(r"deserialize [`']([^`']+)[`'] because it is not a (modeling function|KerasSaveable)", text)
    if forbidden:
        return (f"{model_path} names {forbidden.group(1)}, which is not part of a model (Keras refuses it for "
                f"security); do not use this file.")
    inner = re.search(r"Exception encountered: (.+)", text)
    message = (inner.group(1) if inner else text.strip().split("\n")[0] if text.strip() else "no details")
    return f"{model_path} cannot be loaded as a Keras model ({type(error).__name__}: {message.strip()})."


def check_model_file(model_path: str, error: type = KcnnError) -> None:
    """Refuse, with `error`, a zip that is damaged or unpacks to more than the bounds above (a regular file:
    load_model checks that first); nothing is extracted."""
    model_path = os.fspath(model_path)
    try:
        size = os.path.getsize(model_path)
    except OSError as caught:
        raise error(f"Cannot read the model file {model_path} ({caught.strerror}); pass an existing .keras file."
                    ) from None
    try:
        with zipfile.ZipFile(model_path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as caught:
        raise error(f"{model_path} is not a complete .keras file (a truncated or damaged zip: {caught}); save or "
                    f"copy the model again.") from None
    unpacked = sum(member.file_size for member in members)
    limit_gb = max_model_gb()
    if len(members) > MAX_MEMBERS:
        raise error(f"{model_path} holds {len(members):,} files, over the {MAX_MEMBERS:,} a .keras model may hold; "
                    f"it is not a Keras model file.")
    if unpacked > limit_gb * 2**30:
        raise error(f"{model_path} unpacks to {unpacked / 2**30:.1f} GB, over the limit of {limit_gb:g} GB; if you "
                    f"trust the file, raise the limit with the environment variable KCNN_MAX_MODEL_GB.")
    if unpacked > RATIO_FLOOR_MB * 2**20 and unpacked > MAX_RATIO * size:
        raise error(f"{model_path} unpacks to {unpacked / 2**20:,.0f} MB from {size / 2**20:,.1f} MB, over "
                    f"{MAX_RATIO} times its size (model weights hardly compress): it is not a Keras model file.")


def max_model_gb() -> float:
    """MAX_MODEL_GB, or the environment variable KCNN_MAX_MODEL_GB where it holds a number above 0."""
    text = os.environ.get("KCNN_MAX_MODEL_GB")
    if text is None:
        return MAX_MODEL_GB
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise KcnnError(f"KCNN_MAX_MODEL_GB must be a number of gigabytes above 0. Received: {text!r}")
    return value


def check_finite_outputs(model: keras.Model, model_path: str) -> None:
    """DivergedError where the model's outputs on a probe input (a mid-grey and random 0-255 images) are NaN or
    infinite. Only models of a fixed input size are probed here; the others are checked on their answers."""
    shape = tuple(model.inputs[0].shape[1:]) if len(getattr(model, "inputs", None) or ()) == 1 else ()
    if not shape or None in shape:
        return
    if not finite_outputs(model, probe_images(shape, count=2)):
        raise DivergedError(non_finite_refusal(model_path))


def non_finite_refusal(what: str) -> str:
    return (f"{what} gives NaN or infinite outputs (its weights diverged in training, or the file is damaged); "
            f"train it again with a lower learning rate.")


def finite_outputs(model: keras.Model, inputs: Any) -> bool:
    """Whether every output of `model` on `inputs` is a finite number (a dict or list of outputs: all)."""
    import keras
    import numpy as np

    outputs = model(inputs, training=False)
    outputs = list(outputs.values()) if isinstance(outputs, dict) else outputs
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return all(np.all(np.isfinite(keras.ops.convert_to_numpy(o).astype("float32"))) for o in outputs)


def probe_images(image_shape: tuple, count: int = 4, seed: int = 0) -> np.ndarray:
    """Inputs to probe a model that takes raw 0-255 pixels: a mid-grey image and random ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (count, *image_shape)).astype("float32")
    images[0] = 127.5
    return images
