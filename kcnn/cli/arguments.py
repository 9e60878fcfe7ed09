"""`kcnn train` and `kcnn finetune`'s flags, generated from the config dataclasses (kcnn/config.py).

A field's flag, type, choices, default and help are written once, beside the field; `--config FILE` (YAML, JSON,
or a run's own config.json) sets every default, and the flags given override it. Written here rather than with
jsonargparse or tyro: forty lines over argparse cover these flat dataclasses, and `kcnn --help` must not import
more than argparse and the configs (no Keras, no backend).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Sequence, TypeVar

from kcnn.config import RunConfig, read_config_file
from kcnn.recipes import Recipe

_HOW_IT_RUNS = ("distribute", "seed", "limit", "output_dir", "export", "resume", "overwrite")
_RECIPE_FIELDS = {field.name for field in dataclasses.fields(Recipe)}
_Config = TypeVar("_Config", bound=RunConfig)  # a TrainConfig or a FinetuneConfig


def add_config_arguments(parser: argparse.ArgumentParser, kind: type[RunConfig],
                         defaults: RunConfig | None = None) -> None:
    """One flag per field of `kind` (a RunConfig subclass), and `--config FILE`; `defaults`: a `kind` config whose
    values `--help` shows (by default the fields' own)."""
    parser.add_argument("--config", metavar="FILE",
                        help="a YAML or JSON file of settings, or a run's config.json (to repeat the run: pass a new "
                             "--output-dir): it sets the defaults below, the flags given override it")
    fields = dataclasses.fields(kind)  # what the run computes first, where and how it runs last
    for field in [f for f in fields if f.name not in _HOW_IT_RUNS] + [f for f in fields if f.name in _HOW_IT_RUNS]:
        meta = field.metadata
        if meta.get("cli") is False:
            continue
        flags = meta.get("flags") or ("--" + field.name.replace("_", "-"),)
        options = dict(dest=field.name, default=argparse.SUPPRESS, help=_help(kind, field, defaults))
        value_type = _value_type(field.type)
        if value_type is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif "choices" in meta:
            options["choices"] = meta["choices"]
        else:
            options["type"] = _parser_of(meta["parse"]) if "parse" in meta else value_type
        if "metavar" in meta:
            options["metavar"] = meta["metavar"]
        parser.add_argument(*flags, **options)


def config_from_args(kind: type[_Config], args: argparse.Namespace, defaults: _Config | None = None) -> _Config:
    """The `kind` config the command line asks for: `defaults` (a `kind` config), the config file's values, then
    the flags given."""
    values = dataclasses.asdict(defaults) if defaults is not None else {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config, kind))
    values.update({field.name: getattr(args, field.name) for field in dataclasses.fields(kind)
                   if hasattr(args, field.name)})
    return kind(**values)


def parse_config(defaults: _Config, argv: Sequence[str] | None, *, prog: str | None = None,
                 description: str | None = None) -> _Config:
    """A script's config: `defaults` (a config object, the script's own), then `--config FILE`, then the flags in
    `argv`; `--help` lists every flag with the script's defaults."""
    kind = type(defaults)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser, kind, defaults)
    return config_from_args(kind, parser.parse_args(argv), defaults)


def _help(kind, field, defaults=None):
    default = getattr(defaults, field.name) if defaults is not None else field.default
    if default is None:
        shown = "the recipe's" if kind.__name__ == "TrainConfig" and field.name in _RECIPE_FIELDS else None
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    else:
        shown = default
    text = field.metadata.get("help", "")
    return f"{text} (default: {shown})" if shown is not None else text


def _value_type(annotation):
    """int, float, str or bool of a field's annotation (Optional[int] is int; Union[bool, str] is a switch)."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if bool in arguments:
        return bool
    return arguments[0] if arguments[0] in (int, float, str) else str


def _parser_of(parse):
    def parsed(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parsed
