"""tf.data input pipelines (they feed `fit()` on every Keras backend).

Images stay uint8 until the batch is formed; conversion to float32, resizing
to the model's input, channel conversion and Keras' augmentation layers run
batched inside the pipeline, in parallel with training, with prefetching.
Scaling to the model's range is not done here: kcnn training models take raw
0-255 pixels and normalise inside (see kcnn.training.train), so exported models do too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kcnn.errors import InvalidArgumentError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import tensorflow as tf
    from kcnn.data.datasets import ImageData

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip", "translate_flip", "airbench", "randaugment", "mixup",
                 "cutmix")

# translate_flip: shifts of up to 1/16 of the side (2 pixels at 32x32) in a reflected border, random flips.
# airbench: airbench94's (Jordan 2024): those shifts, and alternating flips: each image is mirrored or not at
# random once, then every image is mirrored on odd epochs, so that each is seen both ways every two epochs.


def augmentation_layers(name: str, image_size: tuple[int, int], seed: int = 0) -> list:
    """Keras' own augmentation layers for a named recipe (applied in tf.data)."""
    import keras

    height, width = image_size
    if name == "none":
        return []
    if name not in AUGMENTATIONS:
        raise InvalidArgumentError(f"augment must be one of {', '.join(AUGMENTATIONS)}. Received: augment={name!r}")
    flip = [keras.layers.RandomFlip("horizontal", seed=seed)]
    # Random crop of the image padded by 1/8 of its size (4 pixels on 32x32,
    # the CIFAR standard); make_dataset pads. Keras' augmentation layers run
    # inside tf.data on every backend, its other layers (ZeroPadding2D) do not.
    crop = [keras.layers.RandomCrop(height, width, seed=seed)]
    if name == "flip":
        return flip
    if name == "crop":  # digits and text: no mirror images
        return crop
    if name == "crop_flip":
        return crop + flip
    if name == "translate_flip":  # make_dataset translates each image (Keras' RandomCrop: one shift a batch)
        return flip
    if name == "airbench":  # make_dataset translates each image and flips by the epoch
        return []
    if name == "randaugment":
        return crop + flip + [keras.layers.RandAugment(value_range=(0, 255), seed=seed)]
    return crop + flip  # mixup and cutmix mix labels too: see make_dataset


def make_dataset(data: ImageData, *, batch_size: int, training: bool, num_classes: int,
                 image_shape: tuple[int, int, int] | None = None, augment: str = "none", seed: int = 0,
                 one_hot: bool | None = None, epochs: int | None = None, first_epoch: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """A batched, prefetched `tf.data.Dataset` of (float32 0-255 images, labels).

    Args:
        data: a `kcnn.data.ImageData`.
        image_shape: (H, W, C) the model takes; images are resized and their
            channels converted (grey to RGB by repetition, RGB to grey by
            luminance) when they differ.
        augment: one of AUGMENTATIONS (training only).
        one_hot: labels as one-hot vectors (needed by mixup/cutmix and label
            smoothing); default: only when augment mixes images.
        epochs, first_epoch: for training, the dataset runs epochs
            `first_epoch .. epochs - 1` back to back, each shuffled by a
            permutation that depends only on (seed, epoch). A run resumed at
            epoch k therefore sees exactly the batches an uninterrupted run
            sees from epoch k on, augmentation included (tf.data's own
            reshuffling restarts with every new iterator). Use it with
            `fit(steps_per_epoch=...)`. `epochs=None`: an endless stream.
        shard: (index, count) for data-parallel workers that each feed their
            own part (kcnn.training.distribute): training batches hold the images
            `index::count` of each global batch of `batch_size`, so the workers'
            batches together are exactly the single-device batch (augmentation
            draws differ per worker); evaluation takes every count-th image.
    """
    import tensorflow as tf

    if batch_size < 1 or not isinstance(batch_size, int):
        raise InvalidArgumentError(f"batch_size must be a whole number of at least 1. Received: batch_size={batch_size!r}")
    if training and batch_size > len(data):
        raise InvalidArgumentError(
            f"batch_size {batch_size} is larger than the {len(data)} training images of {data.name}; "
            f"use a batch_size of at most {len(data)}."
        )
    shard_index, shard_count = shard
    if batch_size % shard_count:
        raise InvalidArgumentError(f"batch_size {batch_size} does not split over {shard_count} workers; pass a "
                                   f"multiple of {shard_count}.")
    image_shape = tuple(image_shape or data.image_shape)
    mixing = augment in ("mixup", "cutmix")
    one_hot = mixing if one_hot is None else one_hot
    if training:
        augmentation_layers(augment, image_shape[:2])  # checks the name before any work
    images, labels = tf.constant(data.images), tf.constant(data.labels)

    def prepare(images, labels):
        images = tf.cast(images, tf.float32)
        images = _convert_channels(images, image_shape[2])
        if tuple(images.shape[1:3]) != image_shape[:2]:
            images = tf.image.resize(images, image_shape[:2])
        if training and augment in ("crop", "crop_flip", "randaugment", "mixup", "cutmix"):
            pad = max(1, image_shape[0] // 8)  # RandomCrop then cuts the image size back out
            images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        if one_hot:
            labels = tf.one_hot(labels, num_classes)
        return images, labels

    if not training:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shard(shard_count, shard_index)
        dataset = dataset.batch(batch_size // shard_count)
        return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    count = len(data)
    steps = count // batch_size

    def epoch_batches(epoch):
        """(batch number counted from the run's start, image indices) for each batch of `epoch`."""
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=tf.stack([seed, epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order[: steps * batch_size]).batch(batch_size)
        if shard_count > 1:
            batches = batches.map(lambda indices: indices[shard_index::shard_count])
        return batches.enumerate(start=epoch * steps)

    # alternating flips (augment="airbench"): each image's first mirroring depends on (seed, its index) only
    first_mirrored = tf.random.stateless_uniform([count], seed=[seed, -1]) < 0.5  # (epochs use [seed, epoch])

    def gather(batch_number, indices):
        batch = tf.gather(images, indices)
        if augment == "airbench":
            odd_epoch = tf.equal((batch_number // steps) % 2, 1)
            mirrored = tf.math.logical_xor(tf.gather(first_mirrored, indices), odd_epoch)
            batch = tf.where(mirrored[:, None, None, None], tf.reverse(batch, [2]), batch)
        batch, batch_labels = prepare(batch, tf.gather(labels, indices))
        if augment in ("translate_flip", "airbench"):
            batch = _translate_each(batch, max(1, image_shape[0] // 16),
                                    seed=[seed * 64 + 63 + shard_index * 2**20, batch_number])
        return batch_number, batch, batch_labels

    last_epoch = epochs if epochs is not None else 2**40  # None: an endless stream
    if augment == "none":
        dataset = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(epoch_batches)
        dataset = dataset.map(lambda *batch: gather(*batch)[1:], num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    # Keras' augmentation layers draw from a stateful seed generator that
    # lives as long as the dataset: parallel calls would make the draws
    # depend on thread timing, and every new iterator (fit() opens one to
    # build the model, a resumed run opens another) would continue where
    # the last one stopped. So each batch first re-seeds the generators from
    # (seed, batch number), and batches are dealt round-robin to SHARDS
    # streams, each with its own layers run in order by its own prefetch
    # thread: parallel, yet every draw depends only on (seed, batch number).
    # A resumed run simply starts at its epoch.
    streams = []
    for k in range(SHARDS):
        batches = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(
            lambda e, k=k: epoch_batches(e).shard(SHARDS, k))
        augmenter = _augmenter(augment, image_shape[:2], seed=seed, stream=shard_index)
        streams.append(batches.map(gather).map(augmenter).prefetch(1))
    selector = tf.data.Dataset.range(first_epoch * steps, last_epoch * steps).map(lambda i: (i % steps) % SHARDS)
    dataset = tf.data.Dataset.choose_from_datasets(streams, selector)
    return dataset.prefetch(tf.data.AUTOTUNE)


SHARDS = 4  # parallel augmentation streams; fixed, so that results do not depend on the machine


def _translate_each(images, pad, seed):
    """Each image shifted by its own (dy, dx) in [-pad, pad], the border filled by reflection (airbench94's
    translation). Keras' RandomCrop draws one offset for the whole batch, hence this. `seed`: stateless."""
    import tensorflow as tf

    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    offsets = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed=tf.cast(tf.stack(seed), tf.int64),
                                          minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None]  # (N, H) row indices into the padded images
    columns = offsets[:, 1:] + tf.range(width)[None]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, columns, axis=2, batch_dims=1)


def _augmenter(augment, image_size, seed, stream=0):
    """A function of (batch number, images, labels) applying fresh Keras
    augmentation layers (and MixUp or CutMix, which also mix the one-hot
    labels), with draws that depend only on (seed, batch number, stream):
    each data-parallel worker is its own stream."""
    import keras
    import tensorflow as tf

    layers = augmentation_layers(augment, image_size, seed=seed)
    if augment in ("mixup", "cutmix"):
        layers.append((keras.layers.MixUp if augment == "mixup" else keras.layers.CutMix)(seed=seed))
    generators = [_tf_data_seed_generator(layer) for layer in layers]

    def augment_batch(batch_number, images, labels):
        for position, (layer, generator) in enumerate(zip(layers, generators)):
            # Stateless seeds [a, b] and [a, b + 1] give independent draws; a
            # layer makes far fewer than 1,024 draws from its generator per batch.
            state = tf.stack([tf.cast(seed, tf.int64) * 64 + position + stream * 2**20, batch_number * 1024])
            generator.state.assign(tf.cast(state, generator.state.dtype))
            if isinstance(layer, (keras.layers.MixUp, keras.layers.CutMix)):
                mixed = layer({"images": images, "labels": labels}, training=True)
                images, labels = mixed["images"], mixed["labels"]
            else:
                images = layer(images, training=True) if _has_training_arg(layer) else layer(images)
        return images, labels

    return augment_batch


def _tf_data_seed_generator(layer):
    """The `keras.random.SeedGenerator` a Keras preprocessing layer draws from
    inside tf.data. Keras' TFDataLayer pattern: `_get_seed_generator(backend)`
    while the layer's dynamic backend is TensorFlow; it is the layer's own
    generator on the TensorFlow backend and a cached TensorFlow one otherwise."""
    layer.backend.set_backend("tensorflow")
    try:
        from kcnn.backends import keras_private

        return keras_private.tf_data_seed_generator(layer)
    finally:
        layer.backend.reset()


def _has_training_arg(layer):
    import inspect

    return "training" in inspect.signature(layer.call).parameters


def _convert_channels(images, channels):
    import tensorflow as tf

    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1:
        return tf.repeat(images, channels, axis=-1)
    if channels == 1 and have == 3:
        return tf.image.rgb_to_grayscale(images)
    raise InvalidArgumentError(
        f"Images with {have} channels cannot be converted to the model's {channels}; build the model with "
        f"input_shape=(H, W, {have})."
    )

