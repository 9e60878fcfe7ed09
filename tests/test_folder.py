"""Image folders (built from real CIFAR-10 sample images) and their bad
inputs; the CIFAR-10 python (pickle) version, checked before unpickling."""

import hashlib
import os
import pickle

import numpy as np
import pytest
from PIL import Image

import kcnn
import kcnn.data
from kcnn.data import datasets, files, sources

CLASSES = ("cat", "ship")


@pytest.fixture(scope="module")
def sample():
    return kcnn.data.load("cifar10_sample", "train")


def _write_folder(root, sample, per_class=10, classes=CLASSES):
    for class_name in classes:
        label = sources.CIFAR10_CLASSES.index(class_name)
        os.makedirs(root / class_name, exist_ok=True)
        for i, image in enumerate(sample.images[sample.labels == label][:per_class]):
            Image.fromarray(image).save(root / class_name / f"{i:03d}.png")
    return root


def _snapshot(root):
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_round_trip_and_stratified_split(tmp_path, sample):
    root = _write_folder(tmp_path / "pets", sample)
    train, val = kcnn.data.image_folder(root, validation_split=0.2, seed=3)
    assert train.class_names == CLASSES and train.image_shape == (32, 32, 3)
    assert np.bincount(train.labels).tolist() == [8, 8] and np.bincount(val.labels).tolist() == [2, 2]
    # pixels survive PNG exactly; validation never overlaps training
    cats = sample.images[sample.labels == 3][:10]
    assert {im.tobytes() for im in train.images[train.labels == 0]} | {
        im.tobytes() for im in val.images[val.labels == 0]} == {im.tobytes() for im in cats}
    assert not {im.tobytes() for im in train.images} & {im.tobytes() for im in val.images}
    again = kcnn.data.image_folder(root, validation_split=0.2, seed=3, subset="validation")
    np.testing.assert_array_equal(again.images, val.images)
    other = kcnn.data.image_folder(root, validation_split=0.2, seed=4, subset="validation")
    assert not np.array_equal(other.images, val.images)


def test_modes_are_converted_and_sizes_resized(tmp_path, sample):
    root = _write_folder(tmp_path / "pets", sample, per_class=3)
    Image.fromarray(sample.images[0]).convert("L").save(root / "cat" / "grey.png")
    Image.fromarray(sample.images[1]).convert("RGBA").save(root / "cat" / "alpha.png")
    Image.fromarray(sample.images[2]).convert("P").save(root / "ship" / "palette.gif")
    Image.fromarray(sample.images[3]).resize((48, 40)).save(root / "ship" / "big.jpg")
    with pytest.raises(kcnn.data.ImageSizeError, match=r"2 different sizes .*pass image_size"):
        kcnn.data.image_folder(root)
    train, val = kcnn.data.image_folder(root, image_size=24, validation_split=0.25)
    assert train.image_shape == (24, 24, 3) and len(train) + len(val) == 10
    grey = kcnn.data.image_folder(root, image_size=(24, 20), color_mode="grayscale", subset="training")
    assert grey.image_shape == (24, 20, 1)


def test_grey_rgba_and_palette_images_become_their_own_rgb_pixels(tmp_path, sample):
    """The conversions give the pixels, not only the shapes: grey repeated on three channels, RGBA without its
    alpha, a palette image's colours looked up; grayscale is ITU-R 601 luma, as Pillow's "L"."""
    root = tmp_path / "modes"
    (root / "cat").mkdir(parents=True)
    (root / "ship").mkdir()
    original = sample.images[:4]
    Image.fromarray(original[0]).convert("L").save(root / "cat" / "grey.png")
    Image.fromarray(original[1]).convert("RGBA").save(root / "cat" / "alpha.png")
    Image.fromarray(original[2]).convert("P").save(root / "ship" / "palette.gif")
    Image.fromarray(original[3]).save(root / "ship" / "plain.png")
    grey = np.asarray(Image.fromarray(original[0]).convert("L"))
    palette = np.asarray(Image.open(root / "ship" / "palette.gif").convert("RGB"))
    expected = {np.repeat(grey[..., None], 3, axis=-1).tobytes(), original[1].tobytes(), palette.tobytes(),
                original[3].tobytes()}
    rgb = kcnn.data.image_folder(root, validation_split=0, subset="training")
    assert rgb.images.dtype == np.uint8 and {image.tobytes() for image in rgb.images} == expected
    luma = kcnn.data.image_folder(root, validation_split=0, subset="training", color_mode="grayscale")
    expected_luma = {grey.tobytes(), np.asarray(Image.fromarray(original[1]).convert("L")).tobytes(),
                     np.asarray(Image.open(root / "ship" / "palette.gif").convert("L")).tobytes(),
                     np.asarray(Image.fromarray(original[3]).convert("L")).tobytes()}
    assert {image[..., 0].tobytes() for image in luma.images} == expected_luma


def test_unreadable_files_are_skipped_and_counted_or_stop(tmp_path, sample):
    root = _write_folder(tmp_path / "pets", sample, per_class=4)
    (root / "cat" / "notes.jpg").write_text("this is not an image")
    truncated = (root / "ship" / "000.png").read_bytes()[:200]
    (root / "ship" / "truncated.png").write_bytes(truncated)
    (root / "ship" / "readme.txt").write_text("ignored: not an image extension")
    before = _snapshot(root)
    with pytest.warns(UserWarning, match="Skipped 2 unreadable file"):
        train, val = kcnn.data.image_folder(root, validation_split=0.25)
    assert train.skipped == 2 and len(train) + len(val) == 8
    with pytest.raises(kcnn.data.CorruptImageError, match=r"notes\.jpg cannot be read.*on_error='skip'"):
        kcnn.data.image_folder(root, on_error="stop")
    assert _snapshot(root) == before  # nothing touched


def test_decompression_bomb_is_refused_before_decoding(tmp_path, sample):
    root = _write_folder(tmp_path / "pets", sample, per_class=2)
    Image.new("L", (4000, 4000)).save(root / "cat" / "bomb.png")  # 16 Mpx of zeros: a few KB on disk
    assert os.path.getsize(root / "cat" / "bomb.png") < 100_000
    with pytest.raises(kcnn.data.CorruptImageError, match="over the limit"):
        kcnn.data.image_folder(root, on_error="stop", max_pixels=1_000_000)


@pytest.mark.parametrize("layout, message", [
    ("missing", "is not a folder"),
    ("empty", "no class sub-folders"),
    ("one_class", "only the class 'cat'"),
    ("no_images", "no image files"),
    ("all_corrupt", "none readable"),
    ("empty_class", r"class folder\(s\) ship"),
])
def test_folders_that_cannot_train(tmp_path, sample, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "one_class":
        _write_folder(root, sample, per_class=3, classes=("cat",))
    if layout in ("no_images", "all_corrupt", "empty_class"):
        for name in CLASSES:
            (root / name).mkdir()
        (root / "cat" / "list.csv").write_text("a,b")
    if layout == "all_corrupt":
        (root / "cat" / "x.png").write_bytes(b"\x89PNG garbage")
        (root / "ship" / "y.jpg").write_bytes(b"")
    if layout == "empty_class":
        _write_folder(root, sample, per_class=2, classes=("cat",))
    with pytest.raises(kcnn.data.EmptyDatasetError, match=message) as error:
        kcnn.data.image_folder(root, on_error="skip", verbose=False)
    assert "\n" not in str(error.value)


def test_symlink_loop_does_not_hang(tmp_path, sample):
    root = _write_folder(tmp_path / "pets", sample, per_class=2)
    os.symlink(root, root / "cat" / "loop")
    train = kcnn.data.image_folder(root, validation_split=0, subset="training")
    assert len(train) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=0), "image_size must be"),
    (dict(image_size=(32, 32, 3)), "image_size must be"),
    (dict(validation_split=1.0), "validation_split must be"),
    (dict(subset="test"), "subset must be"),
    (dict(color_mode="rgba"), "color_mode must be"),
    (dict(on_error="ignore"), "on_error must be"),
])
def test_bad_folder_arguments(tmp_path, sample, kwargs, message):
    root = _write_folder(tmp_path / "pets", sample, per_class=2)
    with pytest.raises(kcnn.InvalidArgumentError, match=message):
        kcnn.data.image_folder(root, **kwargs)


# ---- the CIFAR-10 python version -------------------------------------------


def _python_version(folder, holdout):
    """Pickled batches in the official dict layout, made from real images."""
    folder.mkdir(parents=True)
    flat = holdout.images.transpose(0, 3, 1, 2).reshape(len(holdout), -1)
    with open(folder / "data_batch_5", "wb") as f:
        pickle.dump({b"data": flat, b"labels": holdout.labels.tolist(), b"batch_label": b"x"}, f)
    return folder / "data_batch_5"


def test_python_version_loads_after_its_checksum(tmp_path, monkeypatch):
    holdout = kcnn.data.load("cifar10", "holdout")
    path = _python_version(tmp_path / "cifar10" / "cifar-10-batches-py", holdout)
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    python_files = tuple(files.OfficialFile(f.name, digest if f.name == "data_batch_5" else f.digest,
                                            algorithm="md5") for f in sources.CIFAR10_PYTHON.files)
    monkeypatch.setattr(sources, "CIFAR10_PYTHON",
                        files.Source(**{**sources.CIFAR10_PYTHON.__dict__, "files": python_files}))
    monkeypatch.delenv("KCNN_DATA_DIR")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    loaded = kcnn.data.load("cifar10", "holdout", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(loaded.images, holdout.images)
    np.testing.assert_array_equal(loaded.labels, holdout.labels)


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_is_refused_before_unpickling(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"  # where keras.datasets.cifar10 leaves it
    folder.mkdir()
    marker = tmp_path / "code-ran"
    for official in sources.CIFAR10_PYTHON.files:
        with open(folder / official.name, "wb") as f:
            pickle.dump({b"data": _Payload(str(marker)), b"labels": []}, f)
    monkeypatch.delenv("KCNN_DATA_DIR")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(kcnn.data.ChecksumError, match="data_batch_5 does not match the published checksum"):
        kcnn.data.load("cifar10", "holdout", data_dir=tmp_path, download=False)
    with pytest.raises(kcnn.data.ChecksumError):
        datasets.read_cifar_pickle(str(folder / "test_batch"), sources.CIFAR10_PYTHON.files[-1])
    assert not marker.exists()
