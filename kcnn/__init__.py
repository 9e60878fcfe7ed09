"""kcnn: convolutional networks for Keras 3 on the TensorFlow, PyTorch and JAX backends.

Models (the `kcnn list`, `kcnn info` and `kcnn summary` commands):

    model = kcnn.build("resnet50", num_classes=10)    # a Keras functional model; logits by default
    model = kcnn.build("efficientnet_lite0", weights="imagenet")
    [m.name for m in kcnn.list_models("resnet*")]     # ModelInfo: reference counts, input size, weights
    kcnn.summary("lenet5")                            # a torchsummary-style table with MACs

Workflows (the other commands; the same names, their flags as keywords):

    run = kcnn.finetune("pets/", image_size=224)      # a Run: .model .metrics .history .class_names .path
    run = kcnn.train(dataset="cifar10", arch="cifar_resnet20", epochs=30)
    kcnn.evaluate(run, tta="flip")                    # an Evaluation
    kcnn.predict(run, ["cat.jpg"], top=3)             # a Prediction per image: .class_name .probability .top
    kcnn.explain(run, ["cat.jpg"])                    # an Explanation per image: Grad-CAM overlays
    kcnn.export(run, format="onnx")                   # the path written
    run = kcnn.load_run("saved_models/pets")

Bad input raises a kcnn.KcnnError (a ValueError) whose message says what to change.

`import kcnn` imports no Keras and no backend: the registry (names, reference counts, recipes, weight sources) is
plain data, and Keras is imported by the first model built (kcnn.backends.lazy), so `kcnn list` answers at once and
KERAS_BACKEND may still be set after `import kcnn`.
"""

import importlib

from kcnn.backends.quiet import quiet

quiet()  # before anything imports TensorFlow: no C++ start-up lines on stderr

from kcnn.errors import InvalidArgumentError, KcnnError, UnknownModelError  # noqa: E402
from kcnn.registry import ModelInfo, build, get_model_info, list_models, register_model  # noqa: E402
from kcnn.version import __version__  # noqa: E402
# The workflows as functions; kcnn.api imports nothing heavy until one runs.
from kcnn.api import (Evaluation, Explanation, Prediction, evaluate, explain, export, finetune,  # noqa: E402
                      load_run, predict, train)

# The families register themselves (and their weights) on import, as timm's model files do; the registry
# imports none of them. kcnn.models.hub registers the "hub:" names (keras-hub itself is imported only to build one).
# None of them imports Keras until a builder runs.
import kcnn.models  # noqa: E402, F401
import kcnn.models.hub  # noqa: E402, F401
from kcnn.backends.lazy import on_keras_import  # noqa: E402

# The recipes' schedules and optimizer are registered with Keras once Keras is imported (saved runs load anywhere);
# kcnn.runs.modelfile.load_model registers them too.
on_keras_import(lambda: importlib.import_module("kcnn.training.optim"))
on_keras_import(quiet)  # absl's logging, now that TensorFlow may have imported it

# Names whose modules import Keras: imported on first access (PEP 562), not by `import kcnn`.
_LAZY = {
    "summary": "kcnn.inspect.summary",
    "ModelSummary": "kcnn.inspect.summary",
    "Run": "kcnn.runs.rundir",
}


def __getattr__(name):
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as error:
            if error.name != _LAZY[name]:
                raise
            raise AttributeError(f"module 'kcnn' has no attribute {name!r}") from None
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kcnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "build",
    "list_models",
    "get_model_info",
    "summary",
    "register_model",
    "ModelInfo",
    "ModelSummary",
    "KcnnError",
    "UnknownModelError",
    "InvalidArgumentError",
    "train",
    "finetune",
    "evaluate",
    "predict",
    "explain",
    "export",
    "load_run",
    "Run",
    "Evaluation",
    "Prediction",
    "Explanation",
    "__version__",
]
