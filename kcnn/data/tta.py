"""Test-time augmentation: a classifier's answer averaged over mirrored (and shifted) copies of each image.

    from kcnn.data.tta import with_tta
    model = with_tta(run_model, "flip")       # images in, logits out: softmax gives the averaged probabilities

Modes (the views and their weights follow airbench94's test-time augmentation, Jordan 2024):
- "flip": the image and its mirror image, probabilities averaged (2 forward passes).
- "flip_crop": those two with weight 1/2, and both shifted by 1/16 of their side (reflected at the edges)
  down-right and up-left with weight 1/8 each (6 forward passes).

`with_tta` is a Keras model made of `keras.ops`, so it runs on every backend and exports like the model it
wraps (`kcnn export --tta`). Its output is the log of the averaged probabilities: argmax and softmax of it
are the averaged prediction, so whatever reads logits reads it unchanged. The views themselves are written
once against a NumPy-like namespace (`keras.ops`, `numpy`, `tf.experimental.numpy`), so that kcnn's
fine-tuning can push them through its frozen layers once (kcnn.training.finetune) and get the same views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from kcnn.errors import InvalidArgumentError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    import numpy as np

TTA_MODES = ("flip", "flip_crop")
# (weight, shift, mirrored) of each view: shift in units of shift_pixels, +1 moves the content down-right.
VIEWS = {
    "flip": ((0.5, 0, False), (0.5, 0, True)),
    "flip_crop": ((0.25, 0, False), (0.25, 0, True), (0.125, 1, False), (0.125, -1, False),
                  (0.125, 1, True), (0.125, -1, True)),
}


def check_mode(tta: str | None, allow_none: bool = True) -> str | None:
    """`tta` as given, or an InvalidArgumentError naming the modes."""
    if (tta is None and allow_none) or (isinstance(tta, str) and tta in TTA_MODES):
        return tta
    raise InvalidArgumentError(f"Unknown test-time augmentation {tta!r}; choose {' or '.join(TTA_MODES)}"
                               f"{' (or None: none)' if allow_none else ''}. Received: tta={tta!r}")


def passes(tta: str | None) -> int:
    """Forward passes per image (the latency an export with test-time augmentation pays)."""
    return len(VIEWS[tta]) if tta else 1


def shift_pixels(height: int, width: int) -> int:
    """How far flip_crop shifts an image: 1/16 of its side (2 pixels at 32x32; airbench94 shifts by 1 and
    averages logits, kcnn averages probabilities), at least 1."""
    return max(1, round(min(height, width) / 16))


def apply_view(images: Any, view: tuple, xp: Any) -> Any:
    """One view of a batch (N, H, W, C); xp: keras.ops, numpy or tf.experimental.numpy."""
    _, shift, mirrored = view
    if mirrored:
        images = xp.flip(images, axis=2)
    if shift:
        height, width = images.shape[1], images.shape[2]
        step = shift_pixels(height, width)
        images = xp.pad(images, [(0, 0), (step, step), (step, step), (0, 0)], mode="reflect")
        start = 0 if shift > 0 else 2 * step  # the content moves down-right, or up-left
        images = images[:, start:start + height, start:start + width, :]
    return images


def combine(probabilities: Sequence[np.ndarray], tta: str) -> np.ndarray:
    """The weighted mean of the views' probabilities (a list in VIEWS[tta]'s order)."""
    return sum(weight * p for (weight, _, _), p in zip(VIEWS[tta], probabilities))


def with_tta(model: keras.Model, tta: str | None) -> keras.Model:
    """`model` (an image classifier: images in, logits or probabilities out) answering with test-time
    augmentation `tta`; the model itself when tta is None."""
    import keras

    check_mode(tta)
    if tta is None:
        return model
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.inputs[0].shape) != 4:
        raise InvalidArgumentError(f"Test-time augmentation needs an image classifier with one image input "
                                   f"(N, H, W, C) and one output; {model.name} has inputs "
                                   f"{[tuple(t.shape) for t in model.inputs]} and {len(model.outputs)} output(s).")
    if None in model.inputs[0].shape[1:3]:
        raise InvalidArgumentError(f"Test-time augmentation needs a model of fixed input size; {model.name} takes "
                                   f"{tuple(model.inputs[0].shape)[1:]}. Build it with an input_shape.")
    ops = keras.ops
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    probabilities = [to_probabilities(model, model(apply_view(inputs, view, ops))) for view in VIEWS[tta]]
    logits = ops.log(ops.maximum(combine(probabilities, tta), 1e-12))
    return keras.Model(inputs, logits, name=f"{model.name}_tta_{tta}")


def ends_in_softmax(model: keras.Model) -> bool:
    return getattr(getattr(model.layers[-1], "activation", None), "__name__", "") == "softmax"


def to_probabilities(model: keras.Model, outputs: Any) -> Any:
    """The probabilities of `model`'s outputs (logits unless its last layer is a softmax), float32."""
    import keras

    outputs = keras.ops.cast(outputs, "float32")
    return outputs if ends_in_softmax(model) else keras.ops.softmax(outputs, axis=-1)
