"""Train a small model briefly on the active backend, export it (SavedModel
and ONNX), and save the Keras model's probabilities on raw images.

    KERAS_BACKEND=torch python tests/workers/export_worker.py OUT_DIR
"""

import json
import os
import sys

import keras
import numpy as np

from kcnn import data
from kcnn.deploy.export import export
from kcnn.config import TrainConfig
from kcnn.training.train import train


def main(out_dir):
    run = train(TrainConfig(dataset="cifar10_sample", arch="cifar_resnet20", epochs=1, batch_size=64, limit=256,
                            output_dir=os.path.join(out_dir, "run"), verbose=0))
    saved_model = export(run.directory, "saved_model", verbose=False)
    onnx_file = export(run.directory, "onnx", verbose=False)
    images = data.load("cifar10_sample", "test").images[:7].astype("float32")  # raw 0-255 RGB
    model = keras.saving.load_model(os.path.join(run.directory, "model.keras"))
    probabilities = {f"batch{n}": keras.ops.convert_to_numpy(keras.ops.softmax(model(images[:n]))) for n in (1, 7)}
    np.savez(os.path.join(out_dir, "expected.npz"), images=images, **probabilities)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({"saved_model": saved_model, "onnx": onnx_file, "backend": keras.backend.backend(),
                   "class_names": list(run.metrics["class_names"])}, f)


if __name__ == "__main__":
    main(sys.argv[1])
