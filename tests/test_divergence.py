"""Divergence is an error: a run whose loss, validation loss or outputs stop being finite numbers ends with
one sentence (kcnn.errors.DivergedError), the diverged epoch reaches neither the history nor the backup, and
nothing is saved as a finished model. The bad-input table (tests/test_bad_input.py) has the rows a user meets
through both doors (a learning rate of 1e12, a fine-tuning head at 1e9, a model file with NaN weights)."""

import math
import os

import keras
import numpy as np
import pytest

from kcnn.config import TrainConfig
from kcnn.errors import DivergedError
from kcnn.runs.rundir import RunDir
from kcnn.training.callbacks import LOSS_LIMIT, DivergenceGuard
from kcnn.training.train import train

FIX = "pass a lower learning rate (--learning-rate, it was 0.1) and start again with --overwrite"


def _dense(bias=0.0):
    inputs = keras.Input((4,))
    layer = keras.layers.Dense(3, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(bias))
    return keras.Model(inputs, layer(inputs))


def _guard(model=None, **kwargs):
    guard = DivergenceGuard(FIX, probe=np.ones((2, 4), "float32") if model is not None else None, model=model,
                            **kwargs)
    guard.set_model(model or _dense())
    return guard


@pytest.mark.parametrize("logs, said", [
    ({"loss": 1e29, "val_loss": math.nan}, "the training loss was 1e+29 at its end"),  # the run
    ({"loss": 0.5, "val_loss": math.nan}, "the validation loss was NaN at its end"),
    ({"loss": math.inf}, "the training loss was infinite at its end"),
    ({"loss": 0.5, "val_loss": -math.inf}, "the validation loss was infinite at its end"),
])
def test_a_loss_that_is_not_a_sound_number_ends_the_run_with_one_sentence(logs, said):
    guard = _guard()
    guard.on_epoch_begin(2)
    with pytest.raises(DivergedError) as caught:
        guard.on_epoch_end(2, logs)
    assert str(caught.value) == (f"Training diverged in epoch 3: {said}, and nothing was saved as a finished "
                                 f"model; {FIX}.")


def test_a_batch_whose_loss_is_nan_stops_the_run_at_once_and_names_it():
    guard = _guard(phase="2 (fine-tuning)", epoch_offset=4)
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(0, {"loss": 2.3})  # sound: nothing happens
    with pytest.raises(DivergedError, match=r"^Training diverged in epoch 6 of phase 2 \(fine-tuning\): the "
                                            r"training loss became NaN in batch 8, and"):
        guard.on_train_batch_end(7, {"loss": float("nan")})


def test_sound_losses_pass_and_the_limit_is_far_above_any_real_cross_entropy():
    guard = _guard(_dense())
    guard.on_train_batch_end(0, {"loss": 2.3})
    guard.on_epoch_end(0, {"loss": 2.3, "val_loss": 9.0, "accuracy": 0.1})
    assert LOSS_LIMIT >= 1e4 * math.log(1000)  # a thousand classes guessed at random, ten thousand times over
    with pytest.raises(DivergedError, match="the training loss was 2e\\+06"):
        guard.on_epoch_end(0, {"loss": 2 * LOSS_LIMIT})


def test_outputs_that_are_not_finite_on_the_probe_end_the_run_though_the_losses_look_sound():
    guard = _guard(_dense(bias=np.inf))
    with pytest.raises(DivergedError, match="the model's outputs on a probe input were NaN or infinite"):
        guard.on_epoch_end(0, {"loss": 2.3, "val_loss": 2.3})


class _Explode(keras.callbacks.Callback):
    """After the first epoch (its history and backup written), weights of the order of 1e30: the next
    epoch's loss is not a number, as an exploding learning rate would make it."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            for layer in self.model.layers:
                if layer.get_weights():
                    layer.set_weights([np.full_like(w, 1e30) for w in layer.get_weights()])


def test_a_run_that_diverges_in_its_second_epoch_keeps_the_first_and_saves_no_model(tmp_path):
    output = tmp_path / "run"
    config = TrainConfig(dataset="digits", arch="lenet5", image_size=32, epochs=3, limit=128, batch_size=64,
                         verbose=0, output_dir=str(output))
    with pytest.raises(DivergedError, match=r"^Training diverged in epoch 2: .*--learning-rate, it was"):
        train(config, callbacks=[_Explode()])
    run = RunDir(str(output))
    assert [int(row["epoch"]) for row in run.history_rows()] == [0]  # the diverged epoch is not recorded
    assert run.resumed_epoch() == 1  # the backup is the sound first epoch's
    assert not os.path.exists(output / "model.keras") and not run.is_finished()
