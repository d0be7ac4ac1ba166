"""Static PNG copies of the report's charts, drawn with matplotlib from the same figure dicts.

The page shows interactive plotly charts; the PNGs are for slides, papers and places where no
browser runs. They are drawn from the chart dicts of :mod:`.charts` (lines, bars, heatmaps and
scatters), so both show exactly the same numbers.

Example:
    >>> from layerscope.report.charts import line_chart
    >>> png = chart_png(line_chart(["0", "1"], {"probe": [0.5, 0.7]}), "probe accuracy")
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _num(values) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _axis_title(layout: dict, axis: str) -> str:
    return (layout.get(axis, {}).get("title") or {}).get("text", "")


def _draw_scatter(ax, trace: dict, positions: dict) -> None:
    x = [positions.setdefault(v, len(positions)) if isinstance(v, str) else v for v in trace["x"]]
    y = _num(trace["y"])
    if trace.get("fill") == "toself":
        ax.fill(x, y, alpha=0.15, color=trace.get("fillcolor"), linewidth=0)
        return
    mode = trace.get("mode", "lines+markers")
    marker = trace.get("marker", {})
    color = trace.get("line", {}).get("color") or marker.get("color")
    if isinstance(color, list):  # a continuous colour scale
        sc = ax.scatter(x, y, c=_num(color), cmap="RdBu", s=10)
        plt.colorbar(sc, ax=ax)
        return
    label = trace.get("name") if trace.get("showlegend", True) else None
    if "lines" in mode:
        dash = "--" if trace.get("line", {}).get("dash") == "dash" else "-"
        ax.plot(x, y, dash, marker="o" if "markers" in mode else None, color=color, label=label,
                markersize=4)
    else:
        star = marker.get("symbol") == "star"
        ax.scatter(x, y, color=color, s=120 if star else 10, marker="*" if star else "o",
                   label=label, zorder=3)


def chart_png(chart: dict, title: str = "", *, width: float = 7.0, height: float = 3.6) -> bytes:
    """Draw a chart dict from :mod:`.charts` as a PNG and return its bytes."""
    layout = chart.get("layout", {})
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    try:
        traces = chart.get("data", [])
        positions: dict = {}
        bars = [t for t in traces if t.get("type") == "bar"]
        for t in traces:
            if t.get("type") == "heatmap":
                z = [_num(r) for r in t["z"]]
                cmap = "RdBu_r" if t.get("colorscale") == "RdBu" else "viridis"  # plotly's RdBu runs blue to red
                im = ax.imshow(z, cmap=cmap, vmin=t.get("zmin"), vmax=t.get("zmax"), aspect="auto")
                ax.set_xticks(range(len(t["x"])), t["x"], rotation=90, fontsize=7)
                ax.set_yticks(range(len(t["y"])), t["y"], fontsize=7)
                fig.colorbar(im, ax=ax)
            elif t.get("type") == "scatter":
                _draw_scatter(ax, t, positions)
        if bars:
            cats = [str(v) for v in bars[0]["x"]]
            w = 0.8 / len(bars)
            for i, t in enumerate(bars):
                xs = [j + (i - (len(bars) - 1) / 2) * w for j in range(len(cats))]
                ax.bar(xs, _num(t["y"]), width=w, label=t.get("name"),
                       color=t.get("marker", {}).get("color"))
            ax.set_xticks(range(len(cats)), cats, rotation=90 if len(cats) > 12 else 0, fontsize=7)
        elif positions:
            ax.set_xticks(list(positions.values()), list(positions),
                          rotation=90 if len(positions) > 12 else 0, fontsize=7)
        if layout.get("yaxis", {}).get("type") == "log":
            ax.set_yscale("log")
        ax.set_xlabel(_axis_title(layout, "xaxis"))
        ax.set_ylabel(_axis_title(layout, "yaxis"))
        if title:
            ax.set_title(title, fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        if labels and len(labels) <= 12:
            ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
