"""Crash safety: a run killed with SIGKILL at each point of
tests/workers/crash_worker.py, then `--resume`d, ends with the same weights as a run
never interrupted (bit for bit: each backend on a CPU is deterministic for
these models), and no file in the run directory is ever corrupt: at the
moment of the kill, every file under its final name is whole.

Four groups of runs, each against its own uninterrupted reference:
- `kcnn train` (LeNet-5 on digits), killed at each kind of write;
- `kcnn train --schedule plateau --early-stopping 2`, whose reference lowers
  its learning rate and stops early, killed before and after those decisions
  (the callbacks' state, and EarlyStopping's best weights, are in the backup);
- `kcnn finetune` (EfficientNet-Lite0 on the CIFAR-10 sample), killed during
  the frozen-layer pass, in phase 1, in phase 2,
  while a phase's final weights, the model and the export are written;
- `kcnn train --augment crop_flip` on PyTorch and on JAX, killed mid-epoch.

The runs are processes on the TensorFlow backend (where the export runs in
the training process too), but for the PyTorch and JAX groups; four at a time
(each kill, then its resume)."""

import concurrent.futures
import csv
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from helpers import run_python, worker
import preloaded  # tests/workers/ (on sys.path: helpers)

RUN = ["train", "--dataset", "digits", "--arch", "lenet5", "--image-size", "32", "--epochs", "2",
       "--batch-size", "64", "--limit", "256", "--seed", "1"]
# The reference lowers the learning rate after epoch 6 (0-based) and stops there, restoring epoch 4's weights.
PLATEAU = ["train", "--dataset", "digits", "--arch", "lenet5", "--image-size", "32", "--epochs", "8",
           "--batch-size", "64", "--limit", "256", "--seed", "1", "--schedule", "plateau", "--early-stopping", "2",
           "--learning-rate", "0.01", "--optimizer", "adam"]
FINETUNE = ["finetune", "--limit", "96", "--image-size", "32", "--head-epochs", "6", "--finetune-epochs", "4",
            "--batch-size", "32", "--seed", "2"]  # fine-tuning exports unless --no-export
GROUPS = {  # group: (its run's arguments, {kill point: extra arguments of that run}, the reference's extra)
    "train": (RUN, {
        "batch:1:1": [],  # during the second epoch
        "backup:0": [],  # while the backup of the first epoch is written
        "best:0": [],  # while best.keras is written (the first epoch always saves one)
        "history:0": [],  # while history.csv is written
        "model": [],  # while the final model.keras is written
        "export": ["--export"],  # while the SavedModel is written
    }, []),
    "plateau": (PLATEAU, {
        "batch:5:1": [],  # early stopping's patience half used
        "backup:5": [],  # the backup of epoch 5 is torn: epoch 5 runs again from epoch 4's state
        "history:6": [],  # after the last epoch's decisions (stop, lower the rate), before its backup
        "model": [],  # after stopping early: the resumed run trains no more epochs and keeps epoch 4's weights
    }, []),
    "finetune": (FINETUNE, {
        "predict:1": ["--no-export"],  # the frozen-layer pass (its second predict())
        "fitbatch:0:2:1": ["--no-export"],  # phase 1 (the head), third epoch
        "final:head": ["--no-export"],  # while the head's final weights are written
        "fitbatch:1:1:0": ["--no-export"],  # phase 2 (the top blocks), second epoch
        "model": ["--no-export"],  # while model.keras is written
        "export": [],  # while the SavedModel is written
    }, ["--no-export"]),
}
# The same `kcnn train` with augmentation on the other two backends, killed mid-epoch (plain processes: the
# fork server holds TensorFlow's imports only). Their draws re-seed from (seed, batch number) on every backend.
AUGMENTED = [*RUN, "--augment", "crop_flip"]
GROUPS.update({
    "train_torch": (AUGMENTED, {"batch:1:1": []}, []),
    "train_jax": (AUGMENTED, {"batch:1:1": []}, []),
})
BACKEND = {"train_torch": "torch", "train_jax": "jax"}  # other groups: TensorFlow
KILLED = [(group, point) for group, (_, points, _) in GROUPS.items() for point in points]


def _start(args, log_path, backend="tensorflow"):
    """`python ARGS...` on `backend`; on TensorFlow forked from a process that imported TensorFlow and kcnn
    once (tests/workers/preloaded.py: the 35 runs would spend about 5 CPU-seconds each importing them)."""
    if backend == "tensorflow":
        return preloaded.start(args, log_path, "tensorflow")
    return run_python(list(args), backend, str(log_path))


def _tail(path):
    with open(path, errors="replace") as f:
        return f.read()[-3000:]


def _check_whole(run_dir):
    """Every file under its final name opens as what it claims to be."""
    import h5py

    for root, _, names in os.walk(run_dir):
        for name in names:
            path = os.path.join(root, name)
            if ".tmp." in name or os.path.basename(root).startswith(".") or "logs" in path or \
                    os.sep + "export" + os.sep + "." in path:
                continue  # temporaries (removed by --resume) and TensorBoard's append-only logs
            if name.endswith(".json"):
                json.load(open(path))
            elif name.endswith(".csv"):
                rows = list(csv.DictReader(open(path)))
                assert all(None not in row and all(v != "" for v in row.values()) for row in rows), path
            elif name.endswith(".keras"):
                assert zipfile.ZipFile(path).testzip() is None, path
            elif name.endswith(".h5"):
                h5py.File(path, "r").close()
            elif name.endswith(".png"):
                from PIL import Image

                Image.open(path).verify()
            elif name == "saved_model.pb":
                from tensorflow.core.protobuf import saved_model_pb2

                saved_model_pb2.SavedModel().ParseFromString(open(path, "rb").read())


def _name(group, point):
    return f"{group}_{point.replace(':', '_')}"


def _kill_then_resume(root, group, point):
    """(files at the kill, the resume's exit code): the killed run, then its --resume."""
    arguments, points, _ = GROUPS[group]
    name, extra = _name(group, point), points[point]
    run_dir = root / name
    crash_worker = worker("crash_worker")
    backend = BACKEND.get(group, "tensorflow")
    killed = _start([crash_worker, point, *arguments, *extra, "--output-dir", str(run_dir)], root / f"{name}.log",
                    backend)
    killed.wait(timeout=900)
    assert killed.returncode == -signal.SIGKILL, f"{name}: exit {killed.returncode}\n" + _tail(root / f"{name}.log")
    _check_whole(run_dir)
    state = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if "logs" not in p.parts)
    resumed = _start(["-m", "kcnn", *arguments, *extra, "--output-dir", str(run_dir), "--resume"],
                     root / f"{name}.resume.log", backend)
    resumed.wait(timeout=900)
    assert resumed.returncode == 0, _tail(root / f"{name}.resume.log")
    return state


def _reference(root, group):
    arguments, _, extra = GROUPS[group]
    process = _start(["-m", "kcnn", *arguments, *extra, "--output-dir", str(root / f"{group}_reference")],
                     root / f"{group}_reference.log", BACKEND.get(group, "tensorflow"))
    process.wait(timeout=900)
    assert process.returncode == 0, _tail(root / f"{group}_reference.log")


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 4 TensorFlow processes at a time (memory, 2 cores)
        references = [pool.submit(_reference, root, group) for group in GROUPS]
        runs = {(group, point): pool.submit(_kill_then_resume, root, group, point) for group, point in KILLED}
        for reference in references:
            reference.result()
        states = {key: future.result() for key, future in runs.items()}
    return root, states


def _weights(path):
    import h5py

    # model.keras is a zip holding model.weights.h5; read the arrays without a backend
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as f:
        with h5py.File(f, "r") as h5:
            arrays = {}
            h5.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                          else None)
    return arrays


@pytest.mark.parametrize("group, point", KILLED, ids=[_name(*key) for key in KILLED])
def test_killed_run_resumes_to_identical_weights(crashed_and_resumed, group, point):
    root, states = crashed_and_resumed
    run_dir = root / _name(group, point)
    reference_dir = root / f"{group}_reference"
    # the kill left the temporary it was writing (or, mid-epoch and mid-pass, nothing half-written)
    if point.split(":")[0] not in ("batch", "fitbatch", "predict"):
        assert any(".tmp." in name or "/." in name for name in states[(group, point)]), states[(group, point)]
    reference, resumed = _weights(reference_dir / "model.keras"), _weights(run_dir / "model.keras")
    assert reference.keys() == resumed.keys() and len(reference) >= 10
    for name in reference:
        np.testing.assert_array_equal(reference[name], resumed[name], err_msg=name)
    _check_whole(run_dir)
    left = [str(p) for p in run_dir.rglob("*") if ".tmp." in p.name or p.name.startswith(".") and
            p.name not in (".kcnn.lock", ".kcnn-files.json")]  # (the lock; the manifest)
    assert not left, left
    assert not (run_dir / "backup").exists()
    rows = list(csv.DictReader(open(run_dir / "history.csv")))
    reference_rows = list(csv.DictReader(open(reference_dir / "history.csv")))
    assert [int(row["epoch"]) for row in rows] == list(range(len(reference_rows)))  # each epoch once
    assert [(row.get("phase"), row["loss"], row["val_accuracy"]) for row in rows] == \
        [(row.get("phase"), row["loss"], row["val_accuracy"]) for row in reference_rows]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == len(reference_rows)
    assert metrics["accuracy"] == json.loads((reference_dir / "metrics.json").read_text())["accuracy"]
    if point == "export":
        assert (run_dir / "export" / "1" / "saved_model.pb").stat().st_size > 0
        assert metrics["export"].endswith(os.path.join("export", "1"))


def test_the_references_take_the_decisions_the_resumed_runs_must_repeat(crashed_and_resumed):
    """The plateau reference lowers its learning rate and stops early (so its kills test that state);
    the fine-tuning reference runs both phases."""
    root, _ = crashed_and_resumed
    plateau = list(csv.DictReader(open(root / "plateau_reference" / "history.csv")))
    assert len(plateau) < 8  # stopped early
    assert len({row["learning_rate"] for row in plateau}) == 1  # lowered after the last epoch's row was logged
    log = (root / "plateau_reference.log").read_text()
    assert "ReduceLROnPlateau reducing learning rate" in log and "early stopping" in log
    finetune = list(csv.DictReader(open(root / "finetune_reference" / "history.csv")))
    assert {row["phase"] for row in finetune} == {"head", "finetune"}


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    """While one process holds a run directory, another is refused and the
    directory is left as it was; once the holder dies, --resume goes on."""
    import kcnn
    from kcnn.runs.rundir import RunLockedError
    from kcnn.config import TrainConfig
    from kcnn.runs.rundir import config_record
    from kcnn.training.train import train

    run_dir = tmp_path / "run"
    config = dict(dataset="digits", arch="lenet5", image_size=32, epochs=1, batch_size=64, limit=128, verbose=0,
                  output_dir=str(run_dir))
    record = config_record(TrainConfig(**config).resolved(), "train")  # the holder's run: the same settings
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kcnn.runs.rundir import RunLock; import os; os.makedirs(sys.argv[1], exist_ok=True); "
        "lock = RunLock(sys.argv[1]).acquire(); "  # kept in a variable: a collected FileLock lets go
        "open(os.path.join(sys.argv[1], 'config.json'), 'w').write(sys.argv[2]); "
        "print('held', flush=True); time.sleep(600)"), str(run_dir), json.dumps(record)], stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        for extra in (dict(resume=True), dict(overwrite=True)):
            with pytest.raises(RunLockedError, match="Another kcnn process is writing to .*--resume"):
                train(TrainConfig(**config, **extra))
            assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
        # (the CLI's exit 2 for this case: tests/test_bad_input.py)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the kernel dropped its lock
    run = train(TrainConfig(**config, overwrite=True))
    assert run.metrics["epochs_run"] == 1
    assert isinstance(RunLockedError("x"), kcnn.KcnnError)
