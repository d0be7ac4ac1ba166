"""What per-layer scores with intervals allow one to say, and how many items would settle the rest.

A layer is named as *the* peak only when its interval lies above the baseline and above every
other layer's interval. Otherwise the sentence says what the numbers do allow (decoded above the
baseline at some layers, peak uncertain; or not above the baseline at all) and how many held-out
items would be needed to separate the best layer, estimated as follows: a 95% interval's
half-width shrinks as 1/√n, so two scores whose half-widths are h₁ and h₂ at n items and whose
observed gap is d separate (d > h₁ + h₂) at about n·((h₁ + h₂)/d)² items; against a fixed
baseline, at n·(h₁/d)². This assumes the observed gap is the true one; a smaller true gap needs
more items.

Example:
    >>> c = peak_claim("bigram shift", ["layers.0", "layers.9", "layers.18"], [0.52, 0.58, 0.62],
    ...                [0.45, 0.48, 0.49], [0.59, 0.68, 0.74], baseline=0.5, n_test=200,
    ...                metric="accuracy")
    >>> c.status, c.items_needed
    ('none', 235)
    >>> c.sentence
    'no layer decodes bigram shift above the baseline (accuracy 0.50) with 200 held-out items: the best, layers.18 (0.62 [0.49, 0.74]), would need about 240 held-out items to separate from it (interval half-widths shrink as 1/√n)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["PeakClaim", "peak_claim", "items_to_separate"]


@dataclass
class PeakClaim:
    """What may be said about where a probed property peaks.

    ``status``: ``"peak"`` (one layer's interval is above the baseline and every other layer's),
    ``"uncertain"`` (above the baseline somewhere, but the best layer's interval overlaps others),
    ``"none"`` (no layer's interval is above the baseline). ``best`` is the layer with the highest
    score; ``overlapping`` the layers whose intervals reach the best one's; ``items_needed`` the
    held-out items estimated to settle the open question (None when it is settled, or when the
    observed gap is zero so no number of items is predicted to do it).
    """

    status: str
    best: int | None
    above_baseline: list[int]
    overlapping: list[int]
    items_needed: int | None
    sentence: str

    @property
    def is_peak(self) -> bool:
        return self.status == "peak"


def items_to_separate(n: int, half_widths: float, gap: float) -> int | None:
    """Held-out items at which a gap ``gap`` exceeds intervals summing to ``half_widths`` at ``n``.

    Example:
        >>> items_to_separate(200, 0.07, 0.02)
        2450
    """
    if not (math.isfinite(gap) and math.isfinite(half_widths)) or gap <= 0 or n <= 0:
        return None
    return int(math.ceil(n * (half_widths / gap) ** 2 - 1e-9))


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.3g}"


def _count(n: int | None) -> str:
    if n is None:
        return ""
    if n > 10_000_000:
        return "more than 10 million"
    if n >= 100:
        n = int(round(n, -(len(str(n)) - 2)))  # two significant digits: "about" means it
    return f"{n:,}"


def peak_claim(task: str, layers: Sequence[str], score: Sequence[float], lo: Sequence[float],
               hi: Sequence[float], *, baseline: float | None, n_test: int,
               metric: str = "accuracy") -> PeakClaim:
    """The claim the scores and their intervals support (see the module text for the rule)."""
    pts = [i for i, s in enumerate(score) if s is not None and math.isfinite(float(s))
           and lo[i] is not None and hi[i] is not None]
    if not pts:
        return PeakClaim("none", None, [], [], None, f"{task}: no layer gave a finite {metric}")
    k = max(pts, key=lambda i: float(score[i]))
    s_k, lo_k, hi_k = float(score[k]), float(lo[k]), float(hi[k])
    base = float(baseline) if baseline is not None and math.isfinite(float(baseline)) else None
    above = [i for i in pts if base is None or float(lo[i]) > base]
    overlapping = [i for i in pts if i != k and float(hi[i]) >= lo_k]
    best = f"{layers[k]} ({_fmt(s_k)} [{_fmt(lo_k)}, {_fmt(hi_k)}])"
    base_text = f"{metric} {_fmt(base)}" if base is not None else ""
    how = "interval half-widths shrink as 1/√n"

    if base is not None and k not in above and not above:
        need = items_to_separate(n_test, s_k - lo_k, s_k - base)
        if need is not None:
            tail = f"would need about {_count(need)} held-out items to separate from it ({how})"
        elif n_test <= 0 or s_k > base:
            tail = "would need more held-out items to separate from it"
        else:
            tail = "does not score above it at all"
        count = f" with {n_test:,} held-out items" if n_test > 0 else ""
        return PeakClaim("none", k, [], overlapping, need,
                         f"no layer decodes {task} above the baseline ({base_text}){count}: "
                         f"the best, {best}, {tail}")
    if not overlapping and k in above:
        against = f"baseline {_fmt(base)}; " if base is not None else "no baseline; "
        return PeakClaim("peak", k, above, [], None,
                         f"{task} is best decoded at {layers[k]}: {_fmt(s_k)} [{_fmt(lo_k)}, "
                         f"{_fmt(hi_k)}] against {against}its interval lies above every other "
                         f"layer's" + (f" ({n_test:,} held-out items)" if n_test > 0 else ""))
    # above the baseline somewhere, but the best layer is not set apart from the others
    needs = [items_to_separate(n_test, (s_k - lo_k) + (float(hi[j]) - float(score[j])),
                               s_k - float(score[j])) for j in overlapping]
    if base is not None and k not in above:
        needs.append(items_to_separate(n_test, s_k - lo_k, s_k - base))
    need = None if any(n is None for n in needs) else max(needs, default=None)
    ties = [layers[j] for j in sorted(overlapping, key=lambda j: -float(score[j]))]
    shown = ", ".join(ties[:3]) + (f" and {len(ties) - 3} more" if len(ties) > 3 else "")
    count = f" with {n_test:,} held-out items" if n_test > 0 else ""
    where = (f"above the baseline ({base_text}) at {len(above)} of {len(pts)} layers"
             if base is not None else f"at {len(pts)} layers")
    if need is not None:
        tail = f"; about {_count(need)} held-out items would be needed to single out one layer ({how})"
    elif n_test <= 0:
        tail = "; more held-out items would be needed to single out one layer"
    else:
        tail = "; some layers score the same, so more items are not predicted to single one out"
    return PeakClaim("uncertain", k, above, overlapping, need,
                     f"{task} is decoded {where}, best observed at {best}, but the peak is "
                     f"uncertain: the intervals of {shown} overlap it{count}{tail}")
