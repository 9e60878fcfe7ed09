"""Keras callbacks that keep a run directory whole when its process is killed at any moment.

`CrashSafeBackup`, `HistoryLog` and `AtomicModelCheckpoint` are Keras' BackupAndRestore, CSVLogger and
ModelCheckpoint with atomic writes (`kcnn.runs.atomic.atomic_path`); why each differs from Keras' own is in its
docstring. The run directory they write into is owned by `kcnn.runs.rundir` (paths, lock, checks).

TensorBoard's event files are the one exception: they are append-only logs,
whose reader skips a torn last record.

`run`: the `kcnn.runs.rundir.RunDir` whose manifest lists the files each writes (entered before they are
written; None where a worker writes into a scratch folder of its own).
"""

from __future__ import annotations

import glob
import json
import os
from typing import TYPE_CHECKING

import keras
import numpy as np

from kcnn.backends import keras_private
from kcnn.runs.atomic import atomic_open, atomic_path
from kcnn.runs.modelfile import finite_outputs
from kcnn.runs.rundir import read_backup_metadata, read_history_rows, tracked, write_history_rows

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from kcnn.runs.rundir import RunDir

# The state of Keras' callbacks that decides what a run does next: saved in the backup with the weights,
# so that a resumed run stops, and lowers its learning rate, exactly when the uninterrupted one would.
DECISION_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


def _json_number(value):
    return None if value is None else float(value) if isinstance(value, (float, np.floating)) else int(value)


class CrashSafeBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose state on disk is always one finished epoch, with everything that decides
    the rest of the run.

    Keras' callback writes `latest.weights.h5` in place and then `training_metadata.json`: a kill during
    the first write leaves a corrupt file, and a kill between the two resumes epoch N's weights (with the
    optimizer's state) as if they were epoch N-1's. Here each epoch's files go to their own names under a
    temporary name, and the metadata, renamed into place last, names the files it belongs with.

    Keras' backup also leaves out what a resumed run needs to continue exactly as the uninterrupted one:
    the random state of the model's layers (dropout, augmentation layers: Keras saves no seed generator
    state with the weights), the state of EarlyStopping and ReduceLROnPlateau (`callbacks`: they must come
    before this one in fit's list, so that an epoch's decisions are taken before it is saved), EarlyStopping's
    best weights, and whether the run stopped early (a resumed run that had stopped trains no more epochs).
    """

    def __init__(self, backup_dir, write_dir=None, callbacks=(), run=None):
        # The run deletes the backup itself once everything else is written,
        # so that a kill after fit() but before the last file resumes too.
        super().__init__(backup_dir, delete_checkpoint=False)
        # Where the backups go: a data-parallel worker that is not the chief restores the chief's backup
        # and writes nowhere (False) or, where saving is a collective every worker joins (several JAX
        # processes), into a scratch folder of its own (kcnn.training.distribute).
        self.write_dir = backup_dir if write_dir is None else write_dir
        self.decision_callbacks = [c for c in callbacks if type(c) in DECISION_STATE]
        self.run = run if self.write_dir == backup_dir else None  # a scratch folder is no run's

    def _save_model(self):  # Keras' hook: called at the end of each epoch
        if self.write_dir is False:
            return
        epoch = keras_private.backup_epoch(self)
        os.makedirs(self.write_dir, exist_ok=True)
        name, state_name = f"epoch_{epoch}.weights.h5", f"epoch_{epoch}.state.npz"
        written = [os.path.join(self.write_dir, file) for file in (name, state_name, "training_metadata.json")]
        with tracked(self.run, *written):
            self._save_files(epoch, name, state_name)
        for old in glob.glob(os.path.join(glob.escape(self.write_dir), "epoch_*")):
            if os.path.basename(old) not in (name, state_name):
                if self.run:
                    self.run.untrack(old)  # removed, and out of the manifest
                else:
                    os.remove(old)

    def _save_files(self, epoch, name, state_name):
        with atomic_path(os.path.join(self.write_dir, name)) as temporary:
            self.model.save_weights(temporary, overwrite=True)
        arrays = _seed_arrays(self.model)
        states = []
        for index, callback in enumerate(self.decision_callbacks):
            states.append({key: _json_number(getattr(callback, key, None)) for key in DECISION_STATE[type(callback)]})
            for position, array in enumerate(getattr(callback, "best_weights", None) or []):
                arrays[f"best_weights:{index}:{position:05d}"] = np.asarray(array)
        with atomic_path(os.path.join(self.write_dir, state_name)) as temporary:
            np.savez(temporary, **arrays)
        with atomic_open(os.path.join(self.write_dir, "training_metadata.json")) as f:
            json.dump({"epoch": epoch, "weights": name, "state": state_name, "callbacks": states,
                       "stopped": bool(self.model.stop_training)}, f)

    def _load_model(self):  # Keras' hook: called by on_train_begin
        metadata = read_backup_metadata(self.backup_dir)
        if metadata is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        arrays = {}
        if metadata.get("state"):
            with np.load(os.path.join(self.backup_dir, metadata["state"])) as saved:
                arrays = {key: saved[key] for key in saved.files}
        _assign_seeds(self.model, arrays)
        for index, (callback, state) in enumerate(zip(self.decision_callbacks, metadata.get("callbacks", []))):
            for key, value in state.items():
                setattr(callback, key, value)
            best = [arrays[key] for key in sorted(arrays) if key.startswith(f"best_weights:{index}:")]
            if hasattr(callback, "best_weights"):
                callback.best_weights = best or None
        epoch = metadata["epoch"]
        if metadata.get("stopped"):  # stopped early: fit() runs no more epochs (EarlyStopping still restores)
            epoch = self.params.get("epochs", epoch) if self.params else epoch
        keras_private.set_initial_epoch(self.model, epoch)


def _seed_states(model):
    """The random state of a model's layers (Keras' SeedGenerator variables), which save_weights leaves out,
    in the model's order of variables (their paths are numbered per process: `seed_generator_3/...`)."""
    return [variable for variable in model.variables if variable.path.endswith("seed_generator_state")]


def _seed_arrays(model):
    return {f"seed:{index}": keras.ops.convert_to_numpy(variable) for index, variable in enumerate(_seed_states(model))}


def _assign_seeds(model, arrays):
    for index, variable in enumerate(_seed_states(model)):
        if f"seed:{index}" in arrays:
            variable.assign(arrays[f"seed:{index}"])


class HistoryLog(keras.callbacks.Callback):
    """history.csv, rewritten whole (temporary name, then rename) after each
    epoch, with each epoch's seconds. Keras' CSVLogger appends in place: a
    kill mid-write leaves a torn row, and a resumed run repeats the rows of
    epochs finished after the last backup. Here a resumed run keeps only the
    rows of the epochs its backup holds.

    For runs in phases (fine-tuning), `phase` names this fit's phase in a `phase` column and
    `epoch_offset` counts its epochs on from the phases before (whose rows are kept); `keys` keeps only
    those metrics, so that every row has the same columns."""

    def __init__(self, path, first_epoch=0, *, phase=None, epoch_offset=0, keys=None, run=None):
        super().__init__()
        self.path = path
        self.run = run
        self.first_epoch = first_epoch
        self.phase = phase
        self.epoch_offset = epoch_offset
        self.keys = keys
        self.rows = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.rows = [row for row in read_history_rows(self.path)
                     if int(row["epoch"]) < self.epoch_offset + self.first_epoch]

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        import time

        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import time

        logs = {key: value for key, value in (logs or {}).items() if self.keys is None or key in self.keys}
        row = {"epoch": self.epoch_offset + epoch, **({"phase": self.phase} if self.phase else {}),
               **{key: float(value) for key, value in sorted(logs.items())}}
        row["seconds"] = round(time.perf_counter() - self._started, 3)
        self.rows.append(row)
        with tracked(self.run, self.path):
            write_history_rows(self.path, self.rows)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary name and renames: Keras'
    writes the .keras zip in place, so a kill mid-save corrupts the previous
    best model too. `model`: the model to save, when it is not the one being
    trained (GoogLeNet trains with auxiliary heads it does not save)."""

    def __init__(self, filepath, model=None, run=None, **kwargs):
        super().__init__(filepath, **kwargs)
        self._model_to_save = model
        self.run = run

    def set_model(self, model: keras.Model) -> None:
        super().set_model(self._model_to_save or model)

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        with tracked(self.run, final), atomic_path(final) as temporary:  # nothing written when not better
            self.filepath = temporary
            try:
                super()._save_model(epoch, batch, logs)
            finally:
                self.filepath = final


def save_model_state(model: keras.Model, stem: str, run: RunDir | None = None) -> None:
    """A phase's final state, written when the phase is done: `STEM.weights.h5` (the weights) and
    `STEM.seeds.npz` (the random state of its layers), the second written last, so that it marks the
    state as whole."""
    with tracked(run, f"{stem}.weights.h5", f"{stem}.seeds.npz"):
        with atomic_path(f"{stem}.weights.h5") as temporary:
            model.save_weights(temporary)
        with atomic_path(f"{stem}.seeds.npz") as temporary:
            np.savez(temporary, **_seed_arrays(model))


class RecordedLogs(keras.callbacks.Callback):
    """Enters the event files TensorBoard wrote in `folder` (`logs/`) in the run's manifest, after each
    epoch and at the end: Keras names them itself, so they cannot be entered before they are written.
    Only names of TensorBoard's own pattern; a file the user put in logs/ stays unlisted (and kept)."""

    def __init__(self, run, folder):
        super().__init__()
        self.run, self.folder = run, folder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.run.record_found(self.folder, "events.out.tfevents.*")

    def on_train_end(self, logs: dict | None = None) -> None:
        self.run.record_found(self.folder, "events.out.tfevents.*")


def load_model_state(model: keras.Model, stem: str) -> bool:
    """Restore what `save_model_state` wrote; False (and nothing changed) when it has not been written."""
    if not os.path.exists(f"{stem}.seeds.npz"):
        return False
    model.load_weights(f"{stem}.weights.h5")
    with np.load(f"{stem}.seeds.npz") as seeds:
        _assign_seeds(model, {key: seeds[key] for key in seeds.files})
    return True


# A cross-entropy of a million is a model whose logits are of the order of a million: it has diverged, even
# where float32 still holds the numbers (a loss of 1e29 with finite weights and infinite outputs was saved as
# a finished model before this check). Ten classes guessed at random: 2.3.
LOSS_LIMIT = 1e6


class DivergenceGuard(keras.callbacks.Callback):
    """Stops a run whose loss is NaN, infinite or over LOSS_LIMIT (checked after each batch, as Keras'
    TerminateOnNaN), or whose validation loss, or outputs on `probe` (a few inputs of the model), are not
    finite at an epoch's end, with `DivergedError` naming the epoch, the loss and `fix` (the learning rate
    and its flag). It raises, where TerminateOnNaN only stops: the callbacks after it (the history, the
    backup) do not record the diverged epoch, so the backup stays at the last sound one, and the run is never
    saved as finished. First in a fit()'s callbacks."""

    def __init__(self, fix, probe=None, model=None, phase=None, epoch_offset=0, verbose=0):
        super().__init__()
        self.verbose = verbose  # a progress bar is on its line: the error starts on the next
        self.fix, self.probe, self.probed, self.phase, self.epoch_offset = fix, probe, model, phase, epoch_offset
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not _sound(loss):
            self._diverged(f"the training loss became {_number(loss)} in batch {batch + 1}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name in ("loss", "val_loss"):
            value = (logs or {}).get(name)
            if value is not None and not _sound(value):
                self._diverged(f"the {'validation' if name == 'val_loss' else 'training'} loss was "
                               f"{_number(value)} at its end")
        if self.probe is not None and not finite_outputs(self.probed or self.model, self.probe):
            self._diverged("the model's outputs on a probe input were NaN or infinite at its end")

    def _diverged(self, what):
        from kcnn.errors import DivergedError

        phase = f" of phase {self.phase}" if self.phase else ""
        if self.verbose:
            print(flush=True)
        raise DivergedError(f"Training diverged in epoch {self.epoch + 1 + self.epoch_offset}{phase}: {what}, and "
                            f"nothing was saved as a finished model; {self.fix}.")


def _sound(loss):
    loss = float(loss)
    return bool(np.isfinite(loss)) and abs(loss) <= LOSS_LIMIT


def _number(value):
    value = float(value)
    return "NaN" if np.isnan(value) else "infinite" if np.isinf(value) else f"{value:.3g}"
