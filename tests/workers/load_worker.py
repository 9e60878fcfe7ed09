"""Load `.keras` files with plain Keras, in a process that never imports kcnn.

    KERAS_BACKEND=jax python tests/workers/load_worker.py MODELS_DIR OUT_NPZ

For each NAME.keras in MODELS_DIR, loads it with `keras.saving.load_model`
(safe mode, the default) and runs it on NAME_input.npy. Exits non-zero if
anything imported kcnn: a saved model must not need it.
"""

import glob
import json
import os
import sys
import traceback

import keras
import numpy as np
from backend_worker import forward  # the same forward pass as the build (tests/workers, beside this file)


def main(models_dir, out_path):
    outputs, errors = {}, {}
    for path in sorted(glob.glob(os.path.join(models_dir, "*.keras"))):
        name = os.path.basename(path)[: -len(".keras")]
        try:
            model = keras.saving.load_model(path)
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
