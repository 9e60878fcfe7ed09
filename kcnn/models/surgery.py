"""Splitting a model at a block boundary into a frozen bottom and a trainable top (fine-tuning), found from
the graph: the merge layers after which no later layer reads an earlier tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kcnn.errors import InvalidArgumentError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras


def cut_points(model: keras.Model) -> list[str]:
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


def cut_layer(model: keras.Model, unfreeze: int | str) -> str | None:
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


def split(model: keras.Model, layer_name: str | None) -> tuple[keras.Model, keras.Model]:
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


def top_has_weights(top: keras.Model) -> bool:
    return any(layer.weights for layer in top.layers)
