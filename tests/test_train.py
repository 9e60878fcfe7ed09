"""Training: a few-batch run per backend through the CLI, the run directory,
evaluation on another backend, exact resume, and bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kcnn
from kcnn import train as training
from kcnn.train import TrainConfig

QUICK = dict(dataset="digits", epochs=2, batch_size=64, limit=320, verbose=0)
RUN_FILES = ("config.json", "model.keras", "history.csv", "metrics.json", "curves.png", "confusion.png",
             "samples.png")


def kcnn_cli(backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.run([sys.executable, "-m", "kcnn", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_cli_training_run_on_each_backend(backend, tmp_path):
    run_dir = tmp_path / "run"
    result = kcnn_cli(backend, "train", "--dataset", "digits", "--epochs", "1", "--limit", "256",
                      "--batch-size", "64", "--output-dir", str(run_dir))
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
    evaluated = kcnn_cli(other, "evaluate", str(run_dir))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"test accuracy {metrics['accuracy']:.4f}" in evaluated.stdout


def test_resume_after_a_crash_reaches_the_same_weights(tmp_path, monkeypatch):
    config = dict(QUICK, epochs=3, seed=3)
    uninterrupted = training.train(TrainConfig(**config, output_dir=str(tmp_path / "full")))

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("simulated crash")

    original = training._callbacks
    monkeypatch.setattr(training, "_callbacks", lambda c, d: original(c, d) + [Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train(TrainConfig(**config, output_dir=str(tmp_path / "resumed")))
    monkeypatch.setattr(training, "_callbacks", original)
    assert not (tmp_path / "resumed" / "model.keras").exists()
    resumed = training.train(TrainConfig(**config, output_dir=str(tmp_path / "resumed"), resume=True))
    for a, b in zip(uninterrupted.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = (tmp_path / "resumed" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 3  # header and one row per epoch, none twice


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
        (dict(arch="lenet5"), "lenet5 needs inputs of at least 12x12.*image_size=32"),
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
