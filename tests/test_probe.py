"""Probes against scikit-learn's Ridge / LinearDiscriminantAnalysis, controls, intervals, tasks, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from layerscope.analyses.probe import (LinearProbe, ProbeStats, RANDOM, bootstrap_r2, prepare_data,
                                       probe, random_features, split_items, wilson)
from layerscope.analyses.probe_tasks import bigram_shift, make_task
from layerscope.data import Dataset
from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reservoir
from layerscope.sweep import sweep


def _data(n=300, d=12, classes=None, seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, d)) * g.uniform(0.5, 3, size=d) + g.normal(size=d)
    w = g.normal(size=d)
    y = X @ w + g.normal(size=n)
    if classes:
        y = np.digitize(y, np.quantile(y, np.linspace(0, 1, classes + 1)[1:-1]))
    return X, y


@pytest.mark.parametrize("alpha", [0.1, 10.0, 300.0])
def test_regression_equals_sklearn_ridge_on_standardised_features(alpha):
    X, y = _data()
    sc = StandardScaler().fit(X[:200])
    ref = Ridge(alpha=alpha).fit(sc.transform(X[:200]), y[:200])
    ours = LinearProbe(alpha=alpha, task="regression").fit(X[:200], y[:200])
    np.testing.assert_allclose(ours.predict(X[200:]), ref.predict(sc.transform(X[200:])), atol=1e-6, rtol=1e-6)
    assert ours.score(X[200:], y[200:]) == pytest.approx(ref.score(sc.transform(X[200:]), y[200:]), abs=1e-6)


class _PlusIdentity:
    """A scikit-learn covariance estimator: the (biased) empirical covariance plus ``add`` · I."""

    def __init__(self, add):
        self.add = add

    def fit(self, X):
        Xc = X - X.mean(0)
        self.covariance_ = Xc.T @ Xc / len(X) + self.add * np.eye(X.shape[1])
        return self


def sklearn_lda(X, y, alpha):
    """scikit-learn's LDA on standardised features with covariance (S_W + alpha I) / n."""
    sc = StandardScaler().fit(X)
    est = _PlusIdentity(alpha / len(X))
    return sc, LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=est).fit(sc.transform(X), y)


@pytest.mark.parametrize("classes", [2, 4])
def test_classification_equals_sklearn_lda(classes):
    X, y = _data(classes=classes, seed=classes)
    sc, ref = sklearn_lda(X[:200], y[:200], 5.0)
    ours = LinearProbe(alpha=5.0).fit(X[:200], y[:200])
    np.testing.assert_array_equal(ours.predict(X[200:]), ref.predict(sc.transform(X[200:])))
    assert ours.score(X[200:], y[200:]) == pytest.approx(ref.score(sc.transform(X[200:]), y[200:]), abs=1e-12)
    if classes > 2:   # the class scores themselves
        np.testing.assert_allclose(ours.decision_function(X[200:]),
                                   ref.decision_function(sc.transform(X[200:])), rtol=1e-7, atol=1e-7)


def test_lda_does_not_mask_a_middle_class_where_one_hot_least_squares_does():
    g = np.random.default_rng(0)
    t = g.uniform(0, 3, 900)
    X = np.c_[t + 0.05 * g.normal(size=900), g.normal(size=(900, 3))]
    y = np.floor(t).astype(int)                  # three ordered classes along one direction
    ls = Ridge(alpha=1e-3).fit(X[:600], np.eye(3)[y[:600]])
    assert (ls.predict(X[600:]).argmax(1) == 1).mean() < 0.2     # the middle class is masked
    assert LinearProbe(alpha=1e-3).fit(X[:600], y[:600]).score(X[600:], y[600:]) > 0.9


def test_cross_validated_penalty_is_the_grid_minimum_of_fold_errors():
    X, y = _data(n=240, d=30, seed=3)
    p = LinearProbe(task="regression", alphas=[0.01, 1.0, 100.0, 1e4], cv="kfold", folds=3).fit(X, y)
    fold = split_items(np.arange(240), 0.0, 3, 0)
    errs = []
    for a in [0.01, 1.0, 100.0, 1e4]:
        e = 0.0
        for f in range(3):
            tr, te = fold != f, fold == f
            sc = StandardScaler().fit(X[tr])
            m = Ridge(alpha=a).fit(sc.transform(X[tr]), y[tr])
            e += ((m.predict(sc.transform(X[te])) - y[te]) ** 2).sum()
        errs.append(e / 240)
    np.testing.assert_allclose(p.cv_error_, errs, rtol=1e-8)
    assert p.alpha_ == [0.01, 1.0, 100.0, 1e4][int(np.argmin(errs))]


def test_generalised_cross_validation_equals_the_hat_matrix_formula():
    X, y = _data(n=150, d=40, seed=5)
    grid = [0.1, 3.0, 100.0, 3000.0]
    p = LinearProbe(task="regression", alphas=grid).fit(X, y)
    Xs = StandardScaler().fit_transform(X)
    Xc = Xs - Xs.mean(0)
    gcv = []
    for a in grid:
        H = Xc @ np.linalg.solve(Xc.T @ Xc + a * np.eye(40), Xc.T) + np.full((150, 150), 1 / 150)
        resid = y - H @ y
        gcv.append((resid @ resid / 150) / (1 - np.trace(H) / 150) ** 2)
    np.testing.assert_allclose(p.cv_error_, gcv, rtol=1e-8)
    assert p.alpha_ == grid[int(np.argmin(gcv))]
    ref = Ridge(alpha=p.alpha_).fit(Xs, y)
    np.testing.assert_allclose(p.predict(X), ref.predict(Xs), atol=1e-6)


def _net_and_data(n=260, seed=0):
    torch.manual_seed(seed)
    X = torch.randn(n, 6)
    y = ((X[:, 0] + 0.5 * X[:, 1]) > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    return net, Dataset("toy", X, y, "tensor", "classification", ["no", "yes"])


def test_sweep_probe_equals_sklearn_on_the_same_layer_features():
    net, ds = _net_and_data()
    stats = ProbeStats(True, cv="kfold", folds=3, seed=1, precision="float64", solver="closed")
    res_rows = Reservoir(capacity=10_000)
    run = sweep(net, ds, reducers=[stats, res_rows], granularity="modules", batch_size=50, progress=False)
    res = stats.result(alphas=[3.0])
    rows = res_rows.result().rows
    fold = split_items(np.arange(len(ds)), 0.2, 3, 1)
    tr, te = fold >= 0, fold < 0
    y = ds.labels.numpy()
    assert res.n_test == te.sum() and res.n_train == tr.sum() and res.layers == run.layers
    for i, name in enumerate(run.layers):
        X = rows[name].astype(np.float64)
        sc, ref = sklearn_lda(X[tr], y[tr], 3.0)
        assert res.score[i] == pytest.approx(ref.score(sc.transform(X[te]), y[te]), abs=1e-9), name
        lo, hi = wilson(round(res.score[i] * te.sum()), int(te.sum()))
        assert (res.ci_low[i], res.ci_high[i]) == pytest.approx((lo, hi))
    # controls: the majority class of the training items, and Gaussian features of the same width
    majority = np.bincount(y[tr]).argmax()
    assert res.baseline == pytest.approx((y[te] == majority).mean())
    R = random_features(np.arange(len(ds)), res.random_width, 1).numpy().astype(np.float64)
    sc, ref = sklearn_lda(R[tr], y[tr], 3.0)
    assert res.random_features == pytest.approx(ref.score(sc.transform(R[te]), y[te]), abs=1e-9)
    assert res.random_width == max(rows[n].shape[1] for n in run.layers)
    assert max(res.score) > 0.9 > 0.75 > res.random_features


@pytest.mark.parametrize("solver", ["closed", "auto"])
def test_merged_halves_equal_one_pass(solver):
    net, ds = _net_and_data(seed=2)
    whole = ProbeStats(True, seed=0, solver=solver)
    a, b = ProbeStats(True, seed=0, solver=solver), ProbeStats(True, seed=0, solver=solver)
    sweep(net, ds, reducers=[whole], batch_size=64, progress=False)
    with torch.inference_mode():
        h = net[0](ds.items)
    for red, sl in ((a, slice(0, 130)), (b, slice(130, 260))):
        red.update({"h": h[sl], }, BatchInfo(sl.start, 130, ds.labels[sl]))
    first = ProbeStats(True, seed=0, solver=solver)
    first.update({"h": h}, BatchInfo(0, 260, ds.labels))
    merged = a.merge(b).result()
    direct = first.result()
    assert merged.solver == direct.solver == ("lda" if solver == "closed" else "lbfgs")
    assert merged.score == pytest.approx(direct.score) and merged.alpha == direct.alpha
    assert merged.random_features == pytest.approx(direct.random_features)
    assert whole.result().n_test == direct.n_test


def test_regression_probe_r2_with_bootstrap_interval():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 5, generator=g)
    y = X[:, 0] * 2 + 0.3 * torch.randn(400, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(5, 10))
    res = probe(net, Dataset("r", X, y, "tensor", "regression"), granularity="modules")
    assert res.metric == "r2" and res.ci_low[0] <= res.score[0] <= res.ci_high[0]
    assert res.score[0] > 0.9 and res.baseline <= 0.0 and res.random_features < 0.2
    pred = np.random.default_rng(1).normal(size=50)
    lo, hi = bootstrap_r2(pred + 0.1, pred, n_boot=500)
    assert lo < 1 - 0.01 / pred.var() < hi + 1e-9


def test_bad_input():
    X, y = _data(classes=2)
    with pytest.raises(LayerscopeError, match="labels"):
        LinearProbe().fit(X, y[:10])
    with pytest.raises(LayerscopeError, match="single class"):
        LinearProbe().fit(X, np.zeros(len(X), dtype=int))
    wide = np.random.default_rng(0).normal(size=(20, 40))
    with pytest.raises(LayerscopeError, match="singular; use a positive alpha"):
        with np.errstate(divide="ignore", invalid="ignore"):
            LinearProbe(alpha=0.0).fit(wide, np.arange(20) % 2)
    from layerscope.analyses.probe import fit_logistic

    with pytest.raises(LayerscopeError, match="single class"):
        fit_logistic(wide, np.zeros(20, dtype=int), 2)
    net, ds = _net_and_data()
    with pytest.raises(LayerscopeError, match="too few items"):
        probe(net, ds.subset(range(6)))
    with pytest.raises(LayerscopeError, match="unknown probing task"):
        probe(net, ds, task="colour")
    with pytest.raises(LayerscopeError, match="no labels"):
        probe(net, Dataset("u", ds.items, None, "tensor", None))
    with pytest.raises(LayerscopeError, match="single class"):
        probe(net, Dataset("one", ds.items, torch.zeros(len(ds), dtype=torch.long), "tensor", "classification"))


def test_bigram_shift_labels_are_correct_by_construction():
    texts = ["the quick brown fox jumps over the lazy dog", "a b", "one two three four five",
             "so so so so different words here"] * 25
    items, labels = bigram_shift(texts, seed=3)
    originals = [t for t in texts if len(t.split()) >= 4]
    assert len(items) == len(originals) and 0.3 < np.mean(labels) < 0.7
    for item, lab, orig in zip(items, labels, originals):
        a, b = item.split(), orig.split()
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if lab == 0:
            assert diff == []
        else:
            assert len(diff) == 2 and diff[1] == diff[0] + 1
            assert a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    assert bigram_shift(texts, seed=3) == (items, labels)


def test_length_and_sentiment_tasks():
    texts = [" ".join(["w"] * k) for k in range(1, 41)]
    scores = torch.linspace(-3, 3, 40)
    ds = Dataset("s", texts, scores, "text", "regression")
    length = make_task("length", ds)
    counts = np.array([len(t.split()) for t in texts])
    assert np.all(np.diff(length.labels.numpy()) >= 0) and np.bincount(length.labels.numpy()).tolist() == [8] * 5
    assert length.classes[0] == "0-8 words"
    senti = make_task("sentiment", ds, margin=0.5)
    kept = scores.abs() >= 0.5
    assert len(senti) == int(kept.sum()) and senti.labels.tolist() == (scores[kept] > 0).long().tolist()
    assert counts.max() == 40
    with pytest.raises(LayerscopeError, match="human scores"):
        make_task("sentiment", Dataset("t", texts, None, "text", None))


def test_cli_probe_on_minilm(capsys, tmp_path):
    from layerscope.cli.app import main

    png = tmp_path / "probe.png"
    code = main(["probe", "minilm", "sentences", "--task", "sentiment", "--limit", "200",
                 "--max-length", "32", "--json", "--plot", str(png)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and png.stat().st_size > 1000
    assert out["kind"] == "ProbeResult" and out["task"] == "sentiment" and len(out["layers"]) == 6
    assert out["n_train"] + out["n_test"] < 200  # near-zero scores dropped
    assert max(out["score"]) > out["baseline"] + 0.1
    assert out["peak_layer"] == out["layers"][int(np.argmax(out["score"]))]
    assert out["solver"] == "lbfgs" and "L-BFGS" in out["method"]    # the default: auto
    assert main(["probe", "minilm", "sentences", "--task", "colour"]) == 2
    assert "unknown probing task" in capsys.readouterr().err
    assert main(["probe", "minilm", "sentences", "--task", "sentiment-score", "--solver", "logistic"]) == 2
    assert "needs class labels" in capsys.readouterr().err
    code = main(["probe", "minilm", "sentences", "--task", "length", "--limit", "150", "--max-length", "32",
                 "--solver", "logistic", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["problem"] == "classification" and "logistic" in out["method"]
    assert max(out["score"]) > out["baseline"] + 0.1


def test_sums_are_exact_whatever_the_chunking_and_the_features_mean():
    from layerscope.analyses.probe import RidgeStats, fit_ridge

    X, y = _data(n=300, d=12, seed=7)
    X = X + 1e4                                   # a large mean: the shift keeps the centred Gram exact
    Y = y.reshape(-1, 1)
    ref = StandardScaler().fit(X[:200])
    sk = Ridge(alpha=3.0).fit(ref.transform(X[:200]), y[:200])
    preds = []
    for chunk in (1, 7, 64, 10_000):
        s = RidgeStats(12, 1, chunk=chunk)
        for a in range(0, 200, 33):
            s.add(torch.from_numpy(X[a:min(a + 33, 200)]), torch.from_numpy(Y[a:min(a + 33, 200)]))
        np.testing.assert_allclose(s.mean, X[:200].mean(0), rtol=1e-12)
        preds.append(fit_ridge(s, [3.0])[0].predict(X[200:])[:, 0])
    for p in preds:
        np.testing.assert_allclose(p, sk.predict(ref.transform(X[200:])), atol=1e-6)


def test_float32_products_match_float64_on_shifted_features():
    g = np.random.default_rng(3)
    X = (g.normal(size=(2000, 40)) * g.uniform(0.1, 5, 40) + g.normal(size=40) * 50).astype(np.float32)
    y = torch.from_numpy((X[:, :3].sum(1) + g.normal(size=2000) * 3 > np.median(X[:, :3].sum(1))).astype(np.int64))
    out = {}
    for precision in ("float64", "float32"):
        red = ProbeStats(True, precision=precision, random_width=0, solver="closed")
        for a in range(0, 2000, 50):
            red.update({"h": torch.from_numpy(X[a:a + 50])}, BatchInfo(a, 50, y[a:a + 50]))
        out[precision] = red.result()
    assert out["float32"].alpha == out["float64"].alpha
    assert abs(out["float32"].score[0] - out["float64"].score[0]) <= 1 / out["float64"].n_test
    assert out["float64"].score[0] > 0.75 > out["float64"].baseline
    with pytest.raises(LayerscopeError, match="precision"):
        ProbeStats(True, precision="float16")


def test_random_features_are_standard_normal_and_depend_only_on_the_index():
    R = random_features(np.arange(4000), 64, seed=2).numpy().astype(np.float64)
    assert abs(R.mean()) < 0.01 and abs(R.std() - 1) < 0.01
    corr = np.corrcoef(R.T)
    assert np.abs(corr - np.eye(64)).max() < 0.08          # columns independent (n = 4000)
    from scipy import stats

    assert stats.kstest(R[:, 5], "norm").pvalue > 0.001
    again = random_features([3999, 17], 64, seed=2).numpy()
    np.testing.assert_array_equal(again, R[[3999, 17]].astype(np.float32))
    assert not np.array_equal(random_features([17], 64, seed=3).numpy(), again[1:])


def test_logistic_solver_equals_sklearn_logistic_regression_on_the_same_split():
    from sklearn.linear_model import LogisticRegression

    X, y = _data(n=400, d=10, classes=3, seed=11)
    X = torch.from_numpy(X.astype(np.float32))
    y = torch.from_numpy(y.astype(np.int64))
    red = ProbeStats(True, solver="logistic", C=0.5, random_width=0, seed=4)
    for a in range(0, 400, 64):
        b = min(a + 64, 400)
        red.update({"h": X[a:b]}, BatchInfo(a, b - a, y[a:b]))
    half = ProbeStats(True, solver="logistic", C=0.5, random_width=0, seed=4)
    other = ProbeStats(True, solver="logistic", C=0.5, random_width=0, seed=4)
    half.update({"h": X[:200]}, BatchInfo(0, 200, y[:200]))
    other.update({"h": X[200:]}, BatchInfo(200, 200, y[200:]))
    res, merged = red.result(), half.merge(other).result()
    fold = split_items(np.arange(400), 0.2, 1, 4)
    tr, te = fold >= 0, fold < 0
    Xn, yn = X.numpy().astype(np.float64), y.numpy()
    sc = StandardScaler().fit(Xn[tr])
    ref = LogisticRegression(C=0.5, max_iter=5000).fit(sc.transform(Xn[tr]), yn[tr])
    assert res.score[0] == pytest.approx(ref.score(sc.transform(Xn[te]), yn[te]), abs=1e-12)
    assert merged.score == res.score and res.alpha == [2.0] and "logistic" in res.method
    assert res.n_train == tr.sum() and res.n_test == te.sum()
    with pytest.raises(LayerscopeError, match="needs class labels"):
        ProbeStats(False, solver="logistic")
    with pytest.raises(LayerscopeError, match="unknown probe solver"):
        ProbeStats(True, solver="newton")


@pytest.mark.slow
def test_fewer_items_than_features_float32_chooses_the_penalty_float64_does():
    # MiniLM's pooled block outputs of 161 sentences (124 training rows, 384 features): float32
    # products leave rounding-noise eigenvalues that once made GCV pick alpha=0.01 and lose up
    # to 27 points on some blocks
    data = prepare_data("sentences", "sentiment", limit=200)
    reds = [ProbeStats(True, precision=p, random_width=0, solver="closed") for p in ("float64", "float32")]
    sweep("minilm", data, reducers=reds, batch_size=32, progress=False)
    a, b = reds[0].result(), reds[1].result()
    assert a.n_train < 384
    assert b.alpha == a.alpha and b.score == pytest.approx(a.score, abs=1e-12)
    assert max(a.score) > a.baseline + 0.1


# --- the batched logistic probe (solver auto / lbfgs) ---------------------------------------------


def _blobs(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 0.6
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _sklearn_cv(Z, y, Cs, fold):
    """LogisticRegressionCV on standardised rows, the same folds, converged far past its default."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return LogisticRegressionCV(Cs=list(Cs), cv=PredefinedSplit(fold), scoring="accuracy",
                                    tol=1e-9, max_iter=100_000).fit(Z, y)


def _objective(Z, y, coef, intercept, C):
    """scikit-learn's lbfgs objective, (1/n) Σ CE + ‖W‖² / (2Cn), computed here by hand."""
    z = Z @ coef + intercept
    z = z - z.max(1, keepdims=True)
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
    return ce.mean() + (coef ** 2).sum() / (2 * C * len(y))


def _check_against_sklearn(layers, y, k, Cs=(0.001, 0.01, 0.1, 1.0), atol=1e-4, engine="batched"):
    """fit_logistic_cv against LogisticRegressionCV per layer: the CV accuracy of every C, the C
    chosen, the coefficients (on standardised features) and the objective. engine="sklearn" is
    run to a tight tolerance here (its default is scikit-learn's own, checked on predictions in
    test_sklearn_engine_at_its_default_tolerance)."""
    from layerscope.analyses.probe_logistic import _folds, fit_logistic_cv

    fits, info = fit_logistic_cv(layers, y, k, Cs=Cs, folds=3, seed=0, engine=engine,
                                 tol=1e-10 if engine == "sklearn" else None, max_iter=100_000)
    assert info["engine"] == engine
    assert info["converged"] and (engine == "sklearn" or info["max_gradient"] <= info["tol"])
    if engine == "sklearn":      # the largest gradient entry, computed by layerscope from the fit
        assert info["max_gradient"] <= 1e-7
    fold = _folds(y, 3, 0)
    for i, x in enumerate(layers):
        sc = StandardScaler().fit(x.astype(np.float64))
        Z = sc.transform(x.astype(np.float64))
        ref = _sklearn_cv(Z, y, Cs, fold)
        ref_cv = next(iter(ref.scores_.values())).mean(0)
        np.testing.assert_allclose(info["cv_by_C"][i], ref_cv, atol=1e-12)
        assert info["C"][i] == pytest.approx(float(np.atleast_1d(ref.C_)[0]))
        coef = fits[i].coef * sc.scale_[:, None]               # back on the standardised features
        ic = fits[i].intercept + sc.mean_ @ fits[i].coef
        if k == 2:
            coef, ic = coef[:, 1:] - coef[:, :1], ic[1:] - ic[:1]
        ref_coef = ref.coef_.T
        ref_ic = ref.intercept_ - (ref.intercept_.mean() if k > 2 else 0.0)
        scale = max(1.0, np.abs(ref_coef).max())
        assert np.abs(coef - ref_coef).max() <= atol * scale, i
        assert np.abs((ic - ic.mean() if k > 2 else ic) - ref_ic).max() <= atol * scale, i
        full = lambda w, b: (np.c_[np.zeros((len(w), 1)), w], np.r_[0.0, b]) if k == 2 else (w, b)  # noqa: E731
        ours_obj = _objective(Z, y, *full(coef, ic), info["C"][i])
        ref_obj = _objective(Z, y, *full(ref_coef, ref.intercept_), info["C"][i])
        assert ours_obj == pytest.approx(ref_obj, rel=1e-9, abs=1e-12)
        assert (fits[i].predict(x).argmax(1) == ref.predict(Z)).all()
    return info


@pytest.mark.parametrize("engine", ["batched", "sklearn"])
@pytest.mark.parametrize("k", [2, 5])
def test_batched_logistic_equals_sklearn_logistic_regression_cv(k, engine):
    X, y = _blobs(600, 12, k)
    # a narrower second layer: every layer is padded to the widest inside the batch
    _check_against_sklearn([X, X[:, :6] * 3.0 + 1.0], y, k, engine=engine)


def test_auto_engine_is_batched_for_two_classes_and_sklearn_for_more():
    from layerscope.analyses.probe_logistic import fit_logistic_cv

    for k, engine in ((2, "batched"), (3, "sklearn")):
        X, y = _blobs(200, 5, k)
        assert fit_logistic_cv([X], y, k, engine="auto")[1]["engine"] == engine
    with pytest.raises(LayerscopeError, match="unknown logistic engine"):
        fit_logistic_cv([X], y, 3, engine="newton")


def test_sklearn_engine_at_its_default_tolerance():
    """engine="sklearn" at scikit-learn's own tolerance: the same C and the same held-out
    predictions as LogisticRegressionCV run independently to a far tighter tolerance, except
    on a few items near a decision boundary."""
    from layerscope.analyses.probe_logistic import SKLEARN_TOL, _folds, fit_logistic_cv

    X, y = _blobs(900, 30, 5, seed=3)
    train, test = np.arange(900) < 700, np.arange(900) >= 700
    fits, info = fit_logistic_cv([X[train]], y[train], 5, engine="sklearn")
    assert info["tol"] == SKLEARN_TOL and info["converged"] and info["max_gradient"] < 1e-3
    sc = StandardScaler().fit(X[train].astype(np.float64))
    ref = _sklearn_cv(sc.transform(X[train].astype(np.float64)), y[train], info["Cs"], _folds(y[train], 3, 0))
    assert info["C"][0] == pytest.approx(float(np.atleast_1d(ref.C_)[0]))
    ours = fits[0].predict(X[test]).argmax(1)
    assert (ours == ref.predict(sc.transform(X[test].astype(np.float64)))).mean() >= 0.99


def test_batched_logistic_picks_C_by_cross_validation_like_sklearn():
    X, y = _blobs(400, 40, 3, seed=2)      # few items per feature: the penalty matters
    info = _check_against_sklearn([X], y, 3)
    assert info["C"][0] < 1.0               # the grid's edge is not what CV picked


def test_batched_logistic_equals_sklearn_on_minilm_features():
    """Real features: MiniLM's last block, mean-pooled (it holds near-constant dimensions that
    StandardScaler scales up, so the standardisation must follow its rule), on 5 length classes
    and on 2 sentiment classes."""
    from layerscope.data import load_dataset

    data = load_dataset("sentences", limit=240, seed=0)
    keep = Reservoir(capacity=len(data))
    run = sweep("minilm", data, reducers=[keep], layers=[5], batch_size=60, max_length=48, progress=False)
    res = keep.result()
    x = np.asarray(res.rows[run.layers[0]])[np.argsort(res.indices)].astype(np.float32)
    length = make_task("length", data).labels.numpy()
    _check_against_sklearn([x], length, 5, Cs=(0.001, 0.01, 0.1))
    _check_against_sklearn([x], length, 5, Cs=(0.001, 0.01, 0.1), engine="sklearn")
    kept = np.abs(data.labels.numpy()) >= 0.5              # make_task("sentiment")'s items
    sentiment = make_task("sentiment", data).labels.numpy()
    assert (sentiment == (data.labels.numpy()[kept] > 0)).all()
    _check_against_sklearn([x[kept]], sentiment, 2, Cs=(0.001, 0.01, 0.1))


def test_auto_solver_uses_logistic_then_falls_back_past_the_budget():
    X, y = _blobs(400, 8, 5)
    data = Dataset("b", torch.from_numpy(X), torch.from_numpy(y), "tensor", "classification")
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    res = probe(net, data)         # 5 classes: scikit-learn's LogisticRegressionCV per layer
    assert res.solver == "logistic-cv" and "LogisticRegressionCV" in res.method
    forced = probe(net, data, solver="lbfgs")
    assert forced.solver == "lbfgs" and "L-BFGS" in forced.method
    assert np.abs(np.array(forced.score) - np.array(res.score)).max() <= 0.02
    closed = probe(net, data, solver="closed")
    assert closed.solver == "lda"
    from layerscope.analyses.probe import ProbeStats
    from layerscope.reducers import BatchInfo

    red = ProbeStats(True, solver="auto", memory_budget=10_000, random_width=0)
    t = torch.from_numpy(X)
    for a in range(0, 400, 50):
        red.update({"x": t[a:a + 50]}, BatchInfo(a, 50, torch.from_numpy(y[a:a + 50])))
    assert red.over_budget and not red.train_rows
    out = red.result()
    assert out.solver == "lda" and "memory budget" in out.method


def test_auto_solver_on_scores_is_the_ridge():
    X = torch.randn(200, 4)
    data = Dataset("r", X, X[:, 0] * 2 + 0.1, "tensor", "regression")
    assert probe(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()), data).solver == "ridge"


def test_one_default_solver_for_probe_reducers_stats_and_the_cli():
    import inspect

    from layerscope.analyses import probe as prb
    from layerscope.cli.cmd_probe import probe_command

    defaults = {f.__name__: inspect.signature(f).parameters["solver"].default
                for f in (prb.probe, prb.reducers, prb.ProbeStats.__init__)}
    cli = inspect.signature(probe_command).parameters["solver"].default
    assert set(defaults.values()) == {"auto"} and cli == "auto"
    net, ds = _net_and_data()
    assert prb.reducers(ds)[0].solver == "auto"
