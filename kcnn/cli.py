"""`kcnn` command line: a thin layer over the public API.

    kcnn list [PATTERN]                      registered models, with their references
    kcnn info NAME                           what the registry knows of one model
    kcnn summary NAME [--input-shape H,W,C]  the per-layer table with MACs
    kcnn train --arch lenet5 --dataset mnist  train from scratch (see `kcnn train -h`)
    kcnn finetune --dataset FOLDER            fine-tune a pretrained backbone (see `kcnn finetune -h`)
    kcnn evaluate RUN_DIR                     re-evaluate a run's model.keras on its evaluation split
    kcnn predict RUN_DIR IMAGE [IMAGE ...]    top classes of each image with a run's model
    kcnn predict efficientnet_lite0 IMAGE     ImageNet top-5 with a pretrained model's weights
    kcnn export RUN_DIR [--format onnx]       SavedModel (TF Serving layout), ONNX or .keras for serving
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
    predict = commands.add_parser("predict", help="classify image files with a run's model")
    predict.add_argument("run_dir", help="a run directory (or a model.keras file inside one), or the name of a "
                         "model with pretrained weights (ImageNet classes)")
    predict.add_argument("images", nargs="+", help="image files (png, jpg, bmp, gif, webp)")
    predict.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    predict.add_argument("--weights", default="imagenet", help="with a model name: which of its named weights "
                         "(default imagenet; `kcnn list --pretrained` lists them). Images get the weights' own "
                         "evaluation resize and centre crop")
    export = commands.add_parser("export", help="export a run's model for serving (SavedModel, ONNX, .keras)")
    export.add_argument("source", help="a run directory, or a .keras file")
    export.add_argument("--format", default="saved_model", choices=("saved_model", "onnx", "keras"))
    export.add_argument("--output", help="the export folder (default: RUN_DIR/export, or saved_models/NAME_export "
                        "for a .keras file); a SavedModel goes into OUTPUT/VERSION/ as TensorFlow Serving expects")
    export.add_argument("--version", type=int, default=1, help="SavedModel version folder (default 1)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    doctor = commands.add_parser("doctor", help="report backends, GPUs, data and weights, and verify checksums")
    doctor.add_argument("--data-dir", help="a data folder searched before KCNN_DATA_DIR and the Keras cache")
    doctor.add_argument("--no-backends", dest="check_backends", action="store_false",
                        help="skip probing TensorFlow, PyTorch and JAX (a few seconds each)")
    return parser


DISTRIBUTE_HELP = ("data-parallel training on the backend's engine: tf.distribute (every GPU of this machine), "
                   "torch DDP (launch with torchrun), keras.distribution on JAX (KERAS_DISTRIBUTION_* for several "
                   "machines); --batch-size is the global batch")


def _add_train_arguments(parser):
    from kcnn.train import OPTIMIZERS, SCHEDULES
    from kcnn.data.pipeline import AUGMENTATIONS

    parser.add_argument("--dataset", default="mnist",
                        help="mnist, cifar10, cifar10_sample, digits, or a folder with one sub-folder per class")
    parser.add_argument("--arch", default=None, help="registry name (default: the dataset's)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument("--learning-rate", "--lr", type=float)
    parser.add_argument("--schedule", choices=SCHEDULES)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--augment", choices=AUGMENTATIONS)
    parser.add_argument("--image-size", type=int, help="resize images to this square size")
    parser.add_argument("--validation-split", type=float, default=0.2,
                        help="image folders: fraction of each class held out (default 0.2)")
    parser.add_argument("--on-bad-image", choices=("skip", "stop"), default="skip",
                        help="image folders: skip and count unreadable files (default), or stop at the first")
    parser.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                        help="stop after PATIENCE epochs without a better validation accuracy; keep the best weights")
    parser.add_argument("--mixed-precision", action="store_true")
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

    defaults = FinetuneConfig()
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="a folder with one sub-folder of images per class, cifar10_sample (default), cifar10, "
                             "mnist or digits")
    parser.add_argument("--backbone", default=defaults.backbone,
                        help="a model with pretrained weights (kcnn list --pretrained); default efficientnet_lite0")
    parser.add_argument("--weights", default=defaults.weights, help="named weights (default imagenet)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help=f"input size (default {defaults.image_size}: fast on a CPU; 224 is what the weights "
                             f"were trained at)")
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

    finetune(FinetuneConfig(**{k: v for k, v in vars(args).items() if k != "command"}))


def _train(args):
    from kcnn.train import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k != "command"}
    train(TrainConfig(**fields))


def _evaluate(run_dir):
    import keras

    from kcnn.rundir import load_run
    from kcnn.train import evaluate_model

    model, config, _ = load_run(run_dir)
    data = config.load(config.eval_split_name())
    metrics = evaluate_model(model, data, tuple(model.input_shape[1:]), config.batch_size)
    print(f"{config.eval_split_name()} accuracy {metrics['accuracy']:.4f} on {metrics['images']} images "
          f"({keras.backend.backend()})")


def _predict(run_dir, images, top, weights="imagenet"):
    import os

    import kcnn
    from kcnn.rundir import load_run
    from kcnn.train import predict_files

    if not os.path.exists(run_dir) and run_dir in {info.name for info in kcnn.list_models(pretrained=True)}:
        from kcnn.weights import get_source

        source = get_source(run_dir, weights)
        model, class_names, transform = kcnn.build(run_dir, weights=weights), source.class_names, source.eval_transform
    else:
        (model, _, class_names), transform = load_run(run_dir), None
    for path, ranking in zip(images, predict_files(model, images, class_names, top=top, transform=transform)):
        print(path)
        for name, probability in ranking:
            print(f"  {probability:7.2%}  {name}")


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
            _evaluate(args.run_dir)
        elif args.command == "predict":
            _predict(args.run_dir, args.images, args.top, args.weights)
        elif args.command == "export":
            from kcnn.export import export

            export(args.source, args.format, args.output, version=args.version, overwrite=args.overwrite)
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
