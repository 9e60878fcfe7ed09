"""Training throughput of airbench (the CIFAR-10 recipe's network) in float32, mixed bfloat16 and mixed
float16, on the backend in KERAS_BACKEND: why `--mixed-precision` picks bfloat16 on CPUs with native bfloat16
(AVX-512 BF16, AMX) and stays in float32 on others (kcnn.backends.precision.precision_decision, printed under the table).

    KERAS_BACKEND=torch python bench/mixed_precision.py
    KERAS_BACKEND=torch KCNN_TORCH_FAST=0 python bench/mixed_precision.py   # Keras' own torch layers
    python bench/mixed_precision.py --policies float32,mixed_bfloat16

train_on_batch at batch 512 on random 32x32 images, --warmup steps (1), then the mean of --steps steps (4).
"""

import argparse
import os
import time

import keras
import numpy as np

import kcnn
from kcnn.backends.precision import cpu_flags, instruction_sets, precision_decision


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="float32,mixed_bfloat16,mixed_float16")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the clock starts")
    parser.add_argument("--steps", type=int, default=4, help="steps timed")
    args = parser.parse_args()
    images = np.random.default_rng(0).uniform(0, 255, (512, 32, 32, 3)).astype("float32")
    labels = np.arange(512) % 10
    switch = " KCNN_TORCH_FAST=0" if os.environ.get("KCNN_TORCH_FAST") == "0" else ""
    print(f"Command: `KERAS_BACKEND={keras.backend.backend()}{switch} python bench/mixed_precision.py` (airbench, batch 512; "
          f"CPU: {', '.join(instruction_sets(cpu_flags())) or 'instruction sets unknown'})\n")
    print("| policy | training images/s |\n|---|---:|")
    for policy in args.policies.split(","):
        keras.mixed_precision.set_global_policy(policy)
        model = kcnn.build("airbench", num_classes=10)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(args.warmup):
            model.train_on_batch(images, labels)
        started = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(images, labels)
        print(f"| {policy} | {args.steps * 512 / (time.perf_counter() - started):,.0f} |", flush=True)
    keras.mixed_precision.set_global_policy("float32")
    print("\n`--mixed-precision` here: {}, {}".format(*precision_decision()))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
