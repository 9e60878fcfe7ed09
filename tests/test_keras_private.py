"""Every private Keras name kcnn uses (kcnn/backends/keras_private.py) still exists and still does what kcnn relies
on: a Keras upgrade that moves one fails here, with the name and what kcnn does with it, instead of deep
inside a run."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kcnn.backends import keras_private

TESTED = ", ".join(keras_private.TESTED_KERAS)


def _missing(where, name, use):
    return (f"Keras {keras.__version__} has no {name} on {where}, which kcnn uses ({use}); kcnn was tested "
            f"with Keras {TESTED}: see kcnn/backends/keras_private.py.")


@pytest.mark.parametrize("owner, name, use", keras_private.CLASS_NAMES,
                         ids=[f"{owner.__name__}.{name}" for owner, name, _ in keras_private.CLASS_NAMES])
def test_every_private_class_name_kcnn_uses_exists(owner, name, use):
    assert hasattr(owner, name), _missing(f"{owner.__module__}.{owner.__name__}", name, use)


def test_every_private_instance_name_kcnn_uses_exists():
    """One object of each kind the list names, and the name on it."""
    inputs = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(2, 1, name="conv")
    outputs = keras.layers.BatchNormalization()(conv(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    seen = {}

    class ReadsTheCallContext(keras.layers.Layer):
        def call(self, x, training=None):
            context = keras_private.call_context()
            seen["context"] = (context.entry_layer, context.training)
            return x

    probe = ReadsTheCallContext()
    probe(np.zeros((1, 2), "float32"), training=True)
    objects = {
        "a built Conv2D": conv, "a Keras variable": conv.kernel, "a layer of a functional model": conv,
        "a symbolic tensor": outputs, "a compiled model": model, "a model": model,
        "a BackupAndRestore": keras.callbacks.BackupAndRestore("unused"),
        "a SwapEMAWeights": keras.callbacks.SwapEMAWeights(swap_on_epoch=True),
        "a node of a functional model": keras_private.inbound_nodes(conv)[0],
    }
    for where, name, use in keras_private.INSTANCE_NAMES:
        if where in objects:
            assert hasattr(objects[where], name), _missing(where, name, use)
    assert keras_private.kernel_variable(conv) is conv.kernel
    assert keras_private.producer(outputs).__class__ is keras.layers.BatchNormalization
    assert keras_private.inbound_nodes(conv) and keras_private.outbound_nodes(conv)
    node_inputs, node_outputs = keras_private.node_tensors(keras_private.inbound_nodes(conv)[0])
    assert node_inputs == [inputs] and keras_private.producer(node_outputs[0]) is conv
    args, _ = keras_private.node_arguments(keras_private.inbound_nodes(conv)[0], {id(inputs): "value"})
    assert args == ("value",), "a Node's arguments no longer fill in the values of its input tensors"
    assert keras_private.call_has_training_arg(model) in (True, False)
    assert seen["context"] == (probe, True), "Keras' call context no longer holds the entry layer and training"
    assert isinstance(keras_private.uninitialized_variables(), list)


def test_the_torch_parameter_hooks_exist_on_torch():
    """`_value` and `_track_variables` are the torch backend's: checked in a torch process."""
    code = ("import keras, torch\nfrom kcnn.backends import keras_private\n"
            "conv = keras.layers.Conv2D(2, 1); conv.build((1, 4, 4, 1))\n"
            "variable = keras_private.kernel_variable(conv)\n"
            "old = keras_private.torch_value(variable); assert isinstance(old, torch.nn.Parameter)\n"
            "new = torch.nn.Parameter(old.detach() * 2)\n"
            "keras_private.set_torch_value(conv, variable, new)\n"
            "assert any(p is new for p in conv.parameters()), 'torch does not see the new parameter'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND="torch"))
    assert result.stdout.strip().endswith("ok"), _missing("a torch layer", "_value or _track_variables",
                                                          "kcnn.backends.torch_fast") + "\n" + result.stderr[-2000:]


def test_the_backup_hooks_still_steer_fit(tmp_path):
    """What kcnn reads and sets through the private names does what kcnn relies on: a callback that sets
    the initial epoch in on_train_begin makes fit() start there, and the backup knows the epoch it is at."""
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
        f"({TESTED}); run the suite and add it to kcnn/backends/keras_private.py.")
