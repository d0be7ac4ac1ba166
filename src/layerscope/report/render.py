"""Render a :class:`~layerscope.report.page.Page` to one self-contained HTML file.

Scripts, styles and images are inlined, so the page works offline and can be mailed as one
file. Strings from the user's model or data go through Jinja's autoescaping; chart data is
embedded as JSON with ``<``, ``>`` and ``&`` escaped (:func:`charts.figure_json`). The file is
written under a temporary name and renamed, so an interrupted run never leaves an
``index.html`` that looks complete.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import jinja2

from .charts import figure_json, plotly_js
from .page import Page


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("layerscope.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["figure_json"] = figure_json
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


def _inline_script(js: str) -> str:
    # a literal "</script" inside inlined code would end the element early
    return js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def render_html(page: Page) -> str:
    """The page as one HTML string."""
    needs_plotly = any(f.chart for s in page.sections for f in s.figures)
    template = _environment().get_template("report.html.j2")
    return template.render(
        page=page,
        plotly_js=jinja2.utils.markupsafe.Markup(_inline_script(plotly_js())) if needs_plotly else "",
    )


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
