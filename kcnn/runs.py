"""What keeps a run directory whole when its process is killed at any moment.

- `RunLock`: one process at a time writes a run directory (an OS file lock,
  which the kernel releases when the holder dies, even by SIGKILL).
- Every file is written under a temporary name and renamed into place
  (`kcnn.utils.replace_file` and `atomic_open`), so a reader sees the old file
  or the new one, never half of one.
- `CrashSafeBackup`, `HistoryLog` and `AtomicModelCheckpoint`: Keras'
  BackupAndRestore, CSVLogger and ModelCheckpoint with those writes (why each
  differs from Keras' own is in its docstring).

TensorBoard's event files are the one exception: they are append-only logs,
whose reader skips a torn last record.
"""

import contextlib
import csv
import errno
import glob
import json
import os
import shutil

import keras

from kcnn.errors import KcnnError
from kcnn.utils import atomic_open, replace_file

LOCK_NAME = ".kcnn.lock"


class RunLockedError(KcnnError):
    """Another process is writing to the same run directory."""


class RunLock:
    """Held while a process writes `run_dir`; refused to a second one."""

    def __init__(self, run_dir):
        from filelock import FileLock

        self.run_dir = run_dir
        self._lock = FileLock(os.path.join(run_dir, LOCK_NAME), timeout=0)

    def acquire(self):
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"Another kcnn process is writing to {self.run_dir}; wait until it ends (or stop it, then pass "
                f"--resume), or choose another output directory."
            ) from None
        return self

    def release(self):
        self._lock.release()

    def __enter__(self):  # the block releases it; acquire() may have taken it before
        return self if self._lock.is_locked else self.acquire()

    def __exit__(self, *exc):
        self.release()


class RunWriteError(KcnnError):
    """The operating system refused a write (a read-only folder, a full disk)."""


# errno values that mean "this folder cannot take the file", as opposed to a bug
_WRITE_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def write_errors_explained(run_dir, resumable=False):
    """Turn the operating system's refusals to write into one sentence that
    says what to do; files already in place stay as they were (every write
    goes to a temporary name first)."""
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_REFUSED:
            raise
        where = error.filename or run_dir
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            fix = "free some disk space" + (", then pass --resume to continue the run" if resumable else
                                            ", then run it again with --overwrite")
        else:
            fix = "choose an output directory you can write to (--output-dir)"
        raise RunWriteError(f"Could not write {where} ({error.strerror}); {fix}.") from None


def remove_stale_temporaries(run_dir):
    """Temporaries a killed process left behind (a finished write renames
    its own away): `*.tmp.*` files and the exporter's `.NAME.*` folders."""
    patterns = ("*.tmp.*", os.path.join("backup", "*.tmp.*"), os.path.join("export", ".*"))
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            if os.path.basename(path) == LOCK_NAME:
                continue
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


class CrashSafeBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose state on disk is always one finished epoch.

    Keras' callback writes `latest.weights.h5` in place and then
    `training_metadata.json`: a kill during the first write leaves a corrupt
    file, and a kill between the two resumes epoch N's weights (with the
    optimizer's state) as if they were epoch N-1's. Here each epoch's weights
    go to their own file under a temporary name, and the metadata, renamed
    into place last, names the weights file it belongs with.
    """

    def __init__(self, backup_dir, write_dir=None):
        # The run deletes the backup itself once everything else is written,
        # so that a kill after fit() but before the last file resumes too.
        super().__init__(backup_dir, delete_checkpoint=False)
        # Where the backups go: a data-parallel worker that is not the chief restores the chief's backup
        # and writes nowhere (False) or, where saving is a collective every worker joins (several JAX
        # processes), into a scratch folder of its own (kcnn.distribute).
        self.write_dir = backup_dir if write_dir is None else write_dir

    def _save_model(self):
        if self.write_dir is False:
            return
        os.makedirs(self.write_dir, exist_ok=True)
        name = f"epoch_{self._current_epoch}.weights.h5"
        temporary = os.path.join(self.write_dir, f"epoch_{self._current_epoch}.tmp.weights.h5")
        self.model.save_weights(temporary, overwrite=True)
        replace_file(temporary, os.path.join(self.write_dir, name))
        with atomic_open(os.path.join(self.write_dir, "training_metadata.json")) as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}, f)
        for old in glob.glob(os.path.join(glob.escape(self.write_dir), "epoch_*.weights.h5")):
            if os.path.basename(old) != name:
                os.remove(old)

    def _load_model(self):
        metadata = read_backup_metadata(self.backup_dir)
        if metadata is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self.model._initial_epoch = metadata["epoch"]  # how Keras' own callback tells fit() where to start


def read_backup_metadata(backup_dir):
    """{"epoch": the next epoch to run, "weights": file name}, or None."""
    try:
        with open(os.path.join(backup_dir, "training_metadata.json")) as f:
            metadata = json.load(f)
        return metadata if "weights" in metadata else None
    except (OSError, ValueError):
        return None


class HistoryLog(keras.callbacks.Callback):
    """history.csv, rewritten whole (temporary name, then rename) after each
    epoch, with each epoch's seconds. Keras' CSVLogger appends in place: a
    kill mid-write leaves a torn row, and a resumed run repeats the rows of
    epochs finished after the last backup. Here a resumed run keeps only the
    rows of the epochs its backup holds."""

    def __init__(self, path, first_epoch=0):
        super().__init__()
        self.path = path
        self.first_epoch = first_epoch
        self.rows = []

    def on_train_begin(self, logs=None):
        self.rows = [row for row in read_history_rows(self.path) if int(row["epoch"]) < self.first_epoch]

    def on_epoch_begin(self, epoch, logs=None):
        import time

        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import time

        row = {"epoch": epoch, **{key: float(value) for key, value in sorted((logs or {}).items())}}
        row["seconds"] = round(time.perf_counter() - self._started, 3)
        self.rows.append(row)
        keys = list(dict.fromkeys(key for row in self.rows for key in row))
        with atomic_open(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)


def read_history_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary name and renames: Keras'
    writes the .keras zip in place, so a kill mid-save corrupts the previous
    best model too. `model`: the model to save, when it is not the one being
    trained (GoogLeNet trains with auxiliary heads it does not save)."""

    def __init__(self, filepath, model=None, **kwargs):
        super().__init__(filepath, **kwargs)
        self._model_to_save = model

    def set_model(self, model):
        super().set_model(self._model_to_save or model)

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        root, extension = os.path.splitext(final)
        temporary = f"{root}.tmp{extension}"
        self.filepath = temporary
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = final
        if os.path.exists(temporary):  # it saved (a better model)
            replace_file(temporary, final)
