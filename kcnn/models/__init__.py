"""The architecture zoo: importing a family registers its variants."""

from kcnn.models import (  # noqa: F401
    airbench,
    alexnet,
    baselines,
    cifar_resnet,
    convvit,
    densenet,
    efficientnet_lite,
    googlenet,
    lenet,
    mobilenet,
    resnet,
    squeezenet,
    vgg,
)
