"""Named pretrained weights: the real EfficientNet-Lite0 ImageNet checkpoint
on real photos on every backend, the official Keras file layout loaded
offline, fresh heads, grey inputs, preprocessing inside, and bad weights."""

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys

import keras
import numpy as np
import pytest

import kcnn
from kcnn import weights as named_weights
from kcnn.weights import WeightsError

from helpers import BACKENDS, TESTS_DIR, worker, _tail, run_python

import pretrained_worker  # noqa: E402


def test_real_efficientnet_lite0_classifies_real_photos_identically_on_every_backend(tmp_path):
    processes = {b: run_python([worker("pretrained_worker")], b, str(tmp_path / f"{b}.log"))
                 for b in BACKENDS}
    results = {}
    for backend, process in processes.items():
        assert process.wait(timeout=600) == 0, _tail(str(tmp_path / f"{backend}.log"))
        line = [l for l in open(tmp_path / f"{backend}.log") if l.startswith("RESULT ")][-1]
        results[backend] = json.loads(line[len("RESULT "):])["top5"]
    cat, coffee = results["tensorflow"]
    assert 281 <= cat[0][0] <= 285 and cat[0][2] > 0.5  # chelsea: a cat (Egyptian cat, 0.79)
    assert coffee[0][0] in (967, 968) and coffee[0][2] > 0.5  # coffee: espresso (0.91)
    for backend in BACKENDS:
        for photo, reference in zip(results[backend], results["tensorflow"]):
            assert [i for i, _, _ in photo] == [i for i, _, _ in reference], backend
            np.testing.assert_allclose([p for _, _, p in photo], [p for _, _, p in reference], atol=1e-4)


def test_preprocessing_is_inside_and_can_be_left_out():
    raw = pretrained_worker.photos(96)
    inside = kcnn.build("efficientnet_lite0", weights="imagenet", input_shape=(96, 96, 3))
    bare = kcnn.build("efficientnet_lite0", weights="imagenet", input_shape=(96, 96, 3), include_preprocessing=False)
    assert inside.layers[1].name == "preprocessing" and inside.name == "efficientnet_lite0"
    assert not any(layer.name == "preprocessing" for layer in bare.layers)
    expected = keras.ops.convert_to_numpy(bare((raw - 127.0) / 128.0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inside(raw)), expected, rtol=1e-4, atol=1e-4)


def test_other_classes_get_a_fresh_head_on_the_pretrained_backbone_and_grey_sums_the_kernels():
    full = kcnn.build("efficientnet_lite0", weights="imagenet", input_shape=(64, 64, 3))
    five = kcnn.build("efficientnet_lite0", weights="imagenet", num_classes=5, input_shape=(64, 64, 1))
    assert five.output_shape == (None, 5)
    np.testing.assert_array_equal(five.get_layer("conv_stem").get_weights()[0],
                                  full.get_layer("conv_stem").get_weights()[0].sum(axis=2, keepdims=True))
    for name in ("blocks_15_project_conv", "bn1", "conv_head"):
        for a, b in zip(five.get_layer(name).get_weights(), full.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    features = kcnn.build("efficientnet_lite0", weights="imagenet", include_top=False, pooling="avg",
                          input_shape=(64, 64, 3))
    assert features.output_shape == (None, 1280)


def test_pretrained_models_are_listed_with_what_travels_with_them():
    names = [info.name for info in kcnn.list_models(pretrained=True)]
    assert "efficientnet_lite0" in names and "resnet50" in names and "lenet5" not in names
    source = named_weights.get_source("efficientnet_lite0", "imagenet")
    assert source.class_names[281] == "tabby" and len(source.class_names) == 1000
    assert source.input_size == 224 and source.file_hash and source.license and source.top1


def _write_keras_application_file(application, path):
    """The official files' layout: Keras' legacy HDF5 weights (layer_names, weight_names per layer)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, application)
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home"


def test_official_keras_file_layout_loads_offline_with_identical_outputs(keras_home, monkeypatch):
    # ResNet-50's official file is "caffe" preprocessed (BGR, mean subtracted): the hardest case.
    application = keras.applications.ResNet50(weights=None, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in application.layers:  # non-trivial batch-norm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma, beta, rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, var.shape)])
    source = named_weights.get_source("resnet50", "imagenet")
    md5 = _write_keras_application_file(application, str(keras_home / "models" / source.file_name))
    # The bytes differ from Google's file, so the test stands in its checksum; the code path is the real one.
    monkeypatch.setitem(named_weights.SOURCES, ("resnet50", "imagenet"),
                        dataclasses.replace(source, file_hash=md5))
    model = kcnn.build("resnet50", weights="imagenet")
    raw = pretrained_worker.photos(224)
    expected = keras.ops.convert_to_numpy(application(keras.applications.resnet50.preprocess_input(raw.copy())))
    actual = keras.ops.convert_to_numpy(model(raw))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_file_that_does_not_match_the_published_checksum_is_refused_and_kept(keras_home):
    source = named_weights.get_source("resnet50", "imagenet")
    path = keras_home / "models" / source.file_name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the official file")
    with pytest.raises(WeightsError, match="does not match the published checksum.*Delete it"):
        kcnn.build("resnet50", weights="imagenet")
    assert path.read_bytes() == b"not the official file"


def test_offline_download_names_the_url_and_where_to_put_the_file(keras_home, monkeypatch):
    source = named_weights.get_source("densenet121", "imagenet")
    monkeypatch.setitem(named_weights.SOURCES, ("densenet121", "imagenet"),
                        dataclasses.replace(source, origin="http://127.0.0.1:9/densenet121.h5"))  # nothing listens
    with pytest.raises(WeightsError, match=r"Could not download .*when offline, copy the file to .*densenet121"):
        kcnn.build("densenet121", weights="imagenet")
    assert not (keras_home / "models" / source.file_name).exists()


@pytest.mark.parametrize("arch, weights, message", [
    ("lenet5", "imagenet", "lenet5 has no 'imagenet' weights; the architectures that have them are densenet121"),
    ("resnet50", "imagenet21k", "Unknown weights 'imagenet21k'"),
    ("resnet50", "/no/such/file.h5", "No weights file at"),
])
def test_bad_weights_names(arch, weights, message):
    with pytest.raises(kcnn.KcnnError, match=message):
        kcnn.build(arch, weights=weights)


def test_state_dict_for_another_architecture_or_truncated_is_refused(tmp_path):
    import torch

    from kcnn.weights import loading

    model = kcnn.build("efficientnet_lite0", input_shape=(32, 32, 3))
    before = [w.copy() for w in model.get_weights()]
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(WeightsError, match="does not fit efficientnet_lite0.*another architecture"):
        loading.load_state_dict(model, loading.read_state_dict(str(wrong)), rename=lambda k: k)
    source = named_weights.get_source("efficientnet_lite0", "imagenet")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(source.path(), "rb").read()[:100_000])
    with pytest.raises(WeightsError, match="not a readable PyTorch state dict"):
        loading.read_state_dict(str(truncated))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # nothing loaded half-way


def _torch_models():
    """bench/torch_models.py, imported from its file (bench/ stays off sys.path: its
    common.py, mnist.py, ... would shadow other imports later in this process)."""
    if "torch_models" not in sys.modules:
        path = os.path.join(os.path.dirname(TESTS_DIR), "bench", "torch_models.py")
        spec = importlib.util.spec_from_file_location("torch_models", path)
        sys.modules["torch_models"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["torch_models"]


# kcnn architecture -> (the torch module of torchvision's layout that writes the checkpoint, input size).
# Sizes are small and odd where it matters (strided padding, ceil-mode pools, adaptive pooling).
TORCHVISION_LAYOUTS = {
    "resnet18": (lambda tm: tm.ResNet((2, 2, 2, 2), num_classes=10), 64),
    "vgg11_bn": (lambda tm: tm.VGG((1, 1, 2, 2, 2), batch_norm=True, num_classes=10, pooled_size=2), 64),
    "vgg16": (lambda tm: tm.VGG((2, 2, 3, 3, 3), num_classes=10, pooled_size=2), 64),
    "alexnet_torchvision": (lambda tm: tm.AlexNet(num_classes=10), 231),
    "densenet121": (lambda tm: tm.DenseNet((6, 12, 24, 16), num_classes=10), 64),
    "mobilenet_v2_torchvision": (lambda tm: tm.MobileNetV2(num_classes=10), 72),
    "googlenet": (lambda tm: tm.GoogLeNet(num_classes=10), 75),
    "squeezenet1_1": (lambda tm: tm.SqueezeNet(num_classes=10), 65),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_LAYOUTS))
def test_a_torchvision_layout_checkpoint_converts_with_identical_outputs(arch, tmp_path):
    import torch

    make, size = TORCHVISION_LAYOUTS[arch]
    torch.manual_seed(0)
    reference = _torch_models().randomize_batch_norm(make(_torch_models())).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)  # what a torchvision user's checkpoint holds
    model = kcnn.build(arch, num_classes=10, input_shape=(size, size, 3), weights=str(path))
    images = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected, rtol=1e-4, atol=1e-4)


def test_torch_checkpoints_for_another_architecture_are_refused(tmp_path):
    import torch

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(_torch_models().ResNet((2, 2, 2, 2), num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        kcnn.build("resnet34", num_classes=10, input_shape=(64, 64, 3), weights=str(path))
    with pytest.raises(WeightsError, match="kcnn converts PyTorch checkpoints for .*lenet5 is not one of them"):
        kcnn.build("lenet5", weights=str(path))
    with pytest.raises(WeightsError, match="build 'mobilenet_v2_torchvision'"):
        kcnn.build("mobilenet_v2", weights=str(path))
