"""Classifies scikit-image's real photos with kcnn's pretrained
EfficientNet-Lite0 on this process's backend and prints one JSON line of
top-5 (index, name, probability) per photo. tests/test_weights.py runs it on
every backend."""

import json

import keras
import numpy as np
from skimage import data

import kcnn
from kcnn.weights import decode_predictions

PHOTOS = ("chelsea", "coffee")


def photos(size=224):
    """The photos resized to size x size, float32 0-255 RGB (TensorFlow's resize, the same on every backend)."""
    import tensorflow as tf

    return np.stack([tf.image.resize(getattr(data, name)().astype("float32"), (size, size)).numpy()
                     for name in PHOTOS])


def main():
    model = kcnn.build("efficientnet_lite0", weights="imagenet", classifier_activation="softmax")
    probabilities = keras.ops.convert_to_numpy(model.predict(photos(), verbose=0))
    print("RESULT " + json.dumps({"top5": decode_predictions(probabilities), "backend": keras.backend.backend()}))


if __name__ == "__main__":
    main()
