"""Load `.keras` files with plain Keras, in a process that never imports kcnn.

    KERAS_BACKEND=jax python tests/workers/load_worker.py MODELS_DIR OUT_NPZ

For each NAME.keras in MODELS_DIR, loads it with `keras.saving.load_model`
(safe mode, the default; on JAX without running the initializers its values
replace) and runs it on NAME_input.npy. Exits non-zero if anything imported
kcnn: a saved model must not need it.
"""

import glob
import importlib.util
import json
import os
import sys
import traceback

import keras
import numpy as np
from backend_worker import forward  # the same forward pass as the build (tests/workers, beside this file)

# kcnn's list of private Keras names, read as a file of its own: importing it as `kcnn.backends.keras_private` would
# import kcnn, which this process must never do (it names nothing of kcnn's, and imports keras only).
_spec = importlib.util.spec_from_file_location(
    "keras_private_of_kcnn",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kcnn",
                 "backends", "keras_private.py"))
keras_private = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(keras_private)


def load_model(path):
    """`keras.saving.load_model(path)`, safe mode, with the values it assigns and nothing else. On JAX its
    initializers are skipped: every one is a traced and compiled random draw there that the file's values
    replace at once (the zoo's 43 models: 141 of the worker's 201 CPU-seconds, AVX-512). Inside a
    StatelessScope Keras defers them and records the assignments; they are applied once it closes. What the
    file does not hold (a dropout's seed) gets its initializer's value, as load_model gives it."""
    if keras.backend.backend() != "jax":
        return keras.saving.load_model(path)
    before = keras_private.uninitialized_variables()
    with keras.StatelessScope(initialize_variables=False) as scope:
        model = keras.saving.load_model(path)
        values = [scope.get_current_value(variable) for variable in model.variables]
    keras_private.set_uninitialized_variables(before)  # forgotten: each gets a value below
    for variable, value in zip(model.variables, values):
        if value is None:
            keras_private.initialize(variable)
        else:
            variable.assign(value)
    return model


def main(models_dir, out_path):
    outputs, errors = {}, {}
    for path in sorted(glob.glob(os.path.join(models_dir, "*.keras"))):
        name = os.path.basename(path)[: -len(".keras")]
        try:
            model = load_model(path)
            images = np.load(os.path.join(models_dir, f"{name}_input.npy"))
            outputs[name] = forward(model, images)
        except Exception:
            errors[name] = traceback.format_exc()
    np.savez(out_path, **outputs)
    with open(out_path + ".errors.json", "w") as f:
        json.dump(errors, f, indent=1)
    imported = sorted(m for m in sys.modules if m == "kcnn" or m.startswith("kcnn."))
    if imported:
        sys.exit(f"loading the models imported kcnn modules: {imported}")


if __name__ == "__main__":
    main(*sys.argv[1:])
