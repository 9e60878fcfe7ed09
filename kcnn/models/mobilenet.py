"""MobileNet v1 (Howard et al., 2017) and v2 (Sandler et al., 2018), in
keras.applications' layout.

Layer names and creation order match `keras.applications.MobileNet` and
`MobileNetV2` at width multiplier `alpha=1.0`, so the official Keras ImageNet
files load unchanged. Other `alpha` values build the thinner networks.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import channel_axis, feature_pooling, image_input
from kcnn.registry import TORCH_COUNT, register_model
from kcnn.weights import NO_HASH, TF, TORCHVISION, keras_applications_source, torchvision_source

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor, Model

# MobileNet v1: (pointwise filters, stride) of depthwise-separable blocks 1..13.
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
             (512, 1), (512, 1), (1024, 2), (1024, 1)]
# MobileNet v2: (expansion, output filters, repeats, first stride) of each stage.
V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def stride2_padding(x: KerasTensor, kernel_size: int = 3) -> tuple[tuple[int, int], tuple[int, int]]:
    """keras.applications' `correct_pad`: TF-style "same" padding, made explicit."""
    axis = 2 if keras.config.image_data_format() == "channels_first" else 1
    size = x.shape[axis:axis + 2]
    adjust = (1, 1) if size[0] is None else (1 - size[0] % 2, 1 - size[1] % 2)
    half = kernel_size // 2
    return ((half - adjust[0], half), (half - adjust[1], half))


def depthwise_separable_block(x: KerasTensor, filters: int, *, strides: int, block_id: int) -> KerasTensor:
    """Depthwise 3x3 -> BN -> ReLU6 -> pointwise 1x1 -> BN -> ReLU6."""
    if strides == 1:
        padding = "same"
    else:
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
        padding = "valid"
    x = layers.DepthwiseConv2D(3, strides=strides, padding=padding, use_bias=False, name=f"conv_dw_{block_id}")(x)
    x = layers.BatchNormalization(axis=channel_axis(), name=f"conv_dw_{block_id}_bn")(x)
    x = layers.ReLU(6.0, name=f"conv_dw_{block_id}_relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}")(x)
    x = layers.BatchNormalization(axis=channel_axis(), name=f"conv_pw_{block_id}_bn")(x)
    return layers.ReLU(6.0, name=f"conv_pw_{block_id}_relu")(x)


def inverted_residual_block(x: KerasTensor, *, expansion: int, filters: int, strides: int,
                            block_id: int) -> KerasTensor:
    """Expand 1x1 -> depthwise 3x3 -> linear project 1x1, residual when shapes match."""
    bn = dict(axis=channel_axis(), epsilon=1e-3, momentum=0.999)
    in_channels = x.shape[channel_axis()]
    inputs = x
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        x = layers.Conv2D(expansion * in_channels, 1, padding="same", use_bias=False, name=f"{prefix}expand")(x)
        x = layers.BatchNormalization(name=f"{prefix}expand_BN", **bn)(x)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    if strides == 2:
        x = layers.ZeroPadding2D(stride2_padding(x), name=f"{prefix}pad")(x)
    x = layers.DepthwiseConv2D(3, strides=strides, use_bias=False, padding="same" if strides == 1 else "valid",
                               name=f"{prefix}depthwise")(x)
    x = layers.BatchNormalization(name=f"{prefix}depthwise_BN", **bn)(x)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = layers.BatchNormalization(name=f"{prefix}project_BN", **bn)(x)
    if in_channels == filters and strides == 1:
        x = layers.Add(name=f"{prefix}add")([inputs, x])
    return x


@register_model(input_shape=(224, 224, 3), params=4_253_864, min_size=32,
                source="keras.applications.MobileNet", test_input_shape=(32, 32, 3),
                pretrained=[keras_applications_source("mobilenet", "mobilenet_1_0_224_tf.h5", None, 70.4, **TF,
                                                      note=NO_HASH)])
def mobilenet(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
              classifier_activation: str | Callable | None, name: str,
              alpha: float = 1.0, dropout: float = 1e-3) -> Model:
    """MobileNet v1: a 3x3/2 conv and 13 depthwise-separable blocks."""
    inputs = image_input(input_shape)
    x = layers.Conv2D(int(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(axis=channel_axis(), name="conv1_bn")(x)
    x = layers.ReLU(6.0, name="conv1_relu")(x)
    for block_id, (filters, strides) in enumerate(V1_BLOCKS, start=1):
        x = depthwise_separable_block(x, int(filters * alpha), strides=strides, block_id=block_id)
    if include_top:
        # keras.applications' head: a 1x1 convolution on the pooled features.
        x = layers.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Conv2D(num_classes, 1, padding="same", name="conv_preds")(x)
        x = layers.Reshape((num_classes,), name="reshape_2")(x)
        x = layers.Activation(classifier_activation, name="predictions")(x)
    else:
        x = feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)


@register_model(input_shape=(224, 224, 3), params=3_538_984, min_size=32,
                source="keras.applications.MobileNetV2", test_input_shape=(32, 32, 3),
                pretrained=[keras_applications_source(
                    "mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", None, 71.3, **TF,
                    note=NO_HASH)])
def mobilenet_v2(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
                 classifier_activation: str | Callable | None, name: str,
                 alpha: float = 1.0, dropout: float = 0.0) -> Model:
    """MobileNet v2: inverted residual blocks with linear bottlenecks."""
    bn = dict(axis=channel_axis(), epsilon=1e-3, momentum=0.999)
    inputs = image_input(input_shape)
    x = layers.Conv2D(make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="Conv1")(inputs)
    x = layers.BatchNormalization(name="bn_Conv1", **bn)(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    block_id = 0
    for expansion, filters, repeats, first_stride in V2_STAGES:
        for i in range(repeats):
            x = inverted_residual_block(x, expansion=expansion, filters=make_divisible(int(filters * alpha)),
                                        strides=first_stride if i == 0 else 1, block_id=block_id)
            block_id += 1
    x = layers.Conv2D(make_divisible(1280 * alpha) if alpha > 1.0 else 1280, 1, use_bias=False, name="Conv_1")(x)
    x = layers.BatchNormalization(name="Conv_1_bn", **bn)(x)
    x = layers.ReLU(6.0, name="out_relu")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)


@register_model(input_shape=(224, 224, 3), params=3_504_872, counted=TORCH_COUNT, min_size=32,
                source="torchvision mobilenet_v2", test_input_shape=(32, 32, 3), checkpoint=TORCHVISION,
                pretrained=[  # "imagenet" is torchvision's DEFAULT, its IMAGENET1K_V2 recipe
                    torchvision_source("mobilenet_v2_torchvision", "mobilenet_v2-7ebf99e0.pth", 72.154, 90.822,
                                       resize_size=232),
                    torchvision_source("mobilenet_v2_torchvision", "mobilenet_v2-b0353104.pth", 71.878, 90.286,
                                       name="imagenet1k_v1")])
def mobilenet_v2_torchvision(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool,
                             pooling: str | None, classifier_activation: str | Callable | None, name: str,
                             dropout: float = 0.2) -> Model:
    """MobileNet v2 in torchvision's layout, so that torchvision checkpoints
    load: its module paths as names, symmetric padding, BN epsilon 1e-5."""
    bn = dict(axis=channel_axis(), epsilon=1e-5, momentum=0.9)

    def conv_bn(x, filters, kernel, *, strides=1, depthwise=False, name):
        # torchvision's Conv2dNormActivation: `name_0` conv, `name_1` BN, `name_2` ReLU6.
        if kernel == 3:
            x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)  # PyTorch pads both sides
        conv = layers.DepthwiseConv2D if depthwise else functools.partial(layers.Conv2D, filters)
        x = conv(kernel, strides=strides, use_bias=False, name=f"{name}_0")(x)
        x = layers.BatchNormalization(name=f"{name}_1", **bn)(x)
        return layers.ReLU(6.0, name=f"{name}_2")(x)

    inputs = image_input(input_shape)
    x = conv_bn(inputs, 32, 3, strides=2, name="features_0")
    index = 1
    for expansion, filters, repeats, first_stride in V2_STAGES:
        for i in range(repeats):
            block, shortcut, strides = f"features_{index}_conv", x, first_stride if i == 0 else 1
            part = 0
            if expansion != 1:
                x = conv_bn(x, expansion * x.shape[channel_axis()], 1, name=f"{block}_{part}")
                part += 1
            x = conv_bn(x, None, 3, strides=strides, depthwise=True, name=f"{block}_{part}")
            x = layers.Conv2D(filters, 1, use_bias=False, name=f"{block}_{part + 1}")(x)
            x = layers.BatchNormalization(name=f"{block}_{part + 2}", **bn)(x)
            if strides == 1 and shortcut.shape[channel_axis()] == filters:
                x = layers.Add(name=f"features_{index}_add")([shortcut, x])
            index += 1
    x = conv_bn(x, 1280, 1, name=f"features_{index}")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avgpool")(x)
        x = layers.Dropout(dropout, name="classifier_0")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, name="classifier_1")(x)
    else:
        x = feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)
