"""Pictures of layers: PCA against numpy's SVD, t-SNE maps, heatmaps and CNN feature maps
against direct forwards, one shared pass for several analyses, the embed CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from layerscope.analyses.combined import analyze
from layerscope.analyses.pictures import activation_heatmap, embed, feature_maps
from layerscope.data import Dataset
from layerscope.errors import LayerscopeError


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5))


def test_pca_coordinates_equal_numpy_svd_and_labels_follow_items():
    net = _net()
    X = torch.randn(80, 6)
    y = (X[:, 0] > 0).long()
    res = embed(net, Dataset("t", X, y, "tensor", "classification"), method="pca", granularity="modules")
    with torch.no_grad():
        first = net[0](X).double().numpy()
    xy = np.asarray(res.coords[res.layers[0]])
    centred = first[res.indices] - first[res.indices].mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    ref = u[:, :2] * s[:2]
    signs = np.sign((xy * ref).sum(0))
    np.testing.assert_allclose(xy, ref * signs, atol=1e-5)
    np.testing.assert_allclose(res.explained_variance[res.layers[0]], (s[:2] ** 2 / (s**2).sum()), atol=1e-6)
    assert res.labels == y[res.indices].tolist()
    assert "PCA of 2 layers on 80 of 80 items" in res.summary()
    fig = res.plot()
    assert len(fig.axes) >= 2


def test_tsne_map_on_a_sample():
    X = torch.cat([torch.randn(40, 6) + 4, torch.randn(40, 6) - 4])
    res = embed(_net(), X, method="tsne", sample=50, layers="0", granularity="modules")
    xy = np.asarray(res.coords[res.layers[0]])
    assert xy.shape == (50, 2) and np.isfinite(xy).all() and res.seen == 80
    side = np.asarray(res.indices) < 40
    gap = np.linalg.norm(xy[side].mean(0) - xy[~side].mean(0))
    assert gap > 2 * max(xy[side].std(0).max(), xy[~side].std(0).max())  # the two clusters stay apart
    with pytest.raises(LayerscopeError, match="unknown method"):
        embed(_net(), X, method="umap")


def test_heatmap_holds_the_most_variable_units_of_the_layer():
    net = _net()
    X = torch.randn(30, 6)
    res = activation_heatmap(net, X, 0, items=30, units=4, granularity="modules")
    with torch.no_grad():
        h = net[0](X).numpy()
    top = np.argsort(-h.var(0))[:4]
    assert res.units == top.tolist() and res.indices == list(range(30))
    np.testing.assert_allclose(np.asarray(res.values), h[:, top].T, atol=1e-6)
    assert res.plot() is not None


def test_cnn_feature_maps_equal_the_conv_output():
    from layerscope.models import load_model

    cnn = load_model("cnn")
    image = torch.rand(1, 28, 28)
    res = feature_maps(cnn, image, "blocks.0.conv", channels=[0, 3])
    with torch.no_grad():
        direct = cnn.module.get_submodule("blocks.0.conv")(image[None])[0]
    np.testing.assert_allclose(np.asarray(res.maps), direct[[0, 3]].numpy(), atol=1e-6)
    auto = feature_maps(cnn, image, "blocks.0.conv", max_channels=4)
    means = direct.mean((1, 2)).numpy()
    assert auto.channels == np.argsort(-means, kind="stable")[:4].tolist()
    with pytest.raises(LayerscopeError, match="out of range"):
        feature_maps(cnn, image, "blocks.0.conv", channels=[999])
    with pytest.raises(LayerscopeError, match="not \\(1, C, H, W\\)"):
        feature_maps(cnn, image, "head")
    assert len(auto.plot().axes) >= 4


def test_one_pass_gives_the_same_results_as_separate_runs():
    from layerscope.analyses.probe import probe
    from layerscope.analyses.similarity import similarity

    net = _net()
    X = torch.randn(150, 6)
    ds = Dataset("t", X, (X[:, 1] > 0).long(), "tensor", "classification")
    out = analyze(net, ds, probe="labels", similarity=True, embed="pca", granularity="modules",
                  batch_size=40)
    assert out.n_batches == 4 and out.n_items == 150
    alone = probe(net, ds, granularity="modules", batch_size=40, solver="auto")
    assert out.results["probe"].score == pytest.approx(alone.score)
    assert out.results["probe"].solver == alone.solver == "lbfgs"    # analyze and probe() share the default
    assert np.allclose(out.results["similarity"].cka, similarity(net, X, granularity="modules").cka, atol=1e-9)
    assert embed(net, ds, granularity="modules").coords == out.results["embed"].coords
    with pytest.raises(LayerscopeError, match="at least one analysis"):
        analyze(net, ds)


def test_cli_embed_on_minilm(capsys, tmp_path):
    from layerscope.cli.app import main

    png = tmp_path / "maps.png"
    code = main(["embed", "minilm", "sentences", "--layers", "0,5", "--method", "pca", "--limit", "60",
                 "--max-length", "32", "--plot", str(png), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and png.stat().st_size > 1000
    assert out["layers"] == ["encoder.layer.0", "encoder.layer.5"] and len(out["coords"]["encoder.layer.0"]) == 60
    assert len(out["labels"]) == 60
    assert main(["embed", "minilm", "sentences", "--method", "umap"]) == 2
