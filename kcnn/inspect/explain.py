"""Where a classifier looks: Grad-CAM heatmaps and input gradients, on TensorFlow, PyTorch and JAX.

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization") weights each feature map of a late convolution by the spatial mean of the gradient of the
class score (the logit, before softmax) and keeps the positive part of their sum: a coarse map of the pixels
that raise that class's score.

    import kcnn.inspect.explain
    heatmaps = kcnn.inspect.explain.grad_cam(model, images)              # (N, H, W) in [0, 1], the predicted classes
    gradients = kcnn.inspect.explain.input_gradients(model, images)      # (N, H, W, C): saliency, FGSM
    viz.grad_cam_overlay(images[0], heatmaps[0])                 # the map in "jet" over the image

Both work for every registered architecture and for the models of `kcnn train` / `kcnn finetune` runs (raw
0-255 pixels in, Normalization inside, the backbone a nested model): the model's graph is run layer by layer,
nested models included, so that one layer's output can be read and differentiated, and a final softmax (in
the Dense layer or a layer of its own) is left out. The gradient itself is the backend's own (tf.GradientTape,
torch.autograd, jax.grad) in `_gradient`, the one place that differs between backends; the maps are upsampled
with Pillow, so the three backends give the same maps (within 1e-3, tested).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from kcnn.errors import InvalidArgumentError

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    from kcnn.data.folder import ImageInput
    from kcnn.runs.rundir import RunDir

BATCH = 32  # images per forward and backward pass
CONVOLUTIONS = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")


class NoSpatialLayerError(InvalidArgumentError):
    """A model without a convolution feature map for Grad-CAM to weigh (e.g. the `mlp` baseline)."""


def grad_cam(model: keras.Model, images: np.ndarray, class_index: int | Sequence[int] | None = None,
             layer: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps: (N, H, W) float32 in [0, 1] at the input's resolution, one per image.

    Args:
        model: a Keras classifier with one (batch, classes) output: logits, or a softmax whose logits are
            used (a registered architecture, a run's model, nested models included).
        images: (N, H, W, C) pixels as the model takes them (run and pretrained models: raw 0-255).
        class_index: None (each image's predicted class), a class index, or one index per image.
        layer: None (the last layer whose output is a spatial map larger than 1x1, after the first
            convolution: the last feature map before global pooling or flattening), or a layer's name
            (nested models are searched) or the layer itself.

    Each map is ReLU(sum_k alpha_k A^k), A^k the chosen layer's feature maps and alpha_k the spatial mean
    of d logit / d A^k; upsampled bilinearly and divided by its maximum (an all-zero map stays zero).
    """
    graph = _Graph(model)
    target = graph.spatial_layer(layer)
    images = graph.checked_images(images)
    classes = graph.checked_classes(class_index, len(images))
    maps = []
    for start in range(0, len(images), BATCH):
        batch = images[start:start + BATCH]
        features, gradients = graph.feature_gradients(batch, target, _part(classes, start))
        maps.append(_cam(features, gradients, graph.image_size))
    return np.concatenate(maps) if maps else np.zeros((0, *graph.image_size), "float32")


def input_gradients(model: keras.Model, images: np.ndarray,
                    class_index: int | Sequence[int] | None = None) -> np.ndarray:
    """The gradient of the class logit with respect to the input pixels: (N, H, W, C) float32.

    `class_index` as in `grad_cam`. Its absolute value is a saliency map (Simonyan et al. 2014); its sign
    makes the fast gradient sign method's adversarial example (Goodfellow et al. 2015): images +
    epsilon * sign(gradients) raises the class's logit, - epsilon * sign lowers it.
    """
    graph = _Graph(model)
    images = graph.checked_images(images)
    classes = graph.checked_classes(class_index, len(images))
    parts = [graph.input_gradients(images[start:start + BATCH], _part(classes, start))
             for start in range(0, len(images), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, *images.shape[1:]), "float32")


def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers Grad-CAM can use (outputs of shape (N, H, W, C), from the first convolution
    on), nested models included, in the order they run."""
    return [layer.name for layer, _ in _Graph(model).spatial]


def explain_files(model: keras.Model, paths: Sequence[ImageInput], class_names: Sequence[str], output_dir: str, *,
                  transform: Callable | None = None, class_name: str | None = None, layer: str | None = None,
                  run: RunDir | None = None) -> list[tuple[ImageInput, str, float, str]]:
    """Grad-CAM overlays of images (files, or Pillow images and arrays, named imageN), one PNG each in
    `output_dir` (NAME_gradcam.png): returns
    [(path, predicted class name, probability, the file written)]. The images are read as `kcnn predict`
    reads them (`transform`: a pretrained source's `eval_transform`); the map is of `class_name` (default:
    the predicted class). Everything is checked before the first file is written. `run`: the
    `kcnn.runs.rundir.RunDir` whose explain/ `output_dir` is; its manifest lists each file before it is written."""
    import keras

    from kcnn.runs.rundir import write_errors_explained

    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise InvalidArgumentError(f"{output_dir} is a file, not a folder; pass a folder as --output.")
    class_index = None
    if class_name is not None:
        if class_name not in class_names:
            shown = ", ".join(repr(name) for name in list(class_names)[:8])
            more = f" and {len(class_names) - 8} more" if len(class_names) > 8 else ""
            raise InvalidArgumentError(f"Unknown class {class_name!r}: the model's {len(class_names)} classes are "
                                       f"{shown}{more}; pass one of them as it is written.")
        class_index = list(class_names).index(class_name)
    targets = _targets(paths, output_dir)
    if run is None:  # (a run's explain/ is the run's: its manifest says which files are kcnn's)
        _refuse_foreign(targets)
    images = read_images(model, paths, transform)
    logits = np.asarray(keras.ops.convert_to_numpy(model.predict(images, verbose=0)), "float32")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    predicted = np.argmax(logits, axis=-1)
    heatmaps = grad_cam(model, images, class_index=class_index, layer=layer)
    if run is not None:
        run.check_folder(output_dir)  # never through a link
    with write_errors_explained(output_dir, flag="--output", again="run it again"):  # read-only, full: a sentence
        os.makedirs(output_dir, exist_ok=True)
        return _write_overlays(paths, targets, images, heatmaps, predicted, probabilities, class_names, run)


def _write_overlays(paths, targets, images, heatmaps, predicted, probabilities, class_names, run):
    """Each overlay a PNG marked as kcnn's, entered in the run's manifest first (where there is a run)."""
    from PIL import PngImagePlugin

    from kcnn.inspect import viz
    from kcnn.runs.atomic import atomic_open
    from kcnn.runs.rundir import tracked

    marker = PngImagePlugin.PngInfo()
    marker.add_text("Software", PNG_SOFTWARE)  # how a later explain knows the file is its own
    written = []
    for path, target, image, heatmap, best, p in zip(paths, targets, images, heatmaps, predicted, probabilities):
        with tracked(run, target), atomic_open(target, "wb") as f:
            _enlarged(viz.grad_cam_overlay(image, heatmap)).save(f, format="PNG", pnginfo=marker)
        written.append((path, class_names[best], float(p[best]), target))
    return written


PNG_SOFTWARE = "kcnn explain"  # the text chunk of every overlay kcnn writes


def _targets(paths, output_dir):
    """The overlay file of each image: NAME_gradcam.png, numbered where two images share a name."""
    targets, names = [], set()
    for index, path in enumerate(paths, 1):  # an image in memory (a Pillow image, an array): image1, image2, ...
        stem = (os.path.splitext(os.path.basename(path))[0] if isinstance(path, (str, os.PathLike))
                else f"image{index}")
        name, number = f"{stem}_gradcam.png", 2
        while name in names:  # two files of the same name from different folders
            name, number = f"{stem}_{number}_gradcam.png", number + 1
        names.add(name)
        targets.append(os.path.join(output_dir, name))
    return targets


def _refuse_foreign(targets):
    """Refuse, before any work, to write over a file kcnn explain did not write (its overlays carry
    PNG_SOFTWARE), or through a link."""
    from PIL import Image

    for target in targets:
        if not os.path.lexists(target):
            continue
        ours = False
        if os.path.isfile(target) and not os.path.islink(target):
            try:
                with Image.open(target, formats=("PNG",)) as image:
                    ours = image.text.get("Software") == PNG_SOFTWARE
            except Exception:  # not a PNG, unreadable: not an overlay of ours
                ours = False
        if not ours:
            raise InvalidArgumentError(f"{target} exists and kcnn explain did not write it; kcnn leaves it alone: "
                                       f"pass another --output folder, or move the file.")


def fit_to_model(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) of a dataset as `model` takes them: float32, grey repeated to RGB (or RGB to
    grey) and resized (bilinear) to its input, as the workflows' pipelines do."""
    import keras

    images = np.asarray(images, dtype="float32")
    height, width, channels = tuple(model.inputs[0].shape[1:])
    if channels == 3 and images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif channels == 1 and images.shape[-1] == 3:
        images = images.mean(axis=-1, keepdims=True)
    if height is not None and width is not None and images.shape[1:3] != (height, width) and len(images):
        images = np.asarray(keras.ops.convert_to_numpy(keras.ops.image.resize(images, (height, width))), "float32")
    return images


def read_images(model: keras.Model, paths: Sequence[ImageInput], transform: Callable | None = None) -> np.ndarray:
    """Images (files, Pillow images or arrays: kcnn.data.folder.read_image) as `model` takes them, (N, H, W, C) float32: `transform` (a pretrained source's
    `eval_transform`: resize and centre crop) or, by default, resized to the model's input as in training
    (as `kcnn predict` reads them)."""
    from kcnn.data.folder import read_image

    height, width, channels = tuple(model.inputs[0].shape[1:])
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None or transform is None and (height is None or width is None):
        raise InvalidArgumentError(f"{model.name} takes images of shape {tuple(model.inputs[0].shape[1:])}; "
                                   f"image files can be explained for a fixed size with 1 or 3 channels.")
    images = [transform(read_image(path, "RGB")) if transform is not None else read_image(path, mode, (height, width))
              for path in paths]  # a file that does not decode raises a CorruptImageError naming it and why
    return np.stack(images).reshape(len(images), height, width, channels).astype("float32")


# ---- the model's graph, run layer by layer --------------------------------------------------------------

class _Graph:
    """A functional (or Sequential) model's graph, nested models included, run on real tensors one layer
    call at a time: one layer's output can be read and shifted (the shift is what the gradient is taken
    with respect to, on every backend alike) and a final softmax left out, without building a new model
    (which would add calls to the model's layers)."""

    def __init__(self, model):
        import keras

        if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or len(model.inputs or ()) != 1:
            raise InvalidArgumentError(f"Explanations need a functional or Sequential Keras model with one image "
                                       f"input. Received: model={type(model).__name__}")
        self.model = model
        self.steps = {}  # id(model) -> [(layer, node)] in the order they run
        self.spatial = []  # (layer, its output tensor), in the order they run
        self._walk(model, seen_convolution=False)
        output = model.outputs[0]
        if len(model.outputs) != 1 or len(output.shape) != 2:
            raise InvalidArgumentError(f"Explanations need a classifier with one (batch, classes) output; "
                                       f"{model.name} has {[tuple(o.shape) for o in model.outputs]}.")
        self.num_classes = output.shape[-1]
        self.final = _final_layer(model)
        self.channels_first = keras.config.image_data_format() == "channels_first"
        shape = tuple(model.inputs[0].shape[1:])
        self.input_shape = shape
        self.image_size = shape[1:3] if self.channels_first else shape[:2]

    def _walk(self, model, seen_convolution):
        import keras

        from kcnn.backends import keras_private

        known = {id(tensor) for tensor in model.inputs}
        steps, added = [], True
        while added:  # in the order of its operations; a layer called twice at different depths takes another pass
            added = False
            for layer in getattr(model, "operations", None) or model.layers:  # Sequential: its layers
                for node in keras_private.inbound_nodes(layer):
                    inputs, outputs = keras_private.node_tensors(node)
                    if not inputs or any(id(t) in known for t in outputs) or \
                            not all(id(t) in known for t in inputs):
                        continue  # an input, a call already listed, or a call in another model's graph
                    steps.append((layer, node))
                    known.update(id(t) for t in outputs)
                    added = True
                    if isinstance(layer, keras.Model):
                        if id(layer) not in self.steps:
                            seen_convolution = self._walk(layer, seen_convolution)
                    else:
                        seen_convolution = seen_convolution or type(layer).__name__ in CONVOLUTIONS
                        if seen_convolution and len(outputs) == 1 and len(outputs[0].shape) == 4:
                            self.spatial.append((layer, outputs[0]))
        if not all(id(tensor) in known for tensor in model.outputs):
            raise InvalidArgumentError(f"{model.name}'s graph could not be followed from its input to its "
                                       f"output; explanations need a functional or Sequential model.")
        self.steps[id(model)] = steps
        return seen_convolution

    def spatial_layer(self, layer):
        """The layer Grad-CAM weighs (see `grad_cam`)."""
        if not self.spatial:
            raise NoSpatialLayerError(f"{self.model.name} has no convolution feature map (no layer with an "
                                      f"(N, H, W, C) output after a convolution) for Grad-CAM to weigh; "
                                      f"input_gradients works for any model.")
        if layer is None:
            larger = [found for found, tensor in self.spatial if _area(tensor, self.channels_first) != 1]
            return larger[-1] if larger else self.spatial[-1][0]
        for found, _ in self.spatial:
            if found is layer or found.name == layer:
                return found
        name = getattr(layer, "name", layer)
        names = [found.name for found, _ in self.spatial][-8:]
        shown = ("end with ..., " if len(self.spatial) > 8 else "are ") + ", ".join(names)
        for found, tensor in self._all_layers():
            if found.name == name:
                raise InvalidArgumentError(f"Layer {name!r} of {self.model.name} has no spatial output (its output "
                                           f"is {tuple(tensor.shape)}, Grad-CAM needs (N, H, W, C) after a "
                                           f"convolution); its spatial layers {shown}.")
        raise InvalidArgumentError(f"{self.model.name} has no layer named {name!r}; its spatial layers for Grad-CAM "
                                   f"{shown}.")

    def _all_layers(self):
        from kcnn.backends import keras_private

        for steps in self.steps.values():
            for layer, node in steps:
                outputs = keras_private.node_tensors(node)[1]
                yield layer, outputs[0] if len(outputs) == 1 else [tuple(t.shape) for t in outputs]

    def checked_images(self, images):
        images = np.asarray(images, dtype="float32")
        expected = self.input_shape
        fits = images.ndim == 4 and all(e is None or e == a for e, a in zip(expected, images.shape[1:]))
        if not fits:
            wanted = "x".join("?" if e is None else str(e) for e in expected)
            raise InvalidArgumentError(f"{self.model.name} takes images of shape (N, {', '.join(map(str, expected))}) "
                                       f"({wanted}); received an array of shape {images.shape}: resize them first "
                                       f"(one image: images[None]).")
        if not np.all(np.isfinite(images)):
            raise InvalidArgumentError(f"{int(np.sum(~np.isfinite(images)))} pixel value(s) are NaN or infinite; "
                                       f"explanations need finite pixels.")
        return images

    def checked_classes(self, class_index, count):
        """None (the predicted classes) or one int per image."""
        if class_index is None:
            return None
        classes = np.atleast_1d(np.asarray(class_index))
        if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
            raise InvalidArgumentError(f"class_index must be None, a class index or one index per image. "
                                       f"Received: class_index={class_index!r}")
        if len(classes) == 1:
            classes = np.repeat(classes, count)
        if len(classes) != count:
            raise InvalidArgumentError(f"class_index holds {len(classes)} indices for {count} images; pass one "
                                       f"per image, or one for all.")
        bad = classes[(classes < 0) | (classes >= self.num_classes)]
        if len(bad):
            raise InvalidArgumentError(f"class_index {int(bad[0])} is outside 0..{self.num_classes - 1}, the "
                                       f"{self.num_classes} classes of {self.model.name}.")
        return classes.astype("int32")

    def run(self, images, shift_layer=None, shift=None):
        """The logits (before any final softmax) and the output of `shift_layer` (plus `shift`) for a
        batch of images."""
        read = {}
        logits = self._run(self.model, [images], shift_layer, shift, read)[0]
        return logits, read.get("features")

    def _run(self, model, inputs, shift_layer, shift, read):
        import keras

        from kcnn.backends import keras_private

        values = {id(tensor): value for tensor, value in zip(model.inputs, inputs)}
        for layer, node in self.steps[id(model)]:
            args, kwargs = keras_private.node_arguments(node, values)
            if isinstance(layer, keras.Model):
                outputs = self._run(layer, keras.tree.flatten(args), shift_layer, shift, read)
            elif layer is self.final:
                outputs = _without_softmax(layer, args, kwargs)
            else:
                outputs = layer(*args, **kwargs)
            if layer is shift_layer:  # in float32: a mixed-precision model's layers compute in bfloat16
                outputs = keras.ops.cast(outputs, "float32") + keras.ops.cast(shift, "float32")
                read["features"] = outputs
            values.update(zip((id(t) for t in keras_private.node_tensors(node)[1]), keras.tree.flatten(outputs)))
        return [values[id(tensor)] for tensor in model.outputs]

    def feature_gradients(self, images, layer, classes):
        """(the layer's outputs, d class logit / d outputs) as NumPy (N, h, w, C) arrays."""
        import keras

        tensor = dict((id(found), t) for found, t in self.spatial)[id(layer)]
        shape = tuple(tensor.shape[1:])
        if None in shape:  # a model without a fixed input size: one forward pass for the shape
            shape = tuple(keras.ops.shape(self.run(keras.ops.convert_to_tensor(images), layer, 0.0)[1]))[1:]
        shift = np.zeros((len(images), *shape), "float32")
        inputs = keras.ops.convert_to_tensor(images)

        def objective(shift):
            logits, features = self.run(inputs, layer, shift)
            return _class_score(logits, classes), features

        gradients, features = _gradient(objective, shift)
        features, gradients = (np.asarray(keras.ops.convert_to_numpy(x), "float32") for x in (features, gradients))
        if self.channels_first:
            features, gradients = (np.moveaxis(x, 1, -1) for x in (features, gradients))
        return features, gradients

    def input_gradients(self, images, classes):
        import keras

        gradients, _ = _gradient(lambda x: (_class_score(self.run(x)[0], classes), None), images)
        return np.asarray(keras.ops.convert_to_numpy(gradients), "float32")


def _final_layer(model):
    """The layer that makes the model's output, looked for inside a nested model that makes it."""
    import keras

    from kcnn.backends import keras_private

    layer = keras_private.producer(model.outputs[0])
    while isinstance(layer, keras.Model):
        layer = keras_private.producer(layer.outputs[0])
    return layer


def _is_softmax(function):
    import keras

    return function is keras.activations.softmax or getattr(function, "__name__", None) == "softmax"


def _without_softmax(layer, args, kwargs):
    """The final layer's output before its softmax: a Softmax or Activation("softmax") layer passes its
    input through, a layer with activation="softmax" (Dense) runs with a linear activation instead."""
    import keras

    if isinstance(layer, keras.layers.Softmax) or (isinstance(layer, keras.layers.Activation)
                                                   and _is_softmax(layer.activation)):
        return args[0]
    activation = getattr(layer, "activation", None)
    if activation is None or not _is_softmax(activation):
        return layer(*args, **kwargs)
    layer.activation = keras.activations.linear
    try:
        return layer(*args, **kwargs)
    finally:
        layer.activation = activation


def _class_score(logits, classes):
    """The sum over the batch of each image's class logit (its predicted class where `classes` is None)."""
    import keras

    ops = keras.ops
    logits = ops.cast(logits, "float32")
    chosen = ops.argmax(ops.stop_gradient(logits), axis=-1) if classes is None else ops.convert_to_tensor(classes)
    return ops.sum(logits * ops.one_hot(chosen, logits.shape[-1], dtype="float32"))


def _gradient(objective, x):
    """(d objective(x)[0] / dx, objective(x)[1]): the one place where the backends differ. `objective`
    returns (a scalar, a tensor to keep or None)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value, kept = objective(x)
        return tape.gradient(value, x), kept
    if backend == "torch":
        import torch

        x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        with torch.enable_grad():
            value, kept = objective(x)
            (gradient,) = torch.autograd.grad(value, x)
        return gradient, None if kept is None else kept.detach()
    if backend == "jax":
        import jax

        return jax.grad(objective, has_aux=True)(keras.ops.convert_to_tensor(x))
    raise InvalidArgumentError(f"Explanations need gradients: run on the tensorflow, torch or jax backend "
                               f"(KERAS_BACKEND); received {backend!r}.")


def _cam(features, gradients, size):
    """ReLU(sum_k mean(gradients_k) features_k), bilinearly upsampled to `size` (Pillow: the same on every
    backend) and divided by its maximum."""
    from PIL import Image

    weights = gradients.mean(axis=(1, 2))  # (N, C): alpha_k of the paper
    cams = np.maximum(np.einsum("nhwc,nc->nhw", features, weights), 0)
    height, width = size
    maps = np.stack([np.asarray(Image.fromarray(cam.astype("float32"), mode="F")
                                .resize((width, height), Image.BILINEAR)) for cam in cams])
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0).astype("float32")


def _area(tensor, channels_first):
    height, width = tensor.shape[2:4] if channels_first else tensor.shape[1:3]
    return None if height is None or width is None else height * width


def _part(classes, start):
    return None if classes is None else classes[start:start + BATCH]


def _enlarged(pixels, smallest=224):
    """An overlay as a Pillow image, enlarged by a whole factor (nearest neighbour) to at least `smallest`
    pixels on its shorter side: a 32x32 run's map stays visible."""
    from PIL import Image

    image = Image.fromarray(pixels)
    factor = -(-smallest // min(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image
