"""Regenerate kcnn/data/cifar10_sample.npz from the official CIFAR-10 batches.

    python -m kcnn.data.make_cifar10_sample [--data-dir DIR]

The sample: the first 200 images of each class in batches 1-4 (2,000 to
train on) and the first 100 of each class in batch 5 (1,000 held out), in
file order. Its checksum is over the arrays, not the zip file (whose
timestamps change), so the same official batches give the same checksum;
it is printed and must equal SAMPLE_SHA1 in kcnn/data/datasets.py.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from kcnn.data.datasets import ImageData

TRAIN_PER_CLASS = 200
HELD_OUT_PER_CLASS = 100


def first_per_class(data: ImageData, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    order = [np.flatnonzero(data.labels == c)[:per_class] for c in range(10)]
    keep = np.sort(np.concatenate(order))
    return data.images[keep], data.labels[keep].astype("uint8")


def main(data_dir: str | None = None) -> None:
    from kcnn.data.datasets import SAMPLE_PATH, content_sha1, load

    train_images, train_labels = first_per_class(load("cifar10", "holdout_train", data_dir=data_dir), TRAIN_PER_CLASS)
    test_images, test_labels = first_per_class(load("cifar10", "holdout", data_dir=data_dir), HELD_OUT_PER_CLASS)
    arrays = dict(train_images=train_images, train_labels=train_labels, test_images=test_images,
                  test_labels=test_labels)
    temporary = SAMPLE_PATH + ".tmp.npz"
    np.savez_compressed(temporary, **arrays)
    os.replace(temporary, SAMPLE_PATH)
    print(f"wrote {SAMPLE_PATH} ({os.path.getsize(SAMPLE_PATH):,} bytes), content sha1 {content_sha1(arrays)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    main(parser.parse_args().data_dir)
