"""The architectures keras.applications also has: copy its weights into the
kcnn model by layer name and order, and get identical outputs. This is what
lets the official Keras ImageNet files load into kcnn (issue 3)."""

import keras
import numpy as np
import pytest

import kcnn

from helpers import assert_close
from helpers import deterministic_weights

KERAS_APPLICATIONS = {
    "vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "resnet101": "ResNet101",
    "resnet152": "ResNet152", "densenet121": "DenseNet121", "densenet169": "DenseNet169",
    "densenet201": "DenseNet201", "mobilenet": "MobileNet", "mobilenet_v2": "MobileNetV2",
}
INPUT_SHAPE = (64, 64, 3)  # small, and odd stride-2 paddings are exercised on the way down


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KERAS_APPLICATIONS))
def test_keras_applications_weights_load_by_name_and_order(name):
    application = getattr(keras.applications, KERAS_APPLICATIONS[name])(
        weights=None, input_shape=INPUT_SHAPE, classifier_activation=None)
    model = kcnn.build(name, input_shape=INPUT_SHAPE)

    def weighted(m):
        return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in m.layers if layer.weights]

    # Same layers with weights, same names, same order, same shapes: what the
    # official .h5 files (loaded by order) and `by_name` loading rely on.
    assert weighted(model) == weighted(application)
    # Keras' default initialisation would leave batch norm the identity and the activations vanishing: biases,
    # betas, moving statistics and ReLU6's clipping would never be compared
    deterministic_weights(application)
    for layer in application.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (2,) + INPUT_SHAPE).astype("float32") / 127.5 - 1
    expected = keras.ops.convert_to_numpy(application(images, training=False))
    actual = keras.ops.convert_to_numpy(model(images, training=False))
    assert_close(actual, expected, rtol=1e-5, what=name)
