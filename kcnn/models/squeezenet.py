"""SqueezeNet 1.0 and 1.1 (Iandola et al., 2016), in torchvision's layout.

Layer names are torchvision's module paths with dots as underscores
(`features.3.expand3x3` -> `features_3_expand3x3`). Max pooling uses
torchvision's `ceil_mode=True`. The head is torchvision's: dropout, a 1x1
convolution to the classes, ReLU, global average pooling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import channel_axis, feature_pooling, image_input, max_pool_ceil
from kcnn.registry import register_model
from kcnn.weights import TORCHVISION, torchvision_source

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor, Model

# torchvision's `features` index: a conv (filters, kernel, stride), "pool", or a
# Fire module (squeeze, expand 1x1, expand 3x3). Index 1 is the stem's ReLU.
FEATURES = {
    "1_0": {0: ("conv", 96, 7, 2), 2: "pool", 3: (16, 64, 64), 4: (16, 64, 64), 5: (32, 128, 128), 6: "pool",
            7: (32, 128, 128), 8: (48, 192, 192), 9: (48, 192, 192), 10: (64, 256, 256), 11: "pool",
            12: (64, 256, 256)},
    "1_1": {0: ("conv", 64, 3, 2), 2: "pool", 3: (16, 64, 64), 4: (16, 64, 64), 5: "pool", 6: (32, 128, 128),
            7: (32, 128, 128), 8: "pool", 9: (48, 192, 192), 10: (48, 192, 192), 11: (64, 256, 256),
            12: (64, 256, 256)},
}


def fire(x: KerasTensor, squeeze: int, expand1x1: int, expand3x3: int, *, name: str) -> KerasTensor:
    """Fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""
    x = layers.Conv2D(squeeze, 1, activation="relu", name=f"{name}_squeeze")(x)
    left = layers.Conv2D(expand1x1, 1, activation="relu", name=f"{name}_expand1x1")(x)
    right = layers.Conv2D(expand3x3, 3, padding="same", activation="relu", name=f"{name}_expand3x3")(x)
    return layers.Concatenate(axis=channel_axis(), name=f"{name}_concat")([left, right])


def _build_squeezenet(version, *, num_classes, input_shape, include_top, pooling, classifier_activation,
                      name, dropout):
    inputs = image_input(input_shape)
    x = inputs
    for index, spec in FEATURES[version].items():
        if spec == "pool":
            x = max_pool_ceil(x, 3, 2, name=f"features_{index}")
        elif spec[0] == "conv":
            _, filters, kernel, stride = spec
            x = layers.Conv2D(filters, kernel, strides=stride, activation="relu", name=f"features_{index}")(x)
        else:
            x = fire(x, *spec, name=f"features_{index}")
    if include_top:
        x = layers.Dropout(dropout, name="classifier_0")(x)
        x = layers.Conv2D(num_classes, 1, activation="relu", name="classifier_1")(x)
        x = layers.GlobalAveragePooling2D(name="classifier_3")(x)
        if classifier_activation is not None:
            x = layers.Activation(classifier_activation, name="predictions")(x)
    else:
        x = feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)


@register_model(input_shape=(224, 224, 3), params=1_248_424, min_size=21,
                source="torchvision squeezenet1_0", test_input_shape=(64, 64, 3), checkpoint=TORCHVISION,
                pretrained=[torchvision_source("squeezenet1_0", "squeezenet1_0-b66bff10.pth", 58.092, 80.420)])
def squeezenet1_0(*, dropout: float = 0.5, **kwargs: Any) -> Model:
    """SqueezeNet 1.0: 7x7/2 stem, eight Fire modules, conv classifier."""
    return _build_squeezenet("1_0", dropout=dropout, **kwargs)


@register_model(input_shape=(224, 224, 3), params=1_235_496, min_size=17,
                source="torchvision squeezenet1_1", test_input_shape=(64, 64, 3), checkpoint=TORCHVISION,
                pretrained=[torchvision_source("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth", 58.178, 80.624)])
def squeezenet1_1(*, dropout: float = 0.5, **kwargs: Any) -> Model:
    """SqueezeNet 1.1: 3x3/2 stem, earlier pooling, 2.4x fewer MACs than 1.0."""
    return _build_squeezenet("1_1", dropout=dropout, **kwargs)
