"""LiteRT (TensorFlow Lite) export: kcnn.deploy.export's serving function, converted by the TensorFlow Lite converter.

    from kcnn.deploy.export import export
    export("saved_models/my_run", format="litert")                      # RUN/export/model.tflite, float32
    export("saved_models/my_run", format="litert", quantize="int8")     # RUN/export/model_int8.tflite

Keras' own `model.export(path, format="litert")` writes float models, and its `model.quantize` leaves
convolutions alone; int8 for a CNN is the converter's post-training quantization instead:
- "none": float32, the Keras model's probabilities within about 1e-6.
- "float16": weights stored as float16 (half the file), computed in float32.
- "int8": weights and activations int8 (about a quarter of the file), the activations' ranges measured on
  `calibration_images` images of the run's training split (drawn with CALIBRATION_SEED, resized as in
  training). Input and output stay float32, so the contract is the same as the other formats': raw 0-255
  pixels in, `probabilities` and `class_index` out; the converter quantizes the image after it comes in
  and dequantizes the probabilities before they go out.

Every file has one signature, `serving_default`: input `image` (batch, height, width, channels), outputs
`probabilities` and `class_index`; the class names are in the flatbuffer's metadata (`class_names`, JSON).
The image size is not checked inside the file: the LiteRT interpreter does not run the serving function's
shape assertion, and its signature runner resizes the input to whatever comes, so images must have the
input's `shape_signature` (a model ending in Flatten fails in its reshape, one with global pooling answers).
From a run directory the export also measures the LiteRT models' accuracy, float32 and quantized, with the
LiteRT interpreter on the first EVALUATION_IMAGES images of the run's evaluation split.

Runs on the TensorFlow backend (kcnn.deploy.export calls it there, in a child process when needed).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from kcnn.errors import ExportError, KcnnError
from kcnn.runs.atomic import atomic_path

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras

SIGNATURE = "serving_default"
METADATA_NAME = "class_names"  # the flatbuffer's metadata entry holding the class names (JSON)
BATCH_SIZE = 64  # images per interpreter call when measuring accuracy
CALIBRATION_SEED = 0  # which training images those are
EVALUATION_IMAGES = 1000  # the LiteRT models' accuracy: on the first images of the evaluation split


def write(model: keras.Model, destination: str, class_names: Sequence[str], *, serving_function: Any,
          quantize: str = "none", run_dir: str | None = None, calibration_images: int = 200) -> dict:
    """Write `model` (a Keras model on TensorFlow) as a LiteRT flatbuffer to `destination`, atomically;
    returns what kcnn_export.json records: the quantization, the size and, from a run whose data loads,
    the accuracy of the float32 and quantized LiteRT models. `serving_function`: kcnn.deploy.export's (images in,
    probabilities and class index out), passed in so that this module never imports kcnn.deploy.export."""

    shape = tuple(model.inputs[0].shape[1:])
    record = {"quantize": quantize}
    calibration = None
    if quantize == "int8":
        config = run_config_of(run_dir)
        split = config.splits()[0]
        calibration = _prepared(_sample(config.load(split), calibration_images, CALIBRATION_SEED), shape)[0]
        record.update(calibration_split=split, calibration_images=len(calibration))
    flatbuffer = with_metadata(convert(model, serving_function, quantize, calibration, error=ExportError),
                               {METADATA_NAME: json.dumps(list(class_names))})
    with atomic_path(destination) as temporary:
        with open(temporary, "wb") as f:
            f.write(flatbuffer)
    record["bytes"] = len(flatbuffer)
    evaluation = _evaluation_images(run_dir, shape, EVALUATION_IMAGES)
    if evaluation is not None:
        images, labels, split = evaluation
        models = {"float32": flatbuffer if quantize == "none"
                  else convert(model, serving_function, "none", error=ExportError)}
        if quantize != "none":
            models[quantize] = flatbuffer
        record["accuracy"] = {"split": split, "images": len(labels),
                              **{name: accuracy(content, images, labels) for name, content in models.items()}}
    return record


def convert(model: keras.Model, serving_function: Any, quantize: str = "none", calibration: np.ndarray | None = None,
            *, error: type = KcnnError) -> bytes:
    """The LiteRT flatbuffer (bytes) of kcnn.deploy.export's serving function of `model`; `calibration`: the
    float32 images an int8 conversion measures activation ranges on."""
    import keras
    import tensorflow as tf

    # Through a SavedModel in a temporary folder, as Keras' own LiteRT export goes: the converter freezes
    # its variables into constants (from_concrete_functions would keep the Keras model's variables as
    # resource variables, which int8 calibration cannot read) and keeps the signature's names.
    serve, shape = serving_function(model)
    folder = tempfile.mkdtemp()
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, serve, input_signature=[tf.TensorSpec((None, *shape), tf.float32,
                                                                              name="image")])
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE])
        return _converted(converter, quantize, calibration, error)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _converted(converter, quantize, calibration, error):
    import tensorflow as tf

    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        # Every op in int8 (a model with an op that has no int8 kernel is refused, not half-quantized); the
        # input and output types stay float32 (the converter's default): the same contract as float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as failure:  # the converter's ConverterError: many lines of MLIR; keep the first
        first = next((line for line in str(failure).splitlines() if "error" in line.lower()), str(failure))
        raise error(f"The LiteRT converter refused this model ({quantize}): {first.strip()[:300]}"
                    + ("; export float16 or none instead." if quantize == "int8" else ".")) from None


def with_metadata(flatbuffer: bytes, entries: dict) -> bytes:
    """`flatbuffer` with each `entries` name -> text added to the model's metadata (the LiteRT schema's
    `metadata` table: a name and a buffer; the interpreter ignores it)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() not in entries]
    for name, text in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode("utf-8"), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def accuracy(flatbuffer: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of `images` whose `class_index` from the LiteRT interpreter is the label."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flatbuffer).get_signature_runner(SIGNATURE)
    predicted = np.concatenate([runner(image=images[start:start + BATCH_SIZE])["class_index"]
                                for start in range(0, len(images), BATCH_SIZE)])
    return float(np.mean(predicted == labels))


def _sample(data, count, seed):
    """`count` images of `data` (a kcnn.data.ImageData) drawn without replacement by `seed`."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(data))[:count])
    return dataclasses.replace(data, images=data.images[chosen], labels=data.labels[chosen])


def _prepared(data, shape):
    """(float32 0-255 images at the model's input `shape`, labels): resized and grey or RGB as in training."""
    from kcnn.data.pipeline import make_dataset

    batches = list(make_dataset(data, batch_size=BATCH_SIZE, training=False, num_classes=len(data.class_names),
                                image_shape=shape).as_numpy_iterator())
    return (np.concatenate([images for images, _ in batches]).astype("float32"),
            np.concatenate([labels for _, labels in batches]))


def _evaluation_images(run_dir, shape, count):
    """(images, labels, split name) of the first `count` images of the run's evaluation split, or None for a
    bare .keras file or a run whose config or data is not there (the export itself does not need them)."""
    if run_dir is None:
        return None
    from kcnn.runs.rundir import run_config

    try:
        config = run_config(run_dir)[0]
        data = config.load(config.eval_split_name())
    except KcnnError:
        return None
    first = dataclasses.replace(data, images=data.images[:count], labels=data.labels[:count])
    return (*_prepared(first, shape), data.name)


def run_config_of(run_dir: str) -> Any:
    """The run config of `run_dir` (int8 calibrates on its training data), or one ExportError sentence."""
    from kcnn.runs.rundir import run_config

    try:
        return run_config(run_dir)[0]
    except KcnnError as error:
        raise ExportError(f"int8 needs the run's training images to calibrate on, but {error}") from None
