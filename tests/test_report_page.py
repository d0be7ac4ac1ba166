"""Report pages from known numbers: readings state those numbers, strings are escaped, the page
is self-contained, and headless Chromium renders every section with no console errors."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest

from layerscope.report import sections as S
from layerscope.report.browser import check_report, find_chromium
from layerscope.report.page import Page
from layerscope.report.render import render_html, write_atomic

EVIL = '<script>window.__layerscope_injected = true</script>'
LAYERS = ["embeddings", "block 0", "block 1", "block 2"]


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.arange(16).reshape(4, 4))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def every_section():
    rng = np.random.default_rng(0)
    anatomy = S.anatomy_section(
        "tiny" + EVIL, {"blocks": 3, "sublayers": 9, "modules": 14}, {"blocks": "the encoder's blocks"},
        [{"index": i, "name": n + EVIL, "role": "block", "params": p, "flops": f}
         for i, (n, p, f) in enumerate(zip(LAYERS, [100, 300, 300, 300], [0, 10, 10, 40]))],
        total_params=1000, total_flops=60)
    probes = S.probes_section(LAYERS, {
        "sentiment": {"score": [0.1, 0.5, 0.7, 0.6], "metric": "R²", "lo": [0, 0.4, 0.66, 0.5],
                      "hi": [0.2, 0.6, 0.74, 0.64], "baseline": 0.0, "control": [0.05, 0.1, 0.1, 0.1],
                      "n_test": 400, "kind": "meaning"},
        "length" + EVIL: {"score": [0.9, 0.8, 0.7, 0.6], "metric": "accuracy", "baseline": 0.3},
    })
    m = rng.uniform(0.2, 0.9, (4, 4))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    similarity = S.similarity_section(LAYERS, m.tolist())
    importance = S.importance_section(LAYERS[1:], [0.2, 0.05, 0.4], "1 − cos", baseline=0.0,
                                      block_influence=[0.3, 0.1, 0.5],
                                      curve={"influence": [0.1, 0.3], "last blocks": [0.4, 0.6]})
    activations = S.activations_section(LAYERS, mean=[0, 0.1, 0.2, 0.3], std=[1, 2, 3, 4],
                                        sparsity=[0, 0.1, 0.0, 0.0], nonfinite=[0, 0, 3, 0])
    pts = rng.normal(size=(30, 2)).tolist()
    pictures = S.pictures_section(
        [{"layer": "block 2", "method": "pca", "points": pts, "labels": ["a" + EVIL, "b"] * 15,
          "hover": [EVIL] * 30, "reading": "Two groups " + EVIL}],
        images=[{"title": "feature maps", "png": _png(), "reading": "4 channels."}])
    lens = S.lens_section(LAYERS, kl=[5, 3, 0.5, 0], accuracy=[0.1, 0.2, 0.3, 0.35], prompt=EVIL,
                          top_tokens=[["a", EVIL], ["b", "c"], ["d", "e"], ["f", "g"]])
    training = S.training_section([0, 10, 20], {"block 0": [1.0, 0.5, 0.2], "block 1": [2.0, 1.0, 0.8]},
                                  loss=[2.3, 1.0, 0.5], flags=["vanishing at block 0"])
    return [anatomy, probes, similarity, importance, activations, pictures, lens, training]


def test_readings_state_the_numbers():
    anatomy, probes, similarity, importance, activations, *_ = every_section()
    assert "3 blocks, 9 sublayers, 14 modules and 1,000 parameters" in anatomy.findings[0]
    assert probes.findings[0].startswith("Sentiment is best decoded at block 1: 0.70 [0.66, 0.74] "
                                         "against baseline 0.00")
    assert "random-feature control 0.1" in probes.findings[0]
    assert "Removing block 2 hurts most (1 − cos 0.4" in importance.findings[0]
    assert "removing block 1 hurts least (0.05)" in importance.findings[0]
    assert "Spearman ρ = 1" in importance.findings[1]
    assert "block 1: 3" in activations.findings[2]
    assert activations.findings[0].startswith("Activation scale grows from 1 at embeddings to 4")


def test_page_is_self_contained_and_escaped(tmp_path):
    page = Page("report" + EVIL, [("model", EVIL)], ["headline " + EVIL], every_section())
    html = render_html(page)
    assert EVIL not in html and "&lt;script&gt;" in html
    # nothing is fetched: no src/href pointing outside the page
    outside_scripts = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert not re.search(r'(src|href)=["\']?(https?:)?//', outside_scripts)
    assert "Plotly" in html
    path = tmp_path / "index.html"
    write_atomic(path, html)
    assert path.read_text() == html
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    class Boom(str):
        def encode(self, *a):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "index.html", Boom("x"))
    assert list(tmp_path.iterdir()) == []


def _need_chromium():
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium not installed (CI installs it)")


@pytest.mark.browser
@pytest.mark.parametrize("width", [1200, 390])
def test_every_section_renders_in_chromium(tmp_path, width):
    _need_chromium()
    secs = every_section()
    page = Page("report" + EVIL, [("model", EVIL)], ["headline " + EVIL], secs)
    path = tmp_path / "index.html"
    write_atomic(path, render_html(page))
    shot = tmp_path / "shot.png"
    seen = check_report(path, screenshot=shot, width=width)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.requests == []
    assert seen.sections == [s.id for s in secs]
    n_charts = sum(1 for s in secs for f in s.figures if f.chart)
    assert seen.charts == n_charts and seen.charts_rendered == n_charts
    assert seen.images == seen.images_loaded == 1
    assert seen.injected is False
    assert seen.width_overflow <= 2
    assert shot.stat().st_size > 10_000
