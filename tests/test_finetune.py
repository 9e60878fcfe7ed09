"""Fine-tuning a pretrained backbone: the split into frozen bottom and
trainable top, cached features giving the answer a frozen backbone in fit()
gives, the two phases, the run directory, and the command line."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import kcnn
from kcnn.models import surgery
from kcnn.training import finetune as fine
from kcnn.config import FinetuneConfig
from kcnn.training.finetune import finetune

from helpers import RUN_FILES, assert_close, kcnn_cli
from helpers import image_folder_of_the_sample as _folder
from helpers import deterministic_weights

# export=False: the CLI test below checks the run's SavedModel; tests/test_export.py checks exports themselves.
TINY = dict(image_size=32, head_epochs=3, finetune_epochs=1, batch_size=32, limit=160, export=False, verbose=0,
            tta=None)  # test-time views: tested where they are the point


@pytest.mark.parametrize("arch, input_shape", [("efficientnet_lite0", (64, 64, 3)), ("cifar_resnet20", (32, 32, 3))])
def test_split_at_a_block_boundary_computes_the_same_model(arch, input_shape):
    model = kcnn.build(arch, include_top=False, pooling="avg", input_shape=input_shape)
    deterministic_weights(model)  # Keras' default initialisation leaves EfficientNet's features nearly constant
    points = surgery.cut_points(model)
    assert len(points) >= 3
    images = np.random.default_rng(0).uniform(0, 255, (2, *input_shape)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images))
    for unfreeze in (1, 3, "all"):
        bottom, top = surgery.split(model, surgery.cut_layer(model, unfreeze))
        actual = keras.ops.convert_to_numpy(top(bottom(images)))
        assert_close(actual, expected, rtol=1e-5, what=f"{arch} split after {unfreeze}")


def test_cached_features_give_the_answer_of_a_frozen_backbone_in_fit():
    """kcnn's cache path (the backbone as fine-tuning builds and cuts it, `training_views`, `_predict` through
    both parts, resizing included) gives the features of the frozen model on each image and its mirror, and
    on the test-time augmentation views of kcnn.data.tta; and a head fitted on them ends with the weights of the
    same head behind the frozen backbone inside fit()."""
    from kcnn.data import tta
    from kcnn.config import FinetuneConfig
    from kcnn.data.views import training_views
    from kcnn.training.finetune import _backbone, _predict

    config = FinetuneConfig(image_size=32, unfreeze=2, verbose=0)
    backbone = _backbone(config)
    assert backbone.cut is not None  # the pass goes through a cut model: bottom, then top
    data = kcnn.data.load("cifar10_sample", "train")
    data = dataclasses.replace(data, images=data.images[:32], labels=data.labels[:32])
    images, labels, copies = training_views(data, flip=config.flip, extra_views=config.extra_views, seed=config.seed)
    assert copies == 2
    activations = _predict(backbone.fast_bottom, images, 32, 16)
    features = _predict(backbone.fast_top, activations, None, 16)
    # the reference: the whole frozen model on the images and their mirrors, made here
    originals = data.images.astype("float32")
    both = np.concatenate([originals, originals[:, :, ::-1]])
    np.testing.assert_array_equal(labels, np.concatenate([data.labels, data.labels]))
    assert_close(features, backbone.model.predict(both, verbose=0), rtol=1e-5, what="cached features")
    # a shifted test-time view through the cache path is the frozen model on that view (kcnn.data.tta's own ops)
    view = tta.VIEWS["flip_crop"][-1]
    shifted = _predict(backbone.fast_top, _predict(backbone.fast_bottom, data.images, 32, 16, view=view), None, 16)
    reference = backbone.model.predict(tta.apply_view(originals, view, np), verbose=0)
    assert_close(shifted, reference, rtol=1e-5, what="test-time view")
    one_hot = keras.utils.to_categorical(labels, 10)

    def head():
        keras.utils.set_random_seed(1)
        return keras.layers.Dense(10, name="predictions")

    cached_head = head()
    on_features = keras.Sequential([keras.Input(features.shape[1:]), cached_head])
    end_to_end = keras.Model(backbone.model.input, head()(backbone.model.output))
    for model, inputs in ((on_features, features), (end_to_end, both)):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        model.fit(inputs, one_hot, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(cached_head.get_weights(), end_to_end.get_layer("predictions").get_weights()):
        assert_close(a, b, rtol=1e-4, what="head weights")


def test_two_phases_train_the_head_and_top_blocks_and_leave_the_rest_as_pretrained(tmp_path):
    run = finetune(FinetuneConfig(**TINY, unfreeze=1, output_dir=str(tmp_path / "run")))
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.2 and metrics["unfrozen_from"] == "blocks_14_add"  # chance is 0.1
    assert metrics["epochs_run"] == 4 and len(run.history["val_accuracy"]) == 4
    pretrained = kcnn.build("efficientnet_lite0", weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    for name in ("conv_stem", "blocks_14_project_conv", "blocks_15_bn1", "bn1"):  # frozen, and BN always
        for a, b in zip(run.model.get_layer(name).get_weights(), pretrained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for name in ("blocks_15_project_conv", "conv_head"):  # fine-tuned
        assert not np.array_equal(run.model.get_layer(name).get_weights()[0],
                                  pretrained.get_layer(name).get_weights()[0])
    # model.keras takes raw RGB images and gives the same logits
    saved = keras.saving.load_model(tmp_path / "run" / "model.keras")
    images = kcnn.data.load("cifar10_sample", "test").images[:4].astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(saved(images)),
                               keras.ops.convert_to_numpy(run.model(images)), rtol=1e-5, atol=1e-5)


def test_finetune_an_image_folder_through_the_cli_then_evaluate_and_predict(tmp_path):
    photos = _folder(tmp_path / "fish or cat", per_class=20)
    run_dir = tmp_path / "runs" / "pets"
    result = kcnn_cli("tensorflow", "finetune", "--dataset", str(photos), "--image-size", "32", "--head-epochs", "3",
                      "--finetune-epochs", "1", "--batch-size", "16", "--class-weight", "balanced", "--output-dir",
                      str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    # the summary says which split each accuracy is on, and what its counts are
    assert "on the validation split, never trained on" in result.stdout
    assert "epochs' val_accuracy" in result.stdout and "not on the held-out ones" in result.stdout
    assert "32 training images and their 32 mirrored views" in result.stdout  # through the frozen layers
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fitted = metrics["train_images"] - metrics["validation_images"]  # what fit() trained on: the rest set aside
    assert metrics["train_images"] == 32 and 0 < metrics["validation_images"] < 32
    assert re.search(rf"trained on +{fitted} training images and their {fitted} mirrored views\n", result.stdout)
    assert re.search(rf"epochs' val_accuracy +on {metrics['validation_images']} other training images", result.stdout)
    assert metrics["class_names"] == ["cat", "ship"]
    assert json.loads((run_dir / "config.json").read_text())["class_weight"] == "balanced"
    assert metrics["export"] == str(run_dir / "export" / "1")  # a SavedModel for serving, TF Serving's layout
    assert (run_dir / "export" / "1" / "saved_model.pb").is_file()
    assert (run_dir / "export" / "1" / "assets" / "class_names.txt").read_text().split() == ["cat", "ship"]
    # test-time flips: from the frozen-layer cache in the run (TensorFlow), in the input pipeline here (JAX)
    evaluated = kcnn_cli("jax", "evaluate", str(run_dir), "--tta", "flip")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"validation accuracy {metrics['accuracy']:.4f}" in evaluated.stdout
    assert f"validation accuracy with test-time flip {metrics['tta_accuracy']['flip']:.4f}" in evaluated.stdout
    assert set(metrics["per_class"]) == {"cat", "ship", "macro avg"}
    predicted = kcnn_cli("torch", "predict", str(run_dir), str(photos / "cat" / "0.png"), "--top", "2", "--tta")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "cat" in predicted.stdout and "ship" in predicted.stdout
    again = kcnn_cli("tensorflow", "finetune", "--dataset", str(photos), "--output-dir", str(run_dir))
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr


def test_predict_with_a_pretrained_model_names_imagenet_classes(tmp_path):
    from skimage import data

    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.jpg")
    result = kcnn_cli("tensorflow", "predict", "efficientnet_lite0", str(tmp_path / "chelsea.jpg"), "--top", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    # under the publisher's centre crop: tiger cat (0.38), then Egyptian cat and tabby
    assert result.stdout.splitlines()[1].split("%", 1)[1].strip() in ("tabby", "tiger cat", "Egyptian cat")
    assert all(line.split("%", 1)[1].strip() in ("tabby", "tiger cat", "Egyptian cat", "lynx")
               for line in result.stdout.splitlines()[1:4])


@pytest.mark.parametrize("changes, message", [
    (dict(unfreeze=-1), "unfreeze must be a number of top blocks"),
    (dict(image_size=0), "image_size must be a whole number of at least 1"),
    (dict(dataset="imagenet"), "Unknown dataset 'imagenet'"),
    (dict(backbone="lenet5"), "lenet5 has no 'imagenet' weights"),
    (dict(head_learning_rate=0), "head_learning_rate must be a number above 0"),
])
def test_bad_finetune_settings(tmp_path, changes, message):
    with pytest.raises(kcnn.KcnnError, match=message):
        finetune(FinetuneConfig(**dict(TINY, **changes), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_folder_with_one_class_is_refused(tmp_path):
    photos = _folder(tmp_path / "photos")
    for path in (photos / "ship").iterdir():
        path.unlink()
    (photos / "ship").rmdir()
    with pytest.raises(kcnn.KcnnError, match="class"):
        finetune(FinetuneConfig(**dict(TINY, limit=None), dataset=str(photos), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


TTA_RUNS = """
import json, sys
import numpy as np
from kcnn.config import FinetuneConfig
from kcnn.training.finetune import finetune
tiny = dict(image_size=32, head_epochs=2, finetune_epochs=1, batch_size=32, limit=160, export=False, verbose=0)
runs = [finetune(FinetuneConfig(**tiny, tta=tta, output_dir=sys.argv[1] + f"/{tta}")) for tta in (None, "flip_crop")]
weights = [run.model.get_weights() for run in runs]
print(json.dumps({"difference": max(float(np.abs(a - b).max()) for a, b in zip(*weights)),
                  "metrics": [run.metrics for run in runs]}))
"""


def test_test_time_augmentation_changes_the_evaluation_not_the_training(tmp_path):
    """The held-out views go through the frozen layers with the training images; the weights trained after
    them are the same whatever the views (tta=None, flip_crop), and so is the plain accuracy. On torch, where
    the extra predict() calls of the views moved the random draws of the training that followed."""
    done = subprocess.run([sys.executable, "-c", TTA_RUNS, str(tmp_path)], capture_output=True, text=True,
                          env=dict(os.environ, KERAS_BACKEND="torch"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["difference"] == 0.0
    plain, augmented = result["metrics"]
    assert plain["accuracy"] == augmented["accuracy"]
    assert "tta_accuracy" not in plain and set(augmented["tta_accuracy"]) == {"flip_crop"}


def test_a_run_with_ema_killed_in_phase_2_resumes_to_the_uninterrupted_weights(tmp_path):
    """--ema: each epoch's backup holds the moving average in the model (swapped in for validation); a resumed
    run swaps the training weights back before it trains on, as the uninterrupted run does."""
    config = dict(TINY, head_epochs=1, finetune_epochs=3, ema=True)
    uninterrupted = finetune(FinetuneConfig(**config, output_dir=str(tmp_path / "full")))

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if self.model.name == "finetune" and epoch == 2:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(FinetuneConfig(**config, output_dir=str(tmp_path / "run")), callbacks=[Crash()])
    resumed = finetune(FinetuneConfig(**config, output_dir=str(tmp_path / "run"), resume=True))
    for a, b in zip(uninterrupted.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # the epochs after the crash trained as the uninterrupted run's did (the best epoch's weights, restored
    # at the end, may come from before it): the same losses, epoch by epoch
    histories = [history_losses(path / "history.csv") for path in (tmp_path / "full", tmp_path / "run")]
    assert len(histories[0]) == len(histories[1]) == 4
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-5)


def history_losses(path):
    """history.csv's loss and val_loss columns, one row per epoch."""
    import csv

    with open(path) as f:
        return [[float(row["loss"]), float(row["val_loss"])] for row in csv.DictReader(f)]


def test_resume_after_the_frozen_pass_does_not_compute_it_again(tmp_path, monkeypatch):
    """A run stopped in phase 1 resumes from its cached activations (no image goes through the frozen
    layers again) to the weights of an uninterrupted run (bit for bit after SIGKILL: tests/test_crash.py)."""
    config = dict(TINY, head_epochs=4, finetune_epochs=2, output_dir=str(tmp_path / "run"))
    uninterrupted = finetune(FinetuneConfig(**dict(config, output_dir=str(tmp_path / "full"))))

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(FinetuneConfig(**config), callbacks=[Crash()])
    assert len(list((tmp_path / "run" / "backup").glob("frozen_0_of_1.npz"))) == 1
    sizes = []
    original = fine._predict
    monkeypatch.setattr(fine, "_predict", lambda model, inputs, size, *args: sizes.append(size) or
                        original(model, inputs, size, *args))
    resumed = finetune(FinetuneConfig(**config, resume=True))
    assert sizes and all(size is None for size in sizes), sizes  # activations in, never images
    for a, b in zip(uninterrupted.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,phase,") and len(rows) == 1 + uninterrupted.metrics["epochs_run"]
    assert not (tmp_path / "run" / "backup").exists()
    with pytest.raises(kcnn.KcnnError, match="has finished; there is nothing to resume"):
        finetune(FinetuneConfig(**config, resume=True))
