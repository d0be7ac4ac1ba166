"""The report's output folder: refuse to write into a folder that holds something else.

A report folder holds ``index.html``, ``results.json`` and ``figures/``. Writing one over an
older report is fine (its ``index.html`` is removed first, so a run cut short never leaves the
old page looking like the new one); writing into a non-empty folder that is not a report is
refused, so a mistyped ``-o`` cannot scatter files among the user's own.

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
import shutil
from pathlib import Path

from layerscope.errors import LayerscopeError

FORMAT = "layerscope-report"
REPORT_FILES = {"index.html", "results.json", "figures"}


def is_report_dir(path: Path) -> bool:
    """True when ``path`` holds only what a report writes (and its results say so, if present)."""
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if not names <= REPORT_FILES:
        return False
    results = path / "results.json"
    if results.exists():
        try:
            return json.loads(results.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    return True


def prepare_out_dir(out_dir) -> Path:
    """Create ``out_dir`` (or clear an older report in it) and return it with ``figures/`` ready."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise LayerscopeError(f"output {str(path)!r} is a file, not a folder: pass another -o")
    if path.exists() and any(path.iterdir()) and not is_report_dir(path):
        raise LayerscopeError(
            f"output folder {str(path)!r} is not empty and does not hold a layerscope report: "
            f"pass another -o or empty it"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "index.html").unlink(missing_ok=True)
        (path / "results.json").unlink(missing_ok=True)
        shutil.rmtree(path / "figures", ignore_errors=True)
        (path / "figures").mkdir()
    except OSError as exc:
        raise LayerscopeError(f"cannot write the report to {str(path)!r}: {exc.strerror or exc}; "
                              f"pass another -o") from None
    return path
