"""Properties, with hypothesis: whatever the arguments or the bytes of a
file, kcnn gives a result of the documented shape or a `KcnnError`, never
another exception. Examples are derandomized (the same ones on every run and
in CI) and few, so the file runs in well under a minute."""

import io
import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import kcnn
import kcnn.data
from kcnn.data.folder import read_image
from kcnn.backends.initializers import weightless_scope

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------------------
# Shape checks: kcnn.build(name, input_shape=..., num_classes=...) builds or raises a KcnnError

ARCHS = ("lenet5", "cifar_resnet20", "squeezenet1_1", "mlp")  # cheap, and each with its own minimum size

dimension = st.one_of(
    st.integers(-3, 300),
    st.integers(-3, 300),  # mostly whole numbers ...
    st.sampled_from([None, 32.0, 1.5, "32", True, np.int64(32), float("nan")]),  # ... and sometimes not
)
input_shapes = st.one_of(
    st.lists(dimension, min_size=0, max_size=5).map(tuple),
    st.lists(dimension, min_size=3, max_size=3),
    st.tuples(st.integers(1, 300), st.integers(1, 300), st.integers(1, 5)),  # valid-looking, of any size
    st.sampled_from([None, 32, "32x32x3", (), ((32, 32), 3)]),
)
class_counts = st.one_of(st.integers(-2, 1000), st.sampled_from([None, 0, 2.0, "10", True, np.int64(10)]))


def _is_valid(info, input_shape, num_classes):
    """kcnn's documented contract: three positive whole numbers, height and width at least the minimum size."""
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    shape_ok = input_shape is None or (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
                                       and all(whole(d) and d >= 1 for d in input_shape)
                                       and min(input_shape[:2]) >= info.min_input_size)
    classes_ok = num_classes is None or (whole(num_classes) and num_classes >= 1)
    return shape_ok and classes_ok


@settings(max_examples=200, **SETTINGS)
@given(arch=st.sampled_from(ARCHS), input_shape=input_shapes, num_classes=class_counts)
def test_build_gives_a_model_of_the_right_shape_or_a_kcnn_error(arch, input_shape, num_classes):
    info = kcnn.get_model_info(arch)
    try:
        with weightless_scope():  # shapes only: nothing allocated, even for mlp at 300x300
            model = kcnn.build(arch, input_shape=input_shape, num_classes=num_classes)
    except kcnn.KcnnError as error:
        assert not _is_valid(info, input_shape, num_classes), f"a valid call was refused: {error}"
        assert "\n" not in str(error) and "Received" in str(error)
        event("refused")
        return
    event("built")
    assert _is_valid(info, input_shape, num_classes)
    expected = info.default_input_shape if input_shape is None else tuple(input_shape)
    assert tuple(model.input_shape) == (None, *expected)
    assert tuple(model.output_shape) == (None, info.default_num_classes if num_classes is None else num_classes)


fractions = st.one_of(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(-0.5, 1.5),
                      st.sampled_from([0, 1, True, None, "0.5", float("nan")]))
FAMILY_OPTIONS = {  # each family's own options, with good and bad values
    "lenet5": dict(activation=st.sampled_from(["relu", "tanh", "sigmoid", None, "nope", 3]),
                   pool=st.sampled_from(["max", "avg", "max", "avg", "min", None])),
    "squeezenet1_1": dict(dropout=fractions),
    "googlenet": dict(aux_logits=st.booleans(), dropout=fractions),
    "mobilenet": dict(alpha=st.one_of(st.floats(0.1, 1.5), st.floats(-1, 1.5), st.sampled_from([0, "x", None])),
                      dropout=fractions),
    "simple_cnn": dict(filters=st.lists(st.integers(-1, 16), min_size=1, max_size=5).map(tuple),
                       hidden=st.one_of(st.integers(1, 64), st.integers(-1, 64), st.sampled_from(["x", None]))),
    "mlp": dict(hidden=st.one_of(st.lists(st.integers(1, 64), max_size=3).map(tuple),
                                 st.lists(st.integers(-1, 64), max_size=3).map(tuple), st.sampled_from([5, "x"]))),
}


@st.composite
def build_calls(draw):
    arch = draw(st.sampled_from(sorted(FAMILY_OPTIONS)))
    info = kcnn.get_model_info(arch)
    size = draw(st.integers(max(1, info.min_input_size - 2), info.min_input_size + 80))
    options = {key: draw(values) for key, values in FAMILY_OPTIONS[arch].items() if draw(st.booleans())}
    include_top = draw(st.booleans())
    common = dict(include_top=include_top, name=draw(st.sampled_from([None, None, "mine", "a/b", 3])),
                  pooling=draw(st.sampled_from([None] if include_top else [None, "avg", "max", "min"])))
    return arch, (size, size + draw(st.integers(0, 20)), draw(st.integers(1, 4))), options, common


@settings(max_examples=120, **SETTINGS)
@given(call=build_calls())
def test_family_options_give_a_model_or_a_kcnn_error(call):
    arch, input_shape, options, common = call
    try:
        with weightless_scope():
            model = kcnn.build(arch, input_shape=input_shape, num_classes=7, **options, **common)
    except kcnn.KcnnError as error:
        assert "\n" not in str(error) and "Received" in str(error)
        event("refused")
        return
    event("built")
    outputs = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
    for shape in outputs:
        if common["include_top"]:
            assert tuple(shape) == (None, 7)
        else:  # features: pooled, or a map (the MLP's are a vector)
            assert len(shape) == (2 if common["pooling"] or arch == "mlp" else 4)
    assert len(outputs) == (3 if options.get("aux_logits") and common["include_top"] else 1)


@settings(max_examples=40, **SETTINGS)
@given(arch=st.sampled_from(ARCHS), input_shape=input_shapes)
def test_summary_gives_a_table_or_a_kcnn_error(arch, input_shape):
    try:
        result = kcnn.summary(arch, input_shape=input_shape, print_fn=None)
    except kcnn.KcnnError:
        assert not _is_valid(kcnn.get_model_info(arch), input_shape, None)
        return
    assert result.total_params > 0 and result.model_name == arch


# ---------------------------------------------------------------------------
# Image files: read_image gives uint8 pixels of the expected shape or a CorruptImageError

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F")
OTHER_FORMATS = ("TIFF", "EPS", "ICO", "PPM", "TGA", "PCX", "SGI", "DDS", "QOI")
MAX_PIXELS = 64 * 64  # small, so that a flipped header cannot make an example slow


@st.composite
def image_files(draw):
    """(bytes, extension, (height, width) when the bytes are an intact image, "refused" when they must be
    refused, else None)."""
    kind = draw(st.sampled_from(["image", "image", "image", "random", "other format"]))
    if kind == "random":
        return draw(st.binary(max_size=300)), draw(st.sampled_from(list(FORMATS.values()))), None
    if kind == "other format":  # Pillow reads it, kcnn must not: only the formats of its extensions
        buffer = io.BytesIO()
        Image.new("RGB", (draw(st.integers(1, 12)), draw(st.integers(1, 12)))).save(
            buffer, format=draw(st.sampled_from(OTHER_FORMATS)))
        return buffer.getvalue(), draw(st.sampled_from(list(FORMATS.values()))), "refused"
    mode = draw(st.sampled_from(MODES))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    format = draw(st.sampled_from(sorted(FORMATS)))
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    try:
        image.save(buffer, format=format)
    except (OSError, ValueError):  # Pillow cannot write this mode in this format: the closest it can
        image.convert("RGB" if format == "JPEG" else "RGBA").save(buffer, format=format)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "none", "flip", "truncate", "append"]))
    if damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    extension = FORMATS[format] if draw(st.booleans()) else draw(st.sampled_from(list(FORMATS.values())))
    return bytes(data), extension, ((height, width) if damage in ("none", "append") else None)


def _check_pixels(pixels, mode, size, intact):
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8
    assert pixels.ndim == (3 if mode == "RGB" else 2) and (mode == "L" or pixels.shape[-1] == 3)
    if size is not None:
        assert pixels.shape[:2] == size
    elif intact is not None:
        assert pixels.shape[:2] == intact


@settings(max_examples=400, **SETTINGS)
@given(file=image_files(), mode=st.sampled_from(["RGB", "L"]),
       size=st.one_of(st.none(), st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_read_image_gives_uint8_pixels_or_a_corrupt_image_error(tmp_path, file, mode, size):
    data, extension, intact = file
    path = tmp_path / f"image{extension}"
    path.write_bytes(data)
    try:
        pixels = read_image(path, mode, size, max_pixels=MAX_PIXELS)
    except kcnn.data.CorruptImageError as error:
        assert intact in (None, "refused"), f"an intact image was refused: {error}"
        message = str(error)
        assert message.startswith(f"{path} cannot be read as an image (") and "\n" not in message
        event("refused")
        return
    event("read")
    assert intact != "refused", "a format kcnn does not decode was decoded"
    _check_pixels(pixels, mode, size, intact)


@settings(max_examples=50, **SETTINGS)
@given(files=st.lists(image_files(), min_size=2, max_size=5),
       image_size=st.one_of(st.none(), st.integers(1, 16)), color_mode=st.sampled_from(["rgb", "grayscale"]))
def test_image_folder_that_stops_raises_only_kcnn_errors(tmp_path_factory, files, image_size, color_mode):
    root = tmp_path_factory.mktemp("folder")
    for i, (data, extension, _) in enumerate(files):
        folder = root / ("cat", "ship")[i % 2]
        folder.mkdir(exist_ok=True)
        (folder / f"{i}{extension}").write_bytes(data)
    try:
        train = kcnn.data.image_folder(root, image_size=image_size, color_mode=color_mode, on_error="stop",
                                       validation_split=0, subset="training", max_pixels=MAX_PIXELS)
    except kcnn.KcnnError as error:
        assert "\n" not in str(error)
        event(f"refused: {type(error).__name__}")
        return
    event("loaded")
    assert train.images.dtype == np.uint8 and len(train) == len(files)
    assert train.images.shape[-1] == (3 if color_mode == "rgb" else 1)
    if image_size is not None:
        assert train.images.shape[1:3] == (image_size, image_size)


@pytest.mark.parametrize("name", [
    "notes.png", "empty.jpg", "folder.png", "missing.png", "link.png",
])
def test_unreadable_paths_are_corrupt_image_errors(tmp_path, name):
    path = tmp_path / name
    if name == "notes.png":
        path.write_text(string.ascii_letters)
    elif name == "empty.jpg":
        path.write_bytes(b"")
    elif name == "folder.png":
        path.mkdir()
    elif name == "link.png":
        os.symlink(path, path)  # a link to itself
    with pytest.raises(kcnn.data.CorruptImageError, match=rf"{name} cannot be read as an image \(.+\); pass image"):
        read_image(path)
