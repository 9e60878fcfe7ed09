"""A work-around for XLA's slow depthwise convolution on the CPU (JAX backend).

XLA's CPU convolution with `feature_group_count` (Keras' DepthwiseConv2D on
JAX) is far slower than PyTorch's and TensorFlow's kernels (jax-ml/jax#23713;
`python bench/depthwise.py`: 64x4x4x1152 maps, 5x5 kernel, train step 553 ms
on JAX against 25 ms on torch). The same convolution written as a sum of k*k
shifted and scaled copies of the input, which XLA fuses into a few loops, is
about 3x faster on JAX; on small maps (the top of a backbone: 4x4, 8x8) a
matrix product with the kernel spread into a (positions out x positions in)
matrix per channel is faster still (16 ms there).

`with_fast_depthwise(model)` returns a copy of `model` whose depthwise layers
compute that way, for work done inside kcnn (feature extraction, fine-tuning);
`copy_weights` puts trained weights back. Saved models keep Keras' own
DepthwiseConv2D, so they load anywhere without kcnn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import ops

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import jax


class FastDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D (depth multiplier 1, no dilation) computed without
    XLA's grouped convolution: the same weights and, up to float rounding,
    the same outputs."""

    def call(self, inputs: jax.Array) -> jax.Array:  # (JAX only: traced arrays, symbolic calls included)
        channels_first = self.data_format == "channels_first"
        height_axis = 2 if channels_first else 1
        size = tuple(inputs.shape[height_axis:height_axis + 2])
        out_size, before = [], []
        for length, kernel, stride in zip(size, self.kernel_size, self.strides):
            if self.padding == "same":  # TensorFlow's rule: the odd pixel goes at the end
                out = -(-length // stride)
                before.append(max((out - 1) * stride + kernel - length, 0) // 2)
            else:
                out = (length - kernel) // stride + 1
                before.append(0)
            out_size.append(out)
        if size[0] * size[1] <= 4 * self.kernel_size[0] * self.kernel_size[1]:
            outputs = self._as_matrix_product(inputs, size, out_size, before, channels_first)
        else:
            outputs = self._as_shifted_sum(inputs, size, out_size, before, channels_first)
        if self.use_bias:
            bias = self.bias[:, None, None] if channels_first else self.bias
            outputs = outputs + ops.cast(bias, outputs.dtype)
        return self.activation(outputs) if self.activation is not None else outputs

    def _as_matrix_product(self, inputs, size, out_size, before, channels_first):
        """Each channel's convolution as a (positions out, positions in) matrix."""
        import numpy as np

        (height, width), (out_h, out_w) = size, out_size
        (kernel_h, kernel_w), (stride_h, stride_w) = self.kernel_size, self.strides
        taps = kernel_h * kernel_w  # index of a zero: input positions outside the window
        index = np.full((out_h, out_w, height, width), taps, "int32")
        for row in range(out_h):
            for col in range(out_w):
                top, left = row * stride_h - before[0], col * stride_w - before[1]
                for i in range(max(top, 0), min(top + kernel_h, height)):
                    for j in range(max(left, 0), min(left + kernel_w, width)):
                        index[row, col, i, j] = (i - top) * kernel_w + (j - left)
        channels = inputs.shape[1 if channels_first else -1]
        kernel = ops.reshape(ops.cast(self.kernel, inputs.dtype), (taps, channels))
        kernel = ops.concatenate([kernel, ops.zeros((1, channels), inputs.dtype)], axis=0)
        matrix = ops.take(kernel, index.reshape(out_h * out_w, height * width), axis=0)  # (out, in, channels)
        if channels_first:
            x = ops.reshape(inputs, (-1, channels, height * width))
            return ops.reshape(ops.einsum("ncq,pqc->ncp", x, matrix), (-1, channels, out_h, out_w))
        x = ops.reshape(inputs, (-1, height * width, channels))
        return ops.reshape(ops.einsum("nqc,pqc->npc", x, matrix), (-1, out_h, out_w, channels))

    def _as_shifted_sum(self, inputs, size, out_size, before, channels_first):
        """A sum of k*k shifted, scaled copies of the (padded) input."""
        height_axis = 2 if channels_first else 1
        x = inputs
        if self.padding == "same":
            padding = [[0, 0], [0, 0], [0, 0], [0, 0]]
            for axis, (length, out, kernel, stride, first) in enumerate(
                    zip(size, out_size, self.kernel_size, self.strides, before)):
                padding[height_axis + axis] = [first, max((out - 1) * stride + kernel - length, 0) - first]
            x = ops.pad(inputs, padding)
        kernel = self.kernel[:, :, :, 0]  # (kh, kw, channels)
        if channels_first:
            kernel = kernel[:, :, :, None, None]
        (out_h, out_w), (stride_h, stride_w) = out_size, self.strides
        outputs = 0
        for i in range(self.kernel_size[0]):
            for j in range(self.kernel_size[1]):
                rows = slice(i, i + (out_h - 1) * stride_h + 1, stride_h)
                cols = slice(j, j + (out_w - 1) * stride_w + 1, stride_w)
                window = x[:, :, rows, cols] if channels_first else x[:, rows, cols, :]
                outputs = outputs + window * ops.cast(kernel[i, j], window.dtype)
        return outputs


def needed() -> bool:
    """True on the JAX backend running on the CPU."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def with_fast_depthwise(model: keras.Model) -> keras.Model:
    """`model`, or where it pays (JAX on the CPU) a copy of it whose depthwise
    layers are FastDepthwiseConv2D, with the same weights and trainable flags."""
    if not needed() or not any(_replaceable(layer) for layer in model.layers):
        return model

    def clone(layer):
        if _replaceable(layer):
            return FastDepthwiseConv2D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    from kcnn.backends.initializers import initialize_the_rest, initializers_deferred

    with initializers_deferred():  # every weight is copied over right after: no random draws
        copy = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, copy)
    initialize_the_rest(copy)  # the layers' random seeds (dropout)
    return copy


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Set every weighted layer of `target` from the layer of the same name in `source`."""
    if source is target:
        return
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def _replaceable(layer):
    return (type(layer) is keras.layers.DepthwiseConv2D and layer.depth_multiplier == 1
            and tuple(layer.dilation_rate) == (1, 1))
