"""Data-parallel training on the engine each backend already has.

    from kcnn.config import TrainConfig
    from kcnn.training.train import train
    train(TrainConfig(dataset="cifar10", distribute=True))   # or: kcnn train --distribute

kcnn does not invent its own: `--distribute` picks the engine of the active backend.

| backend    | engine                                                  | launched by                                  |
|------------|---------------------------------------------------------|----------------------------------------------|
| tensorflow | `tf.distribute.MirroredStrategy` (every GPU, else every | `python workflows/train.py --distribute`     |
|            | logical CPU device); not MultiWorkerMirroredStrategy:   |                                              |
|            | Keras 3's fit() does not run under it (TF_CONFIG: error)|                                              |
| torch      | `torch.distributed` + `DistributedDataParallel` (NCCL   | `torchrun --nproc_per_node N                 |
|            | on GPUs, gloo on CPUs), inside Keras' `fit()`           | workflows/train.py --distribute`             |
| jax        | `keras.distribution.DataParallel` over `jax.devices()`; | `python workflows/train.py --distribute`;    |
|            | several processes when `KERAS_DISTRIBUTION_*` is set    | each host with its `KERAS_DISTRIBUTION_*`    |

What stays the same whatever the engine: `batch_size` is the *global* batch (each of R replicas computes
batch_size / R of it), so a distributed step on a batch equals a single-device step on that batch, and the
learning rate needs no change; the chief (rank / process 0) alone writes the run directory (the others
return a Run whose metrics are None); every worker restores the same backup on `--resume`; the metrics in
logs and callbacks are those of the whole global batch (the engines reduce them; kcnn does it for DDP).

Batch normalisation: on TensorFlow and torch each replica normalises with its own part of the batch (the
engines' default, as torch DDP without SyncBatchNorm); the moving statistics kept are the chief's. JAX
computes the whole batch as one program, so its statistics are the global batch's.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Callable, ContextManager, TypeVar

import keras

from kcnn.backends import keras_private
from kcnn.errors import InvalidArgumentError, KcnnError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import numpy as np

_T = TypeVar("_T")

TORCHRUN_HINT = "torchrun --nproc_per_node N workflows/train.py --distribute ..."


class Plan:
    """How this process takes part in training: the engine, its replicas and
    workers, and the few hooks a run needs (`scope`, `wrap`, `on_chief`).
    `Plan()` is a single device, which does nothing."""

    engine = "none"

    def __init__(self):
        self.replicas = 1  # devices that compute one global batch together
        self.workers = 1  # processes
        self.worker = 0  # this process's index
        self.restarted = False  # started again by the launcher after a worker failed (torchrun --max-restarts)

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    @property
    def input_shard(self) -> tuple[int, int]:
        """(index, count): the part of each global batch this process feeds; (0, 1) where the engine splits
        the global batch itself."""
        return 0, 1

    def describe(self) -> dict:
        return {"engine": self.engine, "replicas": self.replicas, "workers": self.workers}

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.replicas:
            lower = batch_size - batch_size % self.replicas
            raise InvalidArgumentError(
                f"batch_size is the global batch and {self.engine} splits it over {self.replicas} replicas, so it "
                f"must be a multiple of {self.replicas}; pass {max(lower, self.replicas)} or "
                f"{lower + self.replicas}. Received: batch_size={batch_size}"
            )

    # Every batch a JAX program gets must split evenly over its devices (XLA's sharding); the other engines
    # take any last batch.
    batch_multiple = 1

    def validation_size(self, count: int) -> int:
        """How many of `count` validation images fit() evaluates on (the final evaluation takes them all):
        on JAX, all but the last count % replicas (fewer than one per device)."""
        return count - count % self.batch_multiple

    def worker_rows(self, rows: np.ndarray) -> np.ndarray:
        """This worker's part of `rows` (indices of training examples held in memory), the whole cut to a
        length every engine splits evenly: each worker then runs the same number of steps."""
        index, count = self.input_shard
        return rows[: len(rows) - len(rows) % (count * self.batch_multiple)][index::count]

    def worker_batch(self, batch_size: int) -> int:
        """This worker's part of a global batch, for fit() on arrays (`worker_rows`)."""
        return batch_size // self.input_shard[1]

    def scope(self) -> ContextManager:
        """Where models, optimizers and metrics are created (and fit() runs)."""
        return contextlib.nullcontext()

    def wrap(self, trainer: keras.Model) -> keras.Model:
        """After compile(): whatever the engine needs on the model (DDP)."""
        return trainer

    def unwrap(self, trainer: keras.Model) -> keras.Model:
        """After fit(): the plain model again."""
        return trainer

    def single_device(self, model: keras.Model) -> keras.Model:
        """After fit(): `model`, or a copy of it with the same weights that lives on one device (what is
        evaluated, saved and returned)."""
        return model

    def callbacks(self) -> list:
        """Keras callbacks every worker runs (before kcnn's own)."""
        return []

    def scratch_dir(self) -> str | None:
        """A folder of this worker's own where it saves what the chief saves, for engines on which saving
        is a collective every worker joins (several JAX processes); None: the others save nothing."""
        return None

    def on_chief(self, work: Callable[[], _T]) -> _T | None:
        """Run `work()` on the chief; the other workers wait for it, and a KcnnError it raises is raised on
        every worker."""
        return work()

    def close(self) -> None:
        pass


class TensorFlowPlan(Plan):
    engine = "mirrored"

    def __init__(self):
        super().__init__()
        import tensorflow as tf

        if os.environ.get("TF_CONFIG"):
            # Tried here with two workers on localhost: Keras' TensorFlow trainer reduces PerReplica values
            # in ways MultiWorkerMirroredStrategy does not take (first in _maybe_symbolic_build, then in the
            # metrics' reduce_per_replica), so fit() stops at its first step.
            raise InvalidArgumentError(
                "TF_CONFIG asks for TensorFlow's MultiWorkerMirroredStrategy, under which Keras 3's fit() does not "
                "run (keras-team/keras#20585); train on several machines with the torch backend (torchrun) or "
                "JAX (keras.distribution), or unset TF_CONFIG to use every GPU of this machine."
            )
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        # Between CPU devices TensorFlow picks collective all-reduces, whose instance keys clash when a
        # second model trains in the same strategy (fine-tuning's two phases: "Shape mismatch in the
        # collective instance"); reduction to one device has no such state. GPUs keep NCCL.
        self.strategy = tf.distribute.MirroredStrategy(
            [device.name for device in devices], cross_device_ops=None if gpus else tf.distribute.ReductionToOneDevice())
        self.replicas = self.strategy.num_replicas_in_sync

    def scope(self) -> ContextManager:
        return self.strategy.scope()

    def single_device(self, model: keras.Model) -> keras.Model:
        return _single_device_copy(model)


class TorchPlan(Plan):
    engine = "ddp"

    def __init__(self):
        super().__init__()
        import torch
        import torch.distributed as dist

        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            raise InvalidArgumentError(
                f"--distribute on the torch backend runs one process per device under torchrun; launch it as "
                f"`{TORCHRUN_HINT}` (one machine) or with --nnodes and --rdzv-endpoint (several)."
            )
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)  # Keras' "cuda" device is the current one
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            # The group lives as long as the process: a second one from torchrun's same store can read the
            # first one's addresses and hang (found running training, then fine-tuning, in one process).
            import atexit

            atexit.register(dist.destroy_process_group)
        self.workers = self.replicas = dist.get_world_size()
        self.worker = dist.get_rank()
        self.restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0

    @property
    def input_shard(self) -> tuple[int, int]:
        return self.worker, self.workers

    def wrap(self, trainer: keras.Model) -> keras.Model:
        return _use_ddp(trainer, self.local_rank)

    def unwrap(self, trainer: keras.Model) -> keras.Model:
        for name in ("train_step", "_kcnn_ddp"):
            trainer.__dict__.pop(name, None)  # kcnn's DDP hooks (see _use_ddp)
        keras_private.restore_metrics_result(trainer)
        return trainer

    def single_device(self, model: keras.Model) -> keras.Model:
        return self.unwrap(model)

    def callbacks(self) -> list:
        return [_ChiefMovingStatistics()]

    def on_chief(self, work: Callable[[], _T]) -> _T | None:
        import torch.distributed as dist

        def broadcast(message):
            shared = [message]
            dist.broadcast_object_list(shared, src=0)
            return shared[0]

        return _on_chief(self, work, broadcast)


class JaxPlan(Plan):
    engine = "data_parallel"

    def __init__(self):
        super().__init__()
        import jax

        if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") and not _JAX_STARTED:
            # Several hosts: KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and _PROCESS_ID (Keras' names).
            keras.distribution.initialize()
            _JAX_STARTED.append(True)
        # Each process feeds its own part of every global batch (as on torch); Keras spreads it over the
        # process's devices.
        self.distribution = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
        self.replicas = len(jax.devices())
        self.workers = jax.process_count()
        self.worker = jax.process_index()

    @property
    def input_shard(self) -> tuple[int, int]:
        return self.worker, self.workers

    @property
    def batch_multiple(self) -> int:
        return self.replicas

    def scratch_dir(self) -> str | None:
        if self.workers == 1:
            return None
        import tempfile  # Keras gathers a variable spread over several processes with a collective

        if not getattr(self, "_scratch", None):  # one per run (fine-tuning asks once per phase)
            self._scratch = tempfile.mkdtemp(prefix=f"kcnn-worker{self.worker}-")
        return self._scratch

    def close(self) -> None:
        import shutil

        if getattr(self, "_scratch", None):
            shutil.rmtree(self._scratch, ignore_errors=True)

    def scope(self) -> ContextManager:
        return self.distribution.scope()

    def single_device(self, model: keras.Model) -> keras.Model:
        return _single_device_copy(model)

    def on_chief(self, work: Callable[[], _T]) -> _T | None:
        if self.workers == 1:
            return work()
        import numpy as np
        from jax.experimental import multihost_utils

        def broadcast(message):  # JAX's collectives carry arrays: the sentence as bytes, of a fixed size
            encoded = np.zeros(4096, np.uint8)
            text = message.encode()[: encoded.size]
            encoded[: len(text)] = np.frombuffer(text, np.uint8)
            shared = np.asarray(multihost_utils.broadcast_one_to_all(encoded), np.uint8)
            return shared.tobytes().rstrip(b"\0").decode(errors="replace")

        return _on_chief(self, work, broadcast)


_JAX_STARTED = []


def _on_chief(plan, work, broadcast):
    """Plan.on_chief for several processes: `broadcast(message)` sends the chief's outcome ("" or the
    sentence of the error it raised) to every process, which all wait for it there, and returns it."""
    result, failure = None, ""
    try:
        if plan.is_chief:
            try:
                result = work()
            except KcnnError as error:
                failure = str(error)
                raise
            except BaseException:
                failure = "The chief worker (rank 0) failed; its output says why."
                raise
    finally:
        message = broadcast(failure)
    if message:
        raise KcnnError(message)
    return result


def _single_device_copy(model):
    """A copy of a model trained under a TensorFlow strategy or a JAX distribution, made outside it."""
    from kcnn.backends import torch_fast

    copy = keras.models.clone_model(model)  # (compiled: its optimizer's variables are made, so not deferred)
    copy.set_weights(model.get_weights())
    return torch_fast.accelerate(copy)


def plan(distribute: bool) -> Plan:
    """The Plan for this process: a single device unless `distribute`."""
    if not distribute:
        return Plan()
    return {"tensorflow": TensorFlowPlan, "torch": TorchPlan, "jax": JaxPlan}[keras.backend.backend()]()


# ---- DistributedDataParallel inside Keras' fit() (torch) -----------------------------------------
# Keras' fit() on torch calls the model itself, so DDP's forward (which arms its gradient all-reduce) never
# runs; the Keras guide leaves fit() for a hand-written torch loop. kcnn keeps fit() and its callbacks: the
# training step below is Keras' TorchTrainer.train_step with the forward pass through the DDP wrapper, and
# the metrics it returns are summed over the workers (loss and accuracy keep totals and counts).


def _use_ddp(trainer, local_rank):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    # Keras keeps its variables as parameters, not buffers: _ChiefMovingStatistics does broadcast_buffers' work.
    ddp = DistributedDataParallel(trainer, device_ids=[local_rank] if torch.cuda.is_available() else None)
    trainer.__dict__["_kcnn_ddp"] = ddp  # not a tracked attribute: Keras' saving must not see it
    trainer.train_step = lambda data: _ddp_train_step(trainer, ddp, data)
    keras_private.replace_metrics_result(trainer, lambda logs: _reduced_metrics(trainer))
    return trainer


def _ddp_train_step(model, ddp, data):
    """keras/src/backend/torch/trainer.py TorchTrainer.train_step (Keras 3.15), forward through DDP."""
    import torch
    from keras import tree

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = ddp(x, training=True) if keras_private.call_has_training_arg(model) else ddp(x)
    model.zero_grad()
    loss = keras_private.compute_loss(model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    keras_private.loss_tracker(model).update_state(
        loss, sample_weight=next(i for i in tree.flatten(x) if i is not None).shape[0])
    if model.optimizer is not None:
        loss = model.optimizer.scale_loss(loss)
    loss.backward()  # DDP averages the gradients over the workers here
    trainable_weights = model.trainable_weights[:]
    with torch.no_grad():
        model.optimizer.apply([v.value.grad for v in trainable_weights], trainable_weights)
    model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    return _reduced_metrics(model)


def _reduced_metrics(model):
    """The model's metrics over every worker's batches: each metric variable (totals and counts) summed
    over the workers, read, then put back to this worker's own values."""
    import torch
    import torch.distributed as dist

    variables = model.metrics_variables
    local = [variable.value.detach().clone() for variable in variables]
    if not local:
        return model.get_metrics_result()
    summed = torch.cat([value.reshape(-1).to(torch.float64) for value in local])
    dist.all_reduce(summed)
    offset = 0
    for variable, value in zip(variables, local):
        variable.assign(summed[offset: offset + value.numel()].reshape(value.shape).to(value.dtype))
        offset += value.numel()
    try:
        return model.get_metrics_result()
    finally:
        for variable, value in zip(variables, local):
            variable.assign(value)


class _ChiefMovingStatistics(keras.callbacks.Callback):
    """The chief's non-trainable weights (batch-norm moving statistics) copied to every worker before each
    evaluation and at the end, as DDP's broadcast_buffers does for torch modules: every worker then
    evaluates, and keeps, the same model."""

    def _broadcast(self):
        import torch.distributed as dist

        for variable in self.model.non_trainable_variables:
            value = variable.value.detach().contiguous()
            dist.broadcast(value, src=0)
            variable.assign(value)

    def on_test_begin(self, logs=None):
        self._broadcast()

    def on_train_end(self, logs=None):
        self._broadcast()
