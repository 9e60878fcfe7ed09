"""Datasets: MNIST, CIFAR-10, scikit-learn's digits, the embedded CIFAR-10 sample."""

from kcnn.data.datasets import ImageData, load
from kcnn.data.files import ChecksumError, DatasetNotFoundError

__all__ = ["load", "ImageData", "ChecksumError", "DatasetNotFoundError"]
