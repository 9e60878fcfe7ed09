"""Training: a few-batch run per backend through the CLI, the run directory,
evaluation on another backend, exact resume, and bad input."""

import json

import keras
import numpy as np
import pytest


import kcnn
import kcnn.data
from helpers import RUN_FILES, image_folder_of_the_sample as _folder, kcnn_cli, killed_then_resumed
from kcnn.training import train as training
from kcnn.config import TrainConfig

# LeNet-5 on digits resized to 32x32: a run of a few seconds (the per-backend CLI runs use the default arch)
QUICK = dict(dataset="digits", arch="lenet5", image_size=32, epochs=2, batch_size=64, limit=320, verbose=0)


@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_cli_training_run_on_each_backend(backend, tmp_path):
    run_dir = tmp_path / "run"
    result = kcnn_cli(backend, "train", "--dataset", "digits", "--epochs", "1", "--limit", "256",
                      "--batch-size", "64", "--tta", "flip", "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    assert any((run_dir / "logs").rglob("*tfevents*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backend"] == backend and 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class_accuracy"]) == {str(d) for d in range(10)}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "cifar_resnet20" and config["versions"]["backend"] == backend
    # the saved model evaluates the same on another backend
    other = {"tensorflow": "torch", "torch": "jax", "jax": "tensorflow"}[backend]
    # and with test-time augmentation (made in its input pipeline) as this backend's run recorded it
    evaluated = kcnn_cli(other, "evaluate", str(run_dir), "--tta", "flip")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"test accuracy {metrics['accuracy']:.4f}" in evaluated.stdout
    assert f"test accuracy with test-time flip {metrics['tta_accuracy']['flip']:.4f}" in evaluated.stdout
    assert metrics["per_class"]["macro avg"]["support"] == metrics["images"]


def test_resume_after_a_crash_reaches_the_same_weights(tmp_path, monkeypatch):
    config = dict(QUICK, epochs=2, seed=3, augment="crop_flip")
    uninterrupted = training.train(TrainConfig(**config, output_dir=str(tmp_path / "full")))
    resumed = killed_then_resumed(config, tmp_path / "resumed", monkeypatch)
    for a, b in zip(uninterrupted.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = (tmp_path / "resumed" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 2  # header and one row per epoch, none twice


def test_existing_run_is_refused_and_left_alone(tmp_path):
    run_dir = tmp_path / "run"
    training.train(TrainConfig(**QUICK, output_dir=str(run_dir)))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(kcnn.KcnnError, match="already holds a run.*--resume.*--overwrite"):
        training.train(TrainConfig(**QUICK, output_dir=str(run_dir)))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    with pytest.raises(kcnn.KcnnError, match="other settings \\(epochs\\)"):
        training.train(TrainConfig(**dict(QUICK, epochs=5), output_dir=str(run_dir), resume=True))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dataset="imagenet"), "Unknown dataset 'imagenet'"),
        (dict(arch="resnet5O"), "Unknown model 'resnet5O'"),
        (dict(learning_rate=0.0), "learning_rate must be a number above 0"),
        (dict(learning_rate=-1e-3), "learning_rate must be a number above 0"),
        (dict(batch_size=4096, limit=None), "batch_size 4096 is larger than the 1500 training images"),
        (dict(epochs=0), "epochs must be a whole number"),
        (dict(image_size=None), "lenet5 needs inputs of at least 12x12.*image_size=32"),
        (dict(resume=True), "no run to resume"),
    ],
)
def test_bad_training_input(changes, message, tmp_path):
    with pytest.raises(kcnn.KcnnError, match=message):
        training.train(TrainConfig(**dict(QUICK, **changes), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_cli_bad_input_exits_2(tmp_path):
    result = kcnn_cli("jax", "train", "--dataset", "digits", "--learning-rate", "0", "--output-dir",
                      str(tmp_path / "run"))
    assert result.returncode == 2 and "learning_rate must be a number above 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_same_seed_gives_the_same_run(tmp_path):
    config = dict(QUICK, augment="crop", epochs=1)
    first = training.train(TrainConfig(**config, seed=5, output_dir=str(tmp_path / "a")))
    second = training.train(TrainConfig(**config, seed=5, output_dir=str(tmp_path / "b")))
    other = training.train(TrainConfig(**config, seed=6, output_dir=str(tmp_path / "c")))
    assert first.metrics["accuracy"] == second.metrics["accuracy"]
    assert first.metrics["per_class_accuracy"] == second.metrics["per_class_accuracy"]
    assert first.history["loss"] == second.history["loss"]
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first.model.get_weights(), other.model.get_weights()))


def test_early_stopping_keeps_the_best_weights(tmp_path):
    """The weights of the best epoch come back, not the last ones: from epoch 3 on the run is sabotaged (every
    weight zeroed: a constant predictor), so it stops early and its last epoch is never its best."""

    class ZeroWeightsFromEpoch3(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights_after = []  # per epoch, after kcnn's own callbacks (EarlyStopping first)

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])

        def on_epoch_end(self, epoch, logs=None):
            if len(self.weights_after) == epoch:
                self.weights_after.append([np.copy(w) for w in self.model.get_weights()])

    sabotage = ZeroWeightsFromEpoch3()
    run = training.train(TrainConfig(**dict(QUICK, epochs=6, schedule="constant"), early_stopping=1,
                                     output_dir=str(tmp_path / "run")), callbacks=[sabotage])
    history = run.history["val_accuracy"]
    epochs_run = run.metrics["epochs_run"]
    assert len(history) == epochs_run < 6  # stopped early
    best = int(np.argmax(history))
    assert best < epochs_run - 1 and history[best] > history[-1]
    final = run.model.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(final, sabotage.weights_after[-1][:len(final)]))
    restored = keras.models.load_model(tmp_path / "run" / "model.keras").get_weights()
    for a, b, c in zip(final, restored, sabotage.weights_after[best]):
        np.testing.assert_array_equal(a, c)  # the best epoch's weights, exactly
        np.testing.assert_array_equal(b, c)  # and they are what model.keras holds


def test_mixed_precision_leaves_the_global_policy_as_it_was(tmp_path):
    from kcnn.backends.precision import mixed_precision_policy  # what this machine affords (tests/test_precision.py)

    run = training.train(TrainConfig(**dict(QUICK, epochs=1), mixed_precision=True,
                                     output_dir=str(tmp_path / "run")))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert run.metrics["dtype_policy"] == run.model.dtype_policy.name == mixed_precision_policy()


def test_googlenet_trains_with_auxiliary_heads_and_saves_without(tmp_path):
    # On PyTorch, in a process of its own: this process's JAX would compile GoogLeNet's training step with both
    # auxiliary heads, and draw its 180 initial kernels one compiled program each (98 CPU-seconds against 26, AVX-512).
    from kcnn.runs.modelfile import load_model  # Keras' safe-mode load, without JAX's initializer draws
    from kcnn.runs.rundir import RunDir, load_run

    run_dir = tmp_path / "run"
    result = kcnn_cli("torch", "train", "--dataset", "digits", "--arch", "googlenet", "--image-size", "80",
                      "--epochs", "1", "--batch-size", "16", "--limit", "32", "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    history = (run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert {"aux1_loss", "aux2_loss", "logits_accuracy", "val_logits_accuracy"} <= set(history)
    renamed = RunDir(str(run_dir)).history()  # what a run's `history`, its curves and metrics use
    assert "val_accuracy" in renamed and "accuracy" in renamed and not any("aux" in key for key in renamed)
    for name in ("model.keras", "best.keras"):
        saved = load_model(str(run_dir / name))
        assert len(saved.outputs) == 1 and tuple(saved.output_shape) == (None, 10), name
        assert not any("aux" in w.path for w in saved.weights), name
    model = load_run(str(run_dir)).model
    assert json.loads((run_dir / "metrics.json").read_text())["parameters"] == model.count_params()


def test_folder_training_evaluate_and_predict_through_the_cli(tmp_path):
    # (bad folders, files and run directories through the CLI: tests/test_bad_input.py)
    photos = _folder(tmp_path / "my photos")  # a space in the path
    (photos / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    run_dir = tmp_path / "run"
    result = kcnn_cli("jax", "train", "--dataset", str(photos), "--image-size", "32", "--epochs", "2",
                      "--batch-size", "8", "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["class_names"] == ["cat", "ship"] and metrics["skipped_files"] == 1
    assert metrics["images"] == 4  # 20% of each class of 12 readable images: 2 + 2
    evaluated = kcnn_cli("torch", "evaluate", str(run_dir))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"validation accuracy {metrics['accuracy']:.4f} on 4 images" in evaluated.stdout
    predicted = kcnn_cli("tensorflow", "predict", str(run_dir), str(photos / "cat" / "0.png"),
                         str(photos / "ship" / "1.png"), "--top", "2")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = predicted.stdout.splitlines()
    assert lines[0].endswith("0.png") and len(lines) == 6
    assert {line.split()[-1] for line in lines[1:3]} == {"cat", "ship"} and "%" in lines[1]
    # the same top class as the model in Python
    from kcnn.runs.rundir import load_run
    from kcnn.training.evaluate import predict_files

    finished = load_run(str(run_dir))
    model, names = finished.model, finished.class_names
    [[(best, _), _]] = predict_files(model, [str(photos / "cat" / "0.png")], names, top=2)
    assert lines[1].split()[-1] == best


@pytest.mark.parametrize("layout, message", [
    ("empty", "no class sub-folders"),
    ("one_class", "only the class 'cat'"),
])
def test_folders_that_cannot_train_write_nothing(tmp_path, layout, message):
    data = tmp_path / "data"
    data.mkdir()
    if layout == "one_class":
        _folder(data)
        for path in (data / "ship").iterdir():
            path.unlink()
        (data / "ship").rmdir()
    with pytest.raises(kcnn.data.EmptyDatasetError, match=message):
        training.train(TrainConfig(dataset=str(data), epochs=1, verbose=0, output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_only_the_files_the_run_wrote(tmp_path):
    """--overwrite of a kcnn run removes the run's own files; a file the user put beside them stays."""
    run_dir = tmp_path / "run"
    first = training.train(TrainConfig(**QUICK, output_dir=str(run_dir)))
    (run_dir / "my notes.txt").write_text("mine")
    (run_dir / "best.keras").unlink()  # a run file the second run may not write again (it is still removed)
    run_id = json.loads((run_dir / "config.json").read_text())["kcnn"]["run_id"]
    second = training.train(TrainConfig(**dict(QUICK, epochs=1), output_dir=str(run_dir), overwrite=True))
    assert (run_dir / "my notes.txt").read_text() == "mine"
    record = json.loads((run_dir / "config.json").read_text())
    assert record["kcnn"]["kind"] == "train" and record["kcnn"]["run_id"] != run_id and record["epochs"] == 1
    assert second.metrics["epochs_run"] == 1 and first.metrics["epochs_run"] == 2
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 2
