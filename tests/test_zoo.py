"""Registry-driven tests: every registered model, on every backend. A new
model is tested by registering it; nobody has to add a test."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kcnn
from kcnn.backends.initializers import weightless_scope
from helpers import BACKENDS, assert_close
from backend_worker import NUM_CLASSES, BATCH  # tests/workers/ (on sys.path: helpers)

MODEL_NAMES = [info.name for info in kcnn.list_models()]

_COUNT_SCRIPT = """
import json, sys, keras, kcnn
from kcnn.backends.initializers import weightless_scope
counts = {}
for info in kcnn.list_models():
    with weightless_scope():
        counts[info.name] = info.count_params(kcnn.build(info.name))
print(json.dumps(counts))
"""


@pytest.fixture(scope="session")
def default_input_counts():
    """Comparable parameter count of every model at its default input."""
    if keras.backend.backend() == "jax":
        counts = {}
        for info in kcnn.list_models():
            with weightless_scope():  # JAX: no weight is allocated
                counts[info.name] = info.count_params(kcnn.build(info.name))
        return counts
    # Other backends would allocate every weight (6 GB for mlp): count on JAX.
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run([sys.executable, "-c", _COUNT_SCRIPT], env=env, capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_reference(name, default_input_counts):
    info = kcnn.get_model_info(name)
    assert default_input_counts[name] == info.reference_params, (
        f"{name}: {default_input_counts[name]:,} parameters ({info.params_counted} count), "
        f"reference {info.reference_params:,} from {info.reference_source}"
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_min_input_size_builds_and_smaller_is_refused(name, monkeypatch):
    info = kcnn.get_model_info(name)
    channels = info.default_input_shape[2]
    size = info.min_input_size
    with weightless_scope():
        model = kcnn.build(name, input_shape=(size, size, channels))
    assert model.output_shape[-1] == info.default_num_classes
    if size > 1:
        # The check must come before any layer is made.
        monkeypatch.setattr(keras, "Input", _no_layers_please)
        with pytest.raises(kcnn.InvalidArgumentError, match=rf"at least {size}x{size}.*input_shape"):
            kcnn.build(name, input_shape=(size - 1, size, channels))


def _no_layers_please(*args, **kwargs):
    raise AssertionError("a layer was created before the arguments were checked")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_with_expected_output_shape(name, backend, backend_runs):
    entry = backend_runs[backend]["report"]["models"][name]
    assert "error" not in entry, entry.get("error")
    assert entry["output_shape"] == [BATCH, NUM_CLASSES]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_weights_give_same_logits_on_every_backend(name, backend_runs):
    reference = backend_runs["tensorflow"]["outputs"][name]
    for backend in ("torch", "jax"):
        assert_close(backend_runs[backend]["outputs"][name], reference, rtol=1e-4, what=f"{name}: {backend} vs tensorflow")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_keras_file_loads_without_kcnn_with_identical_outputs(name, backend, backend_runs):
    run = backend_runs[backend]
    assert name not in run["load_errors"], run["load_errors"].get(name)
    if backend == "torch":
        # kcnn ran the convolutions and batch norms on torch's own kernels (kcnn.backends.torch_fast); the file
        # holds Keras' layers, which compute the same in another order: the cross-backend tolerance
        # (deep plain networks such as cifar_resnet110 grow float32 rounding to about 1e-5).
        loaded, outputs = run["loaded"][name], run["outputs"][name]
        relative = np.linalg.norm(loaded - outputs) / np.linalg.norm(outputs)
        assert relative <= 1e-4, f"{name}: the loaded file and kcnn differ by {relative:.2e} (relative)"
    else:
        np.testing.assert_array_equal(run["loaded"][name], run["outputs"][name])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_on_torch_every_convolution_and_batch_norm_runs_on_torch_kernels(name, backend_runs):
    entry = backend_runs["torch"]["report"]["models"][name]
    assert entry["keras_call_layers"] == [], f"{name}: these layers ran Keras' slower code on torch"
    assert entry["not_on_torch_kernels"] == [], f"{name}: these layers have no torch kernels"
    if name != "mlp":  # the one model without convolutions
        assert entry["torch_kernel_layers"] >= len(entry["convolution_and_batch_norm_layers"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_backend_runs_build_the_selected_models_only(name, backend_runs, request):
    """`pytest -k NAME` builds NAME's models only (conftest passes the session's selection to the runs)."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if "backend_runs" in item.fixturenames and "name" in getattr(item, "callspec", None).params}
    for backend in BACKENDS:
        assert set(backend_runs[backend]["report"]["models"]) == selected, backend
