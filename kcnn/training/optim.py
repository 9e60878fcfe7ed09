"""Optimizer pieces kcnn's recipes share that Keras has no ready-made form of.

- `Triangle`: airbench94's learning-rate schedule (Jordan 2024), linear up then linear down.
- `Until`: any schedule, then 0 from a given step on (airbench trains its whitening bias for 3 epochs).
- `GroupedOptimizer`: Keras' MultiOptimizer (parameter groups: layer-wise decay, faster batch-norm biases)
  with a `learning_rate` that code written for one optimizer can read and set.
- `add_lookahead`: lookahead (Zhang et al. 2019) as airbench94 schedules it, kept in Keras' own EMA slots,
  so it runs inside the compiled step on every backend and is saved in the optimizer's state.

Each is a few lines over Keras' own classes; the schedules are registered so that a saved model's
optimizer loads again.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kcnn.backends import keras_private


@keras.saving.register_keras_serializable(package="kcnn")
class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """`peak` x a factor that rises linearly from `start` to 1 over the first `warmup` fraction of
    `total_steps`, then falls linearly to `end` at the last step (airbench94: 0.2, 23%, 0.07)."""

    def __init__(self, peak, total_steps, warmup=0.23, start=0.2, end=0.07):
        self.peak, self.total_steps, self.warmup, self.start, self.end = peak, total_steps, warmup, start, end

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = max(1, int(self.total_steps * self.warmup))
        rising = self.start + (1 - self.start) * step / warm
        falling = 1 + (self.end - 1) * (step - warm) / max(1, self.total_steps - warm)
        return self.peak * ops.where(step < warm, rising, ops.maximum(falling, self.end))

    def get_config(self) -> dict:
        return dict(peak=self.peak, total_steps=self.total_steps, warmup=self.warmup, start=self.start,
                    end=self.end)


@keras.saving.register_keras_serializable(package="kcnn")
class Until(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` (a schedule or a number) for the steps before `last_step`, then 0."""

    def __init__(self, schedule, last_step):
        self.schedule, self.last_step = schedule, last_step

    def __call__(self, step):
        rate = self.schedule(step) if callable(self.schedule) else ops.cast(self.schedule, "float32")
        return ops.where(ops.cast(step, "float32") < self.last_step, rate, 0.0)

    def get_config(self) -> dict:
        schedule = self.schedule
        if callable(schedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return dict(schedule=schedule, last_step=self.last_step)

    @classmethod
    def from_config(cls, config: dict) -> Until:
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        return cls(schedule, config["last_step"])


def grouped(default: keras.optimizers.Optimizer, groups: dict) -> GroupedOptimizer:
    """One optimizer per group of variables: `groups` maps optimizers to the paths (variable.path) of the
    variables they update; every other variable takes `default`. A GroupedOptimizer over Keras'
    OptimizerMap (one pattern per group), so that it serializes and loads again."""
    import re

    patterns = {"|".join(re.escape(path) for path in paths): optimizer
                for optimizer, paths in groups.items() if paths}
    return GroupedOptimizer(keras.optimizers.OptimizerMap(default, patterns))


@keras.saving.register_keras_serializable(package="kcnn")
class GroupedOptimizer(keras.optimizers.MultiOptimizer):
    """MultiOptimizer (one optimizer per group of variables) whose learning_rate is its fastest group's:
    setting it scales every group's by the same ratio. (Keras' ReduceLROnPlateau reduces each group itself.)"""

    @property
    def learning_rate(self) -> Any:
        return max((o.learning_rate for o in self.optimizers), key=lambda rate: float(rate))

    @learning_rate.setter
    def learning_rate(self, rate: Any) -> None:
        ratio = float(rate) / float(self.learning_rate)
        for optimizer in self.optimizers:
            optimizer.learning_rate = float(optimizer.learning_rate) * ratio


def add_lookahead(optimizer: keras.optimizers.Optimizer, total_steps: int, every: int = 5,
                  decay: float = 0.95) -> keras.optimizers.Optimizer:
    """Make `optimizer` (before it is built) keep lookahead's slow weights in its EMA slots, as airbench94
    does: the slow weights start as the model's; every `every` steps they move toward the fast ones by
    1 - d, with d = decay**every * (step / total_steps)**3 (plain training at first, a longer average as the
    rate falls), and training continues from them (Keras' ema_overwrite_frequency). Keras' fit() ends on
    the slow weights (finalize_variable_values), as airbench's last lookahead step does. Returns `optimizer`.

    Keras' own EMA has one fixed momentum, updates every step and starts from zeros; this replaces those."""
    optimizer.use_ema = True
    optimizer.ema_overwrite_frequency = every
    build = optimizer.build

    def build_from_the_model(variables):
        build(variables)
        for variable, slow in zip(variables, keras_private.moving_averages(optimizer)):
            if slow is not None:  # a copy: JAX must not see one buffer in two variables (see below)
                slow.assign(ops.copy(variable.value))

    def update_slow_weights(trainable_variables):
        step = optimizer.iterations + 1  # the step being taken, counted from 1
        due = ops.equal(ops.mod(step, every), 0)
        progress = ops.minimum(ops.cast(step, "float32") / total_steps, 1.0)
        keep = ops.where(due, decay ** every * progress ** 3, 1.0)  # 1: not a lookahead step, no change
        for variable, slow in zip(trainable_variables, keras_private.moving_averages(optimizer)):
            if slow is not None:
                k = ops.cast(keep, variable.dtype)
                slow.assign(k * slow + (1 - k) * variable)

    def restart_from_slow_weights(trainable_variables):
        # A copy: on JAX, assigning the array itself leaves the model and the optimizer sharing one buffer
        # after fit() (finalize_variable_values), and the next jitted call that donates it deletes both.
        for variable, slow in zip(trainable_variables, keras_private.moving_averages(optimizer)):
            if slow is not None:
                variable.assign(ops.copy(slow.value))

    optimizer.build = build_from_the_model
    # Keras' EMA calls these inside the compiled update on each step (base_optimizer, and JAX's own).
    keras_private.replace_moving_average(optimizer, update_slow_weights, restart_from_slow_weights)
    return optimizer


class FreezeGroup(keras.callbacks.Callback):
    """From epoch `epoch` on, the variables of one SGD group stop moving at once: `Until` has set their rate
    to 0, and this clears the velocity that Keras' SGD would otherwise keep applying (airbench turns the
    whitening bias's requires_grad off)."""

    def __init__(self, optimizer, epoch):
        super().__init__()
        self.optimizer, self.epoch = optimizer, epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch >= self.epoch:
            for velocity in getattr(self.optimizer, "momentums", ()):
                velocity.assign(ops.zeros(velocity.shape, velocity.dtype))


def dirac_init(model: keras.Model) -> int:
    """Set each trainable standard convolution of `model` (nested models included) to pass its input
    through: the first min(in, out) filters are identities at the kernel's centre, the others keep their
    initialisation (airbench94's Dirac initialisation; torch.nn.init.dirac_ on the first filters).
    Returns the number of convolutions changed."""
    import numpy as np

    changed = 0
    for layer in keras_private.all_layers(model):
        if type(layer) is not keras.layers.Conv2D or not layer.trainable or getattr(layer, "groups", 1) != 1:
            continue
        kernel = layer.kernel
        height, width, inputs, outputs = kernel.shape
        if height % 2 == 0 or width % 2 == 0:
            continue  # no centre
        value = np.array(keras.ops.convert_to_numpy(kernel))
        count = min(inputs, outputs)
        value[..., :count] = 0
        value[height // 2, width // 2, np.arange(count), np.arange(count)] = 1
        kernel.assign(value)
        changed += 1
    return changed
