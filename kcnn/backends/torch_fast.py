"""Native PyTorch kernels for Keras' convolution, batch-norm and pooling layers (torch backend).

Keras 3 on the torch backend runs a convolution as: permute the NHWC input to
NCHW and copy it (`.contiguous()`), copy it again into torch's channels_last
memory format, pad "same" inputs with a separate F.pad, convolve, then add the
bias as another op; and BatchNormalization as about ten elementwise ops. Those
copies and extra passes make a ResNet-50 training step 1.6x slower than native
PyTorch on the CPU (`python bench/throughput.py --profile --models resnet50`
and `python bench/torch_conv_layout.py`, numbers in BENCHMARKS.md).

An NHWC tensor viewed as NCHW (a permute, no copy) already is channels_last
memory, which is what torch's CPU convolutions and batch norm run fastest on.
`accelerate(model)` gives the model's Conv2D, DepthwiseConv2D,
BatchNormalization, MaxPooling2D and AveragePooling2D layers a `call` that
does exactly that: one `F.conv2d` (bias and symmetric padding inside it), one
`F.batch_norm`, one `F.max_pool2d` / `F.avg_pool2d` (Keras' pooling copies the
maps to contiguous NCHW, and every layer after it then runs on that slower
layout); it stores each kernel's values in torch's layout (Keras' shape kept
as a strided view), and in inference (no gradients) folds each batch norm into
the convolution before it; the model's predict() runs under
torch.inference_mode. Same weights, same formulas (Keras' momentum and biased
batch variance for the moving statistics), outputs equal to float32 rounding.
Only the instances change: their classes, configs and saved files stay Keras'
own, so `model.save()` writes a plain Keras model that loads anywhere. The mixed_bfloat16 policy runs
on them too (bfloat16 convolutions, batch norm computed in float32 as Keras
does; no folding). Layers in a case this does not cover (float16, masks,
renorm, LoRA, quantization, depth multipliers above 1, torch.compile tracing)
keep Keras' code.
"""

from __future__ import annotations

import os
import weakref
from typing import Iterator

import keras

from kcnn.backends import keras_private

# KCNN_TORCH_FAST=0 turns this off (for comparisons: bench/throughput.py --keras-layers).
ENV_SWITCH = "KCNN_TORCH_FAST"
# Parts that bench/torch_fast_parts.py switches off one by one to measure each.
STORE_KERNELS_IN_TORCH_LAYOUT = True
FOLD_BATCH_NORMS = True


def enabled() -> bool:
    """True on the torch backend unless KCNN_TORCH_FAST=0."""
    return keras.backend.backend() == "torch" and os.environ.get(ENV_SWITCH, "1") != "0"


def accelerate(model: keras.Model) -> keras.Model:
    """Give `model`'s convolution and batch-norm layers native torch kernels
    (see the module's docstring); returns `model` itself. A no-op on other
    backends, with KCNN_TORCH_FAST=0, and for layers it does not cover."""
    if not enabled():
        return model
    for layer in layers_of(model):
        fast_call = _FAST_CALLS.get(type(layer))
        if fast_call is not None and "call" not in vars(layer):
            # An instance attribute: the class (and so saving, loading, cloning) stays Keras' own.
            object.__setattr__(layer, "call", fast_call.__get__(layer))
            if STORE_KERNELS_IN_TORCH_LAYOUT and type(layer) in _WEIGHT_PERMUTATION:
                _store_kernel_in_torch_layout(layer)
    if isinstance(model, keras.Model) and "predict_step" not in vars(model):
        object.__setattr__(model, "predict_step", _predict_step.__get__(model))
    return model


def _predict_step(self, data):
    """Keras' predict_step under torch.inference_mode (Keras uses no_grad): no version counters or
    view tracking for the many views above, as native PyTorch inference runs."""
    import torch

    if torch.compiler.is_compiling():  # jit_compile=True: left to torch.compile
        return type(self).predict_step(self, data)
    with torch.inference_mode():
        return type(self).predict_step(self, data)


# How _convolve views each kernel as torch's (out, in/groups, kh, kw) weight.
_WEIGHT_PERMUTATION = {keras.layers.Conv2D: (3, 2, 0, 1),  # (kh, kw, in, out)
                       keras.layers.DepthwiseConv2D: (2, 3, 0, 1)}  # (kh, kw, channels, 1)


def _store_kernel_in_torch_layout(layer):
    """Re-store the kernel's values so that the weight view _convolve takes is already laid out as
    torch's convolution wants it (channels_last, or contiguous NCHW): the variable keeps Keras' shape
    (kh, kw, in, out) as a strided view, and no step copies the kernels any more. Measured on ResNet-50,
    batch 16: forward and backward 3.72 -> 3.07 s (`python bench/torch_fast_parts.py`, BENCHMARKS.md).
    Gradients then come in the same strides (torch's layout contract), so the optimizer's in-place updates
    keep them. To be done before an optimizer holds the torch parameters (kcnn.build does it at once)."""
    import torch

    variable = keras_private.kernel_variable(layer)
    old = keras_private.torch_value(variable)
    if not isinstance(old, torch.nn.Parameter) or old.dtype != torch.float32 or old.device.type == "meta":
        return
    permutation = _WEIGHT_PERMUTATION[type(layer)]
    memory_format = torch.channels_last if layer.data_format == "channels_last" else torch.contiguous_format
    weight = old.detach().permute(permutation).contiguous(memory_format=memory_format)
    inverse = tuple(permutation.index(axis) for axis in range(4))
    keras_private.set_torch_value(layer, variable,
                                  torch.nn.Parameter(weight.permute(inverse), requires_grad=old.requires_grad))


def foldable_pairs(model: keras.layers.Layer) -> Iterator[tuple[keras.layers.Layer, keras.layers.BatchNormalization]]:
    """(convolution, batch norm) pairs of `model` where the batch norm is the convolution's only
    consumer and the convolution's output is not one of the model's outputs: in inference the
    normalisation can go into the convolution's kernel and bias (one pass over the maps less)."""
    for layer in layers_of(model):
        if not (is_accelerated(layer) and isinstance(layer, keras.layers.BatchNormalization)):
            continue
        nodes = keras_private.inbound_nodes(layer)
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1 or "training" in nodes[0].arguments.kwargs:
            continue
        producer = keras_private.producer(nodes[0].input_tensors[0])
        channel_axis = -1 if getattr(producer, "data_format", None) == "channels_last" else 1
        if (is_accelerated(producer) and isinstance(producer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
                and len(keras_private.inbound_nodes(producer)) == 1
                and len(keras_private.outbound_nodes(producer)) == 1
                and producer.activation in (None, keras.activations.linear)
                and layer.axis % 4 == channel_axis % 4 and not any(
                    producer is keras_private.producer(output) for output in getattr(model, "outputs", []))):
            yield producer, layer


def is_accelerated(layer: keras.Operation) -> bool:
    """Whether `accelerate` gave this layer torch kernels."""
    return "call" in vars(layer)


def took_keras_call(layer: keras.layers.Layer) -> bool:
    """Whether an accelerated layer met an input the torch kernels do not cover (and ran Keras' code)."""
    return bool(vars(layer).get("_kcnn_took_keras_call"))


def layers_of(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """`model` and every layer in it, nested models included."""
    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(getattr(layer, "layers", ()) or ())


def _same_padding(size, kernel, stride, dilation):
    """TensorFlow's "same" padding of one axis: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _convolve(layer, inputs, kernel, groups):
    """F.conv2d on an NCHW view of `inputs`, padding and bias inside it where torch allows."""
    import torch
    import torch.nn.functional as F

    channels_last = layer.data_format == "channels_last"
    x = inputs.permute(0, 3, 1, 2) if channels_last else inputs
    weight = kernel.permute(3, 2, 0, 1)  # (kh, kw, in/groups, out) -> (out, in/groups, kh, kw)
    bias = layer.bias.value if layer.use_bias else None
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batch_norm = _batch_norm_to_fold(layer)
    if batch_norm is not None:
        weight, bias = _folded(layer, batch_norm, weight, bias, memory_format)
    elif not torch.is_grad_enabled() and weight.dtype == torch.float32:  # (bfloat16: cast anew on each call)
        weight = _inference_weight(layer, weight, memory_format)
    padding = 0
    if layer.padding == "same":
        pads = [_same_padding(size, k, s, d) for size, k, s, d in
                zip(x.shape[2:], layer.kernel_size, layer.strides, layer.dilation_rate)]
        if all(before == after for before, after in pads):
            padding = tuple(before for before, _ in pads)
        else:
            (top, bottom), (left, right) = pads
            x = F.pad(x, (left, right, top, bottom))
    outputs = F.conv2d(x, weight, bias, layer.strides, padding, layer.dilation_rate, groups)
    outputs = outputs.permute(0, 2, 3, 1) if channels_last else outputs
    if batch_norm is not None:
        outputs._kcnn_normalized_by = batch_norm  # the batch norm passes it on as it is
    return layer.activation(outputs) if layer.activation is not None else outputs


def _batch_norm_to_fold(layer):
    """The batch norm after `layer` when it will normalise with its moving statistics and nothing
    needs gradients (predict, evaluate, inference_mode), else None. Keras' call context holds the
    `training` value the batch norm will get (private; without it nothing is folded)."""
    import torch

    if not FOLD_BATCH_NORMS or torch.is_grad_enabled() or layer.compute_dtype != "float32":
        return None  # (in bfloat16 a folded kernel would round differently from Keras' float32 batch norm)
    try:
        context = keras_private.call_context()
        entry, training = context.entry_layer, context.training
    except (ImportError, AttributeError):
        return None
    # Pairs of the model being run (the call's entry), so that the batch norm runs in this same call:
    # a model cut after the convolution (fine-tuning's bottom half) returns its maps unfolded.
    pairs = vars(entry).get("_kcnn_fold_pairs")
    if pairs is None:
        # Weak references: Keras' saving walks a layer's attributes and would save the layers twice.
        pairs = {id(conv): weakref.ref(batch_norm) for conv, batch_norm in foldable_pairs(entry)}
        object.__setattr__(entry, "_kcnn_fold_pairs", pairs)
    batch_norm = pairs[id(layer)]() if id(layer) in pairs else None
    if batch_norm is None or (training and batch_norm.trainable):
        return None
    return batch_norm


def _folded(layer, batch_norm, weight, bias, memory_format):
    """Kernel and bias of the convolution followed by `batch_norm` in inference:
    w * gamma / sqrt(var + eps), (b - mean) * gamma / sqrt(var + eps) + beta; kept until a variable changes."""
    import torch

    variables = [layer.kernel.value, batch_norm.moving_mean.value, batch_norm.moving_variance.value]
    variables += [v.value for v in (layer.bias if layer.use_bias else None, batch_norm.gamma, batch_norm.beta)
                  if v is not None]
    key = tuple((v.data_ptr(), v._version) for v in variables) + (memory_format,)
    cached = vars(layer).get("_kcnn_folded")
    if cached is None or cached[0] != key:
        scale = torch.rsqrt(batch_norm.moving_variance.value + batch_norm.epsilon)
        if batch_norm.scale:
            scale = scale * batch_norm.gamma.value
        shift = -batch_norm.moving_mean.value if bias is None else bias - batch_norm.moving_mean.value
        shift = shift * scale + (batch_norm.beta.value if batch_norm.center else 0.0)
        folded = (weight * scale.reshape(-1, 1, 1, 1)).contiguous(memory_format=memory_format)
        cached = (key, folded, shift.contiguous())
        object.__setattr__(layer, "_kcnn_folded", cached)
    return cached[1], cached[2]


def _inference_weight(layer, weight, memory_format):
    """The kernel in the memory layout torch's convolution copies it into, kept until the
    variable changes: predict() would otherwise copy every kernel on every batch."""
    variable = layer.kernel.value
    key = (variable.data_ptr(), variable._version, memory_format)
    cached = layer.__dict__.get("_kcnn_inference_weight")
    if cached is None or cached[0] != key:
        cached = (key, weight.contiguous(memory_format=memory_format))
        object.__setattr__(layer, "_kcnn_inference_weight", cached)
    return cached[1]


def _eligible(layer, inputs):
    """float32, and the mixed_bfloat16 policy (bfloat16 maps, float32 variables that Keras casts as the
    layer reads them, batch norm's statistics in float32 as Keras keeps them)."""
    import torch

    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(getattr(inputs, "dtype", None))
    return (not _is_symbolic(inputs) and inputs.ndim == 4 and dtype is not None and layer.compute_dtype == dtype
            and getattr(layer, "quantization_mode", None) is None)


def _keras_call(layer, *args, **kwargs):
    """Keras' own code, for the cases the torch kernels here do not cover; marks the layer
    so tests can find which layers of a model still take it."""
    if not _is_symbolic(args[0]):
        object.__setattr__(layer, "_kcnn_took_keras_call", True)  # (not while tracing: dynamo refuses it)
    return type(layer).call(layer, *args, **kwargs)


def _is_symbolic(inputs):
    """Keras' shape inference (meta tensors), or torch.compile tracing (jit_compile=True), which
    compiles Keras' own code: the shape arithmetic here does not trace with symbolic sizes."""
    import torch

    return (not isinstance(inputs, torch.Tensor) or inputs.device.type == "meta"
            or torch.compiler.is_compiling())


def _conv2d_call(self, inputs):
    if not _eligible(self, inputs) or getattr(self, "lora_enabled", False):
        return _keras_call(self, inputs)
    channels = inputs.shape[-1 if self.data_format == "channels_last" else 1]
    kernel = self.kernel.value
    return _convolve(self, inputs, kernel, groups=channels // kernel.shape[2])


def _depthwise_call(self, inputs):
    if not _eligible(self, inputs) or self.depth_multiplier != 1:
        return _keras_call(self, inputs)
    kernel = self.kernel.value  # (kh, kw, channels, 1): as a grouped convolution, (kh, kw, 1, channels)
    return _convolve(self, inputs, kernel.permute(0, 1, 3, 2), groups=kernel.shape[2])


def _batch_norm_call(self, inputs, training=None, mask=None):
    import torch
    import torch.nn.functional as F

    axis = self.axis % 4 if isinstance(inputs, torch.Tensor) else None
    if (mask is not None or self.renorm or self.synchronized or not _eligible(self, inputs)
            or axis not in (1, 3)):
        return _keras_call(self, inputs, training=training, mask=mask)
    if getattr(inputs, "_kcnn_normalized_by", None) is self:  # folded into the convolution before
        return inputs
    x = inputs.permute(0, 3, 1, 2) if axis == 3 else inputs
    channels = x.shape[1]
    count = x.numel() // channels
    if training and self.trainable and count < 2:  # torch refuses batch statistics of one value
        return _keras_call(self, inputs, training=training, mask=mask)
    gamma = self.gamma.value if self.scale else None  # float32 always (Keras: autocast=False)
    beta = self.beta.value if self.center else None
    # bfloat16 maps: torch's CPU batch norm takes them with float32 parameters and statistics and computes
    # in float32, one rounding to bfloat16 at the end, as Keras' cast to float32 and back does.
    if training and self.trainable:
        # momentum=1: torch stores this batch's mean and unbiased variance in the buffers; Keras'
        # moving statistics use its momentum the other way round and the biased variance.
        batch_mean = torch.zeros(channels, dtype=torch.float32, device=x.device)
        batch_variance = torch.ones(channels, dtype=torch.float32, device=x.device)
        outputs = F.batch_norm(x, batch_mean, batch_variance, gamma, beta, training=True,
                               momentum=1.0, eps=self.epsilon)
        biased_variance = batch_variance * ((count - 1) / count)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean.value * momentum + batch_mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance.value * momentum + biased_variance * (1.0 - momentum))
    else:
        outputs = F.batch_norm(x, self.moving_mean.value, self.moving_variance.value, gamma, beta,
                               training=False, eps=self.epsilon)
    return outputs.permute(0, 2, 3, 1) if axis == 3 else outputs


def _pool_call(self, inputs):
    """Max and average pooling on the NCHW view of NHWC maps (channels_last memory). Keras' torch backend
    copies the maps into contiguous NCHW first (`.contiguous()`), and the layers after the pooling and their
    gradients then run in that layout: without the copy airbench's training step runs 2x faster in bfloat16
    and 1.4x in float32 (bench/mixed_precision.py, BENCHMARKS.md). Same padding as Keras' torch backend:
    inside the op where symmetric, else replicated edges (the same maximum; the average counts them as Keras
    does)."""
    import torch.nn.functional as F

    if not _eligible(self, inputs) or (self.padding == "same" and any(
            k < s for k, s in zip(self.pool_size, self.strides))):  # (Keras would crop there)
        return _keras_call(self, inputs)
    channels_last = self.data_format == "channels_last"
    x = inputs.permute(0, 3, 1, 2) if channels_last else inputs
    padding = 0
    if self.padding == "same":
        pads = [_same_padding(size, k, s, 1) for size, k, s in zip(x.shape[2:], self.pool_size, self.strides)]
        if all(before == after for before, after in pads):
            padding = tuple(before for before, _ in pads)
        else:
            (top, bottom), (left, right) = pads
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
    if isinstance(self, keras.layers.MaxPooling2D):
        outputs = F.max_pool2d(x, self.pool_size, self.strides, padding)
    else:
        outputs = F.avg_pool2d(x, self.pool_size, self.strides, padding, count_include_pad=False)
    return outputs.permute(0, 2, 3, 1) if channels_last else outputs


_FAST_CALLS = {
    keras.layers.Conv2D: _conv2d_call,
    keras.layers.DepthwiseConv2D: _depthwise_call,
    keras.layers.BatchNormalization: _batch_norm_call,
    keras.layers.MaxPooling2D: _pool_call,
    keras.layers.AveragePooling2D: _pool_call,
}
