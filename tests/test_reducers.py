"""Reducers against numpy on the concatenated data, and the merge property merge(a, b) == run(a + b)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerscope.errors import LayerscopeError
from layerscope.reducers import (
    BatchInfo,
    Covariance,
    CrossCovariance,
    LabelCollector,
    Moments,
    NonFinite,
    Reservoir,
)


def _data(seed=0, n=97, d=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64).float() * 3 + 1
    a[a.abs() < 0.3] = 0.0  # some exact zeros for sparsity
    b = torch.randn(n, 3, generator=g) @ torch.randn(3, 4, generator=g)
    return {"a": a, "b": b}


def _run(reducer, data, start=0, batch=13, labels=None):
    n = next(iter(data.values())).shape[0]
    for i in range(0, n, batch):
        acts = {k: v[i:i + batch] for k, v in data.items()}
        lab = labels[i:i + batch] if labels is not None else None
        reducer.update(acts, BatchInfo(start + i, acts["a"].shape[0], lab))
    return reducer


def _split(data, k):
    return {n: v[:k] for n, v in data.items()}, {n: v[k:] for n, v in data.items()}


def test_moments_match_numpy_and_merge_equals_one_run():
    data = _data()
    whole = _run(Moments(), data).result()
    first, second = _split(data, 40)
    merged = _run(Moments(), first).merge(_run(Moments(), second, start=40)).result()
    for name in ("a", "b"):
        x = data[name].double().numpy()
        for res in (whole, merged):
            np.testing.assert_allclose(res.unit_mean[name], x.mean(0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(res.unit_std[name], x.std(0), rtol=1e-10)
    i = whole.layers.index("a")
    a = data["a"].numpy()
    assert whole.min[i] == pytest.approx(a.min()) and whole.max[i] == pytest.approx(a.max())
    assert whole.sparsity[i] == pytest.approx((a == 0).mean())
    assert whole.nonfinite == [0, 0]
    for key in ("count", "mean", "std", "min", "max", "sparsity", "nonfinite"):
        np.testing.assert_allclose(getattr(merged, key), getattr(whole, key), rtol=1e-10)


def test_moments_count_and_exclude_nonfinite():
    data = _data()
    x = data["a"].clone()
    x[3, 1] = float("nan")
    x[10, 1] = float("inf")
    x[11, 2] = float("-inf")
    res = _run(Moments(), {"a": x}).result()
    ref = x.double().numpy().copy()
    ref[~np.isfinite(ref)] = np.nan
    np.testing.assert_allclose(res.unit_mean["a"], np.nanmean(ref, 0), rtol=1e-12)
    np.testing.assert_allclose(res.unit_std["a"], np.nanstd(ref, 0), rtol=1e-10)
    assert res.nonfinite == [3]
    assert np.isfinite(res.max[0]) and res.max[0] == pytest.approx(np.nanmax(ref))
    assert "3 non-finite values excluded" in res.summary()


def test_covariance_matches_numpy_and_merges():
    data = _data(1)
    whole = _run(Covariance(), data).result()
    first, second = _split(data, 58)
    merged = _run(Covariance(), first).merge(_run(Covariance(), second)).result()
    for name in ("a", "b"):
        ref = np.cov(data[name].double().numpy().T)
        np.testing.assert_allclose(whole.cov[name], ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(merged.cov[name], ref, rtol=1e-10, atol=1e-12)
    # b has rank 3 in 4 dimensions: its participation ratio is below 3
    assert whole.effective_rank[whole.layers.index("b")] < 3.0


def test_covariance_drops_rows_with_nonfinite_values():
    data = _data(2)
    x = data["a"].clone()
    x[5, 0] = float("nan")
    res = _run(Covariance(), {"a": x}).result()
    keep = np.isfinite(x.numpy()).all(1)
    np.testing.assert_allclose(res.cov["a"], np.cov(x.double().numpy()[keep].T), rtol=1e-10)
    assert res.dropped_rows == [1] and res.count == [int(keep.sum())]


def test_cross_covariance_matches_numpy_and_merges():
    data = _data(3)
    ref = np.cov(np.hstack([data["a"].double().numpy(), data["b"].double().numpy()]).T)[:5, 5:]
    whole = _run(CrossCovariance("a", "b"), data).result()
    first, second = _split(data, 7)
    merged = _run(CrossCovariance("a", "b"), first).merge(_run(CrossCovariance("a", "b"), second)).result()
    np.testing.assert_allclose(whole.cross, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(merged.cross, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(LayerscopeError, match="needs layer 'c'"):
        CrossCovariance("a", "c").update(data, BatchInfo(0, 97))


def test_nonfinite_counts_and_merge():
    x = torch.zeros(20, 3)
    x[1, 0] = float("nan")
    x[2, :] = float("inf")
    x[15, 2] = float("-inf")
    whole = _run(NonFinite(), {"a": x}).result()
    assert (whole.nan, whole.posinf, whole.neginf, whole.rows, whole.values) == ([1], [3], [1], [3], [60])
    first, second = _split({"a": x}, 10)
    merged = _run(NonFinite(), first).merge(_run(NonFinite(), second)).result()
    assert merged.to_dict() == whole.to_dict()


def test_reservoir_exact_when_everything_fits_and_merge_keeps_all():
    data = _data(4, n=30)
    labels = torch.arange(30) % 3
    whole = _run(Reservoir(capacity=50, seed=1), data, labels=labels).result()
    assert sorted(whole.indices) == list(range(30))
    first, second = _split(data, 12)
    merged = _run(Reservoir(capacity=50), first, labels=labels[:12]).merge(
        _run(Reservoir(capacity=50), second, start=12, labels=labels[12:])).result()
    assert sorted(merged.indices) == list(range(30))
    for res in (whole, merged):
        order = np.argsort(res.indices)
        np.testing.assert_array_equal(res.rows["a"][order], data["a"].numpy())
        assert [res.labels[i] for i in order] == labels.tolist()


def _inclusion(capacity, n, trials, merged):
    counts = np.zeros(n)
    x = {"a": torch.arange(n, dtype=torch.float32).reshape(n, 1)}
    for seed in range(trials):
        if merged:
            a, b = _split(x, n // 3)
            r = _run(Reservoir(capacity, seed=seed), a, batch=7).merge(
                _run(Reservoir(capacity, seed=10_000 + seed), b, start=n // 3, batch=7))
        else:
            r = _run(Reservoir(capacity, seed=seed), x, batch=7)
        res = r.result()
        assert len(res.indices) == capacity and len(set(res.indices)) == capacity
        np.testing.assert_array_equal(res.rows["a"][:, 0], np.array(res.indices, dtype=np.float32))
        counts[res.indices] += 1
    return counts / trials


@pytest.mark.parametrize("merged", [False, True])
def test_reservoir_is_a_uniform_sample(merged):
    capacity, n, trials = 10, 60, 600
    freq = _inclusion(capacity, n, trials, merged)
    p = capacity / n
    # every item kept with probability k/n: binomial sd = sqrt(p(1-p)/trials) ~ 0.015
    assert np.abs(freq - p).max() < 5 * np.sqrt(p * (1 - p) / trials)
    # early and late items alike (Algorithm R's classic bug keeps the first ones too often)
    assert abs(freq[:20].mean() - freq[-20:].mean()) < 0.03


def test_label_collector_and_merge_refuses_other_kinds():
    lab = torch.arange(10)
    c = LabelCollector()
    c.update({}, BatchInfo(0, 4, lab[:4]))
    d = LabelCollector()
    d.update({}, BatchInfo(4, 6, lab[4:]))
    assert c.merge(d).result().tolist() == list(range(10))
    with pytest.raises(LayerscopeError, match="cannot merge"):
        Moments().merge(Covariance())
    with pytest.raises(LayerscopeError, match="unknown view"):
        Moments(view="avg")


def test_moments_result_plots_and_serialises():
    res = _run(Moments(), _data()).result()
    d = res.to_dict()
    assert d["kind"] == "MomentsResult" and d["layers"] == ["a", "b"] and "unit_mean" not in d
    fig = res.plot()
    assert len(fig.axes) == 1
