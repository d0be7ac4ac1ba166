"""Activation patching sweep: batched with prefix reuse vs the naive loop (one full forward per patch).

The sweep patches the clean residual stream after every block at every position into the
corrupted run (SmolLM2-135M, 30 blocks; the worked example's 9-token prompt pair). The naive
loop is the plain way: for each (block, position) one full forward of the corrupted prompt with
a hook replacing that block's output at that position. layerscope's ``prefix`` method records
both prompts once, then for block l runs only blocks l+1.. on a batch of one row per position.

Printed per method: block evaluations (one block on one row = 1), full forwards, wall seconds
and process CPU seconds (the machine is shared; CPU seconds are the steadier number), and
whether both give the same restored shares (max abs difference). ``--write`` appends a section
to BENCHMARKS.md.

Usage:
    nice .venv/bin/python benchmarks/bench_patch.py [--model smollm2] [--threads 2] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import layerscope
    from layerscope.analyses.causal.patching import patch

    loaded = layerscope.load_model(args.model)
    rows = []
    results = {}
    for method in ("prefix", "loop"):
        wall, cpu = time.perf_counter(), time.process_time()
        res = patch(loaded, CLEAN, CORRUPT, " Paris", " Rome", method=method)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[method] = res
        rows.append((method, res.block_calls, res.forward_calls, wall, cpu))
        print(f"{method:>7}: {res.block_calls:>6} block evaluations, {res.forward_calls:>4} full forwards, "
              f"{wall:7.1f} s wall, {cpu:7.1f} s CPU", flush=True)
    diff = float(np.max(np.abs(np.asarray(results["prefix"].restored) - np.asarray(results["loop"].restored))))
    ratio = rows[1][1] / rows[0][1]
    res = results["prefix"]
    print(f"{len(res.labels)} blocks x {len(res.tokens)} positions; prefix uses {ratio:.2f}x fewer block "
          f"evaluations, {rows[1][4] / rows[0][4]:.2f}x less CPU time; max |restored share difference| {diff:.2e}")
    if args.write:
        lines = [
            "", f"## Activation patching ({datetime.date.today()}, {platform.machine()}, "
                f"{args.threads} threads, shared machine)", "",
            f"{args.model}, clean {CLEAN!r} / corrupt {CORRUPT!r}, target ' Paris', foil ' Rome': every "
            f"block x position ({len(res.labels)} x {len(res.tokens)} = {len(res.labels) * len(res.tokens)} "
            f"patches), denoising, logit difference. `benchmarks/bench_patch.py`.", "",
            "| method | block evaluations | full forwards | wall s | CPU s |", "|---|---:|---:|---:|---:|"]
        for method, calls, fwd, wall, cpu in rows:
            name = "prefix reuse, batched (layerscope)" if method == "prefix" else "naive loop (one forward per patch)"
            lines.append(f"| {name} | {calls} | {fwd} | {wall:.1f} | {cpu:.1f} |")
        lines += ["", f"Prefix reuse needs {ratio:.2f}x fewer block evaluations and {rows[1][4] / rows[0][4]:.2f}x "
                      f"less CPU time; the restored shares agree to {diff:.1e}.", ""]
        with open(args.write, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
