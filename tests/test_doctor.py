"""`kcnn doctor`: backends, data and weights found, and checksums, on the real shared data."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from kcnn import cli
from kcnn.cli import doctor
from kcnn.data import sources

DATA_DIR = os.environ["KCNN_DATA_DIR"]  # set by conftest.py: the official files


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache, so that only the data folders given count."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def by_name(checks):
    return {check.name: check for check in checks}


def test_the_shared_data_is_found_and_matches(keras_home):
    assert not os.path.exists(os.path.join(DATA_DIR, sources.CIFAR10_PYTHON.folder)), \
        "the shared data now holds the python version of CIFAR-10: update this test"
    report = doctor.doctor(check_backends=False)

    assert report.data_roots == [(DATA_DIR, "KCNN_DATA_DIR"),
                                 (str(keras_home / "datasets"), "Keras cache; downloads go here, does not exist")]
    mnist = report.datasets["MNIST"]
    assert [c.name for c in mnist] == [f.name for f in sources.MNIST.files]
    for check in mnist:
        assert check.status == doctor.MATCHES, check
        assert check.path == os.path.join(DATA_DIR, "mnist", check.name)
    binary = by_name(report.datasets["CIFAR-10, binary version"])
    for i in range(1, 6):
        check = binary[f"data_batch_{i}.bin"]
        assert check.status == doctor.MATCHES, check
        assert check.path == os.path.join(DATA_DIR, "cifar10", "cifar-10-batches-bin", check.name)
    assert binary["test_batch.bin"].status in (doctor.MATCHES, doctor.MISSING)
    [partial] = report.datasets["CIFAR-10, first 1,000 test images"]
    assert partial.status == doctor.MATCHES and partial.path.startswith(DATA_DIR)
    python_version = report.datasets["CIFAR-10, python version"]
    assert len(python_version) == 6 and {c.status for c in python_version} == {doctor.MISSING}
    assert report.sample.status == doctor.MATCHES

    weights = by_name(report.weights)
    assert weights["efficientnet_lite0 imagenet"].status == doctor.MATCHES  # ships in a kcnn dependency
    assert weights["resnet50 imagenet"].status == doctor.MISSING
    assert report.weights_folders[0] == (str(keras_home / "models"), "Keras cache: downloads go here")
    assert report.failures == []

    text = doctor.format_report(report)
    assert "Backends: not checked" in text
    assert re.search(r"data_batch_1\.bin\s+matches\s+" + re.escape(binary["data_batch_1.bin"].path), text)
    assert re.search(r"data_batch_1\s+missing$", text, re.MULTILINE)
    assert text.splitlines()[-1] == "all present files match their published checksums"


def test_a_corrupt_copy_before_the_real_one_fails_and_the_cli_exits_1(tmp_path, keras_home, capsys):
    real = os.path.join(DATA_DIR, "mnist")
    mine = tmp_path / "data" / "mnist"
    mine.mkdir(parents=True)
    flipped = bytearray(open(os.path.join(real, "train-labels-idx1-ubyte.gz"), "rb").read())
    flipped[100] ^= 0xFF  # the right size, the wrong bytes: only the sha1 can tell
    (mine / "train-labels-idx1-ubyte.gz").write_bytes(bytes(flipped))
    shutil.copyfile(os.path.join(real, "t10k-labels-idx1-ubyte.gz"), mine / "t10k-labels-idx1-ubyte.gz")
    with open(mine / "t10k-labels-idx1-ubyte.gz", "ab") as f:
        f.write(b"\0")  # one byte too many

    report = doctor.doctor(tmp_path / "data", check_backends=False)
    mnist = by_name(report.datasets["MNIST"])
    labels = mnist["train-labels-idx1-ubyte.gz"]
    assert labels.status == doctor.MISMATCH and labels.path == str(mine / "train-labels-idx1-ubyte.gz")
    assert "published 2a80914081dc54586dbdf242f9805a6b8d2a15fc" in labels.detail
    assert mnist["t10k-labels-idx1-ubyte.gz"].detail == "4,543 bytes, published 4,542"
    assert mnist["train-images-idx3-ubyte.gz"].status == doctor.MATCHES  # the next folder still counts
    assert mnist["train-images-idx3-ubyte.gz"].path.startswith(DATA_DIR)
    assert len(report.failures) == 2

    assert cli.main(["doctor", "--data-dir", str(tmp_path / "data"), "--no-backends"]) == 1
    out = capsys.readouterr().out
    assert f"  {tmp_path / 'data'}  (--data-dir)" in out
    assert re.search(r"train-labels-idx1-ubyte\.gz\s+does not match\s+" + re.escape(str(mine)), out)
    assert out.splitlines()[-1] == (f"2 file(s) do not match: {mine / 'train-labels-idx1-ubyte.gz'}, "
                                    f"{mine / 't10k-labels-idx1-ubyte.gz'}")


def test_weights_in_the_keras_cache_are_checked(keras_home):
    models = keras_home / "models"
    models.mkdir(parents=True)
    (models / "resnet50_weights_tf_dim_ordering_tf_kernels.h5").write_bytes(b"not the official file")
    (models / "mobilenet_1_0_224_tf.h5").write_bytes(b"Keras publishes no checksum for this one")

    report = doctor.doctor(check_backends=False)
    weights = by_name(report.weights)
    assert weights["resnet50 imagenet"].status == doctor.MISMATCH
    assert weights["resnet50 imagenet"].path == str(models / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    assert weights["mobilenet imagenet"].status == doctor.UNVERIFIED  # reported, not a failure
    assert [c.name for c in report.failures] == ["resnet50 imagenet"]


def test_the_command_probes_every_backend(tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "kcnn", "doctor"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^  (tensorflow|torch|jax) +(\S+) +GPUs: (\d+)", result.stdout, re.MULTILINE)
    assert sorted(name for name, _, _ in rows) == ["jax", "tensorflow", "torch"], result.stdout
    for name, version, gpus in rows:
        assert version == importlib.metadata.version(name)
        if not os.path.exists("/dev/nvidiactl"):  # no NVIDIA driver here: no backend can see a GPU
            assert gpus == "0"
    assert f"Keras backend  {os.environ['KERAS_BACKEND']} (from KERAS_BACKEND)" in result.stdout
    assert result.stdout.rstrip().endswith("all present files match their published checksums")


def test_a_broken_backend_is_reported_and_the_doctor_completes(keras_home, monkeypatch):
    # Stand-ins for the three probes, so that no real backend is imported here (the test above does that).
    monkeypatch.setitem(doctor.PROBES, "tensorflow", "import json\n"
                        "print(json.dumps({'version': '2.99.0', 'gpus': ['NVIDIA H100 80GB HBM3']}))")
    monkeypatch.setitem(doctor.PROBES, "torch", "import sys; sys.exit('RuntimeError: simulated CUDA driver too old')")
    monkeypatch.setitem(doctor.PROBES, "jax", "import time; time.sleep(60)")
    monkeypatch.setitem(doctor.PROBES, "no_such_backend_kcnn", "raise SystemExit('never run')")
    monkeypatch.setattr(doctor, "PROBE_TIMEOUT_S", 3)

    started = time.monotonic()
    report = doctor.doctor(check_backends=True)
    assert time.monotonic() - started < 30  # the hung probe was given up on, not waited for

    backends = by_name(report.backends)
    assert backends["tensorflow"] == doctor.BackendCheck("tensorflow", "ok", "2.99.0", ("NVIDIA H100 80GB HBM3",))
    assert backends["torch"].status == "broken"
    assert backends["torch"].reason == "RuntimeError: simulated CUDA driver too old"
    assert backends["jax"] == doctor.BackendCheck("jax", "broken", reason="no answer within 3 s")
    assert backends["no_such_backend_kcnn"].status == "not installed"
    text = doctor.format_report(report)
    assert "  tensorflow  2.99.0         GPUs: 1 (NVIDIA H100 80GB HBM3)" in text
    assert "  torch       broken: RuntimeError: simulated CUDA driver too old" in text
    assert "  jax         broken: no answer within 3 s" in text
    assert text.splitlines()[-1] == "all present files match their published checksums"
