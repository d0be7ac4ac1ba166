"""Activation patching sweep: batched with prefix reuse vs the naive loop (one full forward per patch).

The sweep patches the clean residual stream after every chosen block at every position into the
corrupted run (SmolLM2-135M, 30 blocks; the worked example's 9-token prompt pair). The naive
loop is the plain way: for each (block, position) one full forward of the corrupted prompt with
a hook replacing that block's output at that position. layerscope's ``prefix`` method records
both prompts once, then for block l runs only blocks l+1.. on a batch of one row per position.

The two methods run interleaved (A B, B A, A B, ...) for ``--rounds`` rounds, so a change in the
machine's load hits both alike; printed per method: block evaluations (one block on one row =
1), full forwards, the median wall and process-CPU seconds over the rounds, the ratio of the
medians, and whether both give the same restored shares (max abs difference). ``--layers`` patches
a subset of blocks (e.g. ``0:30:3``) to keep a run short; the later blocks still run. ``--write``
appends a section to BENCHMARKS.md.

Usage:
    nice .venv/bin/python benchmarks/bench_patch.py [--model smollm2] [--threads 1] [--rounds 3]
        [--layers 0:30:3] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", default=None, help="blocks to patch, e.g. 0:30:3 (default: all)")
    ap.add_argument("--write", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import layerscope
    from layerscope.analyses.causal.patching import patch

    loaded = layerscope.load_model(args.model)
    layers = None
    if args.layers:
        start, stop, step = (int(x) for x in args.layers.split(":"))
        layers = list(range(start, stop, step))
    times: dict[str, list[tuple[float, float]]] = {"prefix": [], "loop": []}
    results = {}
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        order = ("prefix", "loop") if r % 2 == 0 else ("loop", "prefix")
        for method in order:
            wall, cpu = time.perf_counter(), time.process_time()
            res = patch(loaded, CLEAN, CORRUPT, " Paris", " Rome", method=method, layers=layers)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results[method] = res
            times[method].append((wall, cpu))
            print(f"round {r + 1} {method:>7}: {res.block_calls:>6} block evaluations, "
                  f"{res.forward_calls:>4} full forwards, {wall:7.1f} s wall, {cpu:7.1f} s CPU", flush=True)
    load = max(load, os.getloadavg()[0])
    med = {m: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for m, t in times.items()}
    diff = float(np.max(np.abs(np.asarray(results["prefix"].restored) - np.asarray(results["loop"].restored))))
    calls = {m: (results[m].block_calls, results[m].forward_calls) for m in results}
    ratio_calls = calls["loop"][0] / calls["prefix"][0]
    ratio_wall = med["loop"][0] / med["prefix"][0]
    ratio_cpu = med["loop"][1] / med["prefix"][1]
    res = results["prefix"]
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{args.threads} thread(s), load average up to {load:.0f} (shared)")
    print(f"{len(res.labels)} blocks x {len(res.tokens)} positions; loop/prefix: {ratio_calls:.2f}x block "
          f"evaluations, {ratio_wall:.2f}x median wall, {ratio_cpu:.2f}x median CPU; max |restored "
          f"share difference| {diff:.2e}; {machine}")
    if args.write:
        lines = [
            "", f"### Wall time, interleaved ({datetime.date.today()})", "",
            f"{args.model}, the same prompt pair, blocks {args.layers or 'all'} patched at every position "
            f"({len(res.labels)} x {len(res.tokens)} = {len(res.labels) * len(res.tokens)} patches), "
            f"{args.rounds} rounds alternating the order (A B, B A, ...); medians over the rounds. "
            f"Machine: {machine}. `nice -n 10 .venv/bin/python benchmarks/bench_patch.py --threads "
            f"{args.threads} --rounds {args.rounds}" + (f" --layers {args.layers}" if args.layers else "")
            + "`.", "",
            "| method | block evaluations | full forwards | median wall s | median CPU s | rounds (wall s) |",
            "|---|---:|---:|---:|---:|---|"]
        for method in ("prefix", "loop"):
            name = "prefix reuse, batched (layerscope)" if method == "prefix" else "naive loop (one forward per patch)"
            per = ", ".join(f"{w:.1f}" for w, _ in times[method])
            lines.append(f"| {name} | {calls[method][0]:,} | {calls[method][1]} | {med[method][0]:.1f} | "
                         f"{med[method][1]:.1f} | {per} |")
        lines += ["", f"The naive loop takes {ratio_wall:.2f}x the wall time and {ratio_cpu:.2f}x the CPU time "
                      f"of prefix reuse (medians) for {ratio_calls:.2f}x the block evaluations; the restored "
                      f"shares agree to {diff:.1e}.", ""]
        with open(args.write, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
