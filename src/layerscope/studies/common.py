"""What every study shares: intervals, the verdict rules, the result, and the registry.

A study tests one claim about layers. It runs a measurement, repeats it (over seeds, or over
disjoint chunks of items), and turns the numbers into a verdict by a rule that is stated next to
it. The verdicts:

- ``supported`` / ``refuted``: the interval the rule reads lies wholly on one side;
- ``mixed``: the claim's parts disagree (one supported, another refuted); the verdict says which
  part goes which way, i.e. on what it depends;
- ``cannot tell``: an interval straddles the line; the verdict says roughly how many more seeds
  or items would make it decisive if the effect stays as measured.

Intervals over seeds or chunks are Student-t 95% intervals of the mean; accuracies on held-out
items use Wilson intervals.

Example:
    >>> est = mean_interval([0.31, 0.29, 0.33], what="speed-up", unit="seeds")
    >>> v = threshold_rule(est, 0.0, claim="above")
    >>> v.verdict, v.reason.startswith("speed-up 0.31 [")
    ('supported', True)
    >>> threshold_rule(mean_interval([-0.1, 0.1, 0.02]), 0.0).verdict
    'cannot tell'
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from layerscope.analyses.claims import items_to_separate, peak_claim
from layerscope.errors import LayerscopeError
from layerscope.results import Result

VERDICTS = ("supported", "refuted", "mixed", "cannot tell")
MAX_NEEDED = 10**7


# --- intervals ---------------------------------------------------------------------------------


@dataclass
class Estimate:
    """A mean with its 95% interval from ``n`` repeats (seeds, chunks or held-out items)."""

    value: float
    low: float
    high: float
    n: int
    what: str = "value"
    unit: str = "seeds"        # what the repeats are
    digits: int = 3

    def text(self) -> str:
        f = f"{{:.{self.digits}g}}"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.what} {f.format(self.value)} (no interval: {self.n} {self.unit})"
        return (f"{self.what} {f.format(self.value)} [{f.format(self.low)}, {f.format(self.high)}] "
                f"over {self.n} {self.unit}")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_quantile(df: int, level: float = 0.95) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_interval(values: Sequence[float], *, what: str = "value", unit: str = "seeds",
                  level: float = 0.95) -> Estimate:
    """Mean and Student-t interval over repeats (the interval is NaN with fewer than two).

    Example:
        >>> e = mean_interval([1.0, 2.0, 3.0])
        >>> round(e.value, 3), round(e.low, 3), round(e.high, 3)
        (2.0, -0.484, 4.484)
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, what, unit)
    m = float(v.mean())
    if len(v) < 2:
        return Estimate(m, float("nan"), float("nan"), len(v), what, unit)
    h = t_quantile(len(v) - 1, level) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return Estimate(m, m - h, m + h, len(v), what, unit)


def diff_interval(a: Sequence[float], b: Sequence[float], *, what: str = "difference",
                  unit: str = "seeds", paired: bool = True) -> Estimate:
    """Interval of mean(a − b): paired (same seeds / chunks) or Welch's for independent repeats.

    Example:
        >>> diff_interval([3.0, 4.0, 5.0], [1.0, 2.0, 3.1]).value > 1.9
        True
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired:
        return mean_interval(a - b, what=what, unit=unit)
    m = float(a.mean() - b.mean())
    if min(len(a), len(b)) < 2:
        return Estimate(m, float("nan"), float("nan"), min(len(a), len(b)), what, unit)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / max(va * va / (len(a) - 1) + vb * vb / (len(b) - 1), 1e-300)
    h = t_quantile(max(int(df), 1)) * se
    return Estimate(m, m - h, m + h, min(len(a), len(b)), what, unit)


def wilson_interval(correct: int, n: int, *, what: str = "accuracy", unit: str = "held-out items") -> Estimate:
    from layerscope.analyses.probe import wilson

    lo, hi = wilson(int(correct), int(n))
    return Estimate(correct / n if n else float("nan"), lo, hi, int(n), what, unit)


def needed_repeats(est: Estimate, gap: float | None = None) -> int | None:
    """Roughly how many repeats make the interval's half-width smaller than ``gap`` (default: the
    distance of the estimate from the line, ``|value|``), the spread staying as measured."""
    gap = abs(est.value) if gap is None else abs(gap)
    if not (math.isfinite(est.half_width) and est.n >= 2) or gap <= 0:
        return None
    n = est.n * (est.half_width / gap) ** 2 * 1.1    # a t quantile shrinks too: 10% margin
    return int(min(max(math.ceil(n), est.n + 1), MAX_NEEDED))


# --- verdicts ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    """A verdict, the rule that produced it, and the numbers it rests on (``reason``)."""

    verdict: str
    reason: str
    rule: str
    needs: str = ""                         # for "cannot tell": what would decide it
    parts: dict = field(default_factory=dict)   # part name -> Verdict (for combined claims)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")

    def text(self) -> str:
        out = f"{self.verdict.upper()}: {self.reason}"
        return out + (f" ({self.needs})" if self.needs else "")


def _needs_text(est: Estimate, gap: float | None = None) -> str:
    n = needed_repeats(est, gap)
    if n is None:
        return f"repeat with more {est.unit}: the interval is undefined or the effect is zero"
    if n >= MAX_NEEDED:
        return f"the effect is too close to the line to separate with any practical number of {est.unit}"
    return f"about {n} {est.unit} would separate it if the effect stays at {est.value:.3g}"


def threshold_rule(est: Estimate, threshold: float = 0.0, *, claim: str = "above",
                   line: str | None = None) -> Verdict:
    """Supported when the whole interval lies on the claimed side of ``threshold`` (strictly),
    refuted when it lies wholly on the other side or on the line (an interval of no spread at the
    threshold: the effect is not on the claimed side), cannot tell when it straddles it.

    Example:
        >>> threshold_rule(mean_interval([0.0, 0.0, 0.0], what="gain")).verdict
        'refuted'
    """
    if claim not in ("above", "below"):
        raise ValueError("claim is 'above' or 'below'")
    line = line or f"{threshold:g}"
    rule = f"the 95% interval of the {est.what} lies wholly {claim} {line} (supported) or wholly {'below' if claim == 'above' else 'above'} it (refuted)"
    if not (math.isfinite(est.low) and math.isfinite(est.high)):
        return Verdict("cannot tell", est.text(), rule, f"needs at least 2 {est.unit} for an interval")
    above, below = est.low > threshold, est.high < threshold
    # the claimed side is strict, so an interval that only reaches the line from the other side
    # (a zero-spread [t, t]: every repeat gave exactly the line) is wholly outside the claim too
    touches = est.high == threshold if claim == "above" else est.low == threshold
    if above or below or touches:
        ok = above if claim == "above" else below
        side = "above" if above else "below" if below else f"at or {'below' if claim == 'above' else 'above'}"
        return Verdict("supported" if ok else "refuted", f"{est.text()}, wholly {side} {line}", rule)
    return Verdict("cannot tell", f"{est.text()} straddles {line}", rule,
                   _needs_text(Estimate(est.value - threshold, est.low - threshold,
                                        est.high - threshold, est.n, est.what, est.unit)))


def band_rule(est: Estimate, low: float, high: float, *, below_text: str, inside_text: str,
              above_text: str, verdicts: tuple[str, str, str]) -> Verdict:
    """Three outcomes by where a whole interval lies relative to a band [low, high]; cannot tell
    when it crosses an edge. ``verdicts``: the verdict for wholly below / inside / above."""
    rule = (f"the 95% interval of the {est.what} lies wholly below {low:g} ({verdicts[0]}: {below_text}), "
            f"within [{low:g}, {high:g}] ({verdicts[1]}: {inside_text}) or above {high:g} "
            f"({verdicts[2]}: {above_text})")
    if not (math.isfinite(est.low) and math.isfinite(est.high)):
        return Verdict("cannot tell", est.text(), rule, f"needs at least 2 {est.unit} for an interval")
    if est.high < low:
        return Verdict(verdicts[0], f"{est.text()}: {below_text}", rule)
    if est.low > high:
        return Verdict(verdicts[2], f"{est.text()}: {above_text}", rule)
    if est.low >= low and est.high <= high:
        return Verdict(verdicts[1], f"{est.text()}: {inside_text}", rule)
    edge = low if abs(est.value - low) < abs(est.value - high) else high
    return Verdict("cannot tell", f"{est.text()} crosses {edge:g}", rule,
                   _needs_text(est, est.value - edge))


def peak_rule(names: Sequence[str], values: Sequence[float], lows: Sequence[float],
              highs: Sequence[float], expected: Sequence[int], *, what: str, region: str,
              n: int, unit: str = "held-out items", per_item: float = 1.0,
              baseline: float | None = None) -> Verdict:
    """Is ``what`` best in the ``expected`` layers (named ``region``)?

    Supported when the best expected layer's interval lies above the interval of every other
    layer; refuted when some other layer's interval lies above every expected layer's; cannot
    tell otherwise, with the number of items at which the two best intervals (in and outside the
    region) would part if the gap stays as measured: half-widths shrink as 1/√n, so at
    n·((h₁ + h₂)/gap)² (:func:`layerscope.analyses.claims.items_to_separate`, the project's one
    formula; ``per_item``: items per unit of ``n``, e.g. 1/test share for held-out items).
    With a ``baseline`` (chance), a decisive verdict also needs the winning layer's interval above
    it; else cannot tell, with the items at which it would clear the baseline.

    Example:
        >>> v = peak_rule(["0", "1", "2"], [0.9, 0.6, 0.5], [0.88, 0.58, 0.48], [0.92, 0.62, 0.52],
        ...               [0], what="length", region="the first third", n=1000)
        >>> v.verdict
        'supported'
    """
    inside = [i for i in expected if 0 <= i < len(values)]
    outside = [i for i in range(len(values)) if i not in inside]
    rule = (f"the best layer in {region} has a 95% interval above every other layer's (supported), "
            f"or a layer outside it has one above every layer's in it (refuted)"
            + (f"; the winner's interval must also lie above chance ({baseline:.3f})" if baseline is not None else ""))
    if not inside or not outside:
        raise LayerscopeError(f"{region} holds {len(inside)} of {len(values)} layers; the peak test needs layers on both sides")
    bi = max(inside, key=lambda i: values[i])
    bo = max(outside, key=lambda i: values[i])
    peak = int(np.argmax(values))
    top = f"layer {names[peak]} ({values[peak]:.3f} [{lows[peak]:.3f}, {highs[peak]:.3f}])"
    if peak_claim(what, names, values, lows, highs, baseline=baseline, n_test=n).is_peak:
        top = f"{what} peaks at {top}"
    else:                   # a peak is named only when its interval clears every other layer's
        top = f"{what} is highest at {top}, but its interval overlaps another layer's"
    desc = (f"{top}; best in {region}: {names[bi]} {values[bi]:.3f} [{lows[bi]:.3f}, {highs[bi]:.3f}], "
            f"best elsewhere: {names[bo]} {values[bo]:.3f} [{lows[bo]:.3f}, {highs[bo]:.3f}]")
    won = ("supported" if lows[bi] > max(highs[i] for i in outside) else
           "refuted" if lows[bo] > max(highs[i] for i in inside) else None)
    winner = bi if won == "supported" else bo
    if won and (baseline is None or lows[winner] > baseline):
        return Verdict(won, desc, rule)
    if won:
        held_out = items_to_separate(n, values[winner] - lows[winner], values[winner] - baseline)
        needs = (f"no layer's interval lies above chance; about {min(math.ceil(held_out * per_item), MAX_NEEDED)} "
                 f"items would lift the best one above it if its score stays" if held_out is not None
                 else f"no layer scores above chance ({baseline:.3f})")
        return Verdict("cannot tell", desc, rule, needs)
    top, low = (bi, bo) if values[bi] >= values[bo] else (bo, bi)
    gap = values[top] - values[low]
    halves = (values[top] - lows[top]) + (highs[low] - values[low])    # the sides that face each other
    held_out = items_to_separate(n, halves, gap)        # the two intervals part at gap > h1 + h2
    if held_out is None:
        needs = f"the two best layers score alike; no practical number of {unit} separates them"
    else:
        need = min(math.ceil(held_out * per_item), MAX_NEEDED)
        needs = (f"about {need} items would separate them if the gap stays at {gap:.3f}"
                 if need < MAX_NEEDED else "the gap is too small to separate with any practical data")
    return Verdict("cannot tell", desc, rule, needs)


def combine(parts: dict[str, Verdict], *, claim: str = "the claim") -> Verdict:
    """One verdict from the verdicts of a claim's parts: the same when they agree; mixed when
    some parts are supported and others refuted (naming which); cannot tell when some parts are
    undecided and the decided ones agree.

    Example:
        >>> s = Verdict("supported", "a", "r"); r = Verdict("refuted", "b", "r")
        >>> combine({"x": s, "y": r}).verdict, combine({"x": s, "y": s}).verdict
        ('mixed', 'supported')
    """
    rule = "all parts agree (that verdict); some supported and some refuted (mixed); otherwise cannot tell"
    by = {v: [k for k, p in parts.items() if p.verdict == v] for v in VERDICTS}
    listing = "; ".join(f"{k}: {p.verdict}" for k, p in parts.items())
    if by["mixed"] or (by["supported"] and by["refuted"]):
        sup = by["supported"] + [f"part of {k}" for k in by["mixed"]]
        ref = by["refuted"] + [f"part of {k}" for k in by["mixed"]]
        return Verdict("mixed", f"holds for {', '.join(sup) or '-'}, fails for {', '.join(ref) or '-'} ({listing})",
                       rule, parts=parts)
    undecided = by["cannot tell"]
    if undecided:
        needs = "; ".join(f"{k}: {parts[k].needs}" for k in undecided if parts[k].needs)
        return Verdict("cannot tell", listing, rule, needs, parts=parts)
    only = next(v for v in VERDICTS if by[v])
    return Verdict(only, listing, rule, parts=parts)


# --- the result ------------------------------------------------------------------------------


@dataclass
class StudyResult(Result):
    """One study's outcome: the claim, the experiment, a table, a chart and the verdict."""

    name: str
    title: str
    claim: str
    source: str                 # where the claim is made
    anchor: str                 # the published result it is compared with
    experiment: str             # what was run, with this run's settings
    columns: list[str]
    rows: list[list]
    chart: dict | None
    verdict: Verdict
    findings: list[str] = field(default_factory=list)   # computed sentences (e.g. the anchor comparison)
    mode: str = "quick"
    model: str = ""
    data: str = ""
    seeds: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0    # CPU time of the process (all threads): steadier than wall time on a shared machine
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        return f"{self.name}: {self.verdict.text()}"

    def plot(self, ax=None):
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(7, 3.8))
        ax = ax or fig.add_subplot(111)
        ax.axis("off")
        if self.chart:
            from layerscope.report.png import chart_png

            ax.imshow(plt.imread(io.BytesIO(chart_png(self.chart, self.title))))
        return fig


# --- the registry ------------------------------------------------------------------------------


@dataclass
class Settings:
    """What a study run was asked for: the model and data (None: the study's default), the
    size (quick / full), seeds, and how much to print."""

    model: str | None = None
    data: str | None = None
    mode: str = "quick"
    seeds: int | None = None
    progress: bool = False
    workdir: str | None = None      # scratch folder for checkpoints of training studies

    def pick(self, quick, full):
        return quick if self.mode == "quick" else full


@dataclass
class Study:
    name: str
    title: str
    claim: str
    source: str
    anchor: str
    models: str                     # the models it takes, in words (for the error message)
    run: Callable[[Settings], StudyResult]
    default_seeds: tuple[int, int] = (3, 3)   # (quick, full); 0 = not a seeded study
    order: int = 100


STUDIES: dict[str, Study] = {}


def register(name: str, *, title: str, claim: str, source: str, anchor: str, models: str,
             seeds: tuple[int, int] = (3, 3), order: int = 100):
    """Decorator adding a study function ``fn(settings) -> StudyResult`` to :data:`STUDIES`."""
    def wrap(fn):
        STUDIES[name] = Study(name, title, claim, source, anchor, models, fn, seeds, order)
        return fn
    return wrap


def registry() -> dict[str, Study]:
    """Every study, in the order the docs present them (importing the study modules)."""
    from layerscope import studies as _pkg  # noqa: F401  (imports the study modules)

    return dict(sorted(STUDIES.items(), key=lambda kv: kv[1].order))


def get_study(name: str) -> Study:
    studies = registry()
    if name not in studies:
        raise LayerscopeError(f"unknown study {name!r}; choose one of: {', '.join(studies)} (or all, list)")
    return studies[name]


def run_study(name: str, *, model: str | None = None, data: str | None = None, mode: str = "quick",
              seeds: int | None = None, progress: bool = False, workdir: str | None = None) -> StudyResult:
    """Run the study ``name`` and return its :class:`StudyResult` (timed, settings recorded)."""
    if mode not in ("quick", "full"):
        raise LayerscopeError(f"unknown study size {mode!r}; use quick or full")
    study = get_study(name)
    if seeds is not None:
        if study.default_seeds == (0, 0):
            seeds = None
        elif seeds < 2:
            raise LayerscopeError(f"study {name} needs at least 2 seeds for an interval over seeds "
                                  f"(3 or more recommended); got {seeds}")
    if seeds is None and study.default_seeds != (0, 0):
        seeds = study.default_seeds[0 if mode == "quick" else 1]
    settings = Settings(model=model, data=data, mode=mode, seeds=seeds, progress=progress, workdir=workdir)
    t0, c0 = time.perf_counter(), time.process_time()
    result = study.run(settings)
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    result.mode, result.seeds = mode, int(seeds or 0)
    return result


def make_result(name: str, **fields) -> StudyResult:
    """A :class:`StudyResult` for the registered study ``name`` (title, claim, source, anchor filled in)."""
    st = STUDIES[name]
    return StudyResult(name=name, title=st.title, claim=st.claim, source=st.source, anchor=st.anchor, **fields)


def seed_list(settings: Settings) -> list[int]:
    return list(range(int(settings.seeds or 0)))


def not_applicable(name: str, model: str, what: str, why: str | None = None) -> LayerscopeError:
    """The one-line error for a study given a model it does not take (``why``: what the model is).

    Example:
        >>> print(not_applicable("lm-decides", "minilm", "causal language models", "feature-extraction"))
        study lm-decides does not apply to 'minilm' (feature-extraction): it takes causal language models
    """
    return LayerscopeError(f"study {name} does not apply to {model!r}{f' ({why})' if why else ''}: "
                           f"it takes {what}")


def check_model(name: str, model: str, allowed: Sequence[str], what: str) -> None:
    """A one-line error when ``model`` is not one a study takes."""
    base = model.split(":")[0]
    if base not in allowed:
        raise not_applicable(name, model, what)


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{x:.{digits}g}"


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sd`` over repeats."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if not len(v):
        return "-"
    if len(v) == 1:
        return fmt(float(v[0]), digits)
    return f"{v.mean():.{digits}g} ± {v.std(ddof=1):.{digits - 1 if digits > 1 else 1}g}"
