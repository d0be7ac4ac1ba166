"""A layer-removal sweep: prefix reuse versus L naive full passes with an identity hook.

Both compute the same numbers (the model's objective with each of the L blocks removed, checked
equal here); the prefix method records each block's input once per batch and re-runs only the
blocks after the removed one (about (L+1)/2 forwards' worth of blocks), the naive one runs one
full forward per removed block (L forwards). Runs interleaved (naive, prefix, naive, prefix, ...)
after a warm-up, with a pinned thread count; reports medians and the per-round ratio's spread,
and appends (or replaces) the "## Layer removal" section of BENCHMARKS.md with --write.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_importance.py --models minilm:32,smollm2:16 --repeats 3 --write
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from sections import write_section  # benchmarks/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Layer removal"


def sentences(n: int, seed: int = 0) -> tuple[list[str], str]:
    try:
        from layerscope.data import load_dataset

        return list(load_dataset("sentences", limit=n, seed=seed).items), "layerscope 'sentences'"
    except ImportError:
        texts = []
        for f in sorted(Path("/tmp/vader/hutto_ICWSM_2014").glob("*_GroundTruth.txt")):
            texts += [line.split("\t")[2].strip() for line in f.read_text(errors="replace").splitlines()
                      if line.count("\t") >= 2]
        random.Random(seed).shuffle(texts)
        return texts[:n], "VADER ground-truth sentences (seeded shuffle)"


def bench(ref: str, texts: list[str], repeats: int, batch_size: int, max_length: int) -> dict:
    from layerscope.analyses.importance import layer_importance
    from layerscope.models import load_model

    loaded = load_model(ref)
    small = texts[:2]
    layer_importance(loaded, small, batch_size=batch_size, max_length=max_length, method="naive")
    layer_importance(loaded, small, batch_size=batch_size, max_length=max_length, method="prefix")
    times: dict[str, list[float]] = {"naive": [], "prefix": []}
    results = {}
    for _ in range(repeats):
        for method in ("naive", "prefix"):
            t0 = time.perf_counter()
            results[method] = layer_importance(loaded, texts, batch_size=batch_size,
                                               max_length=max_length, method=method)
            times[method].append(time.perf_counter() - t0)
    worst = max(abs(a - b) / abs(b) for a, b in zip(results["prefix"].metric, results["naive"].metric))
    ratios = [n / p for n, p in zip(times["naive"], times["prefix"])]
    return {"model": ref, "blocks": len(results["prefix"].layers), "items": len(texts),
            "naive": statistics.median(times["naive"]), "prefix": statistics.median(times["prefix"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "calls_naive": results["naive"].block_calls, "calls_prefix": results["prefix"].block_calls,
            "max_rel_diff": worst, "objective": results["prefix"].objective}


def section(rows: list[dict], args, source: str) -> str:
    lines = [
        SECTION, "",
        f"`benchmarks/bench_importance.py`, {datetime.date.today().isoformat()}, {platform.machine()} "
        f"CPU, {args.threads} threads, torch {torch.__version__}. Sentences from {source} (count per "
        f"model in the table), "
        f"batches of {args.batch_size}, at most {args.max_length} tokens; remove each block in turn "
        f"and measure the model's own objective. Naive = one full forward per removed block "
        f"(identity hook); prefix = one recorded forward per batch, then only the blocks after the "
        f"removed one. Interleaved naive/prefix, {args.repeats} rounds after a warm-up; medians. The "
        f"machine was shared with other jobs, so absolute times are noisy; the ratio is per round.",
        "",
        "| model | blocks | items | objective | naive (s) | prefix (s) | speed-up (min-max) | block calls naive / prefix | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['blocks']} | {r['items']} | {r['objective']} | {r['naive']:.2f} | {r['prefix']:.2f} | "
                     f"{r['ratio']:.2f}× ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
                     f"{r['calls_naive']} / {r['calls_prefix']} | {r['max_rel_diff']:.1e} |")
    lines += ["", "The block calls fall to about (L+3)/(2L) of the naive count; the speed-up is "
              "smaller than that because the prefix method still runs the model's tail (for a causal "
              "LM the vocabulary-wide head, on the scored positions only) once per removal.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="minilm:32,smollm2:16",
                        help="comma-separated MODEL:ITEMS")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models.split(","):
        ref, _, n = spec.partition(":")
        texts, source = sentences(int(n) if n else args.items)
        row = bench(ref, texts, args.repeats, args.batch_size, args.max_length)
        print(row, flush=True)
        rows.append(row)
    text = section(rows, args, source)
    print(text)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", SECTION, text)


if __name__ == "__main__":
    main()
