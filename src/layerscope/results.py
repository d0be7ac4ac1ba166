"""The common shape of every analysis result: plain data that serialises, plots and summarises.

Every result is a dataclass that inherits :class:`Result`. ``to_dict`` turns tensors and arrays
into lists, ``to_json`` writes or returns JSON, ``summary`` is one line of text computed from the
numbers, and ``plot`` returns a matplotlib figure.

Example:
    >>> from dataclasses import dataclass
    >>> from layerscope.results import Result
    >>> @dataclass
    ... class Demo(Result):
    ...     values: list
    ...     def summary(self) -> str:
    ...         return f"max {max(self.values)}"
    >>> Demo([1, 3]).to_dict()
    {'kind': 'Demo', 'values': [1, 3]}
    >>> Demo([1, 3]).summary()
    'max 3'
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any


def to_plain(value: Any) -> Any:
    """Convert tensors, arrays, dataclasses, paths and non-finite floats into JSON-ready data."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return to_plain(value.detach().cpu().tolist())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return to_plain(value.tolist())
        if isinstance(value, np.generic):
            return to_plain(value.item())
    except ImportError:  # pragma: no cover
        pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, Result):
            return value.to_dict()
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


class Result:
    """Mixin for result dataclasses. Subclasses are ``@dataclass`` and override ``summary``/``plot``."""

    def to_dict(self) -> dict:
        """All fields as plain JSON-ready data, plus ``kind`` naming the result type."""
        out = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata.get("serialize", True):
                out[f.name] = to_plain(getattr(self, f.name))
        return out

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The result as JSON text; also written to ``path`` when one is given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def summary(self) -> str:
        """One line of text stating the main finding, computed from this result's numbers."""
        return type(self).__name__

    def plot(self, ax=None):
        """A matplotlib figure of the result."""
        raise TypeError(f"{type(self).__name__} has no plot")

    def __str__(self) -> str:
        return self.summary()
