"""Interactive charts for the report, as plotly figure dictionaries.

Each builder takes plain numbers and returns a plotly figure as a dict that the page renders with
the inlined plotly.js; hovering shows exact values. Keeping figures as dicts keeps them JSON data
that the page embeds safely (see :func:`figure_json`).

Example:
    >>> fig = line_chart(["0", "1", "2"], {"probe": [0.5, 0.7, 0.6]}, y_title="accuracy")
    >>> fig["data"][0]["y"]
    [0.5, 0.7, 0.6]
    >>> "<" in figure_json({"layout": {"title": {"text": "<script>"}}})
    False
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

PALETTE = ["#3b6fb6", "#d1495b", "#2a9d8f", "#edae49", "#6c4f8f", "#66a182", "#8d6a9f", "#00798c"]
#: a qualitative palette for class labels (Tableau 10, then 10 lighter shades)
CLASS_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#bab0ac", "#a0cbe8", "#ffbe7d", "#ff9d9a", "#86bcb6",
                 "#8cd17d", "#f1ce63", "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e"]


def _clean(values: Sequence) -> list:
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        f = float(v)
        out.append(f if math.isfinite(f) else None)
    return out


def wide_range(*series: Sequence, ratio: float = 100.0) -> bool:
    """Whether values are all positive and span at least ``ratio`` (largest / smallest): such
    quantities (perplexity, KL, loss) are drawn on a log axis, or every bar but one is invisible.

    Example:
        >>> wide_range([163.0, 1.9e5, 2.0e4]), wide_range([0.5, 0.7]), wide_range([0.0, 5.0, 900.0])
        (True, False, False)
    """
    vals = [v for ys in series for v in _clean(ys) if v is not None]
    if len(vals) < 2 or min(vals) <= 0:
        return False
    return max(vals) / min(vals) >= ratio


def _layout(title: str | None, x_title: str | None, y_title: str | None, height: int = 360) -> dict:
    layout = {
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 40 if title else 16, "b": 56},
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "legend": {"orientation": "h", "y": -0.25},
        "xaxis": {"title": {"text": x_title or ""}, "gridcolor": "#e5e7eb", "automargin": True},
        "yaxis": {"title": {"text": y_title or ""}, "gridcolor": "#e5e7eb", "automargin": True},
        "hovermode": "closest",
    }
    if title:
        layout["title"] = {"text": title, "x": 0.01}
    return layout


def line_chart(
    x: Sequence[str],
    series: Mapping[str, Sequence],
    *,
    title: str | None = None,
    x_title: str | None = "layer",
    y_title: str | None = None,
    bands: Mapping[str, tuple[Sequence, Sequence]] | None = None,
    dashed: Sequence[str] = (),
    marks: Mapping[str, int] | None = None,
    log_y: bool | None = None,
) -> dict:
    """Curves over layers; ``bands`` adds a shaded interval per series, ``marks`` a star at an index.

    ``log_y=None`` picks a log axis when the values are positive and span 100× or more."""
    data = []
    x = [str(v) for v in x]
    for i, (name, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        if bands and name in bands:
            lo, hi = (_clean(b) for b in bands[name])
            data.append({"type": "scatter", "x": x + x[::-1], "y": hi + lo[::-1], "fill": "toself",
                         "fillcolor": color, "opacity": 0.15, "line": {"width": 0},
                         "hoverinfo": "skip", "showlegend": False, "name": f"{name} interval"})
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": name, "x": x, "y": _clean(ys),
            "line": {"color": color, "width": 2, "dash": "dash" if name in dashed else "solid"},
            "marker": {"size": 6},
            "hovertemplate": f"{name}<br>%{{x}}: %{{y:.4g}}<extra></extra>",
        })
        if marks and name in marks and 0 <= marks[name] < len(x):
            k = marks[name]
            data.append({"type": "scatter", "mode": "markers", "x": [x[k]], "y": [_clean(ys)[k]],
                         "marker": {"symbol": "star", "size": 16, "color": color},
                         "name": f"{name} peak", "showlegend": False,
                         "hovertemplate": f"{name} peak<br>%{{x}}: %{{y:.4g}}<extra></extra>"})
    layout = _layout(title, x_title, y_title)
    layout["xaxis"]["type"] = "category"
    if log_y or (log_y is None and wide_range(*series.values())):
        layout["yaxis"]["type"] = "log"
    return {"data": data, "layout": layout}


def bar_chart(
    x: Sequence[str],
    series: Mapping[str, Sequence],
    *,
    title: str | None = None,
    x_title: str | None = "layer",
    y_title: str | None = None,
    log_y: bool | None = None,
) -> dict:
    """Grouped bars over layers; ``log_y=None`` picks a log axis for positive values spanning 100×."""
    data = []
    for i, (name, ys) in enumerate(series.items()):
        data.append({"type": "bar", "name": name, "x": [str(v) for v in x], "y": _clean(ys),
                     "marker": {"color": PALETTE[i % len(PALETTE)]},
                     "hovertemplate": f"{name}<br>%{{x}}: %{{y:.4g}}<extra></extra>"})
    layout = _layout(title, x_title, y_title)
    layout["xaxis"]["type"] = "category"
    layout["barmode"] = "group"
    if log_y or (log_y is None and wide_range(*series.values())):
        layout["yaxis"]["type"] = "log"
    return {"data": data, "layout": layout}


def heatmap(
    z: Sequence[Sequence],
    x: Sequence[str],
    y: Sequence[str],
    *,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    colorscale: str = "Viridis",
    value_name: str = "value",
) -> dict:
    """A matrix with hover values; rows are ``y``, columns are ``x``."""
    rows = [_clean(r) for r in z]
    data = [{
        "type": "heatmap", "z": rows, "x": [str(v) for v in x], "y": [str(v) for v in y],
        "colorscale": colorscale, "zmin": zmin, "zmax": zmax,
        "hovertemplate": f"%{{y}} × %{{x}}<br>{value_name}: %{{z:.3f}}<extra></extra>",
    }]
    layout = _layout(title, x_title, y_title, height=max(320, 22 * len(rows) + 120))
    layout["xaxis"]["type"] = "category"
    layout["yaxis"]["type"] = "category"
    layout["yaxis"]["autorange"] = "reversed"
    return {"data": data, "layout": layout}


def scatter_chart(
    points: Sequence[Sequence[float]],
    labels: Sequence,
    *,
    title: str | None = None,
    hover: Sequence[str] | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    continuous: bool = False,
) -> dict:
    """A 2-D scatter of items, one trace per label (or one coloured trace when ``continuous``)."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    hover = [str(h) for h in hover] if hover is not None else [str(lab) for lab in labels]
    if continuous:
        data = [{"type": "scatter", "mode": "markers", "x": xs, "y": ys, "text": hover,
                 "marker": {"size": 5, "color": _clean(labels), "colorscale": "RdBu",
                            "showscale": True, "opacity": 0.8},
                 "hovertemplate": "%{text}<extra></extra>", "name": "items"}]
    else:
        data = []
        for i, lab in enumerate(sorted({str(v) for v in labels})):
            idx = [j for j, v in enumerate(labels) if str(v) == lab]
            data.append({"type": "scatter", "mode": "markers", "name": lab,
                         "x": [xs[j] for j in idx], "y": [ys[j] for j in idx],
                         "text": [hover[j] for j in idx],
                         "marker": {"size": 5, "color": CLASS_PALETTE[i % len(CLASS_PALETTE)],
                                    "opacity": 0.8},
                         "hovertemplate": "%{text}<extra></extra>"})
    layout = _layout(title, x_title, y_title, height=380)
    if not continuous:
        layout["showlegend"] = True
        layout["legend"]["title"] = {"text": "label"}
    return {"data": data, "layout": layout}


def figure_json(figure: dict) -> str:
    """JSON for a ``<script type="application/json">`` block: no ``<``, ``>`` or ``&`` survive raw."""
    text = json.dumps(figure, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def plotly_js() -> str:
    """The plotly.js bundle shipped inside the plotly package, to inline in the page."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()
