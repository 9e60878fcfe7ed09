"""A fast CIFAR-10 network in the style of Keller Jordan's airbench94
(https://github.com/KellerJordan/cifar10-airbench), in built-in Keras layers.

A frozen 2x2 "whitening" convolution (set from the training images by
`init_whitening`: the eigenvectors of their 2x2 patches, each filter also
negated), then three blocks of conv - max-pool - BN - GELU - conv - BN - GELU
(64, 256, 256 filters), a 3x3 max-pool over what is left, and a bias-free
Dense layer whose logits are scaled by 1/9. It is the speed recipe behind
`bench/cifar10.py`; `widths` makes narrower variants for slow machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras
from kcnn.layers import channel_axis, image_input
from kcnn.recipes import Recipe
from kcnn.registry import TORCH_COUNT, TrainingHooks, register_model

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import numpy as np
    from keras import Model

WHITEN_NAME = "whiten"
# The first layer is set from the data, not learned: training whitens 2x2 patches of (up to 5,000) images.
TRAINING = TrainingHooks(init_from_data=lambda model, images: init_whitening(model, images[:5000]))

# airbench94's recipe (Jordan 2024, KellerJordan/cifar10-airbench legacy/airbench94.py), its numbers translated to
# Keras' SGD on the mean loss: rate 11.5 per 1024 images / (1 + 1/(1 - 0.85)) x 1024 = 1.5; its weight decay
# (0.0153 x 1024 / 7,850 per step, through momentum: x 1/(1 - 0.85)) is Keras' decoupled 0.0133 per step at the
# peak rate: 0.0089 x 1.5. Batch-norm biases learn 64x faster (same decay per step), lookahead every 5 steps,
# Dirac initialisation, the whitening bias trains for 3 epochs, label smoothing 0.2, 2-pixel translations with
# alternating flips, 6-view test-time augmentation, bfloat16 where the CPU has it
# (kcnn.backends.precision.precision_decision). bench/cifar10.py measures it.
AIRBENCH94 = Recipe("airbench94", epochs=12, batch_size=1024, optimizer="sgd", learning_rate=1.5, schedule="triangle",
                    weight_decay=0.0089, label_smoothing=0.2, augment="airbench", momentum=0.85, norm_bias_lr=64.0,
                    lookahead=True, dirac_init=True, whiten_bias_epochs=3, mixed_precision=True, tta="flip_crop",
                    note="93.86% on CIFAR-10 batch 5 held out in 8.0 min on 2 AVX-512 cores (bench/cifar10.py)")
RECIPES = {"cifar10": AIRBENCH94}


def _block(x, filters, *, name):
    # airbench's BatchNorm(momentum=0.6) passes torch 1 - 0.6: the moving statistics keep 0.6 of themselves
    bn = dict(axis=channel_axis(), momentum=0.6, epsilon=1e-12, scale=False)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = layers.BatchNormalization(name=f"{name}_bn1", **bn)(x)
    x = layers.Activation("gelu", name=f"{name}_act1")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(name=f"{name}_bn2", **bn)(x)
    return layers.Activation("gelu", name=f"{name}_act2")(x)


@register_model(
    input_shape=(32, 32, 3), num_classes=10, params=1_971_328, counted=TORCH_COUNT,
    min_size=16, source="airbench94 (Jordan 2024) with batch-norm scale fixed at 1 (scale=False)",
    training=TRAINING, recipes=RECIPES,
)
def airbench(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
             classifier_activation: str | Callable | None, name: str,
             widths: Sequence[int] = (64, 256, 256)) -> Model:
    """airbench94-style CIFAR-10 speed network (1.97M parameters at default widths)."""
    inputs = image_input(input_shape)
    channels = input_shape[channel_axis()]
    # Frozen: init_whitening sets it from the data (2 * channels * 4 filters).
    x = layers.Conv2D(2 * channels * 4, 2, padding="valid", name=WHITEN_NAME, trainable=False)(inputs)
    x = layers.Activation("gelu", name="whiten_act")(x)
    for i, width in enumerate(widths, start=1):
        x = _block(x, width, name=f"block{i}")
    if include_top:
        x = layers.GlobalMaxPooling2D(name="pool")(x)
        x = layers.Dense(num_classes, use_bias=False, name="head")(x)
        x = layers.Rescaling(1 / 9, name="head_scale")(x)  # airbench's logit temperature
        if classifier_activation is not None:
            x = layers.Activation(classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="pool")(x)
    return keras.Model(inputs, x, name=name)


def init_whitening(model: Model, images: np.ndarray, epsilon: float = 5e-4) -> None:
    """Set the frozen `whiten` layer of `model` (or of a model nested in it)
    from uint8/float images (N, H, W, C) in the 0-255 range the model sees
    after its own normalisation; `images` should already be normalised the
    same way. No library computes patch-whitening filters, hence NumPy."""
    import numpy as np

    layer = _find_layer(model, WHITEN_NAME)
    kernel, bias = layer.get_weights()
    size, _, channels, _ = kernel.shape
    x = np.asarray(images, dtype="float64")
    patches = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))  # N, H', W', C, kh, kw
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * channels)  # (kh, kw, C) order
    covariance = np.cov(patches, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + epsilon)  # strongest first
    filters = np.concatenate([filters, -filters], axis=1).reshape(size, size, channels, -1)
    layer.set_weights([filters.astype(kernel.dtype), np.zeros_like(bias)])


def _find_layer(model, name):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            try:
                return _find_layer(layer, name)
            except ValueError:
                pass
    raise ValueError(f"{model.name} has no layer named {name!r}.")


@register_model(
    input_shape=(32, 32, 3), num_classes=10, params=294_336, counted=TORCH_COUNT,
    min_size=16, source="airbench with widths 32, 64, 128 (kcnn's smaller variant)", training=TRAINING,
    recipes=RECIPES,
)
def airbench_small(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
                   classifier_activation: str | Callable | None, name: str) -> Model:
    """airbench at widths 32, 64, 128: a quarter of the work, for MNIST and slow machines."""
    return airbench.__wrapped__(num_classes=num_classes, input_shape=input_shape, include_top=include_top,
                                pooling=pooling, classifier_activation=classifier_activation, name=name,
                                widths=(32, 64, 128))
