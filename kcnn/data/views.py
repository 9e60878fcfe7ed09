"""Training views made once, as arrays: mirror images and randomly shifted copies (fine-tuning computes the
frozen layers' answer to each view a single time; kcnn.data.tta holds the test-time views)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from kcnn.data.datasets import ImageData


def training_views(data: ImageData, *, flip: bool, extra_views: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(images, labels, copies): the training images, then their mirror images (`flip`), then `extra_views`
    copies each shifted by up to 1/8 of its side (reflected at the edges) and mirrored at random (drawn from
    `seed`): view v of image i is row v * N + i."""
    images, labels = data.images, data.labels
    views = [images]
    if flip:
        views.append(images[:, :, ::-1])
    rng = np.random.default_rng([seed, 1])
    for _ in range(extra_views):
        views.append(_random_shifts(images, rng))
    return np.concatenate(views), np.tile(labels, len(views)), len(views)


def describe_views(count: int, flip: bool, extra_views: int) -> str:
    """What `training_views` makes, in words: "72 training images and their 72 mirrored views"."""
    views = ([f"their {count:,} mirrored views"] if flip else []) + \
        ([f"{extra_views} shifted cop{'y' if extra_views == 1 else 'ies'} of each"] if extra_views else [])
    if not views:
        return f"{count:,} training images"
    total = count * (1 + flip + extra_views)
    listed = " and ".join(views) if len(views) == 1 else f"{views[0]} and {views[1]}"
    return f"{count:,} training images and {listed}" + (f" ({total:,} in all)" if extra_views else "")


def _random_shifts(images, rng):
    """Each image moved by up to 1/8 of its side in each direction (reflected padding, then a crop),
    and mirrored with probability 1/2: the crop-and-flip augmentation of CIFAR-10 training recipes."""
    count, height, width = images.shape[:3]
    pad = max(1, min(height, width) // 8)
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode="reflect")
    tops, lefts = rng.integers(0, 2 * pad + 1, count), rng.integers(0, 2 * pad + 1, count)
    mirrored = rng.random(count) < 0.5
    shifted = np.empty_like(images)
    for i in range(count):
        crop = padded[i, tops[i]:tops[i] + height, lefts[i]:lefts[i] + width]
        shifted[i] = crop[:, ::-1] if mirrored[i] else crop
    return shifted
