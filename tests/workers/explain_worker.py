"""Grad-CAM heatmaps and input gradients of a fixed small run-style model on this process's backend, for
tests/test_explain.py to compare with JAX's; and, for each architecture named, Grad-CAM of the registered
model at its smallest input (random weights, one image), to show that every family is explained.

    KERAS_BACKEND=torch python tests/workers/explain_worker.py OUT_NPZ [ARCH ...]

OUT_NPZ holds `heatmaps`, `gradients`, `logits` of the fixed model and, per ARCH, `ARCH` (its heatmap) or
`ARCH:error` (the error's text).
"""

import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: helpers
from helpers import deterministic_weights  # noqa: E402  (the test builds the same model in its process)

SHAPE = (24, 32, 3)  # not square: a height and width swapped somewhere would show


def fixed_model():
    """What `kcnn train` saves, in small: raw 0-255 pixels, a Normalization layer, then a nested backbone
    (convolutions, batch norm, a depthwise convolution, a residual Add) that ends in a softmax layer after its
    Dense, with the same weights on every backend (helpers.deterministic_weights)."""
    from kcnn.backends.initializers import initialize_the_rest, initializers_deferred

    with initializers_deferred():  # on JAX, no compiled random draw (0.5 s each) for weights set just below
        model = _fixed_model()
    deterministic_weights(model)
    initialize_the_rest(model)  # (none left)
    return model


def _fixed_model():
    layers = keras.layers
    inputs = keras.Input(SHAPE, name="backbone_input")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    y = layers.DepthwiseConv2D(3, padding="same", name="block_dw")(x)
    y = layers.Conv2D(8, 1, activation="relu", name="block_pw")(y)
    x = layers.Add(name="block_add")([x, y])
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="top_conv")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Activation("softmax", name="predictions")(layers.Dense(5, name="logits")(x))
    backbone = keras.Model(inputs, x, name="backbone")
    raw = keras.Input(SHAPE, name="image")
    normalized = layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3600.0, 3000.0, 3300.0],
                                      name="normalize")(raw)
    return keras.Model(raw, backbone(normalized), name="run_style")


def images(count=3):
    return np.random.default_rng(0).uniform(0, 255, (count, *SHAPE)).astype("float32")


def architecture_heatmap(name):
    """Grad-CAM of `kcnn.build(name)` at its smallest input, for one image of random pixels."""
    import kcnn
    import kcnn.inspect.explain

    info = kcnn.get_model_info(name)
    size = max(info.min_input_size, 32)
    model = kcnn.build(name, input_shape=(size, size, info.default_input_shape[-1]), num_classes=10)
    deterministic_weights(model)
    pixels = np.random.default_rng(1).uniform(0, 255, (1, size, size, info.default_input_shape[-1]))
    return kcnn.inspect.explain.grad_cam(model, pixels.astype("float32"))


def main(path, names):
    import kcnn.inspect.explain

    model = fixed_model()
    results = {"heatmaps": kcnn.inspect.explain.grad_cam(model, images()),
               "gradients": kcnn.inspect.explain.input_gradients(model, images()),
               "logits": keras.ops.convert_to_numpy(model(images(), training=False))}
    for name in names:
        try:
            results[name] = architecture_heatmap(name)
        except Exception as error:  # reported to the test, which names the architecture
            results[f"{name}:error"] = np.array(f"{type(error).__name__}: {error}")
    np.savez(path, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
