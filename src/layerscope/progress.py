"""Visible, bounded work: progress bars with a total, and up-front notes on how much and how long.

Every long stage in layerscope (a sweep, fitting probes, t-SNE, the logit lens, layer removal,
report stages) goes through :func:`bar`, so they all look and behave alike:

- the bar is a ``tqdm`` bar on **stderr** with a known ``total`` (stdout stays clean for
  ``--json`` and pipes); it is drawn only when ``enabled`` and stderr is a terminal;
- once the first updates took a measurable time, it writes **one line** with the estimated time
  for the whole stage ("sweep: about 40 s for 2,000 items (from the first 96)"), also when stderr
  is not a terminal (a log then still tells how long the run will take);
- ``enabled=False`` (``progress=False`` in the API, ``--json`` on the command line) silences both.

:func:`announce` writes the up-front line of a command that reads a data set ("using 2,000 of
23,703 items of sentences; --limit all for every item"). ``LAYERSCOPE_PROGRESS=never`` turns
everything off; ``=always`` draws bars even when stderr is not a terminal.

Example:
    >>> from layerscope.progress import bar, format_seconds
    >>> with bar(3, desc="toy", enabled=False) as b:
    ...     for _ in range(3):
    ...         b.update(1)
    >>> b.n, b.total
    (3, 3)
    >>> format_seconds(42.4), format_seconds(150), format_seconds(5400)
    ('42 s', '2.5 min', '1.5 h')
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable

__all__ = ["bar", "track", "announce", "format_seconds", "notes_on", "Bar"]


def _mode() -> str:
    return os.environ.get("LAYERSCOPE_PROGRESS", "auto").strip().lower()


def notes_on(progress: bool = True) -> bool:
    """Whether notes are written at all: ``progress`` unless ``LAYERSCOPE_PROGRESS=never``."""
    return bool(progress) and _mode() != "never"


def _draw_bars(progress: bool) -> bool:
    if not notes_on(progress):
        return False
    if _mode() == "always":
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def format_seconds(seconds: float) -> str:
    """A duration in the unit a person reads best: ``42 s``, ``2.5 min``, ``1.5 h``."""
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.2g} min" if s < 600 else f"{s / 60:.0f} min"
    return f"{s / 3600:.2g} h"


def _note(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def announce(text: str, *, progress: bool = True) -> None:
    """Write one line on stderr (above any running bar) unless progress is off."""
    if notes_on(progress):
        _note(text)


class Bar:
    """A progress bar with a total that also estimates, once, how long the whole stage takes.

    Use as a context manager (or call :meth:`close`); :meth:`update` advances it. ``estimate_after``
    seconds after the first update (or at the first update that brings that much time), one line
    "DESC: about T for TOTAL UNITs (from the first N)" is written, unless the stage is nearly done.
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "item", enabled: bool = True,
                 estimate_after: float = 2.0, leave: bool = False):
        from tqdm.auto import tqdm

        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.notes = notes_on(enabled)
        self._estimate_after = estimate_after
        self._estimated = False
        self._t0 = time.perf_counter()
        self._tqdm = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave,
                          dynamic_ncols=True, disable=not _draw_bars(enabled))
        self.estimate: float | None = None   # the estimated seconds for the whole stage, once made

    def update(self, n: int = 1) -> None:
        self.n += n
        self._tqdm.update(n)
        if not self._estimated and self.total:
            elapsed = time.perf_counter() - self._t0
            if elapsed >= self._estimate_after and 0 < self.n < self.total:
                self._estimated = True
                self.estimate = elapsed * self.total / self.n
                if self.notes and self.n < 0.8 * self.total:
                    units = self.unit if self.total == 1 else self.unit + "s"
                    _note(f"{self.desc}: about {format_seconds(self.estimate)} for {self.total:,} "
                          f"{units} (from the first {self.n:,})")

    def set_postfix_str(self, text: str) -> None:
        self._tqdm.set_postfix_str(text)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    def close(self) -> None:
        self._tqdm.close()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None, *, desc: str, unit: str = "item", enabled: bool = True,
        estimate_after: float = 2.0) -> Bar:
    """A :class:`Bar` on stderr with ``total`` steps of ``unit``; silent when not ``enabled``."""
    return Bar(total, desc=desc, unit=unit, enabled=enabled, estimate_after=estimate_after)


def track(iterable: Iterable, *, desc: str, total: int | None = None, unit: str = "step",
          enabled: bool = True) -> Iterable:
    """Iterate ``iterable`` with a :func:`bar` (``total`` defaults to ``len(iterable)``).

    Example:
        >>> [x * 2 for x in track([1, 2, 3], desc="double", enabled=False)]
        [2, 4, 6]
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with bar(total, desc=desc, unit=unit, enabled=enabled) as b:
        for item in iterable:
            yield item
            b.update(1)
