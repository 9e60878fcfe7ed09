"""Fine-tuning a pretrained ImageNet backbone on your own classes.

    from kcnn.finetune import FinetuneConfig, finetune
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
writes (config, model.keras taking raw 0-255 RGB images, history, curves,
confusion matrix, sample predictions, metrics).
"""

import contextlib
import dataclasses
import os
import time
from typing import Optional, Union

import numpy as np

from kcnn.errors import InvalidArgumentError, KcnnError
from kcnn.utils import mixed_precision_policy

# dataset -> (split trained on, split evaluated on, extra evaluation split)
SPLITS = {"cifar10_sample": ("train", "test", None), "cifar10": ("holdout_train", "holdout", "test_first1000"),
          "mnist": ("train", "test", None), "digits": ("train", "test", None)}


@dataclasses.dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on."""

    dataset: str = "cifar10_sample"  # a dataset name, or a folder with one sub-folder of images per class
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int = 128  # the 5-minute default on 2 CPU cores; the weights were trained at 224
    head_epochs: int = 15
    finetune_epochs: int = 10
    unfreeze: Union[int, str] = 3  # top blocks to fine-tune in phase 2, "all", or 0 (head only)
    batch_size: int = 64
    head_learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    dropout: float = 0.2
    label_smoothing: float = 0.1
    flip: bool = True  # also train on the mirror images (computed once, like everything frozen)
    validation_split: float = 0.1  # of the training images, for the callbacks (not the evaluation set)
    folder_validation_split: float = 0.2  # image folders: fraction of each class held out for evaluation
    mixed_precision: bool = False
    distribute: bool = False  # data-parallel on the backend's own engine (kcnn.distribute); batch_size is global
    seed: int = 0
    limit: Optional[int] = None  # train on the first N images only (quick checks)
    output_dir: Optional[str] = None  # default: saved_models/finetune_BACKBONE_DATASET
    export: bool = True  # a SavedModel for serving in RUN_DIR/export/1 (kcnn.export)
    overwrite: bool = False
    verbose: int = 1

    @property
    def is_folder(self):
        return self.dataset not in SPLITS

    @property
    def dataset_name(self):
        return os.path.basename(os.path.normpath(self.dataset)) if self.is_folder else self.dataset

    @property
    def arch(self):  # the name the run's plots and tables show
        return self.backbone

    def resolved(self):
        config = dataclasses.replace(self)
        if config.is_folder:
            if not (isinstance(config.dataset, (str, os.PathLike)) and os.path.isdir(config.dataset)):
                raise InvalidArgumentError(
                    f"Unknown dataset {config.dataset!r}; kcnn fine-tunes on {', '.join(sorted(SPLITS))}, or on a "
                    f"folder with one sub-folder of images per class. Received: dataset={config.dataset!r}")
            config.dataset = os.path.abspath(config.dataset)
        if config.output_dir is None:
            config.output_dir = os.path.join("saved_models", f"finetune_{config.backbone}_{config.dataset_name}")
        config.check()
        return config

    def check(self):
        def bad(argument, value, valid):
            raise InvalidArgumentError(f"{argument} must be {valid}. Received: {argument}={value!r}")

        for name in ("image_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, value, "a whole number of at least 1")
        for name in ("head_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad(name, value, "a whole number of at least 0")
        for name in ("head_learning_rate", "finetune_learning_rate"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                bad(name, getattr(self, name), "a number above 0")
        if not (self.unfreeze == "all" or (isinstance(self.unfreeze, int) and self.unfreeze >= 0)):
            bad("unfreeze", self.unfreeze, "a number of top blocks (0: head only) or 'all'")
        for name in ("validation_split", "folder_validation_split"):
            if not 0 < getattr(self, name) < 1:
                bad(name, getattr(self, name), "in (0, 1)")
        if not 0 <= self.dropout < 1:
            bad("dropout", self.dropout, "in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", self.label_smoothing, "in [0, 1)")

    def load(self, split):
        from kcnn import data as kdata

        if self.is_folder:
            return kdata.image_folder(self.dataset, image_size=self.image_size, subset=split,
                                      validation_split=self.folder_validation_split, verbose=bool(self.verbose))
        return kdata.load(self.dataset, split)

    def splits(self):
        return ("training", "validation", None) if self.is_folder else SPLITS[self.dataset]

    def eval_split_name(self):
        return self.splits()[1]


def finetune(config: FinetuneConfig, callbacks=()):
    """Fine-tune `config.backbone` with `config.weights` on `config.dataset`;
    returns a `kcnn.train.Run` (directory, model, history, metrics)."""
    from kcnn import distribute

    config = config.resolved()
    plan = distribute.plan(config.distribute)
    try:
        return _finetune(config, plan, callbacks)
    finally:
        plan.close()


def _finetune(config, plan, callbacks):
    import keras

    import kcnn
    from kcnn import jax_cpu, runs, torch_fast
    from kcnn import train as training
    from kcnn.weights import get_source

    plan.check_batch(config.batch_size)
    if not plan.is_chief:
        config = dataclasses.replace(config, verbose=0)  # the chief reports for every worker
    info = kcnn.get_model_info(config.backbone)  # unknown names and missing weights fail before any work
    get_source(config.backbone, config.weights)
    if config.image_size < info.min_input_size:
        raise InvalidArgumentError(f"{config.backbone} needs images of at least {info.min_input_size}x"
                                   f"{info.min_input_size}. Received: image_size={config.image_size}")
    train_split, eval_split, extra_split = config.splits()
    train_data, eval_data = config.load(train_split), config.load(eval_split)
    if config.limit:
        train_data = dataclasses.replace(train_data, images=train_data.images[: config.limit],
                                         labels=train_data.labels[: config.limit])
    class_names = train_data.class_names
    if len(class_names) < 2:
        raise KcnnError(f"{config.dataset_name} has {len(class_names)} class; fine-tuning needs at least two.")
    size = config.image_size
    policy = keras.mixed_precision.global_policy()
    run_dir = config.output_dir
    lock = plan.on_chief(lambda: training._prepare_run_dir(config))  # the chief alone writes the run
    with lock or contextlib.nullcontext(), runs.write_errors_explained(run_dir), contextlib.ExitStack() as engine:
        engine.enter_context(plan.scope())  # models, training and evaluation on the engine's devices
        started = time.perf_counter()
        try:
            keras.utils.set_random_seed(config.seed)
            if config.mixed_precision:
                keras.mixed_precision.set_global_policy(mixed_precision_policy())
            backbone = kcnn.build(config.backbone, weights=config.weights, include_top=False, pooling="avg",
                                  input_shape=(size, size, 3))
            for layer in backbone.layers:
                layer.trainable = False  # phase 1; BatchNormalization with trainable=False runs in inference mode
            cut = cut_layer(backbone, config.unfreeze)
            bottom, top = (torch_fast.accelerate(part) for part in split(backbone, cut))  # predict(): torch
            # Copies that compute the same faster where XLA's depthwise convolution is slow (JAX on a CPU).
            fast_bottom, fast_top = jax_cpu.with_fast_depthwise(bottom), jax_cpu.with_fast_depthwise(top)

            # ---- everything frozen runs once --------------------------------------
            train_images, train_labels = _with_mirrors(train_data, config.flip)
            if config.verbose:
                print(f"{config.backbone} ({config.weights}) on {config.dataset_name}: {len(train_images):,} training "
                      f"and {len(eval_data):,} held-out images at {size}x{size} go through the frozen layers once "
                      f"(up to {cut or 'the input'}) ...", flush=True)
            fit_index, val_index = _validation_split(len(train_data), config.validation_split, config.seed,
                                                     mirrored=config.flip)
            # Data-parallel: each worker computes and trains on its own part of the images (kcnn.distribute).
            fit_index, val_index = plan.worker_rows(fit_index), plan.worker_rows(val_index)
            batch_size = plan.worker_batch(config.batch_size)
            mine = np.concatenate([fit_index, val_index])
            fit_rows, val_rows = np.arange(len(fit_index)), np.arange(len(fit_index), len(mine))
            activations = _predict(fast_bottom, train_images[mine], size, batch_size, plan.batch_multiple)
            eval_activations = _predict(fast_bottom, eval_data.images, size, config.batch_size, plan.batch_multiple)
            features = _predict(fast_top, activations, None, batch_size, plan.batch_multiple)
            one_hot = keras.utils.to_categorical(train_labels[mine], len(class_names))
            extract_seconds = time.perf_counter() - started

            if config.verbose:
                print(f"... {extract_seconds:.0f} s. Phase 1: a new head on the pooled features.", flush=True)
            # ---- phase 1: the new head on pooled features ---------------------------
            head = keras.Sequential([keras.Input(features.shape[1:]),
                                     keras.layers.Dropout(config.dropout, name="dropout"),
                                     keras.layers.Dense(len(class_names), name="predictions", dtype="float32")],
                                    name="head")
            loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
            head.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate), loss=loss, metrics=["accuracy"])
            phase1 = plan.wrap(head).fit(
                features[fit_rows], one_hot[fit_rows], validation_data=(features[val_rows], one_hot[val_rows]),
                epochs=config.head_epochs, batch_size=batch_size,
                callbacks=plan.callbacks() + _phase_callbacks(config) + list(callbacks),
                verbose=config.verbose) if config.head_epochs else None
            plan.unwrap(head)

            # ---- phase 2: the top of the backbone at a lower learning rate ----------
            phase2 = None
            if config.finetune_epochs and top_has_weights(top):
                for layer in fast_top.layers:
                    # Batch normalisation stays frozen (inference mode): its statistics come from ImageNet, and a
                    # few thousand images would only make them worse (Keras' transfer-learning guide).
                    layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
                if config.verbose:
                    layers = f"the layers after {cut}" if cut else "every layer"
                    print(f"Phase 2: {layers} and the head, learning rate {config.finetune_learning_rate:g}.",
                          flush=True)
                trainable = keras.Model(fast_top.input, head(fast_top.output), name="finetune")
                trainable.compile(optimizer=keras.optimizers.Adam(config.finetune_learning_rate), loss=loss,
                                  metrics=["accuracy"])
                phase2 = plan.wrap(trainable).fit(
                    activations[fit_rows], one_hot[fit_rows], epochs=config.finetune_epochs,
                    validation_data=(activations[val_rows], one_hot[val_rows]), batch_size=batch_size,
                    callbacks=plan.callbacks() + _phase_callbacks(config, finetune=True) + list(callbacks),
                    verbose=config.verbose)
                plan.unwrap(trainable)
                jax_cpu.copy_weights(fast_top, top)
            train_seconds = time.perf_counter() - started
        finally:
            keras.mixed_precision.set_global_policy(policy)

        # ---- the model to keep: raw RGB images in, logits out --------------------
        for layer in backbone.layers:
            layer.trainable = True
        outputs = backbone.output
        for layer in head.layers:  # flat: the head's layers follow the backbone's
            outputs = layer(outputs)
        model = torch_fast.accelerate(keras.Model(backbone.input, outputs, name=f"{config.backbone}_finetuned"))
        # Every worker evaluates (under TensorFlow's multi-worker strategy predict() is a collective).
        if config.distribute:  # JAX's distributed predict() keeps the split into trainable variables and the
            fast_top.make_predict_function(force=True)  # rest from its first call, before the unfreezing
        eval_features = _predict(fast_top, eval_activations, None, config.batch_size, plan.batch_multiple)
        logits = _predict(head, eval_features, None, config.batch_size, plan.batch_multiple)
        predicted = np.argmax(logits, axis=-1)
        metrics = {
            "accuracy": float(np.mean(predicted == eval_data.labels)),
            "eval_split": eval_split,
            "per_class_accuracy": {name: float(np.mean(predicted[eval_data.labels == i] == i))
                                   for i, name in enumerate(class_names) if np.any(eval_data.labels == i)},
        }
        if extra_split:
            extra = config.load(extra_split)
            extra_logits = _predict(jax_cpu.with_fast_depthwise(model), extra.images, size, config.batch_size,
                                    plan.batch_multiple)
            metrics[f"{extra_split}_accuracy"] = float(np.mean(np.argmax(extra_logits, axis=-1) == extra.labels))
        history = _joined_history(phase1, phase2)
        metrics.update(
            train_seconds=round(train_seconds, 2), feature_seconds=round(extract_seconds, 2),
            train_images=int(len(train_data)), image_size=size, unfrozen_from=cut or "all",
            epochs_run=len(history.get("loss", [])), parameters=int(model.count_params()),
            backend=keras.backend.backend(), class_names=list(class_names),
            skipped_files=int(getattr(train_data, "skipped", 0)))
        if config.distribute:
            metrics["distribute"] = plan.describe()
        engine.close()
        model = plan.single_device(model)
        head_epochs = len(phase1.epoch) if phase1 else 0

        def save():  # the chief's work
            training._save_model(model, os.path.join(run_dir, "model.keras"))
            training._write_json(os.path.join(run_dir, "metrics.json"), metrics)
            _write_history(os.path.join(run_dir, "history.csv"), history, head_epochs)
            eval_for_plots = dataclasses.replace(eval_data, class_names=class_names)
            phases = {"fine-tuning": head_epochs + 1} if phase2 is not None and head_epochs else None
            training._plots(run_dir, history, eval_for_plots, predicted, config, phase_starts=phases)
            if config.export:
                from kcnn.export import export

                metrics["export"] = export(run_dir, "saved_model", verbose=False)
                training._write_json(os.path.join(run_dir, "metrics.json"), metrics)
            if config.verbose:
                print(summary_table(config, metrics))
            return training.Run(run_dir, model, history, metrics)

        # The other workers return without metrics once the chief has written the run.
        return plan.on_chief(save) or training.Run(run_dir, model, history, None)


def summary_table(config, metrics):
    lines = [
        f"{'run':26s} {config.output_dir}",
        f"{'backbone / dataset':26s} {config.backbone} ({config.weights}) / {config.dataset_name} "
        f"({metrics['backend']})",
        f"{metrics['eval_split'] + ' accuracy':26s} {metrics['accuracy']:.4f}",
    ]
    for key, value in metrics.items():
        if key.endswith("_accuracy") and key != "per_class_accuracy" and isinstance(value, float):
            lines.append(f"{key:26s} {value:.4f}")
    lines += [
        f"{'image size':26s} {metrics['image_size']}x{metrics['image_size']}",
        f"{'fine-tuned from':26s} {metrics['unfrozen_from']}",
        f"{'time':26s} {metrics['train_seconds']:.1f} s ({metrics['feature_seconds']:.1f} s of it through the "
        f"frozen layers, once)",
    ]
    if "export" in metrics:
        lines.append(f"{'export (SavedModel)':26s} {metrics['export']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Splitting a backbone into its frozen bottom and trainable top


def cut_points(model):
    """Names of the merge layers (Add, Concatenate) after which every later
    layer reads only tensors made at or after them: the block boundaries
    where a model can be split in two, from the input to the output."""
    import keras

    produced_before = set()
    points = []
    layers = model.layers
    for position, layer in enumerate(layers):
        produced_before.add(id(layer.output))
        if not isinstance(layer, (keras.layers.Add, keras.layers.Concatenate)):
            continue
        later_inputs = {id(t) for later in layers[position + 1:] for t in keras.tree.flatten(later.input)}
        outputs_before = produced_before - {id(layer.output)}
        if not later_inputs & outputs_before:
            points.append(layer.name)
    return points


def cut_layer(model, unfreeze):
    """The layer after which the backbone is fine-tuned: the `unfreeze`-th
    block boundary from the top; None for "all"; the last layer for 0."""
    if unfreeze == "all":
        return None
    if unfreeze == 0:
        return model.layers[-1].name
    points = cut_points(model)
    if not points:
        raise InvalidArgumentError(f"{model.name} has no block boundaries to split at; use unfreeze='all' or 0.")
    return points[-min(unfreeze, len(points))]


def split(model, layer_name):
    """(bottom, top): `model` up to `layer_name`'s output, and from there to
    the end, reusing its layers. layer_name=None: the bottom passes the
    input through, the top is the whole model."""
    import keras

    if layer_name is None:
        inputs = keras.Input(model.input_shape[1:])
        return keras.Model(inputs, inputs, name="bottom"), model
    cut = model.get_layer(layer_name)
    bottom = keras.Model(model.inputs, cut.output, name="bottom")
    start = keras.Input(cut.output.shape[1:], name="activations")
    tensors = {id(cut.output): start}
    after = False
    for layer in model.layers:
        if after:
            arguments = keras.tree.map_structure(lambda t: tensors[id(t)], layer.input)
            tensors[id(layer.output)] = layer(arguments)
        after = after or layer is cut
    return bottom, keras.Model(start, tensors[id(model.output)], name="top")


def top_has_weights(top):
    return any(layer.weights for layer in top.layers)


# ---------------------------------------------------------------------------


def _with_mirrors(data, flip):
    images, labels = data.images, data.labels
    if flip:
        images = np.concatenate([images, images[:, :, ::-1]])
        labels = np.concatenate([labels, labels])
    return images, labels


def _validation_split(originals, fraction, seed, *, mirrored):
    """(fit, validation) indices of the training images (and of their
    mirror images, which follow them): an image and its mirror land on the same side."""
    held = np.random.default_rng(seed).permutation(originals)[: max(1, int(round(fraction * originals)))]
    validation = np.zeros(originals * (2 if mirrored else 1), bool)
    validation[held] = True
    if mirrored:
        validation[held + originals] = True
    return np.flatnonzero(~validation), np.flatnonzero(validation)


def _resized(images, size, batch_size):
    """float32 0-255 RGB images at size x size, through tf.data (resizing and grey-to-RGB)."""
    import tensorflow as tf

    def prepare(batch):
        batch = tf.cast(batch, tf.float32)
        if batch.shape[-1] == 1:
            batch = tf.repeat(batch, 3, axis=-1)
        return tf.image.resize(batch, (size, size))

    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(prepare).prefetch(tf.data.AUTOTUNE)


def _predict(model, inputs, size, batch_size, multiple=1):
    """model.predict on images (resized to `size`) or on activations (size None); `multiple`: the inputs
    are padded to a multiple of it (copies of the last one) and the outputs cut back (kcnn.distribute)."""
    count = len(inputs)
    if count % multiple:
        inputs = np.concatenate([inputs, np.repeat(inputs[-1:], multiple - count % multiple, axis=0)])
    data = _resized(inputs, size, batch_size) if size else inputs
    return np.asarray(model.predict(data, batch_size=batch_size, verbose=0), dtype="float32")[:count]


def _phase_callbacks(config, finetune=False):
    import keras

    # A head on fixed features overfits within a few epochs: stop when validation accuracy stops improving.
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=4 if finetune else 3,
                                               restore_best_weights=True, verbose=config.verbose)]
    if finetune:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max", factor=0.2,
                                                           patience=2, verbose=config.verbose))
    return callbacks


def _write_history(path, history, head_epochs):
    """history.csv: one row per epoch of both phases."""
    import csv

    from kcnn.utils import atomic_open

    keys = [key for key in ("loss", "accuracy", "val_loss", "val_accuracy") if key in history]
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "phase", *keys])
        for epoch in range(len(history.get("loss", []))):
            writer.writerow([epoch, "head" if epoch < head_epochs else "finetune",
                             *(history[key][epoch] for key in keys)])


def _joined_history(*histories):
    joined = {}
    for history in histories:
        if history is None:
            continue
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            joined.setdefault(key, []).extend(float(v) for v in history.history.get(key, []))
    return joined
