"""The CIFAR-10 networks of He et al. (2016), Section 4.2, with and without
shortcuts: the depth-degradation experiment of the lecture notes.

6n+2 layers: a 3x3 conv with 16 filters, three stages of n basic blocks
(16, 32, 64 filters; the first block of stages 2 and 3 halves the map),
global average pooling and a Dense layer. `cifar_resnet*` use the paper's
parameter-free "option A" shortcut (subsample, then zero-pad the channels);
`plain*` are the same stacks without shortcuts and have the same counts.
The paper's table: 0.27M (20 layers), 0.85M (56), 1.7M (110).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.errors import InvalidArgumentError
from kcnn.layers import channel_axis, classifier_head, image_input, pad_channels, torch_conv
from kcnn.registry import TORCH_COUNT, register_model

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor

SHORTCUTS = ("identity", "projection", None)


def cifar_block(x: KerasTensor, filters: int, *, strides: int, shortcut: str | None, name: str) -> KerasTensor:
    """Basic block; `shortcut` is "identity" (option A), "projection" (option B) or None (plain)."""
    bn = dict(axis=channel_axis(), epsilon=1e-5)
    residual = x
    x = torch_conv(x, filters, 3, strides=strides, padding=1, use_bias=False, name=f"{name}_conv1")
    x = layers.BatchNormalization(name=f"{name}_bn1", **bn)(x)
    x = layers.Activation("relu", name=f"{name}_relu1")(x)
    x = torch_conv(x, filters, 3, padding=1, use_bias=False, name=f"{name}_conv2")
    x = layers.BatchNormalization(name=f"{name}_bn2", **bn)(x)
    if shortcut is not None:
        in_filters = residual.shape[channel_axis()]
        if shortcut == "projection" and (strides != 1 or in_filters != filters):
            residual = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_shortcut_conv")(residual)
            residual = layers.BatchNormalization(name=f"{name}_shortcut_bn", **bn)(residual)
        elif strides != 1 or in_filters != filters:
            # Option A: x[:, ::2, ::2] then zero channels; no parameters.
            residual = layers.MaxPooling2D(1, strides=strides, name=f"{name}_shortcut_subsample")(residual)
            residual = pad_channels(residual, filters - in_filters, name=f"{name}_shortcut_pad")
        x = layers.Add(name=f"{name}_add")([x, residual])
    return layers.Activation("relu", name=f"{name}_relu2")(x)


def _build_cifar_resnet(depth, *, shortcut, num_classes, input_shape, include_top, pooling,
                        classifier_activation, name):
    if shortcut not in SHORTCUTS:
        raise InvalidArgumentError(
            f"shortcut must be 'identity' (option A), 'projection' (option B) or None (plain). "
            f"Received: shortcut={shortcut!r}"
        )
    blocks = (depth - 2) // 6
    inputs = image_input(input_shape)
    x = torch_conv(inputs, 16, 3, padding=1, use_bias=False, name="conv1")
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1e-5, name="bn1")(x)
    x = layers.Activation("relu", name="relu")(x)
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(blocks):
            strides = 2 if stage > 1 and block == 0 else 1
            x = cifar_block(x, filters, strides=strides, shortcut=shortcut, name=f"layer{stage}_{block}")
    x = classifier_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                        classifier_activation=classifier_activation, pool_name="avgpool", dense_name="fc")
    return keras.Model(inputs, x, name=name)


def _register_depth(depth, params):
    common = dict(input_shape=(32, 32, 3), num_classes=10, params=params, counted=TORCH_COUNT,
                  min_size=4, source="He et al. 2016, Table 6 (option A shortcuts)")

    def resnet(*, shortcut="identity", **kwargs):
        return _build_cifar_resnet(depth, shortcut=shortcut, **kwargs)

    def plain(**kwargs):
        return _build_cifar_resnet(depth, shortcut=None, **kwargs)

    resnet.__name__ = resnet.__qualname__ = f"cifar_resnet{depth}"
    resnet.__doc__ = f"ResNet-{depth} for 32x32 CIFAR images ({(depth - 2) // 6} blocks a stage)."
    plain.__name__ = plain.__qualname__ = f"plain{depth}"
    plain.__doc__ = f"Plain-{depth}: ResNet-{depth} without shortcuts, for the degradation experiment."
    return register_model(**common)(resnet), register_model(**common)(plain)


# depth: parameters counted as the paper and torch do (BN running statistics excluded)
DEPTHS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
for _depth, _params in DEPTHS.items():
    globals()[f"cifar_resnet{_depth}"], globals()[f"plain{_depth}"] = _register_depth(_depth, _params)
