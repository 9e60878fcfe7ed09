"""keras-hub presets as kcnn backbones: `kcnn.build("hub:resnet_50_imagenet", num_classes=5)`.

A keras-hub preset is a folder (local, or on Kaggle under a name such as
`"resnet_50_imagenet"`) holding a backbone's config and weights and, for image
models, an `ImageConverter` with the scale and offset the weights were trained
with. `build_from_preset` turns it into one flat functional model like every
other pretrained kcnn model: raw 0-255 RGB pixels in, the converter's rescaling
as its first layer (named "preprocessing"), the backbone's layers, then global
pooling and a fresh "predictions" head.

keras-hub is optional (`pip install "kcnn[hub]"`); it is imported only here,
and only when a preset is built.
"""

import difflib
import os
import re

from kcnn.backends.lazy import keras  # imported when a preset is built
from kcnn.errors import InvalidArgumentError
from kcnn.registry import _POOLING, _check_head, register_prefix, to_data_format
from kcnn.weights import WeightsError

DEFAULT_IMAGE_SIZE = 224  # when neither the backbone nor its converter fixes one
_ARGS = ("num_classes", "input_shape", "include_top", "pooling", "classifier_activation",
         "include_preprocessing", "name")


def build_from_preset(
    preset: str,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int | None, ...] | None = None,
    include_top: bool = True,
    pooling: str | None = "avg",
    classifier_activation: str | None = None,
    include_preprocessing: bool = True,
    name: str | None = None,
    **kwargs: object,
) -> "keras.Model":
    """Build a functional model on the backbone of a keras-hub preset.

    Example:
        model = kcnn.build("hub:resnet_50_imagenet", num_classes=5)  # Kaggle, cached after the first time
        model = kcnn.build("hub:./my_preset", num_classes=5)         # a folder from `save_to_preset`

    Args:
        preset: a keras-hub preset name (`"resnet_50_imagenet"`), a handle
            (`"kaggle://keras/resnetv1/keras/resnet_50_imagenet/3"`), or the
            path of a local preset folder.
        num_classes: classes of a fresh Dense head named "predictions";
            required with `include_top=True` (a preset holds a backbone only).
        input_shape: in the active image data format; `None` means the
            backbone's own fixed shape, else the converter's image size, else
            224x224, with the backbone's channels.
        include_top: whether to add the pooling and the head.
        pooling: `"avg"` or `"max"`: global pooling of the features, before the
            head or, with `include_top=False`, as the output; `None` with
            `include_top=False` returns the feature map.
        classifier_activation: activation of the head; `None` gives logits.
        include_preprocessing: put the converter's rescaling inside the model
            so that it takes raw 0-255 RGB pixels (the converter's resizing is
            left out: the model takes `input_shape`).
        name: name of the model; defaults to the preset's name.

    The result saves as `.keras`. A backbone made of built-in Keras layers
    (ResNet, VGG, ...) loads back with `keras.saving.load_model` alone; one
    with keras-hub's own layers needs `import keras_hub` before loading.
    """
    if kwargs:
        first = sorted(kwargs)[0]
        raise InvalidArgumentError(
            f"hub: presets take the arguments {', '.join(_ARGS)}; keras-hub presets bring their own weights. "
            f"Received: {first}={kwargs[first]!r}")
    preset = _check_preset(preset)
    if pooling not in _POOLING:
        raise InvalidArgumentError(f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    _check_head(include_top, None, classifier_activation)  # pooling is checked above: here it also feeds the head
    if include_top:
        if pooling is None:
            raise InvalidArgumentError(
                "include_top=True pools the backbone's features before the head; pass pooling='avg' or 'max'. "
                "Received: pooling=None")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise InvalidArgumentError(
                "A keras-hub preset holds a backbone without a head: pass num_classes (a whole number of at "
                f"least 1) for a fresh one, or include_top=False. Received: num_classes={num_classes!r}")

    keras_hub = _import_keras_hub()
    backbone, converter = _load(keras_hub, preset)
    if include_preprocessing and converter is None:
        raise WeightsError(
            f"The keras-hub preset {preset!r} has no image converter, so its preprocessing is unknown; pass "
            "include_preprocessing=False and feed the images its backbone expects.")
    input_shape = _check_input_shape(preset, backbone, converter, input_shape)

    inputs = keras.Input(shape=input_shape, name="image")
    images = _rescaling(converter)(inputs) if include_preprocessing else inputs

    def call(layer, *args, **call_kwargs):  # layers that read the image read it rescaled
        return layer(*(images if arg is inputs else arg for arg in args), **call_kwargs)

    # The backbone's own layers (weights and all) called on `images`: one flat graph, not a nested model.
    features = keras.models.clone_model(backbone, input_tensors=inputs, clone_function=lambda layer: layer,
                                        call_function=call).output
    if pooling is not None:
        features = _pooling(features, pooling)
    outputs = features
    if include_top:
        outputs = keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(features)
    return keras.Model(inputs, outputs, name=name or _default_name(preset))


def _check_preset(preset):
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str) or not preset:
        raise InvalidArgumentError(
            "Name a keras-hub preset after 'hub:', e.g. 'hub:resnet_50_imagenet' or 'hub:./my_preset'. "
            f"Received: preset={preset!r}")
    return preset if "://" in preset else os.path.expanduser(preset)


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        if error.name == "keras_hub":
            raise WeightsError(
                'keras-hub presets need the keras-hub package, which is not installed: pip install "kcnn[hub]".'
            ) from None
        raise WeightsError(f"keras-hub is installed but does not import ({error}); reinstall it with "
                           'pip install "kcnn[hub]" (with -c constraints.txt for the versions kcnn is tested with).'
                           ) from None
    return keras_hub


def _load(keras_hub, preset):
    """The preset's backbone and image converter (None if it has none), with
    one clear error for a preset that is missing, unreachable or not an image
    backbone."""
    remote = "://" in preset
    if not remote and not os.path.exists(preset):
        if any(sep in preset for sep in "/\\") or preset.startswith("."):
            raise WeightsError(f"No keras-hub preset folder at {preset!r}; pass an existing folder or a preset "
                               "name such as 'resnet_50_imagenet'.")
        known = sorted(keras_hub.models.Backbone.presets)
        if preset not in known:
            close = difflib.get_close_matches(preset, known, n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise WeightsError(
                f"Unknown keras-hub preset {preset!r}.{hint} Pass a preset name from "
                "keras_hub.models.Backbone.presets, a kaggle:// handle, or the path of a local preset folder. "
                f"Received: preset={preset!r}")
        remote = True
    if not remote:
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise WeightsError(
                f"{preset!r} is not a keras-hub preset folder: it has no config.json (make one with "
                f"backbone.save_to_preset(folder)). Received: preset={preset!r}")
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except Exception as error:
        if remote and _is_fetch_error(error):
            raise WeightsError(
                f"Cannot fetch the keras-hub preset {preset!r} ({type(error).__name__}): the first download needs "
                "the network (Kaggle), after which it is cached; offline, pass the path of a local preset folder "
                "(saved with save_to_preset).") from None
        if isinstance(error, (OSError, ValueError)):  # keras-hub's words for a preset it cannot read
            raise WeightsError(f"keras-hub cannot load the preset {preset!r}: {error}") from None
        raise
    if len(backbone.inputs) != 1 or len(backbone.inputs[0].shape) != 4 or len(backbone.outputs) != 1:
        raise WeightsError(
            f"The keras-hub preset {preset!r} is not an image backbone ({type(backbone).__name__} takes "
            f"{backbone.inputs}); kcnn builds image classifiers on backbones that take one batch of images.")
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except (FileNotFoundError, ValueError):  # no image_converter.json, or no converter class for this backbone
        converter = None
    return backbone, converter


def _is_fetch_error(error):
    # requests' network errors are OSErrors; kagglehub and huggingface_hub also raise their own types. A
    # FileNotFoundError is keras-hub saying that the preset lacks a file: the preset's fault, not the network's.
    if isinstance(error, FileNotFoundError):
        return False
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] in ("kagglehub", "huggingface_hub")


def _check_input_shape(preset, backbone, converter, input_shape):
    """`input_shape` (active data format), checked against the backbone's input."""
    channels_first = keras.config.image_data_format() == "channels_first"
    own = tuple(backbone.inputs[0].shape[1:])
    channels = own[0] if channels_first else own[-1]
    own_size = own[1:] if channels_first else own[:2]
    if input_shape is None:
        if None not in own:
            return own
        size = converter.image_size if converter is not None and converter.image_size else None
        size = tuple(size) if size else (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
        return to_data_format((*size, channels or 3))
    layout = "(channels, height, width)" if channels_first else "(height, width, channels)"
    valid = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
    valid = valid and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    if not valid:
        raise InvalidArgumentError(
            f"input_shape must be three positive whole numbers {layout}. Received: input_shape={input_shape!r}")
    input_shape = tuple(input_shape)
    mismatch = [(got, want) for got, want in zip(input_shape, own) if want is not None and got != want]
    if mismatch:
        raise InvalidArgumentError(
            f"The backbone of the keras-hub preset {preset!r} takes inputs of shape {own} (None: any), "
            f"{layout}; its pretrained weights fix {'them' if None not in own_size else 'the channels'}. "
            f"Received: input_shape={input_shape}")
    return input_shape


def _rescaling(converter):
    """The converter's `pixels * scale + offset`, per channel where it is."""
    channels_first = keras.config.image_data_format() == "channels_first"

    def per_channel(value, default):
        if value is None:
            return default
        if isinstance(value, (int, float)):
            return float(value)
        values = [float(v) for v in value]
        return [[[v]] for v in values] if channels_first else values  # broadcast over the channel axis

    return keras.layers.Rescaling(per_channel(converter.scale, 1.0), per_channel(converter.offset, 0.0),
                                  name="preprocessing")


def _pooling(features, pooling):
    rank = len(features.shape)
    if rank == 2:  # the backbone pools already
        return features
    if rank == 3:  # a sequence of tokens (vision transformers)
        layer = keras.layers.GlobalAveragePooling1D if pooling == "avg" else keras.layers.GlobalMaxPooling1D
    else:
        layer = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
    return layer(name=f"{pooling}_pool")(features)


def _default_name(preset):
    # "kaggle://keras/resnetv1/keras/resnet_50_imagenet/3" and "./presets/resnet_50_imagenet/" both give
    # "resnet_50_imagenet": the last path segment that is not a version number.
    parts = [part for part in re.split(r"[/\\]", preset.split("://")[-1]) if part and not part.isdigit()]
    return re.sub(r"\W", "_", parts[-1]) if parts else "hub_model"


register_prefix("hub", build_from_preset)  # kcnn.build("hub:PRESET", ...)
