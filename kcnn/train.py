"""Training from scratch with Keras `fit()` and Keras' callbacks.

    from kcnn.train import TrainConfig, train
    run = train(TrainConfig(arch="lenet5", dataset="mnist"))

Every run writes one directory: config.json (enough to repeat it), model.keras
(takes raw 0-255 images: normalisation is inside), history.csv, metrics.json,
curves.png, confusion.png, samples.png and TensorBoard logs. `resume=True`
continues an interrupted run from its last finished epoch (BackupAndRestore).
"""

import dataclasses
import json
import os
import shutil
import time
from typing import Optional

import numpy as np

from kcnn.errors import InvalidArgumentError, KcnnError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "plateau", "cosine", "onecycle")

# Per-dataset defaults, so that the bare command trains a good model.
# train/eval: the splits trained on and evaluated on; extra_eval: a second check.
DATASET_DEFAULTS = {
    "mnist": dict(arch="lenet5", train_split="train", eval_split="test", extra_eval=None, epochs=8,
                  batch_size=128, optimizer="adamw", learning_rate=3e-3, schedule="onecycle",
                  weight_decay=5e-4, augment="none"),
    "cifar10": dict(arch="cifar_resnet20", train_split="holdout_train", eval_split="holdout",
                    extra_eval="test_first1000", epochs=30, batch_size=128, optimizer="sgd", learning_rate=0.1,
                    schedule="cosine", weight_decay=5e-4, augment="crop_flip"),
    "cifar10_sample": dict(arch="cifar_resnet20", train_split="train", eval_split="test", extra_eval=None,
                           epochs=10, batch_size=64, optimizer="adamw", learning_rate=2e-3, schedule="onecycle",
                           weight_decay=5e-4, augment="crop_flip"),
    "digits": dict(arch="cifar_resnet20", train_split="train", eval_split="test", extra_eval=None, epochs=15,
                   batch_size=64, optimizer="adamw", learning_rate=3e-3, schedule="onecycle", weight_decay=5e-4,
                   augment="none"),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; `None` means the dataset's default."""

    dataset: str = "mnist"
    arch: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    optimizer: Optional[str] = None  # sgd (momentum 0.9, Nesterov), adam, adamw
    learning_rate: Optional[float] = None  # peak learning rate
    schedule: Optional[str] = None  # constant, plateau (/10 on a val-accuracy plateau), cosine, onecycle
    weight_decay: Optional[float] = None
    label_smoothing: float = 0.0
    augment: Optional[str] = None  # none, flip, crop_flip, randaugment, mixup, cutmix
    image_size: Optional[int] = None  # resize images to this size (square)
    mixed_precision: bool = False
    jit_compile: object = "auto"
    seed: int = 0
    limit: Optional[int] = None  # train on the first N images only (quick checks)
    output_dir: Optional[str] = None  # default: saved_models/ARCH_DATASET
    resume: bool = False
    overwrite: bool = False
    verbose: int = 1

    def resolved(self):
        """A copy with every `None` replaced by the dataset's default."""
        if self.dataset not in DATASET_DEFAULTS:
            raise InvalidArgumentError(
                f"Unknown dataset {self.dataset!r}; kcnn trains on {', '.join(sorted(DATASET_DEFAULTS))}. "
                f"Received: dataset={self.dataset!r}"
            )
        defaults = DATASET_DEFAULTS[self.dataset]
        values = {k: (defaults[k] if v is None and k in defaults else v) for k, v in dataclasses.asdict(self).items()}
        config = TrainConfig(**values)
        if config.output_dir is None:
            config.output_dir = os.path.join("saved_models", f"{config.arch}_{config.dataset}")
        config.check()
        return config

    def train_split_name(self):
        return DATASET_DEFAULTS[self.dataset]["train_split"]

    def eval_split_name(self):
        return DATASET_DEFAULTS[self.dataset]["eval_split"]

    def extra_eval_name(self):
        return DATASET_DEFAULTS[self.dataset]["extra_eval"]

    def check(self):
        def bad(argument, value, valid):
            raise InvalidArgumentError(f"{argument} must be {valid}. Received: {argument}={value!r}")

        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, value, "a whole number of at least 1")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            bad("learning_rate", self.learning_rate, "a number above 0")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            bad("weight_decay", self.weight_decay, "a number of at least 0")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", self.label_smoothing, "in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            bad("image_size", self.image_size, "a whole number of pixels")
        if self.resume and self.overwrite:
            raise InvalidArgumentError("resume and overwrite contradict each other; pass one of them.")


@dataclasses.dataclass
class Run:
    directory: str
    model: object
    history: dict
    metrics: dict


def train(config: TrainConfig) -> Run:
    import keras

    import kcnn
    from kcnn import data as kdata
    from kcnn.data.pipeline import make_dataset

    config = config.resolved()
    info = kcnn.get_model_info(config.arch)  # unknown architectures fail here, before any work

    # ---- data (checked before the run directory is touched) ----------------
    train_data = kdata.load(config.dataset, config.train_split_name())
    eval_data = kdata.load(config.dataset, config.eval_split_name())
    if config.limit:
        train_data = dataclasses.replace(train_data, images=train_data.images[: config.limit],
                                         labels=train_data.labels[: config.limit])
    num_classes = len(train_data.class_names)
    height, width, channels = train_data.image_shape
    if config.image_size:
        height = width = config.image_size
    if min(height, width) < info.min_input_size:
        raise InvalidArgumentError(
            f"{config.arch} needs inputs of at least {info.min_input_size}x{info.min_input_size}, and "
            f"{config.dataset} images are {height}x{width}; pass image_size={max(info.min_input_size, 32)} "
            f"(--image-size) to resize them, or pick a model for small images."
        )
    image_shape = (height, width, channels)
    one_hot = config.label_smoothing > 0 or config.augment in ("mixup", "cutmix")
    train_ds = make_dataset(train_data, batch_size=config.batch_size, training=True, num_classes=num_classes,
                            image_shape=image_shape, augment=config.augment, seed=config.seed, one_hot=one_hot,
                            epochs=config.epochs,
                            first_epoch=_resumed_epoch(config.output_dir) if config.resume else 0)
    eval_ds = make_dataset(eval_data, batch_size=config.batch_size, training=False, num_classes=num_classes,
                           image_shape=image_shape, one_hot=one_hot)
    run_dir = _prepare_run_dir(config)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if keras.backend.backend() != "torch"
                                                else "mixed_float16")

    # ---- model: raw 0-255 pixels in, normalised inside, logits out -----------
    model = normalized_model(config.arch, num_classes, image_shape, train_data.images)
    steps_per_epoch = len(train_data) // config.batch_size
    model.compile(
        optimizer=_optimizer(config, steps_per_epoch),
        loss=(keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
              if one_hot else keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )

    # ---- fit with Keras' callbacks ------------------------------------------
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                        shuffle=False,  # the dataset shuffles, per epoch
                        callbacks=_callbacks(config, run_dir), verbose=config.verbose)
    train_seconds = time.perf_counter() - started

    # ---- evaluate, save, plot ------------------------------------------------
    metrics = evaluate_model(model, eval_data, image_shape, config.batch_size)
    predicted = metrics.pop("predicted")
    if config.extra_eval_name():
        extra = kdata.load(config.dataset, config.extra_eval_name())
        extra_metrics = evaluate_model(model, extra, image_shape, config.batch_size)
        metrics[f"{config.extra_eval_name()}_accuracy"] = extra_metrics["accuracy"]
    metrics.update(
        eval_split=config.eval_split_name(),
        train_seconds=round(train_seconds, 2),
        train_images_per_second=round(len(train_data) * len(history.epoch) / train_seconds, 1),
        epochs_run=len(history.epoch),
        parameters=int(model.count_params()),
        backend=keras.backend.backend(),
    )
    _save_model(model, os.path.join(run_dir, "model.keras"))
    _write_json(os.path.join(run_dir, "metrics.json"), metrics)
    _plots(run_dir, _read_history(run_dir) or history.history, eval_data, predicted, config)
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    if config.verbose:
        print(summary_table(config, metrics))
    return Run(run_dir, model, history.history, metrics)


def normalized_model(arch, num_classes, image_shape, train_images):
    """`kcnn.build(arch)` behind a Normalization layer holding the training
    set's per-channel mean and variance, so the model takes raw 0-255 pixels."""
    import keras

    import kcnn
    from kcnn.models import airbench

    pixels = train_images.reshape(-1, train_images.shape[-1]).astype("float64")
    mean, variance = pixels.mean(axis=0), pixels.var(axis=0)
    if image_shape[-1] != train_images.shape[-1]:  # channels converted in the pipeline
        mean = np.full(image_shape[-1], mean.mean())
        variance = np.full(image_shape[-1], variance.mean())
    variance = np.maximum(variance, 1e-6)
    backbone = kcnn.build(arch, num_classes=num_classes, input_shape=image_shape)
    if any(layer.name == airbench.WHITEN_NAME for layer in backbone.layers):
        # airbench's first layer is set from the data, not learned: whiten 2x2 patches of 5,000 images.
        sample = train_images[:5000].astype("float64")
        if image_shape[-1] == sample.shape[-1]:
            airbench.init_whitening(backbone, (sample - mean) / np.sqrt(variance))
    inputs = keras.Input(shape=image_shape, name="image")
    x = keras.layers.Normalization(mean=mean.tolist(), variance=variance.tolist(), name="normalize")(inputs)
    return keras.Model(inputs, backbone(x), name=arch)


def evaluate_model(model, data, image_shape, batch_size):
    from kcnn.data.pipeline import make_dataset

    dataset = make_dataset(data, batch_size=batch_size, training=False, num_classes=len(data.class_names),
                           image_shape=image_shape)
    logits = model.predict(dataset, verbose=0)
    predicted = np.argmax(logits, axis=-1)
    correct = predicted == data.labels
    per_class = {name: float(correct[data.labels == i].mean()) for i, name in enumerate(data.class_names)
                 if np.any(data.labels == i)}
    return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class, "images": int(len(data)),
            "predicted": predicted}


def summary_table(config, metrics):
    lines = [
        f"{'run':24s} {config.output_dir}",
        f"{'model / dataset':24s} {config.arch} / {config.dataset} ({metrics['backend']})",
        f"{metrics['eval_split'] + ' accuracy':24s} {metrics['accuracy']:.4f}",
    ]
    for key, value in metrics.items():
        if key.endswith("_accuracy") and key != "per_class_accuracy" and isinstance(value, float):
            lines.append(f"{key:24s} {value:.4f}")
    lines += [
        f"{'epochs':24s} {metrics['epochs_run']}",
        f"{'training time':24s} {metrics['train_seconds']:.1f} s ({metrics['train_images_per_second']:.0f} images/s)",
        f"{'parameters':24s} {metrics['parameters']:,}",
    ]
    return "\n".join(lines)


def _optimizer(config, steps_per_epoch):
    import keras

    total = max(1, steps_per_epoch * config.epochs)
    rate = config.learning_rate
    if config.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
    elif config.schedule == "onecycle":
        # Linear warm-up over the first 30% of steps, then cosine annealing:
        # the shape of the one-cycle policy with Keras' own schedule.
        warmup = max(1, int(0.3 * total))
        rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate / 25, decay_steps=total - warmup, warmup_target=config.learning_rate,
            warmup_steps=warmup)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay or None)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate)
    return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)


def _resumed_epoch(run_dir):
    """The epoch BackupAndRestore will resume at: it writes the next epoch to
    run in backup/training_metadata.json (its own file; read here so that
    the data order can start at that epoch too)."""
    path = os.path.join(run_dir, "backup", "training_metadata.json")
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _callbacks(config, run_dir):
    import keras

    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor="val_accuracy",
                                        save_best_only=True, mode="max"),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=config.resume),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.schedule == "plateau":
        # AlexNet's recipe: divide the learning rate by 10 when validation accuracy stops improving.
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max", factor=0.1,
                                                           patience=2, verbose=config.verbose))
    return callbacks


def _prepare_run_dir(config):
    run_dir = config.output_dir
    has_run = os.path.exists(os.path.join(run_dir, "config.json"))
    if has_run and not (config.resume or config.overwrite):
        raise KcnnError(
            f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, overwrite=True "
            f"(--overwrite) to replace it, or another output directory."
        )
    if config.resume and not has_run:
        raise KcnnError(f"There is no run to resume in {run_dir}; start it without --resume.")
    if has_run and config.resume:
        saved = json.load(open(os.path.join(run_dir, "config.json")))
        different = {k: v for k, v in dataclasses.asdict(config).items()
                     if k not in ("resume", "overwrite", "verbose") and saved.get(k) != v}
        if different:
            raise KcnnError(
                f"The run in {run_dir} was started with other settings ({', '.join(sorted(different))}); "
                f"resume it with the same ones, or start a new run."
            )
    if has_run and config.overwrite:
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    _write_json(os.path.join(run_dir, "config.json"), _config_record(config))
    return run_dir


def _config_record(config):
    import keras

    import kcnn

    record = dataclasses.asdict(config)
    record["versions"] = {"kcnn": kcnn.__version__, "keras": keras.__version__, "backend": keras.backend.backend()}
    return record


def _read_history(run_dir):
    import csv

    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def _plots(run_dir, history, eval_data, predicted, config):
    from kcnn import viz

    viz.save_figure(viz.training_curves(history, title=f"{config.arch} on {config.dataset}"),
                    os.path.join(run_dir, "curves.png"))
    viz.save_figure(viz.confusion_matrix(eval_data.labels, predicted, eval_data.class_names,
                                         title=f"{config.arch} on {eval_data.name}"),
                    os.path.join(run_dir, "confusion.png"))
    wrong_first = np.argsort(predicted[:32] == eval_data.labels[:32], kind="stable")
    viz.save_figure(viz.sample_predictions(eval_data.images[:32][wrong_first], eval_data.labels[:32][wrong_first],
                                           predicted[:32][wrong_first], eval_data.class_names),
                    os.path.join(run_dir, "samples.png"))


def _save_model(model, path):
    temporary = path[: -len(".keras")] + ".tmp.keras"
    model.save(temporary)
    os.replace(temporary, path)


def _write_json(path, value):
    from kcnn.utils import atomic_open

    with atomic_open(path) as f:
        json.dump(value, f, indent=1)
