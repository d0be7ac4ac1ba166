"""Unbiased CKA: against a direct n×n numpy computation, its invariances, edge cases, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import rbf_kernel

from layerscope.analyses.similarity import (CKAStats, linear_cka, rbf_gram, similarity,
                                            unbiased_hsic)
from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reservoir
from layerscope.sweep import sweep


def direct_hsic(K, L):
    """HSIC₁ of Song et al. (2012), eq. 5, written out with n × n matrices."""
    n = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


def direct_cka(X, Y):
    K, L = X @ X.T, Y @ Y.T
    return direct_hsic(K, L) / np.sqrt(direct_hsic(K, K) * direct_hsic(L, L))


def _layers(n=120, seed=0):
    g = np.random.default_rng(seed)
    a = g.normal(size=(n, 7)) + 5.0
    b = np.tanh(a @ g.normal(size=(7, 5))) + g.normal(size=(n, 5)) * 0.3
    c = g.normal(size=(n, 3))
    return {"a": a, "b": b, "c": c}


def test_streamed_batches_and_merges_equal_direct_numpy():
    acts = _layers()
    whole, first, second = CKAStats(), CKAStats(), CKAStats()
    for start in range(0, 120, 25):
        batch = {k: torch.from_numpy(v[start:start + 25]) for k, v in acts.items()}
        whole.update(batch, BatchInfo(start, len(batch["a"])))
        (first if start < 50 else second).update(batch, BatchInfo(start, len(batch["a"])))
    names = list(acts)
    direct = np.array([[direct_hsic(acts[i] @ acts[i].T, acts[j] @ acts[j].T) for j in names] for i in names])
    np.testing.assert_allclose(whole.hsic(), direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(first.merge(second).hsic(), direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(second.merge(first).hsic(), direct, rtol=1e-9, atol=1e-12)
    # with projections (fixed by the seed) the merge is exact as well
    pw, pa, pb = CKAStats(max_width=6), CKAStats(max_width=6), CKAStats(max_width=6)
    for start in range(0, 120, 40):
        batch = {k: torch.from_numpy(v[start:start + 40]) for k, v in acts.items()}
        pw.update(batch, BatchInfo(start, 40))
        (pa if start == 0 else pb).update(batch, BatchInfo(start, 40))
    assert pw.projected
    np.testing.assert_allclose(pa.merge(pb).hsic(), pw.hsic(), rtol=1e-9)
    for i in names:
        for j in names:
            assert linear_cka(acts[i], acts[j]) == pytest.approx(max(direct_cka(acts[i], acts[j]), 0.0), abs=1e-9)


def test_identity_orthogonal_and_scaling_invariance():
    X = np.random.default_rng(1).normal(size=(200, 12))
    Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X @ Q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, 7.5 * X) == pytest.approx(1.0, abs=1e-12)
    Y = np.tanh(X[:, :6]) + np.random.default_rng(3).normal(size=(200, 6))
    assert linear_cka(X @ Q * 0.01, Y) == pytest.approx(linear_cka(X, Y), abs=1e-10)


def test_independent_random_features_are_near_zero():
    g = np.random.default_rng(4)
    vals = [linear_cka(g.normal(size=(4000, 10)), g.normal(size=(4000, 10))) for _ in range(3)]
    assert max(vals) < 0.01
    # the biased estimator would give about d/n-scale positive values; the unbiased one can dip below 0
    raw = CKAStats()
    raw.update({"x": torch.from_numpy(g.normal(size=(30, 20))), "y": torch.from_numpy(g.normal(size=(30, 20)))},
               BatchInfo(0, 30))
    h = raw.hsic()
    assert abs(h[0, 1] / np.sqrt(h[0, 0] * h[1, 1])) < 0.2


def test_constant_features_never_nan_and_few_items_refused():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[2].weight.zero_()
    res = similarity(net, torch.randn(40, 3), granularity="modules")
    m = np.asarray(res.cka)
    assert np.isfinite(m).all() and res.degenerate == [res.layers[-1]]
    assert m[-1].tolist() == [0.0] * len(res.layers)
    assert linear_cka(np.ones((10, 3)), np.random.default_rng(0).normal(size=(10, 3))) == 0.0
    for n in (1, 2, 3):
        with pytest.raises(LayerscopeError, match="at least 4 items"):
            linear_cka(np.random.default_rng(0).normal(size=(n, 3)), np.ones((n, 2)))
    with pytest.raises(LayerscopeError, match="at least 4 items"):
        similarity(net, torch.randn(3, 3))


def test_sweep_similarity_equals_direct_cka_of_layer_features():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8), torch.nn.ReLU())
    X = torch.randn(90, 5)
    res = similarity(net, X, granularity="modules", batch_size=16)
    keep = Reservoir(capacity=1000)
    run = sweep(net, X, reducers=[keep], granularity="modules", progress=False)
    rows = keep.result().rows
    direct = np.array([[max(direct_cka(rows[a].astype(float), rows[b].astype(float)), 0) for b in run.layers]
                       for a in run.layers])
    np.testing.assert_allclose(res.cka, np.clip(direct, 0, 1), atol=1e-9)
    two = similarity(net, X, other=net, granularity="modules", chunk=40)
    np.testing.assert_allclose(two.cka, res.cka, atol=1e-9)
    assert two.n == 90 and "chunks" in two.estimator and "best match per row" in two.summary()
    small = similarity(net, X, granularity="modules", max_width=8)
    assert "projection" in small.estimator and np.allclose(np.diag(small.cka), 1.0)


def test_rbf_kernel_on_a_sample():
    x = np.random.default_rng(5).normal(size=(50, 4))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    sigma = np.median(d[np.triu_indices(50, 1)])
    np.testing.assert_allclose(rbf_gram(x), rbf_kernel(x, gamma=1 / (2 * sigma**2)), atol=1e-12)
    K = rbf_gram(x)
    assert unbiased_hsic(K, K) == pytest.approx(direct_hsic(K, K))
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    res = similarity(net, torch.from_numpy(x).float(), kernel="rbf", sample=30, granularity="modules")
    assert res.kernel == "rbf" and res.n == 30 and np.allclose(np.diag(res.cka), 1.0)
    with pytest.raises(LayerscopeError, match="unknown kernel"):
        similarity(net, torch.randn(10, 4), kernel="cosine")


def test_cli_similarity_on_minilm(capsys, tmp_path):
    from layerscope.cli.app import main

    png = tmp_path / "cka.png"
    code = main(["similarity", "minilm", "sentences", "--limit", "200", "--max-length", "32",
                 "--json", "--plot", str(png)])
    out = json.loads(capsys.readouterr().out)
    m = np.asarray(out["cka"])
    assert code == 0 and png.stat().st_size > 1000 and out["n"] == 200 and m.shape == (6, 6)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    assert m[0, 1] > m[0, 5]  # neighbours alike, the ends less so
    assert main(["similarity", "minilm", "sentences", "--kernel", "cosine"]) == 2
