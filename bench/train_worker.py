"""Runs one `kcnn.training.train` in this process (its backend comes from KERAS_BACKEND)
and prints one JSON line: the run's metrics and, per epoch, the training time
without validation and the validation accuracy. The bench scripts start it.

    KERAS_BACKEND=tensorflow python bench/train_worker.py '{"dataset": "mnist", ...}'
"""

import json
import sys
import time

import keras

from kcnn.config import TrainConfig
from kcnn.training.train import train


class EpochClock(keras.callbacks.Callback):
    """Seconds of training in each epoch, validation excluded (it starts in on_test_begin)."""

    def __init__(self):
        super().__init__()
        self.train_seconds, self.val_accuracy = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.stopped = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        self.stopped = self.stopped or time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.train_seconds.append((self.stopped or time.perf_counter()) - self.started)
        logs = logs or {}
        self.val_accuracy.append(float(logs.get("val_accuracy", logs.get("val_logits_accuracy", "nan"))))


def main(config_json):
    clock = EpochClock()
    run = train(TrainConfig(**json.loads(config_json)), callbacks=[clock])
    result = dict(run.metrics, backend=keras.backend.backend(), epoch_train_seconds=clock.train_seconds,
                  epoch_val_accuracy=clock.val_accuracy, train_accuracy=run.history.get("accuracy", []),
                  run_dir=run.directory)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
