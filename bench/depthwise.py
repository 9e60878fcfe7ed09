"""Why kcnn/backends/jax_cpu.py exists: Keras' DepthwiseConv2D against kcnn's
FastDepthwiseConv2D, one layer, per backend; and a training step of the
fine-tuned top of EfficientNet-Lite0 (the default `unfreeze=3` at 128x128).

    KERAS_BACKEND=jax python bench/depthwise.py      # run once per backend

Times are medians over a few steps after warm-up, batch 64, this CPU.
"""

import time

import keras
import numpy as np

import kcnn
from kcnn.backends import jax_cpu
from kcnn.models.surgery import cut_layer, split


def _step_ms(model, x, y, steps=10):
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # compiles
    started = time.perf_counter()
    model.fit(x, y, batch_size=64, epochs=steps // (len(x) // 64), verbose=0)
    return 1000 * (time.perf_counter() - started) / steps


def layer_table():
    for shape, kernel in (((4, 4, 1152), 5), ((16, 16, 240), 5), ((64, 64, 32), 3)):
        x = np.random.default_rng(0).random((64, *shape), dtype="float32")
        for label, layer in (("keras DepthwiseConv2D", keras.layers.DepthwiseConv2D(kernel, padding="same")),
                             ("kcnn FastDepthwiseConv2D", jax_cpu.FastDepthwiseConv2D(kernel, padding="same"))):
            model = keras.Sequential([keras.Input(shape), layer])
            ms = _step_ms(model, x, x)
            print(f"{keras.backend.backend():10s} {str(shape):15s} {kernel}x{kernel} {label:25s} "
                  f"train step {ms:7.1f} ms", flush=True)


def top_of_efficientnet():
    backbone = kcnn.build("efficientnet_lite0", include_top=False, pooling="avg", input_shape=(128, 128, 3))
    _, top = split(backbone, cut_layer(backbone, 3))
    x = np.random.default_rng(0).random((640, *top.input_shape[1:]), dtype="float32")
    y = np.random.default_rng(1).random((640, 1280), dtype="float32")
    for label, model in (("keras layers", top), ("with_fast_depthwise", jax_cpu.with_fast_depthwise(top))):
        print(f"{keras.backend.backend():10s} EfficientNet-Lite0 top 3 blocks, {label:20s} train step "
              f"{_step_ms(model, x, y):7.1f} ms", flush=True)


if __name__ == "__main__":
    layer_table()
    top_of_efficientnet()
