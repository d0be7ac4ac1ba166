"""Probes that agree with scikit-learn: layerscope's probe (solver="auto") against
``LogisticRegressionCV`` per layer, and against the forward pass that feeds it.

MiniLM-L6 runs once over the first N bundled sentences of a seeded shuffle (mean-pooled block
outputs; the sweep is timed: that is the forward pass the probe's cost is compared with, per
item). Two probing tasks are made from them: sentiment (sign of the human score, |score| >= 0.5,
2 classes) and length (word count in 5 equal-count bins). For each task and size n, on the same
features and the same held-out split (20%, by a hash of the item index):
  A: layerscope's ProbeStats(solver="auto") fed batches of 64 as in a sweep, then its result:
     L2 logistic regression on standardised features with C from {0.001, 0.01, 0.1, 1} by 3-fold
     CV; for 2 classes all layers in one batched float64 L-BFGS solved to a gradient norm of
     1e-6, for more scikit-learn's LogisticRegressionCV per layer on A's own kept rows, folds
     and C rule (the engine probe_logistic.pick_engine picks; the streamed closed form past the
     memory budget);
  L: the closed-form probe from streamed sums (ridge/LDA, penalty by GCV) - the old default;
  B: scikit-learn StandardScaler + LogisticRegressionCV(Cs = the same grid, lbfgs, its default
     tol, scoring="accuracy": its default until 1.11) per layer on the
     same training rows, scored on the held-out rows. B gets the same 3 stratified CV folds as A
     (PredefinedSplit): with its own random folds B's choice of C, and so its accuracy, moves by
     more than a point between fold draws at these sizes, which is not a property of either solver.
Printed: per-layer held-out accuracy of A, L and B, the worst |A - B| in points, A's and B's
fitting time, and A's time as a share of the forward pass over the same n items. The forward
pass is timed again in this process (``--forward-items``, the first items of the same data), so
A and the pass it is compared with run under the same machine load.

Usage:
    .venv/bin/python benchmarks/bench_probe.py [--items 8000] [--sizes 1500 3000 6000]
        [--threads 2] [--cache DIR] [--reuse-b DIR] [--forward-items 256] [--write BENCHMARKS.md]

``--cache DIR`` keeps each (task, size) row as JSON, so the tasks can run as separate processes
(``--tasks sentiment`` / ``--tasks length``) and a last run with ``--write`` assembles the table.
``--reuse-b DIR`` takes B and the closed form (accuracies, chosen C, seconds) from the rows of an
earlier ``--cache DIR`` where one exists for the (task, size): neither depends on layerscope's
logistic solver, and on the same features, split and folds they are the same numbers; only A is
measured again. The table marks such rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import time
import warnings
from pathlib import Path

# BLAS reads its thread count when numpy loads, so --threads is parsed before that import
_early = argparse.ArgumentParser(add_help=False)
_early.add_argument("--threads", type=int, default=2)
THREADS = _early.parse_known_args()[0].threads
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from layerscope.analyses.probe_logistic import CS  # noqa: E402  (scikit-learn gets the same C grid)

from sections import write_section  # noqa: E402  (this script's folder is first on sys.path)


def features(n_items: int):
    """Mean-pooled MiniLM block outputs of the first ``n_items`` sentences (seeded shuffle), their
    texts and scores, and the seconds per item of the sweep that produced them."""
    from layerscope.data import load_dataset

    data = load_dataset("sentences", limit=n_items, seed=0)
    cache = Path(f"/tmp/layerscope_bench_probe_{n_items}.npz")
    if not cache.exists():
        from layerscope.reducers import Reservoir
        from layerscope.sweep import sweep

        keep = Reservoir(capacity=len(data))
        t = time.perf_counter()
        run = sweep("minilm", data, reducers=[keep], batch_size=32, max_length=128, progress=False)
        per_item = (time.perf_counter() - t) / len(data)
        res = keep.result()
        order = np.argsort(res.indices)
        np.savez(cache, names=np.array(run.layers), per_item=per_item,
                 **{f"x{i}": np.asarray(res.rows[k])[order] for i, k in enumerate(run.layers)})
    z = np.load(cache, allow_pickle=False)
    feats = [z[f"x{i}"] for i in range(len(z["names"]))]
    return feats, list(data.items), data.labels.numpy(), float(z["per_item"])


def task(name: str, texts: list[str], scores: np.ndarray, n: int):
    """Rows (indices into the sentences) and labels of a probing task, its first n items."""
    from layerscope.analyses.probe_tasks import make_task
    from layerscope.data import Dataset

    keep = np.flatnonzero(np.abs(scores) >= 0.5) if name == "sentiment" else np.arange(len(texts))
    keep = keep[:n]
    ds = Dataset("s", [texts[i] for i in keep], torch.from_numpy(scores[keep]), "text", "regression")
    return keep, make_task(name, ds).labels.numpy()


def forward_per_item(n_items: int) -> tuple[float, float]:
    """Seconds per item of MiniLM's sweep (as in :func:`features`) over the first ``n_items``:
    wall-clock and this process's CPU time."""
    from layerscope.data import load_dataset
    from layerscope.reducers import Reservoir
    from layerscope.sweep import sweep

    data = load_dataset("sentences", limit=n_items, seed=0)
    sweep("minilm", data, reducers=[Reservoir(capacity=8)], batch_size=32, max_length=128, progress=False)
    t, c = time.perf_counter(), time.process_time()   # the second sweep: loading and first calls excluded
    sweep("minilm", data, reducers=[Reservoir(capacity=len(data))], batch_size=32, max_length=128,
          progress=False)
    return (time.perf_counter() - t) / len(data), (time.process_time() - c) / len(data)


def ours(feats, y, solver: str):
    from layerscope.analyses.probe import ProbeStats
    from layerscope.reducers import BatchInfo

    red = ProbeStats(True, seed=0, solver=solver, random_width=0)
    yt = torch.from_numpy(y)
    ft = {str(i): torch.from_numpy(v) for i, v in enumerate(feats)}
    for a in range(0, len(y), 64):
        b = min(a + 64, len(y))
        red.update({k: v[a:b] for k, v in ft.items()}, BatchInfo(a, b - a, yt[a:b]))
    res = red.result()
    m = re.search(r"\((\d+) iterations", res.method) or re.search(r"up to (\d+) iterations", res.method)
    how = res.solver + (f", {m.group(1)} it." if m and res.solver == "lbfgs" else
                        f", ≤{m.group(1)} it. per fit" if m else "")
    if res.solver in ("lbfgs", "logistic-cv"):
        how += ", NOT converged" if "NOT converged" in res.method else ", converged"
    return res.score, how


def sklearn_cv(feats, y):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit
    from sklearn.preprocessing import StandardScaler

    from layerscope.analyses.probe import split_items
    from layerscope.analyses.probe_logistic import _folds

    test = split_items(np.arange(len(y)), 0.2, 3, 0) < 0
    folds = PredefinedSplit(_folds(y[~test], 3, 0))       # A's folds (ProbeStats seed 0)
    out, cs = [], []
    for x in feats:
        sc = StandardScaler().fit(x[~test])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            lr = LogisticRegressionCV(Cs=list(CS), cv=folds, max_iter=2000, scoring="accuracy")
            lr.fit(sc.transform(x[~test]), y[~test])
        out.append(float(lr.score(sc.transform(x[test]), y[test])))
        cs.append(float(np.atleast_1d(lr.C_)[0]))
    return out, cs


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def bench(name, feats_all, texts, scores, n, per_item, earlier=None, cpu_per_item=float("nan")):
    rows, y = task(name, texts, scores, n)
    feats = [np.ascontiguousarray(f[rows]) for f in feats_all]
    c0 = time.process_time()
    ta, (acc_a, solver) = timed(ours, feats, y, "auto")
    ta_cpu = time.process_time() - c0
    if earlier is not None and earlier["n"] == len(y):
        tl, acc_l, tb, acc_b, cs = (earlier[k] for k in ("tl", "acc_l", "tb", "acc_b", "cs"))
    else:
        earlier = None
        tl, (acc_l, _) = timed(ours, feats, y, "closed")
        tb, (acc_b, cs) = timed(sklearn_cv, feats, y)
    return dict(task=name, n=len(y), classes=int(y.max()) + 1, ta=ta, tl=tl, tb=tb, acc_a=acc_a,
                acc_l=acc_l, acc_b=acc_b, cs=cs, solver=solver, forward=per_item * len(y),
                ta_cpu=ta_cpu, forward_cpu=cpu_per_item * len(y),
                b_reused=earlier is not None, load=os.getloadavg()[0])


def fmt(r) -> list[str]:
    acc = lambda a: " ".join(f"{v:.3f}" for v in a)  # noqa: E731
    da = np.abs(np.array(r["acc_a"]) - np.array(r["acc_b"])).max() * 100
    dl = (np.array(r["acc_l"]) - np.array(r["acc_b"])).min() * 100
    return [
        f"| {r['task']} ({r['classes']} classes) | {r['n']:,} | {acc(r['acc_a'])} | {acc(r['acc_b'])} | "
        f"**{da:.1f}** | {dl:+.1f} | {r['solver']} | {r['ta']:.1f} | {r['tb']:.1f}{'†' if r.get('b_reused') else ''} | "
        f"{r['forward']:.0f} | {r.get('load', float('nan')):.1f} | "
        f"**{r['ta'] / r['forward']:.0%}** | {r.get('ta_cpu', float('nan')):.1f} | "
        f"**{r.get('ta_cpu', float('nan')) / r.get('forward_cpu', float('nan')):.0%}** |",
    ]


HEADER = ["| task | n | A: layerscope auto, held-out accuracy per layer | "
          "B: LogisticRegressionCV per layer | worst \\|A − B\\| (points) | closed form − B, worst (points) | "
          "A's solver | A s | B s | forward pass s (same items) | load after A | A / forward | "
          "A CPU s | A / forward, CPU time |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=8000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1500, 3000, 6000])
    ap.add_argument("--tasks", nargs="+", default=["sentiment", "length"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", type=Path)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--reuse-b", type=Path, help="an earlier --cache DIR: take B and the closed form from it")
    ap.add_argument("--forward-items", type=int, default=256,
                    help="items over which the forward pass is timed again in this process")
    ap.add_argument("--cached-only", action="store_true",
                    help="with --cache: write the rows already measured, naming the ones not measured")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    made = None         # the features: made (a MiniLM sweep unless kept in /tmp) only for a row to measure
    results, missing = [], []
    for name in args.tasks:
        for n in args.sizes:
            row = args.cache / f"{name}_{n}_{args.items}.json" if args.cache else None
            if row is not None and row.exists():
                results.append(json.loads(row.read_text()))
            elif args.cached_only:
                missing.append(f"{name} at {n:,}")
                continue
            else:
                if made is None:
                    made = features(args.items)
                    if args.forward_items:
                        made = (*made[:3], *forward_per_item(args.forward_items))
                    else:
                        made = (*made, float("nan"))
                feats, texts, scores, per_item, cpu_item = made
                old = args.reuse_b / f"{name}_{n}_{args.items}.json" if args.reuse_b else None
                earlier = json.loads(old.read_text()) if old is not None and old.exists() else None
                results.append(bench(name, feats, texts, scores, n, per_item, earlier, cpu_item))
                if row is not None:
                    row.parent.mkdir(parents=True, exist_ok=True)
                    row.write_text(json.dumps(results[-1]))
            print("\n".join(fmt(results[-1])), flush=True)
    load = os.getloadavg()[0]
    worst = max(np.abs(np.array(r["acc_a"]) - np.array(r["acc_b"])).max() for r in results) * 100
    lines = [
        "## Probes",
        "",
        f"{datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores ({THREADS} threads; "
        f"the machine was shared: each row gives the load average after A, {load:.1f} when this table was "
        f"written; seconds are inflated, ratios less so), torch {torch.__version__}, `benchmarks/bench_probe.py --items {args.items} --sizes "
        f"{' '.join(map(str, args.sizes))} --threads {THREADS}`. MiniLM-L6 mean-pooled outputs of the "
        "6 blocks; A, the closed form and B see the same features and the same "
        "held-out split (20%). A: `ProbeStats(solver=\"auto\")` fed batches of 64 (L2 logistic "
        f"regression, C from {{{', '.join(f'{c:g}' for c in CS)}}} by 3-fold CV; 2 classes: all layers in one batched "
        "float64 L-BFGS to a gradient norm of 1e-6, solver `lbfgs`; more classes: scikit-learn's `LogisticRegressionCV` "
        "per layer on A's kept rows with A's folds and C rule, solver `logistic-cv`); B: scikit-learn `LogisticRegressionCV` (default tol, "
        "scoring=\"accuracy\") with the same C grid and the same 3 stratified folds (PredefinedSplit), per "
        f"layer. The forward pass is MiniLM's sweep (batches of 32, up to 128 tokens), timed per item over "
        f"{args.forward_items or 'all the'} items in the same process as A, times n. \"A CPU s\" is this "
        "process's CPU time in A (one thread) and the last column A / forward in CPU time, which the other jobs "
        "on the machine do not inflate; every other seconds column is wall-clock."
        + (" † B (and the closed form) taken from an earlier run of this script on the same features, split "
           "and folds (`--reuse-b`): their seconds are from that run." if any(r.get("b_reused") for r in results) else ""),
        "",
        *HEADER,
    ]
    for r in results:
        lines += fmt(r)
    lines += ["", f"Agreement target (every layer within 1 point of B): worst {worst:.1f} points over "
              f"{len(results)} settings - {'met' if worst <= 1.0 else 'NOT met'}."
              + (f" Not measured in this run: {', '.join(missing)}." if missing else ""), ""]
    text = "\n".join(lines)
    print(lines[-2])
    if args.write:
        write_section(args.write, "## Probes", text)


if __name__ == "__main__":
    main()
