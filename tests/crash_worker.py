"""`kcnn CLI_ARGS...` that kills itself with SIGKILL at one point of the run.

    python tests/crash_worker.py POINT kcnn-arguments...

POINT is where the process dies, as a user's `kill -9` or a lost machine
would stop it:
    batch:E:B     during epoch E (0-based), after batch B
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

    from kcnn import train as training

    kind, *numbers = point.split(":")
    numbers = [int(n) for n in numbers]
    state = {"epoch": -1}

    class Killer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            state["epoch"] = epoch

        def on_train_batch_end(self, batch, logs=None):
            if kind == "batch" and [state["epoch"], batch] == numbers:
                die()

    original_callbacks = training._callbacks
    training._callbacks = lambda *args: [Killer()] + original_callbacks(*args)

    def at_epoch():
        return not numbers or state["epoch"] == numbers[0]

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
        wrap_save(keras.Model, "save_weights", lambda path: "backup" in path and ".tmp." in path)
    elif kind == "best":
        wrap_save(keras.Model, "save", lambda path: path.endswith("best.tmp.keras"))
    elif kind == "model":
        wrap_save(keras.Model, "save", lambda path: path.endswith("model.tmp.keras"))
    elif kind == "history":
        from kcnn import runs

        original_log = runs.HistoryLog.on_epoch_end

        def on_epoch_end(self, epoch, logs=None):
            if epoch == numbers[0]:
                self.rows.append({"epoch": epoch, **(logs or {})})
                with open(self.path.replace(".csv", ".tmp.csv"), "w") as f:
                    f.write("epoch,accuracy,loss\n0,0.1")  # a torn temporary, as a kill mid-write leaves
                die()
            original_log(self, epoch, logs)

        runs.HistoryLog.on_epoch_end = on_epoch_end
    elif kind == "export":
        from kcnn import export

        original_write = export._write_saved_model

        def write(model, temporary, class_names):
            original_write(model, temporary, class_names)
            truncate_half(temporary)
            die()

        export._write_saved_model = write
    elif kind != "batch":
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from kcnn.cli import main

    code = main(sys.argv[2:])
    print(f"kill point {sys.argv[1]} was never reached", file=sys.stderr)
    sys.exit(3 if code == 0 else code)
