"""AlexNet (Krizhevsky et al., 2012) and ZFNet (Zeiler & Fergus, 2013).

AlexNet follows the lecture notes' table: 227x227 input, one tower (the
paper split it over two GPUs), no local response normalisation:
62,378,344 parameters. ZFNet changes the first layers to 7x7/2 and 5x5/2;
its padding gives the 110 -> 55 -> 26 -> 13 -> 6 maps of the paper.
Variants are data: each row is (filters, kernel, stride, padding, pool after).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import feature_pooling, flatten_head, image_input, torch_conv
from kcnn.registry import register_model
from kcnn.weights import TORCHVISION, torchvision_source

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import Model

# (filters, kernel, stride, padding before the conv, max pool 3/2 after: None, "valid", "same")
ALEXNET_CONVS = [
    (96, 11, 4, 0, "valid"),
    (256, 5, 1, 2, "valid"),
    (384, 3, 1, 1, None),
    (384, 3, 1, 1, None),
    (256, 3, 1, 1, "valid"),
]
ZFNET_CONVS = [
    (96, 7, 2, 1, "same"),
    (256, 5, 2, 0, "same"),
    (384, 3, 1, 1, None),
    (384, 3, 1, 1, None),
    (256, 3, 1, 1, "valid"),
]


def _build_alexnet(convs, *, num_classes, input_shape, include_top, pooling, classifier_activation,
                   name, dropout):
    inputs = image_input(input_shape)
    x = inputs
    for i, (filters, kernel, stride, pad, pool) in enumerate(convs, start=1):
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"conv{i}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=stride, activation="relu", name=f"conv{i}")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, padding=pool, name=f"pool{i}")(x)
    x = flatten_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                     classifier_activation=classifier_activation, hidden=(4096, 4096),
                     dropout=dropout, names=("fc6", "fc7"))
    return keras.Model(inputs, x, name=name)


@register_model(
    input_shape=(227, 227, 3), params=62_378_344, min_size=67,
    source="lecture notes' AlexNet table (one tower, no LRN)", test_input_shape=(67, 67, 3),
)
def alexnet(*, dropout: float = 0.5, **kwargs: Any) -> Model:
    """AlexNet, one tower without LRN: 5 convs, Dense 4096, 4096, classes."""
    return _build_alexnet(ALEXNET_CONVS, dropout=dropout, **kwargs)


@register_model(
    # 7*7*3*96+96 + 5*5*96*256+256 + 885,120 + 1,327,488 + 884,992 (convs 3-5)
    # + 9216*4096+4096 + 4096*4096+4096 + 4096*1000+1000 = 62,357,608
    input_shape=(224, 224, 3), params=62_357_608, min_size=53,
    source="derived from Zeiler & Fergus 2013, Fig. 3", test_input_shape=(64, 64, 3),
)
def zfnet(*, dropout: float = 0.5, **kwargs: Any) -> Model:
    """ZFNet: AlexNet with 7x7/2 and 5x5/2 first layers (Zeiler & Fergus)."""
    return _build_alexnet(ZFNET_CONVS, dropout=dropout, **kwargs)


@register_model(
    # min_size: Keras' adaptive pooling cannot enlarge maps on TensorFlow, so the last map must be 6x6 or more.
    input_shape=(224, 224, 3), params=61_100_840, min_size=223,
    source="torchvision alexnet", test_input_shape=(224, 224, 3), checkpoint=TORCHVISION,
    pretrained=[torchvision_source("alexnet_torchvision", "alexnet-owt-7be5be79.pth", 56.522, 79.066)],
)
def alexnet_torchvision(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
                        classifier_activation: str | Callable | None, name: str,
                        dropout: float = 0.5) -> Model:
    """AlexNet in torchvision's layout (64-192-384-256-256 filters), so that
    torchvision checkpoints load: layer names are its module paths."""
    inputs = image_input(input_shape)
    x = inputs
    # torchvision's `features` index -> (filters, kernel, stride, padding, max pool 3/2 after at index + 2)
    for index, (filters, kernel, stride, pad, pool) in {0: (64, 11, 4, 2, True), 3: (192, 5, 1, 2, True),
                                                        6: (384, 3, 1, 1, False), 8: (256, 3, 1, 1, False),
                                                        10: (256, 3, 1, 1, True)}.items():
        x = torch_conv(x, filters, kernel, strides=stride, padding=pad, name=f"features_{index}")
        x = layers.ReLU(name=f"features_{index + 1}")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, name=f"features_{index + 2}")(x)
    if not include_top:
        return keras.Model(inputs, feature_pooling(x, pooling), name=name)
    # torchvision pools to 6x6 whatever the input size, so the classifier's shapes never change.
    x = layers.AdaptiveAveragePooling2D(6, name="avgpool")(x)
    x = layers.Flatten(name="flatten")(x)
    for index, units in ((1, 4096), (4, 4096)):
        x = layers.Dropout(dropout, name=f"classifier_{index - 1}")(x)
        x = layers.Dense(units, activation="relu", name=f"classifier_{index}")(x)
    x = layers.Dense(num_classes, activation=classifier_activation, name="classifier_6")(x)
    return keras.Model(inputs, x, name=name)
