"""The table of bad inputs (README, "Troubleshooting").

Each row is one mistake a user makes, tried through the Python API and,
where the CLI can express it, through `kcnn ...`: the API raises the row's
kcnn error type with one sentence (no line break) that names the problem and
the fix; the CLI exits 2 with that sentence and no traceback; and every file
that existed before is byte for byte and timestamp for timestamp as it was.
Rows whose `writes` is False also leave no new file behind.

The CLI rows call `kcnn.cli.main` in this process (a real `python -m kcnn`
per row would cost a minute of start-ups; tests/test_cli.py and the last
test here run real processes). `BAD_INPUTS` is the table.
"""

import dataclasses
import errno
import gzip
import json
import os
import struct
import zlib
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

import kcnn
import kcnn.data
import kcnn.inspect.explain
import kcnn.deploy.export
import kcnn.deploy.serve
from kcnn.runs import rundir
from kcnn.data.files import ChecksumError, DatasetNotFoundError
from kcnn.data.folder import CorruptImageError, EmptyDatasetError, ImageSizeError
from kcnn.config import TrainConfig, read_config_file
from kcnn.errors import DivergedError, InvalidArgumentError, KcnnError, UnknownModelError
from kcnn.deploy.export import ExportError
from kcnn.deploy.serve import ServeError
from kcnn.runs.rundir import load_run
from kcnn.training.evaluate import evaluate_run, predict_files
from kcnn.weights import WeightsError

DIGITS = ["--dataset", "digits", "--arch", "lenet5", "--image-size", "32", "--epochs", "1", "--limit", "128",
          "--batch-size", "64"]


def train_config(tmp, **changes):
    values = dict(dataset="digits", arch="lenet5", image_size=32, epochs=1, limit=128, batch_size=64, verbose=0,
                  output_dir=str(tmp / "run"))
    values.update(changes)
    return TrainConfig(**values)


def train(tmp, **changes):
    from kcnn.training.train import train as run

    return run(train_config(tmp, **changes))


def finetune(tmp, **changes):
    from kcnn.config import FinetuneConfig
    from kcnn.training.finetune import finetune as run

    values = dict(limit=64, head_epochs=1, finetune_epochs=0, verbose=0, export=False, output_dir=str(tmp / "ft"))
    values.update(changes)
    return run(FinetuneConfig(**values))


# ---- files the rows start from ------------------------------------------------------


def png_bytes(size=(8, 8), seed=0):
    import io

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width, height):
    """A PNG whose header claims width x height grey pixels, all zeros:
    the IDAT is a few KB whatever the size (zlib of zero rows)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # 64 rows only: the header is what gets checked
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def image_folder(root, classes=("cat", "dog"), per_class=3, size=(8, 8)):
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png_bytes(size, seed=10 * c + i))
    return root


def finished_run(tmp):
    """A run directory with a real config.json and placeholder results."""
    from kcnn.runs.rundir import config_record

    run_dir = tmp / "run"
    run_dir.mkdir()
    config = train_config(tmp).resolved()
    (run_dir / "config.json").write_text(json.dumps(config_record(config, "train")))
    (run_dir / "model.keras").write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: the user's, untouched
    (run_dir / "metrics.json").write_text(json.dumps({"class_names": [str(d) for d in range(10)]}))
    return run_dir


def users_folder(root, config_json=False):
    """A folder of the user's own files, named as a run's would be (and, `config_json`, a config.json
    that kcnn did not write): kcnn must leave every byte of it alone."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.keras").write_bytes(b"the user's own model")
    (root / "history.csv").write_text("epoch,loss\n0,1.0\n")
    if config_json:
        (root / "config.json").write_text(json.dumps({"arch": "lenet5", "epochs": 1}))
        (root / "metrics.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    return root


def copied_record(tmp):
    """The user's folder `run`, with a config.json copied from a kcnn run in another folder."""
    from kcnn.runs.rundir import config_record

    folder = users_folder(tmp / "run")
    record = config_record(train_config(tmp, output_dir=str(tmp / "elsewhere")).resolved(), "train")
    (folder / "config.json").write_text(json.dumps(record))
    return folder


def linked(folder, name, tmp):
    """`folder/name`, a symbolic link to a folder of the user's beside it (`outside/`, with a file)."""
    (tmp / "outside").mkdir(exist_ok=True)
    (tmp / "outside" / "model.tmp.keras").write_bytes(b"the user's")
    os.symlink(tmp / "outside", folder / name)
    return folder


def finetune_run(tmp):
    """A fine-tuning run directory with a real config.json (kcnn's marker) and placeholder results."""
    from kcnn.config import FinetuneConfig
    from kcnn.runs.rundir import config_record

    run_dir = tmp / "ft"
    run_dir.mkdir()
    config = FinetuneConfig(limit=64, head_epochs=1, finetune_epochs=0, verbose=0, export=False,
                            output_dir=str(run_dir)).resolved()
    (run_dir / "config.json").write_text(json.dumps(config_record(config, "finetune")))
    (run_dir / "backup").mkdir()  # not finished
    return run_dir


def tiny_model_file(path):
    import keras

    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(path)
    return path


def tiny_conv_model():
    """A convolution, then a Dense layer (zero initializers: nothing compiled on JAX)."""
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, kernel_initializer="zeros", name="conv")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="zeros", name="dense")(
        keras.layers.Flatten()(x)))


def tiny_dense_model():
    import keras

    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="zeros")(keras.layers.Flatten()(inputs)))


def explain_run(tmp, model_file_writer=lambda path: tiny_conv_model().save(path)):
    """A run directory with a small model, and an image x.png to explain."""
    _written(tmp / "x.png", png_bytes())
    return run_with_model(tmp, model_file_writer)


def nan_model_file(path):
    """A model whose weights diverged: its bias is NaN."""
    import keras

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, np.full_like(bias, np.nan)])
    model.save(path)
    return path


def infinite_model():
    import keras

    inputs = keras.Input((8, 8, 1))
    layer = keras.layers.Dense(2, bias_initializer=keras.initializers.Constant(np.inf))
    return keras.Model(inputs, layer(keras.layers.Flatten()(inputs)), name="infinite")


def zip_bomb_file(path):
    """A zip named .keras whose weights unpack to 300 MB of zeros from a few hundred KB."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w") as f:
            for _ in range(300):
                f.write(bytes(1 << 20))
    return path


def many_members_file(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for number in range(10_001):
            archive.writestr(f"assets/{number}", b"")
    return path


def truncated_model_file(path):
    tiny_model_file(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _with_image(tmp, result):
    _written(tmp / "x.png", png_bytes())
    return result


def _users_overlay(tmp):
    """A run, an image, and a folder holding the user's own x_gradcam.png (no mark of kcnn's)."""
    run_with_model(tmp, lambda path: tiny_conv_model().save(path))
    Image.fromarray(np.zeros((8, 8), "uint8")).save(tmp / "x.png")
    (tmp / "mine").mkdir()
    Image.fromarray(np.full((8, 8), 200, "uint8")).save(tmp / "mine" / "x_gradcam.png")
    return tmp / "mine"


def _read_only_with_run(tmp, mp):
    run_with_model(tmp, lambda path: tiny_conv_model().save(path))
    Image.fromarray(np.zeros((8, 8), "uint8")).save(tmp / "x.png")
    return read_only(tmp, mp)


def _disk_full_at_copy(tmp, mp):
    """A run, and a disk that fills up while its model is copied into an export (a mock at the copy)."""
    import shutil

    run_with_model(tmp, tiny_model_file)

    def full(source, temporary):
        with open(temporary, "wb") as f:
            f.write(b"PK")  # part of the file, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(temporary))

    mp.setattr(shutil, "copyfile", full)


def _odd_lock(tmp, link):
    (tmp / "run").mkdir()
    if link:
        (tmp / "mine.txt").write_text("the user's notes")
        os.symlink(tmp / "mine.txt", tmp / "run" / ".kcnn.lock")
    else:
        (tmp / "run" / ".kcnn.lock").mkdir()


def any_size_model():
    import keras

    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))


def run_with_model(tmp, model_file_writer):
    run_dir = tmp / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"dataset": "digits", "arch": "lenet5"}))
    (run_dir / "metrics.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    model_file_writer(run_dir / "model.keras")
    return run_dir


def lambda_model_file(path):
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)  # code inside the file: safe mode refuses it
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(outputs))).save(path)
    return path


def fake_mnist(tmp, mp, truncated=False):
    """KCNN_DATA_DIR holding MNIST files with the right names and wrong bytes."""
    folder = tmp / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        real = os.path.join(os.environ["KCNN_DATA_DIR"], "mnist", name)
        data = open(real, "rb").read()
        (folder / name).write_bytes(data[: len(data) // 2] if truncated else gzip.compress(b"\x00" * 64))
    mp.setenv("KCNN_DATA_DIR", str(tmp / "data"))
    mp.setenv("KERAS_HOME", str(tmp / "keras_home"))


def read_only(tmp, mp):
    """A folder the process cannot write into. Root ignores permission bits,
    so as root the refusal the OS would give is raised at the same call."""
    folder = tmp / "readonly"
    folder.mkdir()
    (folder / "keep.txt").write_text("the user's")
    os.chmod(folder, 0o555)
    if os.geteuid() == 0:
        makedirs = os.makedirs

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(folder)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return makedirs(path, *args, **kwargs)

        mp.setattr(os, "makedirs", refuse)
    return folder


def disk_full_at_save(tmp, mp):
    """The disk fills up while model.keras is written (a mock at the write call)."""
    import keras

    def full(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK")  # part of the file, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    mp.setattr(keras.Model, "save", full)


def held_lock(tmp, mp):
    run_dir = tmp / "run"
    run_dir.mkdir()
    lock = rundir.RunLock(str(run_dir)).acquire()  # as another process would hold it
    mp.setattr(rundir, "_test_lock", lock, raising=False)  # released when the test's monkeypatch undoes
    return run_dir


def weights_checkpoint(tmp):
    """A real state dict of EfficientNet-Lite0, for the wrong architecture rows."""
    from kcnn.weights import get_source, loading

    return loading.fetch(get_source("efficientnet_lite0", "imagenet"))


# ---- the table --------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    name: str
    error: type
    message: str  # a regular expression the sentence must match (the problem, then the fix)
    api: Callable  # (tmp, paths) -> the call that must fail
    cli: Optional[Callable] = None  # (tmp, paths) -> argv of `kcnn`
    setup: Callable = lambda tmp, mp: None  # (tmp, monkeypatch) -> paths, the files a row starts from
    writes: bool = False  # True: the row may add files (e.g. the run it refused to finish), never change old ones


BAD_INPUTS = [
    # -- names and shapes --
    Row("unknown model name", UnknownModelError, r"Unknown model 'resnet5O'.*resnet50",
        lambda t, p: kcnn.build("resnet5O"), lambda t, p: ["info", "resnet5O"]),
    Row("input too small for the architecture", InvalidArgumentError, r"lenet5.*at least 12",
        lambda t, p: kcnn.build("lenet5", input_shape=(8, 8, 1)),
        lambda t, p: ["summary", "lenet5", "--input-shape", "8,8,1"]),
    Row("input shape without channels", InvalidArgumentError, r"input_shape",
        lambda t, p: kcnn.build("lenet5", input_shape=(32, 32)),
        lambda t, p: ["summary", "lenet5", "--input-shape", "32,32"]),
    Row("zero classes", InvalidArgumentError, r"num_classes", lambda t, p: kcnn.build("lenet5", num_classes=0)),
    Row("unknown dataset", InvalidArgumentError, r"Unknown dataset 'imagenet'.*folder",
        lambda t, p: train(t, dataset="imagenet"), lambda t, p: ["train", "--dataset", "imagenet"]),
    Row("dataset folder misspelt", InvalidArgumentError, r"There is no folder 'pet/'; did you mean 'pets/'\?",
        lambda t, p: train(t, dataset="pet/"), lambda t, p: ["train", "--dataset", "pet/"],
        setup=lambda t, mp: os.makedirs(t / "pets")),
    Row("unknown keyword of kcnn.train", InvalidArgumentError, r"kcnn.train has no setting 'epoch' \(did you mean "
        r"epochs\?\)", lambda t, p: kcnn.train(dataset="digits", epoch=1, output_dir=str(t / "run"))),
    # -- training settings --
    Row("learning rate of zero", InvalidArgumentError, r"learning_rate must be a number above 0",
        lambda t, p: train(t, learning_rate=0.0), lambda t, p: ["train", *DIGITS, "--learning-rate", "0"]),
    Row("zero epochs", InvalidArgumentError, r"epochs must be a whole number of at least 1",
        lambda t, p: train(t, epochs=0), lambda t, p: ["train", *DIGITS, "--epochs", "0"]),
    Row("batch larger than the dataset", InvalidArgumentError, r"batch_size 4096 is larger than the 128",
        lambda t, p: train(t, batch_size=4096), lambda t, p: ["train", *DIGITS, "--batch-size", "4096"]),
    Row("label smoothing of 1.5", InvalidArgumentError, r"label_smoothing must be in \[0, 1\)",
        lambda t, p: train(t, label_smoothing=1.5), lambda t, p: ["train", *DIGITS, "--label-smoothing", "1.5"]),
    Row("image size of zero", InvalidArgumentError, r"image_size must be a whole number",
        lambda t, p: train(t, image_size=0), lambda t, p: ["train", *DIGITS, "--image-size", "0"]),
    Row("unknown recipe", InvalidArgumentError, r"Unknown recipe 'fast' for digits; the recipes for digits are plain",
        lambda t, p: train(t, recipe="fast"), lambda t, p: ["train", *DIGITS, "--recipe", "fast"]),
    Row("config file with a misspelt setting", InvalidArgumentError,
        r"The config file .*lab.yaml has settings TrainConfig does not know \(epoch\); the known ones are in",
        lambda t, p: read_config_file(str(p), TrainConfig),
        lambda t, p: ["train", "--config", str(p), "--output-dir", str(t / "run")],
        setup=lambda t, mp: _written(t / "lab.yaml", b"arch: lenet5\nepoch: 3\n")),
    Row("unknown test-time augmentation", InvalidArgumentError,
        r"Unknown test-time augmentation 'mirror'; choose flip or flip_crop",
        lambda t, p: finetune(t, tta="mirror")),
    Row("unknown class weighting", InvalidArgumentError, r"Unknown class weighting 'equal'; pass 'balanced'",
        lambda t, p: train(t, class_weight="equal")),
    Row("test-time augmentation on a model of any input size", InvalidArgumentError,
        r"Test-time augmentation needs a model of fixed input size.*input_shape",
        lambda t, p: predict_files(any_size_model(), [p], ["a", "b"], tta="flip"),
        setup=lambda t, mp: _written(t / "cat.png", png_bytes())),
    Row("test-time augmentation in a .keras export", ExportError,
        r"cannot hold test-time augmentation; export saved_model or onnx with --tta",
        lambda t, p: kcnn.deploy.export.export(p, "keras", tta="flip"),
        lambda t, p: ["export", str(p), "--format", "keras", "--tta"],
        setup=lambda t, mp: run_with_model(t, tiny_model_file)),
    Row("resume and overwrite together", InvalidArgumentError, r"resume and overwrite contradict",
        lambda t, p: train(t, resume=True, overwrite=True),
        lambda t, p: ["train", *DIGITS, "--resume", "--overwrite"]),
    Row("learning rate so large the loss becomes NaN", DivergedError,
        r"diverged in epoch 1: the training loss became (NaN|infinite|\S+) in batch \d+, and nothing was saved "
        r"as a finished model; pass a lower learning rate \(--learning-rate, it was 1e\+12\)",
        lambda t, p: train(t, learning_rate=1e12, optimizer="sgd"),
        lambda t, p: ["train", *DIGITS, "--learning-rate", "1e12", "--optimizer", "sgd",
                      "--output-dir", str(t / "run")], writes=True),
    Row("fine-tuning head learning rate so large it diverges", DivergedError,
        r"diverged in epoch 1 of phase 1 \(the head\).*nothing was saved as a finished model; pass a lower head "
        r"learning rate \(--head-learning-rate, it was 1e\+09\)",
        lambda t, p: finetune(t, head_learning_rate=1e9),
        lambda t, p: ["finetune", "--limit", "64", "--head-epochs", "1", "--finetune-epochs", "0", "--no-export",
                      "--head-learning-rate", "1e9", "--output-dir", str(t / "ft")], writes=True),
    Row("limit of zero images", InvalidArgumentError, r"limit must be a whole number of at least 1\. Received: limit=0",
        lambda t, p: train(t, limit=0), lambda t, p: ["train", *DIGITS, "--limit", "0"]),
    Row("negative limit", InvalidArgumentError, r"limit must be a whole number of at least 1\. Received: limit=-5",
        lambda t, p: finetune(t, limit=-5), lambda t, p: ["finetune", "--limit", "-5"]),
    Row("image size beyond any memory", InvalidArgumentError, r"image_size must be at most 4096 pixels",
        lambda t, p: finetune(t, image_size=100_000), lambda t, p: ["finetune", "--image-size", "100000"]),
    Row("learning rate that is not a finite number", InvalidArgumentError,
        r"learning_rate must be a finite number\. Received: learning_rate=inf",
        lambda t, p: train(t, learning_rate=float("inf")),
        lambda t, p: ["train", *DIGITS, "--learning-rate", "inf"]),
    Row("fine-tuning learning rate that is not a number", InvalidArgumentError,
        r"finetune_learning_rate must be a finite number\. Received: finetune_learning_rate=nan",
        lambda t, p: finetune(t, finetune_learning_rate=float("nan")),
        lambda t, p: ["finetune", "--finetune-learning-rate", "nan"]),
    Row("class folder whose name holds a line break", InvalidArgumentError,
        r"class name 'a\\nb' \(a sub-folder of .*lines\) holds a line break.*class_names\.txt.*rename it",
        lambda t, p: train(t, dataset=str(p), batch_size=2),
        lambda t, p: ["train", "--dataset", str(p), "--arch", "lenet5", "--image-size", "32", "--epochs", "1",
                      "--batch-size", "2", "--output-dir", str(t / "run")],
        setup=lambda t, mp: image_folder(t / "lines", classes=("a\nb", "c"))),
    # -- models that diverged, model files that are not what they claim --
    Row("run whose model's weights are NaN", DivergedError,
        r"model\.keras gives NaN or infinite outputs.*lower learning rate",
        lambda t, p: load_run(p), lambda t, p: ["predict", str(p), str(t / "x.png")],
        setup=lambda t, mp: _with_image(t, run_with_model(t, nan_model_file))),
    Row("evaluate a run whose model's weights are NaN", DivergedError, r"gives NaN or infinite outputs",
        lambda t, p: evaluate_run(p), lambda t, p: ["evaluate", str(p)],
        setup=lambda t, mp: run_with_model(t, nan_model_file)),
    Row("export a run whose model's weights are NaN", DivergedError, r"gives NaN or infinite outputs",
        lambda t, p: kcnn.deploy.export.export(p, "keras", str(t / "out")),
        lambda t, p: ["export", str(p), "--format", "keras", "--output", str(t / "out")],
        setup=lambda t, mp: run_with_model(t, nan_model_file)),
    Row("predict with an in-memory model whose outputs are infinite", DivergedError,
        r"The model 'infinite' gives NaN or infinite outputs",
        lambda t, p: predict_files(infinite_model(), [p], ["a", "b"]),
        setup=lambda t, mp: _written(t / "x.png", png_bytes())),
    Row(".keras file that unpacks to a hundred times its size", KcnnError,
        r"model\.keras unpacks to 300 MB from 0\.\d MB, over 100 times its size.*not a Keras model file",
        lambda t, p: load_run(p), lambda t, p: ["predict", str(p), str(t / "x.png")],
        setup=lambda t, mp: _with_image(t, run_with_model(t, zip_bomb_file))),
    Row(".keras file with ten thousand members", KcnnError,
        r"model\.keras holds 10,001 files, over the 10,000 a \.keras model may hold",
        lambda t, p: load_run(p), lambda t, p: ["export", str(p), "--format", "onnx"],
        setup=lambda t, mp: run_with_model(t, many_members_file)),
    Row("truncated .keras file", KcnnError,
        r"model\.keras is not a complete \.keras file \(a truncated or damaged zip.*save or copy the model again",
        lambda t, p: load_run(p), lambda t, p: ["evaluate", str(p)],
        setup=lambda t, mp: run_with_model(t, truncated_model_file)),
    Row("model.keras that is a named pipe", KcnnError,
        r"model\.keras is a named pipe \(FIFO\), not a model file; pass the directory of a finished run",
        lambda t, p: load_run(p), lambda t, p: ["predict", str(p), str(t / "x.png")],
        setup=lambda t, mp: _with_image(t, run_with_model(t, os.mkfifo))),
    # -- explain and export write only their own files --
    Row("explain over a file the user wrote", InvalidArgumentError,
        r"x_gradcam\.png exists and kcnn explain did not write it.*another --output folder",
        lambda t, p: kcnn.inspect.explain.explain_files(tiny_conv_model(), [t / "x.png"], ["a", "b"], p),
        lambda t, p: ["explain", str(t / "run"), str(t / "x.png"), "--output", str(p)],
        setup=lambda t, mp: _users_overlay(t)),
    Row("explain into a read-only folder", rundir.RunWriteError,
        r"Could not write .*readonly.*output directory you can write to \(--output\)",
        lambda t, p: kcnn.inspect.explain.explain_files(tiny_conv_model(), [t / "x.png"], ["a", "b"], p / "out"),
        lambda t, p: ["explain", str(t / "run"), str(t / "x.png"), "--output", str(p / "out")],
        setup=lambda t, mp: _read_only_with_run(t, mp)),
    Row("export into a read-only folder", rundir.RunWriteError,
        r"Could not write .*readonly.*output directory you can write to \(--output\)",
        lambda t, p: kcnn.deploy.export.export(t / "run", "keras", str(p / "out")),
        lambda t, p: ["export", str(t / "run"), "--format", "keras", "--output", str(p / "out")],
        setup=lambda t, mp: _read_only_with_run(t, mp)),
    Row("disk full during an export", rundir.RunWriteError,
        r"No space left on device.*free some disk space, then export again",
        lambda t, p: kcnn.deploy.export.export(t / "run", "keras", str(t / "out")),
        lambda t, p: ["export", str(t / "run"), "--format", "keras", "--output", str(t / "out")],
        setup=lambda t, mp: _disk_full_at_copy(t, mp)),
    # -- output folders --
    Row("lock file that is a link to the user's file", rundir.RunLockedError,
        r"\.kcnn\.lock is not kcnn's lock file \(it is a link, a folder or a special file\).*remove it",
        lambda t, p: train(t), lambda t, p: ["train", *DIGITS, "--output-dir", str(t / "run")],
        setup=lambda t, mp: _odd_lock(t, link=True)),
    Row("lock file that is a folder", rundir.RunLockedError, r"\.kcnn\.lock is not kcnn's lock file",
        lambda t, p: train(t), lambda t, p: ["train", *DIGITS, "--output-dir", str(t / "run")],
        setup=lambda t, mp: _odd_lock(t, link=False)),
    Row("output folder that already holds a run", KcnnError, r"already holds a run.*--resume.*--overwrite",
        lambda t, p: train(t), lambda t, p: ["train", *DIGITS, "--output-dir", str(t / "run")],
        setup=lambda t, mp: finished_run(t)),
    Row("resume with other settings", KcnnError, r"other settings \(epochs\).*same ones",
        lambda t, p: train(t, epochs=3, resume=True),
        lambda t, p: ["train", *DIGITS, "--epochs", "3", "--resume", "--output-dir", str(t / "run")],
        setup=lambda t, mp: finished_run(t)),
    Row("output folder holding the user's own files", KcnnError,
        r"run holds files kcnn did not write \(history.csv, model.keras\).*new or empty output directory",
        lambda t, p: train(t), lambda t, p: ["train", *DIGITS, "--output-dir", str(t / "run")],
        setup=lambda t, mp: users_folder(t / "run")),
    Row("overwrite of a folder that is not a kcnn run", KcnnError,
        r"holds files kcnn did not write.*--overwrite replaces only a kcnn run",
        lambda t, p: train(t, overwrite=True),
        lambda t, p: ["train", *DIGITS, "--overwrite", "--output-dir", str(t / "run")],
        setup=lambda t, mp: users_folder(t / "run")),
    Row("overwrite of a folder that only looks like a run", KcnnError,
        r"holds files kcnn did not write \(config.json, history.csv, metrics.json and 1 more\).*--overwrite",
        lambda t, p: train(t, overwrite=True),
        lambda t, p: ["train", *DIGITS, "--overwrite", "--output-dir", str(t / "run")],
        setup=lambda t, mp: users_folder(t / "run", config_json=True)),
    Row("resume of a folder that only looks like a run", KcnnError, r"holds files kcnn did not write",
        lambda t, p: train(t, resume=True),
        lambda t, p: ["train", *DIGITS, "--resume", "--output-dir", str(t / "run")],
        setup=lambda t, mp: users_folder(t / "run", config_json=True)),
    Row("overwrite of a folder holding a config.json copied from a run", KcnnError,
        r"run holds a config.json kcnn wrote for the run in .*elsewhere, without the rest of that run.*"
        r"remove that config.json", lambda t, p: train(t, overwrite=True),
        lambda t, p: ["train", *DIGITS, "--overwrite", "--output-dir", str(t / "run")],
        setup=lambda t, mp: copied_record(t)),
    Row("resume of a run whose backup is a symbolic link", KcnnError,
        r"run/backup is a symbolic link; .*never through a link.*replace it with a folder of its own",
        lambda t, p: train(t, resume=True), lambda t, p: ["train", *DIGITS, "--resume", "--output-dir", str(t / "run")],
        setup=lambda t, mp: linked(finished_run(t), "backup", t)),
    Row("overwrite of a run whose logs are a symbolic link", KcnnError, r"run/logs is a symbolic link",
        lambda t, p: train(t, overwrite=True),
        lambda t, p: ["train", *DIGITS, "--overwrite", "--output-dir", str(t / "run")],
        setup=lambda t, mp: linked(finished_run(t), "logs", t)),
    Row("output folder that is a file", KcnnError, r"run is a file, not a folder",
        lambda t, p: train(t), lambda t, p: ["train", *DIGITS, "--output-dir", str(t / "run")],
        setup=lambda t, mp: _written(t / "run", b"a file")),
    Row("fine-tuning into the user's own files", KcnnError, r"ft holds files kcnn did not write.*new or empty",
        lambda t, p: finetune(t), lambda t, p: ["finetune", "--limit", "64", "--output-dir", str(t / "ft")],
        setup=lambda t, mp: users_folder(t / "ft")),
    Row("fine-tuning overwrite of a folder that only looks like a run", KcnnError,
        r"ft holds files kcnn did not write.*--overwrite replaces only a kcnn run",
        lambda t, p: finetune(t, overwrite=True),
        lambda t, p: ["finetune", "--limit", "64", "--overwrite", "--output-dir", str(t / "ft")],
        setup=lambda t, mp: users_folder(t / "ft", config_json=True)),
    Row("fine-tuning resume with other settings", KcnnError, r"other settings \(head_epochs\).*same ones",
        lambda t, p: finetune(t, head_epochs=2, resume=True),
        lambda t, p: ["finetune", "--limit", "64", "--head-epochs", "2", "--finetune-epochs", "0", "--no-export",
                      "--resume", "--output-dir", str(t / "ft")],
        setup=lambda t, mp: finetune_run(t)),
    Row("fine-tuning resume of a training run", KcnnError, r"is a `kcnn train` run, not a `kcnn finetune` run",
        lambda t, p: finetune(t, resume=True, output_dir=str(t / "run")),
        lambda t, p: ["finetune", "--limit", "64", "--head-epochs", "1", "--finetune-epochs", "0", "--no-export",
                      "--resume", "--output-dir", str(t / "run")],
        setup=lambda t, mp: finished_run(t)),
    Row("fine-tuning resume and overwrite together", InvalidArgumentError, r"resume and overwrite contradict",
        lambda t, p: finetune(t, resume=True, overwrite=True),
        lambda t, p: ["finetune", "--resume", "--overwrite"]),
    Row("resume without a run", KcnnError, r"no run to resume.*without --resume",
        lambda t, p: train(t, resume=True),
        lambda t, p: ["train", *DIGITS, "--resume", "--output-dir", str(t / "run")]),
    Row("output folder another process is writing", rundir.RunLockedError, r"Another kcnn process.*another output",
        lambda t, p: train(t, overwrite=True),
        lambda t, p: ["train", *DIGITS, "--overwrite", "--output-dir", str(t / "run")], setup=held_lock),
    Row("read-only output folder", rundir.RunWriteError, r"Could not write .*readonly.*output directory you can",
        lambda t, p: train(t, output_dir=str(p / "run")),
        lambda t, p: ["train", *DIGITS, "--output-dir", str(p / "run")], setup=read_only),
    Row("disk full while saving", rundir.RunWriteError, r"No space left.*free some disk space.*--resume",
        lambda t, p: train(t), lambda t, p: ["train", *DIGITS, "--output-dir", str(t / "run")],
        setup=disk_full_at_save, writes=True),
    # -- image folders --
    Row("folder without class sub-folders", EmptyDatasetError, r"no class sub-folders.*at least two",
        lambda t, p: kcnn.data.image_folder(p), lambda t, p: ["train", "--dataset", str(p)],
        setup=lambda t, mp: (t / "empty").mkdir() or t / "empty"),
    Row("folder with one class, its path with spaces and non-ASCII", EmptyDatasetError,
        r"my photos – été has only the class 'chat'.*at least two",
        lambda t, p: kcnn.data.image_folder(p), lambda t, p: ["train", "--dataset", str(p)],
        setup=lambda t, mp: image_folder(t / "my photos – été", classes=("chat",))),
    Row("text files with image extensions", EmptyDatasetError, r"2 image file\(s\), none readable",
        lambda t, p: kcnn.data.image_folder(p, verbose=False), lambda t, p: ["train", "--dataset", str(p)],
        setup=lambda t, mp: [(t / "f" / c).mkdir(parents=True) or (t / "f" / c / "x.jpg").write_text("text")
                             for c in "ab"] and t / "f"),
    Row("truncated image, stop at bad files", CorruptImageError, r"bad\.png cannot be read.*skip",
        lambda t, p: kcnn.data.image_folder(p, on_error="stop"),
        lambda t, p: ["train", "--dataset", str(p), "--on-bad-image", "stop"],
        setup=lambda t, mp: image_folder(t / "f") and (t / "f" / "cat" / "bad.png").write_bytes(png_bytes()[:60])
        and t / "f"),
    Row("PNG decompression bomb", CorruptImageError, r"bomb\.png.*9000x9000 pixels is over the limit",
        lambda t, p: kcnn.data.image_folder(p, on_error="stop"),
        lambda t, p: ["train", "--dataset", str(p), "--on-bad-image", "stop"],
        setup=lambda t, mp: image_folder(t / "f") and (t / "f" / "dog" / "bomb.png").write_bytes(
            bomb_png(9000, 9000)) and t / "f"),
    Row("symlink loop as the only content", EmptyDatasetError, r"no image files",
        lambda t, p: kcnn.data.image_folder(p), lambda t, p: ["train", "--dataset", str(p)],
        setup=lambda t, mp: [(t / "f" / c).mkdir(parents=True) or os.symlink(t / "f", t / "f" / c / "loop")
                             for c in "ab"] and t / "f"),
    Row("images of different sizes, no image_size", ImageSizeError, r"2 different sizes.*pass image_size",
        lambda t, p: kcnn.data.image_folder(p),
        setup=lambda t, mp: image_folder(t / "f") and (t / "f" / "cat" / "big.png").write_bytes(
            png_bytes((12, 9))) and t / "f"),
    Row("validation split of 1", InvalidArgumentError, r"validation_split must be in",
        lambda t, p: kcnn.data.image_folder(p, validation_split=1.0),
        lambda t, p: ["train", "--dataset", str(p), "--validation-split", "1.0"],
        setup=lambda t, mp: image_folder(t / "f")),
    # -- arrays a user brings --
    Row("NaN and infinite pixels", kcnn.data.InvalidDataError, r"2 pixel value\(s\) are NaN or infinite",
        lambda t, p: kcnn.data.ImageData(np.array([[[[np.nan]], [[np.inf]]]], "float32").reshape(1, 2, 1, 1),
                                         np.array([0]), ("a", "b"), "mine")),
    Row("labels out of range", kcnn.data.InvalidDataError, r"label 12 is outside 0\.\.9",
        lambda t, p: kcnn.data.ImageData(np.zeros((2, 4, 4, 1), "uint8"), np.array([3, 12]),
                                         tuple("0123456789"), "mine")),
    # -- dataset files --
    Row("dataset file with the wrong bytes", ChecksumError, r"does not match the published checksum.*delete it",
        lambda t, p: kcnn.data.load("mnist", "test"), lambda t, p: ["train", "--dataset", "mnist"],
        setup=fake_mnist),
    Row("truncated dataset file", ChecksumError, r"-ubyte\.gz does not match the published checksum",
        lambda t, p: kcnn.data.load("mnist", "test"), lambda t, p: ["train", "--dataset", "mnist"],
        setup=lambda t, mp: fake_mnist(t, mp, truncated=True)),
    Row("dataset missing and offline", DatasetNotFoundError, r"Could not find .*KCNN_DATA_DIR",
        lambda t, p: kcnn.data.load("mnist", "test"), lambda t, p: ["train", "--dataset", "mnist"],
        setup=lambda t, mp: mp.setenv("KCNN_DATA_DIR", str(t)) or mp.setenv("KERAS_HOME", str(t / "home"))
        or mp.setattr("kcnn.data.files._download", _offline)),
    # -- weights --
    Row("truncated PyTorch checkpoint", WeightsError, r"truncated",
        lambda t, p: kcnn.build("efficientnet_lite0", weights=str(p)),
        setup=lambda t, mp: _written(t / "cut.pth", open(weights_checkpoint(t), "rb").read()[:100_000])),
    Row("checkpoint of another architecture", KcnnError, r"resnet18",
        lambda t, p: kcnn.build("resnet18", weights=str(p)), setup=lambda t, mp: weights_checkpoint(t)),
    Row("named weights whose file fails its checksum", WeightsError, r"does not match the published checksum.*Delete",
        lambda t, p: kcnn.build("resnet50", weights="imagenet"),
        lambda t, p: ["predict", "resnet50", str(t / "x.png")],
        setup=lambda t, mp: mp.setenv("KERAS_HOME", str(t / "home")) or _corrupt_cached_weights(t)),
    Row("weights that do not exist for a model", KcnnError, r"lenet5.*weights",
        lambda t, p: kcnn.build("lenet5", weights="imagenet"),
        lambda t, p: ["finetune", "--backbone", "lenet5", "--output-dir", str(t / "ft")]),
    # -- runs, models, predictions, exports --
    Row("evaluate a folder that is not a run", KcnnError, r"holds no model\.keras.*finished run",
        lambda t, p: load_run(str(t)), lambda t, p: ["evaluate", str(t)]),
    Row("a mistyped run folder", KcnnError, r"There is no run folder '.*/runs/pet'; did you mean '.*/runs/pets'\?",
        lambda t, p: load_run(str(t / "runs" / "pet")), lambda t, p: ["evaluate", str(t / "runs" / "pet")],
        setup=lambda t, mp: (t / "runs" / "pets").mkdir(parents=True)),
    Row("corrupt model.keras", KcnnError, r"model\.keras cannot be loaded as a Keras model",
        lambda t, p: load_run(str(p)), lambda t, p: ["evaluate", str(p)],
        setup=lambda t, mp: finished_run(t)),
    Row("model file with a Lambda layer (code)", KcnnError, r"Lambda",
        lambda t, p: load_run(str(p)), lambda t, p: ["evaluate", str(p)],
        setup=lambda t, mp: run_with_model(t, lambda_model_file)),
    Row("text file named .png to predict", KcnnError, r"notes\.png cannot be read as an image",
        lambda t, p: predict_files(kcnn.build("lenet5"), [str(p)], "0123456789"),
        lambda t, p: ["predict", str(t / "run"), str(p)],
        setup=lambda t, mp: run_with_model(t, tiny_model_file) and _written(t / "notes.png", b"hi")),
    Row("top of zero", InvalidArgumentError, r"top must be a whole number of at least 1",
        lambda t, p: predict_files(kcnn.build("lenet5"), [], "0123456789", top=0),
        lambda t, p: ["predict", str(t / "run"), str(t / "x.png"), "--top", "0"],
        setup=lambda t, mp: run_with_model(t, tiny_model_file)),
    Row("export over an existing export", ExportError, r"1 already exists; pass overwrite=True",
        lambda t, p: kcnn.deploy.export.export(str(p), output=str(t / "out")),
        lambda t, p: ["export", str(p), "--output", str(t / "out")],
        setup=lambda t, mp: (t / "out" / "1").mkdir(parents=True)
        or _written(t / "out" / "1" / "saved_model.pb", b"old")
        and _written(t / "out" / "kcnn_export.json", b'{"kcnn": {"exports": {"1": {}}}}')  # kcnn exported it
        and tiny_model_file(t / "m.keras")),
    Row("export into the user's own folder", ExportError,
        r"out holds files kcnn did not write \(history.csv, model.keras\).*new or empty folder as --output",
        lambda t, p: kcnn.deploy.export.export(str(p), format="onnx", output=str(t / "out")),
        lambda t, p: ["export", str(p), "--format", "onnx", "--output", str(t / "out")],
        setup=lambda t, mp: users_folder(t / "out") and tiny_model_file(t / "m.keras")),
    Row("export overwrite of the user's own folder", ExportError,
        r"out holds files kcnn did not write \(1\).*--overwrite replaces only what kcnn exported",
        lambda t, p: kcnn.deploy.export.export(str(p), output=str(t / "out"), overwrite=True),
        lambda t, p: ["export", str(p), "--output", str(t / "out"), "--overwrite"],
        setup=lambda t, mp: (t / "out" / "1").mkdir(parents=True)
        or _written(t / "out" / "1" / "saved_model.pb", b"the user's") and tiny_model_file(t / "m.keras")),
    Row("export into a run whose export/ is a symbolic link", ExportError,
        r"run/export is a symbolic link, which kcnn leaves alone.*remove the link",
        lambda t, p: kcnn.deploy.export.export(str(p), "keras", overwrite=True),
        lambda t, p: ["export", str(p), "--format", "keras", "--overwrite"],
        setup=lambda t, mp: linked(run_with_model(t, tiny_model_file), "export", t)),
    Row("export into a run's export/ holding the user's files", ExportError,
        r"run/export holds files kcnn did not write \(history.csv, model.keras\).*--overwrite replaces only",
        lambda t, p: kcnn.deploy.export.export(str(p), "keras", overwrite=True),
        lambda t, p: ["export", str(p), "--format", "keras", "--overwrite"],
        setup=lambda t, mp: users_folder(finished_run(t) / "export") and t / "run"),
    Row("export of a missing file", ExportError, r"No such file or directory.*run directory or a \.keras",
        lambda t, p: kcnn.deploy.export.export(str(t / "nope.keras")), lambda t, p: ["export", str(t / "nope.keras")]),
    Row("export to an unknown format", ExportError, r"Unknown export format 'tflite'",
        lambda t, p: kcnn.deploy.export.export(str(p), format="tflite"),
        setup=lambda t, mp: tiny_model_file(t / "m.keras")),
    Row("export to LiteRT with an unknown quantization", ExportError,
        r"Unknown quantization 'int4'; choose one of none, float16, int8",
        lambda t, p: kcnn.deploy.export.export(str(p), format="litert", quantize="int4"),
        setup=lambda t, mp: tiny_model_file(t / "m.keras")),
    Row("int8 LiteRT export of a .keras file without a run", ExportError,
        r"int8 needs calibration images from the run's training data: export a run directory",
        lambda t, p: kcnn.deploy.export.export(str(p), format="litert", quantize="int8"),
        lambda t, p: ["export", str(p), "--format", "litert", "--quantize", "int8"],
        setup=lambda t, mp: tiny_model_file(t / "m.keras")),
    Row("quantization of an export that is not LiteRT", ExportError,
        r"Quantization applies to LiteRT exports only; pass --format litert.*quantize='int8' with format='onnx'",
        lambda t, p: kcnn.deploy.export.export(str(p), format="onnx", quantize="int8"),
        lambda t, p: ["export", str(p), "--format", "onnx", "--quantize", "int8"],
        setup=lambda t, mp: tiny_model_file(t / "m.keras")),
    Row("fine-tune at a size the backbone cannot take", InvalidArgumentError, r"at least 32x32",
        lambda t, p: finetune(t, image_size=16),
        lambda t, p: ["finetune", "--image-size", "16", "--output-dir", str(t / "ft")]),
    # -- serving (kcnn serve: refused before anything loads; a port in use and an .onnx file that does not load are
    # refused by the serving process, tests/test_serve.py) --
    Row("serve a path that does not exist", ServeError,
        r"No such file or directory: .*nope.*pass a run directory, an ONNX export folder .* or a model\.onnx file",
        lambda t, p: kcnn.deploy.serve.find_source(t / "nope"), lambda t, p: ["serve", str(t / "nope")]),
    Row("serve a folder without a model", ServeError,
        r"holds no model\.onnx, export/model\.onnx or model\.keras; pass a run directory",
        lambda t, p: kcnn.deploy.serve.find_source(p), lambda t, p: ["serve", str(p)],
        setup=lambda t, mp: (t / "photos").mkdir() or t / "photos"),
    Row("serve a file that is not a model", ServeError, r"notes\.txt is neither an ONNX model \(\.onnx\) nor a Keras",
        lambda t, p: kcnn.deploy.serve.find_source(p), lambda t, p: ["serve", str(p)],
        setup=lambda t, mp: _written(t / "notes.txt", b"hi")),
    Row("serve on a port out of range", ServeError, r"port must be a whole number from 0 .* to 65535.*port=70000",
        lambda t, p: kcnn.deploy.serve.check_settings("model", 70000, 32, 32),
        lambda t, p: ["serve", str(t), "--port", "70000"]),
    Row("serve with batches of no image", ServeError, r"max_batch must be a whole number of at least 1",
        lambda t, p: kcnn.deploy.serve.check_settings("model", 8501, 32, 0),
        lambda t, p: ["serve", str(t), "--max-batch", "0"]),
    Row("serve with a body limit of zero", ServeError, r"max_body_mb must be a number of megabytes above 0",
        lambda t, p: kcnn.deploy.serve.check_settings("model", 8501, 0, 32),
        lambda t, p: ["serve", str(t), "--max-body-mb", "0"]),
    Row("serve with an infinite body limit", ServeError,
        r"max_body_mb must be a number of megabytes above 0 and at most 4096\. Received: max_body_mb=inf",
        lambda t, p: kcnn.deploy.serve.check_settings("model", 8501, float("inf"), 32),
        lambda t, p: ["serve", str(t), "--max-body-mb", "inf"]),
    Row("serve with a body timeout of NaN", ServeError,
        r"body_timeout_s must be a number of seconds above 0 and at most 3600\. Received: body_timeout_s=nan",
        lambda t, p: kcnn.deploy.serve.check_settings("model", 8501, 32, 32, body_timeout_s=float("nan")),
        lambda t, p: ["serve", str(t), "--body-timeout-s", "nan"]),
    Row("serve under a model name with a slash", ServeError, r"model name goes into the URL.*model_name='pets/v2'",
        lambda t, p: kcnn.deploy.serve.check_settings("pets/v2", 8501, 32, 32),
        lambda t, p: ["serve", str(t), "--model-name", "pets/v2"]),
    # -- explanations (Grad-CAM) --
    Row("Grad-CAM of a layer that does not exist", InvalidArgumentError,
        r"no layer named 'conv9'.*spatial layers for Grad-CAM are conv",
        lambda t, p: kcnn.inspect.explain.grad_cam(tiny_conv_model(), np.zeros((1, 8, 8, 1)), layer="conv9"),
        lambda t, p: ["explain", str(p), str(t / "x.png"), "--layer", "conv9"], setup=lambda t, mp: explain_run(t)),
    Row("Grad-CAM of a layer without a spatial output", InvalidArgumentError,
        r"'dense' of .* has no spatial output.*spatial layers are conv",
        lambda t, p: kcnn.inspect.explain.grad_cam(tiny_conv_model(), np.zeros((1, 8, 8, 1)), layer="dense"),
        lambda t, p: ["explain", str(p), str(t / "x.png"), "--layer", "dense"], setup=lambda t, mp: explain_run(t)),
    Row("Grad-CAM of a class index out of range", InvalidArgumentError, r"class_index 5 is outside 0\.\.1",
        lambda t, p: kcnn.inspect.explain.grad_cam(tiny_conv_model(), np.zeros((1, 8, 8, 1)), class_index=5)),
    Row("Grad-CAM of a class name the model does not have", InvalidArgumentError,
        r"Unknown class 'zebra'.*classes are 'a', 'b'",
        lambda t, p: kcnn.inspect.explain.explain_files(tiny_conv_model(), [str(t / "x.png")], ("a", "b"), str(t / "out"),
                                                class_name="zebra"),
        lambda t, p: ["explain", str(p), str(t / "x.png"), "--class", "zebra"], setup=lambda t, mp: explain_run(t)),
    Row("Grad-CAM of images of the wrong size", InvalidArgumentError, r"shape \(N, 8, 8, 1\).*\(1, 9, 8, 1\)",
        lambda t, p: kcnn.inspect.explain.grad_cam(tiny_conv_model(), np.zeros((1, 9, 8, 1)))),
    Row("Grad-CAM of RGB images for a grey model", InvalidArgumentError, r"shape \(N, 8, 8, 1\).*\(2, 8, 8, 3\)",
        lambda t, p: kcnn.inspect.explain.input_gradients(tiny_conv_model(), np.zeros((2, 8, 8, 3)))),
    Row("Grad-CAM of a model without a feature map", kcnn.inspect.explain.NoSpatialLayerError,
        r"no convolution feature map.*input_gradients",
        lambda t, p: kcnn.inspect.explain.grad_cam(tiny_dense_model(), np.zeros((1, 8, 8, 1))),
        lambda t, p: ["explain", str(p), str(t / "x.png")], setup=lambda t, mp: explain_run(t, tiny_model_file)),
]


def _written(path, data):
    path.write_bytes(data)
    return path


def _offline(source):
    raise OSError("[Errno 101] Network is unreachable")


def _corrupt_cached_weights(tmp):
    from kcnn.weights import get_source

    source = get_source("resnet50", "imagenet")
    os.makedirs(tmp / "home" / "models")
    (tmp / "home" / "models" / source.file_name).write_bytes(b"not the weights")
    Image.fromarray(np.zeros((32, 32, 3), "uint8")).save(tmp / "x.png")


def _snapshot(root):
    """Every file below `root`: bytes and modification time."""
    state = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    state[path] = (f.read(), os.stat(path).st_mtime_ns)
    return state


def _prepared(row, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    paths = row.setup(work, monkeypatch)
    return work, paths, _snapshot(tmp_path)


def _unchanged(row, tmp_path, before):
    after = _snapshot(tmp_path)
    changed = [path for path in before if after.get(path) != before[path]]
    assert not changed, f"changed or removed: {changed}"
    if not row.writes:
        assert set(after) == set(before), f"new files: {sorted(set(after) - set(before))}"


def _one_sentence(text):
    """One line; Keras' own style ("... . Received: x=0") counts as one sentence."""
    assert "\n" not in text and "Traceback" not in text, text


@pytest.fixture(autouse=True)
def _restore_permissions(tmp_path):
    yield
    for folder, _, _ in os.walk(tmp_path):
        os.chmod(folder, 0o755)


@pytest.mark.parametrize("row", BAD_INPUTS, ids=[row.name for row in BAD_INPUTS])
def test_api(row, tmp_path, monkeypatch):
    work, paths, before = _prepared(row, tmp_path, monkeypatch)
    monkeypatch.chdir(work)
    with pytest.raises(row.error) as caught:
        row.api(work, paths)
    message = str(caught.value)
    _one_sentence(message)
    import re

    assert re.search(row.message, message), message
    assert isinstance(caught.value, KcnnError)
    _unchanged(row, tmp_path, before)


CLI_ROWS = [row for row in BAD_INPUTS if row.cli]


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row.name for row in CLI_ROWS])
def test_cli(row, tmp_path, monkeypatch, capsys):
    from kcnn.cli import main

    work, paths, before = _prepared(row, tmp_path, monkeypatch)
    monkeypatch.chdir(work)
    code = main(row.cli(work, paths))
    captured = capsys.readouterr()
    assert code == 2, captured.err[-2000:]
    assert "Traceback" not in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("kcnn: error: ")
    _one_sentence(last)
    import re

    assert re.search(row.message, last), last
    _unchanged(row, tmp_path, before)


def test_the_table_is_large_and_mostly_through_both_doors():
    assert len(BAD_INPUTS) >= 30 and len(CLI_ROWS) >= 30  # 110 and 94 (README)
    assert len({row.name for row in BAD_INPUTS}) == len(BAD_INPUTS)


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    """The in-process CLI rows stand for real processes: three rows in one."""
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax")
    for argv in (["info", "resnet5O"], ["train", *DIGITS, "--learning-rate", "0"],
                 ["train", "--dataset", str(tmp_path / "no such folder")]):
        result = subprocess.run([sys.executable, "-m", "kcnn", *argv], capture_output=True, text=True, env=env,
                                cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("kcnn")]
        assert len(lines) == 1 and lines[0].startswith("kcnn: error: "), result.stderr
    assert os.listdir(tmp_path) == []
