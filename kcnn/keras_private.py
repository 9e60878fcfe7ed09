"""Every private Keras name kcnn uses, in one place, with the Keras versions it was tested with.

keras.applications touches no private API; kcnn must in a few places (the crash-safe backup's hooks, its
torch kernels, DDP inside fit()). Each use goes through this module, and `tests/test_keras_private.py`
checks that every name below still exists, so a Keras upgrade that moves one fails there, loudly, in one
place, instead of deep inside a run. pyproject.toml bounds keras to the tested minor versions.
"""

import keras

TESTED_KERAS = ("3.15",)  # minor versions the suite ran on (constraints.txt pins 3.15.1)

# (object, attribute, what kcnn does with it): checked by tests/test_keras_private.py
NAMES = [
    (keras.callbacks.BackupAndRestore, "_save_model", "overridden: kcnn.runs.CrashSafeBackup writes atomically"),
    (keras.callbacks.BackupAndRestore, "_load_model", "overridden: CrashSafeBackup restores the callbacks' state"),
    (keras.callbacks.ModelCheckpoint, "_save_model", "overridden: kcnn.runs.AtomicModelCheckpoint"),
]
# Instance attributes set in __init__ or by fit(), checked on instances by the test.
BACKUP_ATTRIBUTES = ("_current_epoch",)  # BackupAndRestore: the epoch its next backup belongs to
MODEL_ATTRIBUTES = ("_initial_epoch",)  # Trainer: where fit() starts, as BackupAndRestore sets it


def backup_epoch(callback):
    """The epoch a BackupAndRestore's backup resumes at (the one after the epoch just finished)."""
    return callback._current_epoch


def set_initial_epoch(model, epoch):
    """Tell fit() to start at `epoch`: what Keras' own BackupAndRestore does in on_train_begin."""
    model._initial_epoch = epoch
