"""Notebook habits: short reprs, HTML tables, DataFrames, Python indexing idioms, a clean namespace."""

from __future__ import annotations

import builtins
import doctest
import inspect

import pytest
import torch
from torch import nn

import layerscope
from layerscope.errors import LayerscopeError, LayerscopeIndexError


def _probe_result():
    from layerscope.analyses.probe import probe
    from layerscope.data import Dataset

    torch.manual_seed(0)
    x = torch.randn(200, 4)
    ds = Dataset("toy", x, (x[:, 0] > 0).long(), "tensor", "classification")
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    return probe(net, ds)


def test_result_repr_is_one_short_line():
    res = _probe_result()
    text = repr(res)
    assert text.startswith("<ProbeResult: ") and "\n" not in text and len(text) <= 180
    assert "score=" not in text          # not the dataclass's field-by-field dump


def test_result_html_is_a_small_table_per_layer():
    res = _probe_result()
    html = res._repr_html_()
    assert html.count("<tr>") == len(res.layers) + 1
    assert "<th>score</th>" in html and f"<td>{res.layers[0]}</td>" in html
    assert f"{res.score[0]:.4g}" in html


def test_to_pandas_has_one_row_per_layer():
    pd = pytest.importorskip("pandas")
    res = _probe_result()
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == res.layers and df.index.name == "layer"
    assert df["score"].tolist() == res.score and df["ci_high"].tolist() == res.ci_high


def test_to_pandas_without_pandas_is_a_clear_error(monkeypatch):
    real = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("no pandas")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(LayerscopeError, match="to_pandas\\(\\) needs pandas.*pip install pandas"):
        _probe_result().to_pandas()


def test_layers_index_errors_are_index_errors_with_the_same_message():
    net = nn.Sequential(*[nn.Linear(3, 3) for _ in range(6)])
    layers = layerscope.Layers(net)
    with pytest.raises(IndexError) as info:
        layers[10]
    assert isinstance(info.value, LayerscopeIndexError) and isinstance(info.value, LayerscopeError)
    assert str(info.value) == "layer 10 is out of range: Sequential has 6 blocks (0-5)"
    assert layers[-1].name == "5" and len(list(layers)) == 6
    assert [layer.name for layer in layers] == [str(i) for i in range(6)]
    with pytest.raises(IndexError):
        layers[-7]


def test_namespace_exports_only_the_public_api_each_with_an_example():
    public = [n for n in dir(layerscope) if not n.startswith("_")]
    assert sorted(public) == sorted(n for n in layerscope.__all__ if not n.startswith("_"))
    for name in layerscope.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(layerscope, name)
        doc = inspect.getdoc(obj) or ""
        assert ">>>" in doc, f"layerscope.{name} has no runnable example"
        finder = doctest.DocTestFinder(recurse=False)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        module = inspect.getmodule(obj)
        for test in finder.find(obj, name, globs=dict(vars(module))):
            runner.run(test)
        assert runner.failures == 0, f"the example of layerscope.{name} fails"
