"""Every private Keras name kcnn uses (kcnn/keras_private.py) still exists: a Keras upgrade that moves one
fails here, with the name and what kcnn does with it, instead of deep inside a run."""

import keras
import pytest

from kcnn import keras_private


@pytest.mark.parametrize("owner, name, use", keras_private.NAMES,
                         ids=[f"{owner.__name__}.{name}" for owner, name, _ in keras_private.NAMES])
def test_every_private_name_kcnn_uses_exists(owner, name, use):
    assert hasattr(owner, name), (
        f"Keras {keras.__version__} has no {owner.__module__}.{owner.__name__}.{name}, which kcnn uses ({use}); "
        f"kcnn was tested with Keras {', '.join(keras_private.TESTED_KERAS)}: see kcnn/keras_private.py.")


def test_the_backup_hooks_still_steer_fit(tmp_path):
    """What kcnn reads and sets through the private names does what kcnn relies on: a callback that sets
    the initial epoch in on_train_begin makes fit() start there, and the backup knows the epoch it is at."""
    import numpy as np

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    seen = []

    class StartAtThree(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            keras_private.set_initial_epoch(self.model, 3)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=5, verbose=0,
              callbacks=[StartAtThree(), keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, l: seen.append(e)),
                         backup])
    assert seen == [3, 4], f"Keras {keras.__version__}'s fit() no longer starts at Model._initial_epoch"
    assert keras_private.backup_epoch(backup) == 5, "BackupAndRestore._current_epoch no longer counts epochs"


def test_the_installed_keras_is_a_tested_version():
    minor = ".".join(keras.__version__.split(".")[:2])
    assert minor in keras_private.TESTED_KERAS, (
        f"Keras {keras.__version__} is not among the versions kcnn's private-API uses were tested with "
        f"({', '.join(keras_private.TESTED_KERAS)}); run the suite and add it to kcnn/keras_private.py.")
