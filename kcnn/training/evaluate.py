"""Evaluating and predicting with a model or a finished run of either workflow.

    from kcnn.training.evaluate import evaluate_run, predict_files
    evaluate_run(run)                                    # the held-out accuracy again, on this backend
    predict_files(model, ["cat.jpg"], class_names)       # top-5 (class, probability) per image
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from kcnn.data import tta as kcnn_tta  # `tta` is an argument here
from kcnn.errors import DivergedError, InvalidArgumentError
from kcnn.runs.modelfile import non_finite_refusal
from kcnn.runs.rundir import load_run
from kcnn.training import report

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    from kcnn.data.datasets import ImageData
    from kcnn.data.folder import ImageInput
    from kcnn.runs.rundir import Run


def evaluate_model(model: keras.Model, data: ImageData, image_shape: tuple[int, int, int], batch_size: int, *,
                   tta: str | None = None) -> dict:
    """{accuracy, per_class_accuracy, per_class (precision, recall, F1), images, predicted} of `model` on
    `data`, and with test-time augmentation `tta` (kcnn.data.tta) also {tta_accuracy: {tta: accuracy}}: the
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
    _refuse_non_finite(model, view_logits)
    metrics = report.evaluation_metrics(data.labels, view_logits, data.class_names, tta)
    metrics.update(images=int(len(data)), predicted=np.argmax(view_logits[0], axis=-1))
    return metrics


def evaluate_run(run: Run | str | os.PathLike, *, tta: str | None = None) -> dict:
    """Evaluate a finished run's model on its evaluation split again (on this backend): the metrics of
    evaluate_model. `run`: a `kcnn.runs.rundir.load_run` FinishedRun, or its folder. With test-time augmentation
    `tta`, its accuracy is also recorded in the run's metrics.json under tta_accuracy[tta] (written atomically;
    nothing else in the file changes)."""
    run = load_run(run)
    config = run.config
    data = config.load(config.eval_split_name())
    metrics = evaluate_model(run.model, data, tuple(run.model.input_shape[1:]), config.batch_size, tta=tta)
    if tta:
        recorded = run.folder.read_json("metrics.json")  # (as it is now: not as it was when the run loaded)
        recorded.setdefault("tta_accuracy", {}).update(metrics["tta_accuracy"])
        run.folder.write_json("metrics.json", recorded)
        run.metrics = recorded
    metrics["eval_split"] = config.eval_split_name()
    return metrics


def predict_files(model: keras.Model, paths: Sequence[ImageInput], class_names: Sequence[str], *, top: int = 5,
                  transform: Callable | None = None, tta: str | None = None) -> list[list[tuple[str, float]]]:
    """For each image (a file's path, a Pillow image or an array of 0-255 pixels: kcnn.data.folder.read_image), the
    `top` (class name, probability) pairs. `transform`: a pretrained source's
    `eval_transform` (resize the shorter side, centre crop); by default images are resized to the model's
    input as in training. `tta`: probabilities averaged over test-time views (kcnn.data.tta)."""
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
    _refuse_non_finite(model, [logits])
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    order = np.argsort(-probabilities, axis=-1)[:, :top]
    return [[(class_names[i], float(p[i])) for i in best] for p, best in zip(probabilities, order)]


def _refuse_non_finite(model, outputs):
    """A model whose answers are NaN or infinite gives none (they would print as nan% or crash a JSON reader)."""
    if not all(np.all(np.isfinite(np.asarray(output, "float32"))) for output in outputs):
        raise DivergedError(non_finite_refusal(f"The model {model.name!r}"))
