"""`layerscope report`: the folder protocol, PNG copies of the charts, and real reports checked
against independent computations and in headless Chromium."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from layerscope.errors import LayerscopeError
from layerscope.report import charts
from layerscope.report.browser import find_chromium
from layerscope.report.outdir import prepare_out_dir
from layerscope.report.png import chart_png

PNG = b"\x89PNG\r\n\x1a\n"
needs_chromium = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                    reason="no chromium here (CI installs it)")


# --- the output folder ---------------------------------------------------------------------------


def test_out_dir_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(LayerscopeError, match="not empty"):
        prepare_out_dir(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "mine"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LayerscopeError, match="is a file"):
        prepare_out_dir(f)


def test_out_dir_clears_an_older_report_first(tmp_path):
    d = prepare_out_dir(tmp_path / "r")
    (d / "index.html").write_text("<html>old</html>")
    (d / "results.json").write_text(json.dumps({"format": "layerscope-report"}))
    (d / "figures" / "old.png").write_bytes(PNG)
    prepare_out_dir(d)
    assert not (d / "index.html").exists() and list((d / "figures").iterdir()) == []
    (d / "results.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LayerscopeError, match="does not hold a layerscope report"):
        prepare_out_dir(d)


# --- PNG copies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chart", [
    charts.line_chart(["0", "1", "2"], {"a": [0.1, None, 0.3], "b": [1, 2, 3]},
                      bands={"a": ([0, 0, 0.2], [0.2, 0.3, 0.4])}, dashed=["b"], marks={"a": 2}),
    charts.bar_chart(["x", "y"], {"p": [3, 4], "q": [1, 2]}, log_y=True),
    charts.heatmap([[1, 0.5], [0.5, 1]], ["0", "1"], ["0", "1"], zmin=0, zmax=1),
    charts.scatter_chart([[0, 1], [1, 0], [2, 2]], ["a", "b", "a"]),
    charts.scatter_chart([[0, 1], [1, 0], [2, 2]], [0.1, -2.0, 3.0], continuous=True),
])
def test_every_chart_kind_draws_as_png(chart):
    png = chart_png(chart, "title")
    assert png.startswith(PNG) and len(png) > 2000
