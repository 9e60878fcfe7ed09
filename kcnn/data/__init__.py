"""Datasets: MNIST, CIFAR-10, scikit-learn's digits, the embedded CIFAR-10
sample, and image folders with one sub-folder per class."""

from kcnn.data.datasets import FOLDER_SPLITS, SPLITS, ImageData, InvalidDataError, load
from kcnn.data.files import ChecksumError, DatasetNotFoundError, UnsafeArchiveError
from kcnn.data.folder import CorruptImageError, EmptyDatasetError, ImageSizeError, image_folder

__all__ = ["load", "SPLITS", "FOLDER_SPLITS", "image_folder", "ImageData", "ChecksumError", "DatasetNotFoundError", "EmptyDatasetError",
           "CorruptImageError", "ImageSizeError", "UnsafeArchiveError", "InvalidDataError"]
