"""Classifies scikit-image's real photos with kcnn's pretrained EfficientNet-Lite0, -Lite1 and -Lite2 on
this process's backend, and prints one JSON line: per model, the top-5 (index, name, probability) of each
photo. tests/test_weights.py runs it on every backend.

    KERAS_BACKEND=jax python tests/workers/pretrained_worker.py [OUT_NPZ ARCH:NAME ...]

With OUT_NPZ, it also builds each ARCH with its named weights NAME from the files the test wrote into
$KERAS_HOME/models (publisher file names; the hash kcnn checks is set to that file's) and saves the logits
of the photos, under the source's own evaluation transform, to OUT_NPZ.
"""

import dataclasses
import hashlib
import json
import sys

import keras
import numpy as np
from skimage import data

import kcnn
from kcnn import weights as named_weights
from kcnn.weights import decode_predictions, loading

PHOTOS = ("chelsea", "coffee")
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def photos(size=224):
    """The photos resized to size x size, float32 0-255 RGB (TensorFlow's resize, the same on every backend)."""
    import tensorflow as tf

    return np.stack([tf.image.resize(getattr(data, name)().astype("float32"), (size, size)).numpy()
                     for name in PHOTOS])


def evaluation_photos(source):
    """The photos as the source's publisher evaluates: shorter side resized, centre crop (uint8 -> float32)."""
    return np.stack([source.eval_transform(getattr(data, name)()) for name in PHOTOS]).astype("float32")


def with_hash_of_the_file_there(arch, name):
    """The named source, its checksum set to the file the test wrote where the download would have put it
    (the bytes are the test's, not the publisher's; the code path is the real one)."""
    source = named_weights.get_source(arch, name)
    with open(loading.cache_file(source), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    named_weights.SOURCES[(arch, name)] = dataclasses.replace(source, file_hash=digest[:len(source.file_hash)])
    return named_weights.SOURCES[(arch, name)]


def main(out_path=None, *named):
    results = {}
    for arch in LITE:
        source = named_weights.get_source(arch, "imagenet")
        model = kcnn.build(arch, weights="imagenet", classifier_activation="softmax")
        probabilities = keras.ops.convert_to_numpy(model.predict(evaluation_photos(source), verbose=0))
        results[arch] = decode_predictions(probabilities)
    logits = {}
    for arch, name in (item.split(":") for item in named):
        source = with_hash_of_the_file_there(arch, name)
        model = kcnn.build(arch, weights=name)
        logits[f"{arch}:{name}"] = keras.ops.convert_to_numpy(model.predict(evaluation_photos(source), verbose=0))
    if out_path:
        np.savez(out_path, **logits)
    print("RESULT " + json.dumps({"top5": results, "backend": keras.backend.backend()}))


if __name__ == "__main__":
    main(*sys.argv[1:])
