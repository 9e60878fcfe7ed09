"""The lecture notes' baselines: a fully connected network and a small CNN.

`mlp` exists to show why CNNs were needed: at 224x224x3 its first layer alone
has 1.5 billion weights (5.645 GiB of float32), against 1.4 million for the
four-layer `simple_cnn` on the same images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.errors import InvalidArgumentError
from kcnn.layers import feature_pooling, image_input
from kcnn.registry import register_model

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import Model


@register_model(
    input_shape=(224, 224, 3), num_classes=10, params=1_515_392_110, min_size=1,
    source="lecture notes: 3x224x224 -> 10000 -> 1000 -> 100 -> 10", test_input_shape=(8, 8, 3),
)
def mlp(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
        classifier_activation: str | Callable | None, name: str,
        hidden: Sequence[int] = (10000, 1000, 100)) -> Model:
    """Fully connected baseline: flatten, then Dense 10000, 1000, 100, classes."""
    if pooling is not None:
        raise InvalidArgumentError(
            f"mlp has no feature map to pool; leave pooling=None. Received: pooling={pooling!r}"
        )
    inputs = image_input(input_shape)
    x = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden, start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
    if include_top:
        x = layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name)


@register_model(
    input_shape=(224, 224, 3), num_classes=10, params=1_410_858, min_size=37,
    source="lecture notes: 4 convs (8, 24, 32, 48; kernels 5, 5, 3, 3; stride 2) + 200 + 10",
    test_input_shape=(40, 40, 3),
)
def simple_cnn(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
               classifier_activation: str | Callable | None, name: str,
               filters: Sequence[int] = (8, 24, 32, 48), kernels: Sequence[int] = (5, 5, 3, 3),
               hidden: int = 200) -> Model:
    """The notes' small CNN: four stride-2 convolutions, Dense 200, Dense classes."""
    inputs = image_input(input_shape)
    x = inputs
    for i, (width, size) in enumerate(zip(filters, kernels), start=1):
        # Strided convolutions and no pooling, as in the notes.
        x = layers.Conv2D(width, size, strides=2, activation="relu", name=f"conv{i}")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(hidden, activation="relu", name="fc1")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)
