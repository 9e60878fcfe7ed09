"""Every private Keras name kcnn uses, in one place, with the Keras versions it was tested with.

keras.applications touches no private API; kcnn must in a few places (the crash-safe backup's hooks, its
torch kernels, DDP inside fit(), counting MACs, re-seeding augmentation inside tf.data, building models for
their shapes only, lookahead in the optimizer's EMA slots, the layers of nested models). Every use goes
through a function of this module (overridden methods: listed as such), and `tests/test_keras_private.py`
checks that each name below still exists and still does what kcnn relies on, so a Keras upgrade that moves
one fails there, loudly, in one place, instead of deep inside a run; it also checks that no other module of
kcnn uses a private Keras name. pyproject.toml bounds keras to the tested minor versions.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Callable

import keras

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import torch

TESTED_KERAS = ("3.15",)  # minor versions the suite ran on (constraints.txt pins 3.15.1)

# (owner, name, what kcnn does with it): names found on classes (methods, overridden hooks).
CLASS_NAMES = [
    (keras.callbacks.BackupAndRestore, "_save_model", "overridden: kcnn.training.callbacks.CrashSafeBackup writes atomically"),
    (keras.callbacks.BackupAndRestore, "_load_model", "overridden: CrashSafeBackup restores the callbacks' state"),
    (keras.callbacks.ModelCheckpoint, "_save_model", "overridden: kcnn.training.callbacks.AtomicModelCheckpoint"),
    (keras.Model, "_compute_loss", "DDP's train step (kcnn.training.distribute) computes the loss as Keras' own"),
    (keras.Model, "_get_metrics_result_or_logs", "DDP: replaced to sum the metrics over the workers"),
    (keras.layers.RandomFlip, "_get_seed_generator", "augmentation re-seeded inside tf.data (kcnn.data.pipeline)"),
    (keras.Variable, "_deferred_initialize", "kcnn.backends.initializers.initialize_the_rest: a weight no file gave a value"),
    (keras.Model, "_resolve_auto_jit_compile", "kcnn.runs.modelfile: a loaded model's jit_compile as 'auto' gives here"),
    (keras.layers.Layer, "_flatten_layers", "every layer of a model, nested models' included (kcnn.training.optim, kcnn.training.train)"),
    (keras.Optimizer, "_update_model_variables_moving_average",
     "replaced on an instance: kcnn.training.optim.add_lookahead moves the slow weights inside the compiled step"),
    (keras.Optimizer, "_overwrite_model_variables_with_average_value",
     "replaced on an instance: add_lookahead restarts from the slow weights (and fit() ends on them)"),
]
# Names found on instances (set in __init__, by build() or by a call): the test makes one of each.
INSTANCE_NAMES = [
    ("a built Conv2D", "_kernel", "kcnn.backends.torch_fast stores the kernel in torch's layout (Conv2D.kernel adds LoRA)"),
    ("a Keras variable", "_value", "torch_fast swaps the torch parameter behind a variable"),
    ("a layer on the torch backend", "_track_variables", "torch_fast lists the new parameter for torch"),
    ("a layer of a functional model", "_inbound_nodes", "torch_fast folds batch norms; kcnn.inspect.summary counts MACs"),
    ("a layer of a functional model", "_outbound_nodes", "torch_fast folds a batch norm into its only producer"),
    ("a node of a functional model", "arguments", "kcnn.inspect.explain runs a model's graph layer by layer (a Node's "
     "arguments.fill_in, input_tensors and outputs)"),
    ("a symbolic tensor", "_keras_history", "the layer that made a tensor (torch_fast, kcnn.weights.loading)"),
    ("a compiled model", "_loss_tracker", "DDP's train step tracks the loss as Keras' own"),
    ("a model", "_call_has_training_arg", "DDP's train step passes training=True as Keras' own"),
    ("a model", "_initial_epoch", "where fit() starts: set by a backup, as Keras' BackupAndRestore does"),
    ("an optimizer built with use_ema", "_model_variables_moving_average",
     "kcnn.training.optim.add_lookahead keeps lookahead's slow weights in the EMA slots"),
    ("a MultiOptimizer", "_optimizer_map", "the optimizer of one variable's group (kcnn.training.train's FreezeGroup)"),
    ("a BackupAndRestore", "_current_epoch", "the epoch a backup resumes at"),
    ("a SwapEMAWeights", "_ema_weights_in_model", "a fine-tuning run with --ema resumes from a backup that holds "
     "the average in the model"),
    ("keras.src.backend.common.global_state", "current_call_ctx", "torch_fast: the training flag of a call"),
    ("keras.src.backend.common.global_state", "uninitialized_variables", "kcnn.backends.initializers.weightless_scope"),
]


# ---- the crash-safe backup (kcnn.training.callbacks) -------------------------------------------------------------------

def backup_epoch(callback: keras.callbacks.BackupAndRestore) -> int:
    """The epoch a BackupAndRestore's backup resumes at (the one after the epoch just finished)."""
    return callback._current_epoch


def set_initial_epoch(model: keras.Model, epoch: int) -> None:
    """Tell fit() to start at `epoch`: what Keras' own BackupAndRestore does in on_train_begin."""
    model._initial_epoch = epoch


def resumes_with_ema_weights_in_model(callback: keras.callbacks.SwapEMAWeights) -> keras.callbacks.SwapEMAWeights:
    """Tell a SwapEMAWeights(swap_on_epoch=True) that the model holds the moving average, as a backup
    saved at the end of an epoch has it (it swaps the training weights back when the next epoch begins)."""
    callback._ema_weights_in_model = True
    return callback


# ---- compiling ---------------------------------------------------------------------------------------------

def auto_jit_compile(model: keras.Model) -> bool:
    """What jit_compile="auto" means for `model` on this backend (True on JAX and TensorFlow where the model
    supports XLA, False on torch)."""
    return model._resolve_auto_jit_compile()


# ---- Keras' global state ---------------------------------------------------------------------------------

def global_state() -> types.ModuleType:
    from keras.src.backend.common import global_state as state  # no public way to read or forget these

    return state


def call_context() -> Any:
    """The call context of the layer call in progress (its entry layer and `training` value), or None."""
    return global_state().get_global_attribute("current_call_ctx")


def uninitialized_variables() -> list[keras.Variable]:
    return list(global_state().get_global_attribute("uninitialized_variables", []) or [])


def set_uninitialized_variables(variables: list[keras.Variable]) -> None:
    global_state().set_global_attribute("uninitialized_variables", variables)


def has_value(variable: keras.Variable) -> bool:
    """Whether a variable made in a StatelessScope (JAX defers its value) has one yet."""
    return variable._value is not None


def initialize(variable: keras.Variable) -> None:
    """Give a deferred variable its initializer's value, as Keras does when a StatelessScope closes."""
    variable._deferred_initialize()


# ---- optimizers (kcnn.training.optim, kcnn.training.train) -----------------------------------------------------------------

def moving_averages(optimizer: keras.Optimizer) -> list[keras.Variable] | None:
    """The EMA slots of a built optimizer with use_ema, one per variable it was built with (None: none)."""
    return optimizer._model_variables_moving_average


def replace_moving_average(optimizer: keras.Optimizer, update: Callable[[list[keras.Variable]], None],
                           overwrite: Callable[[list[keras.Variable]], None]) -> None:
    """Make `optimizer` call update(trainable_variables) where Keras updates its EMA (inside the compiled
    step, each step), and overwrite(trainable_variables) where Keras writes the EMA into the model (every
    ema_overwrite_frequency steps, except on JAX, whose step writes it itself; and at the end of fit())."""
    optimizer._update_model_variables_moving_average = update
    optimizer._overwrite_model_variables_with_average_value = overwrite


def group_optimizer(multi_optimizer: keras.optimizers.MultiOptimizer, variable: keras.Variable) -> keras.Optimizer:
    """The optimizer of a MultiOptimizer's group that updates `variable`."""
    return multi_optimizer._optimizer_map(variable)


def all_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer of `model`, those of nested models included, `model` itself left out."""
    return model._flatten_layers(include_self=False, recursive=True)


# ---- the graph of a functional model ---------------------------------------------------------------------

def inbound_nodes(layer: keras.Operation) -> list:
    return getattr(layer, "_inbound_nodes", [])


def outbound_nodes(layer: keras.Operation) -> list:
    return getattr(layer, "_outbound_nodes", [])


def producer(tensor: keras.KerasTensor) -> keras.Operation:
    """The layer that made a symbolic tensor."""
    return tensor._keras_history.operation


def node_tensors(node: Any) -> tuple[list[keras.KerasTensor], list[keras.KerasTensor]]:
    """(input tensors, output tensors) of one call of a layer in a functional graph (a keras.src Node)."""
    return node.input_tensors, node.outputs


def node_arguments(node: Any, values: dict[int, Any]) -> tuple[tuple, dict]:
    """(args, kwargs) of a layer call in a functional graph, its symbolic tensors replaced by `values`
    ({id(symbolic tensor): value}): what Keras' Functional.call passes to the layer (kcnn.inspect.explain walks a
    model's graph this way, to read and change one layer's output)."""
    return node.arguments.fill_in(values)


# ---- torch kernels (kcnn.backends.torch_fast) ---------------------------------------------------------------------

def kernel_variable(layer: keras.layers.Layer) -> keras.Variable:
    """The kernel variable itself (Conv2D.kernel adds a LoRA term where LoRA is enabled)."""
    return layer._kernel if isinstance(layer, keras.layers.Conv2D) else layer.kernel


def torch_value(variable: keras.Variable) -> torch.nn.Parameter | None:
    """The torch parameter behind a Keras variable on the torch backend (None before it exists)."""
    return getattr(variable, "_value", None)


def set_torch_value(layer: keras.layers.Layer, variable: keras.Variable, parameter: torch.nn.Parameter) -> None:
    """Put `parameter` behind `variable` and let the layer list it for torch (named_parameters)."""
    variable._value = parameter
    layer._track_variables()


# ---- DDP inside fit() (kcnn.training.distribute) ------------------------------------------------------------------

def call_has_training_arg(model: keras.Model) -> bool:
    return model._call_has_training_arg


def compute_loss(model: keras.Model, **kwargs: Any) -> Any:
    return model._compute_loss(**kwargs)


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    return model._loss_tracker


def replace_metrics_result(trainer: keras.Model, function: Callable[[dict], dict]) -> None:
    """fit()'s logs come from `function(logs)` instead of the trainer's own metrics."""
    trainer._get_metrics_result_or_logs = function


def restore_metrics_result(trainer: keras.Model) -> None:
    trainer.__dict__.pop("_get_metrics_result_or_logs", None)


# ---- augmentation inside tf.data (kcnn.data.pipeline) -----------------------------------------------------

def tf_data_seed_generator(layer: keras.layers.Layer) -> keras.random.SeedGenerator:
    """The SeedGenerator a Keras preprocessing layer draws from inside tf.data (Keras' TFDataLayer)."""
    return layer._get_seed_generator("tensorflow")
