"""Test-time augmentation (kcnn.data.tta), the per-class report, balanced class weights and the imbalance warning
(kcnn.training.report): the figures against their definitions, and the three places TTA is made (a Keras model for
predict and export, the input pipeline for evaluate, the frozen-layer cache of fine-tuning) agreeing."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcnn.data import tta
from kcnn.training import report
from kcnn.data import ImageData
from kcnn.errors import InvalidArgumentError


def small_classifier(seed=0, input_shape=(12, 16, 3), classes=4, softmax=False):
    """A model that is not mirror-symmetric (a dense layer over every pixel), so that views differ."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(3, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def images(count=5, shape=(12, 16, 3), seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (count, *shape)).astype("float32")


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_views_are_the_mirror_and_the_shifts_airbench_uses():
    x = np.arange(2 * 32 * 32 * 1, dtype="float32").reshape(2, 32, 32, 1)
    views = tta.VIEWS["flip_crop"]
    assert [w for w, _, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    np.testing.assert_array_equal(tta.apply_view(x, views[1], np), x[:, :, ::-1])
    down_right = tta.apply_view(x, views[2], np)  # 2 pixels at 32x32, reflected at the edges
    np.testing.assert_array_equal(down_right[:, 2:, 2:], x[:, :-2, :-2])
    np.testing.assert_array_equal(down_right[:, 0, 2:], x[:, 2, :-2])  # row -2 reflects to row 2
    up_left = tta.apply_view(x, views[3], np)
    np.testing.assert_array_equal(up_left[:, :-2, :-2], x[:, 2:, 2:])
    # the same views with keras.ops and with tf.experimental.numpy (the two other places they are made)
    for view in views:
        expected = tta.apply_view(x, view, np)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(tta.apply_view(keras.ops.convert_to_tensor(x),
                                                                                 view, keras.ops)), expected)
        np.testing.assert_array_equal(tta.apply_view(tf.constant(x), view, tf.experimental.numpy).numpy(), expected)


@pytest.mark.parametrize("mode", tta.TTA_MODES)
@pytest.mark.parametrize("ends_in_softmax", [False, True])
def test_with_tta_averages_the_probabilities_of_the_views(mode, ends_in_softmax):
    model = small_classifier(softmax=ends_in_softmax)
    x = images()
    wrapped = tta.with_tta(model, mode)
    probabilities = softmax(np.asarray(wrapped.predict(x, verbose=0), "float64"))
    expected = 0
    for view in tta.VIEWS[mode]:
        out = np.asarray(model.predict(tta.apply_view(x, view, np), verbose=0), "float64")
        expected = expected + view[0] * (out if ends_in_softmax else softmax(out))
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    plain = model.predict(x, verbose=0)
    assert np.abs(probabilities - (plain if ends_in_softmax else softmax(plain))).max() > 1e-3  # views matter
    assert tta.with_tta(model, None) is model


def test_evaluate_model_with_tta_is_the_wrapped_models_answer():
    """kcnn evaluate --tta makes the views in the input pipeline; predict and export use with_tta's model."""
    from kcnn.training.evaluate import evaluate_model

    model = small_classifier(classes=3)
    x = images(count=40, seed=3).astype("uint8")
    data = ImageData(x, np.arange(40) % 3, ("a", "b", "c"), "toy")
    metrics = evaluate_model(model, data, (12, 16, 3), batch_size=16, tta="flip_crop")
    wrapped = np.argmax(tta.with_tta(model, "flip_crop").predict(x.astype("float32"), verbose=0), -1)
    assert metrics["tta_accuracy"]["flip_crop"] == pytest.approx(np.mean(wrapped == data.labels))
    assert metrics["accuracy"] == pytest.approx(np.mean(np.argmax(model.predict(x.astype("float32"), verbose=0), -1)
                                                        == data.labels))
    assert set(metrics["per_class"]) == {"a", "b", "c", "macro avg"}


def test_tta_refuses_what_it_cannot_take():
    inputs = keras.Input((None, None, 3))
    any_size = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(InvalidArgumentError, match=r"fixed input size"):
        tta.with_tta(any_size, "flip")
    with pytest.raises(InvalidArgumentError, match=r"Unknown test-time augmentation 'mirror'.*flip or flip_crop"):
        tta.with_tta(small_classifier(), "mirror")
    flat = keras.Input((8,))
    with pytest.raises(InvalidArgumentError, match=r"one image input"):
        tta.with_tta(keras.Model(flat, keras.layers.Dense(2)(flat)), "flip")


def test_per_class_report_is_precision_recall_and_f1_by_their_definitions():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    predicted = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 0])
    result = report.per_class_report(true, predicted, ["a", "b", "c", "d"])
    for index, name in enumerate("abcd"):
        tp = np.sum((predicted == index) & (true == index))
        precision = tp / max(np.sum(predicted == index), 1)
        recall = tp / np.sum(true == index)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert result[name] == pytest.approx({"precision": precision, "recall": recall, "f1": f1,
                                              "support": np.sum(true == index)})
    assert result["macro avg"]["recall"] == pytest.approx(np.mean([2 / 3, 1 / 2, 3 / 4, 0]))
    table = report.format_report(result)
    assert table.splitlines()[0].split() == ["class", "precision", "recall", "f1", "images"]
    assert "macro avg" in table.splitlines()[-1]


def test_balanced_class_weights_make_every_class_weigh_the_same():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 5)
    weights = report.class_weights(labels, 4, "balanced")
    counts = np.bincount(labels, minlength=4)
    assert [weights[c] * counts[c] for c in range(3)] == pytest.approx([15.0] * 3)  # n / n_classes each
    assert weights[3] == 1.0  # no training images: never seen, weight left alone
    assert report.class_weights(labels, 4, None) is None
    with pytest.raises(InvalidArgumentError, match=r"Unknown class weighting 'equal'.*balanced"):
        report.check_class_weight("equal")


def test_fine_tuning_batches_carry_the_class_weights_and_mixup_blends_rows_and_targets():
    from kcnn.training.finetune import _epoch_batches

    inputs = np.arange(12, dtype="float32").reshape(6, 2)
    targets = keras.utils.to_categorical([0, 0, 0, 0, 1, 1], 2)
    weights = {0: 0.75, 1: 1.5}
    batches = list(_epoch_batches(inputs, targets, 4, (0, 0), 0, 1, class_weight=weights))
    for x, y, w in batches:
        np.testing.assert_allclose(w, [weights[c] for c in np.argmax(y, -1)])
    mixed = list(_epoch_batches(inputs, targets, 6, (0, 0), 0, 1, mixup=0.4))
    (x, y), = mixed
    assert not np.allclose(x, inputs[np.argsort(x[:, 0])])  # blended: rows between the originals
    np.testing.assert_allclose(y.sum(-1), 1.0)
    np.testing.assert_allclose(x[:, 1] - x[:, 0], 1.0, rtol=1e-5)  # a convex blend of rows keeps what every row shares
    assert list(_epoch_batches(inputs, targets, 6, (0, 0), 0, 1, mixup=0.4))[0][0] == pytest.approx(x)  # resumable


def test_an_imbalanced_training_set_gets_one_line_naming_its_extreme_classes(capsys):
    assert report.warn_if_imbalanced(np.array([0] * 9 + [1] * 3), ["cat", "dog"]) is None  # 3x: not above
    line = report.warn_if_imbalanced(np.array([0] * 10 + [1] * 3 + [2] * 5), ["cat", "dog", "fox"])
    assert line == capsys.readouterr().err.strip()
    assert "'cat' has 10" in line and "'dog' 3" in line and "--class-weight balanced" in line
    assert "\n" not in line


def test_a_train_run_records_tta_and_per_class_figures_and_evaluate_adds_another_mode(tmp_path, capsys):
    from kcnn.config import TrainConfig
    from kcnn.training.evaluate import evaluate_run
    from kcnn.training.train import train

    run = train(TrainConfig(dataset="digits", arch="lenet5", image_size=32, epochs=1, limit=128, batch_size=64,
                            tta="flip", class_weight="balanced", output_dir=str(tmp_path / "run"), verbose=1))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["tta_accuracy"]) == {"flip"} and 0 <= metrics["tta_accuracy"]["flip"] <= 1
    assert metrics["per_class"]["macro avg"]["support"] == metrics["images"]
    assert len(metrics["per_class"]) == 11
    printed = capsys.readouterr().out
    assert "with test-time flip" in printed and "macro avg" in printed
    again = evaluate_run(run.directory, tta="flip_crop")
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["tta_accuracy"] == {"flip": metrics["tta_accuracy"]["flip"],
                                        "flip_crop": again["tta_accuracy"]["flip_crop"]}
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert {k: v for k, v in recorded.items() if k != "tta_accuracy"} == \
        {k: v for k, v in metrics.items() if k != "tta_accuracy"}  # nothing else in the file changed


def test_extra_training_views_are_shifted_mirrored_copies_drawn_from_the_seed():
    from kcnn.config import FinetuneConfig
    from kcnn.data.views import training_views

    rng = np.random.default_rng(0)
    data = ImageData(rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), np.arange(6) % 2, ("a", "b"), "toy")
    config = FinetuneConfig(extra_views=2, seed=4)
    images, labels, copies = training_views(data, flip=config.flip, extra_views=config.extra_views, seed=config.seed)
    assert copies == 4 and images.shape == (24, 16, 16, 3)
    np.testing.assert_array_equal(labels, np.tile(data.labels, 4))
    np.testing.assert_array_equal(images[6:12], data.images[:, :, ::-1])
    padded = np.pad(data.images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")  # 1/8 of 16 pixels
    for row in range(12, 24):
        original = padded[row % 6]
        crops = [original[top:top + 16, left:left + 16] for top in range(5) for left in range(5)]
        assert any(np.array_equal(images[row], c) or np.array_equal(images[row], c[:, ::-1]) for c in crops)
    again, _, _ = training_views(data, flip=config.flip, extra_views=config.extra_views, seed=config.seed)
    np.testing.assert_array_equal(again, images)  # drawn from the seed: a resumed run gets the same views
    assert not np.array_equal(training_views(data, flip=True, extra_views=2, seed=5)[0], images)


def test_layer_decay_gives_each_block_its_rate_and_the_plateau_callback_scales_them_all():
    from kcnn.config import FinetuneConfig
    from kcnn.training.finetune import _finetune_optimizer

    # three blocks ending in Add layers (the cut points), then a dense head on top
    inputs = keras.Input((4,))
    x = inputs
    for block in range(3):
        y = keras.layers.Dense(4, name=f"block{block}_dense")(x)
        x = keras.layers.Add(name=f"block{block}_add")([x, y])
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    optimizer = _finetune_optimizer(FinetuneConfig(layer_decay=0.5, finetune_learning_rate=0.4), model)
    model.compile(optimizer=optimizer, loss="mse")
    before = {w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_weights}
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"), epochs=1, batch_size=8, verbose=0)
    rates = {}
    for optimizer_part in optimizer.optimizers:
        for variable in optimizer_part._trainable_variables:
            rates[variable.path] = float(optimizer_part.learning_rate)
    # what follows the last block end (block2_add) learns at the rate, each block below at half the one above
    assert rates["head/kernel"] == pytest.approx(0.4) and rates["block2_dense/kernel"] == pytest.approx(0.2)
    assert rates["block1_dense/kernel"] == pytest.approx(0.1) and rates["block0_dense/kernel"] == pytest.approx(0.05)
    # Adam's first step moves every weight by about its rate
    for path, value in before.items():
        step = np.abs(keras.ops.convert_to_numpy(next(w for w in model.trainable_weights if w.path == path)) - value)
        assert step.max() == pytest.approx(rates[path], rel=1e-3), path
    optimizer.learning_rate = 0.08  # what ReduceLROnPlateau does, factor 0.2
    assert sorted(float(o.learning_rate) for o in optimizer.optimizers) == pytest.approx([0.01, 0.02, 0.04, 0.08])
    assert float(_finetune_optimizer(FinetuneConfig(), model).learning_rate) == pytest.approx(1e-4)  # off: one Adam
    with pytest.raises(InvalidArgumentError, match=r"layer_decay must be a number in \(0, 1\]"):
        FinetuneConfig(layer_decay=1.5).check()
