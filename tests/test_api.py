"""The public API: build, list_models, argument checks, data formats."""

import os

import keras
import numpy as np
import pytest

import kcnn
from kcnn.backends.initializers import weightless_scope


def test_list_models_wildcards_and_entries():
    assert [m.name for m in kcnn.list_models("resnet*")] == [
        "resnet101", "resnet101_torchvision", "resnet152", "resnet152_torchvision", "resnet18", "resnet34",
        "resnet50", "resnet50_torchvision"]
    assert [m.name for m in kcnn.list_models("vgg1?")] == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert kcnn.list_models("no-such-*") == []
    info = kcnn.get_model_info("lenet5")
    assert info.default_input_shape == (32, 32, 1)
    assert info.reference_params == 61_706
    assert len(kcnn.list_models()) == 48


def test_unknown_name_suggests_close_matches():
    with pytest.raises(kcnn.UnknownModelError, match=r"Unknown model 'resnt50'.*Did you mean: resnet50"):
        kcnn.build("resnt50")
    with pytest.raises(kcnn.KcnnError):
        kcnn.build(50)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_num_classes_must_be_a_positive_whole_number(value):
    with pytest.raises(kcnn.InvalidArgumentError, match=rf"num_classes.*Received: num_classes={value!r}"):
        kcnn.build("lenet5", num_classes=value)


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 0), (32.0, 32, 1), "32x32", (32, 32, 1, 1)])
def test_input_shape_must_be_three_positive_integers(shape):
    with pytest.raises(kcnn.InvalidArgumentError, match="input_shape must be three positive whole numbers"):
        kcnn.build("lenet5", input_shape=shape)


def test_conflicting_and_unknown_arguments_raise():
    with pytest.raises(kcnn.InvalidArgumentError, match="pooling only applies.*include_top=False"):
        kcnn.build("resnet18", pooling="avg")
    with pytest.raises(kcnn.InvalidArgumentError, match="pooling must be None, 'avg' or 'max'"):
        kcnn.build("resnet18", include_top=False, pooling="mean")
    with pytest.raises(kcnn.InvalidArgumentError, match="does not take.*Received: dropuot=0.3"):
        kcnn.build("vgg16", dropuot=0.3)
    with pytest.raises(kcnn.InvalidArgumentError, match="classifier_activation"):
        kcnn.build("lenet5", classifier_activation="softmaxx")
    with pytest.raises(kcnn.InvalidArgumentError, match="shortcut must be"):
        kcnn.build("cifar_resnet20", shortcut="B")
    with pytest.raises(kcnn.InvalidArgumentError, match="No weights file"):
        kcnn.build("lenet5", weights="/no/such/file.weights.h5")


def test_default_output_is_logits_and_softmax_is_one_argument_away():
    images = np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    logits_model = kcnn.build("lenet5", input_shape=(28, 28, 1))
    assert logits_model.get_layer("predictions").activation is keras.activations.linear
    probabilities_model = kcnn.build("lenet5", input_shape=(28, 28, 1), classifier_activation="softmax")
    probabilities_model.set_weights(logits_model.get_weights())
    logits = keras.ops.convert_to_numpy(logits_model(images))
    probabilities = keras.ops.convert_to_numpy(probabilities_model(images))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probabilities, keras.ops.convert_to_numpy(keras.ops.softmax(logits)), rtol=1e-5)


def test_keras_model_name_is_an_ordinary_argument():
    assert kcnn.build("lenet5", name="my_lenet").name == "my_lenet"
    assert kcnn.build("lenet5").name == "lenet5"


def test_features_with_and_without_pooling():
    features = kcnn.build("resnet18", include_top=False, input_shape=(64, 64, 3))
    assert features.output_shape == (None, 2, 2, 512)
    pooled = kcnn.build("resnet18", include_top=False, pooling="max", input_shape=(64, 64, 3))
    assert pooled.output_shape == (None, 512)
    tokens = kcnn.build("convvit_cifar", include_top=False, pooling="avg")
    assert tokens.output_shape == (None, 192)


def test_grayscale_and_other_channel_counts():
    with weightless_scope():  # shapes only: allocating ResNet-50's weights on JAX costs half a minute
        assert kcnn.build("resnet50", input_shape=(32, 32, 1), num_classes=10).output_shape == (None, 10)
        assert kcnn.build("mobilenet_v2", input_shape=(32, 32, 4), num_classes=3).output_shape == (None, 3)


def test_lenet5_pads_mnist_digits_and_keeps_its_count():
    model = kcnn.build("lenet5", input_shape=(28, 28, 1))
    assert model.count_params() == 61_706
    assert model.get_layer("pad").output.shape[1:3] == (32, 32)


def test_googlenet_auxiliary_heads_for_training():
    with weightless_scope():
        model = kcnn.build("googlenet", aux_logits=True)
    assert [tuple(o.shape) for o in model.outputs] == [(None, 1000)] * 3
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # 6,624,904 + two heads of conv 1x1 (512 or 528 -> 128) + BN + 2048->1024 + 1024->1000
    assert trainable == 13_004_888


def test_cifar_counts_round_to_the_papers_table():
    millions = {d: round(kcnn.get_model_info(f"cifar_resnet{d}").reference_params / 1e6, 2) for d in (20, 56, 110)}
    assert millions == {20: 0.27, 56: 0.85, 110: 1.73}  # the paper: 0.27M, 0.85M, 1.7M
    for depth in (20, 32, 44, 56, 110):
        assert (kcnn.get_model_info(f"plain{depth}").reference_params
                == kcnn.get_model_info(f"cifar_resnet{depth}").reference_params)
    with weightless_scope():
        assert "add" not in {type(l).__name__.lower() for l in kcnn.build("plain20").layers}


def test_weights_file_round_trip(tmp_path):
    model = kcnn.build("cifar_resnet20", num_classes=5)
    path = str(tmp_path / "resnet20.weights.h5")
    model.save_weights(path)
    again = kcnn.build("cifar_resnet20", num_classes=5, weights=path)
    images = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)),
                                  keras.ops.convert_to_numpy(again(images)))
    with pytest.raises(kcnn.KcnnError, match="does not fit cifar_resnet20"):
        kcnn.build("cifar_resnet20", num_classes=10, weights=path)


# Families with data-format-sensitive parts: BN and concat axes, channel
# padding, Flatten order, the transformer's token reshape. (GoogLeNet's
# concatenations are SqueezeNet's Fire concatenations again, at 100 s more.)
CHANNELS_FIRST_MODELS = ["lenet5", "alexnet", "resnet18", "cifar_resnet20", "squeezenet1_1",
                         "mobilenet_v2", "convvit_cifar"]


@pytest.mark.parametrize("name", CHANNELS_FIRST_MODELS)
def test_channels_first_gives_the_same_outputs(name):
    info = kcnn.get_model_info(name)
    shape = info.test_input_shape
    images = np.random.default_rng(2).uniform(0, 1, (2,) + shape).astype("float32")
    last = kcnn.build(name, input_shape=shape)
    keras.config.set_image_data_format("channels_first")
    try:
        first = kcnn.build(name, input_shape=(shape[2], shape[0], shape[1]))
    finally:
        keras.config.set_image_data_format("channels_last")
    first.set_weights(last.get_weights())  # kernels have the same layout in both formats
    expected = keras.ops.convert_to_numpy(last(images))
    actual = keras.ops.convert_to_numpy(first(np.transpose(images, (0, 3, 1, 2))))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_airbench_whitening_layer_whitens_patches():
    import keras
    import numpy as np

    import kcnn.data
    from kcnn.models import airbench

    images = kcnn.data.load("cifar10_sample", "train").images[:500].astype("float64")
    images = (images - images.mean(axis=(0, 1, 2))) / images.std(axis=(0, 1, 2))
    model = kcnn.build("airbench")
    airbench.init_whitening(model, images)
    whiten = model.get_layer("whiten")
    assert not whiten.trainable and len(model.trainable_weights) < len(model.weights)
    probe = keras.Model(model.inputs, whiten.output)
    responses = np.asarray(probe(images.astype("float32"))).reshape(-1, whiten.filters)[:, :12]
    covariance = np.cov(responses, rowvar=False)
    # decorrelated, unit variance (up to the epsilon that damps the weakest directions)
    np.testing.assert_allclose(np.diag(covariance)[:6], 1.0, atol=0.1)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.1


def test_a_model_file_loads_without_initializer_draws_to_what_keras_loads(tmp_path, monkeypatch):
    """kcnn.runs.modelfile.load_model (evaluate, predict, export, load_run) skips on JAX the random draws a file's
    values replace, and gives what keras.saving.load_model gives: every weight, batch-norm statistics, a
    dropout's seed made as Keras makes it, and a compiled file's optimizer state (loaded the plain way)."""
    from helpers import deterministic_weights
    from kcnn.runs.modelfile import load_model

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    deterministic_weights(model)
    images = np.random.default_rng(0).uniform(0, 1, (3, 12, 12, 3)).astype("float32")
    uncompiled = tmp_path / "plain.keras"
    model.save(uncompiled)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, np.arange(3), epochs=1, verbose=0)
    compiled = tmp_path / "compiled.keras"
    model.save(compiled)

    draws = []
    original = keras.initializers.GlorotUniform.__call__
    monkeypatch.setattr(keras.initializers.GlorotUniform, "__call__",
                        lambda self, *args, **kwargs: draws.append(1) or original(self, *args, **kwargs))
    for path in (uncompiled, compiled):
        draws.clear()
        loaded = load_model(str(path))
        if keras.backend.backend() == "jax" and path == uncompiled:
            assert not draws, "the kernels' initializers ran although the file replaces their values"
        reference = keras.saving.load_model(path)
        assert draws, "the reference load draws (so the count above could fail)"
        pairs = list(zip(loaded.weights, reference.weights))
        if path == compiled:
            pairs += list(zip(loaded.optimizer.variables, reference.optimizer.variables))
            assert int(loaded.optimizer.iterations) == 1
        assert len(pairs) == len(reference.weights) + (len(reference.optimizer.variables) if path == compiled else 0)
        for mine, theirs in pairs:
            if "seed_generator" in theirs.path:  # a fresh random seed per model made, as Keras does
                assert keras.ops.convert_to_numpy(mine).shape == keras.ops.convert_to_numpy(theirs).shape
                continue
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs),
                                          err_msg=theirs.path)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images, training=False)),
                                      keras.ops.convert_to_numpy(reference(images, training=False)))


def test_a_loaded_model_compiles_as_auto_means_on_this_backend(tmp_path):
    """Keras saves the jit_compile its "auto" resolved to where the model was trained (True on JAX and
    TensorFlow, False on torch); kcnn's loader resolves "auto" again where it runs, so that a JAX run
    evaluated on torch is not put through torch.compile, nor a torch run on JAX run op by op."""
    from kcnn.runs.modelfile import load_model

    here = keras.backend.backend() != "torch"  # "auto" on this backend, for a model XLA supports
    model = kcnn.build("lenet5", num_classes=3, input_shape=(32, 32, 1))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=not here)  # the other
    model.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras").jit_compile == (not here)  # Keras keeps it
    assert load_model(str(tmp_path / "model.keras")).jit_compile == here


# ---- the workflows as functions: kcnn.train, evaluate, predict, explain, export, load_run, finetune -------------

DIGITS_RUN = dict(dataset="digits", arch="lenet5", image_size=32, epochs=1, limit=128, batch_size=64, verbose=0)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One small run that every test of this section shares (a second, seconds long)."""
    return kcnn.train(**DIGITS_RUN, output_dir=str(tmp_path_factory.mktemp("api") / "run"))


def test_train_returns_a_run_with_its_model_metrics_history_and_classes(digits_run):
    run = digits_run
    assert isinstance(run, kcnn.api.Run) and os.path.isfile(os.path.join(run.path, "model.keras"))
    assert run.class_names == tuple("0123456789") and run.model.output_shape == (None, 10)
    assert 0 <= run.metrics["accuracy"] <= 1 and run.metrics["epochs_run"] == 1
    assert set(run.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"} and len(run.history["loss"]) == 1
    assert run.config.arch == "lenet5" and run.directory == run.path
    again = kcnn.load_run(run.path)  # the same object for a finished folder
    assert (again.path, again.class_names, again.metrics["accuracy"]) == (run.path, run.class_names,
                                                                         run.metrics["accuracy"])
    assert again.history == run.history and kcnn.load_run(again) is again


def test_evaluate_gives_an_evaluation(digits_run):
    evaluation = kcnn.evaluate(digits_run.path)
    assert evaluation.accuracy == pytest.approx(digits_run.metrics["accuracy"], abs=1e-6)
    assert evaluation.split == "test" and evaluation.images == len(evaluation.predicted)
    assert set(evaluation.per_class_accuracy) <= set(digits_run.class_names) and evaluation.tta_accuracy == {}
    assert str(evaluation).startswith(f"test accuracy {evaluation.accuracy:.4f} on {evaluation.images} images")


def test_predict_takes_paths_pillow_images_and_arrays(digits_run, tmp_path):
    from PIL import Image

    from kcnn.data import load

    images = load("digits", "test").images[:3]
    path = str(tmp_path / "digit.png")
    Image.fromarray(images[0][..., 0]).save(path)
    predictions = kcnn.predict(digits_run, [path, Image.fromarray(images[0][..., 0]), images[0]], top=3)
    assert [p.image for p in predictions[:1]] == [path] and len(predictions) == 3
    for prediction in predictions:
        assert len(prediction.top) == 3 and prediction.class_name in digits_run.class_names
        assert prediction.top[0] == (prediction.class_name, prediction.probability)
        assert prediction.top[0][1] >= prediction.top[1][1] >= prediction.top[2][1]
    same = [[name for name, _ in p.top] for p in predictions], [[q for _, q in p.top] for p in predictions]
    assert same[0][0] == same[0][1] == same[0][2]  # the file, its Pillow image and its array: one answer
    np.testing.assert_allclose([same[1][0], same[1][1]], [same[1][2]] * 2, rtol=1e-5)
    batch = kcnn.predict(digits_run.path, images)  # a 4-D array: a batch; one image: a list of one
    assert len(batch) == 3 and len(kcnn.predict(digits_run, path)) == 1
    alone = kcnn.predict(digits_run.model, images[:1], class_names=digits_run.class_names)[0]  # a Keras model
    assert alone.class_name == batch[0].class_name and alone.probability == pytest.approx(batch[0].probability)
    with pytest.raises(kcnn.InvalidArgumentError, match="pass class_names"):
        kcnn.predict(digits_run.model, images)
    with pytest.raises(kcnn.KcnnError, match="There is no run folder"):
        kcnn.predict(str(tmp_path / "no_run"), images)


def test_explain_writes_an_overlay_per_image(digits_run, tmp_path):
    from kcnn.data import load

    images = load("digits", "test").images[:2]
    explanations = kcnn.explain(digits_run, list(images), output=str(tmp_path / "explain"), class_name="3")
    assert [os.path.basename(e.overlay) for e in explanations] == ["image1_gradcam.png", "image2_gradcam.png"]
    assert all(os.path.isfile(e.overlay) and e.explained == "3" and e.class_name in digits_run.class_names
               for e in explanations)


def test_export_as_keras_and_its_run_loads(digits_run, tmp_path):
    written = kcnn.export(digits_run, format="keras", output=str(tmp_path / "exported"), verbose=False)
    assert written == str(tmp_path / "exported" / "model.keras") and os.path.isfile(written)


def test_an_unknown_setting_names_the_closest_one(tmp_path):
    with pytest.raises(kcnn.InvalidArgumentError, match=r"kcnn.train has no setting 'epoch' \(did you mean epochs\?\)"):
        kcnn.train(dataset="digits", epoch=1, output_dir=str(tmp_path))
    with pytest.raises(kcnn.InvalidArgumentError, match=r"kcnn.finetune has no setting 'head_epoch' .*head_epochs"):
        kcnn.finetune("cifar10_sample", head_epoch=1, output_dir=str(tmp_path))
    with pytest.raises(kcnn.InvalidArgumentError, match="learning_rate must be a number above 0"):
        kcnn.train(dataset="digits", lr=0, output_dir=str(tmp_path))  # the flag's short form (--lr) is a keyword too
    assert os.listdir(tmp_path) == []


def test_finetune_takes_the_dataset_first(tmp_path):
    run = kcnn.finetune("cifar10_sample", limit=64, head_epochs=1, finetune_epochs=0, export=False, image_size=32,
                        tta=None, verbose=0, output_dir=str(tmp_path / "run"))
    assert isinstance(run, kcnn.api.Run) and run.config.backbone == "efficientnet_lite0"
    assert len(run.class_names) == 10 and run.metrics["train_images"] == 64 and len(run.history["loss"]) == 1
    assert run.metrics["validation_images"] == 6  # the epochs' val_accuracy: 10% of the training images
    logs = [name for name in run.folder.listed() if name.startswith("logs/")]
    assert logs and all(name.startswith("logs/head/") for name in logs)  # TensorBoard, in the manifest
