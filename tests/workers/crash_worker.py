"""`kcnn CLI_ARGS...` that kills itself with SIGKILL at one point of the run.

    python tests/workers/crash_worker.py POINT kcnn-arguments...

POINT is where the process dies, as a user's `kill -9` or a lost machine
would stop it (fit() calls are counted from 0: fine-tuning's phase 1 is 0, its phase 2 is 1):
    batch:E:B     during epoch E (0-based) of the first fit(), after batch B
    fitbatch:F:E:B  during epoch E of fit() call F, after batch B
    predict:N     at the start of the N-th predict() call (0-based): fine-tuning's frozen-layer pass
    cache         halfway through writing fine-tuning's cached frozen activations
    final:PHASE   halfway through writing the final weights of a fine-tuning phase (head, finetune)
    backup:E      halfway through writing the backup at the end of epoch E
    best:E        halfway through writing best.keras at the end of epoch E
    history:E     halfway through writing history.csv at the end of epoch E
    model         halfway through writing the final model.keras
    export        halfway through writing the SavedModel (TensorFlow backend: in this process)
"Halfway" means the temporary file exists with half of its bytes, which is
what a kill during the write leaves. The worker exits 3 if POINT is never
reached, so a test cannot pass by killing nothing.
"""

import os
import signal
import sys


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def truncate_half(path):
    if os.path.isdir(path):
        for root, _, names in os.walk(path):
            for name in names:
                truncate_half(os.path.join(root, name))
        return
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def install(point):
    import keras

    import numpy as np

    kind, *numbers = point.split(":")
    phase = numbers.pop() if kind == "final" else None
    numbers = [int(n) for n in numbers]
    if kind == "batch":
        kind, numbers = "fitbatch", [0, *numbers]
    state = {"fit": -1, "epoch": -1, "predict": -1}

    class Killer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            state["fit"] += 1

        def on_epoch_begin(self, epoch, logs=None):
            state["epoch"] = epoch

        def on_train_batch_end(self, batch, logs=None):
            if kind == "fitbatch" and [state["fit"], state["epoch"], batch] == numbers:
                die()

    # every fit() of the run gets the Killer first (train's and both fine-tuning phases)
    original_fit = keras.Model.fit

    def fit(self, *args, callbacks=None, **kwargs):
        return original_fit(self, *args, callbacks=[Killer(), *(callbacks or [])], **kwargs)

    keras.Model.fit = fit
    original_predict = keras.Model.predict

    def predict(self, *args, **kwargs):
        state["predict"] += 1
        if kind == "predict" and state["predict"] == numbers[0]:
            die()
        return original_predict(self, *args, **kwargs)

    keras.Model.predict = predict
    if kind == "cache":
        original_savez = np.savez

        def savez(path, *args, **kwargs):
            original_savez(path, *args, **kwargs)
            if "frozen" in str(path) and ".tmp." in str(path):
                truncate_half(str(path))
                die()

        np.savez = savez

    def at_epoch():
        return kind not in ("backup", "history") or state["epoch"] == numbers[0]

    def wrap_save(cls, method, matches):
        original = getattr(cls, method)

        def save(self, filepath, *args, **kwargs):
            result = original(self, filepath, *args, **kwargs)
            if matches(str(filepath)) and at_epoch():
                truncate_half(str(filepath))
                die()
            return result

        setattr(cls, method, save)

    if kind == "backup":
        wrap_save(keras.Model, "save_weights", lambda path: "epoch_" in path and ".tmp." in path)
    elif kind == "final":
        wrap_save(keras.Model, "save_weights", lambda path: f"{phase}_final.tmp." in path)
    elif kind == "best":
        wrap_save(keras.Model, "save", lambda path: path.endswith("best.tmp.keras"))
    elif kind == "model":
        wrap_save(keras.Model, "save", lambda path: path.endswith("model.tmp.keras"))
    elif kind == "history":
        # inside kcnn's own writer: its temporary is written whole and about to be renamed (kcnn.runs.atomic.atomic_path
        # flushes it to disk first); the kill leaves half of it
        original_fsync = os.fsync

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.endswith("history.tmp.csv") and state["epoch"] == numbers[0]:
                os.truncate(path, os.path.getsize(path) // 2)
                die()
            return original_fsync(fd)

        os.fsync = fsync
    elif kind == "export":
        from kcnn.deploy import export

        original_write = export._write_saved_model

        def write(model, temporary, class_names):
            original_write(model, temporary, class_names)
            truncate_half(temporary)
            die()

        export._write_saved_model = write
    elif kind not in ("fitbatch", "predict", "cache"):
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from kcnn.cli import main

    code = main(sys.argv[2:])
    print(f"kill point {sys.argv[1]} was never reached", file=sys.stderr)
    sys.exit(3 if code == 0 else code)
