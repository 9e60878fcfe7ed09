"""`kcnn.inspect.summary`: the torchsummary table of the lecture notes, with MACs.

Keras' `model.summary()` has no multiply-accumulate counter, so this module
counts them from each layer's configuration and output shape.

What counts as a MAC (the convention of torchvision's and fvcore's model
tables): one multiply-accumulate of a convolution, a dense layer or
attention (projections and the two attention matrix products). Element-wise
layers (batch norm, activations, pooling, additions) count zero; batch norm
folds into the preceding convolution at inference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras
from keras import layers

from kcnn.backends.initializers import weightless_scope

MB = 1024**2  # torchsummary's "MB"


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    output_shape: str
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals; `str()` gives the table."""

    model_name: str
    rows: tuple
    total_params: int
    trainable_params: int
    non_trainable_params: int
    total_macs: int
    params_bytes: int
    input_bytes: int
    activation_bytes: int  # forward activations of one image

    def __str__(self):
        widths = (44, 26, 15, 17)
        line = "-" * sum(widths)
        header = ("Layer (type)", "Output Shape", "Param #", "MACs")
        out = [line, _row(header, widths), "=" * sum(widths)]
        for row in self.rows:
            cells = (f"{row.name} ({row.type})", row.output_shape, f"{row.params:,}", f"{row.macs:,}")
            out.append(_row(cells, widths))
        out += [
            "=" * sum(widths),
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Total MACs: {self.total_macs:,} ({_human(self.total_macs)})",
            line,
            f"Input size (MB): {self.input_bytes / MB:.2f}",
            f"Forward activations per image (MB): {self.activation_bytes / MB:.2f}",
            f"Params size (MB): {self.params_bytes / MB:.2f}",
            line,
        ]
        return "\n".join(out)

    def __repr__(self):
        return (
            f"ModelSummary({self.model_name}: {self.total_params:,} params, "
            f"{_human(self.total_macs)} MACs, {len(self.rows)} layers)"
        )


def conv_output_size(size: int, kernel_size: int, padding: int = 0, stride: int = 1) -> int:
    """The output size of a convolution or pooling window, the lecture notes' formula
    (W - K + 2P) / S + 1, rounded down (a window that would hang over the edge is dropped).

    Keras' padding="valid" is P = 0; padding="same" with stride 1 is P = (K - 1) / 2 for odd K."""
    return (size - kernel_size + 2 * padding) // stride + 1


def summary(model_or_name: str | keras.Model, input_shape: tuple | None = None, *,
            print_fn: Callable | None = print) -> ModelSummary:
    """Print and return the per-layer table of a model or a registered name.

    Args:
        model_or_name: a built `keras.Model`, or a name for `kcnn.build`.
        input_shape: for a name, the input to build it at (default: its own).
        print_fn: where the table goes; `None` to only return it.

    A name is built in a `weightless_scope()`: on the JAX backend no
    weights are allocated, so even the 1.5-billion-parameter `mlp` is counted
    in a moment.
    """
    if isinstance(model_or_name, keras.Model):
        result = _summarize(model_or_name)
    else:
        from kcnn.registry import build

        kwargs = {} if input_shape is None else {"input_shape": input_shape}
        with weightless_scope():
            result = _summarize(build(model_or_name, **kwargs))
    if print_fn is not None:
        print_fn(str(result))
    return result


def _summarize(model):
    rows = tuple(_rows(model, prefix=""))
    trainable = sum(_size(w.shape) for w in model.trainable_weights)
    total = sum(_size(w.shape) for w in model.weights)
    return ModelSummary(
        model_name=model.name,
        rows=rows,
        total_params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        total_macs=sum(row.macs for row in rows),
        params_bytes=sum(_size(w.shape) * _itemsize(w.dtype) for w in model.weights),
        input_bytes=sum(_size(t.shape[1:]) * _itemsize(t.dtype) for t in model.inputs),
        activation_bytes=_activation_bytes(model),
    )


def _rows(model, prefix):
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested backbone: list its layers
            yield from _rows(layer, prefix=f"{prefix}{layer.name}/")
            continue
        if isinstance(layer, layers.InputLayer):
            continue
        yield LayerRow(
            name=prefix + layer.name,
            type=type(layer).__name__,
            output_shape=_format_shape(layer.output),
            params=layer.count_params(),
            macs=layer_macs(layer),
        )


def layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-accumulates of one call of `layer` on one example."""
    out_shape = _shape_of(layer.output)
    if isinstance(layer, layers.SeparableConv2D):
        depthwise, pointwise = layer.depthwise_kernel.shape, layer.pointwise_kernel.shape
        spatial = _size(out_shape) // out_shape[_channel_index(layer)]
        return spatial * (math.prod(depthwise) + math.prod(pointwise))
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return _size(out_shape) * math.prod(layer.kernel_size)
    if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)):
        in_shape = _shape_of(layer.input)
        return _size(in_shape) * math.prod(layer.kernel_size) * layer.filters // layer.groups
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        # kernel is (*kernel_size, in_channels / groups, filters)
        return _size(out_shape) * math.prod(layer.kernel.shape[:-1])
    if isinstance(layer, layers.Dense):
        return _size(out_shape) // out_shape[-1] * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.EinsumDense):
        return _size(out_shape) // math.prod(layer.kernel.shape[1:]) * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.MultiHeadAttention):
        return _attention_macs(layer)
    return 0


def _attention_macs(layer):
    from kcnn.backends import keras_private

    node = keras_private.inbound_nodes(layer)[0]
    tensors = [t for t in node.arguments.keras_tensors]
    query_len = tensors[0].shape[1]
    value_len = tensors[1].shape[1] if len(tensors) > 1 else query_len
    heads, key_dim, value_dim = layer.num_heads, layer.key_dim, layer.value_dim
    projections = (
        query_len * math.prod(layer.query_dense.kernel.shape)
        + value_len * math.prod(layer.key_dense.kernel.shape)
        + value_len * math.prod(layer.value_dense.kernel.shape)
        + query_len * math.prod(layer.output_dense.kernel.shape)
    )
    attention = heads * query_len * value_len * (key_dim + value_dim)
    return projections + attention


def _activation_bytes(model):
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _activation_bytes(layer)
        elif not isinstance(layer, layers.InputLayer):
            for tensor in keras.tree.flatten(layer.output):
                total += _size(tensor.shape[1:]) * _itemsize(tensor.dtype)
    return total


def _channel_index(layer):
    return 0 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def _shape_of(tensor):
    tensors = keras.tree.flatten(tensor)
    return tuple(tensors[0].shape[1:])


def _format_shape(output):
    shapes = [str((None,) + tuple(t.shape[1:])) for t in keras.tree.flatten(output)]
    return shapes[0] if len(shapes) == 1 else ", ".join(shapes)


def _size(shape):
    return math.prod(int(d) for d in shape if d is not None)


def _itemsize(dtype):
    return _BYTES.get(keras.backend.standardize_dtype(dtype), 4)


_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int32": 4,
          "int64": 8}


def _human(count):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def _row(cells, widths):
    name, *rest = cells
    name = name if len(name) < widths[0] else name[: widths[0] - 2] + "…"
    return name.ljust(widths[0]) + "".join(str(c).rjust(w) for c, w in zip(rest, widths[1:]))
