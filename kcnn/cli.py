"""`kcnn` command line: a thin layer over the public API.

    kcnn list [PATTERN]                      registered models, with their references
    kcnn info NAME                           what the registry knows of one model
    kcnn summary NAME [--input-shape H,W,C]  the per-layer table with MACs

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
    info = commands.add_parser("info", help="show what the registry knows of a model")
    info.add_argument("name")
    summary = commands.add_parser("summary", help="per-layer output shapes, parameters and MACs")
    summary.add_argument("name")
    summary.add_argument("--input-shape", type=_parse_shape, default=None, help="H,W,C (default: the model's)")
    return parser


def _list(pattern):
    rows = [(m.name, "x".join(map(str, m.default_input_shape)), f"{m.reference_params:,}", m.params_counted,
             m.description) for m in __import__("kcnn").list_models(pattern)]
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
            _list(args.pattern)
        elif args.command == "info":
            _info(args.name)
        elif args.command == "summary":
            kcnn.summary(args.name, input_shape=args.input_shape)
    except kcnn.KcnnError as error:
        print(f"kcnn: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
