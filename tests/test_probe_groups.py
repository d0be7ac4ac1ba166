"""Probes on rows that come in groups (the token rows of one sentence): the CV folds keep a group
together, and the held-out interval counts a group as one cluster, not as independent rows."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import PredefinedSplit
from sklearn.preprocessing import StandardScaler

from layerscope.analyses.probe import ProbeStats, clustered_wilson, wilson
from layerscope.analyses.probe_logistic import _group_folds, fit_logistic_cv
from layerscope.reducers import BatchInfo


def _grouped_data(n_groups=120, per_group=4, d=6, seed=0, noise=0.3):
    """Rows of one group share a group effect (like tokens of one sentence); labels follow one
    direction plus that shared effect, so rows of a group are alike (copies at ``noise=0``)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    shared = rng.normal(size=(n_groups, d))[groups]
    x = shared + noise * rng.normal(size=(len(groups), d))
    y = (x @ rng.normal(size=d) + 0.5 * rng.normal(size=n_groups)[groups] > 0).astype(np.int64)
    return x.astype(np.float32), y, groups


def test_group_folds_keep_each_group_in_one_fold_and_use_every_fold():
    x, y, groups = _grouped_data()
    fold = _group_folds(y, groups, 3, seed=0)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert sorted(set(fold)) == [0, 1, 2]
    assert all(abs((fold == f).mean() - 1 / 3) < 0.1 for f in range(3))


def test_grouped_cv_equals_sklearn_with_the_same_group_folds():
    x, y, groups = _grouped_data()
    fits, info = fit_logistic_cv([x], y, 2, engine="sklearn", groups=groups, seed=0)
    z = StandardScaler().fit_transform(x.astype(np.float64))
    ref = LogisticRegressionCV(Cs=info["Cs"], cv=PredefinedSplit(_group_folds(y, groups, 3, seed=0)),
                               scoring="accuracy", max_iter=2000).fit(z, y)
    assert info["C"][0] == ref.C_[0]


def test_clustered_interval_of_duplicated_rows_matches_the_rows_once():
    rng = np.random.default_rng(1)
    hits = rng.random(200) < 0.7
    once = wilson(int(hits.sum()), len(hits))
    k = 4
    lo, hi = clustered_wilson(np.repeat(hits, k), np.repeat(np.arange(200), k))
    naive = wilson(int(hits.sum()) * k, len(hits) * k)
    assert abs(lo - once[0]) < 0.003 and abs(hi - once[1]) < 0.003     # G/(G-1) widens it a hair
    assert (naive[1] - naive[0]) < 0.6 * (hi - lo)                     # rows as independent: too narrow


def test_probe_stats_with_groups_widens_the_interval_of_grouped_rows():
    x, y, groups = _grouped_data(n_groups=200, noise=0.0)      # four copies of each row
    xs = torch.from_numpy(x)

    def run(g):
        stats = ProbeStats(True, test_fraction=0.3, groups=g, solver="lbfgs", random_width=0)
        for a in range(0, len(y), 64):
            b = min(a + 64, len(y))
            stats.update({"layer": xs[a:b]}, BatchInfo(start=a, size=b - a, labels=torch.from_numpy(y[a:b])))
        return stats, stats.result()

    stats, grouped = run(groups)
    held, kept = groups[np.concatenate(stats.test_index)], groups[np.concatenate(stats.train_index)]
    assert not set(held) & set(kept)                       # no group on both sides
    assert len(kept) + len(held) == len(y)
    _, rowwise = run(None)
    width_grouped = grouped.ci_high[0] - grouped.ci_low[0]
    width_rows = rowwise.ci_high[0] - rowwise.ci_low[0]
    assert width_grouped > 1.6 * width_rows                   # about 2 = sqrt(4 copies)
