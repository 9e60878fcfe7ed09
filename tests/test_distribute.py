"""kcnn.training.distribute: data-parallel training on each backend's own engine, with two workers on the CPU
(tests/workers/distribute_worker.py): TensorFlow's MirroredStrategy over two logical CPU devices, JAX's
keras.distribution.DataParallel over two host devices, torch DDP with two processes on gloo (torchrun)."""

import json
import os
import signal
import sys
import time

import numpy as np
import pytest

from helpers import worker, _tail, run_python

WORKER = worker("distribute_worker")
ENGINES = {"tensorflow": ("mirrored", 1), "torch": ("ddp", 2), "jax": ("data_parallel", 1)}  # (engine, processes)


def launch(backend, modes, out_dir, *torchrun_options):
    args = [WORKER, modes, str(out_dir)]
    if backend == "torch":
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *torchrun_options, *args]
    return run_python(args, backend, str(out_dir / "worker.log"))


def finished(process, out_dir, timeout=900):
    assert process.wait(timeout=timeout) == 0, _tail(out_dir / "worker.log")


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_one_process_with_two_devices(backend, tmp_path):
    finished(launch(backend, "step+learn+finetune", tmp_path), tmp_path)
    check_step(backend, tmp_path)
    check_learned(backend, tmp_path)
    check_finetuned(backend, tmp_path)


@pytest.fixture(scope="module")
def torch_ddp(tmp_path_factory):
    """One torchrun launch of two workers for the torch tests below (each mode in turn, in the same
    processes): a refused run, a step, an uninterrupted `learn` run, batch normalisation, fine-tuning."""
    out_dir = tmp_path_factory.mktemp("ddp")
    users_file = users_folder(out_dir)
    finished(launch("torch", "refused+step+learn+batch_norm+finetune", out_dir), out_dir)
    return out_dir, users_file


def users_folder(out_dir):
    """OUT_DIR/users_folder, holding a file of the user's that no run may touch: (its path, its bytes)."""
    (out_dir / "users_folder").mkdir()
    path = out_dir / "users_folder" / "notes.txt"
    path.write_bytes(b"my own notes, not a kcnn run\n")
    return path, path.read_bytes()


def check_refused(out_dir, users_file, workers):
    """The chief refused the folder before writing anything, and every worker raised the chief's sentence."""
    path, content = users_file
    messages = [(out_dir / f"refused_rank{rank}.txt").read_text() for rank in range(workers)]
    assert "users_folder holds files kcnn did not write (notes.txt)" in messages[0], messages[0]
    assert messages == [messages[0]] * workers, messages
    assert sorted(p.name for p in path.parent.iterdir()) == ["notes.txt"] and path.read_bytes() == content


def test_torch_ddp_with_two_processes(torch_ddp):
    out_dir, users_file = torch_ddp
    check_refused(out_dir, users_file, workers=2)
    check_step("torch", out_dir)
    check_learned("torch", out_dir)
    check_finetuned("torch", out_dir)


def test_torch_workers_keep_the_chiefs_moving_statistics(torch_ddp):
    """Each worker normalises its own half of the batch, so its moving statistics drift from the chief's
    during an epoch; the chief's are copied to every worker before evaluating and at the end (as DDP's
    broadcast_buffers does), so that both workers end with the chief's model."""
    out_dir, _ = torch_ddp
    chief, other = (np.load(out_dir / f"batch_norm_rank{rank}.npz") for rank in (0, 1))
    names = list(chief["names"])
    statistics = [i for i, name in enumerate(names) if name.endswith(("moving_mean", "moving_variance"))]
    assert len(statistics) >= 2 * 19, names  # cifar_resnet20: 19 batch norms
    drifted = [i for i in statistics if not np.array_equal(chief[f"local_{i}"], other[f"local_{i}"])]
    assert len(drifted) == len(statistics), [names[i] for i in statistics if i not in drifted]
    for i in range(len(names)):
        np.testing.assert_array_equal(other[f"final_{i}"], chief[f"final_{i}"], err_msg=names[i])
        np.testing.assert_array_equal(chief[f"final_{i}"], chief[f"local_{i}"], err_msg=names[i])


def check_step(backend, out_dir, engine=None):
    """One step on a global batch of 64 split over two workers gives the weights, loss and accuracy of one
    step on the whole batch on one device."""
    result = json.loads((out_dir / "step.json").read_text())
    engine, processes = engine or ENGINES[backend]
    assert result["distributed"]["distribute"] == {"engine": engine, "replicas": 2, "workers": processes}
    weights = np.load(out_dir / "weights.npz")
    count = result["single"]["count"]
    assert count == result["distributed"]["count"] == 10
    for i in range(count):
        np.testing.assert_allclose(weights[f"distributed_{i}"], weights[f"single_{i}"], rtol=1e-5, atol=1e-6)
    distributed, single = result["distributed"], result["single"]
    # the logged training metrics are the whole global batch's (reduced over the workers), not one worker's
    assert distributed["history"]["loss"] == pytest.approx(single["history"]["loss"], rel=1e-5)
    assert distributed["history"]["accuracy"] == pytest.approx(single["history"]["accuracy"], abs=1e-6)
    assert distributed["accuracy"] == pytest.approx(single["accuracy"], abs=1e-9)


def check_learned(backend, out_dir, epochs=4):
    result = json.loads((out_dir / "learn.json").read_text())
    assert result["distribute"]["replicas"] == 2
    assert len(result["history"]["val_accuracy"]) == epochs
    assert result["accuracy"] > 0.8, result  # 10 classes of real handwritten digits; chance is 0.1
    run_dir = out_dir / "learn"
    assert (run_dir / "model.keras").is_file() and not (run_dir / "backup").exists()


def check_finetuned(backend, out_dir):
    """Both phases of fine-tuning (the head, then the top blocks) ran data-parallel, and the model learned."""
    result = json.loads((out_dir / "finetune.json").read_text())
    assert result["distribute"] == {"engine": ENGINES[backend][0], "replicas": 2, "workers": ENGINES[backend][1]}
    assert len(result["history"]["val_accuracy"]) == 4 and result["unfrozen_from"] == "blocks_12_add"
    # 10 CIFAR-10 classes after 4 short epochs on 160 images: chance is 0.1 +- 0.01 on the 1,000 held-out images,
    # and the runs end at 0.2-0.3 (TensorFlow's two-device reductions are not bit-reproducible run to run)
    assert result["accuracy"] > 0.15, result
    assert (out_dir / "finetune" / "model.keras").is_file()


def test_torch_workers_resume_after_one_is_killed(tmp_path, torch_ddp):
    """torchrun --max-restarts 1: one worker killed in epoch 2 of 4; torchrun starts both again and they
    continue from the chief's backup, so that every epoch runs once and the run ends with the weights and
    history of the same run never interrupted."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: without it the restarted workers' gloo connects to the killed
    # ones' ports (pytorch/pytorch#135712, #167288); the README says so too.
    variables = dict(KCNN_TEST_PID_DIR=str(pid_dir), KCNN_TEST_PAUSE_AT_EPOCH="2", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    os.environ.update(variables)
    try:
        process = launch("torch", "learn", tmp_path, "--max-restarts", "1")
    finally:
        for name in variables:
            del os.environ[name]
    metadata = tmp_path / "learn" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 600
    while not (metadata.exists() and json.loads(metadata.read_text())["epoch"] == 2):
        assert process.poll() is None and time.monotonic() < deadline, _tail(tmp_path / "worker.log")
        time.sleep(0.5)
    first_rows = (tmp_path / "learn" / "history.csv").read_text().splitlines()
    os.kill(int((pid_dir / "rank1.pid").read_text()), signal.SIGKILL)
    finished(process, tmp_path)
    result = json.loads((tmp_path / "learn.json").read_text())
    assert result["restarts"] == 1
    rows = (tmp_path / "learn" / "history.csv").read_text().splitlines()
    assert len(first_rows) == 3 and rows[:3] == first_rows  # epochs 0 and 1 kept, not run again
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    check_learned("torch", tmp_path)
    uninterrupted = torch_ddp[0] / "learn"
    assert_same_history(tmp_path / "learn" / "history.csv", uninterrupted / "history.csv")
    resumed, reference = (np.load(out_dir / "learn_weights.npz") for out_dir in (tmp_path, torch_ddp[0]))
    assert len(reference.files) > 0 and sorted(resumed.files) == sorted(reference.files)
    for name in reference.files:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)


def assert_same_history(path, reference_path):
    """The same epochs with the same metrics (the seconds an epoch took aside)."""
    import csv

    def rows(p):
        with open(p) as f:
            return [{k: v for k, v in row.items() if "time" not in k and "second" not in k} for row in csv.DictReader(f)]

    assert rows(path) == rows(reference_path)


def test_jax_with_two_processes(tmp_path):
    """Several hosts on JAX: two processes (one CPU device each, gloo collectives) joined by Keras'
    KERAS_DISTRIBUTION_* variables; a step equals the single-device step (saving is a collective there:
    the other process saves into a scratch folder while the chief writes the run); a run the chief refuses
    is refused on both."""
    users_file = users_folder(tmp_path)
    processes = []
    for process_id in range(2):
        out_dir = tmp_path if process_id == 0 else tmp_path / "process1"
        out_dir.mkdir(exist_ok=True)
        variables = dict(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{free_port()}" if process_id == 0 else
                         processes[0][1], KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                         KERAS_DISTRIBUTION_PROCESS_ID=str(process_id), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
        os.environ.update(variables)
        try:  # both write into tmp_path's run folders: only the chief may
            processes.append((run_python([WORKER, "refused+step", str(tmp_path)], "jax", str(out_dir / "worker.log")),
                              variables["KERAS_DISTRIBUTION_JOB_ADDRESSES"]))
        finally:
            for name in variables:
                del os.environ[name]
    for (process, _), out_dir in zip(processes, (tmp_path, tmp_path / "process1")):
        finished(process, out_dir)
    check_refused(tmp_path, users_file, workers=2)
    check_step("jax", tmp_path, engine=("data_parallel", 2))


def free_port():
    import socket

    with socket.socket() as listener:
        listener.bind(("localhost", 0))
        return listener.getsockname()[1]


def test_learning_rate_follows_the_global_batch():
    from kcnn.config import TrainConfig

    cifar = TrainConfig(dataset="cifar10").resolved()  # SGD, batch 1024, learning rate 1.5
    assert TrainConfig(dataset="cifar10", batch_size=2048).resolved().learning_rate == pytest.approx(2 * cifar.learning_rate)
    mnist = TrainConfig(dataset="mnist").resolved()  # AdamW: the square root
    assert TrainConfig(dataset="mnist", batch_size=4 * mnist.batch_size).resolved().learning_rate == \
        pytest.approx(2 * mnist.learning_rate)
    assert TrainConfig(dataset="mnist", batch_size=512, learning_rate=0.1).resolved().learning_rate == 0.1


@pytest.mark.parametrize("backend, variables, message", [
    ("torch", {}, "runs one process per device under torchrun; launch it as `torchrun --nproc_per_node N"),
    ("tensorflow", {"TF_CONFIG": '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}'},
     "under which Keras 3's fit() does not run (keras-team/keras#20585)"),
])
def test_distribute_where_the_engine_cannot_start(backend, variables, message, tmp_path):
    import subprocess

    env = dict(os.environ, KERAS_BACKEND=backend, **variables)
    result = subprocess.run([sys.executable, "-m", "kcnn", "train", "--dataset", "digits", "--distribute",
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_only_the_chief_writes_the_run(tmp_path):
    """The callbacks of a worker that is not the chief restore the chief's backup but write nothing (torch),
    or only into a scratch folder of their own where saving is a collective (several JAX processes)."""
    import keras

    from kcnn.training import distribute
    from kcnn.training import callbacks as runs
    from kcnn.config import TrainConfig
    from kcnn.training.train import _callbacks

    config = TrainConfig(dataset="digits", arch="lenet5", image_size=32).resolved()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    class Worker(distribute.Plan):
        def __init__(self, index, scratch=None):
            super().__init__()
            self.worker, self.workers, self._scratch_dir = index, 2, scratch

        def scratch_dir(self):
            return self._scratch_dir

    def writers(callbacks):
        return {type(c).__name__: getattr(c, "write_dir", getattr(c, "filepath", getattr(c, "log_dir", None)))
                for c in callbacks if isinstance(c, (runs.CrashSafeBackup, runs.HistoryLog, runs.AtomicModelCheckpoint,
                                                      keras.callbacks.TensorBoard))}

    run_dir = str(tmp_path / "run")
    chief = writers(_callbacks(config, run_dir, model, model, 0, Worker(0)))
    assert set(chief) == {"CrashSafeBackup", "HistoryLog", "AtomicModelCheckpoint", "TensorBoard"}
    assert writers(_callbacks(config, run_dir, model, model, 0, Worker(1))) == {"CrashSafeBackup": False}
    scratch = str(tmp_path / "scratch")
    other = writers(_callbacks(config, run_dir, model, model, 0, Worker(1, scratch)))
    assert all(path.startswith(scratch) for path in other.values()) and "HistoryLog" not in other
    backup = next(c for c in _callbacks(config, run_dir, model, model, 0, Worker(1)) if isinstance(c, runs.CrashSafeBackup))
    assert backup.backup_dir == str(tmp_path / "run" / "backup")  # it restores the chief's backup
