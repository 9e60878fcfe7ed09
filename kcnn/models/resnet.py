"""ResNet (He et al., 2015) for ImageNet.

Two layouts, because two families of published weights exist:

- `resnet18`, `resnet34`, `resnet50_torchvision`, `resnet101_torchvision`,
  `resnet152_torchvision`: torchvision's layout (convolutions without bias,
  stride on the 3x3: "ResNet v1.5"). Layer names are torchvision's module
  paths with dots as underscores (`layer2.0.downsample.0` ->
  `layer2_0_downsample_0`), so a torchvision checkpoint maps by name.
- `resnet50`, `resnet101`, `resnet152`: keras.applications' layout
  (bottleneck blocks, convolutions with bias, stride on the first 1x1),
  with its layer names and creation order, so the official Keras ImageNet
  files load unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import channel_axis, classifier_head, image_input, torch_conv
from kcnn.registry import TORCH_COUNT, register_model
from kcnn.weights import CAFFE, TORCHVISION, keras_applications_source, torchvision_source

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor, Model

# ---------------------------------------------------------------------------
# torchvision layout: basic blocks


def basic_block(x: KerasTensor, filters: int, *, strides: int, name: str) -> KerasTensor:
    """torchvision's BasicBlock: 3x3 (strided) -> 3x3, projection when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[channel_axis()] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_downsample_0")(x)
        shortcut = layers.BatchNormalization(axis=channel_axis(), epsilon=1e-5, name=f"{name}_downsample_1")(shortcut)
    x = torch_conv(x, filters, 3, strides=strides, padding=1, use_bias=False, name=f"{name}_conv1")
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1e-5, name=f"{name}_bn1")(x)
    x = layers.Activation("relu", name=f"{name}_relu1")(x)
    x = torch_conv(x, filters, 3, padding=1, use_bias=False, name=f"{name}_conv2")
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1e-5, name=f"{name}_bn2")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_relu2")(x)


def torchvision_bottleneck(x: KerasTensor, filters: int, *, strides: int, name: str) -> KerasTensor:
    """torchvision's Bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (4x filters), projection when the shape changes."""
    bn = dict(axis=channel_axis(), epsilon=1e-5)
    shortcut = x
    if strides != 1 or x.shape[channel_axis()] != 4 * filters:
        shortcut = layers.Conv2D(4 * filters, 1, strides=strides, use_bias=False, name=f"{name}_downsample_0")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_downsample_1", **bn)(shortcut)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv1")(x)
    x = layers.BatchNormalization(name=f"{name}_bn1", **bn)(x)
    x = layers.Activation("relu", name=f"{name}_relu1")(x)
    x = torch_conv(x, filters, 3, strides=strides, padding=1, use_bias=False, name=f"{name}_conv2")
    x = layers.BatchNormalization(name=f"{name}_bn2", **bn)(x)
    x = layers.Activation("relu", name=f"{name}_relu2")(x)
    x = layers.Conv2D(4 * filters, 1, use_bias=False, name=f"{name}_conv3")(x)
    x = layers.BatchNormalization(name=f"{name}_bn3", **bn)(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_relu3")(x)


def _build_torchvision_resnet(blocks_per_stage, *, num_classes, input_shape, include_top, pooling,
                              classifier_activation, name, block=basic_block):
    inputs = image_input(input_shape)
    x = torch_conv(inputs, 64, 7, strides=2, padding=3, use_bias=False, name="conv1")
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1e-5, name="bn1")(x)
    x = layers.Activation("relu", name="relu")(x)
    # Zero padding equals torch's -inf padding after a ReLU.
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage), start=1):
        for index in range(blocks):
            strides = 2 if stage > 1 and index == 0 else 1
            x = block(x, filters, strides=strides, name=f"layer{stage}_{index}")
    x = classifier_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                        classifier_activation=classifier_activation, pool_name="avgpool", dense_name="fc")
    return keras.Model(inputs, x, name=name)


# ---------------------------------------------------------------------------
# keras.applications layout: bottleneck blocks (names and order are a contract)


def bottleneck_block(x: KerasTensor, filters: int, *, strides: int = 1, conv_shortcut: bool = True,
                     name: str) -> KerasTensor:
    """keras.applications' `residual_block_v1`: 1x1 (strided) -> 3x3 -> 1x1 (4x filters)."""
    bn = dict(axis=channel_axis(), epsilon=1.001e-5)
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=strides, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_0_bn", **bn)(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=strides, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_1_bn", **bn)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_2_bn", **bn)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_3_bn", **bn)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _build_keras_resnet(blocks_per_stage, *, num_classes, input_shape, include_top, pooling,
                        classifier_activation, name):
    inputs = image_input(input_shape)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(axis=channel_axis(), epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage), start=2):
        for block in range(1, blocks + 1):
            x = bottleneck_block(
                x, filters, strides=2 if stage > 2 and block == 1 else 1,
                conv_shortcut=block == 1, name=f"conv{stage}_block{block}",
            )
    x = classifier_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                        classifier_activation=classifier_activation)
    return keras.Model(inputs, x, name=name)


_RESNET = dict(input_shape=(224, 224, 3), min_size=32, test_input_shape=(32, 32, 3))


@register_model(params=11_689_512, counted=TORCH_COUNT, source="torchvision resnet18", checkpoint=TORCHVISION,
                **_RESNET, pretrained=[torchvision_source("resnet18", "resnet18-f37072fd.pth", 69.758, 89.078)])
def resnet18(**kwargs: Any) -> Model:
    """ResNet-18, torchvision layout (basic blocks 2-2-2-2)."""
    return _build_torchvision_resnet((2, 2, 2, 2), **kwargs)


@register_model(params=21_797_672, counted=TORCH_COUNT, source="torchvision resnet34", checkpoint=TORCHVISION,
                **_RESNET, pretrained=[torchvision_source("resnet34", "resnet34-b627a593.pth", 73.314, 91.420)])
def resnet34(**kwargs: Any) -> Model:
    """ResNet-34, torchvision layout (basic blocks 3-4-6-3)."""
    return _build_torchvision_resnet((3, 4, 6, 3), **kwargs)


@register_model(params=25_636_712, source="keras.applications.ResNet50", **_RESNET,
                pretrained=[keras_applications_source("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "2cb95161c43110f7111970584f804107", 74.9, **CAFFE)])
def resnet50(**kwargs: Any) -> Model:
    """ResNet-50, keras.applications layout (bottlenecks 3-4-6-3)."""
    return _build_keras_resnet((3, 4, 6, 3), **kwargs)


@register_model(params=44_707_176, source="keras.applications.ResNet101", **_RESNET,
                pretrained=[keras_applications_source("resnet101", "resnet101_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "f1aeb4b969a6efcfb50fad2f0c20cfc5", 76.4, **CAFFE)])
def resnet101(**kwargs: Any) -> Model:
    """ResNet-101, keras.applications layout (bottlenecks 3-4-23-3)."""
    return _build_keras_resnet((3, 4, 23, 3), **kwargs)


@register_model(params=60_419_944, source="keras.applications.ResNet152", **_RESNET,
                pretrained=[keras_applications_source("resnet152", "resnet152_weights_tf_dim_ordering_tf_kernels.h5",
                                                      "100835be76be38e30d865e96f2aaae62", 76.6, **CAFFE)])
def resnet152(**kwargs: Any) -> Model:
    """ResNet-152, keras.applications layout (bottlenecks 3-8-36-3)."""
    return _build_keras_resnet((3, 8, 36, 3), **kwargs)


def _torchvision_weights(arch, v2, v1):
    """torchvision's two recipes: IMAGENET1K_V2 (its DEFAULT, kcnn's "imagenet": resize 232) and the
    original IMAGENET1K_V1 ("imagenet1k_v1"). Each is (file name, top-1, top-5)."""
    return [torchvision_source(arch, *v2, resize_size=232),
            torchvision_source(arch, *v1, name="imagenet1k_v1")]


@register_model(params=25_557_032, counted=TORCH_COUNT, source="torchvision resnet50", checkpoint=TORCHVISION,
                **_RESNET, pretrained=_torchvision_weights("resnet50_torchvision",
                                                           ("resnet50-11ad3fa6.pth", 80.858, 95.434),
                                                           ("resnet50-0676ba61.pth", 76.130, 92.862)))
def resnet50_torchvision(**kwargs: Any) -> Model:
    """ResNet-50, torchvision layout (bottlenecks 3-4-6-3, stride on the 3x3), for torchvision's weights."""
    return _build_torchvision_resnet((3, 4, 6, 3), block=torchvision_bottleneck, **kwargs)


@register_model(params=44_549_160, counted=TORCH_COUNT, source="torchvision resnet101", checkpoint=TORCHVISION,
                **_RESNET, pretrained=_torchvision_weights("resnet101_torchvision",
                                                           ("resnet101-cd907fc2.pth", 81.886, 95.780),
                                                           ("resnet101-63fe2227.pth", 77.374, 93.546)))
def resnet101_torchvision(**kwargs: Any) -> Model:
    """ResNet-101, torchvision layout (bottlenecks 3-4-23-3, stride on the 3x3), for torchvision's weights."""
    return _build_torchvision_resnet((3, 4, 23, 3), block=torchvision_bottleneck, **kwargs)


@register_model(params=60_192_808, counted=TORCH_COUNT, source="torchvision resnet152", checkpoint=TORCHVISION,
                **_RESNET, pretrained=_torchvision_weights("resnet152_torchvision",
                                                           ("resnet152-f82ba261.pth", 82.284, 96.002),
                                                           ("resnet152-394f9c45.pth", 78.312, 94.046)))
def resnet152_torchvision(**kwargs: Any) -> Model:
    """ResNet-152, torchvision layout (bottlenecks 3-8-36-3, stride on the 3x3), for torchvision's weights."""
    return _build_torchvision_resnet((3, 8, 36, 3), block=torchvision_bottleneck, **kwargs)
