"""What each part of kcnn.backends.torch_fast gains, on the torch backend: ResNet-50 and MobileNetV2 at batch 16.

    python bench/torch_fast_parts.py [--rounds 4] [--models resnet50,mobilenet_v2]

Four builds of the same model with the same weights, timed in turns round by round (medians):
  1. Keras' layers (KCNN_TORCH_FAST=0): Keras' torch convolution copies its input twice, pads and adds
     the bias in separate ops; BatchNormalization is about ten elementwise ops;
  2. + torch kernels: F.conv2d on permuted views (bias and symmetric padding inside), F.batch_norm;
  3. + kernels stored in torch's layout (no kernel copy per step);
  4. + batch norms folded into the convolutions in inference (all of kcnn.backends.torch_fast).
"Forward + backward" is one training step without the optimizer (a manual torch loop: the loss's
backward()); "inference" is a forward under torch.inference_mode (what kcnn's predict() runs per batch).
"""

import argparse
import os
import statistics
import time

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import kcnn  # noqa: E402
from kcnn.backends import torch_fast  # noqa: E402

VARIANTS = {  # label: (KCNN_TORCH_FAST, store kernels in torch's layout, fold batch norms)
    "Keras' layers": ("0", False, False),
    "+ torch kernels (views, F.conv2d, F.batch_norm)": ("1", False, False),
    "+ kernels stored in torch's layout": ("1", True, False),
    "+ batch norms folded in inference (kcnn's default)": ("1", True, True),
}


def build(name, weights):
    model = kcnn.build(name, num_classes=1000)
    if weights is not None:
        model.set_weights(weights)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    print("Command: `python bench/torch_fast_parts.py` (torch backend, CPU, batch "
          f"{args.batch_size}, median of {args.rounds} rounds; seconds per batch)\n")
    print("| model | variant | forward + backward s | inference s |\n|---|---|---:|---:|")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for name in args.models.split(","):
        models, weights, built = {}, None, {}
        for label, (switch, store, fold) in VARIANTS.items():
            if (switch, store) not in built:  # folding is decided per call: the last two share a model
                os.environ[torch_fast.ENV_SWITCH] = switch
                torch_fast.STORE_KERNELS_IN_TORCH_LAYOUT = store
                keras.utils.set_random_seed(0)
                built[switch, store] = build(name, weights)
                weights = weights or built[switch, store].get_weights()
            models[label] = built[switch, store]
        images = torch.from_numpy(np.random.default_rng(0).standard_normal((args.batch_size, 224, 224, 3))
                                  .astype("float32"))
        labels = torch.arange(args.batch_size) % 1000

        def train_step(model):
            for variable in model.trainable_variables:
                variable.value.grad = None
            loss(labels, model(images, training=True)).backward()

        def infer(model):
            with torch.inference_mode():  # as predict() runs it (kcnn) and native PyTorch users do
                model(images, training=False)

        seconds = {label: {"train": [], "infer": []} for label in models}
        for label, model in models.items():  # warm-up
            torch_fast.FOLD_BATCH_NORMS = VARIANTS[label][2]
            train_step(model)
            infer(model)
        for _ in range(args.rounds):
            for label, model in models.items():
                torch_fast.FOLD_BATCH_NORMS = VARIANTS[label][2]
                for key, step in (("train", train_step), ("infer", infer)):
                    started = time.perf_counter()
                    step(model)
                    seconds[label][key].append(time.perf_counter() - started)
        for label, times in seconds.items():
            print(f"| {name} | {label} | {statistics.median(times['train']):.2f} | "
                  f"{statistics.median(times['infer']):.3f} |", flush=True)


if __name__ == "__main__":
    main()
