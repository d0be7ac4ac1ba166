"""Probes for all layers at once (layerscope) vs scikit-learn LogisticRegression per layer.

MiniLM-L6 runs once over all 23,703 bundled sentences (mean-pooled block outputs, cached in
/tmp). Two probing tasks are made from them: sentiment (sign of the human score, |score| >= 0.5,
2 classes) and length (word count in 5 equal-count bins). For each task and size n (the first n
items of a seeded shuffle), on exactly the same features and the same held-out split (20%,
by a hash of the item index), interleaved round by round (A64 A32 B, A64 A32 B, ...), with
torch/BLAS threads pinned (--threads, default 1):
  A64/A32: layerscope's ProbeStats (precision float64 / float32) fed the features in batches of
     64, as a sweep does, then its result: ridge on standardised features from the streamed
     sums, penalty by generalised CV from one eigendecomposition per layer, all layers;
  B: StandardScaler + LogisticRegression (L2, C=1, lbfgs, max_iter=2000) fitted per layer on
     features already gathered in memory, scored held out.
Both sides fit the 6 layers only (the random-features control is timed separately). Medians,
the per-round ratio B/A with its spread, and accuracies are printed; an accuracy reference,
untimed, is LogisticRegression with the best C of {0.01, 0.1, 1, 10} chosen on the held-out
items themselves (an optimistic upper bound for the per-layer logistic probe).

Usage:
    .venv/bin/python benchmarks/bench_probe.py [--sizes 1500 6000 0] [--rounds 3]
        [--threads 1] [--write BENCHMARKS.md]          # size 0 = every item of the task
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

# BLAS reads its thread count when numpy loads, so --threads is parsed before that import
_early = argparse.ArgumentParser(add_help=False)
_early.add_argument("--threads", type=int, default=1)
THREADS = _early.parse_known_args()[0].threads
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

CACHE = Path("/tmp/layerscope_bench_probe_all.npz")
C_GRID = (0.01, 0.1, 1.0, 10.0)


def features():
    """Mean-pooled MiniLM block outputs of every bundled sentence, their texts and scores."""
    from layerscope.data import load_dataset

    data = load_dataset("sentences")
    if not CACHE.exists():
        from layerscope.reducers import Reservoir
        from layerscope.sweep import sweep

        keep = Reservoir(capacity=len(data))
        run = sweep("minilm", data, reducers=[keep], batch_size=64, progress=True)
        res = keep.result()
        order = np.argsort(res.indices)
        np.savez(CACHE, names=np.array(run.layers),
                 **{f"x{i}": np.asarray(res.rows[k])[order] for i, k in enumerate(run.layers)})
    z = np.load(CACHE, allow_pickle=False)
    feats = [z[f"x{i}"] for i in range(len(z["names"]))]
    return feats, list(data.items), data.labels.numpy()


def task(name: str, texts: list[str], scores: np.ndarray, n: int):
    """Rows (indices into the sentences) and labels of a probing task, first n of a seeded shuffle."""
    from layerscope.analyses.probe_tasks import make_task
    from layerscope.data import Dataset

    keep = np.flatnonzero(np.abs(scores) >= 0.5) if name == "sentiment" else np.arange(len(texts))
    keep = np.random.default_rng(0).permutation(keep)[: n or None]
    ds = Dataset("s", [texts[i] for i in keep], torch.from_numpy(scores[keep]), "text", "regression")
    return keep, make_task(name, ds).labels.numpy()


def ours(feats, y, precision: str, random_width: int = 0):
    from layerscope.analyses.probe import ProbeStats
    from layerscope.reducers import BatchInfo

    red = ProbeStats(True, seed=0, precision=precision, random_width=random_width)
    yt = torch.from_numpy(y)
    ft = {str(i): torch.from_numpy(v) for i, v in enumerate(feats)}
    for a in range(0, len(y), 64):
        b = min(a + 64, len(y))
        red.update({k: v[a:b] for k, v in ft.items()}, BatchInfo(a, b - a, yt[a:b]))
    return red.result().score


def sklearn_lr(feats, y, C: float = 1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from layerscope.analyses.probe import split_items

    test = split_items(np.arange(len(y)), 0.2, 3, 0) < 0
    out = []
    for x in feats:
        sc = StandardScaler().fit(x[~test])
        lr = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(x[~test]), y[~test])
        out.append(float(lr.score(sc.transform(x[test]), y[test])))
    return out


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def bench(name, feats_all, texts, scores, n, rounds):
    rows, y = task(name, texts, scores, n)
    feats = [np.ascontiguousarray(f[rows]) for f in feats_all]
    ours(feats, y, "float64"), ours(feats, y, "float32"), sklearn_lr(feats, y)  # warm-up
    t64, t32, tb, r64, r32 = [], [], [], [], []
    for _ in range(rounds):
        dt, acc64 = timed(ours, feats, y, "float64"); t64.append(dt)
        dt, acc32 = timed(ours, feats, y, "float32"); t32.append(dt)
        dt, accb = timed(sklearn_lr, feats, y); tb.append(dt)
        r64.append(tb[-1] / t64[-1]); r32.append(tb[-1] / t32[-1])
    ctrl = timed(ours, feats, y, "float32", random_width=feats[0].shape[1])[0] - statistics.median(t32)
    best = np.max([sklearn_lr(feats, y, C) for C in C_GRID], axis=0)
    return dict(task=name, n=len(y), classes=int(y.max()) + 1, t64=t64, t32=t32, tb=tb, r64=r64,
                r32=r32, acc64=acc64, acc32=acc32, accb=accb, best=best.tolist(), ctrl=ctrl)


def fmt(r) -> list[str]:
    med = statistics.median
    acc = lambda a: " ".join(f"{v:.3f}" for v in a)  # noqa: E731
    d32 = np.array(r["acc32"]) - np.array(r["accb"])
    dbest = np.array(r["acc32"]) - np.array(r["best"])
    return [
        f"**{r['task']}** ({r['classes']} classes), n = {r['n']:,} items ({int(round(r['n'] * 0.8)):,} "
        "training, the rest held out):",
        "",
        "| | median s | speed-up B/A (min-max) | held-out accuracy, blocks 0-5 |",
        "|---|---|---|---|",
        f"| A32: layerscope, float32 products | {med(r['t32']):.3f} | **{med(r['r32']):.1f}×** "
        f"({min(r['r32']):.1f}-{max(r['r32']):.1f}) | {acc(r['acc32'])} |",
        f"| A64: layerscope, float64 products | {med(r['t64']):.3f} | {med(r['r64']):.1f}× "
        f"({min(r['r64']):.1f}-{max(r['r64']):.1f}) | {acc(r['acc64'])} |",
        f"| B: scikit-learn LogisticRegression(C=1) per layer | {med(r['tb']):.3f} | 1 | {acc(r['accb'])} |",
        f"| LogisticRegression, best C of {{{', '.join(f'{c:g}' for c in C_GRID)}}} on the held-out "
        f"items (untimed) | | | {acc(r['best'])} |",
        "",
        f"A32 − B: mean {d32.mean() * 100:+.1f}, worst {d32.min() * 100:+.1f} points; A32 − best-C "
        f"LogisticRegression: mean {dbest.mean() * 100:+.1f}, worst {dbest.min() * 100:+.1f} points. "
        f"The random-features control (a 7th pseudo-layer, 384 wide) adds {r['ctrl']:.3f} s to A32.",
        "",
    ]


def verdict(r) -> bool:
    worst = (np.array(r["acc32"]) - np.array(r["accb"])).min()
    return statistics.median(r["r32"]) >= 10 and worst >= -0.01


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1500, 6000, 0])
    ap.add_argument("--tasks", nargs="+", default=["sentiment", "length"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    feats, texts, scores = features()
    results = []
    for name in args.tasks:
        for n in args.sizes:
            results.append(bench(name, feats, texts, scores, n, args.rounds))
            print("\n".join(fmt(results[-1])), flush=True)
    load = os.getloadavg()[0]
    lines = [
        "## Probes",
        "",
        f"{datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores ({THREADS} thread"
        f"{'s' if THREADS > 1 else ''}, load average {load:.1f} at the end), torch {torch.__version__}, "
        f"`benchmarks/bench_probe.py --sizes {' '.join(map(str, args.sizes))} --rounds {args.rounds} "
        f"--threads {THREADS}`. MiniLM-L6 mean-pooled block outputs (6 × 384) of the bundled "
        "sentences; A and B see the same features and the same held-out split; A is fed batches of "
        "64 as in a sweep and includes summing XᵀX, B gets the features already in memory.",
        "",
    ]
    for r in results:
        lines += fmt(r)
    for name in args.tasks:
        rs = sorted((r for r in results if r["task"] == name), key=lambda r: r["n"])
        if len(rs) >= 2:
            a, b = rs[-2], rs[-1]
            rows = (b["n"] - a["n"]) * 0.8 * len(b["acc32"])
            ma = (statistics.median(b["t32"]) - statistics.median(a["t32"])) / rows * 1e6
            mb = (statistics.median(b["tb"]) - statistics.median(a["tb"])) / rows * 1e6
            lines += [f"{name}: the marginal cost per training row and layer between n = {a['n']:,} and "
                      f"{b['n']:,} is {ma:.1f} µs for A32 and {mb:.1f} µs for B ({mb / ma:.1f}×): the "
                      "ratio the speed-up tends to as n grows, since A's fixed cost (one eigendecomposition "
                      "and one solve per layer) does not grow with n.", ""]
    met = [r for r in results if verdict(r)]
    lines += [
        f"Target (≥ 10× faster than B at accuracy within 1 point of B on every layer, A32): met in "
        f"{len(met)} of {len(results)} settings"
        + (" (" + ", ".join(f"{r['task']} n = {r['n']:,}" for r in met) + ")" if met else "") + ".",
        "",
    ]
    text = "\n".join(lines)
    print(lines[-2])
    if args.write:
        append_section(args.write, "## Probes", text)


def append_section(path: Path, header: str, text: str) -> None:
    """Replace this benchmark's own section (from its header to the next '## ') or append it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured by hand; see each script.\n\n"
    start = old.find(header + "\n")
    if start >= 0:
        nxt = old.find("\n## ", start + len(header))
        old = old[:start] + text.rstrip("\n") + "\n" + (old[nxt:] if nxt >= 0 else "")
        path.write_text(old)
        return
    path.write_text(old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
