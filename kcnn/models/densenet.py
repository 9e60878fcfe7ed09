"""DenseNet (Huang et al., 2017), in keras.applications' layout.

Layer names and creation order match `keras.applications.DenseNet121/169/201`
(`conv2_block1_0_bn`, `pool2_conv`, ...), so the official Keras ImageNet
files load unchanged. Growth rate 32, bottleneck 4x, compression 0.5.
"""

import keras
from keras import layers

from kcnn.layers import channel_axis, classifier_head, image_input
from kcnn.registry import register_model

GROWTH_RATE = 32


def dense_layer(x, growth_rate, *, name):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), concatenated to its input."""
    bn = dict(axis=channel_axis(), epsilon=1.001e-5)
    y = layers.BatchNormalization(name=f"{name}_0_bn", **bn)(x)
    y = layers.Activation("relu", name=f"{name}_0_relu")(y)
    y = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_1_bn", **bn)(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(axis=channel_axis(), name=f"{name}_concat")([x, y])


def transition(x, reduction, *, name):
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


_DENSENET = dict(input_shape=(224, 224, 3), min_size=32, test_input_shape=(32, 32, 3))


@register_model(params=8_062_504, source="keras.applications.DenseNet121", **_DENSENET)
def densenet121(**kwargs):
    """DenseNet-121 (dense blocks 6-12-24-16)."""
    return _build_densenet((6, 12, 24, 16), **kwargs)


@register_model(params=14_307_880, source="keras.applications.DenseNet169", **_DENSENET)
def densenet169(**kwargs):
    """DenseNet-169 (dense blocks 6-12-32-32)."""
    return _build_densenet((6, 12, 32, 32), **kwargs)


@register_model(params=20_242_984, source="keras.applications.DenseNet201", **_DENSENET)
def densenet201(**kwargs):
    """DenseNet-201 (dense blocks 6-12-48-32)."""
    return _build_densenet((6, 12, 48, 32), **kwargs)
