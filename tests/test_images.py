"""Images read as a viewer shows them, wherever kcnn decodes one (image folders, `kcnn predict`, `kcnn explain`,
`kcnn serve`'s b64): upright by their EXIF orientation, 16-bit and float pixels scaled to 8 bits rather than
clipped, grey with alpha, palettes with transparency, CMYK and bilevel converted. Each file is written by Pillow
in its mode and checked against a reference computed here with NumPy. And only regular files are opened: a named
pipe (FIFO) given as an image, a model or a config is refused without being opened (each such test runs under a
time limit, so that a regression fails instead of hanging the suite), and class folders that are links are
followed only inside the dataset's folder."""

import base64
import json
import os
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

import kcnn.data
from kcnn.data.folder import CorruptImageError, EmptyDatasetError, image_array, read_image

RNG = np.random.default_rng(0)
DEEP = np.array([[0, 1, 128, 129, 256, 257], [385, 386, 1000, 32767, 32896, 40000],
                 [50000, 60000, 65000, 65406, 65407, 65535]], dtype=np.uint16)  # around the roundings and both ends
# What a viewer shows for each EXIF orientation (the tag's definition: where the stored 0th row and column go),
# as NumPy index operations: 2 mirrored, 3 upside down, 4 flipped, 5 transposed, 6 turned a quarter clockwise,
# 7 transversed, 8 turned a quarter counter-clockwise.
SHOWN = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
         5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
         8: lambda a: np.rot90(a, 1)}
STORED = RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)  # square: every orientation keeps the shape
SECONDS = 30  # far more than any of these reads takes; a read blocked on a named pipe fails after it


def _rounded_257(values):
    """value / 257 rounded to the nearest integer, in integers (no value is halfway: 257 is odd)."""
    return ((values.astype(np.int64) * 2 + 257) // 514).astype(np.uint8)


def _rgb(grey):
    return np.repeat(grey[..., None], 3, axis=-1)


def _oriented_png(path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    Image.fromarray(STORED).save(path, exif=exif)
    return path


# ---- modes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path, mode):
    path = tmp_path / "deep.png"
    data = DEEP.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    Image.frombytes(mode, DEEP.shape[::-1], data).save(path)
    assert Image.open(path).mode in ("I", "I;16")  # as Pillow reads 16-bit PNGs (version-dependent)
    expected = _rounded_257(DEEP)
    assert expected[-1, -1] == 255 and expected[1, 3] == 127  # 65535 -> 255; 32767 -> 127 (127.5 less 1/514)
    np.testing.assert_array_equal(read_image(path, "L"), expected)
    np.testing.assert_array_equal(read_image(path, "RGB"), _rgb(expected))
    np.testing.assert_array_equal(read_image(path.read_bytes(), "L"), expected)  # bytes: as serve decodes


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_every_16_bit_mode_in_memory(mode):
    dtype = {"I;16B": ">u2"}.get(mode, "<u2")
    image = Image.frombytes(mode, DEEP.shape[::-1], DEEP.astype(dtype).tobytes())
    np.testing.assert_array_equal(image_array(image, "L"), _rounded_257(DEEP))


def test_32_bit_integers_are_16_bit_when_they_fit_else_scaled_from_their_range():
    """Mode "I" is how some Pillow versions read a 16-bit PNG (Pillow cannot write one here: tested in memory)."""
    np.testing.assert_array_equal(image_array(Image.fromarray(DEEP.astype(np.int32)), "L"), _rounded_257(DEEP))
    wide = np.array([[-5, 0, 70000], [2 ** 30, 2 ** 31 - 1, 1234567]], dtype=np.int32)
    expected = np.rint(np.clip(wide.astype(np.float64), 0, None) / (2 ** 31 - 1) * 255).astype(np.uint8)
    assert expected.tolist() == [[0, 0, 0], [128, 255, 0]]
    np.testing.assert_array_equal(image_array(Image.fromarray(wide), "L"), expected)


def test_float_pixels_in_0_1_are_scaled_others_clipped():
    unit = np.array([[0.0, 0.25, 0.5], [0.75, 0.999, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(image_array(Image.fromarray(unit), "L"),
                                  np.array([[0, 64, 128], [191, 255, 255]], dtype=np.uint8))
    wide = np.array([[-3.0, 0.4, 1.5], [254.6, 300.0, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(image_array(Image.fromarray(wide), "RGB"),
                                  _rgb(np.array([[0, 0, 2], [255, 255, 0]], dtype=np.uint8)))


def test_grey_with_alpha_palette_with_transparency_rgba_and_bilevel(tmp_path):
    """Alpha is dropped and the colours kept (as Keras' loader does, and kcnn did before)."""
    grey = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(np.stack([grey, alpha], axis=-1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png", "RGB"), _rgb(grey))
    np.testing.assert_array_equal(read_image(tmp_path / "la.png", "L"), grey)

    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = RNG.integers(0, 16, (5, 7), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.tobytes())
    image.save(tmp_path / "p.png", transparency=3)
    assert "transparency" in Image.open(tmp_path / "p.png").info
    np.testing.assert_array_equal(read_image(tmp_path / "p.png", "RGB"), palette[indices])

    rgba = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png", "RGB"), rgba[..., :3])

    bits = RNG.integers(0, 2, (5, 8), dtype=bool)
    Image.fromarray(bits).save(tmp_path / "bilevel.png")
    assert Image.open(tmp_path / "bilevel.png").mode == "1"
    np.testing.assert_array_equal(read_image(tmp_path / "bilevel.png", "RGB"), _rgb(bits.astype(np.uint8) * 255))


def test_a_cmyk_jpeg_is_its_colours():
    """Flat 8x8 blocks (one JPEG block each: no colour bleeds across) of CMYK inks, within JPEG's loss."""
    inks = np.array([[0, 0, 0, 0], [255, 0, 0, 0], [0, 128, 255, 0], [30, 60, 90, 120], [0, 0, 0, 255],
                     [200, 10, 100, 40]], dtype=np.uint8)
    cmyk = np.repeat(np.repeat(inks[None], 8, axis=0), 8, axis=1)  # 8 x 48 pixels, six blocks
    import io

    buffer = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buffer, "JPEG", quality=100)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "CMYK"
    ink = inks.astype(np.float64)
    expected = (255 - ink[:, :3]) * (255 - ink[:, 3:]) / 255  # each ink takes its share of what black leaves
    decoded = read_image(buffer.getvalue(), "RGB").astype(np.float64)
    blocks = decoded.reshape(8, 6, 8, 3).mean(axis=(0, 2))
    np.testing.assert_allclose(blocks, expected, atol=3)


# ---- EXIF orientation: a folder, predict, explain and serve -------------------------------------------

def test_orientation_read_image_every_value(tmp_path):
    for orientation, shown in SHOWN.items():
        path = _oriented_png(tmp_path / f"{orientation}.png", orientation)
        np.testing.assert_array_equal(read_image(path), shown(STORED), err_msg=f"orientation {orientation}")
    assert not np.array_equal(SHOWN[5](STORED), SHOWN[7](STORED))  # the eight are told apart


def test_orientation_in_an_image_folder(tmp_path):
    for class_name in ("a", "b"):
        (tmp_path / "photos" / class_name).mkdir(parents=True)
        for orientation in SHOWN:
            _oriented_png(tmp_path / "photos" / class_name / f"{orientation}.png", orientation)
    data = kcnn.data.image_folder(tmp_path / "photos", validation_split=0, subset="training")
    expected = np.stack([shown(STORED) for shown in SHOWN.values()] * 2)  # files in sorted order, class by class
    np.testing.assert_array_equal(data.images, expected)


def test_orientation_in_predict_and_explain(tmp_path):
    """predict_files through a model whose logits are the pixels themselves (an identity Dense scaled by
    1/64): the log-probabilities give the pixels back, up to a constant."""
    import keras

    from kcnn.inspect.explain import read_images
    from kcnn.training.evaluate import predict_files

    paths = [str(_oriented_png(tmp_path / f"{o}.png", o)) for o in SHOWN]
    expected = np.stack([shown(STORED) for shown in SHOWN.values()]).astype(np.float32)
    inputs = keras.Input(STORED.shape)
    dense = keras.layers.Dense(STORED.size, use_bias=False)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([np.eye(STORED.size, dtype=np.float32) / 64])
    np.testing.assert_array_equal(read_images(model, paths), expected)

    names = [str(i) for i in range(STORED.size)]
    for path, ranking, pixels in zip(paths, predict_files(model, paths, names, top=STORED.size), expected):
        logits = np.zeros(STORED.size)
        for name, probability in ranking:
            logits[int(name)] = 64 * np.log(probability)
        np.testing.assert_allclose(logits - logits[0], pixels.ravel() - pixels.ravel()[0], atol=0.05, err_msg=path)


def test_orientation_and_16_bits_in_serves_b64_decoding(tmp_path):
    from kcnn.deploy import serve

    for orientation, shown in SHOWN.items():
        data = _oriented_png(tmp_path / f"{orientation}.png", orientation).read_bytes()
        decoded = serve._decode(base64.b64encode(data).decode(), "element 0", (6, 6, 3))
        assert decoded.dtype == np.float32
        np.testing.assert_array_equal(decoded, shown(STORED), err_msg=f"orientation {orientation}")
    Image.fromarray(DEEP).save(tmp_path / "deep.png")
    decoded = serve._decode(base64.b64encode((tmp_path / "deep.png").read_bytes()).decode(), "element 0", (3, 6, 1))
    np.testing.assert_array_equal(decoded[..., 0], _rounded_257(DEEP))
    with pytest.raises(serve.RequestError, match=r"^element 0: the image has 6x3 pixels, over this server's limit"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(serve, "MAX_PIXELS", 17)
            serve._decode(base64.b64encode((tmp_path / "deep.png").read_bytes()).decode(), "element 0", (3, 6, 1))


# ---- only regular files are opened ---------------------------------------------------------------------

def _promptly(call, *fifos):
    """call() in a thread, its result or its error; a call still running after SECONDS fails the test (the
    named pipes are then opened for writing and closed, which lets a reader blocked on one go on)."""
    outcome = {}

    def target():
        try:
            outcome["result"] = call()
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(SECONDS)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader waits on it
                pass
        thread.join(SECONDS)
        pytest.fail(f"still running after {SECONDS} s: a named pipe was opened")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


def test_a_named_pipe_is_not_opened_as_an_image(fifo):
    with pytest.raises(CorruptImageError, match=r"pipe\.png cannot be read as an image \(a named pipe \(FIFO\), "
                                                r"not a regular file\)") as error:
        _promptly(lambda: read_image(fifo), fifo)
    assert "\n" not in str(error.value)
    with pytest.raises(CorruptImageError, match="a folder, not a regular file"):
        read_image(fifo.parent)


def test_a_named_pipe_in_an_image_folder_is_skipped_and_counted_or_stops(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    root = tmp_path / "photos"
    for class_name in ("a", "b"):
        (root / class_name).mkdir(parents=True)
        for orientation in (1, 2):
            _oriented_png(root / class_name / f"{orientation}.png", orientation)
    fifo = root / "b" / "3.png"
    os.mkfifo(fifo)
    os.symlink(fifo, root / "a" / "link.png")  # a link to a pipe is followed to it, and refused too

    def skipped():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = kcnn.data.image_folder(root, validation_split=0, subset="training")
        return data, [str(w.message) for w in caught]

    data, messages = _promptly(skipped, fifo)
    assert len(data) == 4 and data.skipped == 2
    assert any(m.startswith("Skipped 2 unreadable file(s)") for m in messages), messages
    with pytest.raises(CorruptImageError, match=r"link\.png cannot be read as an image \(a named pipe"):
        _promptly(lambda: kcnn.data.image_folder(root, on_error="stop"), fifo)


def _run_dir(tmp_path):
    import keras

    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"dataset": "digits", "arch": "lenet5"}))
    (run_dir / "metrics.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(run_dir / "model.keras")
    return run_dir


def test_kcnn_predict_refuses_a_named_pipe_in_one_sentence(tmp_path, fifo, capsys):
    from kcnn.cli import main

    run_dir = _run_dir(tmp_path)
    code = _promptly(lambda: main(["predict", str(run_dir), str(fifo)]), fifo)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1] == (f"kcnn: error: {fifo} cannot be read as an image (a named pipe (FIFO), not a regular file); "
                       f"pass image files such as PNG or JPEG."), err


def test_a_named_pipe_is_not_opened_as_a_model_or_a_config(tmp_path, fifo):
    from kcnn.config import TrainConfig, read_config_file
    from kcnn.deploy import serve
    from kcnn.errors import KcnnError
    from kcnn.runs.modelfile import load_model
    from kcnn.runs.rundir import load_run

    model = tmp_path / "model.keras"
    os.mkfifo(model)
    with pytest.raises(KcnnError, match=r"model\.keras is a named pipe \(FIFO\), not a model file; pass a \.keras"):
        _promptly(lambda: load_model(str(model)), model)
    with pytest.raises(KcnnError, match=r"model\.keras is a named pipe \(FIFO\), not a model file; pass the "
                                        r"directory of a finished run"):
        _promptly(lambda: load_run(str(model)), model)
    with pytest.raises(KcnnError, match=r"model\.keras is a named pipe"):
        _promptly(lambda: load_run(str(tmp_path)), model)
    run_dir = _run_dir(tmp_path / "other")
    (run_dir / "config.json").unlink()
    os.mkfifo(run_dir / "config.json")
    with pytest.raises(KcnnError, match=r"is not a complete kcnn run \(.*a named pipe \(FIFO\), not a regular file"):
        _promptly(lambda: load_run(str(run_dir)), run_dir / "config.json")
    with pytest.raises(KcnnError, match=r"The config file .*config\.json is a named pipe \(FIFO\), not a regular"):
        _promptly(lambda: read_config_file(str(run_dir / "config.json"), TrainConfig), run_dir / "config.json")
    onnx = tmp_path / "model.onnx"
    os.mkfifo(onnx)
    with pytest.raises(serve.ServeError):  # os.path.isfile is False for a pipe: never opened
        _promptly(lambda: serve.find_source(str(onnx)), onnx)


# ---- class folders that are links ---------------------------------------------------------------------

def _class(folder, orientations=(1, 2)):
    folder.mkdir(parents=True)
    for orientation in orientations:
        _oriented_png(folder / f"{orientation}.png", orientation)


def test_a_linked_class_folder_inside_the_dataset_is_followed(tmp_path):
    root = tmp_path / "photos"
    _class(root / "a")
    _class(root / ".store" / "b", (3, 4, 5))  # hidden: not a class itself
    os.symlink(os.path.join(".store", "b"), root / "b")
    data = kcnn.data.image_folder(root, validation_split=0, subset="training")
    assert data.class_names == ("a", "b") and data.labels.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(data.images[2], SHOWN[3](STORED))


@pytest.mark.parametrize("target, message", [
    ("outside", r"The class folder \S+photos/b is a link to \S+outside, outside \S+photos; copy that folder into "
                r"\S+photos, or point the link at a folder inside it\."),
    ("root", r"photos/b is a link to \S+photos, outside"),
    ("other class", r"photos/b is a link to \S+photos/a, which shares images with the class folder \S+photos/a; "
                    r"point the link at a folder of its own class\."),
])
def test_a_linked_class_folder_elsewhere_is_refused(tmp_path, target, message):
    root = tmp_path / "photos"
    _class(root / "a")
    _class(tmp_path / "outside")
    os.symlink({"outside": tmp_path / "outside", "root": root, "other class": root / "a"}[target], root / "b")
    with pytest.raises(EmptyDatasetError, match=message) as error:
        kcnn.data.image_folder(root)
    assert "\n" not in str(error.value)
