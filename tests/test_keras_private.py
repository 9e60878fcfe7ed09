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

    averaged = keras.optimizers.SGD(use_ema=True)
    averaged.build(model.trainable_variables)
    faster = keras.optimizers.SGD()
    grouped = keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(keras.optimizers.SGD(),
                                                                            {conv.bias.path: faster}))
    probe = ReadsTheCallContext()
    probe(np.zeros((1, 2), "float32"), training=True)
    objects = {
        "a built Conv2D": conv, "a Keras variable": conv.kernel, "a layer of a functional model": conv,
        "a symbolic tensor": outputs, "a compiled model": model, "a model": model,
        "a BackupAndRestore": keras.callbacks.BackupAndRestore("unused"),
        "a SwapEMAWeights": keras.callbacks.SwapEMAWeights(swap_on_epoch=True),
        "a node of a functional model": keras_private.inbound_nodes(conv)[0],
        "an optimizer built with use_ema": averaged, "a MultiOptimizer": grouped,
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
    assert len(keras_private.moving_averages(averaged)) == len(model.trainable_variables)
    assert keras_private.group_optimizer(grouped, conv.bias) is faster
    nested = keras.Sequential([keras.Input((4, 4, 1)), model])
    assert conv in list(keras_private.all_layers(nested)), "_flatten_layers no longer reaches nested layers"


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


# ---- no private Keras name outside kcnn/backends/keras_private.py ---------------------------------------------------
# The rule, checked on kcnn's source with `ast` (no import of it): outside keras_private.py, kcnn
# - reads or sets no attribute `x._name` (nor getattr/setattr/hasattr/vars(x)/x.__dict__ with "_name") unless
#   kcnn itself defines `_name` (a function, class, method, module-level name, an attribute it sets on self,
#   or one named `_kcnn_...` that it sets on another library's object), or `_name` is another library's in
#   OTHER_LIBRARIES;
# - in a class that subclasses a Keras class, defines, reads or sets no `_name` (self._name, super()._name,
#   def _name) that the Keras base classes have (as a class attribute or set on self in their source), unless
#   keras_private.CLASS_NAMES lists it as "overridden";
# - imports nothing from keras.src, nor a private name from keras, and reads no `keras.src`.

import ast
import importlib
import inspect
import pathlib

PACKAGE = pathlib.Path(keras_private.__file__).parent.parent  # kcnn/
# Private names of other libraries than Keras, which the rule is not about: each says whose and why.
OTHER_LIBRARIES = {
    "_version": "torch.Tensor._version, torch's in-place version counter: kcnn.backends.torch_fast's caches",
}
_STRING_ACCESS = {"getattr", "hasattr", "setattr", "delattr", "__setattr__", "__getattribute__", "__delattr__"}


def _is_private(name):
    return isinstance(name, str) and name.startswith("_") and not (name.startswith("__") and name.endswith("__")) \
        and name.isidentifier()


def _dotted(node):
    """'a.b.c' for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


def _aliases(tree):
    """{local name: full dotted name} of a module's imports."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _string_accesses(node):
    """("_name", store?) for string-based attribute access: getattr(x, "_name"), object.__setattr__(x, "_name",
    v), vars(x).get("_name"), x.__dict__.pop("_name"), x.__dict__["_name"] (= v)."""
    if isinstance(node, ast.Call):
        function = node.func
        name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
        strings = [a.value for a in node.args if isinstance(a, ast.Constant) and _is_private(a.value)]
        if name in _STRING_ACCESS:
            return [(s, name in ("setattr", "__setattr__")) for s in strings]
        if name in ("get", "pop", "setdefault") and _is_namespace(function.value):
            return [(s, name == "setdefault") for s in strings[:1]]
    if isinstance(node, ast.Subscript) and _is_namespace(node.value) and isinstance(node.slice, ast.Constant) \
            and _is_private(node.slice.value):
        return [(node.slice.value, isinstance(node.ctx, ast.Store))]
    return []


def _is_namespace(node):
    return (isinstance(node, ast.Attribute) and node.attr == "__dict__") or \
        (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars")


def _keras_names(cls, cache={}):
    """The private names a Keras class has: class attributes, and attributes its (Keras) classes set on self."""
    if cls not in cache:
        names = set()
        for base in cls.__mro__:
            if not base.__module__.startswith("keras"):
                continue
            names.update(name for name in vars(base) if _is_private(name))
            try:
                source = ast.parse(inspect.cleandoc("\n" + inspect.getsource(base)))
            except (OSError, TypeError, SyntaxError):
                continue
            names.update(node.attr for node in ast.walk(source) if isinstance(node, ast.Attribute)
                         and _is_private(node.attr) and isinstance(node.value, ast.Name) and node.value.id == "self")
        cache[cls] = names
    return cache[cls]


def _resolve_keras(dotted):
    """The Keras object a full dotted name ('keras.callbacks.Callback') names, or None."""
    parts = dotted.split(".")
    try:
        value = importlib.import_module(parts[0])
        for part in parts[1:]:
            value = getattr(value, part)
    except (ImportError, AttributeError):
        return None
    return value if isinstance(value, type) else None


def private_keras_uses(sources):
    """'file:line: what' for each private Keras name used in `sources` ({path: Python source}), by the rule
    above."""
    trees = {path: ast.parse(text, filename=str(path)) for path, text in sources.items()}
    aliases = {path: _aliases(tree) for path, tree in trees.items()}

    def full_bases(path, node):
        bases = []
        for base in node.bases:
            dotted = _dotted(base)
            if dotted:
                head, _, rest = dotted.partition(".")
                full = aliases[path].get(head, head)
                bases.append(f"{full}.{rest}" if rest else full)
        return bases

    # kcnn's classes, by name and by module.name, with their bases as full dotted names
    classes = {}
    for path, tree in trees.items():
        module = ".".join(pathlib.PurePath(path).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, full_bases(path, node))
                classes.setdefault(f"{module}.{node.name}", full_bases(path, node))

    def keras_bases(bases, seen=()):
        found = []
        for base in bases:
            if base.split(".")[0] == "keras":
                found += [c for c in [_resolve_keras(base)] if c is not None]
            elif base not in seen:
                key = base if base in classes else base.split(".")[-1]
                found += keras_bases(classes.get(key, []), seen + (base,))
        return found

    def walk(path, node, keras_classes=()):
        """(node, the Keras classes that the class around it subclasses) for every node under `node`."""
        yield node, keras_classes
        inner = keras_bases(full_bases(path, node)) if isinstance(node, ast.ClassDef) else keras_classes
        for child in ast.iter_child_nodes(node):
            yield from walk(path, child, inner)

    def keras_name(keras_classes, name):
        return any(name in _keras_names(c) for c in keras_classes)

    def registered_override(keras_classes, name):
        return any(n == name and use.startswith("overridden") and issubclass(c, owner)
                   for c in keras_classes for owner, n, use in keras_private.CLASS_NAMES)

    own = set()
    for path, tree in trees.items():
        for node, keras_classes in walk(path, tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _is_private(node.name):
                if not keras_name(keras_classes, node.name):  # an override of Keras' is not kcnn's own
                    own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _is_private(node.id):
                own.add(node.id)
            elif isinstance(node, ast.alias) and _is_private(node.asname or node.name.split(".")[-1]):
                own.add(node.asname or node.name.split(".")[-1])
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_private(node.attr):
                if (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                        and not keras_name(keras_classes, node.attr)) or node.attr.startswith("_kcnn"):
                    own.add(node.attr)  # set on self; on another object only as _kcnn_...
            else:
                own.update(name for name, store in _string_accesses(node) if store and name.startswith("_kcnn"))

    found = []
    for path, tree in trees.items():
        names = aliases[path]

        def report(node, what):
            found.append(f"{path}:{node.lineno}: {what}")

        for node, keras_classes in walk(path, tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and keras_name(keras_classes, node.name) \
                    and not registered_override(keras_classes, node.name):
                report(node, f"def {node.name} overrides a private method of Keras' {keras_classes[0].__name__}")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "keras.src" or alias.name.startswith("keras.src."):
                        report(node, f"import {alias.name}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "keras":
                if node.module == "keras.src" or node.module.startswith("keras.src."):
                    report(node, f"from {node.module} import ...")
                for alias in node.names:
                    if alias.name == "src" or _is_private(alias.name):
                        report(node, f"from {node.module} import {alias.name}")
            elif isinstance(node, ast.Attribute):
                dotted = _dotted(node)
                head = dotted.split(".")[0] if dotted else None
                if node.attr == "src" and head and names.get(head, head) + dotted[len(head):] == "keras.src":
                    report(node, "keras.src")
                elif _is_private(node.attr):
                    receiver = node.value
                    on_self = isinstance(receiver, ast.Name) and receiver.id == "self" or (
                        isinstance(receiver, ast.Call) and getattr(receiver.func, "id", None) == "super")
                    if on_self and keras_name(keras_classes, node.attr):
                        if not registered_override(keras_classes, node.attr):
                            report(node, f"{ast.unparse(node)}: a private attribute of Keras' "
                                   f"{keras_classes[0].__name__}")
                    elif node.attr not in own and node.attr not in OTHER_LIBRARIES:
                        report(node, f"{ast.unparse(node)}: private, and not kcnn's own")
            elif isinstance(node, ast.Call):
                function = node.func
                name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
                if name in ("import_module", "__import__") and any(
                        isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("keras.src")
                        for a in node.args):
                    report(node, ast.unparse(node))
            for name, _ in _string_accesses(node):
                if name not in own and name not in OTHER_LIBRARIES:
                    report(node, f"{ast.unparse(node)}: private, and not kcnn's own")
    return found


def test_the_moving_average_hooks_are_called_by_the_step():
    """add_lookahead's replaced EMA hooks (keras_private.replace_moving_average) run inside apply()."""
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras.optimizers.SGD(0.1, use_ema=True, ema_overwrite_frequency=2)
    calls = []
    keras_private.replace_moving_average(optimizer, lambda v: calls.append("update"),
                                         lambda v: calls.append("overwrite"))
    for _ in range(2):
        optimizer.apply([keras.ops.ones(2)], [variable])
    optimizer.finalize_variable_values([variable])
    # (JAX's apply writes the average into the model itself instead of calling the second hook each step)
    assert calls[:2] == ["update", "update"] and calls[-1] == "overwrite", calls


def test_no_private_keras_name_outside_keras_private():
    """Every private Keras name kcnn uses goes through kcnn/backends/keras_private.py, where the tests above check it."""
    sources = {path.relative_to(PACKAGE.parent).as_posix(): path.read_text(encoding="utf-8")
               for path in sorted(PACKAGE.rglob("*.py")) if path.name != "keras_private.py"}
    found = private_keras_uses(sources)
    assert not found, ("private Keras names used outside kcnn/backends/keras_private.py (add a function there, list the "
                       "name in CLASS_NAMES or INSTANCE_NAMES, and call it):\n" + "\n".join(found))


def test_the_check_finds_private_keras_names():
    """The check above can fail: each kind of use it looks for, in a made-up module."""
    source = ("import keras, torch\nfrom keras.src import backend\nimport keras.src.ops\n"
              "model._flatten_layers()\nx = getattr(model, '_loss_tracker')\ny = keras.src.ops\n"
              "z = torch._C\n"
              "class Backup(keras.callbacks.BackupAndRestore):\n"
              "    def _save_model(self): pass\n"  # registered in CLASS_NAMES as overridden: allowed
              "class Hooks(keras.layers.Layer):\n"
              "    def _flatten_layers(self): pass\n"  # overrides Keras' own
              "    def _mine(self): return self._tracker\n")
    found = "\n".join(private_keras_uses({"made_up.py": source}))
    for expected in ("made_up.py:2: from keras.src import", "made_up.py:3: import keras.src.ops",
                     "made_up.py:4: model._flatten_layers", "made_up.py:5: getattr(model, '_loss_tracker')",
                     "made_up.py:6: keras.src", "made_up.py:7: torch._C", "made_up.py:11: def _flatten_layers",
                     "made_up.py:12: self._tracker"):
        assert expected in found, f"{expected!r} not found in:\n{found}"
    assert "_save_model" not in found and "_mine" not in found, found


def test_every_private_name_keras_private_uses_is_listed():
    """keras_private.py's own uses are all in CLASS_NAMES or INSTANCE_NAMES, where the tests above check them."""
    tree = ast.parse((PACKAGE / "backends" / "keras_private.py").read_text(encoding="utf-8"))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and _is_private(node.attr)}
    used |= {name for node in ast.walk(tree) for name, _ in _string_accesses(node)}
    listed = {name for _, name, _ in keras_private.CLASS_NAMES + keras_private.INSTANCE_NAMES}
    assert used <= listed, f"used in kcnn/backends/keras_private.py but not listed there: {sorted(used - listed)}"
