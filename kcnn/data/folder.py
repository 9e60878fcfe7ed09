"""Image folders with one sub-folder per class (the notes' fish-versus-cat case).

    train, val = kcnn.data.image_folder("photos/", image_size=(64, 64), validation_split=0.2)

The layout is `keras.utils.image_dataset_from_directory`'s: class names are
the sub-folder names in sorted order, and files anywhere below a class
folder belong to it. Images are decoded once into uint8 arrays in memory
(the same `ImageData` the built-in datasets return, so `kcnn.training.train` and the
tf.data pipeline treat them alike). Keras' loader is not used for decoding
because it stops at the first unreadable file, converts modes silently and
has no pixel-count limit; here each file is decoded with Pillow (Keras' own
image library) so that a bad file can be skipped and counted, or named.

Every image is read as a viewer shows it (`image_array`): turned upright by its EXIF orientation, 16-bit and
float pixels scaled to 8 bits rather than clipped. Only regular files are opened: a named pipe would block the
read forever, a device file never end. `kcnn predict`, `kcnn explain` and `kcnn serve` decode with
`read_image` too (serve imports this module without Keras: it needs only NumPy and Pillow).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import stat
import warnings
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from kcnn.data.datasets import ImageData
from kcnn.errors import InvalidArgumentError, KcnnError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import PIL.Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # Keras' list, and WebP
# The only decoders Pillow may use, whatever a file's name: Pillow picks one from the content, and some
# (EPS) hand the file to Ghostscript, a program that has run code from crafted files.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MAX_PIXELS = 64 * 1024 * 1024  # per image; larger ones are refused before they are decoded (decompression bombs)
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1)}
ON_ERROR = ("skip", "stop")
# What read_image (and kcnn.predict, kcnn.explain) take: a path, bytes, a PIL.Image.Image or an array of pixels
ImageInput = Union[str, os.PathLike, bytes, Any]


class EmptyDatasetError(KcnnError):
    """A folder without enough images or classes to train on."""


class CorruptImageError(KcnnError):
    """An image file that cannot be decoded; `reason` says why in a few words."""

    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason or message


class ImageTooLargeError(CorruptImageError):
    """An image over the pixel limit; `size` is its (width, height), read from its header."""

    def __init__(self, message, reason, size):
        super().__init__(message, reason=reason)
        self.size = size


class ImageSizeError(KcnnError):
    """Images of different sizes without an `image_size` to resize them to."""


def image_folder(directory: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None,
                 validation_split: float = 0.2, subset: str = "both", seed: int = 0, color_mode: str = "rgb",
                 on_error: str = "skip", max_pixels: int = MAX_PIXELS,
                 verbose: bool = True) -> ImageData | tuple[ImageData, ImageData]:
    """Load a folder of class sub-folders into memory, each image as a viewer
    shows it (`image_array`: EXIF orientation, 16-bit pixels scaled to 8 bits).

    Args:
        directory: folder holding one sub-folder per class.
        image_size: `(height, width)` (or an int) to resize every image to;
            `None` keeps the images' own size, which must then be the same
            for all of them.
        validation_split: fraction of each class held out for validation
            (stratified, chosen by `seed`); 0 puts everything in training.
        subset: "training", "validation" or "both" (a pair).
        color_mode: "rgb" (grey, palette and RGBA images are converted) or
            "grayscale".
        on_error: "skip" unreadable files and report how many, or "stop" at
            the first one with an error naming it. Files that are not regular
            files (named pipes, devices) count as unreadable, unopened.
        max_pixels: images with more pixels are treated as unreadable.
    """
    directory = os.fspath(directory)
    _check_arguments(directory, image_size, validation_split, subset, color_mode, on_error)
    class_names, files = _list_files(directory)
    mode, channels = COLOR_MODES[color_mode]
    size = None if image_size is None else ((image_size, image_size) if isinstance(image_size, int)
                                            else tuple(image_size))

    def decode(path):
        try:
            return read_image(path, mode, size, max_pixels)
        except CorruptImageError as error:  # the file is unreadable, whatever the reason
            return error.reason

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, [path for path, _ in files]))

    images, labels, bad = [], [], []
    for (path, label), result in zip(files, decoded):
        if isinstance(result, str):
            if on_error == "stop":
                raise CorruptImageError(
                    f"{path} cannot be read as an image ({result}); remove or fix it, or pass on_error='skip' "
                    f"(--on-bad-image skip) to skip unreadable files."
                )
            bad.append(path)
            continue
        images.append(result)
        labels.append(label)
    if bad and verbose:
        warnings.warn(f"Skipped {len(bad)} unreadable file(s) in {directory}, e.g. {bad[0]}.", stacklevel=2)
    labels = np.asarray(labels, dtype="int64")
    _check_contents(directory, class_names, images, labels, files)
    images = np.stack(images)
    if images.ndim == 3:
        images = images[..., None]
    assert images.shape[-1] == channels
    training, validation = _split(labels, validation_split, seed)
    name = os.path.basename(os.path.normpath(directory))
    parts = {
        "training": ImageData(images[training], labels[training], class_names, f"{name}/training", skipped=len(bad)),
        "validation": ImageData(images[validation], labels[validation], class_names, f"{name}/validation",
                                skipped=len(bad)),
    }
    if subset == "both":
        return parts["training"], parts["validation"]
    return parts[subset]


def _check_arguments(directory, image_size, validation_split, subset, color_mode, on_error):
    if not os.path.isdir(directory):
        raise EmptyDatasetError(
            f"{directory} is not a folder; pass a folder that holds one sub-folder of images per class."
        )
    if image_size is not None:
        pair = (image_size, image_size) if isinstance(image_size, int) else image_size
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
            raise InvalidArgumentError(
                f"image_size must be a positive int or a (height, width) pair. Received: image_size={image_size!r}"
            )
    if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
        raise InvalidArgumentError(
            f"validation_split must be in [0, 1). Received: validation_split={validation_split!r}"
        )
    for argument, value, valid in (("subset", subset, ("training", "validation", "both")),
                                   ("color_mode", color_mode, tuple(COLOR_MODES)),
                                   ("on_error", on_error, ON_ERROR)):
        if value not in valid:
            raise InvalidArgumentError(f"{argument} must be one of {', '.join(valid)}. Received: {argument}={value!r}")


def _list_files(directory):
    """Sorted class names and (path, label) pairs. A class folder that is a link is followed when it points
    inside `directory` (to a folder no other class holds); inside class folders, links to folders are not
    followed (a link loop cannot hang the walk), as in Keras' default. Files that are not regular (named
    pipes, devices) are listed: `read_image` refuses them without opening them, so they are counted as
    unreadable."""
    class_names = tuple(sorted(entry.name for entry in os.scandir(directory)
                               if entry.is_dir() and not entry.name.startswith(".")))
    _check_linked_classes(directory, class_names)
    files = []
    for label, class_name in enumerate(class_names):
        for root, folders, names in os.walk(os.path.join(directory, class_name)):
            folders.sort()
            files += [(os.path.join(root, n), label) for n in sorted(names)
                      if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    return class_names, files


def _check_linked_classes(directory, class_names):
    """Refuse a class folder that is a link to outside `directory`, or to (a folder of) another class: its
    images would be read from elsewhere, or counted in two classes."""
    root = os.path.realpath(directory)
    real = {name: os.path.realpath(os.path.join(directory, name)) for name in class_names}
    for name in class_names:
        link = os.path.join(directory, name)
        if not os.path.islink(link):
            continue
        target = real[name]
        if target == root or os.path.commonpath([root, target]) != root:
            raise EmptyDatasetError(
                f"The class folder {link} is a link to {target}, outside {directory}; copy that folder into "
                f"{directory}, or point the link at a folder inside it."
            )
        other = next((o for o in class_names if o != name
                      and os.path.commonpath([real[o], target]) in (real[o], target)), None)
        if other is not None:
            raise EmptyDatasetError(
                f"The class folder {link} is a link to {target}, which shares images with the class folder "
                f"{os.path.join(directory, other)}; point the link at a folder of its own class."
            )


def read_image(source: ImageInput, mode: str = "RGB", size: Optional[tuple] = None,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, C), as a viewer shows it (`image_array`): `source` is a file's path,
    its bytes, a Pillow image or an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of 0-255 values (floats all
    in [0, 1] are scaled by 255, as image libraries write them); converted to Pillow `mode` ("RGB" or "L") and
    resized to `size` (height, width; a None in it keeps the image's own) when given. Only a regular file is
    opened (`special_file`), and images over `max_pixels` are refused before their pixels are decoded (an
    `ImageTooLargeError`). Whatever is wrong with the image, the error is a `CorruptImageError`."""
    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    if not in_memory and not isinstance(source, (str, os.PathLike)):
        return image_array(_pillow_image(source), mode, size)
    name = "the image bytes" if in_memory else os.fspath(source)
    try:
        return _decode(io.BytesIO(source) if in_memory else name, name, mode, size, max_pixels)
    except CorruptImageError:
        raise
    except Exception as error:  # Pillow and the OS raise many kinds: unknown format, truncated, unreadable
        reason = _reason(error, max_pixels)
        raise CorruptImageError(_unreadable(name, reason), reason=reason) from None


def _pillow_image(source):
    """A Pillow image of an image already in memory (a Pillow image, or an array of pixels), or one sentence."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    if not hasattr(source, "__array__"):
        raise InvalidArgumentError(f"An image is a file's path, its bytes, a Pillow image or an array of pixels. "
                                   f"Received: {type(source).__name__}")
    pixels = np.asarray(source)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))) or 0 in pixels.shape:
        raise InvalidArgumentError(f"An image array is (height, width), (height, width, 1), (height, width, 3) or "
                                   f"(height, width, 4). Received: an array of shape {pixels.shape}")
    if not (np.issubdtype(pixels.dtype, np.number) or pixels.dtype == bool):
        raise InvalidArgumentError(f"An image array holds numbers. Received: an array of {pixels.dtype}")
    if pixels.dtype != np.uint8:
        values = np.nan_to_num(pixels.astype(np.float64), nan=0.0)
        in_unit_range = np.issubdtype(pixels.dtype, np.floating) and values.min() >= 0 and values.max() <= 1
        pixels = np.clip(np.rint(values * 255 if in_unit_range or pixels.dtype == bool else values), 0, 255)
        pixels = pixels.astype(np.uint8)
    return Image.fromarray(pixels)


def special_file(path: str | os.PathLike) -> Optional[str]:
    """What `path` is when it exists and is not a regular file, after links ("a named pipe", "a folder"...),
    else None (a missing path is left to the open that follows). Found with os.stat, never by opening it:
    opening a named pipe blocks until something writes to it, and a device file may never end."""
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None
    if kind == stat.S_IFREG:
        return None
    return {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a device file", stat.S_IFBLK: "a device file"}.get(kind, "a special file")


def _decode(file, name, mode, size, max_pixels):
    from PIL import Image

    kind = None if isinstance(file, io.BytesIO) else special_file(file)
    if kind is not None:  # refused before open(): a named pipe would block this thread forever
        reason = f"{kind}, not a regular file"
        raise CorruptImageError(_unreadable(name, reason), reason=reason)
    with Image.open(file, formats=FORMATS) as image:
        if image.width * image.height > max_pixels:
            reason = f"{image.width}x{image.height} pixels is over the limit of {max_pixels:,}"
            raise ImageTooLargeError(_unreadable(name, reason), reason, image.size)
        return image_array(image, mode, size)


def image_array(image: PIL.Image.Image, mode: str = "RGB", size: Optional[tuple] = None) -> np.ndarray:
    """A Pillow image as uint8 (H, W) or (H, W, C), as an image viewer shows it, in Pillow `mode` ("RGB" or
    "L"), resized (bilinear) to `size` (height, width; a None in it keeps the image's own) when given:

    - turned upright by its EXIF orientation (phones store pictures sideways with a tag that says so);
    - 16-bit grey ("I;16", "I;16B", "I;16L") scaled to 8 bits, value / 257 rounded (65535 -> 255), where
      Pillow's own conversion clips everything over 255 to white. "I" (32-bit integers) is how Pillow reads
      16-bit PNGs in some versions, so it is taken as 16-bit when its values fit (its largest at most 65535:
      a dark 16-bit image stays dark, as in a viewer), else as 32-bit, scaled from 0-2**31-1; negatives are 0;
    - float ("F", from no allowed format but made in memory) as image libraries write it: values all in
      [0, 1] scaled by 255, others taken as 0-255 and clipped (NaN is 0);
    - palette, grey with alpha and transparency through RGBA, then the colours kept and the alpha dropped
      (as Keras' loader does); CMYK and bilevel ("1") by Pillow's conversions.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)  # the orientation a viewer applies; a copy when there is none
    image = _eight_bit(image)
    if image.mode in ("P", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")  # palette and transparency: composite via RGBA first
    image = image.convert(mode)
    if size is not None:
        wanted = (image.width if size[1] is None else size[1], image.height if size[0] is None else size[0])
        if image.size != wanted:
            image = image.resize(wanted, Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _eight_bit(image):
    """An "L" image of a 16-bit, 32-bit or float grey one (as `image_array` says); any other unchanged."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image).astype(np.float64)
        top = 65535 if image.mode != "I" or values.max(initial=0) <= 65535 else 2 ** 31 - 1
        pixels = np.rint(np.clip(values, 0, None) * 255 / top)
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        in_unit_range = values.size and values.min() >= 0 and values.max() <= 1
        pixels = np.clip(np.rint(values * 255 if in_unit_range else values), 0, 255)
    else:
        return image
    return Image.fromarray(pixels.astype(np.uint8))  # 2-D uint8: mode "L"


def _unreadable(path, reason):
    return f"{path} cannot be read as an image ({reason}); pass image files such as PNG or JPEG."


def _reason(error, max_pixels):
    """Why a file did not decode, in a few words (Pillow's messages repeat the path or span lines)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not a PNG, JPEG, BMP, GIF or WebP image"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):  # Pillow's limit: first
        found = re.search(r"\((\d+) pixels\)", str(error))
        limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else max_pixels
        count = f"{int(found.group(1)):,}" if found else "more"
        return f"{count} pixels is over the limit of {limit:,}"
    message = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
    return f"{type(error).__name__}: {message}"


def _check_contents(directory, class_names, images, labels, files):
    layout = f"{directory}/CLASS_NAME/IMAGE.jpg"
    if len(class_names) < 2:
        found = f"only the class {class_names[0]!r}" if class_names else "no class sub-folders"
        raise EmptyDatasetError(
            f"{directory} has {found}; a classifier needs at least two, laid out as {layout}."
        )
    if not images:
        what = f"{len(files)} image file(s), none readable" if files else "no image files"
        raise EmptyDatasetError(f"{directory} has {what} ({', '.join(IMAGE_EXTENSIONS)}); expected {layout}.")
    empty = [name for i, name in enumerate(class_names) if not np.any(labels == i)]
    if empty:
        raise EmptyDatasetError(
            f"The class folder(s) {', '.join(empty)} in {directory} hold no readable images; add images or "
            f"remove the folder(s)."
        )
    shapes = {}
    for image, label in zip(images, labels):
        shapes.setdefault(image.shape[:2], label)
    if len(shapes) > 1:
        (first, _), (second, _) = list(shapes.items())[:2]
        raise ImageSizeError(
            f"The images in {directory} have {len(shapes)} different sizes (e.g. {first[0]}x{first[1]} and "
            f"{second[0]}x{second[1]}); pass image_size=(height, width) (--image-size) to resize them all."
        )


def _split(labels, validation_split, seed):
    """Stratified: each class gives the same fraction to validation."""
    rng = np.random.default_rng(seed)
    training, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(len(members) * validation_split))
        if validation_split > 0 and len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        validation.append(members[:count])
        training.append(members[count:])
    return np.sort(np.concatenate(training)), np.sort(np.concatenate(validation))
