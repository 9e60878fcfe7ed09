"""Small helpers shared by the API and the tests."""

import contextlib

import keras


@contextlib.contextmanager
def weightless_scope():
    """Build models for their shapes only.

    Inside a `keras.StatelessScope`, the JAX backend defers creating weight
    values, so counting the 1.5 billion parameters of `mlp` allocates
    nothing. Keras would initialise the deferred weights when the scope
    closes; here they are dropped instead, so models built inside must not
    be run afterwards. Other backends allocate the weights as usual.
    """
    from kcnn import keras_private  # no public way to forget deferred variables

    before = keras_private.uninitialized_variables()
    with keras.StatelessScope(initialize_variables=False):
        yield
    keras_private.set_uninitialized_variables(before)


def initializers_deferred():
    """A scope in which models whose weights are about to be replaced (by a weights file) are built without
    running their initializers, on JAX: each is a traced and compiled random draw there, more time than
    reading the file (densenet121: 5.8 s of build against 0.4 s). Call `initialize_the_rest(model)` once
    the file is loaded, for what it did not set (a fresh head). Elsewhere the build is as usual, and under a
    keras.distribution too (a variable takes its place on the devices when its initializer runs)."""
    if keras.backend.backend() == "jax" and keras.distribution.distribution() is None:
        return weightless_scope()
    return contextlib.nullcontext()


def initialize_the_rest(model):
    """Run the initializers of `model`'s variables that nothing has given a value (see
    `initializers_deferred`), in the order they were made."""
    from kcnn import keras_private

    for variable in model.variables:
        if not keras_private.has_value(variable):
            keras_private.initialize(variable)


def without_initializer_draws(load):
    """`load()`: a function that makes a model and assigns every weight from a file
    (`keras.saving.load_model`), run on JAX without the initializers whose values the file replaces (each
    is a traced and compiled random draw there: a googlenet run's model.keras took 22.9 s to load, 0.6 s
    without them). Inside a StatelessScope Keras defers them and records the assignments; they are applied once
    it closes, and a variable the file does not hold (a dropout's seed) gets its initializer's value, as it
    would have. Elsewhere, under a keras.distribution, and for a file holding an optimizer (Keras refuses to
    make its variables in the scope), it is `load()`."""
    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return load()
    from kcnn import keras_private

    before = keras_private.uninitialized_variables()
    known = {id(variable) for variable in before}
    made = None
    try:
        with keras.StatelessScope(initialize_variables=False) as scope:
            result = load()
            made = [v for v in keras_private.uninitialized_variables() if id(v) not in known]
            values = [scope.get_current_value(variable) for variable in made]
    except ValueError as error:  # a file with a compiled optimizer: Keras makes its variables from values
        if "stateless scope" not in str(error):
            raise
    finally:
        keras_private.set_uninitialized_variables(before)  # what the scope made is forgotten (given values below)
    if made is None:
        return load()
    for variable, value in zip(made, values):
        if value is None:
            keras_private.initialize(variable)
        else:
            variable.assign(value)
    return result


@contextlib.contextmanager
def atomic_path(destination):
    """The one way kcnn writes a file or a folder: yield a temporary path beside `destination`, and when the
    block ends without an error, flush it to disk and rename it into place (a folder: the old one is moved
    aside first, and put back if the rename fails). On an error the temporary goes and `destination` stays
    as it was. Readers never see half of anything.

    Temporaries are named so that `kcnn.rundir.remove_stale_temporaries` finds what a killed process left:
    a file `NAME.tmp.EXT` (`model.tmp.keras`, `epoch_1.tmp.weights.h5`), a folder inside a `.NAME.*` workspace."""
    import os
    import shutil
    import tempfile

    parent = os.path.dirname(destination) or "."
    name = os.path.basename(destination)
    root, dot, extension = name.partition(".")  # the whole extension: epoch_1.tmp.weights.h5
    workspace = None
    if dot and root:  # a file
        temporary = os.path.join(parent, f"{root}.tmp.{extension}")
    else:  # a folder (a SavedModel): built in a workspace of its own
        workspace = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
        temporary = os.path.join(workspace, name)
    try:
        yield temporary
        if not os.path.lexists(temporary):
            return  # the block chose to write nothing (a checkpoint that was not better)
        if os.path.isdir(temporary):
            old = os.path.join(workspace or parent, f".{name}.old")
            if os.path.isdir(destination):  # a folder cannot be replaced in one rename: move it aside first
                os.replace(destination, old)
            try:
                os.replace(temporary, destination)
            except OSError:
                if os.path.exists(old):
                    os.replace(old, destination)  # put the previous one back
                raise
        else:
            with open(temporary, "rb") as f:  # the flush makes the rename safe against a power cut too
                os.fsync(f.fileno())
            os.replace(temporary, destination)  # atomic on POSIX and Windows
    finally:
        if workspace:
            shutil.rmtree(workspace, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """`open(path, mode)` through `atomic_path`: the file appears whole when the block ends, or not at all."""
    with atomic_path(path) as temporary, open(temporary, mode, **kwargs) as f:
        yield f


def mixed_precision_policy():
    """Keras' mixed-precision policy for the active backend and device: float16 where torch runs on a
    CUDA GPU (its usual choice there), bfloat16 everywhere else. On a CPU float16 has no fast kernels:
    airbench's training step on torch ran at 10 images/s in float16 against 185 in float32 and 262 in
    bfloat16 (`KERAS_BACKEND=torch python bench/mixed_precision.py`, this 2-core CPU with AVX512-BF16)."""
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return "mixed_float16"
    return "mixed_bfloat16"
