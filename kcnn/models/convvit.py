"""ConvViT: a convolutional stem followed by a transformer encoder, in the
spirit of CvT (Wu et al., 2021) and the ViT hybrids (Dosovitskiy et al., 2020).

A stack of 3x3 conv-BN-ReLU layers turns the image into a grid of feature
vectors; a depthwise 3x3 convolution adds position information (CPVT's
conditional position encoding, so no fixed-length position table ties the
model to one input size); the grid becomes a sequence of tokens for
pre-norm transformer blocks (multi-head self-attention, GELU MLP); the
tokens are averaged into the classifier. Everything is a built-in Keras
layer. Two sizes: `convvit_cifar` for 32x32 and `convvit_small` for 224x224.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import conv_bn_act, image_input
from kcnn.registry import register_model

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor, Model

CONFIGS = {
    # stem: (filters, stride) per conv; the last filters are the token width.
    "convvit_cifar": dict(stem=((64, 1), (128, 2), (192, 2)), depth=6, heads=3, mlp_ratio=2),
    "convvit_small": dict(stem=((32, 2), (64, 2), (128, 2), (256, 2)), depth=8, heads=4, mlp_ratio=3),
}


def transformer_block(x: KerasTensor, *, heads: int, mlp_ratio: int, dropout: float, name: str) -> KerasTensor:
    """Pre-norm encoder block: x + MHA(LN(x)), then x + MLP(LN(x))."""
    width = x.shape[-1]
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
    y = layers.MultiHeadAttention(heads, width // heads, dropout=dropout, name=f"{name}_attn")(y, y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
    y = layers.Dense(width * mlp_ratio, activation="gelu", name=f"{name}_mlp_fc1")(y)
    y = layers.Dense(width, name=f"{name}_mlp_fc2")(y)
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_mlp_dropout")(y)
    return layers.Add(name=f"{name}_add2")([x, y])


def _build_convvit(config, *, num_classes, input_shape, include_top, pooling, classifier_activation, name,
                   dropout):
    inputs = image_input(input_shape)
    x = inputs
    for i, (filters, strides) in enumerate(config["stem"], start=1):
        x = conv_bn_act(x, filters, 3, strides=strides, name=f"stem{i}")
    position = layers.DepthwiseConv2D(3, padding="same", name="pos_conv")(x)
    x = layers.Add(name="pos_add")([x, position])
    if keras.config.image_data_format() == "channels_first":
        x = layers.Permute((2, 3, 1), name="to_channels_last")(x)
    height, width, channels = x.shape[1:]
    x = layers.Reshape((height * width, channels), name="tokens")(x)
    for i in range(config["depth"]):
        x = transformer_block(x, heads=config["heads"], mlp_ratio=config["mlp_ratio"], dropout=dropout,
                              name=f"block{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    if include_top:
        x = layers.GlobalAveragePooling1D(data_format="channels_last", name="avg_pool")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling1D(data_format="channels_last", name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling1D(data_format="channels_last", name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


# Reference counts are kcnn's own (no published model to match): fixed here so
# that any change to the architecture is deliberate.
@register_model(input_shape=(32, 32, 3), num_classes=10, params=2_084_554, min_size=4,
                source="kcnn design (conv stem to 8x8 tokens, 6 blocks of width 192)")
def convvit_cifar(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """Conv stem + 6-block transformer (width 192, 3 heads) for 32x32 images."""
    return _build_convvit(CONFIGS["convvit_cifar"], dropout=dropout, **kwargs)


@register_model(input_shape=(224, 224, 3), params=5_917_384, min_size=16, test_input_shape=(64, 64, 3),
                source="kcnn design (conv stem to 14x14 tokens, 8 blocks of width 256)")
def convvit_small(*, dropout: float = 0.0, **kwargs: Any) -> Model:
    """Conv stem + 8-block transformer (width 256, 4 heads) for 224x224 images."""
    return _build_convvit(CONFIGS["convvit_small"], dropout=dropout, **kwargs)
