"""One-sentence readings of figures, computed from the numbers they show.

Every caption in a report comes from one of these functions, so a sentence always states what
this run measured (which layer peaks, by how much, against what).

Example:
    >>> peak_sentence("sentiment", ["block 0", "block 1", "block 2"], [0.52, 0.71, 0.66], "R²")
    'sentiment is best decoded at block 1 (R² 0.71 vs 0.52 at block 0, 0.66 at the last layer)'
    >>> fmt_count(22713216)
    '22.7M'
"""

from __future__ import annotations

import math
from typing import Sequence


def fmt(value: float | None, digits: int = 3) -> str:
    """A number in a short human form; ``n/a`` for missing or non-finite values."""
    if value is None:
        return "n/a"
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** -(digits)):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"


def fmt_count(n: float) -> str:
    """A count with a k/M/G suffix: 22713216 -> 22.7M."""
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def _finite(values: Sequence) -> list[tuple[int, float]]:
    out = []
    for i, v in enumerate(values):
        if v is not None and math.isfinite(float(v)):
            out.append((i, float(v)))
    return out


def argmax(values: Sequence) -> int | None:
    """Index of the largest finite value, or None when there is none."""
    pts = _finite(values)
    return max(pts, key=lambda p: p[1])[0] if pts else None


def argmin(values: Sequence) -> int | None:
    """Index of the smallest finite value, or None when there is none."""
    pts = _finite(values)
    return min(pts, key=lambda p: p[1])[0] if pts else None


def peak_sentence(task: str, layers: Sequence[str], values: Sequence, metric: str) -> str:
    """Where a probed property peaks, against the first and the last layer."""
    k = argmax(values)
    if k is None:
        return f"{task}: no layer gave a finite {metric}"
    parts = []
    if k != 0 and values[0] is not None:
        parts.append(f"{fmt(values[0], 2)} at {layers[0]}")
    last = len(values) - 1
    if k != last and values[last] is not None:
        parts.append(f"{fmt(values[last], 2)} at the last layer")
    against = f" vs {', '.join(parts)}" if parts else ""
    return f"{task} is best decoded at {layers[k]} ({metric} {fmt(values[k], 2)}{against})"


def compare_to_control(metric: str, best: float, baseline: float | None, control: float | None) -> str:
    """How far the best layer is above the baseline and the random-feature control."""
    bits = []
    if baseline is not None and math.isfinite(baseline):
        bits.append(f"baseline {fmt(baseline, 2)}")
    if control is not None and math.isfinite(control):
        bits.append(f"random-feature control {fmt(control, 2)}")
    if not bits:
        return ""
    return f"best {metric} {fmt(best, 2)} against " + " and ".join(bits)


def largest_sentence(what: str, names: Sequence[str], values: Sequence, unit: str = "") -> str:
    """Which entry is largest and what share of the total it holds."""
    pts = _finite(values)
    if not pts:
        return f"no {what} measured"
    total = sum(v for _, v in pts)
    k, v = max(pts, key=lambda p: p[1])
    share = f", {100 * v / total:.0f}% of the total" if total > 0 else ""
    return f"{names[k]} has the most {what} ({fmt_count(v)}{unit}{share})"


def most_similar_pair(names: Sequence[str], matrix: Sequence[Sequence]) -> tuple[int, int, float] | None:
    """The most similar pair of distinct layers in a symmetric similarity matrix."""
    best = None
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            v = matrix[i][j]
            if v is None or not math.isfinite(float(v)):
                continue
            if best is None or float(v) > best[2]:
                best = (i, j, float(v))
    return best


def adjacent_similarity(matrix: Sequence[Sequence]) -> list[float]:
    """Similarity of each layer to the next one (the first off-diagonal)."""
    return [float(matrix[i][i + 1]) for i in range(len(matrix) - 1)]
