"""Error types of kcnn.

Every error kcnn raises on bad input is a `KcnnError`, with one sentence that
names what was wrong and how to fix it. They subclass `ValueError` so code that
already catches `ValueError` (as keras.applications users do) keeps working.
"""


class KcnnError(ValueError):
    """Base class of every error kcnn raises on bad input."""


class UnknownModelError(KcnnError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(KcnnError):
    """An argument whose value the architecture cannot take."""


class ExportError(KcnnError):
    """A model that cannot be exported, or an export that would overwrite one (kcnn.deploy.export, kcnn.deploy.litert)."""


class DivergedError(KcnnError):
    """A training run whose loss, or a model whose outputs, became NaN or infinite."""
