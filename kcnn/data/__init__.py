"""Datasets: MNIST, CIFAR-10, scikit-learn's digits, the embedded CIFAR-10
sample, and image folders with one sub-folder per class.

The names below are imported on first access (PEP 562): `kcnn.config` and the command line's parser import
`kcnn.data.pipeline` and `kcnn.data.tta`, and importing the package must not import NumPy for them (`kcnn --help`
answers in well under a second)."""

import importlib

_NAMES = {
    "load": "kcnn.data.datasets", "SPLITS": "kcnn.data.datasets", "FOLDER_SPLITS": "kcnn.data.datasets",
    "ImageData": "kcnn.data.datasets", "InvalidDataError": "kcnn.data.datasets",
    "ChecksumError": "kcnn.data.files", "DatasetNotFoundError": "kcnn.data.files",
    "UnsafeArchiveError": "kcnn.data.files",
    "CorruptImageError": "kcnn.data.folder", "EmptyDatasetError": "kcnn.data.folder",
    "ImageSizeError": "kcnn.data.folder", "image_folder": "kcnn.data.folder",
}

__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kcnn.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
