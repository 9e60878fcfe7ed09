"""Building models without running initializers whose values a weights file replaces (JAX draws each one
as a compiled random draw), and shapes-only builds."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator, TypeVar

import keras

_T = TypeVar("_T")


@contextlib.contextmanager
def weightless_scope() -> Iterator[None]:
    """Build models for their shapes only.

    Inside a `keras.StatelessScope`, the JAX backend defers creating weight
    values, so counting the 1.5 billion parameters of `mlp` allocates
    nothing. Keras would initialise the deferred weights when the scope
    closes; here they are dropped instead, so models built inside must not
    be run afterwards. Other backends allocate the weights as usual.
    """
    from kcnn.backends import keras_private  # no public way to forget deferred variables

    before = keras_private.uninitialized_variables()
    with keras.StatelessScope(initialize_variables=False):
        yield
    keras_private.set_uninitialized_variables(before)


def initializers_deferred() -> ContextManager[None]:
    """A scope in which models whose weights are about to be replaced (by a weights file) are built without
    running their initializers, on JAX: each is a traced and compiled random draw there, more time than
    reading the file (densenet121: 5.8 s of build against 0.4 s). Call `initialize_the_rest(model)` once
    the file is loaded, for what it did not set (a fresh head). Elsewhere the build is as usual, and under a
    keras.distribution too (a variable takes its place on the devices when its initializer runs)."""
    if keras.backend.backend() == "jax" and keras.distribution.distribution() is None:
        return weightless_scope()
    return contextlib.nullcontext()


def initialize_the_rest(model: keras.Model) -> None:
    """Run the initializers of `model`'s variables that nothing has given a value (see
    `initializers_deferred`), in the order they were made."""
    from kcnn.backends import keras_private

    for variable in model.variables:
        if not keras_private.has_value(variable):
            keras_private.initialize(variable)


def without_initializer_draws(load: Callable[[], _T]) -> _T:
    """`load()`: a function that makes a model and assigns every weight from a file
    (`keras.saving.load_model`), run on JAX without the initializers whose values the file replaces (each
    is a traced and compiled random draw there: a googlenet run's model.keras took 22.9 s to load, 0.6 s
    without them). Inside a StatelessScope Keras defers them and records the assignments; they are applied once
    it closes, and a variable the file does not hold (a dropout's seed) gets its initializer's value, as it
    would have. Elsewhere, under a keras.distribution, and for a file holding an optimizer (Keras refuses to
    make its variables in the scope), it is `load()`."""
    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return load()
    from kcnn.backends import keras_private

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
