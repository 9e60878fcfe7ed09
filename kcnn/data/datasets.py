"""In-memory datasets: MNIST, CIFAR-10, scikit-learn's digits, the embedded
CIFAR-10 sample. Each `load` returns uint8 images (N, H, W, C) and int labels.

CIFAR-10 splits:
    train           batches 1-5 (50,000)
    test            the official test batch (10,000)
    holdout_train   batches 1-4 (40,000): train here when the test batch is missing...
    holdout         ...and evaluate on batch 5 (10,000), never trained on
    test_first1000  the first 1,000 official test images (a second check)
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from kcnn.data import sources
from kcnn.data.files import ChecksumError, DatasetNotFoundError, locate, verify
from kcnn.errors import InvalidArgumentError, KcnnError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    from kcnn.data.files import OfficialFile

DIGIT_CLASSES = tuple(str(d) for d in range(10))


@dataclasses.dataclass(frozen=True)
class ImageData:
    """Images as uint8 (N, H, W, C), labels as int64 (N,), and the class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    name: str
    skipped: int = 0  # unreadable files left out (image folders)

    def __post_init__(self):
        _check_image_data(self)

    def __len__(self):
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


class InvalidDataError(KcnnError):
    """Images or labels that cannot be trained on (shapes, NaN, labels out of range)."""


def _check_image_data(data):
    """ImageData is the one door into the pipeline, so arrays a user brings
    are checked here: shapes, NaN and infinite pixels, labels in range."""
    images, labels, name = data.images, data.labels, data.name
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = getattr(images, "shape", type(images).__name__)
        raise InvalidDataError(f"{name}: images must be a NumPy array of shape (N, height, width, channels) with 1, "
                               f"3 or 4 channels; received {shape}.")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise InvalidDataError(f"{name}: images must be uint8 (0-255) or floating point; received {images.dtype}.")
    if images.dtype != np.uint8 and not np.all(np.isfinite(images)):
        count = int(np.sum(~np.isfinite(images)))
        raise InvalidDataError(f"{name}: {count:,} pixel value(s) are NaN or infinite; replace them (e.g. "
                               f"np.nan_to_num) or drop those images.")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidDataError(f"{name}: labels must be {len(images):,} whole numbers, one per image; received "
                               f"shape {labels.shape} of {labels.dtype}.")
    outside = (labels < 0) | (labels >= len(data.class_names))
    if np.any(outside):
        raise InvalidDataError(f"{name}: label {int(labels[outside][0])} is outside 0..{len(data.class_names) - 1} "
                               f"(there are {len(data.class_names)} class names); fix the labels or the class names.")


def load(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
         download: bool = True) -> ImageData:
    """Load a dataset split into memory; see the module docstring for splits."""
    if name not in LOADERS:
        raise InvalidArgumentError(
            f"Unknown dataset {name!r}; kcnn has {', '.join(sorted(LOADERS))}, or pass an image folder to "
            f"kcnn.data.image_folder(). Received: name={name!r}"
        )
    loader, splits = LOADERS[name]
    if split not in splits:
        raise InvalidArgumentError(
            f"{name} has the splits {', '.join(splits)}. Received: split={split!r}"
        )
    return loader(split, data_dir=data_dir, download=download)


# ---- MNIST: the four official IDX files -----------------------------------


def _load_mnist(split, data_dir, download):
    prefix = "train" if split == "train" else "t10k"
    images_path, labels_path = locate(sources.MNIST, data_dir, download,
                                      names=(f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"))
    images = _read_idx(images_path, magic=2051)
    labels = _read_idx(labels_path, magic=2049).astype("int64")
    return ImageData(images[..., None], labels, DIGIT_CLASSES, f"mnist/{split}")


def _read_idx(path, magic):
    # The IDX format (a big-endian header, then the bytes) has no loader in
    # Keras or tf.data; reading it is two lines of NumPy.
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = 3 if magic == 2051 else 1
    header = np.frombuffer(data, ">i4", count=1 + dims)  # magic number, then the size of each dimension
    if header[0] != magic:
        raise ChecksumError(f"{path} is not an IDX file of the expected kind (magic {header[0]}, expected {magic}).")
    return np.frombuffer(data, np.uint8, offset=4 * (1 + dims)).reshape(header[1:])


# ---- CIFAR-10: the official binary version, or the python (pickle) one ----

CIFAR10_SPLITS = {
    "train": ("data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"),
    "holdout_train": ("data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin"),
    "holdout": ("data_batch_5.bin",),
    "test": ("test_batch.bin",),
    "test_first1000": ("test_batch_first1000.bin",),
}


def _load_cifar10(split, data_dir, download):
    names = CIFAR10_SPLITS[split]
    if split == "test_first1000":
        paths = locate(sources.CIFAR10_PARTIAL_TEST, data_dir, download=False, names=names)
        batches = [read_cifar_batch(p) for p in paths]
    else:
        # The binary version when it is there, else the python version (as
        # keras.datasets.cifar10 leaves it), else download the binary one.
        try:
            paths = locate(sources.CIFAR10, data_dir, download=False, names=names)
        except DatasetNotFoundError:
            python_names = [name[: -len(".bin")] for name in names]
            try:
                paths = locate(sources.CIFAR10_PYTHON, data_dir, download=False, names=python_names)
            except DatasetNotFoundError:
                paths = locate(sources.CIFAR10, data_dir, download, names=names)
            else:
                files = {f.name: f for f in sources.CIFAR10_PYTHON.files}
                batches = [read_cifar_pickle(p, files[os.path.basename(p)]) for p in paths]
                paths = None
        if paths is not None:
            batches = [read_cifar_batch(p) for p in paths]
    images, labels = zip(*batches)
    return ImageData(np.concatenate(images), np.concatenate(labels), sources.CIFAR10_CLASSES, f"cifar10/{split}")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte and 3,072 pixel bytes (R, G, B planes of 32x32)."""
    records = np.fromfile(path, np.uint8).reshape(-1, 3073)
    labels = records[:, 0].astype("int64")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar_pickle(path: str | os.PathLike, official: OfficialFile) -> tuple[np.ndarray, np.ndarray]:
    """A batch of the python version: a pickled dict of b"data" (N, 3072) and
    b"labels". Unpickling can run code, so the file is checked against its
    published checksum first, here, whoever calls this."""
    import pickle

    verify(path, official)
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[b"labels"], dtype="int64")


# ---- scikit-learn's digits: 1,797 real 8x8 digits, for fast tests ---------


def _load_digits(split, data_dir, download):
    from sklearn.datasets import load_digits  # ships inside scikit-learn: no download

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype("int64")
    # A fixed split: the first 1,500 digits train, the remaining 297 test.
    part = slice(0, 1500) if split == "train" else slice(1500, None)
    return ImageData(images[part], labels[part], DIGIT_CLASSES, f"digits/{split}")


# ---- the embedded CIFAR-10 sample ------------------------------------------

SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "cifar10_sample.npz")
SAMPLE_SHA1 = "16b015152920e37047bb1197ca261666a75408dc"  # of the arrays; see make_cifar10_sample.py


def content_sha1(arrays: Sequence[np.ndarray]) -> str:
    """The sample's checksum: of its arrays (their names and bytes), not of the .npz file (which holds
    zip timestamps)."""
    digest = hashlib.sha1()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def _load_sample(split, data_dir, download):
    with np.load(SAMPLE_PATH, allow_pickle=False) as sample:
        arrays = {key: sample[key] for key in sample.files}
    if content_sha1(arrays) != SAMPLE_SHA1:
        raise ChecksumError(
            f"{SAMPLE_PATH} does not match its checksum ({SAMPLE_SHA1}); reinstall kcnn or regenerate it with "
            f"python -m kcnn.data.make_cifar10_sample."
        )
    return ImageData(arrays[f"{split}_images"], arrays[f"{split}_labels"].astype("int64"),
                     sources.CIFAR10_CLASSES, f"cifar10_sample/{split}")


# What the workflows (kcnn train, kcnn finetune) train on and evaluate on, per dataset:
# (training split, evaluation split, a second evaluation split or None). CIFAR-10's official test batch is not
# always there: train on batches 1-4, evaluate on batch 5, check on the first 1,000 official test images.
SPLITS = {
    "mnist": ("train", "test", None),
    "cifar10": ("holdout_train", "holdout", "test_first1000"),
    "cifar10_sample": ("train", "test", None),
    "digits": ("train", "test", None),
}
# An image folder (kcnn.data.image_folder): a validation_split of each class is held out.
FOLDER_SPLITS = ("training", "validation", None)

LOADERS = {
    "mnist": (_load_mnist, ("train", "test")),
    "cifar10": (_load_cifar10, tuple(CIFAR10_SPLITS)),
    "digits": (_load_digits, ("train", "test")),
    "cifar10_sample": (_load_sample, ("train", "test")),
}
