"""Reading files others may have damaged or crafted: one-line errors, nothing unpickled.

* :func:`load_json` - a JSON file, or a :class:`LayerscopeError` naming it and the fix;
* :func:`load_weights` - safetensors weights into a module, strict unless told otherwise;
* :func:`load_tensors` - a safetensors file as a dict of tensors;
* :func:`torch_load` - ``torch.load(weights_only=True)`` on CPU (for ``train_state.pt`` and
  ``.pt`` data), with a damaged file or a pickled object reported in one line.

Example:
    >>> import pathlib, tempfile
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "state.pt"
    >>> _ = bad.write_bytes(b"not a torch file")
    >>> torch_load(bad, what="training state", fix="train again")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerscope.errors.LayerscopeError: training state '...state.pt' is damaged or not a torch file (...); train again
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import LayerscopeError


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # torch's long advice first, the reason after it
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def load_json(path, *, what: str = "file", fix: str = "write it again") -> Any:
    """The JSON data in ``path``; a missing, unreadable or malformed file is one line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LayerscopeError(f"{what} {str(path)!r} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LayerscopeError(f"{what} {str(path)!r} is not readable JSON ({_reason(exc)}); "
                              f"{fix}") from None


def load_tensors(path, *, what: str = "weights") -> dict:
    """Every tensor of a safetensors file (CPU); a truncated or foreign file is one line."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, ... for damaged files
        raise LayerscopeError(f"{what} {str(path)!r} is damaged or not a safetensors file "
                              f"({_reason(exc)}); save it again") from None


def count_keys(keys, label: str) -> str:
    """``"3 missing (a, b, ...)"``: how many weight names, and the first two of them sorted."""
    keys = sorted(keys)
    return f"{len(keys)} {label} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})"


def load_weights(module, path, *, what: str, allow_missing_weights: bool = False) -> None:
    """Load the safetensors file ``path`` into ``module``: every weight must fit.

    A missing or unexpected weight raises :class:`LayerscopeError` unless
    ``allow_missing_weights=True``; a weight of another shape always raises.
    """
    from safetensors.torch import load_model

    path = Path(path)
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except Exception as exc:  # damaged file, or a tensor of another shape
        raise LayerscopeError(f"{str(path)!r} is damaged or does not fit {what} "
                              f"({_reason(exc)}); was it saved from another model?") from None
    if (missing or unexpected) and not allow_missing_weights:
        parts = [count_keys(keys, label)
                 for keys, label in ((missing, "missing"), (unexpected, "unexpected")) if keys]
        raise LayerscopeError(f"{str(path)!r} does not fit {what}: {'; '.join(parts)} weights; pass "
                              f"--allow-missing-weights (allow_missing_weights=True) to load it anyway")


def torch_load(path, *, what: str = "file", fix: str = "write it again") -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with one-line errors."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise LayerscopeError(f"{what} {str(path)!r} is missing; {fix}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            raise LayerscopeError(f"{what} {str(path)!r} holds pickled Python objects, which "
                                  f"layerscope never unpickles; {fix}") from None
        raise LayerscopeError(f"{what} {str(path)!r} is damaged or not a torch file "
                              f"({_reason(exc)}); {fix}") from None
    except Exception as exc:  # EOFError, RuntimeError (zip archive), OSError, ...
        raise LayerscopeError(f"{what} {str(path)!r} is damaged or not a torch file "
                              f"({_reason(exc)}); {fix}") from None


__all__ = ["load_json", "load_tensors", "load_weights", "count_keys", "torch_load"]
