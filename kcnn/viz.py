"""Plots for runs and notebooks: training curves, confusion matrix, sample
predictions. Each returns the matplotlib Figure; `save_figure` writes it
atomically (a temporary name, then a rename)."""

import os

import numpy as np


def _pyplot():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None and not _in_notebook():
        matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    return plt


def _in_notebook():
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def training_curves(history, title=None, phase_starts=None):
    """Loss and accuracy per epoch, training and validation, side by side.

    `history`: a Keras History, its `.history` dict, or rows of history.csv.
    `phase_starts`: {label: first epoch (1-based)} marked by a dashed line,
    e.g. the fine-tuning phase.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    logs = getattr(history, "history", history)
    epochs = np.arange(1, len(logs["loss"]) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric, label in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        if metric in logs:
            axis.plot(epochs, logs[metric], "o-", label="training")
        if f"val_{metric}" in logs:
            axis.plot(epochs, logs[f"val_{metric}"], "s-", label="validation")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label.lower())
        axis.set_title(label)
        axis.grid(alpha=0.3)
        for phase, epoch in (phase_starts or {}).items():
            axis.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
            axis.annotate(phase, (epoch - 0.5, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                          textcoords="offset points", color="grey", fontsize=9)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def confusion_matrix(true_labels, predicted_labels, class_names, title="Confusion matrix"):
    """Counts of (true, predicted) pairs, with per-class accuracy on the rows."""
    plt = _pyplot()
    count = len(class_names)
    matrix = np.zeros((count, count), dtype=int)
    np.add.at(matrix, (np.asarray(true_labels), np.asarray(predicted_labels)), 1)
    size = max(5, 0.6 * count + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(count), class_names, rotation=45, ha="right")
    recall = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    axis.set_yticks(range(count), [f"{name} ({r:.0%})" for name, r in zip(class_names, recall)])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (per-class accuracy)")
    axis.set_title(title)
    if count <= 20:
        threshold = matrix.max() / 2
        for i in range(count):
            for j in range(count):
                axis.text(j, i, matrix[i, j], ha="center", va="center", fontsize=8,
                          color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    return figure


def sample_predictions(images, true_labels, predicted_labels, class_names, columns=8, rows=4,
                       title="Test images: predicted (true)"):
    """A grid of images titled with the prediction; wrong ones in red with the true class."""
    plt = _pyplot()
    count = min(len(images), columns * rows)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows))
    for index, axis in enumerate(np.ravel(axes)):
        axis.axis("off")
        if index >= count:
            continue
        image = np.asarray(images[index])
        axis.imshow(image[..., 0] if image.shape[-1] == 1 else image.astype(np.uint8),
                    cmap="gray" if image.shape[-1] == 1 else None)
        predicted, true = int(predicted_labels[index]), int(true_labels[index])
        right = predicted == true
        label = class_names[predicted] if right else f"{class_names[predicted]}\n(true: {class_names[true]})"
        axis.set_title(label, fontsize=8, color="black" if right else "red")
    figure.suptitle(title + " — wrong ones in red")
    figure.tight_layout()
    return figure


def save_figure(figure, path, dpi=110):
    from kcnn.utils import atomic_open

    with atomic_open(path, "wb") as f:
        figure.savefig(f, dpi=dpi, format=os.path.splitext(path)[1].lstrip(".") or "png")
    _pyplot().close(figure)
    return path
