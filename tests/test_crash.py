"""Crash safety: a training run killed with SIGKILL at each point of
tests/crash_worker.py, then `--resume`d, ends with the same weights as a run
never interrupted (bit for bit: TensorFlow on a CPU is deterministic for
this model), and no file in the run directory is ever corrupt: at the
moment of the kill, every file under its final name is whole.

The runs are processes of `kcnn train` on the TensorFlow backend, where
the export runs in the training process too. They run side by side (each
is mostly start-up), the kills first, then the resumes."""

import csv
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import TESTS_DIR

RUN = ["train", "--dataset", "digits", "--arch", "lenet5", "--image-size", "32", "--epochs", "2",
       "--batch-size", "64", "--limit", "256", "--seed", "1"]
KILL_POINTS = {  # point: extra arguments of that run
    "batch:1:1": [],  # during the second epoch
    "backup:0": [],  # while the backup of the first epoch is written
    "best:0": [],  # while best.keras is written (the first epoch always saves one)
    "history:0": [],  # while history.csv is written
    "model": [],  # while the final model.keras is written
    "export": ["--export"],  # while the SavedModel is written
}


def _start(args, log_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


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


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    worker = os.path.join(TESTS_DIR, "crash_worker.py")
    reference = _start(["-m", "kcnn", *RUN, "--output-dir", str(root / "reference")], root / "reference.log")
    killed = {point: _start([worker, point, *RUN, *extra, "--output-dir", str(root / point.replace(":", "_"))],
                            root / f"{point.replace(':', '_')}.log")
              for point, extra in KILL_POINTS.items()}
    states = {}
    for point, process in killed.items():
        process.wait(timeout=600)
        run_dir = root / point.replace(":", "_")
        assert process.returncode == -signal.SIGKILL, f"{point}: exit {process.returncode}\n" + \
            _tail(root / f"{point.replace(':', '_')}.log")
        _check_whole(run_dir)
        states[point] = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if "logs" not in p.parts)
    resumed = {point: _start(["-m", "kcnn", *RUN, *extra, "--output-dir", str(root / point.replace(":", "_")),
                              "--resume"], root / f"{point.replace(':', '_')}.resume.log")
               for point, extra in KILL_POINTS.items()}
    for point, process in resumed.items():
        process.wait(timeout=600)
        assert process.returncode == 0, _tail(root / f"{point.replace(':', '_')}.resume.log")
    reference.wait(timeout=600)
    assert reference.returncode == 0, _tail(root / "reference.log")
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


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_run_resumes_to_identical_weights(crashed_and_resumed, point):
    root, states = crashed_and_resumed
    run_dir = root / point.replace(":", "_")
    # the kill left the temporary it was writing (or, mid-epoch, nothing half-written)
    if point != "batch:1:1":
        assert any(".tmp." in name or "/." in name for name in states[point]), states[point]
    reference, resumed = _weights(root / "reference" / "model.keras"), _weights(run_dir / "model.keras")
    assert reference.keys() == resumed.keys() and len(reference) >= 10
    for name in reference:
        np.testing.assert_array_equal(reference[name], resumed[name], err_msg=name)
    _check_whole(run_dir)
    left = [str(p) for p in run_dir.rglob("*") if ".tmp." in p.name or p.name.startswith(".") and
            p.name != ".kcnn.lock"]
    assert not left, left
    assert not (run_dir / "backup").exists()
    rows = list(csv.DictReader(open(run_dir / "history.csv")))
    assert [int(row["epoch"]) for row in rows] == [0, 1]  # each epoch once
    reference_rows = list(csv.DictReader(open(root / "reference" / "history.csv")))
    assert [row["loss"] for row in rows] == [row["loss"] for row in reference_rows]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2
    if "--export" in KILL_POINTS[point]:
        assert (run_dir / "export" / "1" / "saved_model.pb").stat().st_size > 0
        assert metrics["export"].endswith(os.path.join("export", "1"))


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    """While one process holds a run directory, another is refused and the
    directory is left as it was; once the holder dies, --resume goes on."""
    import kcnn
    from kcnn import runs
    from kcnn.train import TrainConfig, _config_record, train

    run_dir = tmp_path / "run"
    config = dict(dataset="digits", arch="lenet5", image_size=32, epochs=1, batch_size=64, limit=128, verbose=0,
                  output_dir=str(run_dir))
    record = _config_record(TrainConfig(**config).resolved())  # the holder's run: the same settings
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kcnn import runs; import os; os.makedirs(sys.argv[1], exist_ok=True); "
        "lock = runs.RunLock(sys.argv[1]).acquire(); "  # kept in a variable: a collected FileLock lets go
        "open(os.path.join(sys.argv[1], 'config.json'), 'w').write(sys.argv[2]); "
        "print('held', flush=True); time.sleep(600)"), str(run_dir), json.dumps(record)], stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        for extra in (dict(resume=True), dict(overwrite=True)):
            with pytest.raises(runs.RunLockedError, match="Another kcnn process is writing to .*--resume"):
                train(TrainConfig(**config, **extra))
            assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
        # (the CLI's exit 2 for this case: tests/test_bad_input.py)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the kernel dropped its lock
    run = train(TrainConfig(**config, overwrite=True))
    assert run.metrics["epochs_run"] == 1
    assert isinstance(runs.RunLockedError("x"), kcnn.KcnnError)
