"""CKA over all layer pairs: layerscope's streamed sums vs per-pair n×n Gram matrices.

The anchor is the way torch_cka and most notebooks compute it: for every pair of layers build
the two n × n Gram matrices and evaluate HSIC on them (here the same unbiased HSIC₁, so the
numbers agree). Features: 6 layers × 384 units (the MiniLM-L6 block width), a chain of random
maps x_{l+1} = tanh(x_l W_l) + noise, generated in batches of 256 so the streamed side never
holds more than one batch. Each (method, n) runs in a fresh process: wall time of the CKA work
and peak resident memory (ru_maxrss) are printed, and with --write appended to BENCHMARKS.md
under "## CKA". Both methods run alternately for each n.

Usage:
    .venv/bin/python benchmarks/bench_cka.py --sizes 1000 2000 4000 [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

THREADS = 1
LAYERS, WIDTH, BATCH = 6, 384, 256


def batches(n: int):
    import numpy as np

    g = np.random.default_rng(0)
    maps = [g.normal(size=(WIDTH, WIDTH)) / WIDTH**0.5 for _ in range(LAYERS - 1)]
    for a in range(0, n, BATCH):
        x = g.normal(size=(min(BATCH, n - a), WIDTH))
        out = [x]
        for w in maps:
            x = np.tanh(x @ w) * 2 + 0.5 * g.normal(size=x.shape)
            out.append(x)
        yield out


def streamed(n: int):
    import torch

    from layerscope.analyses.similarity import CKAStats, cka_from_hsic
    from layerscope.reducers import BatchInfo

    s = CKAStats()
    for i, layers in enumerate(batches(n)):
        s.update({str(k): torch.from_numpy(x) for k, x in enumerate(layers)}, BatchInfo(i * BATCH, len(layers[0])))
    idx = list(range(LAYERS))
    return cka_from_hsic(s.hsic(), idx, idx)[0]


def gram_pairs(n: int):
    import numpy as np

    from layerscope.analyses.similarity import unbiased_hsic

    parts = list(batches(n))
    X = [np.concatenate([p[k] for p in parts]) for k in range(LAYERS)]
    out = np.zeros((LAYERS, LAYERS))
    for i in range(LAYERS):
        for j in range(LAYERS):
            K, L = X[i] @ X[i].T, X[j] @ X[j].T
            out[i, j] = unbiased_hsic(K, L) / np.sqrt(unbiased_hsic(K, K) * unbiased_hsic(L, L))
    return np.clip(out, 0, 1)


def one(method: str, n: int) -> None:
    import torch

    torch.set_num_threads(THREADS)
    t = time.perf_counter()
    m = (streamed if method == "streamed" else gram_pairs)(n)
    sec = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "n": n, "seconds": sec, "peak_mb": rss, "cka": m.tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--one", nargs=2)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    if args.one:
        return one(args.one[0], int(args.one[1]))
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "OPENBLAS_NUM_THREADS": str(THREADS)}
    rows = []
    for n in args.sizes:
        res = {}
        for method in ("streamed", "gram"):
            out = subprocess.run([sys.executable, __file__, "--one", method, str(n)], env=env,
                                 capture_output=True, text=True, check=True)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        import numpy as np

        diff = float(np.abs(np.array(res["streamed"]["cka"]) - np.array(res["gram"]["cka"])).max())
        rows.append((n, res, diff))
    lines = ["## CKA", "",
             f"{datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores ({THREADS} threads, "
             f"load average {os.getloadavg()[0]:.1f}), `benchmarks/bench_cka.py --sizes "
             f"{' '.join(map(str, args.sizes))}`. {LAYERS} layers × {WIDTH} units, all {LAYERS * LAYERS} "
             "ordered pairs (the Gram side recomputes per pair as torch_cka does); unbiased HSIC₁ on both "
             "sides. Peak memory is the whole process's ru_maxrss (Python + torch ≈ 300 MB of it).", "",
             "| n | streamed s | n×n Gram s | speed-up | streamed peak MB | Gram peak MB | max abs CKA diff |",
             "|---|---|---|---|---|---|---|"]
    for n, res, diff in rows:
        s, g = res["streamed"], res["gram"]
        lines.append(f"| {n} | {s['seconds']:.2f} | {g['seconds']:.2f} | {g['seconds'] / s['seconds']:.1f}× | "
                     f"{s['peak_mb']:.0f} | {g['peak_mb']:.0f} | {diff:.1e} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        from sections import write_section

        write_section(args.write, "## CKA", text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
