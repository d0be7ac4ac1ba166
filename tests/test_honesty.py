"""Honest words and readable pictures: findings never name a peak the intervals do not support,
wide-range quantities get log axes, outlier dimensions that decide a PCA are named, class labels
get a qualitative palette with a legend, lens tables show tokens, and maps run only their items."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layerscope.analyses.claims import items_to_separate, peak_claim
from layerscope.report import sections as S
from layerscope.report.charts import bar_chart, line_chart, wide_range

# the SmolLM2 report's bigram-shift curve: 0.62 at layers.18 against 0.5, intervals over 0.5
SMOL_LAYERS = [f"layers.{i}" for i in range(0, 30, 3)]
SMOL_SCORE = [0.50, 0.52, 0.55, 0.57, 0.58, 0.60, 0.62, 0.59, 0.56, 0.55]


def _wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval, written out (independent of the probe module's)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _smol(n: int):
    lo, hi = zip(*(_wilson(p, n) for p in SMOL_SCORE))
    return list(lo), list(hi)


def test_underpowered_headline_names_no_peak():
    lo, hi = _smol(40)
    sec = S.probes_section(SMOL_LAYERS, {"bigram shift": {
        "score": SMOL_SCORE, "metric": "accuracy", "lo": lo, "hi": hi, "baseline": 0.5,
        "n_test": 40, "control": [0.5] * len(SMOL_LAYERS), "kind": "syntax"}})
    finding = sec.findings[0]
    assert "best decoded" not in finding
    assert finding.startswith("No layer decodes bigram shift above the baseline (accuracy 0.50) "
                              "with 40 held-out items")
    assert "would need about" in finding and "layers.18" in finding
    # the peak is not starred on the chart either
    assert not any(t.get("name", "").endswith("peak") for t in sec.figures[0].chart["data"])


def test_items_needed_is_where_wilson_intervals_separate():
    """The estimate n·(h/d)² is checked against Wilson intervals recomputed at that size."""
    lo, hi = _smol(40)
    claim = peak_claim("bigram shift", SMOL_LAYERS, SMOL_SCORE, lo, hi, baseline=0.5, n_test=40)
    assert claim.status == "none" and claim.best == 6
    n = claim.items_needed
    h = SMOL_SCORE[6] - lo[6]
    assert n == math.ceil(40 * (h / 0.12) ** 2 - 1e-9)
    # at about n items the same accuracy's interval clears 0.5; at half of it, it does not
    assert _wilson(0.62, int(n * 1.1))[0] > 0.5
    assert _wilson(0.62, n // 2)[0] < 0.5


def test_uncertain_peak_says_so_and_a_clear_one_is_named():
    layers = ["block 0", "block 1", "block 2", "block 3", "block 4", "block 5"]
    score = [0.70, 0.78, 0.80, 0.79, 0.78, 0.795]   # sentiment: block 5 at 500 items, block 2 at 2,000
    lo, hi = zip(*(_wilson(p, 100) for p in score))
    claim = peak_claim("sentiment", layers, score, lo, hi, baseline=0.5, n_test=100)
    assert claim.status == "uncertain" and "peak is uncertain" in claim.sentence
    assert "best decoded" not in claim.sentence and claim.items_needed > 100
    # with far more items the same scores single out block 2
    lo, hi = zip(*(_wilson(p, 200_000) for p in score))
    clear = peak_claim("sentiment", layers, score, lo, hi, baseline=0.5, n_test=200_000)
    assert clear.status == "peak" and clear.sentence.startswith("sentiment is best decoded at block 2")
    assert items_to_separate(100, 0.1, 0.0) is None


def test_probe_result_summary_of_random_labels_overclaims_nothing():
    from layerscope.analyses.probe import probe
    from layerscope.data import Dataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 6, generator=g)
    y = torch.randint(0, 2, (150,), generator=g)        # labels unrelated to the inputs
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    res = probe(net, Dataset("noise", x, y, "tensor", "classification"))
    text = res.summary()
    assert "peaks at" not in text and "best decoded" not in text
    assert text.startswith("labels is decoded") or text.startswith("no layer decodes")


def test_wide_range_values_get_a_log_axis():
    ppl = [163.0, 1.9e5, 2.1e4, 900.0]
    assert wide_range(ppl) and not wide_range([0.5, 0.9])
    bars = bar_chart(["0", "1", "2", "3"], {"perplexity": ppl})
    assert bars["layout"]["yaxis"].get("type") == "log"
    assert line_chart(["0", "1"], {"acc": [0.4, 0.6]})["layout"]["yaxis"].get("type") is None
    sec = S.importance_section(["b0", "b1", "b2", "b3"], ppl, "perplexity", baseline=20.0,
                               curve={"influence": [300.0, 5e4]})
    assert sec.figures[0].chart["layout"]["yaxis"]["type"] == "log"
    assert sec.figures[-1].chart["layout"]["yaxis"]["type"] == "log"


def test_png_of_a_wide_range_chart_uses_a_log_scale(monkeypatch):
    import matplotlib.axes

    from layerscope.report.png import chart_png

    scales = []
    real = matplotlib.axes.Axes.set_yscale
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale",
                        lambda self, v, **kw: (scales.append(v), real(self, v, **kw))[1])
    chart_png(line_chart(["0", "1", "2"], {"KL": [30.0, 2.0, 0.01]}), "kl")
    assert scales == ["log"]


def test_lens_kl_on_log_axis_and_table_headed_by_tokens():
    layers = ["embeddings", "layers.0", "layers.1", "layers.2"]
    sec = S.lens_section(layers, kl=[12.0, 6.0, 0.05, 0.0], accuracy=[0.01, 0.1, 0.3, 0.35],
                         prompt="The capital of France is",
                         top_tokens=[["a", "b", "c", "d", "e"]] * 4,
                         prompt_tokens=["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"])
    kl = next(f for f in sec.figures if f.id == "lens")
    assert kl.chart["layout"]["yaxis"]["type"] == "log"
    assert "KL is 0 at layers.2, not drawn" in kl.reading
    table = next(f for f in sec.figures if f.id == "top").table
    assert table.columns[1:] == ["The →", "␣capital →", "␣of →", "␣France →", "␣is →"]
    assert not any(c.startswith("pos ") for c in table.columns)


def _outlier_net():
    """A linear layer whose outputs 3 and 11 are 300× larger than the others (like the huge
    residual dimensions of transformer LMs)."""
    lin = torch.nn.Linear(8, 32)
    with torch.no_grad():
        lin.weight[3] *= 300
        lin.weight[11] *= 300
    return torch.nn.Sequential(lin, torch.nn.Identity())


def test_pca_dominated_by_outlier_dimensions_says_so():
    from layerscope.analyses.pictures import dominant_dimensions, embed

    torch.manual_seed(0)
    net = _outlier_net()
    x = torch.randn(300, 8)
    res = embed(net, x, method="pca", sample=300)
    first = res.layers[0]
    assert sum(res.explained_variance[first]) > 0.99
    assert sorted(d for d, _ in res.outliers[first]) == [3, 11]
    assert "outlier dimensions" in res.summary() and "3, 11" in res.summary().replace("11, 3", "3, 11")
    # independent check: the named dimensions hold most of the variance, by numpy
    out = net(x).detach().numpy()
    var = out.var(0)
    assert var[[3, 11]].sum() / var.sum() > 0.9
    assert dominant_dimensions(np.random.default_rng(0).normal(size=(300, 32))) == []


def test_report_pictures_name_outlier_dimensions(tmp_path):
    from layerscope.data import Dataset
    from layerscope.report.build import build_report

    torch.manual_seed(0)
    ds = Dataset("toy", torch.randn(120, 8), torch.randint(0, 3, (120,)), "tensor", "classification")
    res = build_report(_outlier_net(), ds, tmp_path / "r", progress=False, input_shape=(8,))
    assert any("outlier dimension" in f for f in res.findings) or \
        "outlier dimension" in (tmp_path / "r" / "index.html").read_text()


def test_class_labels_get_a_qualitative_palette_and_legend():
    import matplotlib

    from layerscope.analyses.pictures import EmbedResult

    rng = np.random.default_rng(0)
    labels = [int(v) for v in rng.integers(0, 3, 60)]
    res = EmbedResult(["l0"], "pca", {"l0": rng.normal(size=(60, 2)).tolist()}, list(range(60)),
                      labels, classes=["cat", "dog", "fish"])
    fig = res.plot()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "fish"]
    colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in fig.axes[0].collections}
    tab10 = {tuple(np.round(matplotlib.colormaps["tab10"](i), 3)) for i in range(3)}
    assert colours == tab10
    # continuous labels keep a colour bar
    cont = EmbedResult(["l0"], "pca", res.coords, res.indices, rng.normal(size=60).tolist())
    assert not cont.categorical()


def test_report_scatter_of_classes_has_a_legend():
    from layerscope.report.charts import CLASS_PALETTE, scatter_chart

    fig = scatter_chart([[0, 0], [1, 1], [2, 2]], ["a", "b", "c"])
    assert fig["layout"]["showlegend"] is True
    assert [t["marker"]["color"] for t in fig["data"]] == CLASS_PALETTE[:3]


def test_embed_runs_only_the_items_it_maps():
    from layerscope.analyses.pictures import embed

    seen = []
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    handle = net[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        x = torch.randn(5000, 4)
        res = embed(net, x, method="pca", sample=100, batch_size=64)
    finally:
        handle.remove()
    assert sum(seen) == 100
    assert res.seen == 5000 and len(res.indices) == 100 and len(set(res.indices)) == 100
    # the indices point at the right rows of the original data
    i = res.indices[0]
    first_layer = res.layers[0]
    assert max(res.indices) < 5000 and first_layer


def test_progress_bar_writes_one_estimate(capsys):
    from layerscope.progress import bar

    with bar(10, desc="toy", unit="item", estimate_after=0.0) as b:
        for _ in range(10):
            b.update(1)
    err = capsys.readouterr().err
    assert err.count("toy: about") == 1 and "for 10 items (from the first 1)" in err
    with bar(10, desc="quiet", enabled=False, estimate_after=0.0) as b:
        b.update(5)
    assert "quiet" not in capsys.readouterr().err


def test_limit_parsing_and_the_up_front_line(capsys):
    from layerscope.cli.limits import load_limited, parse_limit
    from layerscope.errors import LayerscopeError

    assert parse_limit(None, 2000) == 2000 and parse_limit("all", 2000) is None
    with pytest.raises(LayerscopeError, match="whole number of items or 'all'"):
        parse_limit("lots", 2000)
    with pytest.raises(LayerscopeError, match="at least 1"):
        parse_limit("0", 2000)
    ds = load_limited("sentences", None)
    assert len(ds) == 2000
    assert "using 2,000 of 23,703 items of sentences" in capsys.readouterr().err
    assert len(load_limited("sentences", "all")) == 23703
