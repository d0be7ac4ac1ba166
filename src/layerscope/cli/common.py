"""Options and helpers shared by the commands: the MODEL argument, input shape, JSON output.

Commands declare their parameters with the ``Annotated`` aliases below so every command spells
an option the same way, then call :func:`model_from_cli` and :func:`print_json`.

Example:
    >>> from layerscope.cli.common import parse_input_shape, parse_layers
    >>> parse_input_shape("1,28,28"), parse_layers("all"), parse_layers("0,3,5")
    ((1, 28, 28), None, '0,3,5')
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from pathlib import Path
import functools
import inspect
from contextvars import ContextVar
from typing import Annotated, Any, Optional

import typer

from layerscope.outputs import FIGURE_SUFFIXES

MODEL_HELP = (
    "The model: a built-in name (minilm, smollm2, efficientnet-lite0, or a zoo spec such as cnn "
    "or mlp:depth=8,width=64; see `layerscope models`), a local Hugging Face folder, a hub id "
    "org/name (needs a network), a factory pkg.module:function or path/file.py:function, or a "
    "layerscope checkpoint folder."
)

ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP, metavar="MODEL", show_default=False)]
InputShapeOpt = Annotated[
    Optional[str],
    typer.Option("--input-shape", help="Per-item input shape without the batch dimension, "
                 "e.g. 1,28,28 (for models that take tensors).", show_default=False),
]
BlocksOpt = Annotated[
    Optional[str],
    typer.Option("--blocks", help="Module path of the block list when layerscope cannot find "
                 "it, e.g. encoder.layer.", show_default=False),
]
StackOpt = Annotated[
    Optional[str],
    typer.Option("--stack", help="The stack of blocks to use in a model with several (e.g. "
                 "vision_tower, language_model, encoder+decoder); `layerscope summary` lists them.",
                 show_default=False),
]
RoleOpt = Annotated[
    Optional[list[str]],
    typer.Option("--role", help="Name a part layerscope cannot find, ROLE=PATH: final_norm=model.norm "
                 "(or final_norm=none), head=lm_head. Repeatable.", show_default=False),
]
_VIEW: ContextVar = ContextVar("layerscope_view", default={})


def _with_options(fn, extra: dict, values: ContextVar, after: str | None = None):
    """``fn`` with the keyword options ``extra`` (name -> annotation) added after its parameter
    ``after`` (at the end when None); while ``fn`` runs, their values are a dict in ``values``."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # string annotations -> objects

    @functools.wraps(fn)
    def command(*args, **kwargs):
        token = values.set({name: kwargs.pop(name, None) for name in extra})
        try:
            return fn(*args, **kwargs)
        finally:
            values.reset(token)

    params = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
              for p in sig.parameters.values()]
    at = [p.name for p in params].index(after) + 1 if after else len(params)
    params[at:at] = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=opt) for name, opt in extra.items()]
    command.__signature__ = sig.replace(parameters=params)
    command.__annotations__ = {**hints, **extra}
    return command


def with_stack_option(fn):
    """``fn`` (a command taking ``--blocks``) with ``--stack`` and ``--role`` options beside it;
    the values reach :func:`model_from_cli`, which keeps them in ``meta`` for :class:`Layers`."""
    sig = inspect.signature(fn)
    if "blocks" not in sig.parameters or "stack" in sig.parameters:
        return fn
    return _with_options(fn, {"stack": StackOpt, "role": RoleOpt}, _VIEW, after="blocks")


DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", help="Run the model on cpu, cuda, cuda:N or auto (a GPU when there "
                 "is one); default: where it loads (the CPU).", show_default=False),
]
DeviceMapOpt = Annotated[
    Optional[str],
    typer.Option("--device-map", help="Spread a Hugging Face model over devices with accelerate: "
                 "auto (GPUs, then CPU, then disk) or a JSON file {module path: device}.",
                 show_default=False),
]
_PLACEMENT: ContextVar = ContextVar("layerscope_placement", default={})


def placement_given() -> bool:
    """Whether --device, --device-map or --dtype was given to the running command."""
    return any(v is not None for v in _PLACEMENT.get().values())


def with_placement_options(fn):
    """``fn`` (a command taking MODEL) with ``--device``, ``--device-map`` and, unless it has its
    own ``--dtype``, ``--dtype``; the values reach :func:`model_from_cli`."""
    sig = inspect.signature(fn)
    if "model" not in sig.parameters or "device" in sig.parameters:
        return fn
    hints = typing.get_type_hints(fn, include_extras=True)
    if not any(type(m).__name__ == "ArgumentInfo" for m in getattr(hints["model"], "__metadata__", ())):
        return fn   # a --model option (studies) picks models of its own
    extra = {"device": DeviceOpt, "device_map": DeviceMapOpt}
    if "dtype" not in sig.parameters:
        extra["model_dtype"] = DtypeOpt
    return _with_options(fn, extra, _PLACEMENT)


TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow a Hugging Face model to run its own Python "
                 "code (only for sources you trust)."),
]
AllowMissingWeightsOpt = Annotated[
    bool,
    typer.Option("--allow-missing-weights", help="Load a model even when some of its weights are "
                 "missing from, or unexpected in, its files (those layers keep random weights)."),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Write to an output that layerscope did not write (a folder "
                 "with other files, a file of yours); files of the same name are replaced."),
]
LayersOpt = Annotated[
    Optional[str],
    typer.Option("--layers", help="Which layers: all (default), 0,3,5, 2-4, -1, or names.",
                 show_default=False),
]
GranularityOpt = Annotated[
    str,
    typer.Option("--granularity", "-g", help="blocks, sublayers or modules."),
]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option("--dtype", help="Load the model in float32, float16 or bfloat16.",
                 show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")]
DataArg = Annotated[str, typer.Argument(
    help="A built-in dataset name (e.g. sentences, digits; see `layerscope datasets`) or a file: "
         ".txt (one item per line), .csv/.jsonl (text and label columns), an image folder, "
         ".npy/.safetensors.", metavar="DATA", show_default=False)]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", help="Longest text in tokens.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Use only N items of DATA.",
                                                 show_default=False)]


def model_from_cli(ref: str, blocks: str | None = None, input_shape: str | tuple | None = None,
                   trust_remote_code: bool = False, dtype: str | None = None,
                   allow_missing_weights: bool = False, stack: str | None = None):
    """Load MODEL as given on the command line; ``--blocks`` is kept in ``meta["blocks"]``,
    ``--stack`` in ``meta["stack"]``.

    Example:
        >>> model = model_from_cli("minilm", blocks="encoder.layer")
        >>> model.family, model.meta["blocks"]
        ('bert', 'encoder.layer')
    """
    from layerscope.models import load_model

    place, view = _PLACEMENT.get(), _VIEW.get()
    model = load_model(ref, input_shape=input_shape, trust_remote_code=trust_remote_code,
                       dtype=dtype or place.get("model_dtype"), allow_missing_weights=allow_missing_weights,
                       device=place.get("device"), device_map=place.get("device_map"))
    if blocks:
        model.meta["blocks"] = blocks
    stack = stack or view.get("stack")
    if stack:
        model.meta["stack"] = stack
    if view.get("role"):
        model.meta["roles"] = parse_roles(view["role"])
    return model


def parse_roles(items) -> dict[str, str]:
    """``["head=lm_head", "final_norm=none"]`` -> ``{"head": "lm_head", "final_norm": "none"}``.

    Example:
        >>> parse_roles(["head=lm_head"])
        {'head': 'lm_head'}
    """
    from layerscope.errors import LayerscopeError
    from layerscope.layouts import NAMED_ROLES

    out = {}
    for item in items:
        name, sep, path = str(item).partition("=")
        if not sep or name.strip() not in NAMED_ROLES or not path.strip():
            raise LayerscopeError(f"--role {item!r}: write ROLE=PATH with ROLE one of "
                                  f"{', '.join(NAMED_ROLES)}, e.g. --role head=lm_head")
        out[name.strip()] = path.strip()
    return out


def out_file(path, force: bool = False, suffixes: tuple = ()):
    """An output file option (``--plot``, ``--lens-out`` ...) checked before any work: ``None``
    passes through; see :func:`layerscope.outputs.check_out_file`.

    Example:
        >>> out_file(None) is None
        True
    """
    if path is None:
        return None
    from layerscope.outputs import check_out_file

    return check_out_file(path, force=force, suffixes=suffixes)


def save_figure_to(result, path) -> None:
    """Write ``result.plot()`` to ``path`` (checked earlier with :func:`out_file`), if given."""
    if path is None:
        return
    import matplotlib.pyplot as plt

    from layerscope.outputs import save_figure

    fig = result.plot()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape`` as a tuple (see :func:`layerscope.model_types.parse_input_shape`);
    imported on use so that starting the command line does not import torch."""
    from layerscope.model_types import parse_input_shape as parse

    return parse(text)


def parse_layers(spec: str | None) -> str | None:
    """``--layers`` as ``Layers.select`` takes it: ``None`` for all layers, else the spec text."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    return spec.strip()


def to_jsonable(value: Any) -> Any:
    """Plain JSON data from results: dataclasses, tensors, arrays, paths; NaN/inf -> null."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON (and nothing else) on stdout."""
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2) + "\n")
    sys.stdout.flush()


__all__ = ["MODEL_HELP", "ModelArg", "InputShapeOpt", "BlocksOpt", "StackOpt", "with_stack_option",
           "TrustRemoteCodeOpt",
           "LayersOpt", "GranularityOpt", "DtypeOpt", "JsonOpt", "DataArg", "BatchSizeOpt",
           "MaxLengthOpt", "LimitOpt", "AllowMissingWeightsOpt", "ForceOpt", "model_from_cli",
           "out_file", "save_figure_to", "FIGURE_SUFFIXES",
           "parse_input_shape", "parse_layers", "to_jsonable", "print_json"]
