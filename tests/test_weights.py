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
from kcnn.weights import decode_predictions
from kcnn.weights import WeightsError

from helpers import BACKENDS, TESTS_DIR, assert_close, deterministic_weights, temper_logits, worker, _tail, run_python

import pretrained_worker  # noqa: E402


# Small torchvision sources checked through the named path on all three backends (every torchvision
# source is checked on the suite's backend by test_torchvision_weights_load_through_the_named_source).
ON_EVERY_BACKEND = (("resnet18", "imagenet"), ("googlenet", "imagenet"), ("squeezenet1_1", "imagenet"),
                    ("mobilenet_v2_torchvision", "imagenet"), ("densenet121", "torchvision"))


def test_real_efficientnet_lite_weights_classify_real_photos_identically_on_every_backend(
        tmp_path, keras_home, monkeypatch):
    expected = {}
    for arch, name in ON_EVERY_BACKEND:  # publisher-layout files in the Keras cache, and torch's logits
        source = named_weights.get_source(arch, name)
        module = torchvision_module(arch)
        write_publisher_file(module, arch, keras_home / "models" / source.file_name)
        expected[f"{arch}:{name}"] = torch_logits(module, pretrained_worker.evaluation_photos(source))
    named = [f"{arch}:{name}" for arch, name in ON_EVERY_BACKEND]
    processes = {b: run_python([worker("pretrained_worker"), str(tmp_path / f"{b}.npz"), *named], b,
                               str(tmp_path / f"{b}.log")) for b in BACKENDS}
    results = {}
    for backend, process in processes.items():
        assert process.wait(timeout=900) == 0, _tail(str(tmp_path / f"{backend}.log"))
        line = [l for l in open(tmp_path / f"{backend}.log") if l.startswith("RESULT ")][-1]
        results[backend] = json.loads(line[len("RESULT "):])["top5"]
        logits = np.load(tmp_path / f"{backend}.npz")
        for key, reference in expected.items():
            np.testing.assert_allclose(logits[key], reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max(),
                                       err_msg=f"{key} on {backend}")
    for arch in pretrained_worker.LITE:  # as a person would: chelsea is a cat, coffee an espresso
        cat, coffee = results["tensorflow"][arch]
        assert 281 <= cat[0][0] <= 285, (arch, cat)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        assert sum(p for i, _, p in cat if 281 <= i <= 285) > 0.6, (arch, cat)
        assert coffee[0][0] == 967 and coffee[0][2] > 0.5, (arch, coffee)  # espresso
        for backend in BACKENDS:
            for photo, reference in zip(results[backend][arch], results["tensorflow"][arch]):
                assert [i for i, _, _ in photo] == [i for i, _, _ in reference], (arch, backend)
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
    # the fresh head is its initializer's draw (Glorot uniform: within +-limit, spread across it), not a
    # value left unset where the build skipped the initializers the weights file replaces (JAX)
    head = [layer for layer in five.layers if isinstance(layer, keras.layers.Dense)][-1]
    kernel, bias = head.get_weights()
    limit = np.sqrt(6 / sum(kernel.shape))
    assert np.abs(kernel).max() <= limit and kernel.std() > limit / 3 and not bias.any()
    from kcnn.backends import keras_private

    assert all(keras_private.has_value(variable) for variable in five.variables)
    bare = kcnn.build("efficientnet_lite0", weights="imagenet", num_classes=5, input_shape=(64, 64, 3),
                      include_preprocessing=False)  # (no copy behind a preprocessing layer to hide it)
    assert all(keras_private.has_value(variable) for variable in bare.variables)
    features = kcnn.build("efficientnet_lite0", weights="imagenet", include_top=False, pooling="avg",
                          input_shape=(64, 64, 3))
    assert features.output_shape == (None, 1280)


def test_pretrained_models_are_listed_with_what_travels_with_them():
    names = [info.name for info in kcnn.list_models(pretrained=True)]
    assert "efficientnet_lite0" in names and "resnet50" in names and "lenet5" not in names
    source = named_weights.get_source("efficientnet_lite0", "imagenet")
    assert source.class_names[281] == "tabby" and len(source.class_names) == 1000
    assert source.input_size == 224 and source.file_hash and source.license and source.top1


# 1000-class ImageNet architectures that no publisher gives weights for, and why.
NO_PUBLISHED_WEIGHTS = {
    "alexnet": "the lecture notes' AlexNet (96-256-384-384-256 filters, two-GPU split merged); torchvision's "
               "differs: alexnet_torchvision has its weights",
    "zfnet": "no publisher releases ZFNet ImageNet weights",
    "convvit_small": "kcnn's own conv/transformer hybrid: nothing published",
}


def test_every_imagenet_architecture_has_named_weights_or_a_stated_reason():
    having = set(named_weights.pretrained_archs())
    imagenet = {info.name for info in kcnn.list_models() if info.default_num_classes == 1000}
    assert imagenet - having == set(NO_PUBLISHED_WEIGHTS)
    assert not having & set(NO_PUBLISHED_WEIGHTS)
    assert len(named_weights.SOURCES) >= 38 and len(having) >= 29  # 11 architectures before issue 3/6


def test_every_source_says_where_it_comes_from_how_to_check_it_and_how_it_was_evaluated():
    for (arch, name), source in named_weights.SOURCES.items():
        assert source.arch == arch and source.name == name
        assert source.license and source.top1 and source.top1_source, (arch, name)
        transform = source.eval_transform
        assert transform.crop_size == source.input_size <= transform.resize_size, (arch, name)
        if named_weights.publisher(source) == "torchvision":
            # torchvision's file names carry the first 8 hex digits of the file's sha256: kcnn checks them
            assert source.origin == named_weights.TORCHVISION_URL + source.file_name
            assert source.file_name.endswith(f"-{source.file_hash}.pth") and len(source.file_hash) == 8
            assert source.top5, (arch, name)
            # GoogLeNet's transform_input, folded in: (x/255 - 0.5) / 0.5
            expected_mean = (127.5,) * 3 if arch == "googlenet" else named_weights.IMAGENET_MEAN
            assert source.mean == expected_mean and (arch == "googlenet") == (source.std == (127.5,) * 3)
            assert isinstance(source.layout, named_weights.CheckpointLayout)
        elif source.file_hash is None:
            assert "no checksum" in source.note, (arch, name)
    # the publishers' better recipes (torchvision's IMAGENET1K_V2) are the default "imagenet"
    for arch in ("resnet50_torchvision", "resnet101_torchvision", "resnet152_torchvision",
                 "mobilenet_v2_torchvision"):
        best, first = named_weights.get_source(arch, "imagenet"), named_weights.get_source(arch, "imagenet1k_v1")
        assert best.top1 > first.top1 and best.resize_size == 232 and first.resize_size == 256


def test_the_readme_table_of_pretrained_weights_is_the_registered_sources():
    header, *rows = named_weights.pretrained_table()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"`{cell}`" if i < 2 else cell for i, cell in enumerate(row)) + " |"
              for row in rows]
    readme = open(os.path.join(os.path.dirname(TESTS_DIR), "README.md")).read()
    assert "\n".join(lines) in readme, "README's pretrained table differs from kcnn.weights.pretrained_table():\n" + \
        "\n".join(lines)


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


# The official Keras files by preprocessing mode: "caffe" (BGR, mean subtracted: ResNet, VGG), "torch"
# (DenseNet), "tf" ([-1, 1]: MobileNet, MobileNetV2). (VGG's is ResNet-50's mode, at 15 times the cost.)
KERAS_FILES = {"resnet50": ("ResNet50", "resnet50"), "densenet121": ("DenseNet121", "densenet"),
               "mobilenet": ("MobileNet", "mobilenet"), "mobilenet_v2": ("MobileNetV2", "mobilenet_v2")}


@pytest.mark.parametrize("arch", sorted(KERAS_FILES))
def test_official_keras_file_layout_loads_offline_with_identical_outputs(arch, keras_home, monkeypatch):
    application_name, preprocessing = KERAS_FILES[arch]
    application = getattr(keras.applications, application_name)(weights=None, classifier_activation=None)
    deterministic_weights(application)  # non-trivial batch-norm statistics, betas, biases
    temper_logits(application, pretrained_worker.photos(224))
    source = named_weights.get_source(arch, "imagenet")
    md5 = _write_keras_application_file(application, str(keras_home / "models" / source.file_name))
    # The bytes differ from Google's file, so the test stands in its checksum; the code path is the real one.
    monkeypatch.setitem(named_weights.SOURCES, (arch, "imagenet"), dataclasses.replace(source, file_hash=md5))
    model = kcnn.build(arch, weights="imagenet")
    raw = pretrained_worker.photos(224)
    preprocess = getattr(keras.applications, preprocessing).preprocess_input
    # predict_on_batch: one compiled program (on JAX an eager DenseNet call costs 4 times as much)
    expected = keras.ops.convert_to_numpy(application.predict_on_batch(preprocess(raw.copy())))
    actual = keras.ops.convert_to_numpy(model.predict_on_batch(raw))
    assert_close(actual, expected, rtol=1e-4, what=f"{arch} from the official Keras file")


def test_decode_predictions_lists_the_most_likely_classes_first():
    probabilities = np.full((2, 1000), 1e-4, "float32")
    probabilities[0, [281, 285, 0]] = 0.6, 0.3, 0.05
    probabilities[1, [967, 504]] = 0.7, 0.2
    first, second = decode_predictions(probabilities, top=3)
    assert [(i, name) for i, name, _ in first] == [(281, "tabby"), (285, "Egyptian cat"), (0, "tench")]
    assert [p for _, _, p in first] == pytest.approx([0.6, 0.3, 0.05])
    assert [(i, name) for i, name, _ in second[:2]] == [(967, "espresso"), (504, "coffee mug")]


@pytest.mark.parametrize("arch, checksum", [
    ("resnet50", r"md5 2cb95161c43110f7111970584f804107"),  # Keras' file: the whole md5
    ("squeezenet1_1", r"sha256 starting b8a52dc0"),  # torchvision's: the sha256 prefix its file name carries
])
def test_a_file_that_does_not_match_the_published_checksum_is_refused_and_kept(arch, checksum, keras_home):
    source = named_weights.get_source(arch, "imagenet")
    path = keras_home / "models" / source.file_name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the official file")
    with pytest.raises(WeightsError, match=rf"does not match the published checksum of {arch} imagenet weights "
                                           rf"\({checksum}\).*Delete it.*downloads it again from {source.origin}"):
        kcnn.build(arch, weights="imagenet")
    assert path.read_bytes() == b"not the official file"


@pytest.mark.parametrize("arch, weights, message", [
    ("lenet5", "imagenet", "lenet5 has no 'imagenet' weights; the architectures that have them are "
                           "alexnet_torchvision, densenet121"),
    ("resnet50", "imagenet1k_v1", "resnet50 has no 'imagenet1k_v1' weights; the architectures that have them are "
                                  "mobilenet_v2_torchvision, resnet101_torchvision"),
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


# ---------------------------------------------------------------------------
# torchvision's weights, offline: files of the publisher's layout written where the download puts them


# kcnn architecture -> torchvision's module for it at ImageNet size, from bench/torch_models.py (torchvision's
# module names and structure: the same state-dict keys, shapes and outputs as torchvision 0.28's own
# definitions, checked once by hand; torchvision's wheel itself does not import beside this CPU build of torch).
PUBLISHER_MODULES = {
    "alexnet_torchvision": lambda tm: tm.AlexNet(),
    "resnet18": lambda tm: tm.ResNet((2, 2, 2, 2)),
    "resnet34": lambda tm: tm.ResNet((3, 4, 6, 3)),
    "resnet50_torchvision": lambda tm: tm.BottleneckResNet((3, 4, 6, 3), torchvision=True),
    "resnet101_torchvision": lambda tm: tm.BottleneckResNet((3, 4, 23, 3), torchvision=True),
    "resnet152_torchvision": lambda tm: tm.BottleneckResNet((3, 8, 36, 3), torchvision=True),
    "googlenet": lambda tm: tm.GoogLeNet(aux_logits=True, transform_input=True),  # as its pretrained file
    "squeezenet1_0": lambda tm: tm.SqueezeNet(version="1_0"),
    "squeezenet1_1": lambda tm: tm.SqueezeNet(),
    "mobilenet_v2_torchvision": lambda tm: tm.MobileNetV2(),
    "densenet121": lambda tm: tm.DenseNet((6, 12, 24, 16)),
    "densenet169": lambda tm: tm.DenseNet((6, 12, 32, 32)),
    "densenet201": lambda tm: tm.DenseNet((6, 12, 48, 32)),
    **{f"vgg{depth}{'_bn' if bn else ''}": (lambda tm, convs=convs, bn=bn: tm.VGG(convs, batch_norm=bn))
       for depth, convs in ((11, (1, 1, 2, 2, 2)), (13, (2, 2, 2, 2, 2)), (16, (2, 2, 3, 3, 3)),
                            (19, (2, 2, 4, 4, 4))) for bn in (False, True)},
}


def torchvision_module(arch):
    """torchvision's module for a kcnn architecture, with random He-normal weights and non-trivial
    batch-norm statistics. Built on the meta device and filled once: PyTorch's initialisers cost seconds on
    VGG's 100-million-weight layers."""
    import torch

    with torch.device("meta"):
        module = PUBLISHER_MODULES[arch](_torch_models())
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            scale = (2.0 / parameter[0].numel()) ** 0.5 if parameter.dim() > 1 else 0.05
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        for buffer in module.buffers():
            buffer.zero_()
    return _torch_models().randomize_batch_norm(module).eval()


def write_publisher_file(module, arch, path):
    """The module's state dict as the publisher's file holds it (DenseNet's files keep the old module names
    `norm.1`, `conv.2`), at `path`; returns the file's sha256."""
    import re

    import torch

    state = module.state_dict()
    if arch.startswith("densenet"):
        state = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
        assert any(".norm.1." in key for key in state)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def torch_logits(module, images):
    """torchvision's logits for raw 0-255 RGB images, normalised as torchvision's transform does."""
    import torch

    mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
    batch = ((images / 255.0 - mean) / std).astype("float32").transpose(0, 3, 1, 2)
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


TORCHVISION_SOURCES = sorted(key for key, source in named_weights.SOURCES.items()
                             if named_weights.publisher(source) == "torchvision")


@pytest.mark.parametrize("arch, name", TORCHVISION_SOURCES, ids=[f"{a}-{n}" for a, n in TORCHVISION_SOURCES])
def test_torchvision_weights_load_through_the_named_source(arch, name, keras_home, monkeypatch):
    source = named_weights.get_source(arch, name)
    module = torchvision_module(arch)
    digest = write_publisher_file(module, arch, keras_home / "models" / source.file_name)
    # The bytes are the test's, so it stands in their checksum prefix; the code path is the real one.
    monkeypatch.setitem(named_weights.SOURCES, (arch, name), dataclasses.replace(source, file_hash=digest[:8]))
    images = pretrained_worker.evaluation_photos(source)
    expected = torch_logits(module, images)
    assert np.abs(expected[0] - expected[1]).max() > 0.05 * np.abs(expected).max()  # outputs that vary
    model = kcnn.build(arch, weights=name)
    assert model.layers[1].name == "preprocessing"  # raw 0-255 RGB in, as every pretrained model
    actual = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("arch, name", [("densenet121", "imagenet"), ("resnet50_torchvision", "imagenet")])
def test_offline_download_names_the_url_and_where_to_put_the_file(arch, name, keras_home, monkeypatch):
    source = named_weights.get_source(arch, name)
    monkeypatch.setitem(named_weights.SOURCES, (arch, name),  # nothing listens on port 9
                        dataclasses.replace(source, origin=f"http://127.0.0.1:9/{source.file_name}"))
    monkeypatch.setenv("TORCH_HOME", str(keras_home / "no_torch_cache"))
    with pytest.raises(WeightsError, match=rf"Could not download {arch} {name} weights from http://127.0.0.1:9/"
                                           rf"{source.file_name}.*when offline, copy the file to .*{source.file_name}"):
        kcnn.build(arch, weights=name)
    assert not (keras_home / "models" / source.file_name).exists()


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server for tmp_path/served: the real download code, offline."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_a_download_is_checked_against_the_sha256_prefix_before_it_is_put_in_place(
        keras_home, file_server, monkeypatch):
    folder, url = file_server
    source = named_weights.get_source("squeezenet1_1", "imagenet")
    module = torchvision_module("squeezenet1_1")
    digest = write_publisher_file(module, "squeezenet1_1", folder / source.file_name)
    monkeypatch.setenv("TORCH_HOME", str(keras_home / "no_torch_cache"))
    cached = keras_home / "models" / source.file_name
    # A download whose bytes do not start the published sha256: deleted, nothing put in place.
    monkeypatch.setitem(named_weights.SOURCES, ("squeezenet1_1", "imagenet"),
                        dataclasses.replace(source, origin=url + source.file_name, file_hash="00000000"))
    with pytest.raises(WeightsError, match="downloaded from .* does not match .*sha256 starting 00000000.*deleted"):
        kcnn.build("squeezenet1_1", weights="imagenet")
    assert not cached.exists() and not os.listdir(keras_home / "models" / ".kcnn-partial")
    # The right prefix: downloaded once, verified, moved into the Keras cache, loaded.
    monkeypatch.setitem(named_weights.SOURCES, ("squeezenet1_1", "imagenet"),
                        dataclasses.replace(source, origin=url + source.file_name, file_hash=digest[:8]))
    images = pretrained_worker.evaluation_photos(source)
    model = kcnn.build("squeezenet1_1", weights="imagenet")
    assert cached.read_bytes() == (folder / source.file_name).read_bytes()
    expected = torch_logits(module, images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.predict(images, verbose=0)), expected,
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_file_torch_hub_already_downloaded_is_used_and_left_where_it_is(keras_home, monkeypatch):
    source = named_weights.get_source("squeezenet1_0", "imagenet")
    torch_home = keras_home.parent / "torch_home"
    hub_file = torch_home / "hub" / "checkpoints" / source.file_name
    digest = write_publisher_file(torchvision_module("squeezenet1_0"), "squeezenet1_0", hub_file)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setitem(named_weights.SOURCES, ("squeezenet1_0", "imagenet"),
                        dataclasses.replace(source, origin="http://127.0.0.1:9/nothing", file_hash=digest[:8]))
    assert named_weights.get_source("squeezenet1_0", "imagenet").path() == str(hub_file)
    assert not (keras_home / "models" / source.file_name).exists()


# ---------------------------------------------------------------------------
# The evaluation transform


def _pil_reference(image, resize_size, crop_size, resample):
    """The publishers' transform written directly with Pillow: the shorter side to resize_size (the longer
    one truncated in proportion), then the centre crop_size square with a rounded offset."""
    width, height = image.size
    scale = resize_size / min(width, height)
    size = (resize_size, int(height * scale)) if width <= height else (int(width * scale), resize_size)
    resized = image.resize(size, resample)
    left, top = round((size[0] - crop_size) / 2), round((size[1] - crop_size) / 2)
    return np.asarray(resized.crop((left, top, left + crop_size, top + crop_size)))


@pytest.mark.parametrize("width, height", [(451, 300), (300, 451), (256, 256), (240, 600), (1000, 999)])
def test_the_evaluation_transform_is_the_publishers(width, height):
    from PIL import Image

    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    for arch, name in (("resnet50_torchvision", "imagenet"), ("resnet18", "imagenet"),
                       ("efficientnet_lite1", "imagenet")):
        source = named_weights.get_source(arch, name)
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[source.interpolation]
        actual = source.eval_transform(image)
        assert actual.shape == (source.input_size, source.input_size, 3) and actual.dtype == np.uint8
        np.testing.assert_array_equal(actual, _pil_reference(image, source.resize_size, source.input_size,
                                                             resample))
    with pytest.raises(kcnn.KcnnError, match="interpolation must be one of"):
        named_weights.EvalTransform(256, 224, "lanczos5")


def test_predict_with_a_pretrained_model_uses_its_evaluation_transform(tmp_path, capsys):
    """A wide photo: the publisher's centre crop keeps the cat; squeezing the whole frame would not."""
    from PIL import Image
    from skimage import data

    from kcnn import cli

    cat = data.chelsea()  # 300 x 451
    noise = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    wide = np.concatenate([noise, cat, noise], axis=1)  # the cat in the middle third of a 1451-wide frame
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    assert cli.main(["predict", "efficientnet_lite0", str(path), "--top", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    source = named_weights.get_source("efficientnet_lite0", "imagenet")
    model = kcnn.build("efficientnet_lite0", weights="imagenet", classifier_activation="softmax")
    probabilities = keras.ops.convert_to_numpy(model.predict(source.eval_transform(wide)[None].astype("float32"),
                                                             verbose=0))[0]
    best = int(probabilities.argmax())
    assert 281 <= best <= 285  # a cat
    assert printed[0] == str(path) and printed[1].split(maxsplit=1) == [f"{probabilities[best]:.2%}",
                                                                         source.class_names[best]]
