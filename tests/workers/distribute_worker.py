"""Data-parallel training runs for tests/test_distribute.py, on two CPU "devices" of the backend that
KERAS_BACKEND names: TensorFlow with two logical CPU devices, JAX with two host devices, torch with two
processes on gloo (start it under torchrun --nproc_per_node 2).

    python distribute_worker.py step OUT_DIR        one training step on a global batch, distributed and not
    python distribute_worker.py learn OUT_DIR       a short run on the real digits, distributed (continued
                                                    from its backup when torchrun restarts the workers)
    python distribute_worker.py finetune OUT_DIR    a short fine-tuning run of the pretrained EfficientNet-Lite0
    python distribute_worker.py batch_norm OUT_DIR  a few steps of a network with batch normalisation; every
                                                    worker writes its own moving statistics and its final ones
    python distribute_worker.py refused OUT_DIR     a run into OUT_DIR/users_folder (the test put a file of its
                                                    own there): every worker writes the error it got
    python distribute_worker.py step+learn OUT_DIR  several, one after the other

The chief writes OUT_DIR/step.json (and weights.npz), learn.json, finetune.json; every worker writes
batch_norm_rankR.npz and refused_rankR.txt (R: its rank, or its JAX process index).
"""

import json
import os
import sys
import time

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "jax" and not os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):  # before JAX: two CPU devices
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
if BACKEND == "tensorflow" and not os.environ.get("TF_CONFIG"):  # before TensorFlow starts: two CPU devices
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kcnn.config import TrainConfig  # noqa: E402
from kcnn.training.train import train

# LeNet-5 (no dropout, no batch normalisation: a distributed step is then exactly a single-device step)
# on the digits resized to 32x32; no augmentation, so both runs see the same pixels.
STEP = dict(dataset="digits", arch="lenet5", image_size=32, epochs=1, batch_size=64, limit=64, augment="none",
            optimizer="sgd", learning_rate=0.05, schedule="constant", verbose=0)
LEARN = dict(dataset="digits", arch="lenet5", image_size=32, epochs=4, batch_size=64, verbose=0)
# tests/test_finetune.py's TINY: pretrained EfficientNet-Lite0 on 160 images of the CIFAR-10 sample
# cifar_resnet20 (batch normalisation): two steps of 32 images a worker, each worker on its own images.
BATCH_NORM = dict(dataset="digits", arch="cifar_resnet20", image_size=32, epochs=1, batch_size=64, limit=128,
                  augment="none", verbose=0)
FINETUNE = dict(dataset="cifar10_sample", image_size=32, head_epochs=3, finetune_epochs=1, batch_size=32, limit=160,
                export=False, verbose=0)


class PauseAt(keras.callbacks.Callback):
    """Waits at the start of an epoch until the test has killed a worker (KCNN_TEST_PAUSE_AT_EPOCH)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            time.sleep(600)


class LocalStatistics(keras.callbacks.Callback):
    """This worker's non-trainable weights (batch-norm moving statistics) after each of its training steps,
    before anything is copied from the chief."""

    def on_train_batch_end(self, batch, logs=None):
        self.values = [keras.ops.convert_to_numpy(v.value) for v in self.model.non_trainable_variables]


def main(modes, out_dir):
    for mode in modes.split("+"):
        {"step": step, "learn": learn, "finetune": finetune, "batch_norm": batch_norm, "refused": refused}[mode](out_dir)


def rank():
    return os.environ.get("RANK") or os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID") or "0"


def step(out_dir):
    distributed = train(TrainConfig(**STEP, distribute=True, output_dir=os.path.join(out_dir, "distributed"),
                                    overwrite=True))
    if distributed.metrics is None:  # not the chief: the chief compares
        return
    single = train(TrainConfig(**STEP, output_dir=os.path.join(out_dir, "single"), overwrite=True))
    weights = {"distributed": distributed.model.get_weights(), "single": single.model.get_weights()}
    np.savez(os.path.join(out_dir, "weights.npz"),
             **{f"{kind}_{i}": w for kind, ws in weights.items() for i, w in enumerate(ws)})
    result = {kind: {"history": run.history, "accuracy": run.metrics["accuracy"],
                     "distribute": run.metrics.get("distribute"), "count": len(weights[kind])}
              for kind, run in (("distributed", distributed), ("single", single))}
    with open(os.path.join(out_dir, "step.json"), "w") as f:
        json.dump(result, f)


def batch_norm(out_dir):
    local = LocalStatistics()
    run = train(TrainConfig(**BATCH_NORM, distribute=True, output_dir=os.path.join(out_dir, "batch_norm")),
                callbacks=[local])
    final = [keras.ops.convert_to_numpy(v.value) for v in run.model.non_trainable_variables]
    names = [v.path for v in run.model.non_trainable_variables]
    np.savez(os.path.join(out_dir, f"batch_norm_rank{rank()}.npz"), names=np.array(names),
             **{f"local_{i}": v for i, v in enumerate(local.values)}, **{f"final_{i}": v for i, v in enumerate(final)})


def refused(out_dir):
    from kcnn.errors import KcnnError

    try:
        train(TrainConfig(**STEP, distribute=True, output_dir=os.path.join(out_dir, "users_folder")))
        message = "no error"
    except KcnnError as error:
        message = str(error)
    with open(os.path.join(out_dir, f"refused_rank{rank()}.txt"), "w") as f:
        f.write(message)


def learn(out_dir):
    if os.environ.get("KCNN_TEST_PID_DIR"):  # the test kills one worker by its pid
        with open(os.path.join(os.environ["KCNN_TEST_PID_DIR"], f"rank{os.environ.get('RANK', 0)}.pid"), "w") as f:
            f.write(str(os.getpid()))
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    pause = os.environ.get("KCNN_TEST_PAUSE_AT_EPOCH")
    run = train(TrainConfig(**LEARN, distribute=True, output_dir=os.path.join(out_dir, "learn")),
                callbacks=[PauseAt(int(pause))] if pause and not restarts else [])
    if run.metrics is None:
        return
    np.savez(os.path.join(out_dir, "learn_weights.npz"), *run.model.get_weights())
    result = {"history": run.history, "accuracy": run.metrics["accuracy"], "distribute": run.metrics["distribute"],
              "restarts": restarts}
    with open(os.path.join(out_dir, "learn.json"), "w") as f:
        json.dump(result, f)


def finetune(out_dir):
    from kcnn.config import FinetuneConfig
    from kcnn.training.finetune import finetune as run_finetune

    run = run_finetune(FinetuneConfig(**FINETUNE, distribute=True, output_dir=os.path.join(out_dir, "finetune")))
    if run.metrics is None:
        return
    result = {"history": run.history, "accuracy": run.metrics["accuracy"], "distribute": run.metrics["distribute"],
              "unfrozen_from": run.metrics["unfrozen_from"]}
    with open(os.path.join(out_dir, "finetune.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
