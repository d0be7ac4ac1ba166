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
    >>> Demo([1, 3])
    <Demo: max 3>
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


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


class Result:
    """Mixin for result dataclasses. Subclasses are ``@dataclass`` and override ``summary``/``plot``.

    In a notebook a result shows itself as a short line (``repr``: the type and its summary) and
    as a small HTML table (``_repr_html_``); ``to_pandas()`` gives the per-layer numbers as a
    ``pandas.DataFrame`` (one row per layer; pandas is optional).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Scores(Result):
        ...     layers: list
        ...     score: list
        ...     def summary(self) -> str:
        ...         return f"best {max(self.score)}"
        >>> Scores(["a", "b"], [0.5, 0.7])
        <Scores: best 0.7>
        >>> Scores(["a", "b"], [0.5, 0.7]).to_pandas()["score"].tolist()
        [0.5, 0.7]
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # keep the short repr: @dataclass adds a field-by-field __repr__ only when the class
        # body has none, so one is put there before the decorator runs
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = Result.__repr__

    def __repr__(self) -> str:
        try:
            text = self.summary()
        except Exception:  # a half-built result must still print
            text = "..."
        if len(text) > 160:
            text = text[:157] + "..."
        return f"<{type(self).__name__}: {text}>"

    def _columns(self) -> tuple[list[str] | None, dict[str, list]]:
        """(layer names, {field: per-layer values}) for fields aligned with ``layers``."""
        layers = getattr(self, "layers", None)
        if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
            return None, {}
        cols = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == "layers" or not f.metadata.get("serialize", True):
                continue
            v = to_plain(getattr(self, f.name))
            if isinstance(v, list) and len(v) == len(layers) and all(_scalar(x) for x in v):
                cols[f.name] = v
        return layers, cols

    def _scalars(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata.get("serialize", True):
                v = to_plain(getattr(self, f.name))
                if _scalar(v):
                    out[f.name] = v
        return out

    def to_pandas(self):
        """The per-layer numbers as a ``pandas.DataFrame`` indexed by layer (for results without
        per-layer lists: one row of the scalar fields). Needs pandas (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            from layerscope.errors import LayerscopeError

            raise LayerscopeError("to_pandas() needs pandas, which is not installed; "
                                  "install it with `pip install pandas`") from None
        layers, cols = self._columns()
        if layers is not None and cols:
            return pd.DataFrame(cols, index=pd.Index(layers, name="layer"))
        return pd.DataFrame([self._scalars()])

    def _repr_html_(self, max_rows: int = 40) -> str:
        """A small HTML table: the summary, then one row per layer (or the scalar fields)."""
        from html import escape

        def cell(v) -> str:
            if isinstance(v, float):
                return f"{v:.4g}" if math.isfinite(v) else "n/a"
            return "n/a" if v is None else escape(str(v))

        layers, cols = self._columns()
        head = f"<b>{escape(type(self).__name__)}</b>: {escape(self.summary())}"
        if layers is not None and cols:
            header = "".join(f"<th>{escape(c)}</th>" for c in ["layer", *cols])
            rows = []
            for i, name in enumerate(layers[:max_rows]):
                rows.append("<tr><td>" + escape(name) + "</td>"
                            + "".join(f"<td>{cell(v[i])}</td>" for v in cols.values()) + "</tr>")
            more = (f"<tr><td colspan='{len(cols) + 1}'>... {len(layers) - max_rows} more layers"
                    f"</td></tr>") if len(layers) > max_rows else ""
            body = f"<tr>{header}</tr>" + "".join(rows) + more
        else:
            body = "".join(f"<tr><th>{escape(k)}</th><td>{cell(v)}</td></tr>"
                           for k, v in list(self._scalars().items())[:max_rows])
        return f"<div>{head}<table>{body}</table></div>"

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
