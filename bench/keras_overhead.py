"""Keras' own per-layer cost on the torch backend: a forward pass where the arithmetic is negligible.

    python bench/keras_overhead.py

ResNet-50 (177 Keras layers) on one 32x32 image: what remains is the Python work around each op
(Keras' Layer.__call__: argument binding, call context, autocast and name scopes, tree maps), which
native PyTorch's nn.Module call does not have. kcnn's torch kernels do not change it: it is the part
of the gap to native PyTorch that is left in small models and small batches. Also times predict()
and evaluate-style calls per batch, to show what Keras' loops add on top. Prints a Markdown table.
"""

import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kcnn  # noqa: E402
import torch_models  # noqa: E402


def per_call(function, repeats=20, rounds=5):
    function()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            function()
        times.append((time.perf_counter() - started) / repeats)
    return statistics.median(times)


def main():
    model = kcnn.build("resnet50", num_classes=1000, input_shape=(32, 32, 3))
    native = torch_models.BottleneckResNet((3, 4, 6, 3), 1000).eval()
    image = torch.zeros(1, 32, 32, 3)
    array = np.zeros((1, 32, 32, 3), "float32")

    def keras_call():
        with torch.no_grad():
            model(image, training=False)

    def keras_predict():
        model.predict(array, verbose=0)

    def keras_predict_on_batch():
        model.predict_on_batch(array)

    def native_call():
        with torch.no_grad():
            native(image.permute(0, 3, 1, 2))

    layers = len(model.layers)
    print("Command: `python bench/keras_overhead.py` (torch backend, ResNet-50, one 32x32 image, no gradients)\n")
    print(f"| call | ms per call | ms per layer ({layers} Keras layers) |\n|---|---:|---:|")
    for label, function in (("native torch module", native_call), ("kcnn model(x)", keras_call),
                            ("kcnn predict_on_batch(x)", keras_predict_on_batch), ("kcnn predict(x)", keras_predict)):
        ms = 1000 * per_call(function)
        print(f"| {label} | {ms:.1f} | {ms / layers:.2f} |", flush=True)


if __name__ == "__main__":
    main()
