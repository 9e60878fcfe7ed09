"""What both workflows say about classes: the per-class report, balanced class weights, and the warning
that a training set is imbalanced. scikit-learn computes the figures (precision_recall_fscore_support,
compute_class_weight), as its users know them."""

from __future__ import annotations

import sys
from typing import IO, Sequence

import numpy as np

from kcnn.errors import InvalidArgumentError

CLASS_WEIGHTS = ("balanced",)
IMBALANCE_RATIO = 3  # warn when one class has more than this many times the images of another


def check_class_weight(class_weight: str | None) -> None:
    if class_weight is None or (isinstance(class_weight, str) and class_weight in CLASS_WEIGHTS):
        return class_weight
    raise InvalidArgumentError(f"Unknown class weighting {class_weight!r}; pass 'balanced' (or leave it out). "
                               f"Received: class_weight={class_weight!r}")


def class_weights(labels: np.ndarray, num_classes: int, class_weight: str | None) -> dict | None:
    """{class index: weight} for Keras' fit(class_weight=...), None when class_weight is None. "balanced":
    n_images / (n_classes * n_images_of_the_class), scikit-learn's definition; a class without training
    images gets weight 1 (it is never seen)."""
    from sklearn.utils.class_weight import compute_class_weight

    if class_weight is None:
        return None
    present = np.unique(labels)
    weights = dict.fromkeys(range(num_classes), 1.0)
    weights.update(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=labels).tolist()))
    return weights


def warn_if_imbalanced(labels: np.ndarray, class_names: Sequence[str], *, stream: IO | None = None) -> None:
    """One line on stderr when the largest class has more than IMBALANCE_RATIO times the images of the
    smallest, naming both and the fix; returns the line (None when balanced enough)."""
    counts = np.bincount(labels, minlength=len(class_names))
    smallest, largest = int(np.argmin(counts)), int(np.argmax(counts))
    if counts[largest] <= IMBALANCE_RATIO * counts[smallest]:
        return None
    line = (f"kcnn: warning: the training images are imbalanced: {class_names[largest]!r} has {counts[largest]:,}, "
            f"{class_names[smallest]!r} {counts[smallest]:,} (more than {IMBALANCE_RATIO}x); pass --class-weight "
            f"balanced (class_weight='balanced') so the small classes count as much, and read the per-class "
            f"recall in metrics.json.")
    print(line, file=stream or sys.stderr, flush=True)
    return line


def per_class_report(true_labels: np.ndarray, predicted_labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """{class name: {precision, recall, f1, support}} on the evaluation images, and the macro averages
    under "macro avg" (a class never predicted has precision 0, as scikit-learn's zero_division=0)."""
    from sklearn.metrics import precision_recall_fscore_support

    indices = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true_labels, predicted_labels, labels=indices, zero_division=0)
    report = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i])} for i, name in enumerate(class_names)}
    seen = support > 0
    report["macro avg"] = {"precision": float(precision[seen].mean()), "recall": float(recall[seen].mean()),
                           "f1": float(f1[seen].mean()), "support": int(support.sum())}
    return report


def format_report(report: dict, width: int = 26) -> str:
    """The per-class table the summary prints."""
    names = [name for name in report if name != "macro avg"]
    name_width = max(width, *(len(name) + 2 for name in names))
    lines = [f"{'class':{name_width}s} {'precision':>9s} {'recall':>7s} {'f1':>6s} {'images':>7s}"]
    for name in [*names, "macro avg"]:
        row = report[name]
        lines.append(f"{name:{name_width}s} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f} "
                     f"{row['support']:7,d}")
    return "\n".join(lines)


def evaluation_metrics(labels: np.ndarray, view_logits: Sequence[np.ndarray], class_names: Sequence[str],
                       tta_mode: str | None = None) -> dict:
    """metrics.json's evaluation figures from the logits of the held-out images (view_logits[0]) and, with
    test-time augmentation, of its other views (kcnn.data.tta.VIEWS[tta_mode] order, the images first):
    accuracy, per-class accuracy and report of the model as saved, and {tta_mode: accuracy} with the
    augmentation (a dict, so that `kcnn evaluate --tta` can add the other mode's)."""
    from scipy.special import softmax

    from kcnn.data import tta

    predicted = np.argmax(view_logits[0], axis=-1)
    correct = predicted == labels
    metrics = {
        "accuracy": float(correct.mean()),
        "per_class_accuracy": {name: float(correct[labels == i].mean()) for i, name in enumerate(class_names)
                               if np.any(labels == i)},
        "per_class": per_class_report(labels, predicted, class_names),
    }
    if tta_mode:
        probabilities = tta.combine([softmax(logits, axis=-1) for logits in view_logits], tta_mode)
        metrics["tta_accuracy"] = {tta_mode: float(np.mean(np.argmax(probabilities, axis=-1) == labels))}
    return metrics



def tta_note(mode: str, accuracy: float, plain: float) -> str:
    """What a test-time augmentation accuracy below the plain one means, as a clause to print after it ("" when
    it is not below)."""
    if accuracy >= plain:
        return ""
    lowered = "flip" if mode == "flip" else "flip and shifted crops"
    flag = "--tta" if mode == "flip" else f"--tta {mode}"
    return (f" (below the plain {plain:.4f}: {lowered} lowered accuracy here, so the model may have learned "
            f"orientation or position; leave out {flag})")
