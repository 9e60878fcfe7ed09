"""LiteRT export: a model trained here (JAX) on real digits, exported to LiteRT float32 and int8 (each in a
TensorFlow child process), run by the LiteRT interpreter alone in a process that imports neither TensorFlow,
Keras nor kcnn (tests/workers/litert_worker.py): float gives Keras' probabilities, int8 keeps the accuracy in
a file under a third of the size; and the architectures that between them use every kind of layer convert.
Bad input is in tests/test_bad_input.py's table."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kcnn
from kcnn.deploy.export import export

from helpers import _tail, run_python, worker

# tests/test_export.py's EXPORTED less googlenet (10 CPU-seconds to convert; its concatenations and ceil-mode
# pools are squeezenet1_1's too). The whole zoo: `KERAS_BACKEND=tensorflow python
# tests/workers/litert_zoo_worker.py OUT_DIR` (README, "LiteRT").
LITERT_EXPORTED = ("lenet5", "cifar_resnet20", "airbench_small", "squeezenet1_1", "mobilenet_v2_torchvision",
                   "convvit_cifar")


def _trained_run(folder):
    """A run directory of lenet5 fitted on digits at 32x32 for a few epochs (Keras' fit alone: the workflow's
    plots and explanations would triple the cost), with the config.json and metrics.json kcnn train writes."""
    from kcnn.data.pipeline import make_dataset
    from kcnn.config import TrainConfig
    from kcnn.runs.rundir import config_record

    config = TrainConfig(dataset="digits", arch="lenet5", image_size=32, epochs=4, batch_size=32,
                         output_dir=str(folder), verbose=0).resolved()
    keras.utils.set_random_seed(0)
    model = kcnn.build("lenet5", input_shape=(32, 32, 1), num_classes=10)
    train_data = config.load(config.train_split_name())
    dataset = make_dataset(train_data, batch_size=32, training=True, num_classes=10, image_shape=(32, 32, 1),
                           epochs=config.epochs)
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset, epochs=config.epochs, steps_per_epoch=len(train_data) // 32, shuffle=False, verbose=0)
    folder.mkdir()
    model.save(folder / "model.keras")
    (folder / "config.json").write_text(json.dumps(config_record(config, "train")))
    class_names = [f"digit {i}" for i in range(10)]  # not the indices: the metadata must carry the real names
    (folder / "metrics.json").write_text(json.dumps({"class_names": class_names}))
    return model, config, class_names


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The run, its float32 and int8 LiteRT exports (made from JAX), and what the LiteRT worker answered on
    the run's evaluation images."""
    from kcnn.deploy.litert import _prepared

    root = tmp_path_factory.mktemp("litert")
    model, config, class_names = _trained_run(root / "run")
    paths = {quantize: export(root / "run", "litert", quantize=quantize, calibration_images=100, verbose=False)
             for quantize in ("none", "int8")}
    images, labels = _prepared(config.load(config.eval_split_name()), (32, 32, 1))
    np.save(root / "images.npy", images)
    cases = [{"name": quantize, "model": path, "images": str(root / "images.npy")} for quantize, path in paths.items()]
    (root / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, worker("litert_worker"), str(root / "cases.json"), str(root / "out.npz")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(images, verbose=0)))
    return {"root": root, "paths": paths, "labels": labels, "expected": expected, "class_names": class_names,
            "outputs": np.load(root / "out.npz"), "details": json.loads((root / "out.npz.json").read_text()),
            "record": json.loads((root / "run" / "export" / "kcnn_export.json").read_text())["kcnn"]["exports"]}


def test_float_litert_gives_the_keras_probabilities_with_the_interpreter_alone(served):
    outputs, details = served["outputs"], served["details"]["none"]
    assert "error" not in details, details.get("error")
    assert details["signatures"] == {"serving_default": {"inputs": ["image"],
                                                         "outputs": ["class_index", "probabilities"]}}
    assert details["input_dtype"] == "float32" and details["input_shape"] == [-1, 32, 32, 1]
    expected = served["expected"]
    assert np.abs(outputs["none.probabilities"] - expected).max() <= 1e-4
    np.testing.assert_allclose(outputs["none.first"], expected[:1], rtol=0, atol=1e-4)  # a batch of one
    np.testing.assert_array_equal(outputs["none.class_index"], expected.argmax(-1))
    assert json.loads(details["metadata"]["class_names"]) == served["class_names"]
    assert (served["root"] / "run" / "export" / "class_names.txt").read_text().splitlines() == served["class_names"]
    # 30x32 images: lenet5's reshape fails. (The interpreter resizes the input and does not run the serving
    # function's shape check, so a model with global pooling would answer: README, "LiteRT".)
    assert "RESHAPE" in details["wrong_shape"]


def test_int8_litert_keeps_the_accuracy_in_a_quarter_of_the_file(served):
    outputs, details, labels = served["outputs"], served["details"], served["labels"]
    assert "error" not in details["int8"], details["int8"].get("error")
    assert details["int8"]["input_dtype"] == "float32"  # raw pixels in, as the float model
    keras_accuracy = float(np.mean(served["expected"].argmax(-1) == labels))
    int8_accuracy = float(np.mean(outputs["int8.class_index"] == labels))
    assert keras_accuracy > 0.7, keras_accuracy  # a model well above chance (0.1): the comparison means something
    assert abs(int8_accuracy - keras_accuracy) <= 0.015, (int8_accuracy, keras_accuracy)
    assert np.abs(outputs["int8.probabilities"] - served["expected"]).max() < 0.5  # probabilities, not noise
    assert details["int8"]["bytes"] <= 0.3 * details["none"]["bytes"], (details["int8"]["bytes"],
                                                                         details["none"]["bytes"])
    record = served["record"]["model_int8.tflite"]
    assert record["quantize"] == "int8" and record["calibration_images"] == 100
    assert record["bytes"] == details["int8"]["bytes"]
    assert record["accuracy"]["split"] == "digits/test" and record["accuracy"]["images"] == len(labels)
    assert record["accuracy"]["int8"] == pytest.approx(int8_accuracy, abs=1e-9)  # the same interpreter's answer
    assert record["accuracy"]["float32"] == pytest.approx(float(np.mean(outputs["none.class_index"] == labels)))
    assert served["record"]["model.tflite"]["quantize"] == "none"


def test_an_existing_litert_export_is_replaced_only_with_overwrite(served):
    from kcnn.deploy.export import ExportError

    path = served["paths"]["none"]
    before = open(path, "rb").read()
    with pytest.raises(ExportError, match="model.tflite already exists; pass overwrite=True"):
        export(served["root"] / "run", "litert", verbose=False)
    assert open(path, "rb").read() == before


@pytest.mark.slow  # 45 CPU-seconds (AVX-512); `make test` runs it (`make test-fast` leaves it out)
def test_architectures_with_every_kind_of_layer_convert_to_litert(tmp_path):
    """Float32 LiteRT at small test inputs, converted on TensorFlow and run by the interpreter alone, each
    giving the Keras model's probabilities within 1e-4."""
    log = tmp_path / "log.txt"
    process = run_python([worker("litert_zoo_worker"), str(tmp_path), ",".join(LITERT_EXPORTED)], "tensorflow",
                         str(log))
    process.wait(timeout=600)
    assert process.returncode == 0, _tail(log)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == set(LITERT_EXPORTED)
    failed = {name: result for name, result in report.items() if result != "ok"}
    assert not failed, failed
