"""Keras, imported on first use: `from kcnn.backends.lazy import keras, layers, ops` in the model files.

`kcnn list`, `kcnn info` and `import kcnn` read the registry (plain data) and must not pay for Keras and its backend
(seconds); the builders use Keras only when they run. These names stand for the modules `keras`, `keras.layers` and
`keras.ops` and import them at the first attribute read (`layers.Conv2D`), after which they are the modules'
attributes. Keras reads KERAS_BACKEND when it is first imported, so `kcnn --backend` works until a model is built.
"""

import importlib
import sys
import types
from typing import Callable

_on_import: list = []


def on_keras_import(hook: Callable[[], None]) -> None:
    """Run `hook()` once Keras has been imported through these names (now, if it already is): kcnn registers its
    saved objects (kcnn.training.optim's schedules) this way, so `import kcnn` stays light."""
    if "keras" in sys.modules:
        hook()
    else:
        _on_import.append(hook)


class LazyModule(types.ModuleType):
    """A module that is imported when one of its attributes is first read."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["imported_module"] = None

    def _load(self) -> types.ModuleType:
        module = self.__dict__["imported_module"]
        if module is None:
            module = importlib.import_module(self.__name__)
            self.__dict__["imported_module"] = module
            while _on_import:
                _on_import.pop(0)()
        return module

    def __getattr__(self, attribute: str):
        value = getattr(self._load(), attribute)
        self.__dict__[attribute] = value  # the next read is a plain attribute
        return value

    def __dir__(self):
        return dir(self._load())

    def __repr__(self):
        state = "imported" if self.__dict__["imported_module"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


keras = LazyModule("keras")
layers = LazyModule("keras.layers")
ops = LazyModule("keras.ops")
