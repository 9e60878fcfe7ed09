"""Fine-tuning a pretrained ImageNet backbone on your own classes.

    from kcnn.config import FinetuneConfig
from kcnn.runs.rundir import Run
    from kcnn.training.finetune import finetune
    run = finetune(FinetuneConfig(dataset="path/to/folder"))   # or "cifar10_sample", "cifar10"

The two phases of the best practice (Keras' transfer-learning guide, timm,
torchvision's recipes):

1. The backbone frozen, batch normalisation in inference mode: train a new
   head (dropout + dense) on the backbone's pooled features.
2. Unfreeze the top of the backbone (`unfreeze` blocks, or all) at a lower
   learning rate, with ReduceLROnPlateau and EarlyStopping on a validation
   split of the training images; batch normalisation stays in inference mode.

Whatever is frozen computes the same numbers every epoch, so it runs once:
the images (and their mirror images, the augmentation) go through the frozen
bottom of the backbone a single time, and both phases train on those
activations. The answer is the one a frozen backbone in `fit()` gives, at a
fraction of the cost on a CPU. The run directory holds what `kcnn train`
writes (config, model.keras taking raw 0-255 RGB images, history with a
phase column, curves, confusion matrix, sample predictions, metrics, and
TensorBoard logs: logs/head and logs/finetune, one run per phase).

A killed run resumes (`resume=True`, `--resume`) to the weights an
uninterrupted one reaches: the frozen activations are cached in the run's
backup once computed, each phase keeps a crash-safe backup of every epoch
(with its callbacks' state and the layers' random state), and each finished
phase its final weights. The steps, in order: `extract_features`,
`fit_head`, `fit_top`, `assemble`, `evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from kcnn.backends import keras_private
from kcnn.backends.quiet import progress_verbosity
from kcnn.training import report
from kcnn.training import callbacks as kcnn_callbacks
from kcnn.data import tta
from kcnn.training import job
from kcnn.config import FinetuneConfig
from kcnn.runs.rundir import Run
from kcnn.errors import KcnnError
from kcnn.training.report import class_weights
from kcnn.runs.atomic import atomic_path
from kcnn.data.views import describe_views, training_views
from kcnn.models.surgery import cut_layer, cut_points, split, top_has_weights

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    from kcnn.data.datasets import ImageData

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")  # history.csv's metrics, in both phases


def finetune(config: FinetuneConfig, callbacks: Sequence = ()) -> Run:
    """Fine-tune `config.backbone` with `config.weights` on `config.dataset`;
    returns the `kcnn.runs.rundir.Run` (path, model, history, metrics, class names). `kcnn.finetune` takes the
    settings as keywords."""
    return FinetuneJob(config, callbacks).run()


class FinetuneJob(job.Job):
    """Two-phase fine-tuning on the frozen layers' activations, computed once. The steps, in the order
    `Job.run` calls them: load_data; fit (extract_features, fit_head, fit_top, assemble); evaluate (then the
    shared save)."""

    kind = "finetune"

    def load_data(self) -> None:
        """The backbone's registry entry and both splits, every argument checked before any work."""
        self.info, self.train_data, self.eval_data = _checked_inputs(self.config)
        self.class_names = self.train_data.class_names

    def fit(self) -> None:
        """The frozen pass, then both phases, on the engine's devices; self.model: the whole model."""
        import keras

        config = self.config
        self.clock = job.Stopwatch()
        with self.plan.scope(), job.precision(config.mixed_precision):
            keras.utils.set_random_seed(config.seed)
            self.backbone = _backbone(config)
            self.extract_features()  # self.frozen
            # Seeded again: the training draws (the head's weights, dropout) must not depend on how many
            # predict() calls the frozen pass made (test-time views, a resumed run reading its cache).
            keras.utils.set_random_seed(config.seed)
            self.head = self.fit_head()
            self.fine_tuned = self.fit_top()
        self.train_seconds = self.clock.seconds
        with self.plan.scope():
            self.model = self.assemble()

    def evaluate(self) -> None:
        """Every worker evaluates (under TensorFlow's multi-worker strategy predict() is a collective)."""
        import keras

        with self.plan.scope():
            self.metrics, self.predicted = self._evaluate()
        self.metrics.update(  # workflow_seconds: backbone, frozen pass, both phases and the evaluation
            train_seconds=round(self.train_seconds, 2), feature_seconds=round(self.frozen.seconds, 2),
            workflow_seconds=round(self.clock.seconds, 2), train_images=int(len(self.train_data)),
            validation_images=int(self.validation_images),
            image_size=self.config.image_size, unfrozen_from=self.backbone.cut or "all",
            parameters=int(self.model.count_params()), backend=keras.backend.backend(),
            class_names=list(self.class_names), skipped_files=int(getattr(self.train_data, "skipped", 0)),
            epochs_run=len(self.folder.history_rows()))  # (the chief's rows: the other workers write none)
        self.model = self.plan.single_device(self.model)

    def eval_data_for_plots(self) -> ImageData:
        return dataclasses.replace(self.eval_data, class_names=self.class_names)

    def phase_starts(self) -> dict | None:
        head_epochs = sum(row.get("phase") == "head" for row in self.folder.history_rows())
        return {"fine-tuning": head_epochs + 1} if self.fine_tuned and head_epochs else None

    def extract_features(self) -> None:
        """Step 1: the training images (their mirrors and shifted copies) and the held-out images (in each
        test-time augmentation view) through the frozen layers, once; cached in the run's backup (atomically),
        so that a resumed run does not compute them again."""
        import keras

        config, plan, run = self.config, self.plan, self.folder
        backbone, train_data, eval_data = self.backbone, self.train_data, self.eval_data
        train_images, train_labels, copies = training_views(train_data, flip=config.flip,
                                                            extra_views=config.extra_views, seed=config.seed)
        fit_index, val_index = _validation_split(len(train_data), config.validation_split, config.seed, copies=copies)
        self.validation_images = len(val_index) // copies  # the training images the epochs' val_accuracy is on
        # Data-parallel: each worker computes and trains on its own part of the images (kcnn.training.distribute).
        fit_index, val_index = plan.worker_rows(fit_index), plan.worker_rows(val_index)
        batch_size = plan.worker_batch(config.batch_size)
        mine = np.concatenate([fit_index, val_index])
        fit_rows, val_rows = np.arange(len(fit_index)), np.arange(len(fit_index), len(mine))
        one_hot = keras.utils.to_categorical(train_labels[mine], len(train_data.class_names))
        cache = run.file("backup", f"frozen_{plan.worker}_of_{plan.workers}.npz")
        clock = job.Stopwatch()
        eval_views = eval_view_list(config.tta)
        if config.resume and os.path.exists(cache):
            with np.load(cache) as saved:  # seconds: what this process spent, reading them
                eval_activations = [saved[f"eval_activations_{i}"] for i in range(len(eval_views))]
                self.frozen = Frozen(saved["activations"], eval_activations, saved["features"], one_hot, fit_rows, val_rows, batch_size, clock.seconds)
            return
        total = len(mine) + len(eval_data) * len(eval_views)
        if config.verbose:
            views = f", {len(eval_views)} views of each held-out image" if len(eval_views) > 1 else ""
            print(f"{config.backbone} ({config.weights}) on {config.dataset_name}: "
                  f"{describe_views(len(train_data), config.flip, config.extra_views)} and {len(eval_data):,} "
                  f"held-out images at {config.image_size}x{config.image_size} go through the frozen layers once (up "
                  f"to {backbone.cut or 'the input'}{views}):", flush=True)
        progress = ImageProgress(total) if config.verbose else None
        size = config.image_size
        activations = _predict(backbone.fast_bottom, train_images[mine], size, batch_size, plan.batch_multiple,
                               progress=progress)
        eval_activations = [_predict(backbone.fast_bottom, eval_data.images, size, config.batch_size,
                                     plan.batch_multiple, view=view, progress=progress) for view in eval_views]
        features = _predict(backbone.fast_top, activations, None, batch_size, plan.batch_multiple)
        seconds = clock.seconds
        if plan.is_chief:  # the others' rows are their own: they compute them again on a resume
            os.makedirs(run.backup, exist_ok=True)
            with run.track(cache), atomic_path(cache) as temporary:
                np.savez(temporary, activations=activations, features=features,
                         **{f"eval_activations_{i}": value for i, value in enumerate(eval_activations)})
        if config.verbose:
            print(f"... {seconds:.0f} s.", flush=True)
        self.frozen = Frozen(activations, eval_activations, features, one_hot, fit_rows, val_rows, batch_size, seconds)

    def fit_head(self) -> keras.Model:
        """Step 2 (phase 1): a new head (dropout, dense) on the pooled features."""
        import keras

        config, frozen, num_classes = self.config, self.frozen, len(self.class_names)
        head = keras.Sequential([keras.Input(frozen.features.shape[1:]),
                                 keras.layers.Dropout(config.dropout, name="dropout"),
                                 keras.layers.Dense(num_classes, name="predictions", dtype="float32")], name="head")
        head.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate), loss=_loss(config),
                     metrics=["accuracy"])
        if config.head_epochs:
            if config.verbose:
                print("Phase 1: a new head on the pooled features.", flush=True)
            self.fit_phase("head", head, frozen.features, config.head_epochs)
        return head

    def fit_top(self) -> bool:
        """Step 3 (phase 2): the top of the backbone and the head at a lower learning rate; False where there
        is nothing to fine-tune."""
        import keras

        from kcnn.backends import jax_cpu

        config, backbone, head, frozen = self.config, self.backbone, self.head, self.frozen
        if not (config.finetune_epochs and top_has_weights(backbone.top)):
            return False
        for layer in backbone.fast_top.layers:
            # Batch normalisation stays frozen (inference mode): its statistics come from ImageNet, and a
            # few thousand images would only make them worse (Keras' transfer-learning guide).
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        if config.verbose:
            layers = f"the layers after {backbone.cut}" if backbone.cut else "every layer"
            print(f"Phase 2: {layers} and the head, learning rate {config.finetune_learning_rate:g}.", flush=True)
        trainable = keras.Model(backbone.fast_top.input, head(backbone.fast_top.output), name="finetune")
        # ema: Keras' optimizer keeps the moving average of the weights, and fit() ends on it.
        trainable.compile(optimizer=_finetune_optimizer(config, backbone.fast_top), loss=_loss(config),
                          metrics=["accuracy"])
        self.fit_phase("finetune", trainable, frozen.activations, config.finetune_epochs)
        jax_cpu.copy_weights(backbone.fast_top, backbone.top)
        return True

    def fit_phase(self, phase: str, model: keras.Model, inputs: np.ndarray, epochs: int) -> None:
        """One phase's fit(), resumable: its backup in backup/PHASE/, its rows in history.csv, and when it is
        done its final weights in backup/PHASE_final.*, which a resumed run loads instead of fitting again."""
        import keras

        config, plan, run, frozen, callbacks = self.config, self.plan, self.folder, self.frozen, self.callbacks
        final = run.file("backup", f"{phase}_final")
        if config.resume and kcnn_callbacks.load_model_state(model, final):
            return
        first_epoch = run.resumed_epoch(phase) if config.resume else 0
        offset = sum(row.get("phase") == "head" for row in run.history_rows()) if phase == "finetune" else 0
        decisions = _phase_callbacks(config, finetune=phase == "finetune")
        rate = "head_learning_rate" if phase == "head" else "finetune_learning_rate"
        # first: a diverged epoch reaches neither the history nor the backup
        guard = kcnn_callbacks.DivergenceGuard(
            f"pass a lower {rate.replace('_', ' ')} (--{rate.replace('_', '-')}, it was {getattr(config, rate):g}) "
            f"and start again with --overwrite", probe=inputs[frozen.val_rows[:4]], model=model,
            phase="1 (the head)" if phase == "head" else "2 (fine-tuning)", epoch_offset=offset,
            verbose=config.verbose)
        backup_dir = run.file("backup", phase)
        # A worker that is not the chief restores the chief's backup and writes nowhere, or, where saving is a
        # collective every worker joins (several JAX processes), into a scratch folder of its own
        # (kcnn.training.distribute).
        scratch = None if plan.is_chief else plan.scratch_dir()
        if plan.is_chief:
            writers = [kcnn_callbacks.HistoryLog(run.file("history.csv"), first_epoch, phase=phase, epoch_offset=offset,
                                       keys=HISTORY_KEYS, run=run),
                       kcnn_callbacks.CrashSafeBackup(backup_dir, callbacks=decisions, run=run),
                       # TensorBoard, as `kcnn train` writes it: one logs/ folder, a run per phase (logs/head/train,
                       # logs/finetune/validation: each phase counts its epochs from 0)
                       keras.callbacks.TensorBoard(run.file("logs", phase)),
                       kcnn_callbacks.RecordedLogs(run, run.file("logs"))]  # after TensorBoard: its files of the epoch
        else:
            write_dir = os.path.join(scratch, "backup", phase) if scratch else False
            writers = [kcnn_callbacks.CrashSafeBackup(backup_dir, write_dir=write_dir, callbacks=decisions)]
        steps = math.ceil(len(frozen.fit_rows) / frozen.batch_size)
        targets = frozen.one_hot[frozen.fit_rows]
        weights = class_weights(np.argmax(targets, axis=-1), targets.shape[-1], config.class_weight)
        if config.ema and phase == "finetune":  # validation (and EarlyStopping's best epoch) on the average
            swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
            # each epoch's backup is saved with the average in the model (the swap comes first at an epoch's end)
            decisions = [keras_private.resumes_with_ema_weights_in_model(swap) if first_epoch else swap] + decisions
        plan.wrap(model).fit(
            _epoch_batches(inputs[frozen.fit_rows], targets, frozen.batch_size, (config.seed, phase == "finetune"),
                           first_epoch, epochs, class_weight=weights, mixup=config.mixup if phase == "head" else 0),
            steps_per_epoch=steps, epochs=epochs, shuffle=False,  # _epoch_batches shuffles
            validation_data=(inputs[frozen.val_rows], frozen.one_hot[frozen.val_rows]),
            validation_batch_size=frozen.batch_size,
            callbacks=plan.callbacks() + [guard] + decisions + writers + list(callbacks),
            verbose=progress_verbosity(config.verbose))  # a line per epoch into a pipe
        plan.unwrap(model)
        if plan.is_chief:
            kcnn_callbacks.save_model_state(model, final, run=run)
        elif scratch:
            kcnn_callbacks.save_model_state(model, os.path.join(scratch, f"{phase}_final"))

    def assemble(self) -> keras.Model:
        """Step 4: the model to keep: raw RGB images in, logits out (the head's layers follow the backbone's)."""
        import keras

        from kcnn.backends import torch_fast

        config, backbone, head = self.config, self.backbone, self.head
        for layer in backbone.model.layers:
            layer.trainable = True
        outputs = backbone.model.output
        for layer in head.layers:
            outputs = layer(outputs)
        return torch_fast.accelerate(keras.Model(backbone.model.input, outputs, name=f"{config.backbone}_finetuned"))

    def _evaluate(self):
        """Step 5: (metrics, predicted classes) on the held-out images (and a second check where the dataset
        has one). Every worker evaluates (under TensorFlow's multi-worker strategy predict() is a collective)."""
        from kcnn.backends import jax_cpu

        config, plan, backbone, head, model = self.config, self.plan, self.backbone, self.head, self.model
        frozen, eval_data = self.frozen, self.eval_data
        if config.distribute:  # JAX's distributed predict() keeps the split into trainable variables and the
            backbone.fast_top.make_predict_function(force=True)  # rest from its first call, before the unfreezing
        view_logits = [_predict(head, _predict(backbone.fast_top, activations, None, config.batch_size,
                                               plan.batch_multiple), None, config.batch_size, plan.batch_multiple)
                       for activations in frozen.eval_activations]  # the images themselves first, then the views
        metrics = report.evaluation_metrics(eval_data.labels, view_logits, eval_data.class_names, config.tta)
        metrics["eval_split"] = config.eval_split_name()
        extra_split = config.splits()[2]
        if extra_split:
            extra = config.load(extra_split)
            extra_logits = _predict(jax_cpu.with_fast_depthwise(model), extra.images, config.image_size,
                                    config.batch_size, plan.batch_multiple)
            metrics[f"{extra_split}_accuracy"] = float(np.mean(np.argmax(extra_logits, axis=-1) == extra.labels))
        return metrics, np.argmax(view_logits[0], axis=-1)



@dataclasses.dataclass
class Backbone:
    """The pretrained backbone split at `cut`: `bottom` stays frozen, `top` is fine-tuned in phase 2;
    `fast_*` compute the same where XLA's depthwise convolution is slow (JAX on a CPU), else are them."""

    model: object
    cut: Optional[str]
    bottom: object
    top: object
    fast_bottom: object
    fast_top: object


@dataclasses.dataclass
class Frozen:
    """What the frozen layers computed, once: activations at the cut (this worker's training rows, then
    the held-out images in each of the evaluation's views, the images themselves first), pooled features of
    the training rows, their one-hot labels and the rows."""

    activations: np.ndarray
    eval_activations: list
    features: np.ndarray
    one_hot: np.ndarray
    fit_rows: np.ndarray
    val_rows: np.ndarray
    batch_size: int  # this worker's part of the global batch
    seconds: float


def _checked_inputs(config):
    """(model info, training data, evaluation data), every argument checked before any work."""
    from kcnn.registry import check_input_size, get_model_info
    from kcnn.weights import get_source

    info = get_model_info(config.backbone)  # unknown names and missing weights fail before any work
    get_source(config.backbone, config.weights)
    check_input_size(info, (config.image_size, config.image_size),
                     hint=f"for its downsampling. Received: image_size={config.image_size}")
    train_split, eval_split, _ = config.splits()
    train_data, eval_data = config.load(train_split), config.load(eval_split)
    if config.limit:
        train_data = dataclasses.replace(train_data, images=train_data.images[: config.limit],
                                         labels=train_data.labels[: config.limit])
    if len(train_data.class_names) < 2:
        raise KcnnError(f"{config.dataset_name} has {len(train_data.class_names)} class; fine-tuning needs at "
                        f"least two.")
    if config.verbose and config.class_weight is None:
        report.warn_if_imbalanced(train_data.labels, train_data.class_names)
    return info, train_data, eval_data


def _backbone(config):
    from kcnn.backends import jax_cpu
    from kcnn.backends import torch_fast
    from kcnn.registry import build

    size = config.image_size
    model = build(config.backbone, weights=config.weights, include_top=False, pooling="avg",
                  input_shape=(size, size, 3))
    for layer in model.layers:
        layer.trainable = False  # phase 1; BatchNormalization with trainable=False runs in inference mode
    cut = cut_layer(model, config.unfreeze)
    bottom, top = (torch_fast.accelerate(part) for part in split(model, cut))  # predict(): torch
    return Backbone(model, cut, bottom, top, jax_cpu.with_fast_depthwise(bottom), jax_cpu.with_fast_depthwise(top))


def eval_view_list(tta_mode: str | None) -> list:
    """The views of the held-out images the evaluation needs: kcnn.data.tta's, or the images alone."""
    return tta.VIEWS[tta_mode] if tta_mode else (PLAIN_VIEW,)


PLAIN_VIEW = (1.0, 0, False)  # (weight, shift, mirrored), as kcnn.data.tta.VIEWS


class ImageProgress:
    """One Keras progress bar (keras.utils.Progbar) over several predict() calls, counted in images."""

    def __init__(self, total):
        import keras

        self.bar = keras.utils.Progbar(total, unit_name="image", verbose=progress_verbosity(1))
        self.done = 0

    def callback(self, count: int, batch_size: int) -> keras.callbacks.Callback:
        import keras

        progress = self

        class Advance(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seen = 0

            def on_predict_batch_end(self, batch, logs=None):
                step = min(batch_size, count - self.seen)
                self.seen += step
                progress.done += step
                progress.bar.update(progress.done)

        return Advance()


def _finetune_optimizer(config, top):
    """Adam at the fine-tuning rate; with layer_decay < 1, layer-wise learning-rate decay (Clark et al. 2020's
    ELECTRA, BEiT): the layers after the top's last block end (kcnn.models.surgery.cut_points) and the head at the
    rate, each
    block below at layer_decay times the one above it; one Adam per depth (Keras' MultiOptimizer)."""
    import keras

    from kcnn.training.optim import grouped

    def adam(rate):
        return keras.optimizers.Adam(rate, use_ema=config.ema, ema_momentum=0.99)

    if config.layer_decay == 1:
        return adam(config.finetune_learning_rate)
    ends = cut_points(top)
    depth_of, depth = {}, len(ends)
    for layer in top.layers:  # in order, input to output: the depth falls at each block end
        for variable in layer.weights:
            depth_of[variable.path] = depth
        if layer.name in ends:
            depth -= 1
    paths = {d: [path for path, at in depth_of.items() if at == d] for d in range(1, len(ends) + 1)}
    rate = config.finetune_learning_rate
    return grouped(adam(rate), {adam(rate * config.layer_decay ** d): paths[d] for d in paths})  # the head: depth 0


def _loss(config):
    import keras

    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)


def _epoch_batches(inputs, targets, batch_size, seed, first_epoch, epochs, *, class_weight=None, mixup=0.0):
    """The training batches of epochs first_epoch, ..., epochs - 1, each epoch in an order drawn from
    (seed, epoch) alone: a resumed run sees the batches the uninterrupted one saw (Keras' own shuffle
    draws from the process's random state). A run resumed after its last epoch runs no epoch, but Keras
    wants a first batch to look at: it gets the last epoch's.

    class_weight ({class: weight}): each row's weight as fit(class_weight=...) gives it (Keras takes no
    class_weight with a Python generator). mixup: each batch becomes a blend lam * x + (1 - lam) * x' of
    itself and itself in another order, targets alike, lam ~ Beta(mixup, mixup) (Zhang et al. 2018)."""
    row_weights = None
    if class_weight is not None:
        row_weights = np.asarray([class_weight[c] for c in range(targets.shape[-1])], "float32")[
            np.argmax(targets, axis=-1)]
    for epoch in range(first_epoch, epochs) or [epochs - 1]:
        rng = np.random.default_rng([*seed, epoch])
        order = rng.permutation(len(inputs))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            x, y = inputs[rows], targets[rows]
            w = None if row_weights is None else row_weights[rows]
            if mixup:
                lam = np.float32(rng.beta(mixup, mixup))
                other = rng.permutation(len(rows))
                x, y = lam * x + (1 - lam) * x[other], lam * y + (1 - lam) * y[other]
                w = None if w is None else lam * w + (1 - lam) * w[other]
            yield (x, y) if w is None else (x, y, w)


def _validation_split(originals, fraction, seed, *, copies=1):
    """(fit, validation) indices of the training images and of their copies (mirrors, shifted views),
    which follow them in blocks of `originals`: an image and its copies land on the same side."""
    held = np.random.default_rng(seed).permutation(originals)[: max(1, int(round(fraction * originals)))]
    validation = np.zeros(originals * copies, bool)
    for copy in range(copies):
        validation[held + copy * originals] = True
    return np.flatnonzero(~validation), np.flatnonzero(validation)


def _resized(images, size, batch_size, view=None):
    """float32 0-255 RGB images at size x size, through tf.data (resizing and grey-to-RGB), in one of
    kcnn.data.tta's views (view: (weight, shift, mirrored)) when given."""
    import tensorflow as tf

    def prepare(batch):
        batch = tf.cast(batch, tf.float32)
        if batch.shape[-1] == 1:
            batch = tf.repeat(batch, 3, axis=-1)
        batch = tf.image.resize(batch, (size, size))
        return tta.apply_view(batch, view, tf.experimental.numpy) if view else batch

    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(prepare).prefetch(tf.data.AUTOTUNE)


def _predict(model, inputs, size, batch_size, multiple=1, *, view=None, progress=None):
    """model.predict on images (resized to `size`, in a test-time augmentation `view`) or on activations
    (size None); `multiple`: the inputs are padded to a multiple of it (copies of the last one) and the
    outputs cut back (kcnn.training.distribute); `progress`: an ImageProgress to advance."""
    count = len(inputs)
    if count % multiple:
        inputs = np.concatenate([inputs, np.repeat(inputs[-1:], multiple - count % multiple, axis=0)])
    data = _resized(inputs, size, batch_size, view) if size else inputs
    callbacks = [progress.callback(count, batch_size)] if progress else []
    return np.asarray(model.predict(data, batch_size=batch_size, verbose=0, callbacks=callbacks),
                      dtype="float32")[:count]


def _phase_callbacks(config, finetune=False):
    import keras

    # A head on fixed features overfits within a few epochs: stop when validation accuracy stops improving.
    # Phase 2 watches the validation loss: the accuracy of 10% of the training images moves in steps of
    # a few images, and stopping on it kept the weights of the first epochs (87.7% against 89.5% held out).
    monitor = dict(monitor="val_loss", mode="min") if finetune else dict(monitor="val_accuracy", mode="max")
    callbacks = [keras.callbacks.EarlyStopping(**monitor, patience=4 if finetune else 3, restore_best_weights=True,
                                               verbose=config.verbose)]
    if finetune:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(**monitor, factor=0.2, patience=2, verbose=config.verbose))
    return callbacks
