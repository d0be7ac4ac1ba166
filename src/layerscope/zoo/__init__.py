"""Small, readable reference networks, built from a spec such as ``mlp:depth=8,width=64``.

A spec is a name, optionally followed by ``:key=value,key=value``. Each key is a field of that
network's config dataclass and each value is converted to the field's type: whole numbers,
decimals, ``true``/``false``, words, and lists of whole numbers written ``32x64`` or ``32-64``.
Keyword overrides passed to :func:`build` win over the spec (lists may be given as lists).

Most networks take ``width`` and ``depth``; where layers differ in size (the CNN's channels,
the ResNet's stages, the autoencoder's hidden layers) a list option such as ``channels=16x32``
gives each size and so sets width and depth.

Every network has ``.config`` (its dataclass), ``.input_shape`` (per item), ``.task``
("classification", "regression", "causal-lm", "autoencoder" or "gan") and
``.example_input(batch_size=2)``. Classifiers return logits: train them with cross-entropy and
read probabilities with ``.predict_proba(x)``.

Example:
    >>> from layerscope import zoo
    >>> net = zoo.build("mlp:depth=3,width=32,residual=true")
    >>> net.config.depth, net.config.residual, net.input_shape, net.task
    (3, True, (64,), 'classification')
    >>> net(net.example_input(batch_size=5)).shape
    torch.Size([5, 10])
    >>> zoo.build("cnn:width=8,depth=3").config.channels
    [8, 16, 32]
    >>> zoo.build("cnn", channels="8x8").config.depth
    2
"""

from __future__ import annotations

import dataclasses
import importlib
import typing

from torch import nn

from layerscope.errors import LayerscopeError


@dataclasses.dataclass(frozen=True)
class _Entry:
    module: str            # the file under layerscope.zoo
    model: str             # the nn.Module class in it
    config: str            # its config dataclass
    description: str
    defaults: dict = dataclasses.field(default_factory=dict)  # fields this name presets


_REGISTRY = {
    "mlp": _Entry("mlp", "MLP", "MLPConfig",
                  "feed-forward network: flattened input, hidden layers, softmax head (8x8 digits)"),
    "cnn": _Entry("cnn", "CNN", "CNNConfig",
                  "convolution, batch norm, pooling and dropout blocks, then a classifier (MNIST)"),
    "cnn-dw": _Entry("cnn", "CNN", "CNNConfig",
                     "the CNN with depthwise-separable convolutions (MNIST)",
                     {"separable": True}),
    "lstm": _Entry("rnn", "RNN", "RNNConfig",
                   "stacked LSTM over a sequence; predicts the next value (univariate series)",
                   {"cell": "lstm"}),
    "gru": _Entry("rnn", "RNN", "RNNConfig",
                  "stacked GRU over a sequence; predicts the next value (univariate series)",
                  {"cell": "gru"}),
    "transformer": _Entry("transformer", "TransformerClassifier", "TransformerConfig",
                          "transformer encoder over tokens with a mean-pooled classifier head"),
    "gpt": _Entry("transformer", "GPT", "GPTConfig",
                  "small decoder-only language model over characters or bytes"),
    "resnet": _Entry("resnet", "ResNet", "ResNetConfig",
                     "residual network: stages of blocks with skip connections (MNIST)"),
    "autoencoder": _Entry("autoencoder", "Autoencoder", "AutoencoderConfig",
                          "encoder, bottleneck, decoder; reconstruction error scores anomalies"),
    "gan": _Entry("gan", "GAN", "GANConfig",
                  "generator and discriminator MLPs for 8x8 digits"),
}


def names() -> dict[str, str]:
    """Every zoo network's name and a one-line description.

    Example:
        >>> from layerscope import zoo
        >>> "gpt" in zoo.names() and "cnn-dw" in zoo.names()
        True
    """
    return {name: entry.description for name, entry in _REGISTRY.items()}


def options(name: str) -> list:
    """Each option of ``name``: type, default and meaning (see :mod:`layerscope.zoo.describe`).

    Example:
        >>> from layerscope import zoo
        >>> [o.name for o in zoo.options("gpt")][:4]
        ['vocab_size', 'seq_len', 'width', 'depth']
    """
    from .describe import options as _options

    return _options(name)


def config_class(name: str) -> type:
    """The config dataclass of the zoo network ``name``."""
    entry = _entry(name)
    return getattr(importlib.import_module(f"layerscope.zoo.{entry.module}"), entry.config)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:key=value,..."`` into the name and the raw (string) options.

    Example:
        >>> parse_spec("mlp:depth=8, width=64")
        ('mlp', {'depth': '8', 'width': '64'})
    """
    if not isinstance(spec, str) or not spec.strip():
        raise LayerscopeError(f"a zoo spec is a name such as 'mlp' or 'mlp:depth=2'; got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise LayerscopeError(
                f"zoo spec {spec!r}: {part!r} is not key=value; write e.g. '{name.strip()}:depth=2'")
        if key in options:
            raise LayerscopeError(f"zoo spec {spec!r} sets {key!r} twice; give it once")
        options[key] = value
    return name.strip(), options


def build_config(spec: str, **overrides):
    """The config dataclass a spec describes (with ``overrides`` applied), validated."""
    name, raw = parse_spec(spec)
    cls = config_class(name)
    types = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    values = dict(_REGISTRY[name].defaults)
    for source in (raw, overrides):
        for key, value in source.items():
            if key not in types:
                raise LayerscopeError(
                    f"{key!r} is not an option of zoo model {name!r}; valid keys: {', '.join(valid)}")
            values[key] = _convert(value, types[key], key, name, valid)
    config = cls(**values)
    for key, value in values.items():  # a list option (channels=...) sets width and depth itself
        if getattr(config, key) != value:
            implied = ", ".join(f"{k}={_show(getattr(config, k))}" for k in values
                                if getattr(config, k) != values[k])
            raise LayerscopeError(
                f"zoo spec {spec!r}: the options contradict each other (they imply {implied}); "
                f"give either the list or width/depth")
    return config


def build(spec: str, **overrides) -> nn.Module:
    """A freshly initialised zoo network (training mode, CPU) from its spec.

    ``torch.manual_seed`` before the call makes the weights reproducible.

    Example:
        >>> from layerscope import zoo
        >>> zoo.build("gpt:depth=1,width=32,heads=2").example_input().shape
        torch.Size([2, 64])
    """
    name, _ = parse_spec(spec)
    entry = _entry(name)
    config = build_config(spec, **overrides)
    model_cls = getattr(importlib.import_module(f"layerscope.zoo.{entry.module}"), entry.model)
    return model_cls(config)


# -- helpers ---------------------------------------------------------------------------------------
def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise LayerscopeError(
            f"unknown zoo model {name!r}; known ones: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _convert(value, kind, key: str, name: str, valid: list[str]):
    """``value`` (a spec string or a Python value) as the field type ``kind``."""
    def bad(expected: str) -> LayerscopeError:
        return LayerscopeError(
            f"{key}={value!r} for zoo model {name!r} must be {expected}; valid keys: {', '.join(valid)}")

    if typing.get_origin(kind) in (list, tuple):
        if isinstance(value, str):
            parts = value.replace("-", "x").lower().split("x")
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            parts = [value]
        try:
            return [_whole(p) for p in parts]
        except ValueError:
            raise bad("whole numbers joined by 'x' or '-', e.g. 32x64") from None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError
        if kind is int:
            return _whole(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value.strip()
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "a whole number", float: "a number",
                    str: "a word"}[kind]
        raise bad(expected) from None
    return value


def _show(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)


def _whole(value) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError(value)


__all__ = ["build", "build_config", "config_class", "names", "options", "parse_spec"]
