"""Untrusted files: hostile files built here, each refused with a kcnn error
of one sentence that names the problem, and each payload proven not to run
(it would leave a marker file). Models (.keras with a Lambda, or with a
config edited to name other Python code), PyTorch checkpoints that are
pickles with code, tar archives that write outside their folder, and images
that claim more pixels than the limit.

Covered elsewhere: a hostile CIFAR-10 pickle (tests/test_folder.py,
refused by its checksum before unpickling), a 16-megapixel PNG of zeros and
a symlink loop in an image folder (also tests/test_folder.py)."""

import io
import json
import os
import re
import struct
import sys
import tarfile
import warnings
import zipfile
import zlib

import keras
import pytest

import kcnn
import kcnn.data
from kcnn.deploy import export as exporting
from kcnn.data import files
from kcnn.data.folder import MAX_PIXELS, CorruptImageError, read_image
from kcnn.runs.rundir import load_run
from kcnn.training.evaluate import predict_files
from kcnn.weights import WeightsError
from kcnn.weights.loading import read_state_dict


def _one_sentence(error):
    """The message of `error`: a single line, a single sentence."""
    message = str(error)
    assert "\n" not in message and message.endswith("."), message
    assert not re.search(r"[.!?]\s+[A-Z]", message), f"more than one sentence: {message}"
    return message


class _Payload:
    """Unpickling it opens (creates) the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------
# .keras files: a Lambda with Python code, and configs edited to name other code


def _lambda(marker):
    return lambda x: (open(marker, "w").close(), x)[1]  # noqa: SIM115 - the payload


def _save_model(path, middle_layer):
    inputs = keras.Input((8, 8, 1))
    x = middle_layer(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, name="predictions")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that a lambda is unsafe to reload: the point here
        keras.Model(inputs, outputs).save(path)
    return path


def _run_dir(root, model_path=None):
    """A finished run as `kcnn train` leaves it: config.json, metrics.json, model.keras."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"dataset": "mnist", "arch": "lenet5"}))
    (root / "metrics.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    if model_path is not None:
        (root / "model.keras").write_bytes(model_path.read_bytes())
    return root


@pytest.fixture
def lambda_run(tmp_path):
    """A run directory whose model.keras holds a Lambda that creates `marker` when it runs."""
    marker = tmp_path / "lambda-ran"
    path = _save_model(tmp_path / "lambda.keras", keras.layers.Lambda(_lambda(str(marker)), name="payload"))
    assert marker.exists()  # building the model ran it once: the payload works
    marker.unlink()
    return _run_dir(tmp_path / "run", path), marker


LAMBDA_MESSAGE = r"holds a Lambda layer with Python code, which kcnn never runs \(.*safe mode\); rebuild the model"


def test_a_lambda_layer_is_refused_by_load_run_and_load_model(lambda_run):
    run, marker = lambda_run
    for path in (run, str(run / "model.keras")):
        with pytest.raises(kcnn.KcnnError, match=LAMBDA_MESSAGE) as error:
            load_run(str(path))
        assert _one_sentence(error.value).startswith(str(run / "model.keras"))
    with pytest.raises(exporting.ExportError, match=LAMBDA_MESSAGE) as error:
        exporting.load_model(str(run / "model.keras"))
    _one_sentence(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("format", ["keras", "saved_model"])  # saved_model: refused in the TensorFlow child too
def test_a_lambda_layer_is_refused_by_export(lambda_run, format):
    run, marker = lambda_run
    with pytest.raises(exporting.ExportError, match=LAMBDA_MESSAGE) as error:
        exporting.export(run, format, verbose=False)
    _one_sentence(error.value)
    assert not (run / "export").exists()  # nothing written
    assert not marker.exists()


HOSTILE_MODULE = "kcnn_hostile_payload"


def _edited(tmp_path, name, edit):
    """A valid .keras file whose config.json `edit` changed, as an attacker would by hand."""
    path = _save_model(tmp_path / "valid.keras", keras.layers.Conv2D(2, 3, name="conv"))
    with zipfile.ZipFile(path) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    config = json.loads(members["config.json"])
    layers = {layer["config"]["name"]: layer for layer in config["config"]["layers"]}
    edit(layers)
    edited = tmp_path / f"{name}.keras"
    with zipfile.ZipFile(edited, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, json.dumps(config) if member == "config.json" else data)
    return edited


def _layer(module, class_name):
    def edit(layers):
        layers["conv"].update(module=module, class_name=class_name, registered_name=None)
    return edit


def _lambda_calling(module, function):
    """The conv layer replaced by a Lambda whose function is named by module and name (no code inside)."""
    def edit(layers):
        layers["conv"].update(module="keras.layers", class_name="Lambda", registered_name=None)
        layers["conv"]["config"] = {"name": "conv", "arguments": {}, "function": {
            "module": module, "class_name": "function", "config": function, "registered_name": function}}
    return edit


EDITS = {
    "layer os.system": (_layer("os", "system"), r"uses a layer Keras does not know \(system\) from the module os"),
    "layer builtins.eval": (_layer("builtins", "eval"),
                            r"uses a layer Keras does not know \(eval\) from the module builtins"),
    "layer from a module that runs code on import": (
        _layer(HOSTILE_MODULE, "Payload"), rf"a layer Keras does not know \(Payload\) from the module {HOSTILE_MODULE}"),
    "Lambda calling os.system": (_lambda_calling("os", "system"),
                                 r"uses a function Keras does not know \(system\) from the module os"),
    "Lambda calling builtins.exec": (_lambda_calling("builtins", "exec"),
                                     r"uses a function Keras does not know \(exec\) from the module builtins"),
    "Lambda calling a module that runs code": (
        _lambda_calling(HOSTILE_MODULE, "payload"), rf"\(payload\) from the module {HOSTILE_MODULE}"),
    "Lambda switching safe mode off": (
        _lambda_calling("keras.config", "enable_unsafe_deserialization"),
        r"names keras.config.enable_unsafe_deserialization, which is not part of a model .*do not use this file"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_config_edited_to_name_other_code_is_refused(tmp_path, monkeypatch, case):
    edit, message = EDITS[case]
    marker = tmp_path / "code-ran"
    # Importing the module, or calling what it defines, would leave the marker.
    (tmp_path / f"{HOSTILE_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        f"class Payload:\n    pass\n"
        f"def payload(*args, **kwargs):\n    open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    path = _edited(tmp_path, "edited", edit)
    run = _run_dir(tmp_path / "run", path)
    with pytest.raises(exporting.ExportError, match=message) as error:
        exporting.load_model(str(path))
    _one_sentence(error.value)
    with pytest.raises(kcnn.KcnnError, match=message) as error:
        load_run(str(run))
    _one_sentence(error.value)
    with pytest.raises(exporting.ExportError, match=message):
        exporting.export(run, "keras", verbose=False)
    assert not marker.exists() and HOSTILE_MODULE not in sys.modules and not calls


# ---------------------------------------------------------------------------
# PyTorch checkpoints that are pickles with code


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, on the bare pickle
def test_a_checkpoint_that_is_a_pickle_with_code_is_refused(tmp_path):
    import pickle

    import torch

    marker = tmp_path / "code-ran"
    saved = tmp_path / "saved.pth"  # torch.save's zip layout, a tensor beside the payload
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": _Payload(str(marker))}, saved)
    legacy = tmp_path / "legacy.pth"  # the pre-1.6 layout: the payload is the whole file
    torch.save(_Payload(str(marker)), legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain.pth"  # not torch.save at all: a bare pickle
    with open(plain, "wb") as f:
        pickle.dump({"features.0.weight": _Payload(str(marker))}, f)
    for path in (saved, legacy):
        with pytest.raises(WeightsError, match=r"is a pickle that calls the Python object io\.open, not a state "
                                               r"dict of tensors, and kcnn never runs code") as error:
            read_state_dict(str(path))
        _one_sentence(error.value)
    with pytest.raises(WeightsError, match=r"plain\.pth is not a readable PyTorch state dict \(UnpicklingError: "
                                           r"[^)]+\); it may be truncated, or a pickle with code") as error:
        read_state_dict(str(plain))
    _one_sentence(error.value)
    with pytest.raises(WeightsError, match="calls the Python object io.open") as error:
        kcnn.build("squeezenet1_1", num_classes=10, input_shape=(32, 32, 3), weights=str(saved))
    _one_sentence(error.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Tar archives (the official datasets' downloads) that write outside their folder


def _tar(path, members):
    """members: (name, kind, data or link target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[kind]
                info.linkname = content
                tar.addfile(info)
    return path


def _tree(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in root.rglob("*")}


GOOD = ("cifar-10-batches-bin/data_batch_1.bin", "file", b"\x03" * 3073)


@pytest.mark.parametrize("member, message", [
    (("../escape.txt", "file", b"escaped"), "'../escape.txt', a path that would be written outside"),
    (("cifar-10-batches-bin/../../escape.txt", "file", b"escaped"), "a path that would be written outside"),
    (("ABSOLUTE/escape.txt", "file", b"escaped"), "an absolute path that would be written outside"),
    (("cifar-10-batches-bin/link", "symlink", "../../secret.txt"), "'cifar-10-batches-bin/link', a link to a file "
                                                                   "outside"),
    (("cifar-10-batches-bin/link", "symlink", "ABSOLUTE/secret.txt"), "a link to an absolute path outside"),
    (("cifar-10-batches-bin/hard", "hardlink", "../secret.txt"), "'cifar-10-batches-bin/hard', a link to a file "
                                                                 "outside"),
    (("cifar-10-batches-bin/hard", "hardlink", "ABSOLUTE/secret.txt"), "a link to an absolute path outside"),
    (("cifar-10-batches-bin/tty", "device", ""), "a device or other special file"),
])
def test_an_archive_that_writes_outside_its_folder_is_refused_before_anything_is_written(tmp_path, member, message):
    name, kind, content = member
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep me")
    name, content = (value.replace("ABSOLUTE", str(outside)) if isinstance(value, str) else value
                     for value in (name, content))
    archive = _tar(tmp_path / "cifar-10-binary.tar.gz", [GOOD, (name, kind, content)])
    destination = tmp_path / "datasets" / "cifar10"
    destination.mkdir(parents=True)
    before = _tree(tmp_path)
    with pytest.raises(files.UnsafeArchiveError, match=re.escape(message)) as error:
        files._safe_extract(str(archive), str(destination))
    assert _one_sentence(error.value).endswith("it is not the official archive: delete it and let kcnn download "
                                               "it again.")
    assert _tree(tmp_path) == before  # nothing written anywhere, inside the folder or out
    assert isinstance(error.value, kcnn.data.UnsafeArchiveError)


def test_a_well_formed_archive_extracts_and_a_broken_one_is_refused(tmp_path):
    archive = _tar(tmp_path / "cifar-10-binary.tar.gz",
                   [GOOD, ("cifar-10-batches-bin/batches.meta.txt", "file", b"airplane\n"),
                    ("cifar-10-batches-bin/latest", "symlink", "data_batch_1.bin")])
    destination = tmp_path / "datasets"
    files._safe_extract(str(archive), str(destination))
    assert (destination / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes() == GOOD[2]
    assert (destination / "cifar-10-batches-bin" / "latest").read_bytes() == GOOD[2]
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(kcnn.data.ChecksumError, match=r"broken\.tar\.gz is not a readable tar archive .*delete it"):
        files._safe_extract(str(broken), str(tmp_path / "other"))


# ---------------------------------------------------------------------------
# Images that claim more pixels than the limit (decompression bombs)


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height RGB pixels, with a few bytes of IDAT that cannot hold them:
    decoding it would fail with another error than the pixel limit."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height, max_pixels, message", [
    (30_000, 30_000, MAX_PIXELS, r"900,000,000 pixels is over the limit of 67,108,864"),  # Pillow refuses it first
    (10_000, 10_000, MAX_PIXELS, r"(10000x10000|100,000,000) pixels is over the limit of 67,108,864"),  # Pillow warns
    (9_000, 9_000, MAX_PIXELS, r"9000x9000 pixels is over the limit of 67,108,864"),  # under Pillow's limit, over ours
    (2_000, 1_000, 1_000_000, r"2000x1000 pixels is over the limit of 1,000,000"),
])
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, width, height, max_pixels, message):
    from PIL import Image

    path = _png_header_only(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 100
    for pillow_warning in ("error", "ignore"):  # whether or not Pillow's own warning is made an error
        with warnings.catch_warnings():
            warnings.simplefilter(pillow_warning, Image.DecompressionBombWarning)
            with pytest.raises(CorruptImageError, match=message) as error:
                read_image(path, "RGB", max_pixels=max_pixels)
        assert _one_sentence(error.value).startswith(f"{path} cannot be read as an image")
        assert re.fullmatch(message, error.value.reason)
    root = tmp_path / "photos"
    for name in ("cat", "ship"):
        (root / name).mkdir(parents=True)
        _png_header_only(root / name / "big.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(CorruptImageError, match=message) as error:
            kcnn.data.image_folder(root, on_error="stop", max_pixels=max_pixels)
    assert _one_sentence(error.value).count("cannot be read") == 1 and "on_error='skip'" in str(error.value)


def test_predict_names_an_unreadable_file_once(tmp_path):
    model = kcnn.build("lenet5", num_classes=3)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    bomb = _png_header_only(tmp_path / "bomb.png", 30_000, 30_000)
    with pytest.raises(CorruptImageError, match=r"notes\.jpg cannot be read as an image \(not a PNG, JPEG, BMP, "
                                                r"GIF or WebP image\); pass image files") as error:
        predict_files(model, [str(text)], ["a", "b", "c"])
    assert _one_sentence(error.value).count("cannot be read") == 1
    with pytest.raises(CorruptImageError, match="900,000,000 pixels is over the limit") as error:
        predict_files(model, [str(bomb)], ["a", "b", "c"])
    assert _one_sentence(error.value).count("cannot be read") == 1


def test_an_image_that_pillow_would_hand_to_ghostscript_is_refused(tmp_path, monkeypatch):
    """Pillow picks its decoder from a file's content, not its name: an EPS file named photo.jpg would go to
    Ghostscript (a program with a history of running code from crafted files). kcnn decodes only the formats
    of its image extensions."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "ghostscript-ran"
    ghostscript = tmp_path / "gs"
    ghostscript.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    ghostscript.chmod(0o755)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(ghostscript))  # as if Ghostscript were installed
    path = tmp_path / "photo.jpg"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(CorruptImageError, match=r"photo\.jpg cannot be read as an image \(not a PNG, JPEG, BMP, GIF "
                                                r"or WebP image\)") as error:
        read_image(path)
    _one_sentence(error.value)
    assert not marker.exists()
