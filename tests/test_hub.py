"""keras-hub presets as backbones (`kcnn.build("hub:...")`), offline: a tiny
ResNet with random weights saved as a local preset stands in for a Kaggle one,
and the network calls are mocked."""

import subprocess
import sys
import time

import keras
import keras_hub
import numpy as np
import pytest
import requests

import kcnn
from kcnn.weights import WeightsError

SCALE = (1 / 58.4, 1 / 57.1, 1 / 57.4)  # ImageNet's std and mean, as keras-hub's converters store them
OFFSET = (-2.12, -2.04, -1.80)
SIZE = 64


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A local preset as keras-hub's Kaggle presets are laid out (backbone,
    image converter, classifier task), and the backbone it was saved from."""
    folder = tmp_path_factory.mktemp("hub") / "tiny_resnet"
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block")
    converter = keras_hub.layers.ResNetImageConverter(image_size=(SIZE, SIZE), scale=SCALE, offset=OFFSET)
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone, num_classes=2, preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(converter))
    classifier.save_to_preset(str(folder))
    return str(folder), backbone


def _images(n=3):
    return np.random.default_rng(0).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def test_preset_gives_a_flat_classifier_with_fresh_logits_head(preset):
    folder, _ = preset
    model = kcnn.build("hub:" + folder, num_classes=5, input_shape=(SIZE, SIZE, 3))
    assert model.name == "tiny_resnet"
    assert model.output_shape == (None, 5)
    assert model.predict(_images(), verbose=0).shape == (3, 5)
    assert model.layers[1].name == "preprocessing" and model.layers[-1].name == "predictions"
    assert model.get_layer("predictions").activation is keras.activations.linear
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # one graph, no nested backbone
    # Without input_shape: the converter's image size.
    assert kcnn.build("hub:" + folder, include_top=False).input_shape == (None, SIZE, SIZE, 3)


def test_features_are_the_saved_backbone_on_rescaled_pixels(preset):
    folder, backbone = preset
    images = _images()
    by_hand = keras.ops.convert_to_numpy(backbone(images * np.float32(SCALE) + np.float32(OFFSET)))
    feature_map = kcnn.build("hub:" + folder, include_top=False, pooling=None, input_shape=(SIZE, SIZE, 3))
    np.testing.assert_allclose(feature_map.predict(images, verbose=0), by_hand, rtol=1e-5, atol=1e-5)
    pooled = kcnn.build("hub:" + folder, include_top=False, input_shape=(SIZE, SIZE, 3))
    np.testing.assert_allclose(pooled.predict(images, verbose=0), by_hand.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    raw = kcnn.build("hub:" + folder, include_top=False, pooling=None, include_preprocessing=False)
    assert "preprocessing" not in [layer.name for layer in raw.layers]


def test_saved_model_loads_with_plain_keras_and_importing_kcnn_leaves_keras_hub_out(preset, tmp_path):
    folder, _ = preset
    model = kcnn.build("hub:" + folder, num_classes=5, input_shape=(SIZE, SIZE, 3), classifier_activation="softmax")
    images = _images()
    np.save(tmp_path / "images.npy", images)
    model.save(tmp_path / "model.keras")
    # A fresh process: a ResNet backbone is built-in Keras layers only, so neither kcnn nor keras_hub is needed.
    script = (
        "import sys, numpy as np, keras\n"
        f"model = keras.saving.load_model({str(tmp_path / 'model.keras')!r})\n"
        f"np.save({str(tmp_path / 'loaded.npy')!r}, model.predict(np.load({str(tmp_path / 'images.npy')!r}), "
        "verbose=0))\n"
        "import kcnn\n"
        "assert 'keras_hub' not in sys.modules, 'importing kcnn imported keras_hub'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "loaded.npy"), model.predict(images, verbose=0), rtol=1e-6, atol=1e-6)


def test_a_folder_that_is_not_a_preset_is_named(tmp_path):
    with pytest.raises(WeightsError, match="is not a keras-hub preset folder: it has no config.json"):
        kcnn.build("hub:" + str(tmp_path), num_classes=5)
    with pytest.raises(WeightsError, match="No keras-hub preset folder at"):
        kcnn.build("hub:" + str(tmp_path / "missing"), num_classes=5)


def test_unknown_preset_name_suggests_close_ones_without_the_network():
    suggestion = "Unknown keras-hub preset 'resnet_50_imagnet'.*Did you mean: resnet_50_imagenet"
    with pytest.raises(WeightsError, match=suggestion):
        kcnn.build("hub:resnet_50_imagnet", num_classes=5)


@pytest.mark.parametrize("error", ["connection", "kagglehub"])
def test_offline_kaggle_preset_fails_fast_in_one_sentence(monkeypatch, error):
    import kagglehub
    import kagglehub.exceptions

    def offline(handle, path=None, **kwargs):
        if error == "connection":  # what requests raises without DNS
            raise requests.exceptions.ConnectionError(f"Failed to resolve 'www.kaggle.com' for {handle}")
        raise kagglehub.exceptions.BackendError(f"Kaggle did not answer for {handle}")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    for preset in ("resnet_50_imagenet", "kaggle://someone/nothing/keras/nothing/1"):
        start = time.perf_counter()
        message = rf"Cannot fetch the keras-hub preset '{preset}'.*needs the network"
        with pytest.raises(WeightsError, match=message) as raised:
            kcnn.build("hub:" + preset, num_classes=5)
        assert time.perf_counter() - start < 20  # no retry, no network wait (20 s: the other test process shares the cores)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no kagglehub traceback


def test_kaggle_handle_that_does_not_exist(monkeypatch):
    import kagglehub

    def not_found(handle, path=None, **kwargs):  # keras-hub reads Kaggle's 404 as a missing file
        raise FileNotFoundError(path)

    monkeypatch.setattr(kagglehub, "model_download", not_found)
    with pytest.raises(WeightsError, match="keras-hub cannot load the preset 'kaggle://someone/nothing/keras/x/1'"):
        kcnn.build("hub:kaggle://someone/nothing/keras/x/1", num_classes=5)


def test_missing_keras_hub_says_how_to_install_it(monkeypatch, preset):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` now fails as if not installed
    with pytest.raises(WeightsError, match=r'not installed: pip install "kcnn\[hub\]"'):
        kcnn.build("hub:" + preset[0], num_classes=5)


def test_bad_arguments_raise_before_loading(preset):
    folder, _ = preset
    with pytest.raises(kcnn.InvalidArgumentError, match="pass num_classes"):
        kcnn.build("hub:" + folder)
    with pytest.raises(kcnn.InvalidArgumentError, match="Received: weights='imagenet'"):
        kcnn.build("hub:" + folder, num_classes=5, weights="imagenet")
    with pytest.raises(kcnn.InvalidArgumentError, match="pass pooling='avg' or 'max'"):
        kcnn.build("hub:" + folder, num_classes=5, pooling=None)
    with pytest.raises(kcnn.InvalidArgumentError, match="pooling must be"):
        kcnn.build("hub:" + folder, include_top=False, pooling="mean")
    with pytest.raises(kcnn.InvalidArgumentError, match="takes inputs of shape"):
        kcnn.build("hub:" + folder, num_classes=5, input_shape=(SIZE, SIZE, 1))
    with pytest.raises(kcnn.InvalidArgumentError, match="Name a keras-hub preset"):
        kcnn.build("hub:", num_classes=5)
