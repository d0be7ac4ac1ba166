"""The report's output folder: claimed before the work, and only the report's own files replaced.

A report folder holds ``index.html``, ``results.json`` and ``figures/``, and the marker
``.layerscope.json`` (see :mod:`layerscope.outputs`) listing the files the last report wrote.
A new report into it removes exactly those files first (so a run cut short never leaves the old
page looking like the new one) and nothing else: a user's ``figures/myplot.png`` stays. A folder
holding anything else is refused unless ``force=True``; a report written before folders were
marked is recognised by its ``results.json``.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "rep"
    >>> prepare_out_dir(d).name
    'rep'
    >>> (d / "figures").is_dir()
    True
"""

from __future__ import annotations

import json
from pathlib import Path

from layerscope.errors import LayerscopeError
from layerscope.outputs import check_dir, claim_dir, note_written, remove_written

FORMAT = "layerscope-report"
KIND = "report"
REPORT_FILES = {"index.html", "results.json", "figures"}


def _legacy_figures(path: Path) -> list[str] | None:
    """The figures of a report written before markers, or None when ``path`` is not one."""
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if not names <= REPORT_FILES:
        return None
    try:
        results = json.loads((path / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("format") != FORMAT:
        return None
    figures = results.get("figures") or []
    return [f for f in figures if isinstance(f, str) and f.startswith("figures/") and ".." not in f]


def _older_report(path: Path):
    figures = _legacy_figures(path)
    return None if figures is None else ["index.html", "results.json", *figures]


def check_out_dir(out_dir, *, force: bool = False) -> Path:
    """Check, before any work, that a report may be written to ``out_dir`` (creates nothing)."""
    return check_dir(out_dir, KIND, force=force, recognise=_older_report)


def prepare_out_dir(out_dir, *, force: bool = False) -> Path:
    """Claim ``out_dir`` for a report, remove the files the previous report there wrote, and
    return it with ``figures/`` ready."""
    path = Path(out_dir).expanduser()
    claim_dir(path, KIND, force=force, recognise=_older_report)
    try:
        remove_written(path)
        (path / "figures").mkdir(exist_ok=True)
    except OSError as exc:
        raise LayerscopeError(f"cannot write the report to {str(path)!r}: {exc.strerror or exc}; "
                              f"pass another -o") from None
    return path


def record_report_files(out_dir, files) -> None:
    """Note the files a report wrote (relative to ``out_dir``) so the next report replaces them."""
    note_written(out_dir, files)
