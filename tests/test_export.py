"""Export for serving: a model trained on each backend, served by TensorFlow
alone (SavedModel) and by onnxruntime (ONNX), gives the Keras model's
probabilities on raw images; the whole zoo exports; bad input is refused
with nothing half-written."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import kcnn
from kcnn.deploy.export import ExportError, export

from helpers import BACKENDS, _tail, assert_close, deterministic_weights, run_python, worker

# Runs in a fresh process that imports TensorFlow only: no Keras model code, no kcnn.
SERVE_WITH_TENSORFLOW_ONLY = """
import json, sys
import numpy as np
import tensorflow as tf
saved_model, images_file, out_file = sys.argv[1:]
loaded = tf.saved_model.load(saved_model)
images = np.load(images_file)["images"]
serve, serve_uint8 = loaded.signatures["serving_default"], loaded.signatures["serving_uint8"]
result = {}
for n in (1, 7):
    outputs = serve(image=tf.constant(images[:n]))
    result[f"batch{n}"] = outputs["probabilities"].numpy()
    result[f"index{n}"] = outputs["class_index"].numpy()
    result[f"names{n}"] = np.array([name.decode() for name in outputs["class_name"].numpy()])
result["uint8"] = serve_uint8(image=tf.constant(images[:7].astype("uint8")))["probabilities"].numpy()
result["uint8_as_float"] = serve(image=tf.constant(images[:7].astype("uint8").astype("float32")))["probabilities"].numpy()
try:
    serve(image=tf.zeros((2, 30, 32, 3)))
    result["wrong_shape"] = np.array("accepted")
except Exception as error:
    result["wrong_shape"] = np.array(str(error))
assert not any(name.split(".")[0] in ("kcnn", "keras_hub") for name in sys.modules)
np.savez(out_file, **result)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per backend: a cifar_resnet20 trained briefly on it, exported from it (tests/workers/export_worker.py)."""
    root = tmp_path_factory.mktemp("export")
    processes = {}
    for backend in BACKENDS:  # one at a time: two cores
        log = root / backend / "log.txt"
        process = run_python([worker("export_worker"), str(root / backend)], backend, str(log))
        process.wait(timeout=600)
        assert process.returncode == 0, _tail(log)
        processes[backend] = root / backend
    return processes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_trained_on_each_backend_serves_the_same_probabilities(exported, backend, tmp_path):
    import onnxruntime

    folder = exported[backend]
    report = json.loads((folder / "report.json").read_text())
    assert report["saved_model"].endswith(os.path.join("export", "1"))
    expected = np.load(folder / "expected.npz")
    out = tmp_path / "served.npz"
    subprocess.run([sys.executable, "-c", SERVE_WITH_TENSORFLOW_ONLY, report["saved_model"],
                    str(folder / "expected.npz"), str(out)], check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    served = np.load(out)
    assert_close(served["batch7"], expected["batch7"], rtol=1e-5, what=f"{backend} SavedModel")
    for n in (1, 7):
        np.testing.assert_allclose(served[f"batch{n}"], expected[f"batch{n}"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(served[f"index{n}"], expected[f"batch{n}"].argmax(-1))
        assert list(served[f"names{n}"]) == [report["class_names"][i] for i in expected[f"batch{n}"].argmax(-1)]
    # uint8 pixels: what the float signature gives for the same whole values
    assert_close(served["uint8"], served["uint8_as_float"], rtol=1e-6, what=f"{backend} serving_uint8")
    assert "(batch, 32, 32, 3)" in str(served["wrong_shape"])

    session = onnxruntime.InferenceSession(report["onnx"])
    assert [(i.name, i.shape[0]) for i in session.get_inputs()] == [("image", "batch")]
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == ["class_index", "probabilities"]
    onnx_outputs = dict(zip(names, session.run(None, {"image": expected["images"][:7]})))
    assert_close(onnx_outputs["probabilities"], expected["batch7"], rtol=1e-4, what=f"{backend} ONNX")
    for n in (1, 7):
        outputs = dict(zip(names, session.run(None, {"image": expected["images"][:n]})))
        np.testing.assert_allclose(outputs["probabilities"], expected[f"batch{n}"], rtol=0, atol=1e-4)
        np.testing.assert_array_equal(outputs["class_index"], expected[f"batch{n}"].argmax(-1))
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["class_names"]) == report["class_names"]
    with pytest.raises(Exception, match="(?s)invalid dimensions for input: image.*index: 1 Got: 30 Expected: 32"):
        session.run(None, {"image": np.zeros((1, 30, 32, 3), "float32")})


def test_saved_model_cli_describes_the_signatures(exported):
    report = json.loads((exported["tensorflow"] / "report.json").read_text())
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--all", "--dir", report["saved_model"]], capture_output=True, text=True,
                           check=True).stdout
    for text in ("signature_def['serving_default']", "signature_def['serving_uint8']", "inputs['image']",
                 "shape: (-1, 32, 32, 3)", "outputs['probabilities']", "shape: (-1, 10)", "outputs['class_index']",
                 "outputs['class_name']", "DT_STRING", "tensorflow/serving/predict"):
        assert text in shown, text
    assert (exported["tensorflow"] / "run" / "export" / "1" / "assets" / "class_names.txt").read_text().split() \
        == report["class_names"]


# Between them, every kind of layer the zoo uses but one (alexnet_torchvision's adaptive pooling: 87 s alone):
# convolutions with symmetric and "same" padding, batch norm, ceil-mode pools, concatenations and residual
# additions, the zero-channel shortcut (ZeroPadding3D), depthwise convolutions and ReLU6, exact GELU and the
# whitening layer, attention and layer norm, Flatten into Dense. The whole zoo takes about 13 minutes on 2 cores,
# too long for the suite: `KERAS_BACKEND=tensorflow python tests/workers/export_zoo_worker.py OUT_DIR` (43 of 43 pass).
EXPORTED = ("lenet5", "cifar_resnet20", "airbench_small", "googlenet", "squeezenet1_1", "mobilenet_v2_torchvision",
            "convvit_cifar")


def test_architectures_with_every_kind_of_layer_export_to_both_formats(tmp_path):
    """SavedModel and ONNX at small test inputs, on TensorFlow (where every export runs), each giving the
    Keras model's probabilities."""
    log = tmp_path / "log.txt"
    process = run_python([worker("export_zoo_worker"), str(tmp_path), ",".join(EXPORTED)],
                         "tensorflow", str(log))
    process.wait(timeout=1200)
    assert process.returncode == 0, _tail(log)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == set(EXPORTED)
    failed = {name: result for name, result in report.items() if result != "ok"}
    assert not failed, failed


def test_a_pretrained_model_with_preprocessing_inside_exports_from_another_backend(tmp_path):
    """The ImageNet backbone with its Normalization layer inside, exported from the active (JAX) backend."""
    import onnxruntime

    model = kcnn.build("efficientnet_lite0", weights="imagenet", num_classes=5, input_shape=(64, 64, 3))
    model.save(tmp_path / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(images)))
    path = export(tmp_path / "model.keras", "onnx", tmp_path / "served", class_names=list("abcde"), verbose=False)
    session = onnxruntime.InferenceSession(path)
    assert [i.name for i in session.get_inputs()] == ["image"]  # the normalisation's constants are not inputs
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": images})))
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=0, atol=1e-4)
    assert (tmp_path / "served" / "class_names.txt").read_text().split() == list("abcde")


def test_an_export_with_test_time_augmentation_answers_as_the_wrapped_model(tmp_path):
    """kcnn export --tta flip_crop: the ONNX file (made on TensorFlow) gives the probabilities kcnn.data.tta's
    model gives here (JAX): the 6 views averaged."""
    import onnxruntime

    from kcnn.data.tta import with_tta

    model = kcnn.build("lenet5", num_classes=3, input_shape=(32, 32, 3))
    deterministic_weights(model)  # the same varied weights in every run (Keras' own draws left all-equal logits once)
    model.save(tmp_path / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(with_tta(model, "flip_crop")(images)))
    plain = keras.ops.convert_to_numpy(keras.ops.softmax(model(images)))
    assert np.abs(expected - plain).max() > 1e-4  # the views change the answer
    path = export(tmp_path / "model.keras", "onnx", tmp_path / "served", tta="flip_crop", verbose=False)
    session = onnxruntime.InferenceSession(path)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": images})))
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs["class_index"], np.argmax(expected, -1))


# ---------------------------------------------------------------------------
# Bad input: one clear message, nothing written or changed


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "lenet5.keras"
    kcnn.build("lenet5").save(path)
    return path


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def test_an_existing_export_is_refused_and_kept(model_file, tmp_path):
    out = tmp_path / "out"
    export(model_file, "keras", out, verbose=False)
    before = _snapshot(out)
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        export(model_file, "keras", out, verbose=False)
    assert _snapshot(out) == before


def test_a_failed_export_leaves_nothing_half_written(model_file, tmp_path, monkeypatch):
    from kcnn.deploy import export as exporting

    out = tmp_path / "out"
    export(model_file, "keras", out, verbose=False)
    before = _snapshot(out)

    def half_then_crash(temporary):
        with open(temporary, "wb") as f:
            f.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(exporting.shutil, "copyfile", lambda source, temporary: half_then_crash(temporary))
    with pytest.raises(OSError):
        export(model_file, "keras", out, overwrite=True, verbose=False)
    assert _snapshot(out) == before  # the old export intact, no temporary left beside it


def test_what_a_killed_export_left_is_removed_by_the_next_and_nothing_else(model_file, tmp_path):
    out = tmp_path / "out"
    (out / ".1.k3x_9abq" / "1" / "variables").mkdir(parents=True)  # a SavedModel's workspace (atomic_path)
    (out / ".1.k3x_9abq" / "1" / "saved_model.pb").write_bytes(b"half")
    (out / "model.tmp.keras").write_bytes(b"half")
    (out / "class_names.tmp.txt").write_text("cat\n")
    export(model_file, "keras", out, verbose=False)
    assert sorted(os.listdir(out)) == ["kcnn_export.json", "model.keras"]
    mine = tmp_path / "mine"  # names that only look like kcnn's temporaries are the user's
    (mine / ".1.notes").mkdir(parents=True)
    (mine / "model.tmp.keras.bak").write_bytes(b"the user's")
    before = _snapshot(mine)
    with pytest.raises(ExportError, match=r"holds files kcnn did not write \(\.1\.notes, model\.tmp\.keras\.bak\)"):
        export(model_file, "keras", mine, verbose=False)
    assert _snapshot(mine) == before and sorted(os.listdir(mine)) == [".1.notes", "model.tmp.keras.bak"]


@pytest.mark.parametrize("content, message", [
    (None, "No such file or directory"),
    (b"not a zip", "is not a complete .keras file \\(a truncated or damaged zip"),
])
def test_a_path_that_is_not_a_keras_model(tmp_path, content, message):
    path = tmp_path / "model.keras"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ExportError, match=message):
        export(path, "keras", tmp_path / "out", verbose=False)
    with pytest.raises(ExportError, match="is not a Keras model file"):
        export(__file__, "saved_model", tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


def test_a_model_with_unknown_custom_layers(tmp_path):
    path = tmp_path / "custom.keras"
    model = kcnn.build("lenet5")
    with zipfile.ZipFile(path, "w") as archive:  # the config names a layer class nobody registered
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
        config["config"]["layers"][1]["class_name"] = "MyMadeUpLayer"
        config["config"]["layers"][1]["module"] = "my_project.layers"
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": keras.__version__}))
    with pytest.raises(ExportError, match=r"uses a layer Keras does not know \(MyMadeUpLayer\).*registers it"):
        export(path, "keras", tmp_path / "out", verbose=False)


def test_bad_format_and_version(model_file, tmp_path):
    with pytest.raises(ExportError, match="Unknown export format 'tflite'"):
        export(model_file, "tflite", tmp_path / "out", verbose=False)
    with pytest.raises(ExportError, match="version must be a whole number"):
        export(model_file, "saved_model", tmp_path / "out", version=0, verbose=False)


def test_cli_export_and_its_refusal(model_file, tmp_path):
    kcnn_cli = [sys.executable, "-m", "kcnn"]
    out = tmp_path / "served"
    done = subprocess.run([*kcnn_cli, "export", str(model_file), "--format", "keras", "--output", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([*kcnn_cli, "export", str(model_file), "--format", "keras", "--output", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
