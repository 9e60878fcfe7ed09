"""The model registry: `register_model`, `build`, `list_models`.

Each architecture family registers its variants with `@register_model(...)`
(the timm habit: the function name is the registry key). The decorator wraps
the family function so that every variant, called through `kcnn.build` or
directly, shares one keyword-only signature and one set of argument checks,
all of which run before any layer or weight is made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import functools
import inspect
import os
import re
from typing import Any, Callable, Optional, Union

from kcnn import weights as named_weights
from kcnn.backends.lazy import keras  # imported when a model is built: the registry itself is plain data
from kcnn.errors import InvalidArgumentError, KcnnError, UnknownModelError

# How a reference parameter count was counted.
KERAS_COUNT = "keras"  # every weight, batch-norm moving statistics included
TORCH_COUNT = "torch"  # trainable parameters only, as torchvision and timm count

_POOLING = (None, "avg", "max")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one architecture.

    Attributes:
        name: registry key, e.g. `"resnet50"`.
        family: module the builder lives in, e.g. `"resnet"`.
        default_input_shape: `(height, width, channels)` the reference count is for.
        default_num_classes: classes of the reference head (1000 for ImageNet).
        reference_params: the published parameter count at the default input.
        params_counted: `"keras"` (all weights, as `model.count_params()`) or
            `"torch"` (trainable only: torchvision does not count batch-norm
            running statistics, which are buffers, not parameters).
        reference_source: where the reference count comes from.
        min_input_size: smallest height/width for which every downsampling step
            still sees real pixels: the hard limit of networks with "valid"
            convolutions and pooling (AlexNet, VGG), the total stride of those
            with "same" padding (ResNet: 32), which would otherwise shrink any
            input to 1x1 of padding.
        test_input_shape: a small input the test suite builds it at.
        description: one line for `kcnn list`.
        training: its `TrainingHooks` (training-only outputs, data-dependent initialisation), or None.
        checkpoint: the `CheckpointLayout` of the PyTorch state dicts it reads (weights="file.pth"), or None.
        recipes: {dataset: `kcnn.recipes.Recipe`} it trains with from scratch; a dataset it names none for
            gets the dataset's plain recipe (kcnn.recipes.recipe_for).
    """

    name: str
    family: str
    default_input_shape: tuple
    default_num_classes: int
    reference_params: int
    params_counted: str
    reference_source: str
    min_input_size: int
    test_input_shape: tuple
    description: str
    builder: Callable = dataclasses.field(repr=False, compare=False)
    training: "TrainingHooks" = dataclasses.field(default=None, repr=False, compare=False)
    checkpoint: named_weights.CheckpointLayout = dataclasses.field(default=None, repr=False, compare=False)
    recipes: dict = dataclasses.field(default=None, repr=False, compare=False)

    def __repr__(self):
        return (f"ModelInfo({self.name!r}, input_shape={self.default_input_shape}, "
                f"params={self.reference_params:,} ({self.params_counted} count))")

    def count_params(self, model: "keras.Model") -> int:
        """The count of `model` that is comparable with `reference_params`."""
        if self.params_counted == TORCH_COUNT:
            return sum(_size(w) for w in model.trainable_weights)
        return sum(_size(w) for w in model.weights)


def _size(variable):
    size = 1
    for dim in variable.shape:
        size *= int(dim)
    return size


_REGISTRY: dict = {}


@dataclasses.dataclass(frozen=True)
class TrainingHooks:
    """What training from scratch needs to know of one architecture, declared beside its builder (timm's
    habit), so that the workflow names no architecture.

    Attributes:
        training_outputs: `image_shape -> {output name: loss weight}` when the model trains with outputs
            it does not predict with (built with `training_kwargs`; the first name is the prediction), or
            None to train on the one output at that input size.
        training_kwargs: builder arguments of that training model.
        init_from_data: `(model, images)`, layers set from the training images (normalised as the model
            sees them) instead of learned, before training.
    """

    training_outputs: Callable = None
    training_kwargs: dict = None
    init_from_data: Callable = None

    def outputs_for(self, image_shape: tuple[int, int, int]) -> dict[str, float] | None:
        return self.training_outputs(image_shape) if self.training_outputs else None


def register_model(
    *,
    input_shape: tuple,
    params: int,
    source: str,
    min_size: int,
    counted: str = KERAS_COUNT,
    num_classes: int = 1000,
    test_input_shape: Optional[tuple] = None,
    training: Optional["TrainingHooks"] = None,
    checkpoint: Optional[named_weights.CheckpointLayout] = None,
    pretrained: tuple = (),
    recipes: Optional[dict] = None,
) -> Callable[[Callable], Callable]:
    """Register a builder `fn(*, num_classes, input_shape, include_top, pooling,
    classifier_activation, name, **family_kwargs)` under its function name.

    `input_shape` is `(height, width, channels)`; the builder receives it in
    the active image data format, already checked. What else the model file
    knows of it is declared here too: `training` (`TrainingHooks`),
    `checkpoint` (the `kcnn.weights.CheckpointLayout` of the PyTorch
    checkpoints it reads), `pretrained` (its `kcnn.weights.WeightSource`s) and `recipes` ({dataset:
    `kcnn.recipes.Recipe`} it trains with from scratch).
    """

    def decorator(fn):
        model_name = fn.__name__
        extra_kwargs = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY
            and p.name not in _COMMON_ARGS
        ]
        info = None  # bound below, after `builder` exists

        @functools.wraps(fn)
        def builder(
            *,
            num_classes=None,
            input_shape=None,
            weights=None,
            include_top=True,
            pooling=None,
            classifier_activation=None,
            name=None,
            include_preprocessing=True,
            **kwargs,
        ):
            unknown = sorted(set(kwargs) - set(extra_kwargs))
            if unknown:
                valid = ", ".join(_COMMON_ARGS + extra_kwargs)
                raise InvalidArgumentError(
                    f"{model_name} does not take the argument(s) {', '.join(unknown)}; "
                    f"it takes: {valid}. Received: {unknown[0]}={kwargs[unknown[0]]!r}"
                )
            num_classes = _check_num_classes(info, num_classes)
            input_shape = _check_input_shape(info, input_shape)
            _check_head(include_top, pooling, classifier_activation)
            _check_name_and_dropout(name, kwargs)
            weights = _check_weights(weights, model_name)
            from kcnn.backends.initializers import initialize_the_rest, initializers_deferred

            arguments = dict(num_classes=num_classes, input_shape=input_shape, include_top=include_top,
                             pooling=pooling, classifier_activation=classifier_activation, name=name or model_name,
                             **kwargs)
            if not isinstance(weights, str) and weights is not None:  # a named WeightSource
                return _build_pretrained(fn, weights, arguments, include_preprocessing)
            try:
                # (JAX) a weights file replaces every weight: their random draws are not made
                with initializers_deferred() if weights is not None else contextlib.nullcontext():
                    model = fn(**arguments)
            except (ValueError, TypeError, KeyError) as error:
                if not kwargs or isinstance(error, KcnnError):
                    raise
                raise _family_option_error(model_name, kwargs, error) from None
            if weights is not None:
                _load_weights_file(model, weights, model_name)
                initialize_the_rest(model)
            return model

        info = ModelInfo(
            name=model_name,
            family=fn.__module__.rsplit(".", 1)[-1],
            default_input_shape=tuple(input_shape),
            default_num_classes=num_classes,
            reference_params=params,
            params_counted=counted,
            reference_source=source,
            min_input_size=min_size,
            test_input_shape=tuple(test_input_shape or input_shape),
            description=(inspect.getdoc(fn) or "").split("\n")[0],
            builder=builder,
            training=training,
            checkpoint=checkpoint,
            recipes=dict(recipes or {}),
        )
        if model_name in _REGISTRY:
            raise RuntimeError(f"Model {model_name!r} is registered twice.")
        _REGISTRY[model_name] = info
        for weight_source in pretrained:
            if weight_source.arch != model_name:
                raise RuntimeError(f"{model_name} declares weights for {weight_source.arch}.")
            named_weights.register_source(weight_source)
        return builder

    return decorator


_COMMON_ARGS = [
    "num_classes",
    "input_shape",
    "weights",
    "include_top",
    "pooling",
    "classifier_activation",
    "name",
    "include_preprocessing",
]


def get_model_info(name: str) -> ModelInfo:
    """The `ModelInfo` of a registered name; unknown names raise with close matches."""
    if not isinstance(name, str):
        raise UnknownModelError(
            f"A model name must be a string such as 'resnet50'. Received: name={name!r}"
        )
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name.lower(), _REGISTRY, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} See kcnn.list_models() for the "
        f"{len(_REGISTRY)} names. Received: name={name!r}"
    )


class _ModelDefault:
    """`build`'s `pooling` default: None (the feature map, as keras.applications) for kcnn's architectures, "avg" for
    keras-hub presets, whose own default it is; distinct from an explicit None, which asks for the feature map."""

    def __repr__(self):
        return "DEFAULT"


DEFAULT: Any = _ModelDefault()


def build(
    model_name: str,
    /,
    *,
    num_classes: Optional[int] = None,
    input_shape: Optional[tuple] = None,
    weights: Union[str, os.PathLike, None] = None,
    include_top: bool = True,
    pooling: Optional[str] = DEFAULT,
    classifier_activation: Union[str, Callable, None] = None,
    name: Optional[str] = None,
    include_preprocessing: bool = True,
    **family_options: Any,
) -> "keras.Model":
    """Build a registered architecture as a functional `keras.Model`.

    Every architecture takes the same keyword-only arguments:

    Args:
        model_name: registry key, see `kcnn.list_models()` (positional), or
            `"hub:"` followed by a keras-hub preset: a name such as
            `"hub:resnet_50_imagenet"` (downloaded from Kaggle once, then
            cached) or the path of a local preset folder (`"hub:./my_preset"`).
            Presets need `pip install "kcnn[hub]"` and take `num_classes`,
            `input_shape`, `include_top`, `pooling` (default `"avg"`, also
            before the head), `classifier_activation`, `include_preprocessing`
            and `name`; see `kcnn.models.hub.build_from_preset`.
        num_classes: classes of the head; `None` means the model's own default
            (1000 for ImageNet architectures, 10 for the MNIST/CIFAR ones).
        input_shape: in the active image data format, `(H, W, C)` for
            `channels_last`; `None` means the architecture's default.
        weights: `None` (random initialisation), a named source such as
            `"imagenet"` (see `kcnn.list_models(pretrained=True)` and
            `kcnn.weights.SOURCES`), or the path of a `.weights.h5` file saved
            from the same architecture. With named weights, another
            `num_classes` gives the pretrained backbone with a fresh head, and
            one input channel sums the first layer's colour kernels.
        include_top: whether to include the classification head.
        pooling: `None`, `"avg"` or `"max"`: global pooling of the features
            when `include_top=False`. The default is `None` (the feature map)
            for kcnn's architectures and `"avg"` for `hub:` presets.
        classifier_activation: activation of the last layer. The default,
            `None`, returns **logits** (as torchvision, timm and keras-hub
            do); pass `"softmax"` for probabilities.
        name: name of the Keras model; defaults to the registry key.
        include_preprocessing: with named weights, put their preprocessing
            (mean and std) inside the model, so that it takes raw 0-255 RGB
            images, as will every export of it. Default True.
        **family_options: family-specific options, e.g. `aux_logits=True` for
            `googlenet` or `dropout=0.5`; `kcnn.get_model_info(name).builder`
            documents them.
    """
    from kcnn.backends import torch_fast

    arguments = dict(num_classes=num_classes, input_shape=input_shape, include_top=include_top,
                     classifier_activation=classifier_activation, name=name,
                     include_preprocessing=include_preprocessing, **family_options)
    if pooling is not DEFAULT:
        arguments["pooling"] = pooling
    if isinstance(model_name, str) and ":" in model_name and model_name.split(":", 1)[0] in _PREFIXES:
        prefix, rest = model_name.split(":", 1)  # "hub:resnet_50_imagenet": kcnn.models.hub's presets
        if weights is not None:
            arguments["weights"] = weights  # refused there, with the reason
        return torch_fast.accelerate(_PREFIXES[prefix](rest, **arguments))
    return torch_fast.accelerate(get_model_info(model_name).builder(weights=weights, **arguments))


# "prefix:rest" names built by something the registry does not import: {"hub": kcnn.models.hub.build_from_preset}
_PREFIXES = {}


def register_prefix(prefix: str, builder: Callable) -> None:
    """`build("PREFIX:REST", **kwargs)` calls `builder(REST, **kwargs)` (kcnn.models.hub registers "hub")."""
    _PREFIXES[prefix] = builder


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[ModelInfo]:
    """`ModelInfo` of every registered model whose name matches the wildcard
    `pattern` (fnmatch: `"resnet*"`, `"*net*"`, `"vgg1?"`), sorted by name;
    `pretrained=True`: only those with named pretrained weights."""
    if not isinstance(pattern, str):
        raise InvalidArgumentError(
            f"pattern must be a wildcard string such as 'resnet*'. Received: pattern={pattern!r}"
        )
    having = set(named_weights.pretrained_archs()) if pretrained else set(_REGISTRY)
    return [info for name, info in sorted(_REGISTRY.items()) if fnmatch.fnmatchcase(name, pattern) and name in having]


# ---------------------------------------------------------------------------
# Argument checks: they all run before any layer is created.


def _check_num_classes(info, num_classes):
    if num_classes is None:
        return info.default_num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidArgumentError(
            f"num_classes must be a whole number of at least 1 for {info.name}. "
            f"Received: num_classes={num_classes!r}"
        )
    return num_classes


def to_data_format(shape_hwc: tuple) -> tuple:
    """`(H, W, C)` in the active image data format."""
    h, w, c = shape_hwc
    if keras.config.image_data_format() == "channels_first":
        return (c, h, w)
    return (h, w, c)


def _check_input_shape(info, input_shape):
    if input_shape is None:
        return to_data_format(info.default_input_shape)
    channels_first = keras.config.image_data_format() == "channels_first"
    layout = "(channels, height, width)" if channels_first else "(height, width, channels)"
    valid = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
    valid = valid and all(isinstance(d, int) and not isinstance(d, bool) for d in input_shape)
    if not valid or min(input_shape) < 1:
        raise InvalidArgumentError(
            f"input_shape must be three positive whole numbers {layout} for {info.name}, "
            f"e.g. {to_data_format(info.default_input_shape)}. Received: input_shape={input_shape!r}"
        )
    input_shape = tuple(input_shape)
    height, width = input_shape[1:] if channels_first else input_shape[:2]
    check_input_size(info, (height, width), hint=f"for its downsampling; use a larger input_shape or a model "
                     f"made for small images (e.g. lenet5, cifar_resnet20). Received: input_shape={input_shape}")
    return input_shape


def check_input_size(info: ModelInfo, image_shape: tuple, *, hint: str) -> None:
    """The one check of an input's height and width (image_shape[:2]) against the model's smallest;
    `hint` ends the sentence: why, and what to do."""
    if min(image_shape[:2]) < info.min_input_size:
        raise InvalidArgumentError(
            f"{info.name} needs inputs of at least {info.min_input_size}x{info.min_input_size} pixels {hint}")


def _check_head(include_top, pooling, classifier_activation):
    if not isinstance(include_top, bool):
        raise InvalidArgumentError(
            f"include_top must be True or False. Received: include_top={include_top!r}"
        )
    if pooling not in _POOLING:
        raise InvalidArgumentError(
            f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}"
        )
    if include_top and pooling is not None:
        raise InvalidArgumentError(
            "pooling only applies to the features of a model built with include_top=False; "
            f"drop it or pass include_top=False. Received: pooling={pooling!r}"
        )
    if classifier_activation is not None and not callable(classifier_activation):
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError):
            raise InvalidArgumentError(
                "classifier_activation must be None (logits), 'softmax', another Keras "
                f"activation name or a callable. Received: classifier_activation={classifier_activation!r}"
            ) from None


def _check_name_and_dropout(name, kwargs):
    if name is not None and (not isinstance(name, str) or "/" in name):
        raise InvalidArgumentError(f"name must be a string without '/' (Keras' rule). Received: name={name!r}")
    dropout = kwargs.get("dropout", 0.0)  # the one family option most architectures share
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise InvalidArgumentError(f"dropout must be a fraction in [0, 1). Received: dropout={dropout!r}")


def _family_option_error(model_name, options, error):
    """Keras refused a layer built from a family option (filters=(0, ...), alpha=-1, pool='min')."""
    received = ", ".join(f"{key}={value!r}" for key, value in options.items())
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
    reason = re.sub(r"\.\s+(\w)", lambda m: "; " + m.group(1).lower(), reason).rstrip(".")  # one sentence
    return InvalidArgumentError(
        f"{model_name} cannot be built with {received} ({type(error).__name__}: {reason}); "
        f"help(kcnn.get_model_info({model_name!r}).builder) lists the valid values. Received: {received}"
    )


def _check_weights(weights, model_name):
    """None, a file path (str), or the named `kcnn.weights.WeightSource`."""
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise InvalidArgumentError(
            f"weights must be None, a name such as 'imagenet', or the path of a weights file. "
            f"Received: weights={weights!r}"
        )
    if os.path.isfile(weights):
        if weights.endswith((".pth", ".pt", ".bin")):
            check_torch_checkpoint_arch(model_name)
        return weights
    if any(weights == name for _, name in named_weights.SOURCES) or not any(c in weights for c in "/\\."):
        return named_weights.get_source(model_name, weights)
    raise InvalidArgumentError(
        f"No weights file at {weights!r}; pass None, a name such as 'imagenet' (see "
        f"kcnn.list_models(pretrained=True)), or the path of an existing file. Received: weights={weights!r}"
    )


def _build_pretrained(fn, source, arguments, include_preprocessing):
    """Build with named pretrained weights: load them into a model built
    exactly as they were trained (their head, RGB, their input size), then
    copy them into the model asked for (fresh head for other classes, summed
    first-layer kernels for one channel) and add their preprocessing."""
    from kcnn.backends.initializers import initialize_the_rest, initializers_deferred
    from kcnn.weights import loading

    path = source.path()  # fetched and verified before anything is built
    size = source.input_size
    exact = dict(arguments, num_classes=source.num_classes, input_shape=to_data_format((size, size, 3)),
                 include_top=True, pooling=None)
    with initializers_deferred():  # (JAX) the file replaces every weight: their random draws are not made
        reference = fn(**exact)
    loading.load_exact(reference, source, path)
    initialize_the_rest(reference)
    if arguments == exact:
        model = reference
    else:
        with initializers_deferred():
            model = fn(**arguments)
        loading.transfer(reference, model, source)
        initialize_the_rest(model)  # a fresh head
    if include_preprocessing:
        channels = arguments["input_shape"][0 if keras.config.image_data_format() == "channels_first" else -1]
        model = loading.with_preprocessing(model, source, channels)
    return model


def torch_checkpoint_archs() -> list[str]:
    """Architectures whose PyTorch checkpoints kcnn converts (those that declare a CheckpointLayout)."""
    return sorted(name for name, info in _REGISTRY.items() if info.checkpoint)


def check_torch_checkpoint_arch(arch: str) -> None:
    """Raise (before anything is built) for architectures kcnn cannot convert PyTorch checkpoints into."""
    if get_model_info(arch).checkpoint is None:
        hint = (f" (torchvision's {arch} has another layout than kcnn's: build '{arch}_torchvision')"
                if f"{arch}_torchvision" in _REGISTRY else "")
        raise named_weights.WeightsError(
            f"kcnn converts PyTorch checkpoints for {', '.join(torch_checkpoint_archs())}; {arch} is not one of "
            f"them{hint}. Save its weights with Keras (.weights.h5) or use weights='imagenet' where it has them.")


def _load_weights_file(model, path, model_name):
    if path.endswith((".pth", ".pt", ".bin")):  # a PyTorch state dict, converted (never unpickled code)
        from kcnn.weights import loading

        loading.load_torch_checkpoint(model, get_model_info(model_name).checkpoint, path)
        return
    try:
        model.load_weights(path)
    except Exception as error:  # h5py, shape and layout errors all mean one thing here
        raise KcnnError(
            f"The weights file {path!r} does not fit {model_name} as built "
            f"(check the architecture, num_classes and include_top it was saved with): {error}"
        ) from None
