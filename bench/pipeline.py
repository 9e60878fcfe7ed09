"""Is the input pipeline ever the bottleneck? For each training setup:
images/s that kcnn's tf.data pipeline delivers alone (no model), images/s of
the training step alone (fit on one batch held in memory), and images/s of
fit fed by the pipeline. Target: pipeline >= 3x the step, and fit with the
pipeline as fast as fit from memory.

    KERAS_BACKEND=tensorflow python bench/pipeline.py
"""

import time

import keras
import numpy as np

import kcnn.data
from kcnn.data.pipeline import make_dataset
from kcnn.training.train import normalized_model

SETUPS = (  # (arch, dataset, split, augment, batch size)
    ("lenet5", "mnist", "train", "none", 128),
    ("airbench_small", "mnist", "train", "crop", 128),
    ("airbench", "cifar10", "holdout_train", "crop_flip", 512),
    ("cifar_resnet20", "cifar10", "holdout_train", "randaugment", 128),
    ("cifar_resnet20", "cifar10", "holdout_train", "cutmix", 128),
)


def images_per_second(iterate, batch_size, seconds=8.0):
    iterate(2)  # warm-up: tracing, compilation, first prefetch
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        iterate(4)
        count += 4
    return count * batch_size / (time.perf_counter() - started)


def fit_images_per_second(model, dataset, steps, batch_size):
    model.fit(dataset, steps_per_epoch=2, shuffle=False, verbose=0)  # warm-up
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, shuffle=False, verbose=0)
    return steps * batch_size / (time.perf_counter() - started)


def main():
    print(f"backend: {keras.backend.backend()}\n")
    print("| model | data | augmentation | batch | pipeline images/s | step images/s | pipeline / step | "
          "fit from memory | fit with pipeline |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for arch, dataset, split, augment, batch_size in SETUPS:
        data = kcnn.data.load(dataset, split)
        image_shape = (32, 32, 1) if arch == "lenet5" else data.image_shape
        one_hot = augment in ("mixup", "cutmix")
        pipeline = make_dataset(data, batch_size=batch_size, training=True, num_classes=10, image_shape=image_shape,
                                augment=augment, one_hot=one_hot)
        batches = iter(pipeline)
        delivered = images_per_second(lambda n: [next(batches) for _ in range(n)], batch_size)

        model = normalized_model(arch, 10, image_shape, data.images[:5000])
        loss = (keras.losses.CategoricalCrossentropy(from_logits=True) if one_hot
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss)
        x, y = next(iter(pipeline))
        x, y = np.asarray(x), np.asarray(y)
        step = images_per_second(lambda n: [model.train_on_batch(x, y) for _ in range(n)], batch_size)
        steps = max(8, int(10 * step / batch_size))  # about 10 seconds of fit
        fit_memory = fit_images_per_second(model, pipeline.take(1).cache().repeat(), steps, batch_size)
        fit_fed = fit_images_per_second(model, pipeline.repeat(), steps, batch_size)
        print(f"| {arch} | {dataset} | {augment} | {batch_size} | {delivered:,.0f} | {step:,.0f} | "
              f"{delivered / step:.1f}x | {fit_memory:,.0f} | {fit_fed:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
