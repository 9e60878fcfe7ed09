"""Export a run's model for serving, whichever backend trained it.

    python workflows/export.py saved_models/finetune_efficientnet_lite0_cifar10_sample   # SavedModel: RUN/export/1/
    python workflows/export.py RUN_DIR --format onnx                                      # RUN/export/model.onnx
    python workflows/export.py model.keras --output saved_models/my_model --version 2

The served model takes raw 0-255 RGB images of the model's input size, in a
batch of any size, and returns probabilities, the class index and (SavedModel)
the class name. See `kcnn export -h` for every flag.
"""

import sys

from kcnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
