"""LeNet-5 (LeCun et al., 1998) as the lecture notes train it on MNIST.

Modern defaults (ReLU, max pooling; `activation="tanh"`, `pool="avg"` give
the 1998 flavour) and full connections in C3. 28x28 MNIST digits are
zero-padded by 2 to the 32x32 the architecture was designed for, which keeps
the parameter count at 61,706.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.layers import feature_pooling, image_input
from kcnn.registry import register_model

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import Model


@register_model(
    input_shape=(32, 32, 1), num_classes=10, params=61_706, min_size=12,
    source="LeCun et al. 1998; lecture notes", test_input_shape=(28, 28, 1),
)
def lenet5(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
           classifier_activation: str | Callable | None, name: str, activation: str = "relu",
           pool: str = "max") -> Model:
    """LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, Dense 120, 84, classes."""
    pooling_layer = {"max": layers.MaxPooling2D, "avg": layers.AveragePooling2D}[pool]
    inputs = image_input(input_shape)
    x = inputs
    size = min(input_shape[:2] if keras.config.image_data_format() == "channels_last" else input_shape[1:])
    if size < 32:  # MNIST's 28x28: pad to 32x32 as in the paper
        x = layers.ZeroPadding2D(2, name="pad")(x)
    x = layers.Conv2D(6, 5, activation=activation, name="conv1")(x)
    x = pooling_layer(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation=activation, name="conv2")(x)
    x = pooling_layer(2, name="pool2")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(120, activation=activation, name="fc1")(x)
        x = layers.Dense(84, activation=activation, name="fc2")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)
