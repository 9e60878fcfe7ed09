"""Every architecture at its small test input, exported to a SavedModel and to
ONNX on the TensorFlow backend, each checked against the Keras model.

    KERAS_BACKEND=tensorflow python tests/workers/export_zoo_worker.py OUT_DIR [NAME,NAME,...]   # OUT_DIR/report.json

Without names, every architecture (about 17 minutes on 2 cores); the test
suite passes one architecture of each family.

Without names, each architecture runs in a fresh process, two at a time: in one
long-lived process TensorFlow's SavedModel writer slows down with every model
saved. Named ones run in this process.
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import onnxruntime
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: helpers

import kcnn
from kcnn.deploy.export import export_on_tensorflow


from helpers import assert_close, deterministic_weights, temper_logits  # tests/ (put on sys.path above)


def check(info, folder):
    model = kcnn.build(info.name, input_shape=info.test_input_shape)
    deterministic_weights(model)  # outputs that vary: Keras' default initialisation makes some nearly constant
    images = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    temper_logits(model, images)  # probabilities that are not one-hot
    path = os.path.join(folder, "model.keras")
    model.save(path)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(keras.ops.cast(model(images), "float32")))
    export_on_tensorflow(path, "saved_model", os.path.join(folder, "1"), None)
    served = tf.saved_model.load(os.path.join(folder, "1")).signatures["serving_default"](image=tf.constant(images))
    assert_close(served["probabilities"].numpy(), expected, rtol=1e-5, what=f"{info.name} SavedModel")
    export_on_tensorflow(path, "onnx", os.path.join(folder, "model.onnx"), None)
    session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"))
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": images})))
    assert_close(outputs["probabilities"], expected, rtol=1e-4, what=f"{info.name} ONNX")


def one(name, out_dir):
    folder = os.path.join(out_dir, name)
    os.makedirs(folder)
    started = time.perf_counter()
    try:
        check(kcnn.get_model_info(name), folder)
        result = "ok"
    except Exception as error:  # the report names every failure
        result = f"{type(error).__name__}: {str(error)[:300]}"
    shutil.rmtree(folder)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f)
    print(f"{name:28s} {time.perf_counter() - started:6.1f} s  {result[:100]}", flush=True)


def main(out_dir, names=None):
    if names:  # a few (the suite's seven): here, one after the other; the slowdown is not seen, the imports
        # of a process each are (51 CPU-seconds against 75, AVX-512)
        report = {}
        for name in names.split(","):
            one(name, out_dir)
            report[name] = json.load(open(os.path.join(out_dir, f"{name}.json")))
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        return
    names = [info.name for info in kcnn.list_models()]

    def run(name):
        subprocess.run([sys.executable, __file__, "--one", name, out_dir],
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        path = os.path.join(out_dir, f"{name}.json")
        return json.load(open(path)) if os.path.exists(path) else "the worker process died"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        report = dict(zip(names, pool.map(run, names)))
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        one(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
