"""Build every registered model on the backend in KERAS_BACKEND, give it the
same deterministic weights on every backend, and record its outputs.

    KERAS_BACKEND=torch python tests/workers/backend_worker.py OUT_DIR [MODELS]

MODELS: a wildcard (`resnet*`) or a comma-separated list of names; default every model.

Writes OUT_DIR/outputs.npz (logits per model), OUT_DIR/report.json (output
shapes, errors, seconds) and OUT_DIR/models/NAME.keras. The test suite runs
one worker per backend (Keras picks its backend once per process) and
compares what they wrote.
"""

import json
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: helpers
from helpers import deterministic_weights  # noqa: E402  (shared with the tests that compare values)

NUM_CLASSES = 7  # not a default of any model, so the head is really rebuilt
BATCH = 2


def forward(model, images):
    """The model's logits for `images`, inference mode. On JAX through `predict_on_batch`, one XLA program
    for the whole network: an eager call compiles every op on its own (densenet121: 36 s against 8 s)."""
    import keras

    if keras.backend.backend() == "jax":
        return np.asarray(model.predict_on_batch(images))
    return np.asarray(keras.ops.convert_to_numpy(model(images, training=False)))


def test_images(input_shape):
    rng = np.random.default_rng(7)
    return rng.uniform(0.0, 1.0, (BATCH,) + tuple(input_shape)).astype("float32")


def main(out_dir, models="*"):
    import keras

    import kcnn
    from kcnn.backends import torch_fast
    from kcnn.backends.initializers import initializers_deferred

    os.makedirs(os.path.join(out_dir, "models"), exist_ok=True)
    outputs, report = {}, {"backend": keras.backend.backend(), "models": {}}
    selected = kcnn.list_models(models) if "," not in models else [kcnn.get_model_info(n) for n in models.split(",")]
    for info in selected:
        started = time.perf_counter()
        entry = report["models"][info.name] = {}
        try:
            input_shape = info.test_input_shape
            with initializers_deferred():  # (JAX) every weight is overwritten right after: no random draws
                model = kcnn.build(info.name, num_classes=NUM_CLASSES, input_shape=input_shape)
            deterministic_weights(model)  # every weight, so none is left without a value
            images = test_images(input_shape)
            logits = forward(model, images)
            layers = list(torch_fast.layers_of(model))  # on torch: which layers ran torch's own kernels
            entry["torch_kernel_layers"] = sum(torch_fast.is_accelerated(layer) for layer in layers)
            entry["keras_call_layers"] = [layer.name for layer in layers if torch_fast.took_keras_call(layer)]
            # every convolution and batch norm, whatever its class (a new kind would show up here)
            covered = [layer for layer in layers
                       if isinstance(layer, keras.layers.BatchNormalization) or "Conv" in type(layer).__name__]
            entry["convolution_and_batch_norm_layers"] = [layer.name for layer in covered]
            entry["not_on_torch_kernels"] = [layer.name for layer in covered if not torch_fast.is_accelerated(layer)]
            outputs[info.name] = logits
            np.save(os.path.join(out_dir, "models", f"{info.name}_input.npy"), images)
            model.save(os.path.join(out_dir, "models", f"{info.name}.keras"))
            entry["output_shape"] = list(logits.shape)
        except Exception:
            entry["error"] = traceback.format_exc()
        entry["seconds"] = round(time.perf_counter() - started, 2)
        print(f"{info.name}: {entry.get('output_shape', 'ERROR')} {entry['seconds']}s", flush=True)
    np.savez(os.path.join(out_dir, "outputs.npz"), **outputs)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
