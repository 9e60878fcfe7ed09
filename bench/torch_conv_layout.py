"""How much of Keras-on-torch's ResNet-50 training step is the copy Keras makes before each convolution.

    python bench/torch_conv_layout.py

Keras' torch backend permutes an NHWC input to NCHW and calls .contiguous() (a copy), then converts it
to torch's channels_last memory format (a second copy). An NHWC tensor viewed as NCHW already is
channels_last memory, so a permute without the copy feeds the same convolution. This script times
train_on_batch of kcnn's ResNet-50 (batch 16) with Keras' function and with the view, interleaved
round by round, and checks the outputs are identical. An experiment for issue 6/8: kcnn does not patch
Keras (the patch would change every Keras model in the process)."""
import os
import statistics
import time

os.environ["KERAS_BACKEND"] = "torch"
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import kcnn  # noqa: E402
from keras.src.backend.torch import nn as tnn_mod  # noqa: E402  (the private function under test)

ORIGINAL = tnn_mod._transpose_spatial_inputs


def view_only(inputs):
    """NHWC viewed as NCHW is already channels_last memory: no copy."""
    if inputs.ndim == 4:
        return torch.permute(inputs, (0, 3, 1, 2))
    return ORIGINAL(inputs)


def main(rounds=3, steps=2):
    model = kcnn.build("resnet50", num_classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.default_rng(0).uniform(0, 1, (16, 224, 224, 3)).astype("float32")
    labels = np.arange(16) % 10
    seconds = {"Keras (permute + copies)": [], "a view (no copy)": []}
    for _ in range(rounds):
        for name, function in zip(seconds, (ORIGINAL, view_only)):
            tnn_mod._transpose_spatial_inputs = function
            model.train_on_batch(images, labels)  # warm-up
            started = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(images, labels)
            seconds[name].append((time.perf_counter() - started) / steps)
    outputs = []
    for function in (ORIGINAL, view_only):
        tnn_mod._transpose_spatial_inputs = function
        outputs.append(keras.ops.convert_to_numpy(model(images[:2], training=False)))
    tnn_mod._transpose_spatial_inputs = ORIGINAL
    print("Command: `python bench/torch_conv_layout.py` (torch, kcnn resnet50, batch 16, train_on_batch)\n")
    print("| input to each convolution | seconds per step, median (rounds) |\n|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)}) |")
    print(f"\nlargest output difference: {float(np.max(np.abs(outputs[0] - outputs[1]))):.3g}")


if __name__ == "__main__":
    main()
