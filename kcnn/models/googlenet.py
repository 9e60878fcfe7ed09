"""GoogLeNet / Inception v1 (Szegedy et al., 2014) with batch norm, in
torchvision's layout.

Layer names are torchvision's module paths with dots as underscores
(`inception3a.branch2.1.conv` -> `inception3a_branch2_1_conv`), so a
torchvision checkpoint maps onto them by name. As in torchvision, the
"5x5" branch uses a 3x3 kernel (kept there for weight compatibility) and
max pooling uses `ceil_mode`. With `aux_logits=True` the model returns
`[logits, aux1, aux2]`; the notes train on the weighted sum of the three
losses (0.3 for each auxiliary head) and predict with the first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from kcnn.backends.lazy import keras, layers  # imported when a builder runs: `kcnn list` loads no Keras

from kcnn.errors import InvalidArgumentError
from kcnn.layers import channel_axis, classifier_head, conv_bn_act, image_input, max_pool_ceil
from kcnn.registry import TORCH_COUNT, TrainingHooks, register_model
from kcnn.weights import CheckpointLayout, torchvision_name, torchvision_source

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from keras import KerasTensor, Model

# name: (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection)
INCEPTIONS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


def basic_conv(x: KerasTensor, filters: int, kernel_size: int, *, name: str, strides: int = 1,
               padding: str = "same") -> KerasTensor:
    # torchvision's BasicConv2d: conv without bias, BN (eps 0.001), ReLU.
    return conv_bn_act(x, filters, kernel_size, strides=strides, padding=padding, name=name)


def inception_block(x: KerasTensor, widths: Sequence[int], *, name: str) -> KerasTensor:
    c1, c3r, c3, c5r, c5, pool_proj = widths
    b1 = basic_conv(x, c1, 1, name=f"{name}_branch1")
    b2 = basic_conv(x, c3r, 1, name=f"{name}_branch2_0")
    b2 = basic_conv(b2, c3, 3, name=f"{name}_branch2_1")
    b3 = basic_conv(x, c5r, 1, name=f"{name}_branch3_0")
    b3 = basic_conv(b3, c5, 3, name=f"{name}_branch3_1")
    b4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_branch4_0")(x)
    b4 = basic_conv(b4, pool_proj, 1, name=f"{name}_branch4_1")
    return layers.Concatenate(axis=channel_axis(), name=f"{name}_concat")([b1, b2, b3, b4])


AUX_MIN_SIZE = 79  # the smallest input whose inception4a features are 5x5, the auxiliary heads' pool


def aux_head(x: KerasTensor, num_classes: int, classifier_activation: str | Callable | None, *,
             name: str) -> KerasTensor:
    """Auxiliary classifier: avg pool 5/3 (4x4 at 224), 1x1 conv 128, Dense 1024, dropout 0.7."""
    x = layers.AveragePooling2D(5, strides=3, name=f"{name}_pool")(x)
    x = basic_conv(x, 128, 1, name=f"{name}_conv")
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc1")(x)
    x = layers.Dropout(0.7, name=f"{name}_dropout")(x)
    return layers.Dense(num_classes, activation=classifier_activation, name=f"{name}_fc2")(x)


def training_outputs(image_shape: tuple[int, int, int]) -> dict[str, float] | None:
    """GoogLeNet trains with its auxiliary heads, each adding 0.3 of its loss (Szegedy et al. 2015); they
    pool 5x5 features, so below AUX_MIN_SIZE pixels it trains without them."""
    if min(image_shape[:2]) < AUX_MIN_SIZE:
        return None
    return {"logits": 1.0, "aux1": 0.3, "aux2": 0.3}


def _without_unbuilt_heads(state, model):
    """torchvision's GoogLeNet checkpoints carry the training-only auxiliary heads: dropped for a model
    built without them."""
    if any(layer.name.startswith("aux") for layer in model.layers):
        return state
    return {key: value for key, value in state.items() if not key.startswith(("aux1.", "aux2."))}


TORCHVISION_GOOGLENET = CheckpointLayout("torchvision_googlenet", torchvision_name, filter=_without_unbuilt_heads)
# torchvision's pretrained GoogLeNet runs with transform_input=True, which maps ImageNet-normalised inputs
# back to (x/255 - 0.5) / 0.5 (x_norm * std/0.5 + (mean - 0.5)/0.5, whatever the mean and std): the scaling
# its weights expect. Folded into the preprocessing as mean = std = 127.5, so raw 0-255 RGB works.
GOOGLENET_IMAGENET = torchvision_source(
    "googlenet", "googlenet-1378be20.pth", 69.778, 89.530, layout=TORCHVISION_GOOGLENET,
    mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5),
    note="torchvision's transform_input is folded into the preprocessing; the auxiliary heads' weights load "
         "with aux_logits=True.")


@register_model(
    checkpoint=TORCHVISION_GOOGLENET, pretrained=[GOOGLENET_IMAGENET],
    input_shape=(224, 224, 3), params=6_624_904, counted=TORCH_COUNT, min_size=32,
    source="torchvision googlenet (aux_logits=False)", test_input_shape=(64, 64, 3),
    training=TrainingHooks(training_outputs=training_outputs, training_kwargs={"aux_logits": True}),
)
def googlenet(*, num_classes: int, input_shape: tuple[int, int, int], include_top: bool, pooling: str | None,
              classifier_activation: str | Callable | None, name: str,
              aux_logits: bool = False, dropout: float = 0.2) -> Model:
    """GoogLeNet (Inception v1) with batch norm; aux_logits=True adds the two training heads."""
    spatial = input_shape[1:] if channel_axis() == 1 else input_shape[:2]
    if aux_logits and include_top and min(spatial) < AUX_MIN_SIZE:
        raise InvalidArgumentError(
            f"googlenet with aux_logits=True needs inputs of at least {AUX_MIN_SIZE}x{AUX_MIN_SIZE} pixels (its "
            f"auxiliary heads pool 5x5 features); use a larger input_shape or aux_logits=False. "
            f"Received: input_shape={input_shape}")
    inputs = image_input(input_shape)
    # torchvision pads the 7x7/2 stem conv by 3 on each side.
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = basic_conv(x, 64, 7, strides=2, padding="valid", name="conv1")
    x = max_pool_ceil(x, 3, 2, name="maxpool1")
    x = basic_conv(x, 64, 1, name="conv2")
    x = basic_conv(x, 192, 3, name="conv3")
    x = max_pool_ceil(x, 3, 2, name="maxpool2")
    aux_outputs = []
    for block, widths in INCEPTIONS.items():
        x = inception_block(x, widths, name=block)
        if block == "inception3b":
            x = max_pool_ceil(x, 3, 2, name="maxpool3")
        elif block == "inception4e":
            x = max_pool_ceil(x, 2, 2, name="maxpool4")
        if aux_logits and include_top and block in ("inception4a", "inception4d"):
            aux_name = "aux1" if block == "inception4a" else "aux2"
            aux_outputs.append(aux_head(x, num_classes, classifier_activation, name=aux_name))
    x = classifier_head(x, include_top=include_top, num_classes=num_classes, pooling=pooling,
                        classifier_activation=classifier_activation, dropout=dropout, dense_name="fc")
    outputs = [x] + aux_outputs if aux_outputs else x
    return keras.Model(inputs, outputs, name=name)

