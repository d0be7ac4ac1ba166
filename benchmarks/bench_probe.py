"""Probes for all layers at once (layerscope) vs scikit-learn LogisticRegression per layer.

MiniLM-L6 runs once over N sentences of the sentiment task (mean-pooled block outputs, kept in
memory, cached in /tmp); then, on exactly the same features and the same held-out split,
interleaved round by round (A B A B ...), with torch/BLAS threads pinned to 1 (on a shared,
busy machine 2 threads spin-wait and every small matmul becomes 10-20x slower, for both sides):
  A: layerscope's ProbeStats fed the features in batches of 64, then its result (ridge from the
     sums, penalty by generalised CV from one eigendecomposition per layer, all layers);
  B: StandardScaler + LogisticRegression (L2, C=1, lbfgs) fitted per layer, scored held out.
Medians, the per-round ratio B/A with its spread, and the accuracies of both are printed (and
appended to BENCHMARKS.md under "## Probes" with --write).

Usage:
    .venv/bin/python benchmarks/bench_probe.py --n 1500 --rounds 3 [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

THREADS = 1
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def features(n: int):
    cache = Path(f"/tmp/layerscope_bench_probe_{n}.npz")
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        names = [str(s) for s in z["names"]]
        return {k: z[f"x{i}"] for i, k in enumerate(names)}, z["y"]
    from layerscope.analyses.probe import prepare_data
    from layerscope.reducers import Reservoir
    from layerscope.sweep import sweep

    data = prepare_data("sentences", "sentiment", limit=n)
    keep = Reservoir(capacity=len(data))
    run = sweep("minilm", data, reducers=[keep], batch_size=64, progress=True)
    rows = keep.result().rows
    feats = {k: rows[k] for k in run.layers}
    y = data.labels.numpy()
    np.savez(cache, names=np.array(run.layers), y=y, **{f"x{i}": feats[k] for i, k in enumerate(run.layers)})
    return feats, y


def ours(feats, y):
    from layerscope.analyses.probe import ProbeStats
    from layerscope.reducers import BatchInfo

    red = ProbeStats(True, seed=0)
    yt = torch.from_numpy(y)
    ft = {k: torch.from_numpy(v) for k, v in feats.items()}
    for a in range(0, len(y), 64):
        b = min(a + 64, len(y))
        red.update({k: v[a:b] for k, v in ft.items()}, BatchInfo(a, b - a, yt[a:b]))
    return red.result().score


def sklearn_lr(feats, y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from layerscope.analyses.probe import split_items

    test = split_items(np.arange(len(y)), 0.2, 3, 0) < 0
    out = []
    for x in feats.values():
        sc = StandardScaler().fit(x[~test])
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(sc.transform(x[~test]), y[~test])
        out.append(float(lr.score(sc.transform(x[test]), y[test])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    feats, y = features(args.n)
    ours(feats, y), sklearn_lr(feats, y)  # warm-up
    ta, tb, ratio = [], [], []
    for _ in range(args.rounds):
        t = time.perf_counter(); acc_a = ours(feats, y); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); acc_b = sklearn_lr(feats, y); tb.append(time.perf_counter() - t)
        ratio.append(tb[-1] / ta[-1])
    diff = np.array(acc_a) - np.array(acc_b)
    # timing only: the same rows repeated 8 times with small noise (how both scale with n)
    g = np.random.default_rng(0)
    big = {k: np.tile(v, (8, 1)) + 0.01 * g.standard_normal((8 * len(v), v.shape[1])).astype(v.dtype)
           for k, v in feats.items()}
    yb = np.tile(y, 8)
    t = time.perf_counter(); ours(big, yb); big_a = time.perf_counter() - t
    t = time.perf_counter(); sklearn_lr(big, yb); big_b = time.perf_counter() - t
    load = os.getloadavg()[0]
    lines = [
        "## Probes",
        "",
        f"{datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores ({THREADS} threads, "
        f"load average {load:.1f} during the run), torch {torch.__version__}, "
        f"`benchmarks/bench_probe.py --n {args.n} --rounds {args.rounds}`.",
        f"MiniLM-L6 sentiment task: {len(y)} sentences, {len(feats)} layers × "
        f"{next(iter(feats.values())).shape[1]} features (mean-pooled), same held-out split for both.",
        "",
        "| | median s | accuracy per layer |",
        "|---|---|---|",
        f"| layerscope ridge, all layers from XᵀX (GCV penalty) | {statistics.median(ta):.3f} | "
        + " ".join(f"{a:.3f}" for a in acc_a) + " |",
        f"| scikit-learn LogisticRegression per layer (standardised, C=1) | {statistics.median(tb):.3f} | "
        + " ".join(f"{a:.3f}" for a in acc_b) + " |",
        "",
        f"Speed-up (per round, B/A): median {statistics.median(ratio):.1f}× "
        f"(min {min(ratio):.1f}, max {max(ratio):.1f}). Accuracy difference layerscope − sklearn: "
        f"mean {diff.mean() * 100:+.1f} points, worst {diff.min() * 100:+.1f} points.",
        "",
        f"Scaling (timing only, the rows repeated 8× with small noise, n = {len(yb)}, one round): "
        f"layerscope {big_a:.2f} s, scikit-learn {big_b:.2f} s, ratio {big_b / big_a:.1f}×. The ridge "
        "side costs one pass of XᵀX sums plus one O(d³) eigendecomposition per layer, whatever n; "
        "LogisticRegression's cost grows with n.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        append_section(args.write, "## Probes", text)


def append_section(path: Path, header: str, text: str) -> None:
    """Replace this benchmark's own section (from its header to the next '## ') or append it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured by hand; see each script.\n\n"
    start = old.find(header + "\n")
    if start >= 0:
        nxt = old.find("\n## ", start + len(header))
        old = old[:start] + (old[nxt + 1:] if nxt >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
