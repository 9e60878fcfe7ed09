"""VGG (Simonyan & Zisserman, 2014), in keras.applications' layout.

Layer names and order (`block1_conv1` ... `fc1`, `fc2`, `predictions`) match
`keras.applications.VGG16/VGG19`, so the official Keras ImageNet files load.
The `_bn` variants put BatchNormalization after every convolution, as
torchvision's `vgg*_bn` do (their counts exclude the BN running statistics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import channel_axis, flatten_head, image_input
from kcnn.registry import TORCH_COUNT, register_model
from kcnn.weights import CAFFE, CheckpointLayout, keras_applications_source, torchvision_source

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import Model

WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_BLOCK = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


def torchvision_checkpoint(depth: int, batch_norm: bool) -> CheckpointLayout:
    """torchvision numbers VGG's `features` in order (conv, [BN], ReLU per
    convolution, a max pool per block); kcnn names them as keras.applications."""
    names, index = {}, 0
    for block, convs in enumerate(CONVS_PER_BLOCK[depth], start=1):
        for conv in range(1, convs + 1):
            names[f"features.{index}"] = f"block{block}_conv{conv}"
            if batch_norm:
                names[f"features.{index + 1}"] = f"block{block}_conv{conv}_bn"
            index += 3 if batch_norm else 2
        index += 1
    names.update({"classifier.0": "fc1", "classifier.3": "fc2", "classifier.6": "predictions"})
    return CheckpointLayout(f"torchvision_vgg{depth}{'_bn' if batch_norm else ''}", lambda key: names.get(key, key))


def _torchvision(depth, batch_norm, file_name, top1, top5, name="imagenet"):
    arch = f"vgg{depth}{'_bn' if batch_norm else ''}"
    return torchvision_source(arch, file_name, top1, top5, name=name, layout=torchvision_checkpoint(depth, batch_norm))


def _build_vgg(depth, *, batch_norm, num_classes, input_shape, include_top, pooling,
               classifier_activation, name, dropout):
    inputs = image_input(input_shape)
    x = inputs
    for block, (width, convs) in enumerate(zip(WIDTHS, CONVS_PER_BLOCK[depth]), start=1):
        for i in range(1, convs + 1):
            conv_name = f"block{block}_conv{i}"
            if batch_norm:
                x = layers.Conv2D(width, 3, padding="same", name=conv_name)(x)
                x = layers.BatchNormalization(axis=channel_axis(), epsilon=1e-5, name=f"{conv_name}_bn")(x)
                x = layers.Activation("relu", name=f"{conv_name}_relu")(x)
            else:
                x = layers.Conv2D(width, 3, padding="same", activation="relu", name=conv_name)(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    x = flatten_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                     classifier_activation=classifier_activation, hidden=(4096, 4096), dropout=dropout)
    return keras.Model(inputs, x, name=name)


_VGG = dict(input_shape=(224, 224, 3), min_size=32, test_input_shape=(32, 32, 3))


@register_model(params=132_863_336, source="torchvision vgg11", checkpoint=torchvision_checkpoint(11, False), **_VGG,
                pretrained=[_torchvision(11, False, "vgg11-8a719046.pth", 69.020, 88.628)])
def vgg11(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-11 (configuration A)."""
    return _build_vgg(11, batch_norm=False, dropout=dropout, **kwargs)


@register_model(params=133_047_848, source="torchvision vgg13", checkpoint=torchvision_checkpoint(13, False), **_VGG,
                pretrained=[_torchvision(13, False, "vgg13-19584684.pth", 69.928, 89.246)])
def vgg13(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-13 (configuration B)."""
    return _build_vgg(13, batch_norm=False, dropout=dropout, **kwargs)


@register_model(params=138_357_544, source="keras.applications.VGG16", checkpoint=torchvision_checkpoint(16, False),
                pretrained=[keras_applications_source("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "64373286793e3c8b2b4e3219cbf3544b", 71.3, **CAFFE),
                            _torchvision(16, False, "vgg16-397923af.pth", 71.592, 90.382, name="torchvision")],
                **_VGG)
def vgg16(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-16 (configuration D), keras.applications layout."""
    return _build_vgg(16, batch_norm=False, dropout=dropout, **kwargs)


@register_model(params=143_667_240, source="keras.applications.VGG19", checkpoint=torchvision_checkpoint(19, False),
                pretrained=[keras_applications_source("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "cbe5617147190e668d6c5d5026f83318", 71.3, **CAFFE),
                            _torchvision(19, False, "vgg19-dcbb9e9d.pth", 72.376, 90.876, name="torchvision")],
                **_VGG)
def vgg19(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-19 (configuration E), keras.applications layout."""
    return _build_vgg(19, batch_norm=False, dropout=dropout, **kwargs)


@register_model(params=132_868_840, counted=TORCH_COUNT, source="torchvision vgg11_bn",
                checkpoint=torchvision_checkpoint(11, True), **_VGG,
                pretrained=[_torchvision(11, True, "vgg11_bn-6002323d.pth", 70.370, 89.810)])
def vgg11_bn(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-11 with batch normalisation."""
    return _build_vgg(11, batch_norm=True, dropout=dropout, **kwargs)


@register_model(params=133_053_736, counted=TORCH_COUNT, source="torchvision vgg13_bn",
                checkpoint=torchvision_checkpoint(13, True), **_VGG,
                pretrained=[_torchvision(13, True, "vgg13_bn-abd245e5.pth", 71.586, 90.374)])
def vgg13_bn(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-13 with batch normalisation."""
    return _build_vgg(13, batch_norm=True, dropout=dropout, **kwargs)


@register_model(params=138_365_992, counted=TORCH_COUNT, source="torchvision vgg16_bn",
                checkpoint=torchvision_checkpoint(16, True), **_VGG,
                pretrained=[_torchvision(16, True, "vgg16_bn-6c64b313.pth", 73.360, 91.516)])
def vgg16_bn(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-16 with batch normalisation."""
    return _build_vgg(16, batch_norm=True, dropout=dropout, **kwargs)


@register_model(params=143_678_248, counted=TORCH_COUNT, source="torchvision vgg19_bn",
                checkpoint=torchvision_checkpoint(19, True), **_VGG,
                pretrained=[_torchvision(19, True, "vgg19_bn-c79401a0.pth", 74.218, 91.842)])
def vgg19_bn(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """VGG-19 with batch normalisation."""
    return _build_vgg(19, batch_norm=True, dropout=dropout, **kwargs)
