"""The page model of a report: sections of figures, each with one computed sentence.

Sections are plain data built from analysis results (``sections.py``) and rendered by
``render.py``. Everything here is data; nothing touches a model.

Example:
    >>> sec = Section("anatomy", "Anatomy", ["6 blocks."])
    >>> _ = sec.add(Figure("params", "Parameters per layer", "Block 0 holds the most."))
    >>> [f.id for f in sec.figures]
    ['params']
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """A table of strings; ``numeric`` marks columns to right-align."""

    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)
    caption: str = ""

    def __post_init__(self) -> None:
        if not self.numeric:
            self.numeric = [False] * len(self.columns)


@dataclass
class Figure:
    """One picture with the sentence that reads it: an interactive chart, a PNG, or a table."""

    id: str
    title: str
    reading: str
    chart: dict | None = None
    image_png: bytes | None = None
    table: Table | None = None
    alt: str = ""


@dataclass
class Section:
    """A titled part of the report; ``findings`` are sentences computed from this run."""

    id: str
    title: str
    findings: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    note: str = ""

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


@dataclass
class Page:
    """The whole report: a title, run facts, headline findings and the sections in order."""

    title: str
    facts: list[tuple[str, str]]
    headline: list[str]
    sections: list[Section]
    generated: str = ""
