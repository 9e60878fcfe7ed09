"""Small helpers shared by the API and the tests."""

import contextlib

import keras
from keras.src.backend.common import global_state  # no public way to forget deferred variables


@contextlib.contextmanager
def weightless_scope():
    """Build models for their shapes only.

    Inside a `keras.StatelessScope`, the JAX backend defers creating weight
    values, so counting the 1.5 billion parameters of `mlp` allocates
    nothing. Keras would initialise the deferred weights when the scope
    closes; here they are dropped instead, so models built inside must not
    be run afterwards. Other backends allocate the weights as usual.
    """
    before = list(global_state.get_global_attribute("uninitialized_variables", []) or [])
    with keras.StatelessScope(initialize_variables=False):
        yield
    global_state.set_global_attribute("uninitialized_variables", before)
