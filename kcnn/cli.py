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
    kcnn serve RUN_DIR [--port 8501]          TensorFlow Serving's REST API and a page, on onnxruntime (kcnn/serve.py)
    kcnn doctor [--data-dir DIR]              backends, GPUs, data and weights found, checksums (exit 1: a mismatch)

Bad input exits with code 2 and one line on stderr, never a traceback.
"""

import argparse
import sys


def _parse_shape(text):
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W,C such as 32,32,3; received {text!r}") from None


def _parser():
    from kcnn.tta import TTA_MODES

    parser = argparse.ArgumentParser(prog="kcnn", description="Convolutional networks for Keras 3.")
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
    _add_train_arguments(train)
    finetune = commands.add_parser("finetune", help="fine-tune a pretrained ImageNet backbone on your classes")
    _add_finetune_arguments(finetune)
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
    from kcnn.serve import add_arguments

    add_arguments(serve)
    doctor = commands.add_parser("doctor", help="report backends, GPUs, data and weights, and verify checksums")
    doctor.add_argument("--data-dir", help="a data folder searched before KCNN_DATA_DIR and the Keras cache")
    doctor.add_argument("--no-backends", dest="check_backends", action="store_false",
                        help="skip probing TensorFlow, PyTorch and JAX (a few seconds each)")
    return parser


DISTRIBUTE_HELP = ("data-parallel training on the backend's engine: tf.distribute (every GPU of this machine), "
                   "torch DDP (launch with torchrun), keras.distribution on JAX (KERAS_DISTRIBUTION_* for several "
                   "machines); --batch-size is the global batch")


def _add_train_arguments(parser):
    from kcnn.report import CLASS_WEIGHTS
    from kcnn.train import OPTIMIZERS, SCHEDULES
    from kcnn.tta import TTA_MODES
    from kcnn.data.pipeline import AUGMENTATIONS

    parser.add_argument("--dataset", default="mnist",
                        help="mnist, cifar10, cifar10_sample, digits, or a folder with one sub-folder per class")
    parser.add_argument("--arch", default=None, help="registry name (default: the dataset's)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument("--learning-rate", "--lr", type=float)
    parser.add_argument("--schedule", choices=SCHEDULES,
                        help="learning rate over the run: triangle is airbench94's (up over 23%%, then down)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--momentum", type=float, help="SGD's Nesterov momentum (default 0.9; CIFAR-10: 0.85)")
    parser.add_argument("--norm-bias-lr", type=float, metavar="FACTOR",
                        help="batch-norm biases learn FACTOR times faster, with the same decay per step "
                             "(CIFAR-10: 64, as airbench94)")
    parser.add_argument("--lookahead", action=argparse.BooleanOptionalAction,
                        help="lookahead every 5 steps, as airbench94 (CIFAR-10: on)")
    parser.add_argument("--dirac-init", action=argparse.BooleanOptionalAction,
                        help="convolutions start as identities (CIFAR-10: on)")
    parser.add_argument("--whiten-bias-epochs", type=int, metavar="N",
                        help="airbench: the whitening layer's bias trains for N epochs (CIFAR-10: 3; 0: frozen)")
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--augment", choices=AUGMENTATIONS)
    parser.add_argument("--image-size", type=int, help="resize images to this square size")
    parser.add_argument("--validation-split", type=float, default=0.2,
                        help="image folders: fraction of each class held out (default 0.2)")
    parser.add_argument("--on-bad-image", choices=("skip", "stop"), default="skip",
                        help="image folders: skip and count unreadable files (default), or stop at the first")
    parser.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                        help="stop after PATIENCE epochs without a better validation accuracy; keep the best weights")
    parser.add_argument("--class-weight", choices=CLASS_WEIGHTS,
                        help="balanced: every class counts as much, however many images it has (imbalanced folders)")
    parser.add_argument("--tta", choices=(*TTA_MODES, "none"),
                        help="also evaluate with test-time augmentation (flip, or flip_crop: 6 views; CIFAR-10: "
                             "flip_crop); metrics.json records both accuracies")
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction,
                        help="bfloat16 or float16 where this machine computes it natively, float32 where not "
                             "(kcnn doctor says which; CIFAR-10: on; KCNN_MIXED_PRECISION overrides)")
    parser.add_argument("--no-jit", dest="jit_compile", action="store_false", default="auto")
    parser.add_argument("--distribute", action="store_true", help=DISTRIBUTE_HELP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--output-dir")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output-dir from its last finished epoch")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the kcnn run in --output-dir (only the files it wrote)")
    parser.add_argument("--export", action="store_true",
                        help="also write a SavedModel for serving into RUN_DIR/export/1")


def _add_finetune_arguments(parser):
    from kcnn.finetune import FinetuneConfig
    from kcnn.report import CLASS_WEIGHTS
    from kcnn.tta import TTA_MODES

    defaults = FinetuneConfig()
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="a folder with one sub-folder of images per class, cifar10_sample (default), cifar10, "
                             "mnist or digits")
    parser.add_argument("--backbone", default=defaults.backbone,
                        help="a model with pretrained weights (kcnn list --pretrained); default efficientnet_lite0")
    parser.add_argument("--weights", default=defaults.weights, help="named weights (default imagenet)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help=f"input size (default {defaults.image_size}, what the weights were trained at; 128 "
                             f"takes a third of the time, 7 points less on the CIFAR-10 sample)")
    parser.add_argument("--head-epochs", type=int, default=defaults.head_epochs, help="phase 1: the new head")
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs,
                        help="phase 2: the unfrozen top of the backbone (0: skip)")
    parser.add_argument("--unfreeze", type=_blocks, default=defaults.unfreeze,
                        help=f"top blocks to fine-tune in phase 2, or 'all' (default {defaults.unfreeze})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--head-learning-rate", type=float, default=defaults.head_learning_rate)
    parser.add_argument("--finetune-learning-rate", type=float, default=defaults.finetune_learning_rate)
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="do not also train on mirror images (the default augmentation)")
    parser.add_argument("--extra-views", type=int, default=defaults.extra_views,
                        help=f"randomly shifted and mirrored copies of each training image, computed once through "
                             f"the frozen layers (default {defaults.extra_views})")
    parser.add_argument("--tta", choices=(*TTA_MODES, "none"), default=defaults.tta or "none",
                        help=f"test-time augmentation of the held-out evaluation, reported beside the plain "
                             f"accuracy (default {defaults.tta})")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=defaults.ema,
                        help="phase 2 ends on the moving average of its weights")
    parser.add_argument("--layer-decay", type=float, default=defaults.layer_decay,
                        help=f"phase 2: each block learns at this fraction of the rate of the block above it "
                             f"(layer-wise decay; default {defaults.layer_decay:g}: off)")
    parser.add_argument("--mixup", type=float, default=defaults.mixup,
                        help=f"mixup's alpha for the new head in phase 1 (default {defaults.mixup:g}: off)")
    parser.add_argument("--class-weight", choices=CLASS_WEIGHTS, default=None,
                        help="balanced: every class counts as much, however many images it has (imbalanced folders)")
    parser.add_argument("--validation-split", type=float, default=defaults.validation_split,
                        help="fraction of the training images the callbacks watch")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--distribute", action="store_true", help=DISTRIBUTE_HELP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--output-dir")
    parser.add_argument("--no-export", dest="export", action="store_false",
                        help="skip the SavedModel for serving in RUN_DIR/export/1")
    parser.add_argument("--resume", action="store_true",
                        help="continue the killed run in --output-dir (the same settings) where it stopped")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the kcnn run in --output-dir (only the files it wrote)")


def _blocks(text):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of blocks or 'all'; received {text!r}") from None


def _finetune(args):
    from kcnn.finetune import FinetuneConfig, finetune

    fields = {k: v for k, v in vars(args).items() if k != "command"}
    fields["tta"] = None if fields["tta"] == "none" else fields["tta"]
    finetune(FinetuneConfig(**fields))


def _train(args):
    from kcnn.train import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k != "command"}
    train(TrainConfig(**fields))


def _evaluate(run_dir, tta=None):
    import keras

    from kcnn.train import evaluate_run

    metrics = evaluate_run(run_dir, tta=tta)
    print(f"{metrics['eval_split']} accuracy {metrics['accuracy']:.4f} on {metrics['images']} images "
          f"({keras.backend.backend()})")
    for mode, accuracy in metrics.get("tta_accuracy", {}).items():
        print(f"{metrics['eval_split']} accuracy with test-time {mode} {accuracy:.4f} (recorded in metrics.json)")


def _model_for(run_dir, weights="imagenet"):
    """(model, class names, image transform) of a run directory (or a model.keras in one), or of the name
    of a model with pretrained weights (its publisher's evaluation transform; a run's is None)."""
    import os

    import kcnn
    from kcnn.rundir import load_run

    if not os.path.exists(run_dir) and run_dir in {info.name for info in kcnn.list_models(pretrained=True)}:
        from kcnn.weights import get_source

        source = get_source(run_dir, weights)
        return kcnn.build(run_dir, weights=weights), source.class_names, source.eval_transform
    model, _, class_names = load_run(run_dir)
    return model, class_names, None


def _predict(run_dir, images, top, weights="imagenet", tta=None):
    from kcnn.train import predict_files

    model, class_names, transform = _model_for(run_dir, weights)
    rankings = predict_files(model, images, class_names, top=top, transform=transform, tta=tta)
    for path, ranking in zip(images, rankings):
        print(path)
        for name, probability in ranking:
            print(f"  {probability:7.2%}  {name}")


def _explain(args):
    import os

    from kcnn.explain import explain_files
    from kcnn.rundir import RunDir

    model, class_names, transform = _model_for(args.run_dir, args.weights)
    output, run = args.output, None
    if output is None:
        run_dir = os.path.dirname(args.run_dir) if args.run_dir.endswith(".keras") else args.run_dir
        output = os.path.join("saved_models", "explain") if transform is not None else os.path.join(run_dir, "explain")
        run = RunDir(run_dir) if transform is None and RunDir(run_dir).is_run() else None  # RUN/explain: listed
    for path, name, probability, written in explain_files(model, args.images, class_names, output,
                                                          transform=transform, class_name=args.class_name,
                                                          layer=args.layer, run=run):
        of = f", Grad-CAM of {args.class_name}" if args.class_name else ""
        print(f"{path}: predicted {name} ({probability:.1%}){of} -> {written}")


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


def main(argv=None):
    args = _parser().parse_args(argv)
    import kcnn  # after argument parsing: `kcnn --help` stays fast

    try:
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
            from kcnn.export import export

            export(args.source, args.format, args.output, version=args.version, overwrite=args.overwrite,
                   tta=args.tta, quantize=args.quantize, calibration_images=args.calibration_images)
        elif args.command == "serve":
            from kcnn.serve import start

            return start(args.source, model_name=args.model_name, host=args.host, port=args.port,
                         max_body_mb=args.max_body_mb, max_batch=args.max_batch)  # returns only on Windows
        elif args.command == "doctor":
            from kcnn.doctor import doctor, format_report

            report = doctor(args.data_dir, check_backends=args.check_backends)
            print(format_report(report))
            return 1 if report.failures else 0  # missing files are only reported
    except kcnn.KcnnError as error:
        print(f"kcnn: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
