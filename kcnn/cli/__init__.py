"""`kcnn` command line: a thin layer over the public API.

    kcnn list [PATTERN]                      registered models, with their references
    kcnn info NAME                           what the registry knows of one model
    kcnn summary NAME [--input-shape H,W,C]  the per-layer table with MACs
    kcnn train --arch lenet5 --dataset mnist  train from scratch (see `kcnn train -h`)
    kcnn finetune --dataset FOLDER            fine-tune a pretrained backbone (see `kcnn finetune -h`)
    kcnn evaluate RUN_DIR                     re-evaluate a run's model.keras on its evaluation split
    kcnn predict RUN_DIR IMAGE [IMAGE ...]    top classes of each image with a run's model
    kcnn predict efficientnet_lite0 IMAGE     ImageNet top-5 with a pretrained model's weights
    kcnn explain RUN_DIR IMAGE [IMAGE ...]    Grad-CAM overlays, where the model looked (into RUN_DIR/explain/)
    kcnn explain efficientnet_lite0 IMAGE [--class NAME] [--layer NAME]   the same into saved_models/explain/
    kcnn export RUN_DIR [--format onnx]       SavedModel (TF Serving layout), ONNX, LiteRT or .keras for serving
    kcnn serve RUN_DIR [--port 8501]          TensorFlow Serving's REST API and a page, on onnxruntime (kcnn/deploy/serve.py)
    kcnn doctor [--data-dir DIR]              backends, GPUs, data and weights found, checksums (exit 1: a mismatch)
    kcnn --version                            kcnn 0.1.0
    kcnn --backend torch COMMAND ...          the Keras backend for this command (over KERAS_BACKEND)

Bad input exits with code 2 and one line on stderr, never a traceback. Parsing the command line, `--help`, `list`
and `info` import no Keras and no backend (kcnn's registry is plain data): they answer in a fraction of a second.
"""

import argparse
import contextlib
import os
import sys
from typing import Iterator, Optional, Sequence

BACKENDS = ("tensorflow", "torch", "jax")


def _parse_shape(text):
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W,C such as 32,32,3; received {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    import kcnn
    from kcnn.cli.arguments import add_config_arguments
    from kcnn.config import FinetuneConfig, TrainConfig
    from kcnn.data.tta import TTA_MODES

    parser = argparse.ArgumentParser(prog="kcnn", description="Convolutional networks for Keras 3.",
                                     epilog="Bad input exits with code 2 and one line on stderr. The backends' "
                                     "start-up logging is kept off stderr (TF_CPP_MIN_LOG_LEVEL=0 shows it).")
    parser.add_argument("--version", action="version", version=f"kcnn {kcnn.__version__}")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="the Keras backend for this command; it wins over the KERAS_BACKEND environment "
                             "variable (default: KERAS_BACKEND, else Keras' own configuration)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list registered models")
    listing.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'resnet*'")
    listing.add_argument("--pretrained", action="store_true", help="only models with named pretrained weights")
    info = commands.add_parser("info", help="show what the registry knows of a model")
    info.add_argument("name")
    summary = commands.add_parser("summary", help="per-layer output shapes, parameters and MACs")
    summary.add_argument("name")
    summary.add_argument("--input-shape", type=_parse_shape, default=None, help="H,W,C (default: the model's)")
    train = commands.add_parser("train", help="train an architecture from scratch")
    add_config_arguments(train, TrainConfig)
    finetune = commands.add_parser("finetune", help="fine-tune a pretrained ImageNet backbone on your classes")
    add_config_arguments(finetune, FinetuneConfig)
    evaluate = commands.add_parser("evaluate", help="evaluate a run's model on its evaluation split")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--tta", choices=TTA_MODES, help="also with test-time augmentation: the image and its mirror "
                          "(flip), or both shifted too (flip_crop, 6 views); recorded in the run's metrics.json")
    predict = commands.add_parser("predict", help="classify image files with a run's model")
    predict.add_argument("run_dir", help="a run directory (or a model.keras file inside one), or the name of a "
                         "model with pretrained weights (ImageNet classes)")
    predict.add_argument("images", nargs="+", help="image files (png, jpg, bmp, gif, webp)")
    predict.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    predict.add_argument("--tta", nargs="?", const="flip", choices=TTA_MODES,
                         help="average over test-time views: flip (the default of a bare --tta) or flip_crop")
    predict.add_argument("--weights", default="imagenet", help="with a model name: which of its named weights "
                         "(default imagenet; `kcnn list --pretrained` lists them). Images get the weights' own "
                         "evaluation resize and centre crop")
    explain = commands.add_parser("explain", help="Grad-CAM heatmaps over image files: where the model looked")
    explain.add_argument("run_dir", help="a run directory (or a model.keras file inside one), or the name of a "
                         "model with pretrained weights (ImageNet classes)")
    explain.add_argument("images", nargs="+", help="image files (png, jpg, bmp, gif, webp)")
    explain.add_argument("--output", help="where the overlays go, IMAGE_gradcam.png (default: RUN_DIR/explain, "
                         "or saved_models/explain for a model name)")
    explain.add_argument("--class", dest="class_name", help="the class whose evidence to show, by name (default: "
                         "each image's predicted class)")
    explain.add_argument("--layer", help="the layer whose feature maps are weighed (default: the last one with "
                         "a spatial output)")
    explain.add_argument("--weights", default="imagenet", help="with a model name: which of its named weights")
    export = commands.add_parser("export", help="export a run's model for serving (SavedModel, ONNX, LiteRT, "
                                 ".keras)")
    export.add_argument("source", help="a run directory, or a .keras file")
    export.add_argument("--format", default="saved_model", choices=("saved_model", "onnx", "litert", "keras"))
    export.add_argument("--quantize", choices=("none", "float16", "int8"),
                        help="LiteRT only: float16 weights, or int8 weights and activations calibrated on the run's "
                             "training images (needs a run directory); default none (float32)")
    export.add_argument("--calibration-images", type=int, default=200,
                        help="int8: how many training images calibrate the quantization (default 200)")
    export.add_argument("--output", help="the export folder (default: RUN_DIR/export, or saved_models/NAME_export "
                        "for a .keras file); a SavedModel goes into OUTPUT/VERSION/ as TensorFlow Serving expects")
    export.add_argument("--version", type=int, default=1, help="SavedModel version folder (default 1)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    export.add_argument("--tta", nargs="?", const="flip", choices=TTA_MODES,
                        help="the exported model answers with test-time augmentation (flip: 2 forward passes per "
                             "image, flip_crop: 6; off by default)")
    serve = commands.add_parser("serve", help="serve a model over TensorFlow Serving's REST API (and a page to try "
                                "it), with onnxruntime")
    from kcnn.deploy.serve_flags import add_arguments

    add_arguments(serve)
    doctor = commands.add_parser("doctor", help="report backends, GPUs, data and weights, and verify checksums")
    doctor.add_argument("--data-dir", help="a data folder searched before KCNN_DATA_DIR and the Keras cache")
    doctor.add_argument("--no-backends", dest="check_backends", action="store_false",
                        help="skip probing TensorFlow, PyTorch and JAX (a few seconds each)")
    return parser


def _finetune(args):
    from kcnn.cli.arguments import config_from_args
    from kcnn.config import FinetuneConfig
    from kcnn.training.finetune import finetune

    finetune(config_from_args(FinetuneConfig, args))


def _train(args):
    from kcnn.cli.arguments import config_from_args
    from kcnn.config import TrainConfig
    from kcnn.training.train import train

    train(config_from_args(TrainConfig, args))


def _evaluate(run_dir, tta=None):
    import keras

    from kcnn.api import evaluate

    first, *rest = str(evaluate(run_dir, tta=tta)).splitlines()
    print("\n".join([f"{first} ({keras.backend.backend()})", *rest] + ["(recorded in metrics.json)"] * bool(rest)))


def _predict(run_dir, images, top, weights="imagenet", tta=None):
    from kcnn.api import predict

    for prediction in predict(run_dir, images, top=top, weights=weights, tta=tta):
        print(prediction)


def _explain(args):
    from kcnn.api import explain

    for explanation in explain(args.run_dir, args.images, args.output, class_name=args.class_name, layer=args.layer,
                               weights=args.weights):
        print(explanation)


def _list(pattern, pretrained=False):
    import fnmatch

    import kcnn

    if pretrained:  # one row per named source, as README's table
        from kcnn.weights import pretrained_table

        header, *rows = pretrained_table()
        rows = [row for row in rows if fnmatch.fnmatchcase(row[0], pattern)]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        for row in [header] + rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if not rows:
            print(f"(no model with named weights matches {pattern!r})")
        return

    rows = [(m.name, "x".join(map(str, m.default_input_shape)), f"{m.reference_params:,}", m.params_counted,
             m.description) for m in kcnn.list_models(pattern, pretrained=pretrained)]
    header = ("name", "input", "parameters", "counted", "description")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(w) if i != 2 else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths + [0]))).rstrip())
    if not rows:
        print(f"(no model matches {pattern!r})")


def _info(name):
    import kcnn

    info = kcnn.get_model_info(name)
    for field in ("name", "family", "description", "default_input_shape", "default_num_classes",
                  "reference_params", "params_counted", "reference_source", "min_input_size"):
        value = getattr(info, field)
        print(f"{field:20s} {value:,}" if isinstance(value, int) else f"{field:20s} {value}")
    from kcnn.recipes import DATASETS, recipe_for

    print("recipes (kcnn train --dataset NAME; --recipe picks another, flags change single values)")
    for dataset in DATASETS:
        recipe = recipe_for(info, dataset)
        print(f"  {dataset:18s} {recipe.describe()}")
        if recipe.note:
            print(f"  {'':18s} {recipe.note}")


@contextlib.contextmanager
def exits_on_bad_input() -> Iterator[None]:
    """For scripts: a kcnn error (bad input) is one line on stderr and exit code 2, as the `kcnn` command does."""
    from kcnn.errors import KcnnError

    try:
        yield
    except KcnnError as error:
        print(f"kcnn: error: {error}", file=sys.stderr)
        sys.exit(2)


def use_backend(backend: str) -> None:
    """Make `backend` Keras' backend for this process: KERAS_BACKEND, set before Keras is imported. Once Keras is
    imported with another backend (possible when `main` is called from Python), that is bad input."""
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            from kcnn.errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"Keras is already imported with the {keras.backend.backend()} backend in this process, so the "
                f"backend cannot change; run kcnn --backend {backend} in a new process. Received: --backend {backend}")
    os.environ["KERAS_BACKEND"] = backend


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The `kcnn` command: parse `argv` (default: sys.argv[1:]), run the command, return the exit code (0; 1 when
    `doctor` finds a checksum mismatch; 2 on bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    import kcnn

    try:
        if args.backend:
            use_backend(args.backend)
        if args.command == "list":
            _list(args.pattern, args.pretrained)
        elif args.command == "info":
            _info(args.name)
        elif args.command == "summary":
            kcnn.summary(args.name, input_shape=args.input_shape)
        elif args.command == "train":
            _train(args)
        elif args.command == "finetune":
            _finetune(args)
        elif args.command == "evaluate":
            _evaluate(args.run_dir, args.tta)
        elif args.command == "predict":
            _predict(args.run_dir, args.images, args.top, args.weights, args.tta)
        elif args.command == "explain":
            _explain(args)
        elif args.command == "export":
            from kcnn.deploy.export import export

            export(args.source, args.format, args.output, version=args.version, overwrite=args.overwrite,
                   tta=args.tta, quantize=args.quantize, calibration_images=args.calibration_images)
        elif args.command == "serve":
            from kcnn.deploy.serve import start

            return start(args.source, model_name=args.model_name, host=args.host, port=args.port,
                         max_body_mb=args.max_body_mb, max_batch=args.max_batch, body_timeout_s=args.body_timeout_s,
                         shutdown_timeout_s=args.shutdown_timeout_s)  # returns only on Windows
        elif args.command == "doctor":
            from kcnn.cli.doctor import doctor, format_report

            report = doctor(args.data_dir, check_backends=args.check_backends)
            print(format_report(report))
            return 1 if report.failures else 0  # missing files are only reported
    except kcnn.KcnnError as error:
        print(f"kcnn: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
