"""The fast depthwise convolution used on JAX's CPU computes what Keras' does."""

import keras
import numpy as np
import pytest

import kcnn
from kcnn.backends import jax_cpu

from helpers import assert_close
from helpers import deterministic_weights


# Large maps take the shifted sum, small ones (height * width <= 4 * kernel area) the matrix product.
@pytest.mark.parametrize("size, kernel, strides, padding", [
    (7, 3, 1, "same"), (8, 3, 2, "same"), (9, 3, 2, "valid"), (6, 3, 1, "valid"),  # shifted sums
    (4, 5, 1, "same"), (9, 5, 2, "same"), (3, 3, 2, "same"), (5, 3, 1, "valid"),  # matrix products
])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_fast_depthwise_matches_keras(size, kernel, strides, padding, data_format):
    reference = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding=padding, activation="relu",
                                             data_format=data_format)
    shape = (2, size, size + 1, 6) if data_format == "channels_last" else (2, 6, size, size + 1)
    images = np.random.default_rng(0).normal(size=shape).astype("float32")
    fast = jax_cpu.FastDepthwiseConv2D.from_config(reference.get_config())
    fast.build(images.shape)
    reference.build(images.shape)
    fast.set_weights([np.random.default_rng(1).normal(size=w.shape).astype("float32") for w in reference.weights])
    reference.set_weights(fast.get_weights())
    expected = keras.ops.convert_to_numpy(reference(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fast(images)), expected, rtol=1e-5, atol=1e-5)


def test_a_fast_copy_of_efficientnet_gives_the_same_outputs_and_weights_go_back():
    model = kcnn.build("efficientnet_lite0", num_classes=4, input_shape=(40, 40, 3))
    deterministic_weights(model)  # Keras' default initialisation makes its outputs vary by 1e-11
    fast = jax_cpu.with_fast_depthwise(model)
    if jax_cpu.needed():
        assert any(isinstance(layer, jax_cpu.FastDepthwiseConv2D) for layer in fast.layers)
    images = np.random.default_rng(0).uniform(0, 1, size=(3, 40, 40, 3)).astype("float32")
    assert_close(keras.ops.convert_to_numpy(fast(images)), keras.ops.convert_to_numpy(model(images)), rtol=1e-5)
    fast.get_layer("fc").set_weights([w * 0 for w in fast.get_layer("fc").get_weights()])
    jax_cpu.copy_weights(fast, model)
    assert not np.any(keras.ops.convert_to_numpy(model(images)))
