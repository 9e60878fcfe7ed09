"""Reading .keras files kcnn did not necessarily write: in Keras' safe mode, with one sentence on a refusal."""

import re

from kcnn.errors import KcnnError


def load_model(model_path, *, error=KcnnError, compile=True, accelerate=False):
    """The model of a .keras file, loaded in Keras' safe mode (no code from the file runs); `error`: the
    KcnnError type raised with `refusal`'s sentence; `accelerate`: on torch with kcnn.backends.torch_fast's kernels.
    A path that is not a regular file (a named pipe, a device) is refused without being opened."""
    from kcnn.data.folder import special_file

    kind = special_file(model_path)
    if kind is not None:  # Keras would open it, and a named pipe blocks until something writes to it
        raise error(f"{model_path} is {kind}, not a model file; pass a .keras file.")
    import keras

    from kcnn.backends.initializers import without_initializer_draws

    try:
        model = without_initializer_draws(lambda: keras.saving.load_model(model_path, compile=compile))
    except Exception as caught:  # zip, JSON, unknown-layer and safe-mode errors all mean one thing here
        raise error(refusal(model_path, caught)) from None
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


def refusal(model_path, error):
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
