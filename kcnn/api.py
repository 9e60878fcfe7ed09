"""The Python API: the `kcnn` command's subcommands as functions, with the same names and the flags as keywords.

    import kcnn
    run = kcnn.train(dataset="digits", arch="lenet5", epochs=5)   # a Run: .model .metrics .history .class_names .path
    run = kcnn.finetune("pets/", image_size=224)                  # the dataset first; a Run too
    kcnn.evaluate(run, tta="flip")                                # an Evaluation: .accuracy .split .tta_accuracy ...
    [p.class_name for p in kcnn.predict(run, ["cat.jpg"])]        # a Prediction per image: .top .class_name ...
    kcnn.predict("efficientnet_lite0", [pil_image, array])        # ImageNet classes, with the weights' own transform
    kcnn.explain(run, ["cat.jpg"])                                # Grad-CAM overlays: an Explanation per image
    kcnn.export(run, format="onnx")                               # the path written
    run = kcnn.load_run("saved_models/lenet5_digits")             # the Run of a finished run folder

`train` and `finetune` take every setting of `kcnn train -h` and `kcnn finetune -h` as a keyword, with `_` for
`-` (`--learning-rate` is `learning_rate=`, or `lr=` as the flag's short form): the fields of
`kcnn.config.TrainConfig` and `kcnn.config.FinetuneConfig`, where each is documented. `config=` takes what
`--config` takes (a YAML or JSON file, a run's config.json) or a config object; the keywords given override it.
A keyword that is no setting is refused (`kcnn.InvalidArgumentError`) with the closest one named.

Images are file paths, Pillow images or arrays of 0-255 pixels ((H, W), (H, W, 1), (H, W, 3); a 4-D array is a
batch). A model comes from a run (a `Run` or its folder), the name of a model with pretrained weights
(`kcnn list --pretrained`), or a Keras model with `class_names=`.

This module imports nothing heavy (Keras, TensorFlow) until a function runs: `import kcnn` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from kcnn.errors import InvalidArgumentError, KcnnError

if TYPE_CHECKING:  # (types for readers and type checkers: importing them would import Keras)
    import keras
    import numpy as np

    from kcnn.config import FinetuneConfig, TrainConfig
    from kcnn.runs.rundir import Run

__all__ = ["train", "finetune", "evaluate", "predict", "explain", "export", "load_run", "Run", "Evaluation",
           "Prediction", "Explanation"]

# A run: a Run, its folder, or a model.keras inside one. A model: that, the name of a model with pretrained
# weights, or a Keras model (with class_names=). (Aliases are evaluated when the module is: the quoted names are not.)
RunSource = Union["Run", str, os.PathLike]
ModelSource = Union["Run", str, os.PathLike, "keras.Model"]
Image = Any  # a file's path, a PIL.Image.Image, or an array of pixels (kcnn.data.folder.read_image)


# ---- what the functions return ---------------------------------------------------------------------------

@dataclasses.dataclass
class Evaluation:
    """What `kcnn.evaluate` measured: a run's model on its evaluation split, on this backend.

    accuracy:           the fraction of the split's images classified right
    split:              the split's name: "test" (mnist, digits, cifar10_sample), "holdout" (cifar10), or
                        "validation" (an image folder's held-out images)
    images:             how many images the split holds
    per_class_accuracy: {class name: accuracy} over the images of each class
    per_class:          {class name: {precision, recall, f1, support}}, and "macro avg"
    tta_accuracy:       {mode: accuracy} with test-time augmentation (empty without `tta`)
    predicted:          the predicted class index of each image, in the split's order
    """

    accuracy: float
    split: str
    images: int
    per_class_accuracy: dict
    per_class: dict
    tta_accuracy: dict
    predicted: np.ndarray

    def __str__(self) -> str:
        from kcnn.training.report import tta_note

        lines = [f"{self.split} accuracy {self.accuracy:.4f} on {self.images} images"]
        for mode, accuracy in self.tta_accuracy.items():
            lines.append(f"{self.split} accuracy with test-time {mode} {accuracy:.4f}"
                         f"{tta_note(mode, accuracy, self.accuracy)}")
        return "\n".join(lines)


@dataclasses.dataclass
class Prediction:
    """One image's answer from `kcnn.predict`.

    image:       the image as it was passed (a path, a Pillow image or an array)
    top:         [(class name, probability)], the most probable first
    class_name:  the most probable class (top[0][0]); probability: its probability (top[0][1])
    """

    image: Any
    top: list

    @property
    def class_name(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]

    def __repr__(self) -> str:
        return f"Prediction({_image_name(self.image)}: {self.class_name} {self.probability:.1%})"

    def __str__(self) -> str:
        return "\n".join([_image_name(self.image)] + [f"  {p:7.2%}  {name}" for name, p in self.top])


@dataclasses.dataclass
class Explanation:
    """One image's Grad-CAM overlay from `kcnn.explain`.

    image:       the image as it was passed (a path, a Pillow image or an array)
    class_name:  the class the model predicted; probability: its probability
    explained:   the class whose evidence the map shows (the predicted one unless class_name= was given)
    overlay:     the PNG written: the image with the heatmap over it
    """

    image: Any
    class_name: str
    probability: float
    explained: str
    overlay: str

    def __str__(self) -> str:
        of = f", Grad-CAM of {self.explained}" if self.explained != self.class_name else ""
        return f"{_image_name(self.image)}: predicted {self.class_name} ({self.probability:.1%}){of} -> {self.overlay}"


def __getattr__(name):  # kcnn.api.Run without importing the run folder's module (and its imports) at first
    if name == "Run":
        from kcnn.runs.rundir import Run

        return Run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- the workflows -----------------------------------------------------------------------------------

def train(dataset: str | None = None, arch: str | None = None, *, config: str | os.PathLike | TrainConfig | None = None,
          callbacks: Sequence = (), **settings: Any) -> Run:
    """Train `arch` from scratch on `dataset` (`kcnn train`); returns the finished `Run`.

    dataset:   mnist, cifar10, cifar10_sample, digits, or a folder with one sub-folder of images per class
               (default: mnist, or the config's)
    arch:      a registry name (`kcnn.list_models()`; default: the dataset's)
    config:    a YAML or JSON file of settings, a run's config.json (to repeat the run), or a TrainConfig
    callbacks: Keras callbacks, run after kcnn's own
    settings:  any other flag of `kcnn train -h` (a field of kcnn.config.TrainConfig): epochs, batch_size,
               learning_rate (lr), optimizer, schedule, augment, image_size, limit, seed, output_dir, resume,
               overwrite, export, tta, verbose (0: quiet), ...; `None` means the recipe's value.
    """
    from kcnn.config import TrainConfig
    from kcnn.training.train import train as train_job

    return train_job(_config(TrainConfig, "train", config, dict(dataset=dataset, arch=arch), settings), callbacks)


def finetune(dataset: str | None = None, *, config: str | os.PathLike | FinetuneConfig | None = None,
             callbacks: Sequence = (), **settings: Any) -> Run:
    """Fine-tune a pretrained ImageNet backbone on `dataset` (`kcnn finetune`); returns the finished `Run`.

    dataset:   a folder with one sub-folder of images per class, or cifar10_sample, cifar10, mnist, digits
               (default: cifar10_sample, or the config's)
    config:    a YAML or JSON file of settings, a run's config.json, or a FinetuneConfig
    callbacks: Keras callbacks, run in both phases after kcnn's own
    settings:  any other flag of `kcnn finetune -h` (a field of kcnn.config.FinetuneConfig): backbone,
               weights, image_size, head_epochs, finetune_epochs, unfreeze, batch_size, flip, tta, limit,
               output_dir, export, resume, overwrite, verbose (0: quiet), ...
    """
    from kcnn.config import FinetuneConfig
    from kcnn.training.finetune import finetune as finetune_job

    return finetune_job(_config(FinetuneConfig, "finetune", config, dict(dataset=dataset), settings), callbacks)


def load_run(path: str | os.PathLike | Run) -> Run:
    """The `Run` of a finished run folder (or of a model.keras inside one): its model, metrics, history,
    class names, settings and path, as `kcnn.train` returned them. The model loads in Keras' safe mode."""
    from kcnn.runs.rundir import load_run as load

    return load(path)


def evaluate(run: RunSource, tta: str | None = None) -> Evaluation:
    """Evaluate a run's model on its evaluation split again, on this backend (`kcnn evaluate`). `tta`: also
    with test-time augmentation, "flip" (2 views) or "flip_crop" (6), recorded in the run's metrics.json."""
    from kcnn.runs.rundir import load_run as load
    from kcnn.training.evaluate import evaluate_run

    run = load(run)
    metrics = evaluate_run(run, tta=tta)
    return Evaluation(accuracy=metrics["accuracy"], split=metrics["eval_split"], images=metrics["images"],
                      per_class_accuracy=metrics["per_class_accuracy"], per_class=metrics["per_class"],
                      tta_accuracy=metrics.get("tta_accuracy", {}), predicted=metrics["predicted"])


def predict(source: ModelSource, images: Image | Sequence[Image], top: int = 5, weights: str = "imagenet",
            tta: str | None = None, *, class_names: Sequence[str] | None = None) -> list[Prediction]:
    """The `top` classes of each image (`kcnn predict`): a `Prediction` per image, in order.

    source:      a run (a Run, its folder, a model.keras in one), the name of a model with pretrained weights
                 (`kcnn list --pretrained`: ImageNet classes, the weights' own resize and centre crop), or a
                 Keras model with `class_names`
    images:      file paths, Pillow images or arrays of 0-255 pixels (one image alone is a list of one; a 4-D
                 array is a batch); resized to the model's input as in training
    weights:     with a model name: which of its named weights
    tta:         average over test-time views: "flip" or "flip_crop"
    """
    from kcnn.training.evaluate import predict_files

    model, names, transform, _ = resolve_model(source, weights, class_names)
    images = _image_list(images)
    rankings = predict_files(model, images, names, top=top, transform=transform, tta=tta)
    return [Prediction(image, ranking) for image, ranking in zip(images, rankings)]


def explain(source: ModelSource, images: Image | Sequence[Image], output: str | os.PathLike | None = None,
            class_name: str | None = None, layer: str | None = None, *, weights: str = "imagenet",
            class_names: Sequence[str] | None = None) -> list[Explanation]:
    """Grad-CAM: where the model looked, an overlay PNG per image (`kcnn explain`); an `Explanation` per image.

    source, images, weights, class_names: as `predict` takes them (images in memory are named image1, ...)
    output:      the folder of the overlays, IMAGE_gradcam.png (default: RUN/explain for a run, else
                 saved_models/explain)
    class_name:  the class whose evidence to show (default: each image's predicted class)
    layer:       the layer whose feature maps are weighed (default: the last one with a spatial output)
    """
    from kcnn.inspect.explain import explain_files
    from kcnn.runs.rundir import RunDir

    model, names, transform, run = resolve_model(source, weights, class_names)
    images = _image_list(images)
    folder = None
    if output is None:
        output = run.folder.file("explain") if run is not None else os.path.join("saved_models", "explain")
    if run is not None and os.path.abspath(output) == os.path.abspath(run.folder.file("explain")):
        folder = run.folder if RunDir(run.path).is_run() else None  # RUN/explain: its files enter the manifest
    answers = explain_files(model, images, names, os.fspath(output), transform=transform, class_name=class_name,
                            layer=layer, run=folder)
    return [Explanation(image, name, probability, class_name or name, written)
            for image, (_, name, probability, written) in zip(images, answers)]


def export(run: RunSource, format: str = "saved_model", output: str | os.PathLike | None = None, *, version: int = 1,
           overwrite: bool = False, tta: str | None = None, quantize: str | None = None,
           calibration_images: int | None = None, verbose: bool = True) -> str:
    """Export a run's model for serving (`kcnn export`); returns the path written.

    run:       a Run, its folder, or a .keras file
    format:    "saved_model" (OUTPUT/VERSION/, as TensorFlow Serving reads it), "onnx", "litert" or "keras"
    output:    the export folder (default: RUN/export, or saved_models/NAME_export for a .keras file)
    version:   the SavedModel's version folder; overwrite: replace an existing export
    tta:       the exported model answers with test-time augmentation ("flip": 2 passes, "flip_crop": 6)
    quantize:  LiteRT only: "none", "float16" or "int8" (calibrated on `calibration_images` training images)
    """
    from kcnn.deploy import export as exporting

    if calibration_images is None:
        calibration_images = exporting.CALIBRATION_IMAGES
    return exporting.export(run, format, None if output is None else os.fspath(output), version=version,
                            overwrite=overwrite, tta=tta, quantize=quantize, calibration_images=calibration_images,
                            verbose=verbose)


# ---- where a model comes from -------------------------------------------------------------------------

def resolve_model(source: ModelSource, weights: str = "imagenet", class_names: Sequence[str] | None = None
                  ) -> tuple[keras.Model, list[str], Callable | None, Run | None]:
    """(model, class names, image transform, Run or None) of what predict and explain take: a run (a Run, its
    folder, a model.keras in one), the name of a model with pretrained weights (its publisher's evaluation
    transform; a run's is None: images are resized to the model's input as in training), or a Keras model with
    `class_names`. The command line resolves its RUN_DIR argument the same way."""
    from kcnn.registry import build, list_models
    from kcnn.runs.rundir import Run, load_run as load

    if isinstance(source, Run):
        return source.model, _checked_names(source.model, class_names or source.class_names), None, source
    if hasattr(source, "predict") and hasattr(source, "inputs"):  # a Keras model
        if class_names is None:
            raise InvalidArgumentError(f"A Keras model comes with its class names: pass class_names=[...] (one per "
                                       f"output), or pass a run. Received: {type(source).__name__} {source.name!r}")
        return source, _checked_names(source, class_names), None, None
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentError(f"A model is a run (a Run or its folder), the name of a model with pretrained "
                                   f"weights, or a Keras model. Received: {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        pretrained = {info.name for info in list_models(pretrained=True)}
        if path in pretrained:
            from kcnn.weights import get_source

            weight_source = get_source(path, weights)
            model = build(path, weights=weights)
            return model, _checked_names(model, class_names or weight_source.class_names), \
                weight_source.eval_transform, None
        raise KcnnError(_no_model(path, pretrained))
    run = load(path)
    return run.model, _checked_names(run.model, class_names or run.class_names), None, run


def _no_model(path, pretrained):
    """One sentence for a model source that is neither a folder nor a pretrained model's name."""
    from kcnn.registry import list_models

    names = {info.name for info in list_models()}
    if path in names:
        return (f"{path} has no pretrained weights to predict with; pass a run folder it was trained into (kcnn "
                f"train --arch {path}), or a model of `kcnn list --pretrained`.")
    from kcnn.config import close_folders

    close = difflib.get_close_matches(path, sorted(pretrained), 1, 0.7) or close_folders(path)
    hint = f"; did you mean {close[0]!r}?" if close else "; pass a run folder or a model of `kcnn list --pretrained`."
    return f"There is no run folder {path!r}, and no model with pretrained weights of that name{hint}"


def _checked_names(model, class_names):
    names = [str(name) for name in class_names]
    outputs = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if outputs is not None and outputs != len(names):
        raise InvalidArgumentError(f"{model.name} has {outputs} outputs, so it takes as many class names. Received: "
                                   f"{len(names)} class names")
    return names


def _image_list(images):
    """A list of images: one image alone (a path, a Pillow image, an array of 2 or 3 dimensions) is a list of one;
    a 4-D array is a batch."""
    if isinstance(images, (str, os.PathLike, bytes)) or not hasattr(images, "__len__") \
            or type(images).__module__.startswith("PIL"):
        return [images]
    if hasattr(images, "ndim"):
        return list(images) if images.ndim == 4 else [images]
    images = list(images)
    if not images:
        raise InvalidArgumentError("No images to answer for: pass a list of one image or more.")
    return images


def _image_name(image):
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    shape = getattr(image, "shape", None) or getattr(image, "size", None)
    return f"<{type(image).__name__} {shape}>"


# ---- settings ------------------------------------------------------------------------------------------

def _config(kind, verb, config, named, settings):
    """The `kind` config of a call: `config` (a file or a `kind` object), then the named arguments given, then
    `settings`, each checked against the fields (and the flags' other spellings: lr, jit)."""
    from kcnn.config import read_config_file

    fields = {field.name: field for field in dataclasses.fields(kind)}
    aliases = {flag.lstrip("-").replace("-", "_"): name for name, field in fields.items()
               for flag in field.metadata.get("flags", ())}
    values = {}
    if isinstance(config, kind):
        values.update(dataclasses.asdict(config))
    elif isinstance(config, (str, os.PathLike)):
        values.update(read_config_file(os.fspath(config), kind))
    elif config is not None:
        raise InvalidArgumentError(f"config is a YAML or JSON file of settings, a run's config.json, or a "
                                   f"{kind.__name__}. Received: config={config!r}")
    values.update({name: value for name, value in named.items() if value is not None})
    for key, value in settings.items():
        name = aliases.get(key, key)
        if name not in fields:
            raise InvalidArgumentError(_unknown_setting(verb, key, value, sorted(set(fields) | set(aliases))))
        values[name] = value
    # a pathlib.Path is as good as its text (config.json records text)
    return kind(**{name: os.fspath(value) if isinstance(value, os.PathLike) else value
                    for name, value in values.items()})


def _unknown_setting(verb, key, value, names):
    close = difflib.get_close_matches(key, names, 1, 0.5)
    hint = f"did you mean {close[0]}?" if close else f"`kcnn {verb} -h` lists them"
    return f"kcnn.{verb} has no setting {key!r} ({hint}). Received: {key}={value!r}"
