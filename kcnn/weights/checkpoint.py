"""What a PyTorch checkpoint's layout is (`CheckpointLayout`), and the error of everything about weights:
the two names `kcnn.weights.loading` needs, in a module of their own so that loading does not import the
package that imports it."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from kcnn.errors import KcnnError


class WeightsError(KcnnError):
    """Weights that cannot be found, verified or loaded into the model asked for."""


@dataclasses.dataclass(frozen=True)
class CheckpointLayout:
    """How a PyTorch state dict maps onto a kcnn builder's layers.

    Attributes:
        name: the layout's name (`"torchvision"`, `"efficientnet_pytorch"`, ...).
        rename: checkpoint key (module path, without `.weight`) -> kcnn layer name.
        epsilon: the checkpoint's batch-norm epsilon, where kcnn's layers use another.
        filter: `(state, model) -> state`: keys to drop for this model (training-only heads), or None.
    """

    name: str
    rename: Callable
    epsilon: Optional[float] = None
    filter: Optional[Callable] = None


def torchvision_name(key: str) -> str:
    """`layer2.0.downsample.0` -> `layer2_0_downsample_0`: kcnn's names are torchvision's module paths."""
    return key.replace(".", "_")


TORCHVISION = CheckpointLayout("torchvision", torchvision_name)
