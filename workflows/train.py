"""Train a kcnn architecture from scratch.

    KERAS_BACKEND=jax python workflows/train.py --arch lenet5 --dataset mnist
    python workflows/train.py --dataset cifar10          # airbench94 recipe, holdout protocol
    python workflows/train.py --dataset cifar10 --resume # continue an interrupted run
    KERAS_BACKEND=torch torchrun --nproc_per_node 4 workflows/train.py --dataset cifar10 --distribute

Defaults come from the recipe the architecture declares for the dataset (kcnn.recipes), so the bare
command trains a good model. The run lands in saved_models/ARCH_DATASET/.
"""

import sys

from kcnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
