"""Every architecture at its small test input, exported to LiteRT (float32) on the TensorFlow backend and run
by the LiteRT interpreter alone (tests/workers/litert_worker.py), checked against the Keras model.

    KERAS_BACKEND=tensorflow python tests/workers/litert_zoo_worker.py OUT_DIR [NAME,NAME,...]   # OUT_DIR/report.json

Without names, every architecture, each converted in a fresh process one after the other; the test suite
passes the few that between them use every kind of layer (tests/test_export.py's EXPORTED), converted here.
"""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np

WORKERS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(WORKERS))  # tests/: helpers

import kcnn
from kcnn.deploy.export import export_on_tensorflow

from helpers import assert_close, deterministic_weights, temper_logits  # tests/ (put on sys.path above)


def convert(name, out_dir):
    """OUT_DIR/NAME/: model.tflite, images.npy and expected.npy (the Keras model's probabilities); returns
    "ok" or the error."""
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    try:
        info = kcnn.get_model_info(name)
        model = kcnn.build(name, input_shape=info.test_input_shape)
        deterministic_weights(model)  # outputs that vary
        images = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
        temper_logits(model, images)  # probabilities that are not one-hot
        model.save(os.path.join(folder, "model.keras"))
        np.save(os.path.join(folder, "images.npy"), images)
        np.save(os.path.join(folder, "expected.npy"),
                keras.ops.convert_to_numpy(keras.ops.softmax(keras.ops.cast(model(images), "float32"))))
        export_on_tensorflow(os.path.join(folder, "model.keras"), "litert", os.path.join(folder, "model.tflite"),
                             None)
        os.remove(os.path.join(folder, "model.keras"))
        return "ok"
    except Exception as error:  # the report names every failure
        return f"{type(error).__name__}: {str(error)[:300]}"


def main(out_dir, names=None):
    started = time.perf_counter()
    report = {}
    if names:
        names = names.split(",")
        for name in names:
            report[name] = convert(name, out_dir)
    else:
        names = [info.name for info in kcnn.list_models()]
        for name in names:  # a fresh process each: TensorFlow's SavedModel writer slows down in a long-lived one
            done = subprocess.run([sys.executable, __file__, "--one", name, out_dir], capture_output=True, text=True,
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            path = os.path.join(out_dir, name, "converted.json")
            report[name] = json.load(open(path)) if os.path.exists(path) else f"the process died: {done.stderr[-300:]}"
            print(f"{name:28s} {time.perf_counter() - started:7.1f} s  {report[name][:100]}", flush=True)
    # Run them all with the LiteRT interpreter alone
    cases = [{"name": name, "model": os.path.join(out_dir, name, "model.tflite"),
              "images": os.path.join(out_dir, name, "images.npy")} for name in names if report[name] == "ok"]
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(cases, f)
    served = os.path.join(out_dir, "served.npz")
    subprocess.run([sys.executable, os.path.join(WORKERS, "litert_worker.py"), os.path.join(out_dir, "cases.json"),
                    served], check=True)
    outputs, details = np.load(served), json.load(open(served + ".json"))
    for case in cases:
        name = case["name"]
        try:
            assert "error" not in details[name], details[name].get("error")
            expected = np.load(os.path.join(out_dir, name, "expected.npy"))
            assert_close(outputs[f"{name}.probabilities"], expected, rtol=1e-4, what=f"{name} LiteRT")
            np.testing.assert_allclose(outputs[f"{name}.probabilities"], expected, rtol=0, atol=1e-4)
            np.testing.assert_allclose(outputs[f"{name}.first"], expected[:1], rtol=0, atol=1e-4)
            report[name] = "ok"
        except AssertionError as error:
            report[name] = f"AssertionError: {str(error)[:300]}"
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    passed = sum(result == "ok" for result in report.values())
    print(f"{passed} of {len(report)} pass, {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        name, out_dir = sys.argv[2:]
        result = convert(name, out_dir)
        with open(os.path.join(out_dir, name, "converted.json"), "w") as f:
            json.dump(result, f)
    else:
        main(*sys.argv[1:])
