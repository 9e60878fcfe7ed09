"""Training from scratch with Keras `fit()` and Keras' callbacks.

    from kcnn.train import TrainConfig, train
    run = train(TrainConfig(arch="lenet5", dataset="mnist"))

Every run writes one directory: config.json (enough to repeat it), model.keras
(takes raw 0-255 images: normalisation is inside), history.csv, metrics.json,
curves.png, confusion.png, samples.png and TensorBoard logs. `resume=True`
continues an interrupted run from its last finished epoch (BackupAndRestore).
"""

import dataclasses
import math
import os
from typing import Optional

import numpy as np

from kcnn import report, runs, torch_fast, workflow
from kcnn import tta as kcnn_tta  # `tta` is a TrainConfig field and an argument here
from kcnn.data.datasets import FOLDER_SPLITS, SPLITS
from kcnn.errors import InvalidArgumentError, KcnnError
from kcnn.rundir import RunDir, config_record, load_run  # noqa: F401 (load_run: kcnn.train.load_run, as before)
from kcnn.workflow import Run, summary_table  # noqa: F401 (public names of this module, as before)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "plateau", "cosine", "onecycle", "triangle")

# Per-dataset defaults, so that the bare command trains a good model (the splits trained and evaluated
# on come from kcnn.data.SPLITS, the one table of them). RECIPE_DEFAULTS fill what a dataset leaves out.
RECIPE_DEFAULTS = dict(momentum=0.9, norm_bias_lr=1.0, lookahead=False, dirac_init=False, whiten_bias_epochs=0,
                       mixed_precision=False, tta=None)
DATASET_DEFAULTS = {
    "mnist": dict(arch="lenet5", epochs=8, batch_size=128, optimizer="adamw", learning_rate=3e-3,
                  schedule="onecycle", weight_decay=5e-4, label_smoothing=0.0, augment="none"),
    # airbench94's recipe (Jordan 2024, KellerJordan/cifar10-airbench legacy/airbench94.py), its numbers
    # translated to Keras' SGD on the mean loss: rate 11.5 per 1024 images / (1 + 1/(1 - 0.85)) x 1024 = 1.5;
    # its weight decay (0.0153 x 1024 / 7,850 per step, through momentum: x 1/(1 - 0.85)) is Keras' decoupled
    # 0.0133 per step at the peak rate: 0.0089 x 1.5. Batch-norm biases learn 64x faster (same decay per
    # step), lookahead every 5 steps, Dirac initialisation, the whitening bias trains for 3 epochs, label
    # smoothing 0.2, 2-pixel translations with alternating flips, 6-view test-time augmentation, bfloat16
    # where the CPU has it (kcnn.utils.precision_decision). bench/cifar10.py measures it.
    "cifar10": dict(arch="airbench", epochs=12, batch_size=1024, optimizer="sgd", learning_rate=1.5,
                    schedule="triangle", weight_decay=0.0089, label_smoothing=0.2, augment="airbench",
                    momentum=0.85, norm_bias_lr=64.0, lookahead=True, dirac_init=True, whiten_bias_epochs=3,
                    mixed_precision=True, tta="flip_crop"),
    "cifar10_sample": dict(arch="cifar_resnet20", epochs=10, batch_size=64, optimizer="adamw", learning_rate=2e-3,
                           schedule="onecycle", weight_decay=5e-4, label_smoothing=0.0, augment="crop_flip"),
    # any image folder with one sub-folder per class (20% of each class held out for validation)
    "folder": dict(arch="cifar_resnet20", epochs=20, batch_size=32, optimizer="adamw", learning_rate=2e-3,
                   schedule="onecycle", weight_decay=5e-4, label_smoothing=0.0, augment="crop_flip", image_size=64),
    "digits": dict(arch="cifar_resnet20", epochs=15, batch_size=64, optimizer="adamw", learning_rate=3e-3,
                   schedule="onecycle", weight_decay=5e-4, label_smoothing=0.0, augment="none"),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; `None` means the dataset's default."""

    dataset: str = "mnist"  # a dataset name, or a folder with one sub-folder of images per class
    arch: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    optimizer: Optional[str] = None  # sgd (Nesterov momentum), adam, adamw
    learning_rate: Optional[float] = None  # peak learning rate
    schedule: Optional[str] = None  # constant, plateau (/10 on a val-accuracy plateau), cosine, onecycle, triangle
    momentum: Optional[float] = None  # SGD's Nesterov momentum (0.9)
    norm_bias_lr: Optional[float] = None  # batch-norm biases learn this many times faster, same decay per step (1)
    lookahead: Optional[bool] = None  # airbench94's lookahead every 5 steps (kcnn.optim.add_lookahead)
    dirac_init: Optional[bool] = None  # convolutions start as identities (kcnn.optim.dirac_init)
    whiten_bias_epochs: Optional[int] = None  # a whitening layer's bias trains this many epochs (0: all frozen)
    weight_decay: Optional[float] = None
    label_smoothing: Optional[float] = None
    augment: Optional[str] = None  # none, crop, flip, crop_flip, translate_flip, airbench, randaugment, mixup, cutmix
    image_size: Optional[int] = None  # resize images to this size (square)
    validation_split: float = 0.2  # image folders: fraction of each class held out
    on_bad_image: str = "skip"  # image folders: skip (and count) unreadable files, or stop at the first
    early_stopping: Optional[int] = None  # stop after this many epochs without a better val accuracy
    class_weight: Optional[str] = None  # "balanced": each class weighs as if the classes were the same size
    tta: Optional[str] = None  # also evaluate with test-time augmentation (kcnn.tta: flip, flip_crop; "none")
    mixed_precision: Optional[bool] = None  # where the machine has a fast lower precision (kcnn.utils)
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
        defaults = dict(RECIPE_DEFAULTS, **self.defaults)
        values = {k: (defaults[k] if v is None and k in defaults else v) for k, v in dataclasses.asdict(self).items()}
        if values["tta"] == "none":
            values["tta"] = None
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

    def splits(self):
        """(split trained on, split evaluated on, a second evaluation split or None): kcnn.data.SPLITS."""
        return FOLDER_SPLITS if self.is_folder else SPLITS[self.dataset]

    def train_split_name(self):
        return self.splits()[0]

    def eval_split_name(self):
        return self.splits()[1]

    def extra_eval_name(self):
        return self.splits()[2]

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
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            bad("momentum", self.momentum, "in [0, 1)")
        if not (isinstance(self.norm_bias_lr, (int, float)) and self.norm_bias_lr > 0):
            bad("norm_bias_lr", self.norm_bias_lr, "a number above 0 (1: the same rate as the other weights)")
        if isinstance(self.whiten_bias_epochs, bool) or not isinstance(self.whiten_bias_epochs, int) \
                or self.whiten_bias_epochs < 0:
            bad("whiten_bias_epochs", self.whiten_bias_epochs, "a whole number of epochs of at least 0")
        if self.whiten_bias_epochs and self.schedule == "plateau":
            raise InvalidArgumentError("whiten_bias_epochs stops the whitening bias on a schedule of its own, which "
                                       "ReduceLROnPlateau cannot scale; pick another schedule (--schedule) or "
                                       "--whiten-bias-epochs 0.")
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
        kcnn_tta.check_mode(self.tta)
        report.check_class_weight(self.class_weight)
        if self.resume and self.overwrite:
            raise InvalidArgumentError("resume and overwrite contradict each other; pass one of them.")


def scaled_learning_rate(learning_rate, batch_size, new_batch_size, optimizer):
    """A recipe's learning rate for another (global) batch size, as timm's --lr-base-scale does: in
    proportion to the batch for SGD (Goyal et al. 2017, "Accurate, large minibatch SGD"), with its square
    root for Adam and AdamW. The recipes' warm-up (one-cycle) keeps the first large steps stable."""
    ratio = new_batch_size / batch_size
    return learning_rate * (ratio if optimizer == "sgd" else math.sqrt(ratio))


def train(config: TrainConfig, callbacks=()) -> Run:
    """Train `config.arch` on `config.dataset`; `callbacks` are extra Keras
    callbacks, added to kcnn's own (checkpoints, logs, schedules)."""
    return workflow.run_workflow(config, lambda config, plan: _train(config, plan, callbacks))


def _train(config, plan, callbacks):
    import kcnn
    from kcnn.data.pipeline import make_dataset

    info = kcnn.get_model_info(config.arch)  # unknown architectures fail here, before any work
    if config.whiten_bias_epochs and not (info.training and info.training.init_from_data):
        _no_whitening_layer(config)
    # ---- data (checked before the run directory is touched) ----------------
    train_data = config.load(config.train_split_name())
    eval_data = config.load(config.eval_split_name())
    if config.limit:
        train_data = dataclasses.replace(train_data, images=train_data.images[: config.limit],
                                         labels=train_data.labels[: config.limit])
    num_classes = len(train_data.class_names)
    if config.verbose and config.class_weight is None:
        report.warn_if_imbalanced(train_data.labels, train_data.class_names)
    height, width, channels = train_data.image_shape
    if config.image_size:
        height = width = config.image_size
    image_shape = (height, width, channels)
    _check_input_size(info, image_shape, config)
    one_hot = config.label_smoothing > 0 or config.augment in ("mixup", "cutmix")
    run = RunDir(config.output_dir)
    first_epoch = run.resumed_epoch() if config.resume else 0
    outputs = info.training.outputs_for(image_shape) if info.training else None  # training-only outputs
    if outputs and config.class_weight:
        raise InvalidArgumentError(f"{config.arch} trains with several outputs ({', '.join(outputs)}), which Keras' "
                                   f"class weights do not cover; train it without class_weight (--class-weight).")

    # shard: this worker's part of each global batch (kcnn.distribute)
    train_ds = make_dataset(train_data, batch_size=config.batch_size, training=True, num_classes=num_classes,
                            image_shape=image_shape, augment=config.augment, seed=config.seed, one_hot=one_hot,
                            epochs=config.epochs, first_epoch=first_epoch, shard=plan.input_shard)
    kept = plan.validation_size(len(eval_data))
    validation = dataclasses.replace(eval_data, images=eval_data.images[:kept], labels=eval_data.labels[:kept])
    eval_ds = make_dataset(validation, batch_size=config.batch_size, training=False, num_classes=num_classes,
                           image_shape=image_shape, one_hot=one_hot, shard=plan.input_shard)
    if outputs:
        train_ds, eval_ds = (ds.map(lambda images, labels: (images, {name: labels for name in outputs}))
                             for ds in (train_ds, eval_ds))
    with workflow.owned_run_dir(config, "train", plan) as run:
        model = _fit(config, plan, run, info, outputs, train_data, train_ds, eval_ds, image_shape, one_hot,
                     first_epoch, callbacks)
        # The chief evaluates and writes; the other workers return without metrics once it has.
        return plan.on_chief(lambda: _evaluate_and_save(config, plan, run, model, train_data, eval_data,
                                                        image_shape)) or Run(run.path, model, None, None)


def _check_input_size(info, image_shape, config):
    from kcnn.registry import check_input_size

    check_input_size(info, image_shape, hint=f"and {config.dataset_name} images are {image_shape[0]}x"
                     f"{image_shape[1]}; pass image_size={max(info.min_input_size, 32)} (--image-size) to resize "
                     f"them, or pick a model for small images.")


def _fit(config, plan, run, info, outputs, train_data, train_ds, eval_ds, image_shape, one_hot, first_epoch,
         callbacks):
    """The model, trained with Keras' fit() and callbacks (a resumed run starts at its backup's epoch)."""
    import keras

    from kcnn import optim

    num_classes = len(train_data.class_names)
    with workflow.precision(config.mixed_precision):
        keras.utils.set_random_seed(config.seed)
        steps_per_epoch = len(train_data) // config.batch_size
        with plan.scope():
            model, trainer = _models(config, info, outputs, num_classes, image_shape, train_data.images)
            loss = (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
                    if one_hot else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            if outputs:  # training-only outputs (GoogLeNet's auxiliary heads) add their weighted losses
                main = next(iter(outputs))
                trainer.compile(optimizer=_optimizer(config, steps_per_epoch, trainer), loss={k: loss for k in outputs},
                                loss_weights=outputs, metrics={main: ["accuracy"]}, jit_compile=config.jit_compile)
            else:
                trainer.compile(optimizer=_optimizer(config, steps_per_epoch, trainer), loss=loss, metrics=["accuracy"],
                                jit_compile=config.jit_compile)
            extra = []
            if config.whiten_bias_epochs:  # its group stops for good after its epochs
                grouped = getattr(trainer.optimizer, "inner_optimizer", trainer.optimizer)  # (float16's loss scale)
                group = grouped._optimizer_map(_whitening_layer(trainer, config).bias)
                extra.append(optim.FreezeGroup(group, config.whiten_bias_epochs))
            trainer = plan.wrap(trainer)
            trainer.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                        shuffle=False,  # the dataset shuffles, per epoch
                        class_weight=report.class_weights(train_data.labels, num_classes, config.class_weight),
                        callbacks=plan.callbacks() + extra + _callbacks(config, run, model, trainer,
                                                                        first_epoch, plan) + list(callbacks),
                        verbose=config.verbose)
        if config.whiten_bias_epochs:
            _whitening_layer(model, config).trainable = False  # saved as built: frozen
        return plan.single_device(model)


def _evaluate_and_save(config, plan, run, model, train_data, eval_data, image_shape):
    rows = run.history_rows()
    history = run.history()
    if any(not np.isfinite(value) for value in history.get("loss", [])) or \
            not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        raise TrainingDivergedError(
            f"Training diverged: the loss became NaN or infinite in epoch {len(rows)}; pass a lower learning "
            f"rate (--learning-rate, it was {config.learning_rate:g}) with --overwrite."
        )
    metrics = evaluate_model(model, eval_data, image_shape, config.batch_size, tta=config.tta)
    predicted = metrics.pop("predicted")
    if config.extra_eval_name():
        extra = config.load(config.extra_eval_name())
        extra_metrics = evaluate_model(model, extra, image_shape, config.batch_size, tta=config.tta)
        metrics[f"{config.extra_eval_name()}_accuracy"] = extra_metrics["accuracy"]
        if config.tta:
            metrics[f"{config.extra_eval_name()}_tta_accuracy"] = extra_metrics["tta_accuracy"]
    train_seconds = max(sum(float(row.get("seconds") or 0) for row in rows), 1e-9)
    metrics.update(
        eval_split=config.eval_split_name(),
        train_seconds=round(train_seconds, 2),
        train_images_per_second=round(len(train_data) * len(rows) / train_seconds, 1),
        epochs_run=len(rows),
        parameters=int(model.count_params()),
        class_names=list(train_data.class_names),
        skipped_files=int(train_data.skipped),
    )
    return workflow.save_run(run, config, plan, model, metrics, eval_data, predicted)


class TrainingDivergedError(KcnnError):
    """The loss became NaN or infinite (Keras' TerminateOnNaN stopped the run)."""


def _models(config, info, outputs, num_classes, image_shape, train_images):
    """(inference model, model to train): the same model, except where the architecture trains with
    outputs it does not predict with (its TrainingHooks), which the model to train adds."""
    import keras

    from kcnn import optim

    build_kwargs = dict(info.training.training_kwargs or {}) if outputs else {}
    model = normalized_model(config.arch, num_classes, image_shape, train_images, **build_kwargs)
    if config.dirac_init:
        optim.dirac_init(model)
    if config.whiten_bias_epochs:
        whiten = _whitening_layer(model, config)
        whiten.trainable = True  # its bias only: the kernel stays as the data set it
        whiten.kernel.trainable = False
    if not outputs:
        return model, model
    trainer = keras.Model(model.inputs, dict(zip(outputs, model.outputs)), name=f"{config.arch}_training")
    # The inference model reuses the trained layers on the path to the main output only.
    backbone = model.get_layer(config.arch)
    main = keras.Model(backbone.inputs, backbone.outputs[0], name=config.arch)
    inputs = keras.Input(shape=image_shape, name="image")
    inference = keras.Model(inputs, main(model.get_layer("normalize")(inputs)), name=config.arch)
    return torch_fast.accelerate(inference), trainer


def normalized_model(arch, num_classes, image_shape, train_images, **build_kwargs):
    """`kcnn.build(arch)` behind a Normalization layer holding the training
    set's per-channel mean and variance, so the model takes raw 0-255 pixels."""
    import keras

    import kcnn

    pixels = train_images.reshape(-1, train_images.shape[-1]).astype("float64")
    mean, variance = pixels.mean(axis=0), pixels.var(axis=0)
    if image_shape[-1] != train_images.shape[-1]:  # channels converted in the pipeline
        mean = np.full(image_shape[-1], mean.mean())
        variance = np.full(image_shape[-1], variance.mean())
    variance = np.maximum(variance, 1e-6)
    backbone = kcnn.build(arch, num_classes=num_classes, input_shape=image_shape, **build_kwargs)
    hooks = kcnn.get_model_info(arch).training
    if hooks and hooks.init_from_data and image_shape[-1] == train_images.shape[-1]:
        # layers set from the data, not learned (airbench's whitening), from images normalised as it sees them
        sample = train_images[:5000].astype("float64")
        hooks.init_from_data(backbone, (sample - mean) / np.sqrt(variance))
    inputs = keras.Input(shape=image_shape, name="image")
    x = keras.layers.Normalization(mean=mean.tolist(), variance=variance.tolist(), name="normalize")(inputs)
    return torch_fast.accelerate(keras.Model(inputs, backbone(x), name=arch))  # predict() under inference_mode


def evaluate_model(model, data, image_shape, batch_size, *, tta=None):
    """{accuracy, per_class_accuracy, per_class (precision, recall, F1), images, predicted} of `model` on
    `data`, and with test-time augmentation `tta` (kcnn.tta) also {tta_accuracy: {tta: accuracy}}: the
    views are made in the input pipeline, one pass each, the images themselves first."""
    import tensorflow as tf

    from kcnn.data.pipeline import make_dataset

    kcnn_tta.check_mode(tta)
    dataset = make_dataset(data, batch_size=batch_size, training=False, num_classes=len(data.class_names),
                           image_shape=image_shape)
    view_logits = []
    for view in kcnn_tta.VIEWS[tta] if tta else [None]:
        changes = view is not None and (view[1] or view[2])  # (weight, shift, mirrored)
        shown = dataset.map(lambda images, labels, view=view: (
            kcnn_tta.apply_view(images, view, tf.experimental.numpy), labels)) if changes else dataset
        view_logits.append(np.asarray(model.predict(shown, verbose=0), "float32"))
    metrics = report.evaluation_metrics(data.labels, view_logits, data.class_names, tta)
    metrics.update(images=int(len(data)), predicted=np.argmax(view_logits[0], axis=-1))
    return metrics


def evaluate_run(run_dir, *, tta=None):
    """Evaluate a finished run's model.keras on its evaluation split again (on this backend): the metrics
    of evaluate_model. With test-time augmentation `tta`, its accuracy is also recorded in the run's
    metrics.json under tta_accuracy[tta] (written atomically; nothing else in the file changes)."""
    model, config, _ = load_run(run_dir)
    data = config.load(config.eval_split_name())
    metrics = evaluate_model(model, data, tuple(model.input_shape[1:]), config.batch_size, tta=tta)
    if tta:
        run = RunDir(os.path.dirname(run_dir) if str(run_dir).endswith(".keras") else run_dir)
        recorded = run.read_json("metrics.json")
        recorded.setdefault("tta_accuracy", {}).update(metrics["tta_accuracy"])
        run.write_json("metrics.json", recorded)
    metrics["eval_split"] = config.eval_split_name()
    return metrics


def predict_files(model, paths, class_names, *, top=5, transform=None, tta=None):
    """For each image file, the `top` (class name, probability) pairs. `transform`: a pretrained source's
    `eval_transform` (resize the shorter side, centre crop); by default images are resized to the model's
    input as in training. `tta`: probabilities averaged over test-time views (kcnn.tta)."""
    import keras

    from kcnn.data.folder import read_image

    if not isinstance(top, int) or top < 1:
        raise InvalidArgumentError(f"top must be a whole number of at least 1. Received: top={top!r}")
    answering = kcnn_tta.with_tta(model, tta)  # refuses before any file is read
    height, width, channels = model.input_shape[1:]
    mode = {1: "L", 3: "RGB"}[channels]
    images = []
    for path in paths:  # a file that does not decode raises a CorruptImageError naming it and why
        if transform is not None:
            images.append(transform(read_image(path, "RGB")))
        else:
            images.append(read_image(path, mode, (height, width)))
    batch = np.stack(images).reshape(len(images), height, width, channels).astype("float32")
    logits = answering.predict(batch, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    order = np.argsort(-probabilities, axis=-1)[:, :top]
    return [[(class_names[i], float(p[i])) for i in best] for p, best in zip(probabilities, order)]


def _optimizer(config, steps_per_epoch, model):
    """The optimizer of `config`, with its parameter groups: batch-norm biases at norm_bias_lr times the
    rate (and weight decay divided by it: the same decay per step, as airbench94), a whitening layer's bias
    until whiten_bias_epochs; lookahead on top."""
    import keras

    from kcnn import optim

    total = max(1, steps_per_epoch * config.epochs)

    def schedule(peak):
        if config.schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total)
        if config.schedule == "onecycle":
            # Linear warm-up over the first 30% of steps, then cosine annealing:
            # the shape of the one-cycle policy with Keras' own schedule.
            warmup = max(1, int(0.3 * total))
            return keras.optimizers.schedules.CosineDecay(peak / 25, decay_steps=total - warmup,
                                                          warmup_target=peak, warmup_steps=warmup)
        if config.schedule == "triangle":
            return optim.Triangle(peak, total)
        return peak

    def make(scale=1.0, until=None):
        rate = schedule(config.learning_rate * scale)
        if until is not None:
            rate = optim.Until(rate, until)
        decay = (config.weight_decay / scale) or None
        if config.optimizer == "sgd":
            made = keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=config.momentum > 0,
                                        weight_decay=decay)
        elif config.optimizer == "adam":
            made = keras.optimizers.Adam(rate)
        else:
            made = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay / scale)
        return optim.add_lookahead(made, total) if config.lookahead else made

    groups = {}  # optimizer: the paths of the variables it updates instead of the main one
    if config.norm_bias_lr != 1:
        groups[make(config.norm_bias_lr)] = [
            layer.beta.path for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.center]
    if config.whiten_bias_epochs:
        whiten = _whitening_layer(model, config)
        groups[make(until=config.whiten_bias_epochs * steps_per_epoch)] = [whiten.bias.path]
    return optim.grouped(make(), groups) if groups else make()


def _whitening_layer(model, config):
    """The architecture's frozen whitening layer (kcnn.models.airbench), for whiten_bias_epochs."""
    from kcnn.models.airbench import WHITEN_NAME

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == WHITEN_NAME:
            return layer
    _no_whitening_layer(config)


def _no_whitening_layer(config):
    raise InvalidArgumentError(
        f"whiten_bias_epochs trains the bias of a whitening layer, which {config.arch} does not have (airbench "
        f"and airbench_small do); pass whiten_bias_epochs=0 (--whiten-bias-epochs 0). "
        f"Received: whiten_bias_epochs={config.whiten_bias_epochs}")


def _callbacks(config, run_dir, model, trainer, first_epoch, plan=None):
    """kcnn's callbacks, in the order they must run at each epoch's end: the decisions (plateau, early
    stopping), then the files of the epoch, the backup last, which saves the state of all of them. A
    data-parallel worker that is not the chief (kcnn.distribute) takes the same decisions (its logs hold
    the same, reduced, metrics) and restores the same backup, but writes nothing, or only into a scratch
    folder where saving is a collective every worker joins."""
    import keras

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)  # (a path: as before)
    run_dir = run.path
    # a model with training-only outputs (a dict, the prediction first) logs its main output's accuracy
    outputs = getattr(trainer, "output", None)  # (a Sequential never called has none)
    main = next(iter(outputs)) if isinstance(outputs, dict) else None
    accuracy = f"val_{main}_accuracy" if main else "val_accuracy"
    decisions = _decision_callbacks(config, accuracy)
    backup_dir = os.path.join(run_dir, "backup")
    if plan is not None and not plan.is_chief:
        scratch = plan.scratch_dir()
        callbacks = list(decisions)
        if scratch:
            callbacks.append(runs.AtomicModelCheckpoint(os.path.join(scratch, "best.keras"), model=model,
                                                        monitor=accuracy, save_best_only=True, mode="max"))
        return callbacks + [runs.CrashSafeBackup(backup_dir, write_dir=os.path.join(scratch, "backup") if scratch
                                                 else False, callbacks=decisions),
                            keras.callbacks.TerminateOnNaN()]
    # A resumed run's best.keras is replaced only by a model better than the best of the epochs before.
    earlier = [float(row[accuracy]) for row in runs.read_history_rows(os.path.join(run_dir, "history.csv"))
               if int(row["epoch"]) < first_epoch and row.get(accuracy)]
    return decisions + [
        # Each epoch's files are written before the backup moves on to the next epoch: a kill between
        # the two repeats that epoch on --resume, and the repeated rows are dropped.
        runs.HistoryLog(os.path.join(run_dir, "history.csv"), first_epoch, run=run),
        runs.AtomicModelCheckpoint(os.path.join(run_dir, "best.keras"), model=model, run=run, monitor=accuracy,
                                   save_best_only=True, mode="max",
                                   initial_value_threshold=max(earlier) if earlier else None),
        runs.CrashSafeBackup(backup_dir, callbacks=decisions, run=run),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        runs.RecordedLogs(run, os.path.join(run_dir, "logs")),  # after TensorBoard: its files of the epoch
        keras.callbacks.TerminateOnNaN(),
    ]


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


def _config_record(config):
    """config.json of a `kcnn train` run (kcnn.rundir.config_record)."""
    return config_record(config, "train")
