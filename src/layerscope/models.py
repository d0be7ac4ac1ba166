"""Model references -> a loaded model that knows how to turn data into a batch.

``load_model`` accepts every kind of reference layerscope understands and returns a
:class:`LoadedModel`: the ``nn.Module`` plus what is needed to feed it (tokenizer, per-item input
shape, preprocessing) and to describe it (family, modality, task).

References, tried in this order:

* an ``nn.Module`` object (Python API): wrapped as is, never moved or switched to eval;
* a built-in name: ``minilm``, ``smollm2``, ``efficientnet-lite0`` (see :mod:`.builtin_models`);
* a local folder: a layerscope checkpoint (``layerscope.json``), a quantized model
  (``layerscope-quantized.json``) or a Hugging Face folder (``config.json``, safetensors weights);
* a factory ``pkg.module:function`` or ``path/to/file.py:function`` returning a module, a
  ``(module, example_input)`` tuple or ``{"module": ..., "example_input": ...}``;
* a zoo spec such as ``cnn`` or ``mlp:depth=8,width=64`` (``layerscope.zoo``);
* a Hugging Face hub id ``org/name`` (needs a network).

A load whose weights do not all fit the rebuilt model (missing or unexpected weights) is an
error unless ``allow_missing_weights=True``; nothing named inside a folder runs as code unless
``trust_remote_code=True``. The types live in :mod:`layerscope.model_types`; this module only
picks the loader.

Example:
    >>> import torch
    >>> from layerscope.models import load_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> model = load_model(net, input_shape=(4,))
    >>> model(model.example(batch_size=5)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from . import builtin_models as builtins
from .checkpoint import _HUB_ID, CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .errors import LayerscopeError
from .factories import load_factory, looks_like_factory
from .hf import load_hf
from .model_types import (
    Encoded,
    LoadedModel,
    _parse_shape,
    parse_input_shape,
    wrap_module,
)

_QUANTIZED_FILE = "layerscope-quantized.json"
_NOT_MODELS = {  # marker kind of a layerscope output folder that is no model -> what to do with it
    "early-exit": "it holds early-exit heads, not a model: load them with "
                  "layerscope.surgery.save.load_exit_heads(FOLDER) beside the base model",
    "report": "it holds a report, not a model: open its index.html",
    "store": "it holds recorded activations, not a model: open it with layerscope.store.Store(FOLDER)",
    "train-run": "it holds a training run: load its checkpoint FOLDER/best or FOLDER/last",
}


def load_model(
    ref: str | nn.Module | LoadedModel,
    *,
    input_shape=None,
    trust_remote_code: bool = False,
    dtype=None,
    allow_missing_weights: bool = False,
    device=None,
    device_map=None,
) -> LoadedModel:
    """Load a model from any reference layerscope accepts (see the module docstring).

    ``input_shape`` is the per-item shape (no batch dimension) for image/tensor models; ``dtype``
    (``torch.float16`` or ``"bfloat16"``...) applies to models layerscope loads itself.
    ``trust_remote_code`` lets a Hugging Face model or a checkpoint run code named in its folder;
    ``allow_missing_weights`` accepts a load that leaves weights missing or unexpected.
    ``device`` ("cpu", "cuda", "cuda:1", "auto") or ``device_map`` ("auto", a dict or JSON file;
    accelerate) places a model layerscope loads (see :mod:`layerscope.placement`).

    Example:
        >>> from layerscope.models import load_model
        >>> load_model("no-such-model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        layerscope.errors.LayerscopeError: unknown model 'no-such-model'...
    """
    shape = _parse_shape(input_shape)
    torch_dtype = _parse_dtype(dtype)
    if isinstance(ref, (nn.Module, LoadedModel)) and (device is not None or device_map is not None):
        raise LayerscopeError("layerscope never moves a model you pass in; place it yourself "
                              "(model.to(device), or accelerate's dispatch_model), or pass a reference")
    if isinstance(ref, LoadedModel):
        return ref if shape is None else replace(ref, input_shape=shape)
    if isinstance(ref, nn.Module):
        if torch_dtype is not None:
            raise LayerscopeError(
                "dtype is not applied to your own module (layerscope never changes it); "
                "convert it yourself with module.to(dtype)"
            )
        return wrap_module(ref, ref=type(ref).__name__, input_shape=shape, family="module")
    if not isinstance(ref, str) or not ref.strip():
        raise LayerscopeError(
            f"a model reference must be a name, folder, factory or nn.Module; got {type(ref).__name__}"
        )
    ref = ref.strip()
    options = {"trust_remote_code": trust_remote_code, "allow_missing_weights": allow_missing_weights}
    loaded = _load_reference(ref, shape, torch_dtype, options)
    if device is not None or device_map is not None:
        from .placement import place

        placed = place(loaded.module, device=device, device_map=device_map, dtype=torch_dtype)
        if placed is not None:
            loaded.meta["device_map"] = placed
    if shape is not None and loaded.modality != "text":
        loaded.input_shape = shape
    return loaded


def _load_reference(ref, shape, dtype, options) -> LoadedModel:
    if ref.lower() in builtins.REAL_MODELS:
        return builtins.load_builtin(ref.lower(), dtype=dtype,
                                     allow_missing_weights=options["allow_missing_weights"])
    path = Path(ref).expanduser()
    if path.is_dir():
        return _load_folder(path, ref, dtype, options)
    if path.exists():
        raise LayerscopeError(
            f"{ref!r} is a file, not a model; pass a folder (Hugging Face or layerscope checkpoint) "
            f"or a factory 'file.py:function'"
        )
    zoo_names = builtins.zoo_names()
    if ref.split(":", 1)[0] in zoo_names:
        return _cast(builtins.load_zoo(ref), dtype)
    if looks_like_factory(ref):
        return _cast(load_factory(ref, input_shape=shape), dtype)
    if _HUB_ID.match(ref):
        return load_hf(ref, ref=ref, dtype=dtype, hub=True, **options)
    known = ", ".join(list(builtins.REAL_MODELS) + list(zoo_names))
    raise LayerscopeError(
        f"unknown model {ref!r}; use a built-in name ({known}), a local folder, "
        f"a factory 'pkg.module:function' or 'file.py:function', or a hub id 'org/name'"
    )


def _load_folder(path: Path, ref: str, dtype, options) -> LoadedModel:
    from .outputs import read_marker

    marker = read_marker(path)
    kind = marker.get("kind") if marker else None
    if kind in _NOT_MODELS:
        raise LayerscopeError(f"folder {ref!r} is no model: {_NOT_MODELS[kind].replace('FOLDER', ref)}")
    if (path / _QUANTIZED_FILE).is_file():
        if dtype is not None:
            raise LayerscopeError(f"{ref!r} is an int8-quantized model; it loads as saved, "
                                  f"drop --dtype")
        from .surgery.quantize import load_quantized

        loaded = load_quantized(path, allow_missing_weights=options["allow_missing_weights"])
        loaded.ref = ref
        return loaded
    if (path / CHECKPOINT_FILE).is_file():
        return _cast(load_checkpoint(path, ref=ref, load_ref=load_model, **options), dtype)
    if (path / "config.json").is_file():
        return load_hf(str(path), ref=ref, dtype=dtype, **options)
    if (path / "exit_heads.json").is_file():
        raise LayerscopeError(f"folder {ref!r} is no model: "
                              f"{_NOT_MODELS['early-exit'].replace('FOLDER', ref)}")
    raise LayerscopeError(
        f"folder {ref!r} holds neither a Hugging Face model (config.json) nor a layerscope "
        f"checkpoint ({CHECKPOINT_FILE}); pass a model folder"
    )


def _cast(loaded: LoadedModel, dtype) -> LoadedModel:
    if dtype is not None:
        loaded.module.to(dtype)
    return loaded


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _parse_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise LayerscopeError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return _DTYPES[key]


def builtin_models() -> dict[str, str]:
    """Built-in model names -> one-line description (the real models, then the zoo).

    Example:
        >>> from layerscope.models import builtin_models
        >>> "minilm" in builtin_models()
        True
    """
    names = dict(builtins.REAL_MODELS)
    names.update({name: f"zoo: {text}" for name, text in builtins.zoo_names().items()})
    return names


__all__ = ["Encoded", "LoadedModel", "load_model", "builtin_models", "save_checkpoint",
           "wrap_module", "parse_input_shape", "looks_like_factory"]
