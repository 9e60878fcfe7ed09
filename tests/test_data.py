"""Dataset loaders against the real files (../shared/data via KCNN_DATA_DIR),
the embedded sample, the offline error, checksums and the download path
(served from a local HTTP server, since these machines are offline)."""

import functools
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading

import numpy as np
import pytest

import kcnn.data
from kcnn.data import files, sources
from kcnn.data.datasets import SAMPLE_PATH
from kcnn.data.make_cifar10_sample import first_per_class

DATA_DIR = os.environ["KCNN_DATA_DIR"]  # conftest defaults it to ../shared/data


def test_mnist_official_files():
    train, test = kcnn.data.load("mnist", "train"), kcnn.data.load("mnist", "test")
    assert train.images.shape == (60_000, 28, 28, 1) and test.images.shape == (10_000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert set(np.unique(test.labels)) == set(range(10))
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels


def test_cifar10_holdout_protocol_and_partial_test():
    train = kcnn.data.load("cifar10", "holdout_train")
    holdout = kcnn.data.load("cifar10", "holdout")
    partial = kcnn.data.load("cifar10", "test_first1000")
    assert (len(train), len(holdout), len(partial)) == (40_000, 10_000, 1_000)
    assert train.image_shape == (32, 32, 3) and train.class_names[3] == "cat"
    assert np.bincount(np.concatenate([train.labels, holdout.labels])).tolist() == [5_000] * 10
    # evaluation images are never training images
    seen = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in seen for image in holdout.images[:2000])
    assert not any(image.tobytes() in seen for image in partial.images)


def test_digits_and_embedded_sample():
    digits = kcnn.data.load("digits", "train")
    assert digits.images.shape == (1500, 8, 8, 1) and len(kcnn.data.load("digits", "test")) == 297
    train, test = kcnn.data.load("cifar10_sample", "train"), kcnn.data.load("cifar10_sample", "test")
    assert np.bincount(train.labels).tolist() == [200] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert os.path.getsize(SAMPLE_PATH) <= 10 * 1024**2


def test_sample_is_what_the_script_regenerates():
    held_out = first_per_class(kcnn.data.load("cifar10", "holdout"), 100)
    sample = kcnn.data.load("cifar10_sample", "test")
    np.testing.assert_array_equal(sample.images, held_out[0])


def test_unknown_dataset_and_split():
    with pytest.raises(kcnn.InvalidArgumentError, match="Unknown dataset 'cifar11'"):
        kcnn.data.load("cifar11")
    with pytest.raises(kcnn.InvalidArgumentError, match="splits train, test"):
        kcnn.data.load("mnist", "validation")


@pytest.fixture
def empty_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("KCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path


def test_offline_error_names_folders_and_files(empty_roots, monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(kcnn.data.DatasetNotFoundError) as error:
        kcnn.data.load("mnist", "test", data_dir=empty_roots / "mine")
    message = str(error.value)
    assert "t10k-images-idx3-ubyte.gz" in message and str(empty_roots / "mine" / "mnist") in message
    assert "KCNN_DATA_DIR" in message and "\n" not in message


def test_corrupt_file_fails_its_checksum_and_is_left_alone(empty_roots):
    folder = empty_roots / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(DATA_DIR, "mnist", name), folder / name)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    corrupt = bytearray(labels.read_bytes())
    corrupt[100] ^= 0xFF
    labels.write_bytes(bytes(corrupt))
    with pytest.raises(kcnn.data.ChecksumError, match="does not match the published checksum"):
        kcnn.data.load("mnist", "test", data_dir=empty_roots / "data", download=False)
    assert labels.read_bytes() == bytes(corrupt)


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on localhost serving tmp_path/www: the official source, offline."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_verifies_published_hash(empty_roots, local_server):
    www, url = local_server
    for official in sources.MNIST.files:
        shutil.copy(os.path.join(DATA_DIR, "mnist", official.name), www / official.name)
    mirror = files.Source(folder="mnist", url=url, files=sources.MNIST.files)
    paths = files.locate(mirror, data_dir=empty_roots / "nothing-here")
    assert paths[0].startswith(str(empty_roots / "keras_home" / "datasets" / "mnist"))
    # a mirror serving a different file is refused by the hash check
    (www / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the official file")
    shutil.rmtree(empty_roots / "keras_home")
    with pytest.raises(kcnn.data.DatasetNotFoundError, match="t10k-labels"):
        files.locate(mirror, names=("t10k-labels-idx1-ubyte.gz",))


def _tar_gz(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_interrupted_download_leaves_no_file_under_the_official_name(empty_roots, monkeypatch):
    import keras

    def cut_off(fname, origin, cache_dir, cache_subdir, **kwargs):
        path = os.path.join(cache_dir, cache_subdir, fname)
        with open(path, "wb") as f:
            f.write(b"\x1f\x8b half of a file")
        raise ConnectionResetError("the connection was reset mid-download")

    monkeypatch.setattr(keras.utils, "get_file", cut_off)
    with pytest.raises(kcnn.data.DatasetNotFoundError, match="reset mid-download"):
        kcnn.data.load("mnist", "test", data_dir=empty_roots / "nothing-here")
    folder = empty_roots / "keras_home" / "datasets" / "mnist"
    assert [p.name for p in folder.iterdir()] == ["train-images-idx3-ubyte.gz.part"]  # never the official name


def test_archive_download_and_extraction(empty_roots, local_server):
    www, url = local_server
    payload = b"\x01" * 3073
    archive = _tar_gz({"toy-batches-bin/data_batch_1.bin": payload})
    (www / "toy.tar.gz").write_bytes(archive)
    official = files.OfficialFile("data_batch_1.bin", hashlib.sha1(payload).hexdigest(), len(payload))
    toy = files.Source(folder="toy/toy-batches-bin", url=url + "toy.tar.gz", files=(official,),
                       archive_md5=hashlib.md5(archive).hexdigest(), archive_root="toy-batches-bin")
    [path] = files.locate(toy)
    assert open(path, "rb").read() == payload


def test_archive_with_escaping_paths_is_refused(empty_roots, local_server):
    www, url = local_server
    archive = _tar_gz({"../escaped.bin": b"x", "toy-bin/data.bin": b"y"})
    (www / "evil.tar.gz").write_bytes(archive)
    official = files.OfficialFile("data.bin", hashlib.sha1(b"y").hexdigest(), 1)
    evil = files.Source(folder="evil/toy-bin", url=url + "evil.tar.gz", files=(official,),
                        archive_md5=hashlib.md5(archive).hexdigest(), archive_root="toy-bin")
    with pytest.raises(kcnn.data.DatasetNotFoundError):
        files.locate(evil)
    assert not (empty_roots / "keras_home" / "datasets" / "escaped.bin").exists()
    assert not list(empty_roots.rglob("escaped.bin"))


@pytest.mark.parametrize("augment", ["none", "crop", "flip", "crop_flip", "randaugment", "mixup", "cutmix"])
def test_pipeline_batches_with_keras_augmentation(augment, monkeypatch):
    from kcnn.data import pipeline
    from kcnn.data.pipeline import make_dataset

    # RandAugment traces slowly on JAX (keras-team/keras#21185): one augmentation stream instead of each
    # of the SHARDS streams tracing its own copy keeps the check and saves a minute.
    monkeypatch.setattr(pipeline, "SHARDS", 1)

    data = kcnn.data.load("cifar10_sample", "train")

    def first_batch(mode):  # the order depends only on (seed, epoch): the same images in every mode
        batch = next(iter(make_dataset(data, batch_size=16, training=True, num_classes=10, augment=mode)))
        return np.asarray(batch[0]), np.asarray(batch[1])

    images, labels = first_batch(augment)
    assert tuple(images.shape) == (16, 32, 32, 3) and images.dtype.name == "float32"
    assert 0.0 <= float(np.min(images)) and float(np.max(images)) <= 255.0
    mixed = augment in ("mixup", "cutmix")
    assert tuple(labels.shape) == ((16, 10) if mixed else (16,))
    plain, plain_labels = first_batch("none")
    originals = {data.images[i].tobytes(): data.labels[i] for i in range(len(data.images))}
    assert all(originals.get(image.astype("uint8").tobytes()) == label for image, label in zip(plain, plain_labels))
    changed = np.abs(images - plain).mean(axis=(1, 2, 3)) > 1.0  # per image: the mode did something to it
    if augment == "none":
        np.testing.assert_array_equal(images, plain)
    elif augment == "flip":  # each image as it was or mirrored left-right, and both happen
        mirrored = [np.array_equal(image, original[:, ::-1]) for image, original in zip(images, plain)]
        kept = [np.array_equal(image, original) for image, original in zip(images, plain)]
        assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept), (mirrored, kept)
    else:
        assert changed.sum() >= 4, f"{augment} changed {changed.sum()} of 16 images"
    if mixed:  # labels of two images, weights summing to 1
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
        assert (np.sort(labels, axis=1)[:, -2] > 0.1).sum() >= 4, labels.round(2)
    else:
        np.testing.assert_array_equal(labels, plain_labels)


def test_pipeline_resizes_and_converts_channels_in_order():
    from kcnn.data.pipeline import make_dataset

    data = kcnn.data.load("digits", "test")
    images, labels = next(iter(make_dataset(data, batch_size=8, training=False, num_classes=10,
                                            image_shape=(32, 32, 3))))
    assert tuple(images.shape) == (8, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(labels), data.labels[:8])  # evaluation keeps the order
    np.testing.assert_array_equal(np.asarray(images)[..., 0], np.asarray(images)[..., 2])


def test_pipeline_refuses_impossible_batches():
    from kcnn.data.pipeline import make_dataset

    data = kcnn.data.load("digits", "test")
    with pytest.raises(kcnn.InvalidArgumentError, match="larger than the 297 training images"):
        make_dataset(data, batch_size=512, training=True, num_classes=10)
    with pytest.raises(kcnn.InvalidArgumentError, match="batch_size must be"):
        make_dataset(data, batch_size=0, training=False, num_classes=10)
    with pytest.raises(kcnn.InvalidArgumentError, match="augment must be one of"):
        make_dataset(data, batch_size=8, training=True, num_classes=10, augment="rotate")


def test_augmented_stream_repeats_exactly_and_resumes_at_an_epoch():
    from kcnn.data.pipeline import make_dataset

    data = kcnn.data.load("cifar10_sample", "train")

    def batches(first_epoch, peek=False):
        dataset = make_dataset(data, batch_size=250, training=True, num_classes=10, augment="crop_flip", seed=1,
                               epochs=3, first_epoch=first_epoch)
        if peek:  # an earlier iterator (fit() opens one to build the model) must not shift the draws
            next(iter(dataset))
        return [np.asarray(images) for images, _ in dataset]

    full, again, resumed = batches(0), batches(0, peek=True), batches(2, peek=True)
    assert len(full) == 24 and len(resumed) == 8
    assert all(np.array_equal(a, b) for a, b in zip(full, again))
    assert all(np.array_equal(a, b) for a, b in zip(full[16:], resumed))
    assert not np.array_equal(full[0], full[8])  # epochs differ
    # ...in their order too, not only in their draws: each epoch its own permutation of the images
    plain = make_dataset(data, batch_size=250, training=True, num_classes=10, seed=1, epochs=2)
    labels = np.concatenate([np.asarray(batch_labels) for _, batch_labels in plain]).reshape(2, -1)
    assert not np.array_equal(labels[0], labels[1])
    assert np.array_equal(np.bincount(labels[0], minlength=10) > 0, np.ones(10, bool))


def test_shards_split_each_batch_between_the_workers():
    """make_dataset(shard=(i, n)): worker i's training batch holds images i::n of the single-device batch
    (together exactly that batch, none twice), and evaluation gives each worker every n-th image."""
    from kcnn.data.pipeline import make_dataset

    data = kcnn.data.load("cifar10_sample", "train")
    common = dict(batch_size=40, num_classes=10, seed=3, epochs=2)
    whole = [np.asarray(images) for images, _ in make_dataset(data, training=True, **common)]
    parts = [[np.asarray(images) for images, _ in make_dataset(data, training=True, shard=(i, 2), **common)]
             for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) > 1
    for batch, first, second in zip(whole, *parts):
        assert first.shape[0] == second.shape[0] == 20
        np.testing.assert_array_equal(first, batch[0::2])
        np.testing.assert_array_equal(second, batch[1::2])
    evaluation = dict(batch_size=40, num_classes=10, training=False)
    everything = np.concatenate([np.asarray(x) for x, _ in make_dataset(data, **evaluation)])
    shards = [np.concatenate([np.asarray(x) for x, _ in make_dataset(data, shard=(i, 2), **evaluation)])
              for i in range(2)]
    np.testing.assert_array_equal(shards[0], everything[0::2])
    np.testing.assert_array_equal(shards[1], everything[1::2])
