"""Shared blocks used by several families.

Blocks take a tensor and return a tensor, and every layer gets a stable name
derived from `name`. Only built-in Keras layers are used, so a saved `.keras`
file loads with plain `keras.saving.load_model` in a process without kcnn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor


def channel_axis() -> int:
    return 1 if keras.config.image_data_format() == "channels_first" else -1


def image_input(input_shape: tuple[int, int, int], name: str = "input") -> KerasTensor:
    return keras.Input(shape=input_shape, name=name)


def conv_bn_act(
    x: KerasTensor,
    filters: int,
    kernel_size: int | tuple[int, int],
    *,
    name: str,
    strides: int | tuple[int, int] = 1,
    padding: str = "same",
    use_bias: bool = False,
    activation: str | Callable | None = "relu",
    epsilon: float = 1e-3,
    momentum: float = 0.99,
) -> KerasTensor:
    """Conv2D -> BatchNormalization -> activation, named `{name}_conv`,
    `{name}_bn`, `{name}_act` (torchvision's `BasicConv2d` layout when
    `name` is the torch module path with dots as underscores)."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=epsilon, momentum=momentum, name=f"{name}_bn")(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def torch_conv(x: KerasTensor, filters: int, kernel_size: int, *, strides: int = 1, padding: int = 0,
               use_bias: bool = True, name: str) -> KerasTensor:
    """Conv2D with PyTorch's symmetric padding.

    Keras' "same" pads the extra pixel of a strided convolution at the end
    only, PyTorch pads both sides equally; explicit ZeroPadding2D keeps the
    outputs of a converted torch checkpoint identical (keras.applications'
    ResNet does the same with `conv1_pad`).
    """
    if padding == kernel_size // 2 and strides == 1:
        return layers.Conv2D(filters, kernel_size, padding="same", use_bias=use_bias, name=name)(x)
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel_size, strides=strides, use_bias=use_bias, name=name)(x)


def max_pool_ceil(x: KerasTensor, pool_size: int, strides: int, *, name: str) -> KerasTensor:
    """MaxPool2d with PyTorch's `ceil_mode=True` and no padding.

    Ceil mode keeps a last, partial window; padding `strides - 1` pixels at
    the end gives exactly the same windows. Zero padding equals -inf padding
    here because the inputs come from a ReLU (non-negative).
    """
    pad = strides - 1
    if pad:
        x = layers.ZeroPadding2D(((0, pad), (0, pad)), name=f"{name}_pad")(x)
    return layers.MaxPooling2D(pool_size, strides=strides, name=name)(x)


def pad_channels(x: KerasTensor, extra: int, *, name: str) -> KerasTensor:
    """Append `extra` zero channels, split evenly before and after.

    The parameter-free "option A" shortcut of He et al. (2016) for CIFAR.
    Keras has no channel-padding layer; ZeroPadding3D on a view with a unit
    trailing axis is the built-in way to do it without a Lambda layer (which
    would need kcnn, and unsafe deserialization, to load).
    """
    before, after = extra // 2, extra - extra // 2
    shape = tuple(x.shape[1:])
    if keras.config.image_data_format() == "channels_first":
        padding = ((before, after), (0, 0), (0, 0))
        out_shape = (shape[0] + extra,) + shape[1:]
    else:
        padding = ((0, 0), (0, 0), (before, after))
        out_shape = shape[:2] + (shape[2] + extra,)
    x = layers.Reshape(shape + (1,), name=f"{name}_expand")(x)
    x = layers.ZeroPadding3D(padding, data_format="channels_last", name=f"{name}_zeros")(x)
    return layers.Reshape(out_shape, name=f"{name}_merge")(x)


def classifier_head(
    x: KerasTensor,
    *,
    include_top: bool,
    num_classes: int,
    pooling: str | None,
    classifier_activation: str | Callable | None,
    dropout: float = 0.0,
    pool_name: str = "avg_pool",
    dense_name: str = "predictions",
) -> KerasTensor:
    """Global average pooling -> dropout -> Dense, or the pooled features.

    The generic head of keras-hub's `ImageClassifier`: with `include_top`
    the output is the classifier (logits unless `classifier_activation`),
    otherwise the features, pooled when `pooling` is "avg" or "max".
    """
    if include_top:
        x = layers.GlobalAveragePooling2D(name=pool_name)(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{dense_name}_dropout")(x)
        return layers.Dense(num_classes, activation=classifier_activation, name=dense_name)(x)
    return feature_pooling(x, pooling)


def feature_pooling(x: KerasTensor, pooling: str | None) -> KerasTensor:
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def flatten_head(
    x: KerasTensor,
    *,
    include_top: bool,
    num_classes: int,
    pooling: str | None,
    classifier_activation: str | Callable | None,
    hidden: Sequence[int],
    dropout: float = 0.0,
    names: Sequence[str] | None = None,
    dense_name: str = "predictions",
) -> KerasTensor:
    """Flatten -> (Dense + ReLU + dropout) per hidden width -> Dense: the head
    of LeNet, AlexNet and VGG. `names` names the hidden Dense layers."""
    if not include_top:
        return feature_pooling(x, pooling)
    names = names or [f"fc{i + 1}" for i in range(len(hidden))]
    x = layers.Flatten(name="flatten")(x)
    for units, layer_name in zip(hidden, names):
        x = layers.Dense(units, activation="relu", name=layer_name)(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{layer_name}_dropout")(x)
    return layers.Dense(num_classes, activation=classifier_activation, name=dense_name)(x)
