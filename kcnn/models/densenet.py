"""DenseNet (Huang et al., 2017), in keras.applications' layout.

Layer names and creation order match `keras.applications.DenseNet121/169/201`
(`conv2_block1_0_bn`, `pool2_conv`, ...), so the official Keras ImageNet
files load unchanged. Growth rate 32, bottleneck 4x, compression 0.5.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import channel_axis, classifier_head, image_input
from kcnn.registry import register_model
from kcnn.weights import CheckpointLayout, keras_applications_source, torchvision_source

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor, Model

GROWTH_RATE = 32


def _torchvision_name(key):
    """`features.denseblock2.denselayer5.conv1` -> `conv3_block5_1_conv` (keras.applications' names)."""
    # torchvision's published files keep the old module names `norm.1`, `conv.2` (torchvision renames them
    # with this pattern when it loads them); modules built today say `norm1`, `conv2`.
    key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])$", r"\1\2", key)
    parts = key.split(".")
    if key.startswith("features.denseblock"):
        stage, layer, module = int(parts[1][len("denseblock"):]) + 1, parts[2][len("denselayer"):], parts[3]
        return f"conv{stage}_block{layer}_" + {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn",
                                                "conv2": "2_conv"}.get(module, module)
    if key.startswith("features.transition"):
        return f"pool{int(parts[1][len('transition'):]) + 1}_{parts[2].replace('norm', 'bn')}"
    return {"features.conv0": "conv1_conv", "features.norm0": "conv1_bn", "features.norm5": "bn",
            "classifier": "predictions"}.get(key, key)


# keras.applications' DenseNet (kcnn's layout) uses batch-norm epsilon 1.001e-5, torchvision 1e-5.
TORCHVISION_CHECKPOINT = CheckpointLayout("torchvision_densenet", _torchvision_name, epsilon=1e-5)


def dense_layer(x: KerasTensor, growth_rate: int, *, name: str) -> KerasTensor:
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), concatenated to its input."""
    bn = dict(axis=channel_axis(), epsilon=1.001e-5)
    y = layers.BatchNormalization(name=f"{name}_0_bn", **bn)(x)
    y = layers.Activation("relu", name=f"{name}_0_relu")(y)
    y = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_1_bn", **bn)(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(axis=channel_axis(), name=f"{name}_concat")([x, y])


def transition(x: KerasTensor, reduction: float, *, name: str) -> KerasTensor:
    """BN-ReLU-Conv1x1 (channels x reduction)-AvgPool 2/2."""
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1.001e-5, name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(int(x.shape[channel_axis()] * reduction), 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def _build_densenet(blocks, *, num_classes, input_shape, include_top, pooling, classifier_activation, name):
    inputs = image_input(input_shape)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, layers_in_block in enumerate(blocks, start=2):
        for i in range(1, layers_in_block + 1):
            x = dense_layer(x, GROWTH_RATE, name=f"conv{stage}_block{i}")
        if stage < len(blocks) + 1:
            x = transition(x, 0.5, name=f"pool{stage}")
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1.001e-5, name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    x = classifier_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                        classifier_activation=classifier_activation)
    return keras.Model(inputs, x, name=name)


def _torchvision(arch, file_name, top1, top5):
    """torchvision's DenseNet files, a second source beside Keras' (`weights="torchvision"`)."""
    return torchvision_source(arch, file_name, top1, top5, name="torchvision", layout=TORCHVISION_CHECKPOINT)


_DENSENET = dict(input_shape=(224, 224, 3), min_size=32, test_input_shape=(32, 32, 3),
                 checkpoint=TORCHVISION_CHECKPOINT)


@register_model(params=8_062_504, source="keras.applications.DenseNet121", **_DENSENET,
                pretrained=[keras_applications_source("densenet121", "densenet121_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "9d60b8095a5708f2dcce2bca79d332c7", 75.0),
                            _torchvision("densenet121", "densenet121-a639ec97.pth", 74.434, 91.972)])
def densenet121(**kwargs: Any) -> Model:
    """DenseNet-121 (dense blocks 6-12-24-16)."""
    return _build_densenet((6, 12, 24, 16), **kwargs)


@register_model(params=14_307_880, source="keras.applications.DenseNet169", **_DENSENET,
                pretrained=[keras_applications_source("densenet169", "densenet169_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "d699b8f76981ab1b30698df4c175e90b", 76.2),
                            _torchvision("densenet169", "densenet169-b2777c0a.pth", 75.600, 92.806)])
def densenet169(**kwargs: Any) -> Model:
    """DenseNet-169 (dense blocks 6-12-32-32)."""
    return _build_densenet((6, 12, 32, 32), **kwargs)


@register_model(params=20_242_984, source="keras.applications.DenseNet201", **_DENSENET,
                pretrained=[keras_applications_source("densenet201", "densenet201_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "1ceb130c1ea1b78c3bf6114dbdfd8807", 77.3),
                            _torchvision("densenet201", "densenet201-c1103571.pth", 76.896, 93.370)])
def densenet201(**kwargs: Any) -> Model:
    """DenseNet-201 (dense blocks 6-12-48-32)."""
    return _build_densenet((6, 12, 48, 32), **kwargs)
