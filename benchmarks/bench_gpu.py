"""The GPU path, measured: plain forward tokens/s against layerscope's passes, with peak GPU memory.

On the CUDA device present (``cuda:0``), for MiniLM-L6, SmolLM2-135M and a random-weight Llama
sized to the device (bfloat16, about a quarter of its memory in weights), over the bundled
sentences (batches of 32, at most 128 tokens, padded per batch):

- plain forward: the model called on each encoded batch under ``torch.inference_mode()``;
- sweep, statistics: Moments (every real token) + NonFinite + Covariance, every block;
- the report's main pass: the sweep the report runs (token statistics, a sentence-length probe,
  linear CKA sums, a 256-row reservoir), every block;
- record: every block's mean-pooled output to an fp16 store on local disk;
- importance: layer removal with prefix reuse (one recorded pass, then each removal).

Each variant runs once to warm up, then ``--repeats`` times interleaved with the plain forward;
tokens/s counts real (unpadded) tokens; ratios are throughput relative to the plain forward of
the same round; peak memory is ``torch.cuda.max_memory_allocated`` during the variant. The
target is the sweep with all analyses attached (the report's main pass) keeping >= 90% of the
plain forward throughput. A time budget (default 7 minutes) skips what would not fit and says so.

Without a CUDA device it prints why and exits 0 (``--device cpu`` runs the same code on the CPU
as a smoke check, without memory figures).

Usage:
    .venv/bin/python benchmarks/bench_gpu.py                       # everything, < 8 minutes
    .venv/bin/python benchmarks/bench_gpu.py --write BENCHMARKS.md # and replace its GPU section
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --models minilm --items 64 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sections import write_section  # benchmarks/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## GPU"
BATCH = 32
MAX_LENGTH = 128


def sentences(n: int) -> list[str]:
    from layerscope.data import load_dataset

    texts = list(load_dataset("sentences").items)
    return [texts[i % len(texts)] for i in range(n)]


def big_llama_config(total_bytes: int, scale: float = 1.0):
    """A Llama config whose bfloat16 weights take about a quarter of the device (7B-like shapes,
    as many layers as fit, at least 2 and at most 32; ``scale`` shrinks the width for a smoke
    check). The vocabulary is SmolLM2's, whose tokenizer feeds it."""
    from transformers import LlamaConfig

    d = max(64, int(4096 * scale) // 64 * 64)
    ff, vocab = int(d * 2.6875) // 64 * 64, 49152
    per_layer = (4 * d * d + 3 * d * ff) * 2
    fixed = 2 * vocab * d * 2
    layers = int(max(2, min(32, (total_bytes / 4 - fixed) // per_layer)))
    return LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=ff,
                       num_hidden_layers=layers, num_attention_heads=d // 128 or 1,
                       num_key_value_heads=d // 128 or 1,
                       max_position_embeddings=2048)


def load(name: str, device, dtype, scale: float = 1.0):
    import torch

    from layerscope.models import load_model

    if name != "llama-random":
        return load_model(name, device=str(device), dtype=dtype)
    from transformers import LlamaForCausalLM

    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 8 << 30
    cfg = big_llama_config(total, scale)
    torch.manual_seed(0)
    with torch.device(device):
        net = LlamaForCausalLM(cfg).to(dtype=getattr(torch, dtype)).eval()
    from layerscope.models import wrap_module

    loaded = wrap_module(net, ref=f"llama-random-{cfg.num_hidden_layers}x{cfg.hidden_size}",
                         family="llama")
    loaded.tokenizer = load_model("smollm2").tokenizer
    return loaded


class Timer:
    def __init__(self, device):
        self.device = device

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn) -> tuple[float, float | None]:
        """(seconds, peak MiB allocated during fn) with the device synchronised around it."""
        import torch

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None
        return seconds, peak


def variants(loaded, texts, device, store_dir: Path) -> dict:
    import torch

    from layerscope.analyses import probe as prb
    from layerscope.analyses import similarity as sim
    from layerscope.analyses.importance import layer_importance
    from layerscope.reducers import Covariance, Moments, NonFinite, Reservoir
    from layerscope.store import record
    from layerscope.sweep import sweep

    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    encoded = [loaded.encode(b, max_length=MAX_LENGTH) for b in batches]
    length_task = prb.prepare_data(texts, "length", seed=0)

    def plain():
        with torch.inference_mode():
            for enc in encoded:
                loaded(enc.to(device))

    def stats():
        sweep(loaded, texts, reducers=[Moments(view="tokens"), NonFinite(view="tokens"), Covariance()],
              batch_size=BATCH, max_length=MAX_LENGTH, progress=False)

    def main_pass():
        reds = [Moments(view="tokens"), NonFinite(view="tokens"),
                *prb.reducers(length_task, view="mean"), *sim.reducers(kernel="linear", view="mean"),
                Reservoir(capacity=256, view="mean")]
        sweep(loaded, length_task, reducers=reds, batch_size=BATCH, max_length=MAX_LENGTH,
              progress=False)

    stores = iter(range(1 << 30))

    def store():   # a new folder each time: an existing complete store would only be verified
        record(loaded, texts, store_dir / str(next(stores)), dtype="float16", batch_size=BATCH,
               max_length=MAX_LENGTH, progress=False)

    def importance():
        layer_importance(loaded, texts[: max(BATCH, len(texts) // 4)], batch_size=BATCH,
                         max_length=MAX_LENGTH)

    return {"plain forward": plain, "sweep: Moments + NonFinite + Covariance": stats,
            "report main pass (stats, probe, CKA, reservoir)": main_pass,
            "record fp16 store, every block": store,
            "importance, prefix reuse (1/4 of the items)": importance}


def real_tokens(loaded, texts) -> int:
    total = 0
    for i in range(0, len(texts), BATCH):
        enc = loaded.encode(texts[i:i + BATCH], max_length=MAX_LENGTH)
        total += int(enc.mask.sum()) if enc.mask is not None else enc.size
    return total


def bench_model(name: str, args, device, deadline: float) -> dict:
    import torch

    from layerscope.layers import Layers

    t_load = time.perf_counter()
    loaded = load(name, device, args.dtype, args.llama_scale)
    n_items = args.items if name != "llama-random" else max(BATCH, args.items // 4)
    texts = sentences(n_items)
    tokens = real_tokens(loaded, texts)
    n_blocks = len(Layers(loaded).select(None))
    params = sum(p.numel() for p in loaded.module.parameters())
    out = {"model": loaded.ref, "blocks": n_blocks, "params": params, "items": n_items,
           "tokens": tokens, "load_s": time.perf_counter() - t_load, "rows": [], "skipped": []}
    timer = Timer(device)
    with tempfile.TemporaryDirectory() as tmp:
        runs = variants(loaded, texts, device, Path(tmp) / "store")
        plain = runs["plain forward"]
        for label, fn in runs.items():
            if time.perf_counter() > deadline:
                out["skipped"].append(label)
                continue
            frac = 0.25 if label.startswith("importance") else 1.0
            timer.run(fn)                       # warm-up (kernels, allocator, caches)
            secs, plain_secs, peak = [], [], None
            for _ in range(args.repeats):
                p, _ = timer.run(plain)
                s, pk = timer.run(fn)
                plain_secs.append(p)
                secs.append(s)
                peak = pk if peak is None or (pk is not None and pk > peak) else peak
            ratios = [(p * frac) / s for p, s in zip(plain_secs, secs)]   # throughput ratio
            out["rows"].append({"variant": label, "seconds": statistics.median(secs),
                                "tokens_per_s": tokens * frac / statistics.median(secs),
                                "ratio": statistics.median(ratios), "ratio_min": min(ratios),
                                "ratio_max": max(ratios), "peak_mib": peak})
            print(f"  {label:50s} {statistics.median(secs):8.3f} s  "
                  f"{tokens * frac / statistics.median(secs):10.0f} tok/s  "
                  f"x{statistics.median(ratios):.3f}" + (f"  peak {peak:,.0f} MiB" if peak else ""),
                  flush=True)
    del loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def markdown(results: list[dict], args, device_name: str, elapsed: float) -> str:
    import torch
    import transformers

    lines = [SECTION, "",
             f"`benchmarks/bench_gpu.py`, {datetime.date.today()}, {device_name}; python "
             f"{platform.python_version()}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}; dtype {args.dtype}, batches of {BATCH}, at most "
             f"{MAX_LENGTH} tokens, {args.repeats} rounds interleaved with the plain forward "
             f"after a warm-up; whole run {elapsed:.0f} s. Ratio = the variant's throughput "
             f"relative to the plain forward of the same round (median, min-max). Peak = "
             f"torch.cuda.max_memory_allocated during the variant.", ""]
    for r in results:
        lines += [f"### {r['model']}: {r['blocks']} blocks, {r['params'] / 1e6:,.1f}M parameters, "
                  f"{r['items']} sentences, {r['tokens']:,} real tokens", "",
                  "| variant | median s | tokens/s | ratio to plain | peak MiB |", "|---|---|---|---|---|"]
        for row in r["rows"]:
            peak = f"{row['peak_mib']:,.0f}" if row["peak_mib"] is not None else "-"
            lines.append(f"| {row['variant']} | {row['seconds']:.3f} | {row['tokens_per_s']:,.0f} | "
                         f"{row['ratio']:.3f} ({row['ratio_min']:.3f}-{row['ratio_max']:.3f}) | {peak} |")
        if r["skipped"]:
            lines.append(f"\nSkipped for the time budget: {', '.join(r['skipped'])}.")
        main = next((row for row in r["rows"] if row["variant"].startswith("report main")), None)
        if main is not None:
            verdict = "met" if main["ratio"] >= 0.90 else "NOT met"
            lines.append(f"\nTarget (report main pass >= 0.90 of plain throughput): {verdict} "
                         f"({main['ratio']:.3f}).")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke check)")
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2", "llama-random"])
    parser.add_argument("--items", type=int, default=1024, help="sentences per model (a quarter "
                        "for the big random Llama)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later variants are "
                        "skipped past it")
    parser.add_argument("--llama-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, default=None, help="replace the GPU section of this file")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine (torch.cuda.is_available() is False); "
              "nothing measured. Run it where a GPU is present, or --device cpu for a smoke check.")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        name = f"{torch.cuda.get_device_name(device)} ({torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB)"
    else:
        name = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    results = []
    for model in args.models:
        if time.perf_counter() > deadline:
            print(f"{model}: skipped (time budget)")
            continue
        print(f"{model} on {name}:", flush=True)
        try:
            results.append(bench_model(model, args, device, deadline))
        except Exception as exc:  # one model failing (missing package, out of memory) is reported
            print(f"  {model}: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    text = markdown(results, args, name, time.perf_counter() - t0)
    print()
    print(text)
    if args.write is not None and results:
        write_section(args.write, SECTION, text)
        print(f"wrote the {SECTION!r} section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
