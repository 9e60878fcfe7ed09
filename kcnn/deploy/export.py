"""Export for serving, whichever backend trained the model and whichever is active.

    from kcnn.deploy.export import export
    export("saved_models/finetune_efficientnet_lite0_cifar10_sample")            # SavedModel, RUN/export/1/
    export("model.keras", format="onnx", output="saved_models/my_model")          # saved_models/my_model/model.onnx
    export("saved_models/my_run", format="litert", quantize="int8")               # saved_models/my_run/export/model_int8.tflite

Keras writes SavedModels only from the TensorFlow backend (`model.export`
needs torch_xla on PyTorch), so the export itself always runs on TensorFlow:
in this process when it is the active backend, otherwise in a child process
started with KERAS_BACKEND=tensorflow. A `.keras` file holds the same weights
whatever backend wrote it, so nothing is lost on the way.

What is served (both formats): raw RGB pixels in (0-255, float32; the
SavedModel also has a uint8 signature), the model's own preprocessing inside,
a batch of any size; out come `probabilities` (softmax of the logits) and
`class_index`, and from the SavedModel also `class_name`. Images of another
size or channel count are refused with a message naming the shape expected.

Layouts:
- saved_model: OUTPUT/VERSION/ (saved_model.pb, variables/, assets/class_names.txt),
  the folder TensorFlow Serving watches; `serving_default` (float32) and `serving_uint8`.
- onnx: OUTPUT/model.onnx (dynamic batch; class names in its metadata) and
  OUTPUT/class_names.txt.
- litert: OUTPUT/model.tflite (float32), model_float16.tflite (float16 weights) or model_int8.tflite
  (int8 weights and activations, float32 in and out), each with the signature `serving_default`
  (input `image`, outputs `probabilities` and `class_index`; class names in the flatbuffer's metadata
  `class_names`), and OUTPUT/class_names.txt. int8 is post-training quantization calibrated on images of
  the run's own training data, so it needs a run directory; from a run, the export measures the LiteRT
  models' accuracy on the run's evaluation split (kcnn_export.json records it).
- keras: OUTPUT/model.keras, a copy.

Nothing half-written: everything is written under a temporary name beside
its destination and renamed into place at the end; an existing export is
replaced only with overwrite=True.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Sequence

import numpy as np

from kcnn.runs import modelfile
from kcnn.errors import ExportError, InvalidArgumentError, KcnnError  # noqa: F401 (kcnn.deploy.export.ExportError)
from kcnn.runs.atomic import atomic_open, atomic_path

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    from kcnn.runs.rundir import Run

FORMATS = ("saved_model", "onnx", "keras", "litert")
# LiteRT (TensorFlow Lite) flatbuffers, one file per quantization: float32, float16 weights, int8 throughout.
QUANTIZATIONS = {"none": "model.tflite", "float16": "model_float16.tflite", "int8": "model_int8.tflite"}
CALIBRATION_IMAGES = 200  # int8: training images the converter measures activation ranges on
# The file that marks a folder as kcnn's export folder (TensorFlow Serving looks only at the version folders).
EXPORT_MARKER = "kcnn_export.json"
ONNX_OPSET = 17



def export(source: Run | str | os.PathLike, format: str = "saved_model", output: str | None = None, *,
           version: int = 1, overwrite: bool = False, class_names: Sequence[str] | None = None, tta: str | None = None,
           quantize: str | None = None, calibration_images: int = CALIBRATION_IMAGES, verbose: bool = True) -> str:
    """Export the model of a finished run (a `kcnn.runs.rundir.load_run` FinishedRun, or its folder) or of a
    `.keras` file for serving;
    returns the path written (the version folder, model.onnx, a .tflite file or model.keras).
    `tta` ("flip", "flip_crop"): the exported model averages its answer over test-time views
    (kcnn.data.tta), at kcnn.data.tta.passes(tta) forward passes per image.
    `quantize` (litert only): "none" (the default), "float16" or "int8"; int8 is calibrated on
    `calibration_images` images of the run's training split."""
    from kcnn.runs.rundir import FinishedRun, write_errors_explained

    if isinstance(source, FinishedRun):
        model_path, run_dir = source.model_path, source.path
        class_names = list(source.class_names) if class_names is None else class_names
    else:
        model_path, run_dir = find_model(source)
    if format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    check_tta(tta)
    quantize = check_quantize(format, quantize, run_dir, calibration_images)
    if tta and format == "keras":
        raise ExportError("A .keras export is a copy of the model file and cannot hold test-time augmentation; "
                          "export saved_model or onnx with --tta, or wrap the loaded model with kcnn.data.tta.with_tta.")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"version must be a whole number of at least 1 (TensorFlow Serving's folder names). "
                          f"Received: version={version!r}")
    if output is None:
        stem = os.path.splitext(os.path.basename(model_path))[0]
        output = (os.path.join(run_dir, "export") if run_dir
                  else os.path.join("saved_models", f"{stem}_export"))
    destination = os.path.join(output, {"saved_model": str(version), "onnx": "model.onnx", "keras": "model.keras",
                                        "litert": QUANTIZATIONS.get(quantize)}[format])
    run = _check_output(output, run_dir, overwrite, destination)
    if os.path.exists(destination) and not overwrite:
        raise ExportError(f"{destination} already exists; pass overwrite=True (--overwrite) to replace it"
                          + (", or another version (--version)." if format == "saved_model" else "."))
    if class_names is None and run_dir:
        class_names = _run_class_names(run_dir)
    with write_errors_explained(output, flag="--output", again="export again"):  # read-only, full: one sentence
        created = not os.path.exists(output)
        os.makedirs(output, exist_ok=True)
        # in a run's export/: every file entered in the run's manifest before it is written (a version folder,
        # written whole under a temporary name, as a folder until its files are listed)
        written = contextlib.ExitStack()
        if run is not None:
            extra = [os.path.join(output, "class_names.txt")] if format in ("onnx", "litert") else []
            written.enter_context(run.track(os.path.join(output, EXPORT_MARKER), *extra))
            written.enter_context(run.track_folder(destination) if format == "saved_model" else run.track(destination))
        try:
            with written:
                if format == "keras":
                    load_model(model_path)  # refuse what Keras cannot load, as the other formats do
                    with atomic_path(destination) as temporary:
                        shutil.copyfile(model_path, temporary)
                    record = {}
                else:
                    litert = {"quantize": quantize, "run_dir": run_dir, "calibration_images": calibration_images} \
                        if format == "litert" else None
                    record = _run_on_tensorflow(model_path, format, destination, class_names, tta, litert) or {}
                _mark_output(output, destination, format, model_path, record)
        except BaseException:
            if created and not os.listdir(output):
                os.rmdir(output)  # leave no trace of a failed export
            raise
    if verbose:
        print(f"Exported {model_path} ({format}{f', {quantize}' if quantize else ''}) to {destination}")
        if "accuracy" in record:
            print(describe_accuracy(record["accuracy"]))
    return destination


def check_quantize(format: str, quantize: str | None, run_dir: str | None, calibration_images: int) -> str | None:
    """The quantization of a LiteRT export ("none" when not given); refused for the other formats, and int8
    without a run's training images to calibrate on."""
    if format != "litert":
        if quantize is not None:
            raise ExportError(f"Quantization applies to LiteRT exports only; pass --format litert, or leave out "
                              f"--quantize. Received: quantize={quantize!r} with format={format!r}")
        return None
    quantize = "none" if quantize is None else quantize
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"Unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    if quantize == "int8":
        if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
            raise ExportError(f"calibration_images must be a whole number of at least 1. "
                              f"Received: calibration_images={calibration_images!r}")
        if run_dir is None:
            raise ExportError("int8 needs calibration images from the run's training data: export a run directory "
                              "(or the model.keras inside one), not a bare .keras file, or choose float16.")
        from kcnn.deploy.litert import run_config_of

        run_config_of(run_dir)  # its config.json names the data; refused here, before any work
    return quantize


def describe_accuracy(accuracy: dict) -> str:
    """One line: the LiteRT models' accuracy on the evaluation images (kcnn_export.json's `accuracy`)."""
    shown = ", ".join(f"{name} {value:.4f}" for name, value in accuracy.items() if name not in ("split", "images"))
    return f"LiteRT accuracy on the first {accuracy['images']} images of {accuracy['split']}: {shown}"


def check_tta(tta: str | None) -> None:
    from kcnn.data.tta import check_mode

    try:
        check_mode(tta)
    except InvalidArgumentError as error:
        raise ExportError(str(error)) from None


def find_model(source: str | os.PathLike) -> tuple[str, str | None]:
    """(path of the .keras file, run directory or None) of a run directory or a .keras file."""
    source = os.fspath(source)
    if os.path.isdir(source):
        model_path = os.path.join(source, "model.keras")
        if not os.path.isfile(model_path):
            raise ExportError(f"{source} holds no model.keras; pass the directory of a finished run or a .keras file.")
        return model_path, source
    if not os.path.isfile(source):
        raise ExportError(f"No such file or directory: {source!r}; pass a run directory or a .keras file.")
    if not source.endswith(".keras"):
        raise ExportError(f"{source} is not a Keras model file (.keras); pass a run directory or a .keras file.")
    run_dir = os.path.dirname(source)
    return source, (run_dir if os.path.isfile(os.path.join(run_dir, "metrics.json")) else None)


def _check_output(output, run_dir, overwrite, destination=None):
    """An export goes into a new or empty folder, or one kcnn exported into before (its marker file, or
    files the run's manifest lists); a folder holding files kcnn did not write is refused, even with
    overwrite, and left as it was. A run's export/ is checked as any other folder, and it must be a folder
    of the run, not a symbolic link (the link's target is not kcnn's). Returns the `RunDir` whose
    manifest lists what the export writes, when it goes into a run's export/; else None."""
    from kcnn.runs.rundir import RunDir

    in_run = run_dir and os.path.abspath(output) == os.path.abspath(os.path.join(run_dir, "export"))
    if in_run and os.path.islink(output):  # (a link hides the files that bind a run to its folder: any run's)
        raise ExportError(f"{output} is a symbolic link, which kcnn leaves alone: it exports into a run's export/ "
                          f"only as a folder of its own; remove the link, or pass the folder it points to as "
                          f"--output.")
    run = RunDir(run_dir) if in_run and RunDir(run_dir).is_run() else None
    if not os.path.exists(output):
        return run
    if not os.path.isdir(output):
        raise ExportError(f"{output} is a file, not a folder; pass another --output.")
    _remove_stale_temporaries(output)
    listed = run.listed() if run is not None else set()
    entries = sorted(os.listdir(output))
    if os.path.isfile(os.path.join(output, EXPORT_MARKER)):
        # a run with a manifest vouches for its files; one without (written before it) is checked as any folder
        foreign = _foreign_files(destination, run_dir, listed) if listed and destination else []
    else:
        foreign = [entry for entry in entries
                   if not listed or _foreign_files(os.path.join(output, entry), run_dir, listed)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ExportError(
            f"{output} holds files kcnn did not write ({shown}), which kcnn leaves alone"
            f"{' (--overwrite replaces only what kcnn exported)' if overwrite else ''}; pass a new or empty "
            f"folder as --output.")
    return run


# What kcnn.runs.atomic.atomic_path leaves in an export folder when the export is killed: a file NAME.tmp.EXT
# of the files an export writes, or the workspace .VERSION.XXXXXXXX (tempfile's 8 characters) of a SavedModel.
_TEMPORARY_FILE = re.compile(r"(model|model_float16|model_int8|class_names|kcnn_export)\.tmp\.(onnx|keras|tflite|txt|json)")
_TEMPORARY_FOLDER = re.compile(r"\.[0-9]+\.[a-z0-9_]{8}")


def _remove_stale_temporaries(output):
    """Remove what a killed export left in `output` (by the names above only; never a link): the next export
    would otherwise count them as files kcnn did not write. Two exports into one folder at once are not
    supported (the second may remove the first's temporaries, and the first then fails, as it would anyway)."""
    for entry in os.listdir(output):
        path = os.path.join(output, entry)
        if os.path.islink(path):
            continue
        if _TEMPORARY_FILE.fullmatch(entry) and os.path.isfile(path):
            os.remove(path)
        elif _TEMPORARY_FOLDER.fullmatch(entry) and os.path.isdir(path) and not _holds_links(path):
            shutil.rmtree(path)


def _holds_links(folder):
    return any(os.path.islink(os.path.join(root, name)) for root, folders, names in os.walk(folder)
               for name in folders + names)


def _foreign_files(path, run_dir, listed):
    """The files at or below `path` (inside a run) that the run's manifest does not list, links not
    followed (a link is never kcnn's)."""
    if not os.path.lexists(path):
        return []
    if os.path.islink(path) or not os.path.isdir(path):
        found = [path]
    else:
        found = [os.path.join(root, name) for root, folders, names in os.walk(path)
                 for name in names + [f for f in folders if os.path.islink(os.path.join(root, f))]]
    relative = [os.path.relpath(found_path, run_dir).replace(os.sep, "/") for found_path in found]
    return sorted(name for name in relative if name not in listed or os.path.islink(os.path.join(run_dir, name)))


def _mark_output(output, destination, format, model_path, details=None):
    """kcnn_export.json: what kcnn exported into this folder (so that a later export may replace it)."""
    path = os.path.join(output, EXPORT_MARKER)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    from kcnn.version import __version__

    exports = dict(record.get("kcnn", {}).get("exports", {}))
    exports[os.path.basename(destination)] = {"format": format, "model": os.path.abspath(model_path),
                                              **(details or {})}
    with atomic_open(path) as f:
        json.dump({"kcnn": {"version": __version__, "exports": exports}}, f, indent=1)


def _run_class_names(run_dir):
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            return list(json.load(f)["class_names"])
    except (OSError, ValueError, KeyError):
        return None


def load_model(model_path: str) -> keras.Model:
    """The model of a .keras file, loaded in Keras' safe mode (no code from the file runs);
    on torch with kcnn.backends.torch_fast's kernels, as kcnn.build gives."""
    return modelfile.load_model(model_path, error=ExportError, compile=False, accelerate=True)


refusal = modelfile.refusal  # one sentence on why a .keras file did not load


def _run_on_tensorflow(model_path, format, destination, class_names, tta=None, litert=None):
    """The export on TensorFlow, here or in a child process; returns what export_on_tensorflow returns."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return export_on_tensorflow(model_path, format, destination, class_names, tta, litert)
    folder = tempfile.mkdtemp()
    report = os.path.join(folder, "report.json")  # what the child returns
    request = json.dumps({"model": model_path, "format": format, "destination": destination,
                          "class_names": class_names, "tta": tta, "litert": litert, "report": report})
    environment = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        done = subprocess.run([sys.executable, "-m", "kcnn.deploy.export", request], env=environment, capture_output=True,
                              text=True)
        if done.returncode == 2:  # an ExportError, one sentence on the last line
            raise ExportError(done.stderr.strip().splitlines()[-1])
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise ExportError(f"Exporting on the TensorFlow backend failed:\n{tail}")
        with open(report) as f:
            return json.load(f)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def export_on_tensorflow(model_path: str, format: str, destination: str, class_names: Sequence[str] | None,
                         tta: str | None = None, litert: dict | None = None) -> dict | None:
    """The export itself; runs on the TensorFlow backend. Returns what kcnn_export.json records beside the
    format (a LiteRT export's quantization, size and accuracy), or None. `litert`: {quantize, run_dir,
    calibration_images}."""
    from kcnn.data.tta import with_tta

    model = load_model(model_path)
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ExportError(f"{model_path} is not an image classifier with one image input and one output; kcnn "
                          f"exports those only.")
    if tta and None in model.inputs[0].shape[1:3]:
        raise ExportError(f"{model_path} takes images of any size {tuple(model.inputs[0].shape)[1:]}; test-time "
                          f"augmentation needs a model of fixed input size: export it without --tta.")
    model = with_tta(model, tta)
    num_classes = model.outputs[0].shape[-1]
    class_names = [str(name) for name in class_names] if class_names else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with {num_classes} outputs; pass one name "
                          f"per class.")
    check_class_names(class_names, ExportError)
    record = None
    if format == "saved_model":
        with atomic_path(destination) as temporary:
            _write_saved_model(model, temporary, class_names)
    elif format == "litert":
        from kcnn.deploy import litert as kcnn_litert

        record = kcnn_litert.write(model, destination, class_names, serving_function=_serving_function,
                                   **(litert or {}))
    else:
        with atomic_path(destination) as temporary:
            _write_onnx(model, temporary, class_names)
    if format in ("onnx", "litert"):
        with atomic_path(os.path.join(os.path.dirname(destination), "class_names.txt")) as temporary:
            _write_lines(temporary, class_names)
    return record


def _serving_function(model):
    """raw pixels -> {probabilities, class_index}, checking the image shape first."""
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape[1:])
    ends_in_softmax = getattr(getattr(model.layers[-1], "activation", None), "__name__", "") == "softmax"

    def serve(image):
        tf.debugging.assert_equal(
            tf.shape(image)[1:], tf.constant(shape, tf.int32),
            message=f"kcnn: images must have the shape (batch, {', '.join(map(str, shape))}), the model's input "
                    f"(raw 0-255 RGB pixels); resize them first")
        outputs = model(tf.cast(image, tf.float32), training=False)
        probabilities = tf.cast(outputs, tf.float32) if ends_in_softmax else tf.nn.softmax(tf.cast(outputs,
                                                                                                    tf.float32))
        return {"probabilities": probabilities,
                "class_index": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return serve, shape


def _write_saved_model(model, path, class_names):
    import keras
    import tensorflow as tf

    serve, shape = _serving_function(model)
    names_file = os.path.join(tempfile.mkdtemp(), "class_names.txt")
    _write_lines(names_file, class_names)
    # The class names travel as an asset: a table read from the file, which the SavedModel copies into assets/.
    table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(names_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                                      tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")

    def with_names(image):
        outputs = serve(image)
        outputs["class_name"] = table.lookup(tf.cast(outputs["class_index"], tf.int64))
        return outputs

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(table)
    archive.add_endpoint("serving_default", with_names,
                         input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="image")])
    archive.add_endpoint("serving_uint8", with_names,
                         input_signature=[tf.TensorSpec((None, *shape), tf.uint8, name="image")])
    archive.write_out(path, verbose=False)
    shutil.rmtree(os.path.dirname(names_file), ignore_errors=True)


def _write_onnx(model, path, class_names):
    import tensorflow as tf

    try:
        import onnx
        import tf2onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx and tf2onnx packages, which kcnn depends on: reinstall kcnn "
                          "(pip install -c constraints.txt -e .).") from None
    serve, shape = _serving_function(model)
    function = tf.function(serve, input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="image")])
    concrete = function.get_concrete_function()
    # tf2onnx.convert.from_function would also make graph inputs of the tensors the function captures (a
    # Normalization layer's mean and variance): name the one real input, and freeze the rest into the graph.
    inputs, outputs = [concrete.inputs[0].name], [t.name for t in concrete.outputs]
    names = sorted(concrete.structured_outputs)  # the flat outputs follow the dict's sorted keys
    frozen = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen, input_names=inputs, output_names=outputs, opset=ONNX_OPSET,
        custom_op_handlers={"Erfc": (_erfc, [])}, tensors_to_rename={inputs[0]: "image", **dict(zip(outputs, names))})
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # tf2onnx calls it unk__N
    proto.metadata_props.add(key="class_names", value=json.dumps(class_names))
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _erfc(ctx, node, name, args):
    """Erfc(x) as 1 - Erf(x): Keras' exact GELU uses Erfc, which tf2onnx does not convert."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]])


def check_class_names(class_names: Sequence[str], error: type = ExportError, where: str = "") -> None:
    """Refuse, with `error`, class names an export or `kcnn serve` cannot hold: class_names.txt has one name a
    line in UTF-8, and a JSON answer names the class. Names may repeat (ImageNet's "crane" and "maillot" do:
    answers name classes by index too). Called by both workflows before their first epoch too (`where`: the
    folder the names come from)."""
    for name in class_names:
        if len(name.splitlines()) > 1 or name.splitlines() not in ([], [name]):  # \n, \r, \x0b, \x1c, \u2028...
            problem = "holds a line break"
        else:
            try:
                name.encode("utf-8")
                continue
            except UnicodeEncodeError:  # a file name in another encoding (Python keeps its bytes as surrogates)
                problem = "is not valid UTF-8"
        source = f" (a sub-folder of {where})" if where else ""
        raise error(f"The class name {name!r}{source} {problem}, which an export's class_names.txt and the "
                    f"server's answers cannot hold; rename it.")


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: Sequence[str]) -> int:
    """The child process of `_run_on_tensorflow`: exit 2 with one sentence on an ExportError."""
    request = json.loads(argv[0])
    from kcnn.runs.rundir import write_errors_explained

    try:
        with write_errors_explained(os.path.dirname(request["destination"]), flag="--output", again="export again"):
            record = export_on_tensorflow(request["model"], request["format"], request["destination"],
                                          request["class_names"], request.get("tta"), request.get("litert"))
    except KcnnError as error:  # an ExportError, or the run's data that does not load (one sentence each)
        print(error, file=sys.stderr)
        return 2
    if request.get("report"):
        with open(request["report"], "w") as f:
            json.dump(record, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
