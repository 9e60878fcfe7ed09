"""The settings of a run: one dataclass per workflow, every field with its default, its check and its help.

    from kcnn.config import TrainConfig, FinetuneConfig, read_config_file
    TrainConfig(arch="lenet5", dataset="cifar10").resolved()   # the recipe's values filled in, checked

`RunConfig` holds what both workflows share (the dataset, the run folder, the seed, distribution, checks);
`TrainConfig` and `FinetuneConfig` add their own. The command line is generated from these fields
(kcnn/cli/arguments.py): a field's `help`, `choices` and default are written once, here. A run's config.json
is these fields, resolved, so `--config RUN/config.json` repeats a run. This module imports nothing of Keras.
"""

# (No `from __future__ import annotations` here: kcnn/cli/arguments.py reads the fields' types as objects.)
import dataclasses
import difflib
import json
import math
import os
from typing import TYPE_CHECKING, Any, Optional, Union

from kcnn.data.pipeline import AUGMENTATIONS  # (kcnn.data imports no Keras at the top)
from kcnn.errors import InvalidArgumentError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from kcnn.data.datasets import ImageData

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "plateau", "cosine", "onecycle", "triangle")
TTA_CHOICES = ("flip", "flip_crop", "none")
CLASS_WEIGHTS = ("balanced",)
# Settings a resumed run may change, and that a run's config.json does not pass on to a new run: they do not
# change what it computes (output_dir: a run moved whole resumes; a repeated run goes where --output-dir says).
NOT_SETTINGS = ("resume", "overwrite", "verbose", "output_dir")
DISTRIBUTE_HELP = ("data-parallel training on the backend's engine: tf.distribute (every GPU of this machine), "
                   "torch DDP (launch with torchrun), keras.distribution on JAX (KERAS_DISTRIBUTION_* for several "
                   "machines); --batch-size is the global batch")


def setting(default: Any, help: str, **cli: Any) -> Any:
    """A config field: its default, its help, and how the command line spells it (`flags`, `choices`,
    `metavar`, `parse`: a function from the text, `cli=False`: not on the command line)."""
    return dataclasses.field(default=default, metadata=dict(help=help, **cli))


MAX_IMAGE_SIZE = 4096  # pixels a side: a batch of 32 float32 RGB images is 6 GiB there, ImageNet models use 224-600


def _bad(argument, value, valid):
    raise InvalidArgumentError(f"{argument} must be {valid}. Received: {argument}={value!r}")


def _check_count(name, value, least):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        _bad(name, value, f"a whole number of at least {least}")


def _looks_like_path(text):
    """Whether a dataset argument was meant as a folder: it has a separator, or starts with . or ~."""
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def close_folders(given: str) -> list[str]:
    """The folders beside `given` (a path that is not there) whose names are closest to its own (difflib), spelled
    as `given` is (its parent as written, its trailing slash): what "did you mean" offers."""
    parent, name = os.path.split(os.path.normpath(os.path.expanduser(given)))
    try:
        entries = sorted(entry for entry in os.listdir(parent or ".") if not entry.startswith(".")
                         and os.path.isdir(os.path.join(parent or ".", entry)))
    except OSError:
        return []
    written_parent = os.path.dirname(given.rstrip("/" + os.sep))
    return [os.path.join(written_parent, entry) + ("/" if given.endswith("/") else "")
            for entry in difflib.get_close_matches(name, entries, 3, 0.6)]


def _no_folder(given, folder):
    """One sentence for a dataset folder that is not there: the closest names in its parent folder."""
    if os.path.exists(folder):
        return (f"{given!r} is a file, not a folder; pass a folder with one sub-folder of images per class. "
                f"Received: dataset={given!r}")
    parent = os.path.dirname(os.path.normpath(folder))
    if not os.path.isdir(parent or "."):
        return (f"There is no folder {given!r} (nor its parent folder {parent!r}); pass a folder with one sub-folder "
                f"of images per class. Received: dataset={given!r}")
    shown = close_folders(given)
    hint = f"did you mean {' or '.join(repr(path) for path in shown)}?" if shown else \
        f"{parent or 'this folder'} has no folder of a close name."
    return f"There is no folder {given!r}; {hint} Received: dataset={given!r}"


def unfreeze_blocks(text: str | int) -> int | str:
    """--unfreeze: a number of top blocks, or 'all'."""
    if text == "all" or isinstance(text, int):
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a number of blocks or 'all'; received {text!r}") from None


@dataclasses.dataclass
class RunConfig:
    """What every run shares: where its data and its folder are, its seed, and how it runs."""

    dataset: str = setting("mnist", "a dataset name, or a folder with one sub-folder of images per class")
    image_size: Optional[int] = setting(None, "resize images to this square size", metavar="PIXELS")
    batch_size: Optional[int] = setting(None, "images per step (the global batch with --distribute)")
    class_weight: Optional[str] = setting(
        None, "balanced: every class counts as much, however many images it has (imbalanced folders)",
        choices=CLASS_WEIGHTS)
    tta: Optional[str] = setting(None, "also evaluate with test-time augmentation: flip (2 views) or flip_crop (6); "
                                       "metrics.json records both accuracies", choices=TTA_CHOICES)
    mixed_precision: Optional[bool] = setting(
        None, "bfloat16 or float16 where this machine computes it natively, float32 where not (kcnn doctor says "
              "which; KCNN_MIXED_PRECISION overrides)")
    distribute: bool = setting(False, DISTRIBUTE_HELP)
    seed: int = setting(0, "the seed of every random draw: the same seed repeats a run's weights")
    limit: Optional[int] = setting(None, "train on the first N images only (quick checks)", metavar="N")
    output_dir: Optional[str] = setting(None, "the run folder (default: saved_models/NAME)")
    export: bool = setting(False, "also write a SavedModel for serving into RUN_DIR/export/1")
    resume: bool = setting(False, "continue the interrupted run in --output-dir from its last finished epoch")
    overwrite: bool = setting(False, "replace the kcnn run in --output-dir (only the files it wrote)")
    verbose: int = setting(1, "0: quiet", cli=False)

    # ---- the data ----------------------------------------------------------------------------------------

    @property
    def is_folder(self) -> bool:
        from kcnn.data.datasets import SPLITS

        return self.dataset not in SPLITS

    @property
    def dataset_name(self) -> str:
        return os.path.basename(os.path.normpath(self.dataset)) if self.is_folder else self.dataset

    def splits(self) -> tuple[str, str, str | None]:
        """(split trained on, split evaluated on, a second evaluation split or None): kcnn.data.SPLITS."""
        from kcnn.data.datasets import FOLDER_SPLITS, SPLITS

        return FOLDER_SPLITS if self.is_folder else SPLITS[self.dataset]

    def train_split_name(self) -> str:
        return self.splits()[0]

    def eval_split_name(self) -> str:
        return self.splits()[1]

    def extra_eval_name(self) -> str | None:
        return self.splits()[2]

    def _folder_validation_split(self):
        # each workflow names its own field (fine-tuning's validation_split is another split): an error, not a guess
        raise NotImplementedError

    def load(self, split: str) -> "ImageData":
        """One split of this run's data, as `kcnn.data.ImageData`."""
        from kcnn import data as kdata

        if self.is_folder:
            # The split seed is fixed: runs with different seeds see the same validation images.
            return kdata.image_folder(self.dataset, image_size=self.image_size, subset=split,
                                      validation_split=self._folder_validation_split(),
                                      on_error=getattr(self, "on_bad_image", "skip"), verbose=bool(self.verbose))
        return kdata.load(self.dataset, split)

    def _check_dataset(self, workflow_verb):
        """A folder that exists (kept as an absolute path: the run records where its data came from), or a name."""
        from kcnn.data.datasets import SPLITS

        if self.is_folder:
            folder = os.path.expanduser(self.dataset) if isinstance(self.dataset, (str, os.PathLike)) else None
            if folder is not None and not os.path.isdir(folder) and _looks_like_path(os.fspath(self.dataset)):
                raise InvalidArgumentError(_no_folder(os.fspath(self.dataset), folder))
            if not (folder is not None and os.path.isdir(folder)):
                close = difflib.get_close_matches(str(self.dataset), sorted(SPLITS), 1, 0.6)
                hint = f"did you mean {close[0]}? " if close else ""
                raise InvalidArgumentError(
                    f"Unknown dataset {self.dataset!r}; {hint}kcnn {workflow_verb} on {', '.join(sorted(SPLITS))}, "
                    f"or on a folder with one sub-folder of images per class. Received: dataset={self.dataset!r}")
            self.dataset = os.path.abspath(folder)

    def _completed(self, run_name):
        """The end of both workflows' resolved(): "none" read as no test-time augmentation, the default run folder
        saved_models/RUN_NAME, every check."""
        if self.tta == "none":
            self.tta = None
        if self.output_dir is None:
            self.output_dir = os.path.join("saved_models", run_name)
        self.check()
        return self

    # ---- checks both workflows share ------------------------------------------------------------------------

    def check(self) -> None:
        for field in dataclasses.fields(self):  # inf and nan pass every "above 0" and "at most" test below
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                _bad(field.name, value, "a finite number")
        _check_count("batch_size", self.batch_size, 1)
        if isinstance(self.image_size, int) and self.image_size > MAX_IMAGE_SIZE:  # both workflows' one bound
            _bad("image_size", self.image_size, f"at most {MAX_IMAGE_SIZE} pixels (a batch of larger images does "
                                                f"not fit in memory)")
        if self.limit is not None:
            _check_count("limit", self.limit, 1)
        _check_count("seed", self.seed, 0)
        from kcnn.data.tta import check_mode

        check_mode(self.tta)
        if self.class_weight not in (None, *CLASS_WEIGHTS):
            raise InvalidArgumentError(f"Unknown class weighting {self.class_weight!r}; pass 'balanced' (or leave it "
                                       f"out). Received: class_weight={self.class_weight!r}")
        if self.resume and self.overwrite:
            raise InvalidArgumentError("resume and overwrite contradict each other; pass one of them.")

    def record(self) -> dict[str, Any]:
        """The fields, as config.json holds them."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainConfig(RunConfig):
    """Everything a from-scratch run depends on; `None` means the recipe's value (kcnn.recipes)."""

    dataset: str = setting("mnist", "mnist, cifar10, cifar10_sample, digits, or a folder with one sub-folder "
                                    "of images per class")
    arch: Optional[str] = setting(None, "registry name (kcnn list; default: the dataset's)")
    recipe: Optional[str] = setting(None, "the training recipe (default: the one the architecture declares for the "
                                          "dataset, else the plain one; kcnn info ARCH lists them); the flags "
                                          "below override single values of it")
    epochs: Optional[int] = setting(None, "passes over the training images")
    optimizer: Optional[str] = setting(None, "sgd (Nesterov momentum), adam or adamw", choices=OPTIMIZERS)
    learning_rate: Optional[float] = setting(None, "peak learning rate (default: the recipe's, scaled to "
                                                   "--batch-size)", flags=("--learning-rate", "--lr"))
    schedule: Optional[str] = setting(None, "learning rate over the run: triangle is airbench94's (up over 23%%, "
                                            "then down); plateau divides by 10 on a plateau", choices=SCHEDULES)
    momentum: Optional[float] = setting(None, "SGD's Nesterov momentum")
    norm_bias_lr: Optional[float] = setting(None, "batch-norm biases learn FACTOR times faster, with the same "
                                                  "decay per step (airbench94: 64)", metavar="FACTOR")
    lookahead: Optional[bool] = setting(None, "lookahead every 5 steps, as airbench94")
    dirac_init: Optional[bool] = setting(None, "convolutions start as identities (airbench94)")
    whiten_bias_epochs: Optional[int] = setting(None, "airbench: the whitening layer's bias trains for N epochs "
                                                      "(0: frozen)", metavar="N")
    weight_decay: Optional[float] = setting(None, "decoupled weight decay")
    label_smoothing: Optional[float] = setting(None, "in [0, 1)")
    augment: Optional[str] = setting(None, "training augmentation", choices=AUGMENTATIONS)
    validation_split: float = setting(0.2, "image folders: fraction of each class held out")
    on_bad_image: str = setting("skip", "image folders: skip and count unreadable files, or stop at the first",
                                choices=("skip", "stop"))
    early_stopping: Optional[int] = setting(None, "stop after PATIENCE epochs without a better validation "
                                                  "accuracy; keep the best weights", metavar="PATIENCE")
    jit_compile: Union[bool, str] = setting("auto", "compile the training step (auto: where the backend gains)",
                                            flags=("--jit",))

    def _folder_validation_split(self):
        return self.validation_split

    def resolved(self) -> "TrainConfig":
        """A copy with every `None` replaced by the recipe's value, checked. The recipe is the one the
        architecture declares for the dataset, else the dataset's plain one, or `recipe` by name."""
        from kcnn.recipes import DEFAULT_ARCH, recipe_for
        from kcnn.registry import get_model_info

        config = dataclasses.replace(self)
        config._check_dataset("trains")
        key = "folder" if config.is_folder else config.dataset
        if config.arch is None:
            config.arch = DEFAULT_ARCH[key]
        recipe = recipe_for(get_model_info(config.arch), key, config.recipe)  # unknown names fail here
        config.recipe = recipe.name
        for name, value in recipe.settings().items():
            if getattr(config, name) is None:
                setattr(config, name, value)
        if self.learning_rate is None and isinstance(self.batch_size, int) and self.batch_size > 0 \
                and config.optimizer in OPTIMIZERS:
            config.learning_rate = scaled_learning_rate(recipe.learning_rate, recipe.batch_size, self.batch_size,
                                                        config.optimizer)
        return config._completed(f"{config.arch}_{config.dataset_name}")

    def check(self) -> None:
        super().check()
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            _bad("image_size", self.image_size, "a whole number of pixels")
        _check_count("epochs", self.epochs, 1)
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            _bad("learning_rate", self.learning_rate, "a number above 0")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            _bad("weight_decay", self.weight_decay, "a number of at least 0")
        if not isinstance(self.label_smoothing, (int, float)) or not 0 <= self.label_smoothing < 1:
            _bad("label_smoothing", self.label_smoothing, "in [0, 1)")
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            _bad("momentum", self.momentum, "in [0, 1)")
        if not (isinstance(self.norm_bias_lr, (int, float)) and self.norm_bias_lr > 0):
            _bad("norm_bias_lr", self.norm_bias_lr, "a number above 0 (1: the same rate as the other weights)")
        if isinstance(self.whiten_bias_epochs, bool) or not isinstance(self.whiten_bias_epochs, int) \
                or self.whiten_bias_epochs < 0:
            _bad("whiten_bias_epochs", self.whiten_bias_epochs, "a whole number of epochs of at least 0")
        if self.whiten_bias_epochs and self.schedule == "plateau":
            raise InvalidArgumentError("whiten_bias_epochs stops the whitening bias on a schedule of its own, which "
                                       "ReduceLROnPlateau cannot scale; pick another schedule (--schedule) or "
                                       "--whiten-bias-epochs 0.")
        if self.optimizer not in OPTIMIZERS:
            _bad("optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            _bad("schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        if self.augment not in AUGMENTATIONS:
            _bad("augment", self.augment, f"one of {', '.join(AUGMENTATIONS)}")
        if self.early_stopping is not None and (not isinstance(self.early_stopping, int) or self.early_stopping < 1):
            _bad("early_stopping", self.early_stopping, "a whole number of epochs of at least 1 (the patience)")
        if not 0 < self.validation_split < 1 and self.is_folder:
            _bad("validation_split", self.validation_split, "in (0, 1) for an image folder")


def scaled_learning_rate(learning_rate: float, batch_size: int, new_batch_size: int, optimizer: str) -> float:
    """A recipe's learning rate for another (global) batch size, as timm's --lr-base-scale does: in
    proportion to the batch for SGD (Goyal et al. 2017, "Accurate, large minibatch SGD"), with its square
    root for Adam and AdamW. The recipes' warm-up (one-cycle) keeps the first large steps stable."""
    ratio = new_batch_size / batch_size
    return learning_rate * (ratio if optimizer == "sgd" else math.sqrt(ratio))


@dataclasses.dataclass
class FinetuneConfig(RunConfig):
    """Everything a fine-tuning run depends on."""

    dataset: str = setting("cifar10_sample", "a folder with one sub-folder of images per class, cifar10_sample, "
                                             "cifar10, mnist or digits")
    backbone: str = setting("efficientnet_lite0", "a model with pretrained weights (kcnn list --pretrained)")
    weights: str = setting("imagenet", "the backbone's named weights")
    # the weights' own: +7 points over 128 on the CIFAR-10 sample (bench/finetune_levers.py)
    image_size: int = setting(224, "input size: what the weights were trained at; 128 takes a third of the time, "
                                   "7 points less on the CIFAR-10 sample")
    head_epochs: int = setting(15, "phase 1: the new head on the frozen backbone")
    # phase 2 costs most of the time (15 s an epoch at 224 on 2 cores)
    finetune_epochs: int = setting(8, "phase 2: the unfrozen top of the backbone (0: skip)")
    unfreeze: Union[int, str] = setting(3, "top blocks to fine-tune in phase 2, 'all', or 0 (head only)",
                                        parse=unfreeze_blocks)
    batch_size: int = setting(64, "images per step (the global batch with --distribute)")
    head_learning_rate: float = setting(1e-3, "phase 1's learning rate")
    finetune_learning_rate: float = setting(1e-4, "phase 2's learning rate")
    dropout: float = setting(0.2, "dropout before the new head")
    label_smoothing: float = setting(0.1, "in [0, 1)")
    flip: bool = setting(True, "also train on the mirror images (computed once, like everything frozen)")
    extra_views: int = setting(0, "randomly shifted and mirrored copies of each training image, computed once "
                                  "through the frozen layers")
    tta: Optional[str] = setting("flip", "test-time augmentation of the held-out evaluation, reported beside the "
                                         "plain accuracy", choices=TTA_CHOICES)
    ema: bool = setting(False, "phase 2 keeps a moving average of its weights (Keras' use_ema) and ends on it")
    mixup: float = setting(0.0, "phase 1: mixup's alpha on the pooled features (0: off)")
    layer_decay: float = setting(1.0, "phase 2: each block learns at this fraction of the rate of the block above "
                                      "(1: off)")
    validation_split: float = setting(0.1, "fraction of the training images the callbacks watch (not the "
                                           "evaluation set)")
    folder_validation_split: float = setting(0.2, "image folders: fraction of each class held out for evaluation")
    mixed_precision: bool = setting(False, "train in the machine's fast lower precision (kcnn doctor says which)")
    output_dir: Optional[str] = setting(None, "the run folder (default: saved_models/finetune_BACKBONE_DATASET)")
    export: bool = setting(True, "a SavedModel for serving in RUN_DIR/export/1")

    @property
    def arch(self) -> str:  # the name the run's plots and tables show
        return self.backbone

    def _folder_validation_split(self):
        return self.folder_validation_split

    def resolved(self) -> "FinetuneConfig":
        config = dataclasses.replace(self)
        config._check_dataset("fine-tunes")
        return config._completed(f"finetune_{config.backbone}_{config.dataset_name}")

    def check(self) -> None:
        super().check()
        _check_count("image_size", self.image_size, 1)  # the backbone's input: no default from the data
        for name in ("head_epochs", "finetune_epochs", "extra_views"):
            _check_count(name, getattr(self, name), 0)
        for name in ("head_learning_rate", "finetune_learning_rate"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                _bad(name, getattr(self, name), "a number above 0")
        if not (self.unfreeze == "all" or (isinstance(self.unfreeze, int) and not isinstance(self.unfreeze, bool)
                                           and self.unfreeze >= 0)):
            _bad("unfreeze", self.unfreeze, "a number of top blocks (0: head only) or 'all'")
        for name in ("validation_split", "folder_validation_split"):
            if not 0 < getattr(self, name) < 1:
                _bad(name, getattr(self, name), "in (0, 1)")
        if not 0 <= self.dropout < 1:
            _bad("dropout", self.dropout, "in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            _bad("label_smoothing", self.label_smoothing, "in [0, 1)")
        if not (isinstance(self.mixup, (int, float)) and self.mixup >= 0):
            _bad("mixup", self.mixup, "a number of at least 0 (0: off)")
        if not (isinstance(self.layer_decay, (int, float)) and 0 < self.layer_decay <= 1):
            _bad("layer_decay", self.layer_decay, "a number in (0, 1] (1: every block at the same learning rate)")


# The kinds of run, by the name config.json's marker records.
KINDS = {"train": TrainConfig, "finetune": FinetuneConfig}


def read_config_file(path: str | os.PathLike, kind: type[RunConfig]) -> dict[str, Any]:
    """{field: value} of `kind`'s config (TrainConfig or FinetuneConfig) from a YAML or JSON file, or a run's
    own config.json (its marker, versions and the settings a run does not pass on are left out)."""
    import yaml  # YAML 1.2 reads JSON too; safe_load builds plain values only

    from kcnn.data.folder import special_file

    special = special_file(path)
    if special is not None:  # open() would block on a named pipe
        raise InvalidArgumentError(f"The config file {path} is {special}, not a regular file; pass a YAML or JSON "
                                   f"file, or a run's config.json.")
    try:
        with open(path) as f:
            values = json.load(f) if str(path).endswith(".json") else yaml.safe_load(f)
    except OSError as error:
        raise InvalidArgumentError(f"Could not read the config file {path} ({error.strerror}); pass a YAML or JSON "
                                   f"file, or a run's config.json.") from None
    except (ValueError, yaml.YAMLError) as error:
        raise InvalidArgumentError(f"The config file {path} is not valid YAML or JSON ({str(error).splitlines()[0]}); "
                                   f"fix it, or pass a run's config.json.") from None
    if not isinstance(values, dict):
        raise InvalidArgumentError(f"The config file {path} holds no settings (a mapping of names to values); pass a "
                                   f"YAML or JSON mapping such as `epochs: 5`.")
    marker = values.pop("kcnn", None)
    values.pop("versions", None)
    if isinstance(marker, dict) and marker.get("kind") in KINDS and KINDS[marker["kind"]] is not kind:
        raise InvalidArgumentError(f"{path} is the config of a `kcnn {marker['kind']}` run; pass it to `kcnn "
                                   f"{marker['kind']} --config`.")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InvalidArgumentError(f"The config file {path} has settings {kind.__name__} does not know "
                                   f"({', '.join(unknown)}); the known ones are in `--help`.")
    return {k: v for k, v in values.items() if k not in NOT_SETTINGS}
