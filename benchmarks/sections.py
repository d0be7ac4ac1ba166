"""One section of BENCHMARKS.md per benchmark script: written in place, the others kept.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "BENCHMARKS.md"
    >>> write_section(path, "## A", "## A\\n\\nold")
    >>> write_section(path, "## B", "## B\\n\\nb")
    >>> write_section(path, "## A", "## A\\n\\nnew")
    >>> print(path.read_text())
    # Benchmarks
    <BLANKLINE>
    Measured by hand with the scripts in `benchmarks/`.
    <BLANKLINE>
    ## A
    <BLANKLINE>
    new
    <BLANKLINE>
    ## B
    <BLANKLINE>
    b
    <BLANKLINE>
"""

from __future__ import annotations

from pathlib import Path

HEADER = "# Benchmarks\n\nMeasured by hand with the scripts in `benchmarks/`.\n"


def write_section(path: str | Path, heading: str, text: str) -> None:
    """Replace the section starting at the line ``heading`` (up to the next ``## ``) with
    ``text``, or append ``text`` when there is none; create the file when missing."""
    path = Path(path)
    old = path.read_text() if path.exists() else HEADER
    body = text.rstrip("\n") + "\n"
    start = old.find(heading + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + body
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + body + (old[end:] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")
