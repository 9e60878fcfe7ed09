"""Training recipes as data: what `kcnn train` does on a dataset, declared beside the model it suits.

    from kcnn.recipes import recipe_for
    recipe_for(kcnn.get_model_info("lenet5"), "cifar10")    # the plain CIFAR-10 recipe
    recipe_for(kcnn.get_model_info("airbench"), "cifar10")  # airbench94's, which its model file declares

A model family declares its own recipes per dataset at registration (`register_model(recipes=...)`), as timm
declares `pretrained_cfg` beside each model; every other architecture gets the dataset's plain recipe (`PLAIN`),
never another family's. `--recipe NAME` picks another by name (`recipe_names()`); flags override single fields.
This module imports nothing of Keras: `kcnn --help` and `kcnn info` read it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional

from kcnn.errors import InvalidArgumentError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from kcnn.registry import ModelInfo

PLAIN_NAME = "plain"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every setting of a from-scratch run that depends on the model and the dataset."""

    name: str
    epochs: int
    batch_size: int
    optimizer: str  # sgd (Nesterov momentum), adam, adamw
    learning_rate: float  # peak, at this batch size (another batch size scales it: kcnn.config.scaled_learning_rate)
    schedule: str  # constant, plateau, cosine, onecycle, triangle
    weight_decay: float
    label_smoothing: float
    augment: str
    momentum: float = 0.9
    norm_bias_lr: float = 1.0  # batch-norm biases learn this many times faster (airbench94: 64)
    lookahead: bool = False
    dirac_init: bool = False  # data-independent initialisation: convolutions start as identities
    whiten_bias_epochs: int = 0  # data-dependent initialisation: a whitening layer's bias trains this many epochs
    mixed_precision: bool = False
    tta: Optional[str] = None
    image_size: Optional[int] = None
    note: str = ""  # where it comes from and what it reached, with the command

    def settings(self) -> dict[str, Any]:
        """The TrainConfig fields this recipe sets."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "note")}

    def describe(self) -> str:
        """One line for `kcnn info`."""
        parts = [f"{self.optimizer} lr {self.learning_rate:g} ({self.schedule})", f"batch {self.batch_size}",
                 f"{self.epochs} epochs", f"weight decay {self.weight_decay:g}", f"augment {self.augment}"]
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.optimizer == "sgd":
            parts.append(f"momentum {self.momentum:g}")
        for flag, text in ((self.norm_bias_lr != 1, f"batch-norm biases x{self.norm_bias_lr:g}"),
                           (self.lookahead, "lookahead"), (self.dirac_init, "Dirac init"),
                           (self.whiten_bias_epochs, f"whitening bias {self.whiten_bias_epochs} epochs"),
                           (self.mixed_precision, "mixed precision"), (self.tta, f"test-time {self.tta}"),
                           (self.image_size, f"images at {self.image_size}")):
            if flag:
                parts.append(text)
        return f"{self.name}: " + ", ".join(parts)


# The plain recipe of each dataset: AdamW with a one-cycle schedule suits every architecture kcnn has, small or
# large, with or without batch normalisation ("folder": any image folder with one sub-folder per class).
PLAIN = {
    "mnist": Recipe(PLAIN_NAME, epochs=8, batch_size=128, optimizer="adamw", learning_rate=3e-3, schedule="onecycle",
                    weight_decay=5e-4, label_smoothing=0.0, augment="none"),
    # bench/recipes.py measures it on LeNet-5 (BENCHMARKS.md, "Recipes per architecture")
    "cifar10": Recipe(PLAIN_NAME, epochs=15, batch_size=128, optimizer="adamw", learning_rate=2e-3,
                      schedule="onecycle", weight_decay=5e-4, label_smoothing=0.1, augment="crop_flip", tta="flip"),
    "cifar10_sample": Recipe(PLAIN_NAME, epochs=10, batch_size=64, optimizer="adamw", learning_rate=2e-3,
                             schedule="onecycle", weight_decay=5e-4, label_smoothing=0.0, augment="crop_flip"),
    "digits": Recipe(PLAIN_NAME, epochs=15, batch_size=64, optimizer="adamw", learning_rate=3e-3, schedule="onecycle",
                     weight_decay=5e-4, label_smoothing=0.0, augment="none"),
    "folder": Recipe(PLAIN_NAME, epochs=20, batch_size=32, optimizer="adamw", learning_rate=2e-3, schedule="onecycle",
                     weight_decay=5e-4, label_smoothing=0.0, augment="crop_flip", image_size=64),
}
DATASETS = tuple(PLAIN)
# The architecture a bare `kcnn train --dataset NAME` trains.
DEFAULT_ARCH = {"mnist": "lenet5", "cifar10": "airbench", "cifar10_sample": "cifar_resnet20",
                "digits": "cifar_resnet20", "folder": "cifar_resnet20"}


def recipe_for(info: ModelInfo, dataset: str, name: str | None = None) -> Recipe:
    """The recipe `info`'s architecture trains with on `dataset` (a key of PLAIN): `name` if given (one of
    `recipe_names(dataset)`), else the one its model file declares for the dataset, else the plain one."""
    own = dict(getattr(info, "recipes", None) or {})
    if name is None:
        return own.get(dataset, PLAIN[dataset])
    if name == PLAIN_NAME:
        return PLAIN[dataset]
    if own.get(dataset) is not None and own[dataset].name == name:
        return own[dataset]
    found = [r for r in _declared(dataset) if r.name == name]
    if not found:
        raise InvalidArgumentError(
            f"Unknown recipe {name!r} for {dataset}; the recipes for {dataset} are {', '.join(recipe_names(dataset))} "
            f"(kcnn info ARCH shows them). Received: recipe={name!r}")
    return found[0]


def recipe_names(dataset: str) -> tuple[str, ...]:
    return (PLAIN_NAME, *sorted({r.name for r in _declared(dataset)}))


def _declared(dataset):
    """Every recipe a registered model file declares for `dataset`."""
    from kcnn.registry import list_models

    return [info.recipes[dataset] for info in list_models() if dataset in (info.recipes or {})]
