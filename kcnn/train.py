"""Training from scratch with Keras `fit()` and Keras' callbacks.

    from kcnn.train import TrainConfig, train
    run = train(TrainConfig(arch="lenet5", dataset="mnist"))

Every run writes one directory: config.json (enough to repeat it), model.keras
(takes raw 0-255 images: normalisation is inside), history.csv, metrics.json,
curves.png, confusion.png, samples.png and TensorBoard logs. `resume=True`
continues an interrupted run from its last finished epoch (BackupAndRestore).
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
from typing import Optional

import numpy as np

from kcnn import distribute, runs, torch_fast
from kcnn.errors import InvalidArgumentError, KcnnError
from kcnn.utils import mixed_precision_policy, replace_file

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "plateau", "cosine", "onecycle")

# Per-dataset defaults, so that the bare command trains a good model.
# train/eval: the splits trained on and evaluated on; extra_eval: a second check.
DATASET_DEFAULTS = {
    "mnist": dict(arch="lenet5", train_split="train", eval_split="test", extra_eval=None, epochs=8,
                  batch_size=128, optimizer="adamw", learning_rate=3e-3, schedule="onecycle",
                  weight_decay=5e-4, label_smoothing=0.0, augment="none"),
    # airbench recipe: >= 90% on batch 5 in under 30 minutes on 2 CPU cores (bench/cifar10.py, which
    # adds --mixed-precision: bfloat16 is 1.6x faster on CPUs that support it, slower on others)
    "cifar10": dict(arch="airbench", train_split="holdout_train", eval_split="holdout",
                    extra_eval="test_first1000", epochs=12, batch_size=512, optimizer="sgd", learning_rate=1.0,
                    schedule="onecycle", weight_decay=5e-4, label_smoothing=0.2, augment="crop_flip"),
    "cifar10_sample": dict(arch="cifar_resnet20", train_split="train", eval_split="test", extra_eval=None,
                           epochs=10, batch_size=64, optimizer="adamw", learning_rate=2e-3, schedule="onecycle",
                           weight_decay=5e-4, label_smoothing=0.0, augment="crop_flip"),
    # any image folder with one sub-folder per class (20% of each class held out for validation)
    "folder": dict(arch="cifar_resnet20", train_split="training", eval_split="validation", extra_eval=None,
                   epochs=20, batch_size=32, optimizer="adamw", learning_rate=2e-3, schedule="onecycle",
                   weight_decay=5e-4, label_smoothing=0.0, augment="crop_flip", image_size=64),
    "digits": dict(arch="cifar_resnet20", train_split="train", eval_split="test", extra_eval=None, epochs=15,
                   batch_size=64, optimizer="adamw", learning_rate=3e-3, schedule="onecycle", weight_decay=5e-4,
                   label_smoothing=0.0, augment="none"),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; `None` means the dataset's default."""

    dataset: str = "mnist"  # a dataset name, or a folder with one sub-folder of images per class
    arch: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    optimizer: Optional[str] = None  # sgd (momentum 0.9, Nesterov), adam, adamw
    learning_rate: Optional[float] = None  # peak learning rate
    schedule: Optional[str] = None  # constant, plateau (/10 on a val-accuracy plateau), cosine, onecycle
    weight_decay: Optional[float] = None
    label_smoothing: Optional[float] = None
    augment: Optional[str] = None  # none, flip, crop_flip, randaugment, mixup, cutmix
    image_size: Optional[int] = None  # resize images to this size (square)
    validation_split: float = 0.2  # image folders: fraction of each class held out
    on_bad_image: str = "skip"  # image folders: skip (and count) unreadable files, or stop at the first
    early_stopping: Optional[int] = None  # stop after this many epochs without a better val accuracy
    mixed_precision: bool = False
    jit_compile: object = "auto"
    distribute: bool = False  # data-parallel on the backend's own engine (kcnn.distribute); batch_size is global
    seed: int = 0
    limit: Optional[int] = None  # train on the first N images only (quick checks)
    output_dir: Optional[str] = None  # default: saved_models/ARCH_DATASET
    resume: bool = False
    overwrite: bool = False
    export: bool = False  # also a SavedModel for serving in RUN_DIR/export/1 (kcnn.export)
    verbose: int = 1

    @property
    def is_folder(self):
        return self.dataset not in DATASET_DEFAULTS

    @property
    def defaults(self):
        return DATASET_DEFAULTS["folder" if self.is_folder else self.dataset]

    def resolved(self):
        """A copy with every `None` replaced by the dataset's default."""
        if self.is_folder:
            if not (isinstance(self.dataset, (str, os.PathLike)) and os.path.isdir(self.dataset)):
                names = ", ".join(sorted(k for k in DATASET_DEFAULTS if k != "folder"))
                raise InvalidArgumentError(
                    f"Unknown dataset {self.dataset!r}; kcnn trains on {names}, or on a folder with one "
                    f"sub-folder of images per class. Received: dataset={self.dataset!r}"
                )
        defaults = self.defaults
        values = {k: (defaults[k] if v is None and k in defaults else v) for k, v in dataclasses.asdict(self).items()}
        if self.learning_rate is None and isinstance(self.batch_size, int) and self.batch_size > 0 \
                and values["optimizer"] in OPTIMIZERS:
            values["learning_rate"] = scaled_learning_rate(defaults["learning_rate"], defaults["batch_size"],
                                                           self.batch_size, values["optimizer"])
        config = TrainConfig(**values)
        if config.is_folder:
            config.dataset = os.path.abspath(config.dataset)  # the run records where its data came from
        if config.output_dir is None:
            config.output_dir = os.path.join("saved_models", f"{config.arch}_{config.dataset_name}")
        config.check()
        return config

    @property
    def dataset_name(self):
        return os.path.basename(os.path.normpath(self.dataset)) if self.is_folder else self.dataset

    def train_split_name(self):
        return self.defaults["train_split"]

    def eval_split_name(self):
        return self.defaults["eval_split"]

    def extra_eval_name(self):
        return self.defaults["extra_eval"]

    def load(self, split):
        """One split of this run's data, as `kcnn.data.ImageData`."""
        from kcnn import data as kdata

        if self.is_folder:
            # The split seed is fixed: runs with different seeds see the same validation images.
            return kdata.image_folder(self.dataset, image_size=self.image_size, subset=split,
                                      validation_split=self.validation_split, on_error=self.on_bad_image,
                                      verbose=bool(self.verbose))
        return kdata.load(self.dataset, split)

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
        if not isinstance(self.label_smoothing, (int, float)) or not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", self.label_smoothing, "in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            bad("image_size", self.image_size, "a whole number of pixels")
        if self.early_stopping is not None and (not isinstance(self.early_stopping, int) or self.early_stopping < 1):
            bad("early_stopping", self.early_stopping, "a whole number of epochs of at least 1 (the patience)")
        if not 0 < self.validation_split < 1 and self.is_folder:
            bad("validation_split", self.validation_split, "in (0, 1) for an image folder")
        if self.resume and self.overwrite:
            raise InvalidArgumentError("resume and overwrite contradict each other; pass one of them.")


def scaled_learning_rate(learning_rate, batch_size, new_batch_size, optimizer):
    """A recipe's learning rate for another (global) batch size, as timm's --lr-base-scale does: in
    proportion to the batch for SGD (Goyal et al. 2017, "Accurate, large minibatch SGD"), with its square
    root for Adam and AdamW. The recipes' warm-up (one-cycle) keeps the first large steps stable."""
    ratio = new_batch_size / batch_size
    return learning_rate * (ratio if optimizer == "sgd" else math.sqrt(ratio))


@dataclasses.dataclass
class Run:
    directory: str
    model: object
    history: dict
    metrics: dict


def train(config: TrainConfig, callbacks=()) -> Run:
    """Train `config.arch` on `config.dataset`; `callbacks` are extra Keras
    callbacks, added to kcnn's own (checkpoints, logs, schedules)."""
    import kcnn

    config = config.resolved()
    info = kcnn.get_model_info(config.arch)  # unknown architectures fail here, before any work
    plan = distribute.plan(config.distribute)
    if plan.restarted and _resumed_epoch(config.output_dir) > 0:
        # torchrun --max-restarts started the workers again after one failed: continue from the backup.
        config = dataclasses.replace(config, resume=True, overwrite=False)
    try:
        return _train(config, info, plan, callbacks)
    finally:
        plan.close()


def _train(config, info, plan, callbacks):
    from kcnn.data.pipeline import make_dataset

    plan.check_batch(config.batch_size)
    if not plan.is_chief:
        config = dataclasses.replace(config, verbose=0)  # the chief reports for every worker

    # ---- data (checked before the run directory is touched) ----------------
    train_data = config.load(config.train_split_name())
    eval_data = config.load(config.eval_split_name())
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
            f"{config.dataset_name} images are {height}x{width}; pass image_size={max(info.min_input_size, 32)} "
            f"(--image-size) to resize them, or pick a model for small images."
        )
    image_shape = (height, width, channels)
    one_hot = config.label_smoothing > 0 or config.augment in ("mixup", "cutmix")
    first_epoch = _resumed_epoch(config.output_dir) if config.resume else 0
    aux = _uses_aux_heads(config.arch, image_shape)

    # shard: this worker's part of each global batch (kcnn.distribute)
    train_ds = make_dataset(train_data, batch_size=config.batch_size, training=True, num_classes=num_classes,
                            image_shape=image_shape, augment=config.augment, seed=config.seed, one_hot=one_hot,
                            epochs=config.epochs, first_epoch=first_epoch, shard=plan.input_shard)
    kept = plan.validation_size(len(eval_data))
    validation = dataclasses.replace(eval_data, images=eval_data.images[:kept], labels=eval_data.labels[:kept])
    eval_ds = make_dataset(validation, batch_size=config.batch_size, training=False, num_classes=num_classes,
                           image_shape=image_shape, one_hot=one_hot, shard=plan.input_shard)
    if aux:
        train_ds, eval_ds = (ds.map(_labels_per_output) for ds in (train_ds, eval_ds))
    # The chief alone takes the lock and writes the run directory; the other workers wait for it.
    lock = plan.on_chief(lambda: _prepare_run_dir(config))
    with lock or contextlib.nullcontext(), runs.write_errors_explained(config.output_dir, resumable=True):
        return _fit_and_save(config, plan, config.output_dir, train_data, eval_data, train_ds, eval_ds,
                             image_shape, one_hot, first_epoch, callbacks)


def _fit_and_save(config, plan, run_dir, train_data, eval_data, train_ds, eval_ds, image_shape, one_hot,
                  first_epoch, callbacks):
    import keras

    num_classes = len(train_data.class_names)
    policy = keras.mixed_precision.global_policy()
    try:
        keras.utils.set_random_seed(config.seed)
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy(mixed_precision_policy())
        steps_per_epoch = len(train_data) // config.batch_size
        with plan.scope():
            model, trainer = _models(config, num_classes, image_shape, train_data.images)
            loss = (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
                    if one_hot else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            if trainer is model:
                trainer.compile(optimizer=_optimizer(config, steps_per_epoch), loss=loss, metrics=["accuracy"],
                                jit_compile=config.jit_compile)
            else:
                # GoogLeNet: the paper's auxiliary heads each add 0.3 of their loss during training.
                trainer.compile(optimizer=_optimizer(config, steps_per_epoch), loss={k: loss for k in AUX_OUTPUTS},
                                loss_weights=AUX_OUTPUTS, metrics={"logits": ["accuracy"]},
                                jit_compile=config.jit_compile)
            trainer = plan.wrap(trainer)

            # ---- fit with Keras' callbacks (a resumed run starts at its backup's epoch) ----
            trainer.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                        shuffle=False,  # the dataset shuffles, per epoch
                        callbacks=plan.callbacks() + _callbacks(config, run_dir, model, trainer, first_epoch, plan)
                        + list(callbacks),
                        verbose=config.verbose)
        model = plan.single_device(model)
    finally:
        keras.mixed_precision.set_global_policy(policy)  # leave the caller's process as it was
    # The chief evaluates and writes; the other workers return without metrics once it has.
    run = plan.on_chief(lambda: _evaluate_and_save(config, plan, run_dir, model, train_data, eval_data, image_shape))
    return run or Run(run_dir, model, None, None)


def _evaluate_and_save(config, plan, run_dir, model, train_data, eval_data, image_shape):
    import keras

    rows = runs.read_history_rows(os.path.join(run_dir, "history.csv"))
    history = _read_history(run_dir)
    if any(not np.isfinite(value) for value in history.get("loss", [])) or \
            not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        raise TrainingDivergedError(
            f"Training diverged: the loss became NaN or infinite in epoch {len(rows)}; pass a lower learning "
            f"rate (--learning-rate, it was {config.learning_rate:g}) with --overwrite."
        )

    # ---- evaluate, save, plot, export ---------------------------------------
    metrics = evaluate_model(model, eval_data, image_shape, config.batch_size)
    predicted = metrics.pop("predicted")
    if config.extra_eval_name():
        extra = config.load(config.extra_eval_name())
        extra_metrics = evaluate_model(model, extra, image_shape, config.batch_size)
        metrics[f"{config.extra_eval_name()}_accuracy"] = extra_metrics["accuracy"]
    train_seconds = max(sum(float(row.get("seconds") or 0) for row in rows), 1e-9)
    metrics.update(
        eval_split=config.eval_split_name(),
        train_seconds=round(train_seconds, 2),
        train_images_per_second=round(len(train_data) * len(rows) / train_seconds, 1),
        epochs_run=len(rows),
        parameters=int(model.count_params()),
        backend=keras.backend.backend(),
        class_names=list(train_data.class_names),
        skipped_files=int(train_data.skipped),
    )
    if config.distribute:
        metrics["distribute"] = plan.describe()
    _save_model(model, os.path.join(run_dir, "model.keras"))
    _write_json(os.path.join(run_dir, "metrics.json"), metrics)
    _plots(run_dir, history, eval_data, predicted, config)
    if config.export:
        from kcnn.export import export

        # overwrite: a resumed run replaces an export its killed predecessor finished
        metrics["export"] = export(run_dir, "saved_model", overwrite=True, verbose=False)
        _write_json(os.path.join(run_dir, "metrics.json"), metrics)
    # Last: while the backup exists, --resume can finish a run killed after fit().
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    if config.verbose:
        print(summary_table(config, metrics))
    return Run(run_dir, model, history, metrics)


class TrainingDivergedError(KcnnError):
    """The loss became NaN or infinite (Keras' TerminateOnNaN stopped the run)."""


# GoogLeNet trains with its auxiliary heads: output name -> loss weight (Szegedy et al. 2015).
AUX_OUTPUTS = {"logits": 1.0, "aux1": 0.3, "aux2": 0.3}


def _models(config, num_classes, image_shape, train_images):
    """(inference model, model to train): the same model, except for
    GoogLeNet, whose training model adds the auxiliary heads' outputs."""
    import keras

    aux = _uses_aux_heads(config.arch, image_shape)
    model = normalized_model(config.arch, num_classes, image_shape, train_images,
                             **({"aux_logits": True} if aux else {}))
    if not aux:
        return model, model
    logits, aux1, aux2 = model.outputs
    trainer = keras.Model(model.inputs, {"logits": logits, "aux1": aux1, "aux2": aux2}, name=f"{config.arch}_aux")
    # The inference model reuses the trained layers on the path to the main output only.
    backbone = model.get_layer(config.arch)
    main = keras.Model(backbone.inputs, backbone.outputs[0], name=config.arch)
    inputs = keras.Input(shape=image_shape, name="image")
    inference = keras.Model(inputs, main(model.get_layer("normalize")(inputs)), name=config.arch)
    return torch_fast.accelerate(inference), trainer


def _uses_aux_heads(arch, image_shape):
    from kcnn.models import googlenet

    # The auxiliary heads pool 5x5 features: below 79x79 pixels GoogLeNet trains without them.
    return arch == "googlenet" and min(image_shape[:2]) >= googlenet.AUX_MIN_SIZE


def _labels_per_output(images, labels):
    return images, {name: labels for name in AUX_OUTPUTS}


def _history(history):
    """History keys as for a single-output model (GoogLeNet's main output is "logits")."""
    renamed = {key.replace("logits_accuracy", "accuracy"): value for key, value in history.items()
               if "aux" not in key and "logits_loss" not in key}
    return renamed


def normalized_model(arch, num_classes, image_shape, train_images, **build_kwargs):
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
    backbone = kcnn.build(arch, num_classes=num_classes, input_shape=image_shape, **build_kwargs)
    if any(layer.name == airbench.WHITEN_NAME for layer in backbone.layers):
        # airbench's first layer is set from the data, not learned: whiten 2x2 patches of 5,000 images.
        sample = train_images[:5000].astype("float64")
        if image_shape[-1] == sample.shape[-1]:
            airbench.init_whitening(backbone, (sample - mean) / np.sqrt(variance))
    inputs = keras.Input(shape=image_shape, name="image")
    x = keras.layers.Normalization(mean=mean.tolist(), variance=variance.tolist(), name="normalize")(inputs)
    return torch_fast.accelerate(keras.Model(inputs, backbone(x), name=arch))  # predict() under inference_mode


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


def load_run(path):
    """(model, config, class names) of a finished run directory (of `kcnn
    train`: a TrainConfig; of `kcnn finetune`: a FinetuneConfig), or of a
    model.keras file inside one."""
    import keras

    run_dir = os.path.dirname(path) if str(path).endswith(".keras") else path
    model_path = path if str(path).endswith(".keras") else os.path.join(run_dir, "model.keras")
    if not os.path.isfile(model_path):
        raise KcnnError(f"{run_dir} holds no model.keras; pass the directory of a finished run.")
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            record = json.load(f)
        with open(os.path.join(run_dir, "metrics.json")) as f:
            class_names = json.load(f)["class_names"]
        if "backbone" in record:
            from kcnn.finetune import FinetuneConfig as kind
        else:
            kind = TrainConfig
        config = kind(**{k: v for k, v in record.items() if k in kind.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KcnnError(
            f"{run_dir} is not a complete kcnn run (config.json or metrics.json is missing or unreadable: "
            f"{error}); pass the directory a finished `kcnn train` wrote."
        ) from None
    try:
        model = keras.saving.load_model(model_path)  # safe mode: no code from the file runs
    except Exception as error:  # one sentence: safe mode refused code, an unknown layer, not a model file
        from kcnn.export import refusal

        raise KcnnError(refusal(model_path, error)) from None
    return model, config, tuple(class_names)


def predict_files(model, paths, class_names, *, top=5):
    """For each image file, the `top` (class name, probability) pairs."""
    import keras

    from kcnn.data.folder import read_image

    if not isinstance(top, int) or top < 1:
        raise InvalidArgumentError(f"top must be a whole number of at least 1. Received: top={top!r}")
    height, width, channels = model.input_shape[1:]
    mode = {1: "L", 3: "RGB"}[channels]
    images = []
    for path in paths:  # a file that does not decode raises a CorruptImageError naming it and why
        images.append(read_image(path, mode, (height, width)))
    batch = np.stack(images).reshape(len(images), height, width, channels).astype("float32")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(batch, verbose=0), axis=-1))
    order = np.argsort(-probabilities, axis=-1)[:, :top]
    return [[(class_names[i], float(p[i])) for i in best] for p, best in zip(probabilities, order)]


def summary_table(config, metrics):
    lines = [
        f"{'run':24s} {config.output_dir}",
        f"{'model / dataset':24s} {config.arch} / {config.dataset_name} ({metrics['backend']})",
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
    """The epoch the backup resumes at (so that the data order can start
    at that epoch too); 0 without a backup."""
    metadata = runs.read_backup_metadata(os.path.join(run_dir, "backup"))
    return int(metadata["epoch"]) if metadata else 0


def _callbacks(config, run_dir, model, trainer, first_epoch, plan=None):
    """kcnn's callbacks. A data-parallel worker that is not the chief (kcnn.distribute) takes the same
    decisions (its logs hold the same, reduced, metrics) and restores the same backup, but writes
    nothing, or only into a scratch folder where saving is a collective every worker joins."""
    import keras

    accuracy = "val_accuracy" if trainer is model else "val_logits_accuracy"
    if plan is not None and not plan.is_chief:
        scratch = plan.scratch_dir()
        callbacks = [runs.CrashSafeBackup(os.path.join(run_dir, "backup"),
                                          write_dir=os.path.join(scratch, "backup") if scratch else False),
                     keras.callbacks.TerminateOnNaN()]
        if scratch:
            callbacks.append(runs.AtomicModelCheckpoint(os.path.join(scratch, "best.keras"), model=model,
                                                        monitor=accuracy, save_best_only=True, mode="max"))
        return callbacks + _decision_callbacks(config, accuracy)
    # A resumed run's best.keras is replaced only by a model better than the best of the epochs before.
    earlier = [float(row[accuracy]) for row in runs.read_history_rows(os.path.join(run_dir, "history.csv"))
               if int(row["epoch"]) < first_epoch and row.get(accuracy)]
    callbacks = [
        # Each epoch's files are written before the backup moves on to the next epoch: a kill between
        # the two repeats that epoch on --resume, and the repeated rows are dropped.
        runs.HistoryLog(os.path.join(run_dir, "history.csv"), first_epoch),
        runs.AtomicModelCheckpoint(os.path.join(run_dir, "best.keras"), model=model, monitor=accuracy,
                                   save_best_only=True, mode="max",
                                   initial_value_threshold=max(earlier) if earlier else None),
        runs.CrashSafeBackup(os.path.join(run_dir, "backup")),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        keras.callbacks.TerminateOnNaN(),
    ]
    return callbacks + _decision_callbacks(config, accuracy)


def _decision_callbacks(config, accuracy):
    import keras

    callbacks = []
    if config.schedule == "plateau":
        # AlexNet's recipe: divide the learning rate by 10 when validation accuracy stops improving.
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=accuracy, mode="max", factor=0.1,
                                                           patience=2, verbose=config.verbose))
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=accuracy, mode="max", patience=config.early_stopping,
                                                       restore_best_weights=True, verbose=config.verbose))
    return callbacks


def _prepare_run_dir(config):
    """Check the output directory against resume/overwrite, take its lock and
    write config.json; returns the held `runs.RunLock`."""
    run_dir = config.output_dir
    resume = getattr(config, "resume", False)  # fine-tuning runs do not resume
    has_run = os.path.exists(os.path.join(run_dir, "config.json"))
    if has_run and not (resume or config.overwrite):
        raise KcnnError(
            f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, overwrite=True "
            f"(--overwrite) to replace it, or another output directory."
        )
    _check_run_dir(config, run_dir, resume)  # before anything is written...
    with runs.write_errors_explained(run_dir):
        os.makedirs(run_dir, exist_ok=True)
        lock = runs.RunLock(run_dir).acquire()
    try:
        _check_run_dir(config, run_dir, resume)  # ...and again, now that no other kcnn process can change it
        with runs.write_errors_explained(run_dir):
            if config.overwrite:
                for entry in os.scandir(run_dir):  # everything but the lock this process holds
                    if entry.name != runs.LOCK_NAME:
                        shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.remove(entry.path)
            runs.remove_stale_temporaries(run_dir)
            _write_json(os.path.join(run_dir, "config.json"), _config_record(config))
    except BaseException:
        lock.release()
        raise
    return lock


def _check_run_dir(config, run_dir, resume):
    """What `run_dir` holds, checked against `resume` (before the lock is taken, so that a refused run
    writes nothing, and again under it, where no other kcnn process can change it)."""
    has_run = os.path.exists(os.path.join(run_dir, "config.json"))
    if resume and not has_run:
        raise KcnnError(f"There is no run to resume in {run_dir}; start it without --resume.")
    if not (has_run and resume):
        return
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
    except ValueError:
        raise KcnnError(f"{run_dir}/config.json is not readable JSON; start the run again with --overwrite.") \
            from None
    different = {k: v for k, v in dataclasses.asdict(config).items()
                 if k not in ("resume", "overwrite", "verbose") and saved.get(k) != v}
    if different:
        raise KcnnError(
            f"The run in {run_dir} was started with other settings ({', '.join(sorted(different))}); "
            f"resume it with the same ones, or start a new run."
        )
    finished = os.path.exists(os.path.join(run_dir, "metrics.json")) and \
        not os.path.exists(os.path.join(run_dir, "backup"))
    if finished:
        raise KcnnError(f"The run in {run_dir} has finished; there is nothing to resume (kcnn evaluate "
                        f"{run_dir} re-evaluates it).")


def _config_record(config):
    import keras

    import kcnn

    record = dataclasses.asdict(config)
    record["versions"] = {"kcnn": kcnn.__version__, "keras": keras.__version__, "backend": keras.backend.backend()}
    return record


def _read_history(run_dir):
    rows = runs.read_history_rows(os.path.join(run_dir, "history.csv"))
    return _history({key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})
                     if key not in ("epoch", "seconds")})


def _plots(run_dir, history, eval_data, predicted, config, phase_starts=None):
    from kcnn import viz

    viz.save_figure(viz.training_curves(history, title=f"{config.arch} on {config.dataset_name}",
                                        phase_starts=phase_starts),
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
    replace_file(temporary, path)


def _write_json(path, value):
    from kcnn.utils import atomic_open

    with atomic_open(path) as f:
        json.dump(value, f, indent=1)
