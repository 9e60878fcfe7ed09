"""kcnn: convolutional networks for Keras 3 on the TensorFlow, PyTorch and JAX backends.

    import kcnn
    model = kcnn.build("resnet50", num_classes=10)   # outputs logits by default
    kcnn.summary("lenet5")                           # torchsummary-style table with MACs
    [m.name for m in kcnn.list_models("resnet*")]
"""

import os

# TensorFlow (imported by Keras on every backend) logs several lines of C++
# start-up noise per process; keep it quiet unless the user set a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kcnn.errors import InvalidArgumentError, KcnnError, UnknownModelError
from kcnn.registry import ModelInfo, build, get_model_info, list_models, register_model
from kcnn.inspect.summary import ModelSummary, summary
from kcnn.api import evaluate, explain, export, finetune, load_run, predict, train

# The families register themselves (and their weights) on import, as timm's model files do; the registry
# imports none of them. kcnn.models.hub registers the "hub:" names (keras-hub itself is imported only to build one).
import kcnn.models  # noqa: E402, F401
import kcnn.models.hub  # noqa: E402, F401
import kcnn.training.optim  # noqa: E402, F401 (registers the recipes' schedules and optimizer: saved runs load anywhere)

__version__ = "0.1.0"

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
]
