"""Timed, announced stages of a report run, so a person sees what is happening and for how long.

Example:
    >>> st = Stages(progress=False)
    >>> with st.stage("anatomy"):
    ...     pass
    >>> list(st.seconds)
    ['anatomy']
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from layerscope.errors import LayerscopeError


class Stages:
    """Announce each stage on stderr as ``[i/total]``, time it, and keep why a stage was skipped."""

    def __init__(self, progress: bool = True, total: int | None = None):
        self.progress = progress
        self.total = total
        self.count = 0
        self._depth = 0
        self.seconds: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self._console = None
        if progress:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)

    def say(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text)

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        from rich.markup import escape

        nested = self._depth > 0   # a part of a stage (e.g. similarity inside the main pass)
        if not nested:
            self.count += 1
        step = (f"[{self.count}/{max(self.total, self.count)}] " if self.total and not nested else "")
        self.say(("  " if nested else "") + f"[bold]▸ {escape(step)}{escape(name)}[/bold]"
                 + (f" [dim]{escape(detail)}[/dim]" if detail else ""))
        t0 = time.perf_counter()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            took = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            if took >= 1.0:
                from layerscope.progress import format_seconds

                self.say(f"  [dim]{escape(name)}: {format_seconds(took)}[/dim]")

    @contextmanager
    def optional(self, name: str, detail: str = ""):
        """A stage whose bad-input errors skip the section (with the reason kept) instead of the run."""
        try:
            with self.stage(name, detail):
                yield
        except LayerscopeError as exc:
            self.skipped[name] = str(exc)
            self.say(f"  [yellow]skipped {name}:[/yellow] {exc}")
