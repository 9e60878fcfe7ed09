"""Grad-CAM and input gradients (kcnn.inspect.explain): models whose right answer is known by construction, the
sanity checks of Adebayo et al. (2018), the logit behind a softmax, run-style nested models, the same maps on
TensorFlow, PyTorch and JAX, every architecture family, and `kcnn explain`.

The in-process tests run on JAX (conftest.py); the TensorFlow and PyTorch maps come from one
tests/workers/explain_worker.py process each, started by the first test and read by the last ones."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import kcnn
import kcnn.inspect.explain
from helpers import BACKENDS, _tail, assert_close, deterministic_weights, run_python, worker
from kcnn.inspect import viz
from kcnn.errors import InvalidArgumentError
from kcnn.backends.initializers import initialize_the_rest, initializers_deferred

import explain_worker  # noqa: E402  (tests/workers/, on sys.path through helpers)

# One architecture per family (and the mlp, which has no feature map): Grad-CAM of each at its smallest input,
# in the PyTorch worker (builds cost a tenth of JAX's there). The slow test below runs every registered one.
ARCHITECTURES = tuple(info.name for info in kcnn.list_models())  # every registered one (mlp: no spatial layer)


def built(make, set_weights=deterministic_weights):
    """`make()`'s model without Keras' initializers (on JAX each is a compiled random draw, half a second),
    its weights set by `set_weights(model)` (default: helpers.deterministic_weights, seeded NumPy draws)."""
    with initializers_deferred():
        model = make()
    set_weights(model)
    initialize_the_rest(model)  # (none left)
    return model


@pytest.fixture(scope="module")
def other_backends(tmp_path_factory):
    """The worker's results on TensorFlow and PyTorch (every registered architecture on PyTorch), started in
    parallel."""
    folder = tmp_path_factory.mktemp("explain_backends")
    processes = {backend: run_python([worker("explain_worker"), str(folder / f"{backend}.npz"),
                                      *(ARCHITECTURES if backend == "torch" else ())],
                                     backend, str(folder / f"{backend}.log"))
                 for backend in BACKENDS if backend != "jax"}
    results = {}

    def wait():
        for backend, process in processes.items():
            if backend not in results:
                assert process.wait(timeout=600) == 0, f"{backend} worker:\n{_tail(folder / f'{backend}.log')}"
                results[backend] = dict(np.load(folder / f"{backend}.npz"))
        return results

    return wait


@pytest.fixture(scope="module")
def run_style(other_backends):
    """The worker's fixed model (raw pixels, Normalization, a nested backbone ending in softmax), here on JAX."""
    return explain_worker.fixed_model()


# ---- what the maps are --------------------------------------------------------------------------------------

def test_shapes_range_and_the_predicted_class(run_style):
    images = explain_worker.images()
    maps = kcnn.inspect.explain.grad_cam(run_style, images)
    assert maps.shape == (3, *explain_worker.SHAPE[:2]) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    predicted = np.argmax(keras.ops.convert_to_numpy(run_style(images)), axis=-1)
    np.testing.assert_array_equal(maps, kcnn.inspect.explain.grad_cam(run_style, images, class_index=predicted))
    one_class = kcnn.inspect.explain.grad_cam(run_style, images, class_index=2)  # one index for every image
    np.testing.assert_array_equal(one_class[1], kcnn.inspect.explain.grad_cam(run_style, images[1:2], class_index=[2])[0])
    assert kcnn.inspect.explain.input_gradients(run_style, images).shape == images.shape
    assert kcnn.inspect.explain.spatial_layers(run_style)[-1] == "top_conv"  # the default: the last spatial map


def test_a_nested_run_model_is_its_backbone_on_normalised_pixels(run_style):
    """The layer search descends into the nested backbone: the run model's map of raw pixels is the
    backbone's map of the normalised ones, for the default layer and one named inside."""
    images = explain_worker.images()
    backbone = run_style.get_layer("backbone")
    normalised = keras.ops.convert_to_numpy(run_style.get_layer("normalize")(images))
    for layer in (None, "block_add"):
        assert_close(kcnn.inspect.explain.grad_cam(run_style, images, layer=layer),
                     kcnn.inspect.explain.grad_cam(backbone, normalised, layer=layer), rtol=1e-5, what=f"layer {layer}")
    # the backbone's softmax is a layer of its own: the gradient is of the Dense before it, the logit
    logits = keras.Model(backbone.inputs, backbone.get_layer("logits").output)
    for explained in (kcnn.inspect.explain.grad_cam, kcnn.inspect.explain.input_gradients):
        assert_close(explained(backbone, normalised, class_index=3), explained(logits, normalised, class_index=3),
                     rtol=1e-5, what=explained.__name__)


def test_the_gradient_is_of_the_logit_behind_a_softmax_dense():
    """A registered architecture built with classifier_activation="softmax" (in its Dense) is explained by
    its logits: the same maps and input gradients as the same weights built to output logits, and not those
    of the probability (the softmax hidden behind a linear layer, which the search does not look through)."""
    name, shape = "lenet5", (32, 32, 1)
    softmax = built(lambda: kcnn.build(name, input_shape=shape, num_classes=4, classifier_activation="softmax"))
    logits = built(lambda: kcnn.build(name, input_shape=shape, num_classes=4),
                   lambda model: model.set_weights(softmax.get_weights()))
    probability = keras.Model(softmax.inputs, keras.layers.Activation("linear")(softmax.outputs[0]))
    images = np.random.default_rng(2).uniform(0, 255, (2, *shape)).astype("float32")
    assert_close(kcnn.inspect.explain.grad_cam(softmax, images), kcnn.inspect.explain.grad_cam(logits, images), rtol=1e-5)
    of_logits = kcnn.inspect.explain.input_gradients(softmax, images, class_index=1)
    reference = kcnn.inspect.explain.input_gradients(logits, images, class_index=1)
    assert np.abs(of_logits - reference).max() <= 1e-5 * np.abs(reference).max() and reference.any()
    of_probability = kcnn.inspect.explain.input_gradients(probability, images, class_index=1)
    assert np.linalg.norm(of_probability - of_logits) > 0.1 * np.linalg.norm(of_logits)


# ---- models whose right answer is known -------------------------------------------------------------------

def test_the_map_lies_in_the_only_quadrant_the_score_depends_on():
    """The logit is a spatial average of a stride-2 convolution's output masked to the top-left quadrant of
    a 32x48 image (not square: a height and width swapped would show): every class's map is there."""
    def make():
        inputs = keras.Input((32, 48, 3))
        x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="features")(inputs)
        mask = np.zeros((1, 16, 24, 1), "float32")
        mask[:, :8, :12] = 1
        x = keras.ops.multiply(x, mask)  # the last spatial output: Grad-CAM's default layer
        return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))

    model = built(make)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    for index in range(3):
        maps = kcnn.inspect.explain.grad_cam(model, images, class_index=index)
        assert maps.shape == (2, 32, 48)
        inside = maps[:, :16, :24].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
        # bilinear upsampling spreads the quadrant's edge by half a feature-map pixel
        assert np.all(inside > 0.9), inside
        assert maps[:, 18:].max() == 0 and maps[:, :, 26:].max() == 0  # nothing beyond one pixel of feature map
        peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
        assert all(row < 16 and column < 24 for row, column in peaks), peaks


def colour_model():
    """Hand-set weights: a stride-2 3x3 convolution whose channel c responds to pixels of pure colour c
    (red, green, blue) and to nothing grey, global average pooling, and logit c = the mean of channel c."""
    kernel = np.full((3, 3, 3, 3), -1 / 9, "float32") + np.eye(3, dtype="float32") * 3 / 9  # 2 own, -1 others
    return built(_colour_architecture, lambda model: model.set_weights(
        [kernel, np.full(3, -0.3, "float32"), np.eye(3, dtype="float32"), np.zeros(3, "float32")]))


def _colour_architecture():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="colours")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x)))


def two_squares():
    """Grey noise (a grey level per pixel) with a red square at the top left, larger, and a green one at the
    bottom right; the boxes around them with a margin of 4 pixels."""
    rng = np.random.default_rng(3)
    image = np.repeat(rng.uniform(0, 255, (32, 32, 1)), 3, axis=-1).astype("float32")
    image[2:12, 2:12] = (255, 0, 0)
    image[22:30, 22:30] = (0, 255, 0)
    red, green = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    red[:16, :16], green[18:, 18:] = True, True
    return image[None], red, green


def test_each_class_map_lies_on_its_own_object():
    """Grad-CAM is class-discriminative on a model whose answer is known: the red class's map covers the red
    square, the green class's the green one; the predicted class (the larger square) is the default."""
    model, (image, red, green) = colour_model(), two_squares()
    logits = keras.ops.convert_to_numpy(model(image))
    assert np.argmax(logits) == 0
    default, red_map, green_map = (kcnn.inspect.explain.grad_cam(model, image, class_index=c)[0] for c in (None, 0, 1))
    np.testing.assert_array_equal(default, red_map)
    assert red_map[red].sum() / red_map.sum() > 0.95 and green_map[green].sum() / green_map.sum() > 0.95
    # Adebayo et al.'s class check: another class, another map
    assert np.abs(red_map - green_map).mean() > 0.1


def test_randomised_weights_change_the_map():
    """Adebayo et al.'s model randomisation test: the same architecture with fresh random weights gives a
    map unrelated to the hand-set model's (rank correlation near 0; the model against itself: exactly 1)."""
    model, (image, red, _) = colour_model(), two_squares()
    randomised = built(_colour_architecture)  # the architecture, re-initialised (He-normal kernels)
    meant = kcnn.inspect.explain.grad_cam(model, image, class_index=0)
    again = kcnn.inspect.explain.grad_cam(model, image, class_index=0)
    random = kcnn.inspect.explain.grad_cam(randomised, image, class_index=0)
    assert _rank_correlation(meant, again) == pytest.approx(1.0)
    assert abs(_rank_correlation(meant, random)) < 0.5, _rank_correlation(meant, random)
    assert np.abs(meant - random).mean() > 0.2
    assert random[0][red].sum() / max(random.sum(), 1e-12) < 0.6  # no longer on the red square alone


def _rank_correlation(a, b):
    """Spearman's rank correlation of two maps (ties broken by position)."""
    ranks = [np.argsort(np.argsort(m.ravel(), kind="stable")).astype("float64") for m in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


# ---- the three backends, and every family -------------------------------------------------------------------

def test_the_same_maps_and_gradients_on_the_three_backends(run_style, other_backends):
    images = explain_worker.images()
    jax = {"heatmaps": kcnn.inspect.explain.grad_cam(run_style, images),
           "gradients": kcnn.inspect.explain.input_gradients(run_style, images),
           "logits": keras.ops.convert_to_numpy(run_style(images))}
    for backend, results in other_backends().items():
        difference = np.abs(results["heatmaps"] - jax["heatmaps"]).max()
        assert difference <= 1e-3, f"{backend}: heatmaps differ from JAX's by {difference:.2e}"
        assert_close(results["logits"], jax["logits"], rtol=1e-4, what=f"{backend} logits")
        assert_close(results["gradients"], jax["gradients"], rtol=1e-3, what=f"{backend} input gradients")
    assert np.ptp(jax["heatmaps"]) > 0.5  # maps worth comparing


def test_every_registered_architecture_is_explained(other_backends):
    """Every registered model at its smallest input, random weights, on PyTorch (one worker process)."""
    results = other_backends()["torch"]
    for name in ARCHITECTURES:
        if name == "mlp":
            assert "NoSpatialLayerError" in str(results["mlp:error"])
            continue
        assert f"{name}:error" not in results, f"{name}: {results[f'{name}:error']}"
        _assert_a_map(name, results[name])
    assert len(ARCHITECTURES) >= 47


def _assert_a_map(name, heatmap):
    size = heatmap.shape[-1]
    assert heatmap.shape == (1, size, size) and size >= 32, (name, heatmap.shape)
    # an all-zero map is Grad-CAM's answer where the weighted maps sum to a negative everywhere (random weights)
    assert np.all(np.isfinite(heatmap)) and heatmap.min() >= 0 and heatmap.max() in (0, pytest.approx(1.0)), name


# ---- bad input, pictures, the command line --------------------------------------------------------------------

def test_bad_arguments_raise_one_sentence(run_style):
    images = explain_worker.images(2)
    for call, message in [
        (lambda: kcnn.inspect.explain.grad_cam(run_style, images, class_index=[1, 2, 3]), r"3 indices for 2 images"),
        (lambda: kcnn.inspect.explain.grad_cam(run_style, images, class_index=1.5), r"class_index must be None"),
        (lambda: kcnn.inspect.explain.grad_cam(run_style, images[0]), r"shape \(N, 24, 32, 3\).*images\[None\]"),
        (lambda: kcnn.inspect.explain.grad_cam(run_style, images * np.nan), r"NaN or infinite"),
        (lambda: kcnn.inspect.explain.grad_cam(run_style, images, layer="pool"), r"'pool'.*no spatial output.*top_conv"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_the_overlay_blends_the_colour_map_over_the_image():
    image = np.full((4, 6, 3), 200, "uint8")
    heatmap = np.linspace(0, 1, 24, dtype="float32").reshape(4, 6)
    overlay = viz.grad_cam_overlay(image, heatmap, alpha=0.4)
    assert overlay.shape == (4, 6, 3) and overlay.dtype == np.uint8
    np.testing.assert_array_equal(viz.grad_cam_overlay(image, heatmap, alpha=0.0), image)
    import matplotlib

    jet = np.round(matplotlib.colormaps["jet"](heatmap)[..., :3] * 255)
    np.testing.assert_allclose(viz.grad_cam_overlay(image, heatmap, alpha=1.0), jet, atol=1)
    assert viz.grad_cam_overlay(image[..., :1], heatmap[:2, :3]).shape == (4, 6, 3)  # grey, a smaller map
    figure = viz.grad_cam_grid([image] * 3, [heatmap] * 3, [0, 1, 1], [0, 0, 1], ["a", "b"])
    assert [axis.get_title() for axis in figure.axes[:3]] == ["a", "a\n(true: b)", "b"]


def test_kcnn_explain_writes_one_overlay_per_image(run_style, tmp_path, monkeypatch, capsys):
    from kcnn.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_style.save(run_dir / "model.keras")
    (run_dir / "config.json").write_text(json.dumps({"dataset": "digits", "arch": "lenet5"}))
    (run_dir / "metrics.json").write_text(json.dumps({"class_names": ["ant", "bee", "cat", "dog", "eel"]}))
    paths = []
    for index, image in enumerate(explain_worker.images(2)):
        paths.append(str(tmp_path / f"photo{index}.png"))
        Image.fromarray(image.astype("uint8")).resize((64, 48)).save(paths[-1])  # resized to 32x24 on reading
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(run_dir), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(" -> " in line for line in lines), lines
    written = sorted(os.listdir(run_dir / "explain"))
    assert written == ["photo0_gradcam.png", "photo1_gradcam.png"]
    with Image.open(run_dir / "explain" / written[0]) as picture:
        assert picture.mode == "RGB" and picture.size == (32 * 10, 24 * 10)  # enlarged to at least 224 pixels
    assert main(["explain", str(run_dir), paths[0], "--class", "eel", "--layer", "block_add",
                 "--output", str(tmp_path / "mine")]) == 0
    assert "photo0_gradcam.png" in os.listdir(tmp_path / "mine")
    assert main(["explain", str(run_dir), paths[0], "--class", "emu", "--output", str(tmp_path / "none")]) == 2
    assert "Unknown class 'emu'" in capsys.readouterr().err and not (tmp_path / "none").exists()
