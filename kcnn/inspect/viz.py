"""Plots for runs and notebooks: training curves, confusion matrix, sample
predictions (the run directories' PNGs), and the lecture notes' pictures:
kernels applied to a photo, a layer's learned filters, feature maps of an
image through a model, and the architecture comparison chart (parameters,
multiply-accumulates, ImageNet top-5 accuracy). Each returns the matplotlib
Figure; `save_figure` writes it atomically (a temporary name, then a rename)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    from matplotlib.figure import Figure


def _pyplot():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None and not _in_notebook():
        matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    return plt


def _in_notebook():
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def training_curves(history: dict, title: str | None = None, phase_starts: dict | None = None) -> Figure:
    """Loss and accuracy per epoch, training and validation, side by side.

    `history`: a Keras History, its `.history` dict, or rows of history.csv.
    `phase_starts`: {label: first epoch (1-based)} marked by a dashed line,
    e.g. the fine-tuning phase.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    logs = getattr(history, "history", history)
    epochs = np.arange(1, len(logs["loss"]) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric, label in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        if metric in logs:
            axis.plot(epochs, logs[metric], "o-", label="training")
        if f"val_{metric}" in logs:
            axis.plot(epochs, logs[f"val_{metric}"], "s-", label="validation")
        axis.set_xlabel("epoch")
        if len(epochs) <= 15:
            axis.set_xticks(epochs)  # whole epochs, also for a run of one or two
            axis.set_xlim(0.5, len(epochs) + 0.5)
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label.lower())
        axis.set_title(label)
        axis.grid(alpha=0.3)
        for phase, epoch in (phase_starts or {}).items():
            axis.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
            axis.annotate(phase, (epoch - 0.5, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                          textcoords="offset points", color="grey", fontsize=9)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def confusion_matrix(true_labels: np.ndarray, predicted_labels: np.ndarray, class_names: Sequence[str],
                     title: str = "Confusion matrix") -> Figure:
    """Counts of (true, predicted) pairs, with per-class accuracy on the rows."""
    plt = _pyplot()
    count = len(class_names)
    matrix = np.zeros((count, count), dtype=int)
    np.add.at(matrix, (np.asarray(true_labels), np.asarray(predicted_labels)), 1)
    size = max(5, 0.6 * count + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(count), class_names, rotation=45, ha="right")
    recall = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    axis.set_yticks(range(count), [f"{name} ({r:.0%})" for name, r in zip(class_names, recall)])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (per-class accuracy)")
    axis.set_title(title)
    if count <= 20:
        threshold = matrix.max() / 2
        for i in range(count):
            for j in range(count):
                axis.text(j, i, matrix[i, j], ha="center", va="center", fontsize=8,
                          color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    return figure


def sample_predictions(images: np.ndarray, true_labels: np.ndarray, predicted_labels: np.ndarray,
                       class_names: Sequence[str], columns: int = 8, rows: int = 4,
                       title: str = "Test images: predicted (true)") -> Figure:
    """A grid of images titled with the prediction; wrong ones in red with the true class."""
    plt = _pyplot()
    count = min(len(images), columns * rows)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows))
    for index, axis in enumerate(np.ravel(axes)):
        axis.axis("off")
        if index >= count:
            continue
        image = np.asarray(images[index])
        axis.imshow(image[..., 0] if image.shape[-1] == 1 else image.astype(np.uint8),
                    cmap="gray" if image.shape[-1] == 1 else None)
        predicted, true = int(predicted_labels[index]), int(true_labels[index])
        right = predicted == true
        label = class_names[predicted] if right else f"{class_names[predicted]}\n(true: {class_names[true]})"
        axis.set_title(label, fontsize=8, color="black" if right else "red")
    figure.suptitle(title + " — wrong ones in red")
    figure.tight_layout()
    return figure


def grad_cam_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """A Grad-CAM heatmap (H, W) in [0, 1] (`kcnn.inspect.explain.grad_cam`) in a matplotlib colormap, blended over
    the image (0-255, grey or RGB; `alpha` of the colour): an (H, W, 3) uint8 RGB image. A heatmap of
    another size is resized (bilinear) to the image's."""
    import matplotlib
    from PIL import Image

    image = np.asarray(image, dtype="float32")
    image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1) if image.ndim == 2 or image.shape[-1] == 1 \
        else image[..., :3]
    heatmap = np.asarray(heatmap, dtype="float32")
    if heatmap.shape != image.shape[:2]:
        heatmap = np.asarray(Image.fromarray(heatmap, mode="F").resize(image.shape[1::-1], Image.BILINEAR))
    colours = matplotlib.colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * np.clip(image, 0, 255) + alpha * colours, 0, 255).round().astype(np.uint8)


def grad_cam_grid(images: np.ndarray, heatmaps: np.ndarray, true_labels: np.ndarray, predicted_labels: np.ndarray,
                  class_names: Sequence[str], columns: int = 4, alpha: float = 0.4,
                  title: str = "Grad-CAM: where the model looked for its answer") -> Figure:
    """Images with their Grad-CAM overlays, titled with the prediction; wrong ones in red with the true
    class (`true_labels` None: the prediction alone)."""
    plt = _pyplot()
    count = len(images)
    rows = max(1, -(-count // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows + 0.4), squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(grad_cam_overlay(images[index], heatmaps[index], alpha=alpha))
        predicted = int(predicted_labels[index])
        true = predicted if true_labels is None else int(true_labels[index])
        right = predicted == true
        label = class_names[predicted] if right else f"{class_names[predicted]}\n(true: {class_names[true]})"
        axis.set_title(label, fontsize=8, color="black" if right else "red")
    figure.suptitle(title + ("" if true_labels is None else " — wrong ones in red"))
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    from kcnn.runs.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        figure.savefig(f, dpi=dpi, format=os.path.splitext(path)[1].lstrip(".") or "png")
    _pyplot().close(figure)
    return path


# ---- the lecture notes' pictures ----------------------------------------------------------------------

# 3x3 kernels of the lecture notes: what a convolution does before anything is learned.
KERNELS = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "box blur": [[1 / 9] * 3] * 3,
    "Gaussian blur": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "vertical edges (Sobel x)": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "horizontal edges (Sobel y)": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "all edges (Laplacian)": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
}


def grey(image: np.ndarray) -> np.ndarray:
    """A (H, W) float32 grey image from (H, W), (H, W, 1) or (H, W, 3) pixels (ITU-R 601 luma)."""
    image = np.asarray(image, dtype="float32")
    if image.ndim == 3 and image.shape[-1] == 3:
        return image @ np.array([0.299, 0.587, 0.114], dtype="float32")
    return image.reshape(image.shape[:2])


def apply_kernel(image: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: str = "same") -> np.ndarray:
    """One convolution of a grey image with one kernel, as a Conv2D layer computes it (Keras' own op:
    strictly a cross-correlation, like every deep-learning framework). Returns a (H', W') array with
    H' = (H - K + 2P) / S + 1 (`kcnn.inspect.summary.conv_output_size`)."""
    import keras

    kernel = np.asarray(kernel, dtype="float32")
    out = keras.ops.conv(grey(image)[None, :, :, None], kernel[:, :, None, None], strides=stride, padding=padding)
    return keras.ops.convert_to_numpy(out)[0, :, :, 0]


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] = (), columns: int = 4, title: str | None = None,
               cmap: str = "gray", size: float = 2.6) -> Figure:
    """Images side by side with their titles (grey images with `cmap`, RGB ones as they are)."""
    plt = _pyplot()
    images = [np.asarray(image) for image in images]
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + (0.4 if title else 0)),
                                squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if index >= len(images):
            continue
        image = images[index]
        if image.ndim == 3 and image.shape[-1] == 3:
            low, high = float(image.min()), float(image.max())
            axis.imshow((image - low) / max(high - low, 1e-12))  # any range shown as 0..1
        else:
            axis.imshow(image.reshape(image.shape[:2]), cmap=cmap)
        if index < len(titles):
            axis.set_title(titles[index], fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def kernels_on_image(image: np.ndarray, kernels: dict | None = None, columns: int = 4,
                     title: str = "3x3 kernels applied to the image") -> Figure:
    """The image (in grey) next to its convolution with each kernel of `kernels` ({name: KxK}, default
    KERNELS: blur, sharpen, edges). Edge maps are signed: they show the absolute value, scaled so that
    the strongest 1% of pixels are white."""
    kernels = KERNELS if kernels is None else kernels
    pictures, titles = [grey(image)], ["input (grey)"]
    for name, kernel in kernels.items():
        if name == "identity":
            continue
        result = apply_kernel(image, kernel)
        if np.isclose(np.asarray(kernel, dtype="float32").sum(), 0):  # an edge detector: signed, mostly small
            strength = np.abs(result)
            pictures.append(np.clip(strength / max(np.percentile(strength, 99), 1e-6), 0, 1))
        else:
            pictures.append(np.clip(result, 0, 255))
        titles.append(f"{name}\n{_kernel_text(kernel)}")
    return image_grid(pictures, titles, columns=columns, title=title)


def _kernel_text(kernel):
    kernel = np.asarray(kernel, dtype="float64")
    if np.allclose(kernel, kernel.flat[0]):
        return f"all {kernel.flat[0]:.3g}"
    scale = 16 if np.allclose(kernel * 16, np.round(kernel * 16)) and not np.allclose(kernel, np.round(kernel)) \
        else 1
    rows = (" ".join(f"{int(round(v * scale)):d}" for v in row) for row in kernel)
    return ("1/16 " if scale == 16 else "") + " | ".join(rows)


def conv_layers(model: keras.Model) -> list:
    """The Conv2D (and DepthwiseConv2D) layers of a model, nested models included, in order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += conv_layers(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            found.append(layer)
    return found


def learned_filters(model: keras.Model, layer: str | None = None, count: int = 32, columns: int = 8,
                    title: str | None = None) -> Figure:
    """The kernels of a convolution layer (default: the first), one per output channel: in colour when
    the layer sees RGB (the first layer of an ImageNet model), else the mean over its input channels,
    in a diverging map (red positive, blue negative)."""
    import keras

    layer = _find_conv(model, layer)
    kernel = keras.ops.convert_to_numpy(layer.kernel)  # (kh, kw, in, out); depthwise: (kh, kw, in, multiplier)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], 1, -1)
    count = min(count, kernel.shape[-1])
    if kernel.shape[2] == 3:
        pictures, cmap = [kernel[:, :, :, i] for i in range(count)], None
    else:
        pictures, cmap = [kernel[:, :, :, i].mean(axis=2) for i in range(count)], "RdBu_r"
    figure = image_grid(pictures, [f"{i}" for i in range(count)], columns=columns, cmap=cmap, size=1.3,
                        title=title or f"{layer.name}: {count} of its {layer.kernel.shape[-1]} learned "
                                        f"{layer.kernel.shape[0]}x{layer.kernel.shape[1]} filters")
    return figure


def feature_maps(model: keras.Model, image: np.ndarray, layers: Sequence[str] | None = None, maps: int = 8,
                 title: str | None = None) -> Figure:
    """What the image becomes at several depths: `maps` channels of each layer's output (default: four
    convolution layers spread over the model's depth), one row per layer."""
    import keras

    plt = _pyplot()
    chosen = [_find_conv(model, layer) for layer in layers] if layers else _spread(conv_layers(model), 4)
    probes = _probe(model, chosen)
    outputs = probes(np.asarray(image, dtype="float32")[None])
    outputs = [keras.ops.convert_to_numpy(out)[0] for out in (outputs if isinstance(outputs, (list, tuple))
                                                              else [outputs])]
    figure, axes = plt.subplots(len(chosen), maps + 1, figsize=(1.5 * (maps + 1), 1.7 * len(chosen)),
                                squeeze=False)
    for row, (layer, output) in enumerate(zip(chosen, outputs)):
        axes[row, 0].imshow(np.asarray(image).astype("uint8") if np.asarray(image).shape[-1] == 3
                            else grey(image), cmap=None if np.asarray(image).shape[-1] == 3 else "gray")
        axes[row, 0].set_title("input" if row == 0 else "", fontsize=8)
        axes[row, 0].set_ylabel(f"{layer.name}\n{output.shape[0]}x{output.shape[1]}x{output.shape[2]}",
                                fontsize=8)
        strongest = np.argsort(-np.abs(output).mean(axis=(0, 1)))[:maps]  # the most active channels
        for column, channel in enumerate(strongest, start=1):
            axes[row, column].imshow(output[:, :, channel], cmap="viridis")
            axes[row, column].set_title(f"ch {channel}", fontsize=7)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(title or "Feature maps: the most active channels of each layer (bright = strong)")
    figure.tight_layout()
    return figure


def _find_conv(model, layer):
    layers = conv_layers(model)
    if not layers:
        from kcnn.errors import InvalidArgumentError

        raise InvalidArgumentError(f"{model.name} has no convolution layer to show.")
    if layer is None:
        return layers[0]
    if not isinstance(layer, str):
        return layer
    for candidate in layers:
        if candidate.name == layer:
            return candidate
    from kcnn.errors import InvalidArgumentError

    raise InvalidArgumentError(f"{model.name} has no convolution layer named {layer!r}; its convolutions are "
                               f"{', '.join(c.name for c in layers[:8])}{', ...' if len(layers) > 8 else ''}.")


def _spread(layers, count):
    if len(layers) <= count:
        return layers
    return [layers[round(i * (len(layers) - 1) / (count - 1))] for i in range(count)]


def _probe(model, layers):
    """A model from `model`'s input to the outputs of `layers`, which may sit inside a nested model (a
    kcnn run's backbone behind its Normalization layer)."""
    import keras

    if all(layer in model.layers for layer in layers):
        return keras.Model(model.input, [layer.output for layer in layers])
    for inner in model.layers:
        if isinstance(inner, keras.Model) and all(layer in conv_layers(inner) for layer in layers):
            before = keras.Model(model.input, inner.input)  # what the outer model does before the backbone
            inside = _probe(inner, layers)
            return lambda images: inside(before(images))
    from kcnn.errors import InvalidArgumentError

    raise InvalidArgumentError("The layers to show must belong to one model (or one nested model) of "
                               f"{model.name}.")


# ImageNet-1k top-5 accuracy (%) of torchvision's IMAGENET1K_V1 weights for these architectures (acc@5 in
# the weights tables of pytorch.org/vision), the numbers the lecture notes' history compares; kcnn builds
# the same architectures (`kcnn.inspect.summary` counts their parameters and MACs).
IMAGENET_TOP5 = {
    "alexnet_torchvision": 79.066, "vgg16": 90.382, "vgg19": 90.876, "googlenet": 89.530, "resnet18": 89.078,
    "resnet50": 92.862, "resnet152": 94.046, "densenet121": 91.972, "squeezenet1_0": 80.420,
    "mobilenet_v2": 90.286,
}


def architecture_comparison(rows: Sequence[dict],
                            title: str = "ImageNet architectures: accuracy against cost") -> Figure:
    """The lecture notes' history chart: GMACs (log scale) against top-5 accuracy, bubble area in
    proportion to the parameters. `rows`: dicts with name, params, macs, top5 (and optional year)."""
    plt = _pyplot()
    rows = [row for row in rows if row.get("top5") is not None]
    figure, axis = plt.subplots(figsize=(9, 5.5))
    largest = max(row["params"] for row in rows)
    for row in rows:
        axis.scatter(row["macs"] / 1e9, row["top5"], s=40 + 2400 * row["params"] / largest, alpha=0.45,
                     edgecolors="black", linewidths=0.6)
    axis.set_xscale("log")
    low, high = min(row["macs"] for row in rows) / 1e9, max(row["macs"] for row in rows) / 1e9
    axis.set_xlim(low / 1.6, high * 2.5)  # room for the labels of the outermost bubbles
    figure.canvas.draw()
    from matplotlib.transforms import Bbox

    def bubble(row):  # the bubble's square in display pixels
        x, y = axis.transData.transform((row["macs"] / 1e9, row["top5"]))
        radius = np.sqrt(40 + 2400 * row["params"] / largest) / 2 * figure.dpi / 72
        return Bbox([[x - radius, y - radius], [x + radius, y + radius]])

    placed = []
    for row in sorted(rows, key=lambda row: -row["params"]):
        others = [bubble(other) for other in rows if other is not row]
        label = row["name"] + (f" ({row['year']})" if row.get("year") else "") + f", {row['params'] / 1e6:.1f}M"
        # Each label takes the first of eight spots around its bubble that overlaps no earlier label.
        for offset in ((9, 6), (9, -14), (-9, 8), (-9, -16), (0, 14), (0, -22), (12, 18), (12, -26)):
            text = axis.annotate(label, (row["macs"] / 1e9, row["top5"]), xytext=offset, textcoords="offset points",
                                 fontsize=8.5, ha="left" if offset[0] >= 0 else "right")
            box = text.get_window_extent(figure.canvas.get_renderer()).expanded(1.05, 1.15)
            if not any(box.overlaps(other) for other in placed + others):
                break
            text.remove()
        else:
            text = axis.annotate(label, (row["macs"] / 1e9, row["top5"]), xytext=(9, 6), textcoords="offset points",
                                 fontsize=8.5)
            box = text.get_window_extent(figure.canvas.get_renderer())
        placed.append(box)
    from matplotlib.ticker import FuncFormatter

    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_xlabel("multiply-accumulates per 224x224 image (GMACs, log scale)")
    axis.set_ylabel("ImageNet top-5 accuracy (%)")
    axis.set_title(title + " (bubble area: parameters)")
    axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    return figure
