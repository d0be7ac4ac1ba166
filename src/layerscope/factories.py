"""Factories: ``pkg.module:function`` or ``path/to/file.py:function`` -> a loaded model.

The function is called with no arguments and returns an ``nn.Module``, a
``(module, example_input)`` tuple, or a dict with keys ``module`` and ``example_input``. The
example input (a batched tensor, a tuple of tensors, or a dict of keyword tensors) is what
layerscope feeds the model to trace shapes when no ``input_shape`` is given.

Example:
    >>> import pathlib, tempfile
    >>> from layerscope.factories import load_factory
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "net.py"
    >>> _ = file.write_text("import torch\\ndef make():\\n    return torch.nn.Linear(4, 2)\\n")
    >>> load_factory(f"{file}:make", input_shape=(4,)).module
    Linear(in_features=4, out_features=2, bias=True)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from torch import nn

from .errors import LayerscopeError
from .model_types import LoadedModel, wrap_module


def looks_like_factory(ref: str) -> bool:
    """Whether ``ref`` names code to run: ``pkg.module:function`` or ``file.py:function``.

    Example:
        >>> looks_like_factory("payload.py:make"), looks_like_factory("mlp:depth=2")
        (True, False)
    """
    if ":" not in ref:
        return False
    target, func = ref.rsplit(":", 1)
    if not func.isidentifier():
        return False
    return target.endswith(".py") or all(part.isidentifier() for part in target.split("."))


def load_factory(ref: str, *, input_shape=None) -> LoadedModel:
    """Call the factory named by ``ref`` and wrap what it returns (in eval mode)."""
    target, name = ref.rsplit(":", 1)
    namespace = _import_file(target, ref) if target.endswith(".py") else _import_module(target, ref)
    function = getattr(namespace, name, None)
    if not callable(function):
        raise LayerscopeError(
            f"factory {ref!r}: {target!r} has no function {name!r}; name a function that "
            f"returns an nn.Module"
        )
    try:
        made = function()
    except LayerscopeError:
        raise
    except SystemExit as exc:
        raise LayerscopeError(f"factory {ref!r} called sys.exit({exc.code!r}) instead of returning "
                              f"an nn.Module; fix the factory") from None
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise LayerscopeError(
            f"factory {ref!r} raised {type(exc).__name__}: {text[0] if text else ''}; "
            f"fix the factory so it returns an nn.Module"
        ) from exc
    module, example = _unpack(made, ref)
    module.eval()
    loaded = wrap_module(module, ref=ref, input_shape=input_shape, family="factory",
                         example_input=example)
    loaded.meta["factory"] = ref
    return loaded


def _unpack(made, ref: str):
    if isinstance(made, nn.Module):
        return made, None
    if isinstance(made, dict) and isinstance(made.get("module"), nn.Module):
        return made["module"], made.get("example_input")
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        return made
    raise LayerscopeError(
        f"factory {ref!r} returned {type(made).__name__}, not a torch.nn.Module; return a "
        f"module, (module, example_input), or {{'module': ..., 'example_input': ...}}"
    )


def _import_file(target: str, ref: str):
    path = Path(target).expanduser()
    if not path.is_file():
        raise LayerscopeError(f"factory {ref!r}: file {target!r} does not exist; check the path")
    name = f"layerscope_factory_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        sys.modules.pop(name, None)
        raise LayerscopeError(f"factory {ref!r}: importing {target!r} called sys.exit({exc.code!r}); "
                              f"a factory file must only define its function") from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise LayerscopeError(
            f"factory {ref!r}: importing {target!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _import_module(target: str, ref: str):
    added = False
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
        added = True
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise LayerscopeError(
            f"factory {ref!r}: no module named {exc.name!r}; install it or run from the folder "
            f"that holds it"
        ) from exc
    except SystemExit as exc:
        raise LayerscopeError(f"factory {ref!r}: importing {target!r} called sys.exit({exc.code!r}); "
                              f"a factory module must only define its function") from None
    except Exception as exc:
        raise LayerscopeError(
            f"factory {ref!r}: importing {target!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())


__all__ = ["load_factory", "looks_like_factory"]
