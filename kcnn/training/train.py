"""Training from scratch with Keras `fit()` and Keras' callbacks.

    from kcnn.config import TrainConfig
    from kcnn.training.train import train
    run = train(TrainConfig(arch="lenet5", dataset="mnist"))

Every run writes one directory: config.json (enough to repeat it), model.keras
(takes raw 0-255 images: normalisation is inside), history.csv, metrics.json,
curves.png, confusion.png, samples.png and TensorBoard logs. `resume=True`
continues an interrupted run from its last finished epoch (BackupAndRestore).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from kcnn.backends import keras_private
from kcnn.training import report
from kcnn.training import callbacks as kcnn_callbacks
from kcnn.backends import torch_fast
from kcnn.backends.quiet import progress_verbosity
from kcnn.training import job
from kcnn.config import TrainConfig
from kcnn.training.evaluate import evaluate_model
from kcnn.errors import InvalidArgumentError
from kcnn.runs.rundir import RunDir, read_history_rows
from kcnn.runs.modelfile import probe_images
from kcnn.training.job import Run

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras


def train(config: TrainConfig, callbacks: Sequence = ()) -> Run:
    """Train `config.arch` on `config.dataset`; `callbacks` are extra Keras
    callbacks, added to kcnn's own (checkpoints, logs, schedules)."""
    return TrainJob(config, callbacks).run()


class TrainJob(job.Job):
    """From scratch: Keras' fit() on the tf.data pipeline, with kcnn's callbacks. The steps, in the order
    `Job.run` calls them: load_data, fit, evaluate (then the shared save)."""

    kind = "train"

    def load_data(self) -> None:
        """The data and everything checked on it, before the run folder is touched: the datasets (this
        worker's shard of each global batch), the input shape, training-only outputs."""
        from kcnn.data.pipeline import make_dataset
        from kcnn.registry import get_model_info

        config, plan = self.config, self.plan
        self.info = info = get_model_info(config.arch)
        if config.whiten_bias_epochs and not (info.training and info.training.init_from_data):
            _no_whitening_layer(config)
        self.train_data = train_data = config.load(config.train_split_name())
        self.eval_data = eval_data = config.load(config.eval_split_name())
        if config.limit:
            self.train_data = train_data = dataclasses.replace(
                train_data, images=train_data.images[: config.limit], labels=train_data.labels[: config.limit])
        num_classes = len(train_data.class_names)
        if config.verbose and config.class_weight is None:
            report.warn_if_imbalanced(train_data.labels, train_data.class_names)
        height, width, channels = train_data.image_shape
        if config.image_size:
            height = width = config.image_size
        self.image_shape = image_shape = (height, width, channels)
        _check_input_size(info, image_shape, config)
        self.one_hot = one_hot = config.label_smoothing > 0 or config.augment in ("mixup", "cutmix")
        self.first_epoch = self.folder.resumed_epoch() if config.resume else 0
        self.outputs = outputs = info.training.outputs_for(image_shape) if info.training else None
        if outputs and config.class_weight:
            raise InvalidArgumentError(f"{config.arch} trains with several outputs ({', '.join(outputs)}), which "
                                       f"Keras' class weights do not cover; train it without class_weight "
                                       f"(--class-weight).")
        self.train_ds = make_dataset(train_data, batch_size=config.batch_size, training=True,
                                     num_classes=num_classes, image_shape=image_shape, augment=config.augment,
                                     seed=config.seed, one_hot=one_hot, epochs=config.epochs,
                                     first_epoch=self.first_epoch, shard=plan.input_shard)
        kept = plan.validation_size(len(eval_data))
        validation = dataclasses.replace(eval_data, images=eval_data.images[:kept], labels=eval_data.labels[:kept])
        self.eval_ds = make_dataset(validation, batch_size=config.batch_size, training=False,
                                    num_classes=num_classes, image_shape=image_shape, one_hot=one_hot,
                                    shard=plan.input_shard)
        if outputs:  # training-only outputs (GoogLeNet's auxiliary heads) learn the same labels
            self.train_ds, self.eval_ds = (ds.map(lambda images, labels: (images, {name: labels for name in outputs}))
                                           for ds in (self.train_ds, self.eval_ds))

    def fit(self) -> None:
        """self.model, trained with Keras' fit() and callbacks (a resumed run starts at its backup's epoch)."""
        import keras

        from kcnn.training import optim

        config, plan, train_data, outputs = self.config, self.plan, self.train_data, self.outputs
        num_classes = len(train_data.class_names)
        with job.precision(config.mixed_precision):
            keras.utils.set_random_seed(config.seed)
            steps_per_epoch = len(train_data) // config.batch_size
            with plan.scope():
                model, trainer = _models(config, self.info, outputs, num_classes, self.image_shape,
                                         train_data.images)
                loss = (keras.losses.CategoricalCrossentropy(from_logits=True,
                                                             label_smoothing=config.label_smoothing)
                        if self.one_hot else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                optimizer = _optimizer(config, steps_per_epoch, trainer)
                if outputs:  # training-only outputs add their weighted losses
                    trainer.compile(optimizer=optimizer, loss={k: loss for k in outputs}, loss_weights=outputs,
                                    metrics={next(iter(outputs)): ["accuracy"]}, jit_compile=config.jit_compile)
                else:
                    trainer.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                                    jit_compile=config.jit_compile)
                extra = []
                if config.whiten_bias_epochs:  # its group stops for good after its epochs
                    grouped = getattr(trainer.optimizer, "inner_optimizer", trainer.optimizer)  # (float16's scale)
                    group = keras_private.group_optimizer(grouped, _whitening_layer(trainer, config).bias)
                    extra.append(optim.FreezeGroup(group, config.whiten_bias_epochs))
                trainer = plan.wrap(trainer)
                trainer.fit(self.train_ds, validation_data=self.eval_ds, epochs=config.epochs,
                            steps_per_epoch=steps_per_epoch, shuffle=False,  # the dataset shuffles, per epoch
                            class_weight=report.class_weights(train_data.labels, num_classes, config.class_weight),
                            callbacks=plan.callbacks() + extra + _callbacks(config, self.folder, model, trainer,
                                                                            self.first_epoch, plan) + self.callbacks,
                            verbose=progress_verbosity(config.verbose))  # a line per epoch into a pipe
            if config.whiten_bias_epochs:
                _whitening_layer(model, config).trainable = False  # saved as built: frozen
            self.model = plan.single_device(model)

    def evaluate(self) -> None:
        """On the chief: refuse a diverged model, then the metrics on the evaluation split (and a second one)."""
        self.plan.on_chief(self._evaluate)

    def _evaluate(self):
        config, model, train_data = self.config, self.model, self.train_data
        rows = self.folder.history_rows()
        metrics = evaluate_model(model, self.eval_data, self.image_shape, config.batch_size, tta=config.tta)
        self.predicted = metrics.pop("predicted")
        if config.extra_eval_name():
            extra = config.load(config.extra_eval_name())
            extra_metrics = evaluate_model(model, extra, self.image_shape, config.batch_size, tta=config.tta)
            metrics[f"{config.extra_eval_name()}_accuracy"] = extra_metrics["accuracy"]
            if config.tta:
                metrics[f"{config.extra_eval_name()}_tta_accuracy"] = extra_metrics["tta_accuracy"]
        train_seconds = max(sum(float(row.get("seconds") or 0) for row in rows), 1e-9)
        metrics.update(
            eval_split=config.eval_split_name(),
            recipe=config.recipe,
            train_seconds=round(train_seconds, 2),
            train_images_per_second=round(len(train_data) * len(rows) / train_seconds, 1),
            epochs_run=len(rows),
            parameters=int(model.count_params()),
            class_names=list(train_data.class_names),
            skipped_files=int(train_data.skipped),
        )
        self.metrics = metrics


def _check_input_size(info, image_shape, config):
    from kcnn.registry import check_input_size

    check_input_size(info, image_shape, hint=f"and {config.dataset_name} images are {image_shape[0]}x"
                     f"{image_shape[1]}; pass image_size={max(info.min_input_size, 32)} (--image-size) to resize "
                     f"them, or pick a model for small images.")


def _models(config, info, outputs, num_classes, image_shape, train_images):
    """(inference model, model to train): the same model, except where the architecture trains with
    outputs it does not predict with (its TrainingHooks), which the model to train adds."""
    import keras

    from kcnn.training import optim

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


def normalized_model(arch: str, num_classes: int, image_shape: tuple[int, int, int], train_images: np.ndarray,
                     **build_kwargs: Any) -> keras.Model:
    """`kcnn.build(arch)` behind a Normalization layer holding the training
    set's per-channel mean and variance, so the model takes raw 0-255 pixels."""
    import keras

    from kcnn.registry import build, get_model_info

    pixels = train_images.reshape(-1, train_images.shape[-1]).astype("float64")
    mean, variance = pixels.mean(axis=0), pixels.var(axis=0)
    if image_shape[-1] != train_images.shape[-1]:  # channels converted in the pipeline
        mean = np.full(image_shape[-1], mean.mean())
        variance = np.full(image_shape[-1], variance.mean())
    variance = np.maximum(variance, 1e-6)
    backbone = build(arch, num_classes=num_classes, input_shape=image_shape, **build_kwargs)
    hooks = get_model_info(arch).training
    if hooks and hooks.init_from_data and image_shape[-1] == train_images.shape[-1]:
        # layers set from the data, not learned (airbench's whitening), from images normalised as it sees them
        sample = train_images[:5000].astype("float64")
        hooks.init_from_data(backbone, (sample - mean) / np.sqrt(variance))
    inputs = keras.Input(shape=image_shape, name="image")
    x = keras.layers.Normalization(mean=mean.tolist(), variance=variance.tolist(), name="normalize")(inputs)
    return torch_fast.accelerate(keras.Model(inputs, backbone(x), name=arch))  # predict() under inference_mode


def _optimizer(config, steps_per_epoch, model):
    """The optimizer of `config`, with its parameter groups: batch-norm biases at norm_bias_lr times the
    rate (and weight decay divided by it: the same decay per step, as airbench94), a whitening layer's bias
    until whiten_bias_epochs; lookahead on top."""
    import keras

    from kcnn.training import optim

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
            layer.beta.path for layer in keras_private.all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.center]
    if config.whiten_bias_epochs:
        whiten = _whitening_layer(model, config)
        groups[make(until=config.whiten_bias_epochs * steps_per_epoch)] = [whiten.bias.path]
    return optim.grouped(make(), groups) if groups else make()


def _whitening_layer(model, config):
    """The architecture's frozen whitening layer (kcnn.models.airbench), for whiten_bias_epochs."""
    from kcnn.models.airbench import WHITEN_NAME

    for layer in keras_private.all_layers(model):
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
    data-parallel worker that is not the chief (kcnn.training.distribute) takes the same decisions (its logs hold
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
    # first: a diverged epoch reaches neither the history nor the backup
    guard = kcnn_callbacks.DivergenceGuard(
        f"pass a lower learning rate (--learning-rate, it was {config.learning_rate:g}) and start again with "
        f"--overwrite", probe=probe_images(model.input_shape[1:]), model=model,
        verbose=config.verbose)
    backup_dir = os.path.join(run_dir, "backup")
    if plan is not None and not plan.is_chief:
        scratch = plan.scratch_dir()
        callbacks = [guard, *decisions]
        if scratch:
            callbacks.append(kcnn_callbacks.AtomicModelCheckpoint(os.path.join(scratch, "best.keras"), model=model,
                                                        monitor=accuracy, save_best_only=True, mode="max"))
        write_dir = os.path.join(scratch, "backup") if scratch else False
        return callbacks + [kcnn_callbacks.CrashSafeBackup(backup_dir, write_dir=write_dir, callbacks=decisions)]
    # A resumed run's best.keras is replaced only by a model better than the best of the epochs before.
    earlier = [float(row[accuracy]) for row in read_history_rows(os.path.join(run_dir, "history.csv"))
               if int(row["epoch"]) < first_epoch and row.get(accuracy)]
    return [guard, *decisions,
        # Each epoch's files are written before the backup moves on to the next epoch: a kill between
        # the two repeats that epoch on --resume, and the repeated rows are dropped.
        kcnn_callbacks.HistoryLog(os.path.join(run_dir, "history.csv"), first_epoch, run=run),
        kcnn_callbacks.AtomicModelCheckpoint(os.path.join(run_dir, "best.keras"), model=model, run=run,
                                             monitor=accuracy, save_best_only=True, mode="max",
                                             initial_value_threshold=max(earlier) if earlier else None),
        kcnn_callbacks.CrashSafeBackup(backup_dir, callbacks=decisions, run=run),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        kcnn_callbacks.RecordedLogs(run, os.path.join(run_dir, "logs")),  # after TensorBoard: its files of the epoch
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

