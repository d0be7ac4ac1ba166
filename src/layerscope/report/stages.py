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
    """Announce each stage on stderr, time it, and keep why a stage was skipped."""

    def __init__(self, progress: bool = True):
        self.progress = progress
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
        self.say(f"[bold]▸ {name}[/bold]" + (f" [dim]{detail}[/dim]" if detail else ""))
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    @contextmanager
    def optional(self, name: str, detail: str = ""):
        """A stage whose bad-input errors skip the section (with the reason kept) instead of the run."""
        try:
            with self.stage(name, detail):
                yield
        except LayerscopeError as exc:
            self.skipped[name] = str(exc)
            self.say(f"  [yellow]skipped {name}:[/yellow] {exc}")
