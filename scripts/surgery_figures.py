"""Before/after figures of layer surgery on real models; writes docs/SURGERY.md and docs/surgery/.

Run from the repository root (takes ~10-30 min on 2 CPU cores; SmolLM2's first load ~35 s):

    .venv/bin/python scripts/surgery_figures.py            # everything
    .venv/bin/python scripts/surgery_figures.py cnn --resume   # redo one stage, keep the rest
    .venv/bin/python scripts/surgery_figures.py --doc-only     # re-render from results.json

Every number in the page is computed here: SmolLM2 perplexity after removing 1..10 blocks chosen
by Block Influence, by angular distance and the last blocks (blocks chosen on one set of
sentences, perplexity on another); saved, reloaded models for each surgery measured before and
after (parameters, file size, median latency of interleaved runs, quality); MiniLM's embedding
similarity to the original; a zoo CNN trained on MNIST digits, pruned, quantized and run with
early exits.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIGS = DOCS / "surgery"
STATE = FIGS / "results.json"
SMOL_SIZES = (16, 32)  # calibration / held-out sentences: small, SmolLM2 on 2 shared cores is slow
SMOL_LENGTH = 32       # tokens per sentence at most
SMOL_MEASURE = {"max_length": SMOL_LENGTH, "repeats": 5}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save_fig(fig, name: str) -> str:
    FIGS.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGS / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"surgery/{name}"


def sentences(n: int, skip: int = 0) -> list[str]:
    from layerscope.data import load_dataset

    data = load_dataset("sentences", limit=skip + n, seed=0)
    return list(data.items[skip:skip + n])


def row(res) -> dict:
    return res.to_dict()


def smollm2_stage(tmp: Path, out: dict) -> None:
    from layerscope.analyses.importance import layer_importance, removal_curve
    from layerscope.models import load_model
    from layerscope.surgery import (drop_blocks, load_quantized, measure, prune_magnitude,
                                    prune_structured, quantize, save_model, save_quantized)

    log("SmolLM2: loading")
    lm = load_model("smollm2")
    n_calib, n_held = SMOL_SIZES
    calib, held = sentences(n_calib), sentences(n_held, skip=n_calib)
    log(f"SmolLM2: importance on {n_calib} calibration sentences")
    imp = layer_importance(lm, calib, batch_size=16, max_length=SMOL_LENGTH)
    log(f"SmolLM2: removal curves on {n_held} held-out sentences")
    curve = removal_curve(lm, held, max_k=10, criteria=("block-influence", "angular", "last"),
                          importance=imp, batch_size=16, max_length=SMOL_LENGTH)
    out["smollm2_sizes"] = {"calibration": n_calib, "held_out": n_held, "max_tokens": SMOL_LENGTH}
    out["smollm2_curve"] = curve.to_dict()
    out["smollm2_curve_png"] = save_fig(curve.plot(), "smollm2_removal.png")
    from layerscope.surgery.measure import saved_bytes

    opts = dict(SMOL_MEASURE, bytes_before=saved_bytes(lm, lm.module))
    results = {}
    k = 5
    chosen = curve.removed["block-influence"][k - 1]
    log(f"SmolLM2: drop {chosen}, save, reload, measure")
    dropped = drop_blocks(lm, chosen)
    path = save_model(dropped.loaded, dropped.module, tmp / "smol-drop")
    again = load_model(str(path))
    results["drop 5 (block influence)"] = row(measure(lm, again, held, operation="drop",
                                                      output=path, changes={"removed": chosen},
                                                      **opts))
    log("SmolLM2: quantize")
    q = quantize(lm)
    path = save_quantized(q, tmp / "smol-q")
    again = load_quantized(path)
    results["int8 dynamic"] = row(measure(lm, again, held, operation="quantize", output=path,
                                          changes={"skipped": q.skipped}, **opts))
    log("SmolLM2: structured neurons 25%")
    p = prune_structured(lm, 0.25, "neurons")
    path = save_model(p.loaded, p.module, tmp / "smol-neurons")
    results["25% FFN neurons"] = row(measure(lm, load_model(str(path)), held,
                                             operation="prune neurons", output=path,
                                             **opts))
    log("SmolLM2: magnitude 30%")
    p = prune_magnitude(lm, 0.3)
    path = save_model(p.loaded, p.module, tmp / "smol-mag")
    results["30% magnitude"] = row(measure(lm, load_model(str(path)), held,
                                           operation="prune magnitude", output=path,
                                           **opts))
    out["smollm2"] = results


def minilm_stage(tmp: Path, out: dict) -> None:
    from layerscope.data import load_dataset
    from layerscope.models import load_model
    from layerscope.surgery import (auto_blocks, drop_blocks, early_exit, load_quantized, measure,
                                    prune_sensitivity, prune_structured, quantize, save_model,
                                    save_quantized)

    mini = load_model("minilm")
    calib, held = sentences(64), sentences(128, skip=64)
    results = {}
    for label, blocks in (("drop last 2", [4, 5]),
                          ("drop 2 (block influence)", auto_blocks(mini, calib, 2, by="influence"))):
        log(f"MiniLM: {label} {blocks}")
        d = drop_blocks(mini, blocks)
        path = save_model(d.loaded, d.module, tmp / f"mini-{blocks[0]}{blocks[1]}")
        results[f"{label} {blocks}"] = row(measure(mini, load_model(str(path)), held,
                                                   operation="drop", output=path))
    log("MiniLM: quantize")
    q = quantize(mini)
    path = save_quantized(q, tmp / "mini-q")
    results["int8 dynamic"] = row(measure(mini, load_quantized(path), held, operation="quantize",
                                          output=path))
    log("MiniLM: structured neurons 50%")
    p = prune_structured(mini, 0.5, "neurons")
    path = save_model(p.loaded, p.module, tmp / "mini-n")
    results["50% FFN neurons"] = row(measure(mini, load_model(str(path)), held,
                                             operation="prune neurons", output=path))
    out["minilm"] = results
    log("MiniLM: pruning sensitivity")
    sens = prune_sensitivity(mini, held[:64], sparsities=[0.2, 0.4, 0.6, 0.8, 0.9])
    out["minilm_sensitivity"] = sens.to_dict()
    out["minilm_sensitivity_suggest"] = sens.suggest(0.01)
    out["minilm_sensitivity_png"] = save_fig(sens.plot(), "minilm_sensitivity.png")


def minilm_exit_stage(tmp: Path, out: dict) -> None:
    from layerscope.data import load_dataset
    from layerscope.models import load_model
    from layerscope.surgery import early_exit

    log("MiniLM: early exit on sentiment (score > 0)")
    data = load_dataset("sentences", limit=2000, seed=1)
    keep = data.labels != 0
    texts = [t for t, k in zip(data.items, keep.tolist()) if k]
    labels = (data.labels[keep] > 0).long()
    ee = early_exit(load_model("minilm"), (texts, labels), max_length=64)
    out["minilm_exit"] = ee.to_dict()
    out["minilm_exit_png"] = save_fig(ee.plot(), "minilm_early_exit.png")


def cnn_stage(tmp: Path, out: dict) -> None:
    from layerscope.data import load_dataset
    from layerscope.models import load_model
    from layerscope.surgery import (early_exit, load_quantized, measure, prune_structured,
                                    quantize, save_model, save_quantized)

    data = load_dataset("mnist")
    train, test = data.split(test_fraction=0.2, seed=0)
    torch.manual_seed(0)
    cnn = load_model("cnn:channels=16x32,hidden=64")
    net = cnn.module
    log(f"CNN: training on {len(train)} MNIST digits")
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y = train.items.float(), train.labels
    for epoch in range(3):
        perm = torch.randperm(len(y))
        for start in range(0, len(y), 64):
            idx = perm[start:start + 64]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    results = {}
    for s in (0.25, 0.5):
        log(f"CNN: channels {s}")
        p = prune_structured(cnn, s, "channels")
        path = save_model(p.loaded, p.module, tmp / f"cnn-c{s}")
        results[f"{int(s * 100)}% channels"] = row(measure(cnn, load_model(str(path)), test,
                                                           operation="prune channels",
                                                           output=path, batch_size=64))
    log("CNN: quantize")
    q = quantize(cnn)
    path = save_quantized(q, tmp / "cnn-q")
    results["int8 dynamic (Linear only)"] = row(measure(cnn, load_quantized(path), test,
                                                        operation="quantize", output=path,
                                                        batch_size=64))
    out["cnn"] = results
    log("CNN: early exit")
    ee = early_exit(cnn, (test.items.float(), test.labels))  # digits the CNN never saw
    out["cnn_exit"] = ee.to_dict()
    out["cnn_exit_png"] = save_fig(ee.plot(), "cnn_early_exit.png")


def table(results: dict) -> str:
    lines = ["| surgery | params | file (MiB) | latency (ms, median) | speed-up | quality |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        nz = ""
        if r["nonzero_after"] < r["params_after"] * 0.98:
            nz = f" ({r['nonzero_after'] / r['params_after']:.0%} nonzero)"
        lines.append(
            f"| {name} | {r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M{nz} | "
            f"{r['bytes_before'] / 2**20:.1f} → {r['bytes_after'] / 2**20:.1f} | "
            f"{r['latency_ms_before']:.1f} → {r['latency_ms_after']:.1f} | "
            f"×{r['latency_ms_before'] / r['latency_ms_after']:.2f} | "
            f"{r['quality_metric']} {r['quality_before']:.4g} → {r['quality_after']:.4g} |")
    return "\n".join(lines)


def exit_table(ee: dict) -> str:
    lines = ["| threshold | accuracy | blocks run (mean) | time saved (est.) |", "|---|---|---|---|"]
    for t, a, u, s in zip(ee["thresholds"], ee["accuracy"], ee["layers_used"], ee["latency_saved"]):
        lines.append(f"| {t:g} | {a:.3f} | {u:.2f} of {len(ee['layers'])} | {s:.0%} |")
    each = ", ".join(f"{name.replace('probe:', '')} {acc:.3f}"
                     for name, acc in zip(ee["exits"], ee["exit_accuracy"]))
    lines += ["", f"Full depth (last exit): accuracy {ee['full_accuracy']:.3f}. Each exit alone: "
              f"{each}. Heads fitted on {ee['n_train']} items, scored on {ee['n_test']} others."]
    return "\n".join(lines)


def sensitivity_table(sens: dict) -> str:
    lines = ["| block | " + " | ".join(f"sparsity {s:g}" for s in sens["sparsities"]) + " |",
             "|---|" + "---|" * len(sens["sparsities"])]
    for name, row in zip(sens["layers"], sens["values"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def write_doc(out: dict) -> None:
    parts = ["# Layer surgery: what it costs and gains", "",
             f"Written by `scripts/surgery_figures.py` on {out['date']} ({out['machine']}; "
             f"torch {torch.__version__}, {out['threads']} threads). Every number below is "
             f"computed by that script; rerun it to refresh. Latency is the median of "
             f"interleaved runs (before, after, before, ...) of one batch after a warm-up, on a "
             f"shared 2-core machine: read ratios, not absolute times. File sizes are the saved "
             f"folders (the original saved the same way for \"before\"). Load average when the "
             f"run started: {out.get('load_average', 'not recorded')} on 2 cores (other jobs "
             f"shared the machine): at such loads single latencies swing by 2x, so only large "
             f"ratios (int8, halved channels) mean much; time them again on a quiet machine.", ""]
    if "smollm2_curve" in out:
        c = out["smollm2_curve"]
        parts += ["## SmolLM2-135M: removing blocks", "",
                  f"Blocks chosen on {out['smollm2_sizes']['calibration']} sentences, perplexity "
                  f"on {c['n_items']} other sentences of at most "
                  f"{out['smollm2_sizes']['max_tokens']} tokens (intact: {c['baseline']:.2f}); a "
                  f"small sample, as SmolLM2 runs slowly on 2 shared cores: raise SMOL_SIZES in "
                  f"the script for tighter numbers.", "",
                  f"![removal curve]({out['smollm2_curve_png']})", "",
                  "| blocks removed | " + " | ".join(c["curves"]) + " |",
                  "|---|" + "---|" * len(c["curves"])]
        for i, k in enumerate(c["ks"]):
            parts.append(f"| {k} | " + " | ".join(f"{c['curves'][n][i]:.2f} "
                                                  f"({','.join(map(str, c['removed'][n][i]))})"
                                                  for n in c["curves"]) + " |")
        drop = out["smollm2"].get("drop 5 (block influence)")
        check = ""
        if drop:
            check = (f" The saved and reloaded 5-block model gives perplexity "
                     f"{drop['quality_after']:.2f}; the removal analysis (blocks skipped in the "
                     f"original) gave {c['curves']['block-influence'][4]:.2f}.")
        parts += ["", "Saved, reloaded models on the same held-out sentences." + check, "",
                  table(out["smollm2"]), ""]
    if "minilm" in out:
        parts += ["## MiniLM-L6 (sentence embeddings)", "",
                  "Quality: cosine similarity of the mean-pooled sentence embedding to the "
                  "original's, on 128 held-out sentences.", "", table(out["minilm"]), "",
                  f"Pruning sensitivity: {out['minilm_sensitivity']['metric']} with one block "
                  f"magnitude-pruned at a time ({out['minilm_sensitivity']['n_items']} sentences):",
                  "", sensitivity_table(out["minilm_sensitivity"]), "",
                  f"![sensitivity]({out['minilm_sensitivity_png']})", "",
                  "Highest sparsity per block within 1% loss: " + ", ".join(
                      f"{k} {v:g}" for k, v in out["minilm_sensitivity_suggest"].items()), "",
                  ]
    if "minilm_exit" in out:
        parts += ["### MiniLM early exit", "",
                  "Sentiment (human score > 0 vs < 0) on real sentences, a probe head after "
                  "every block:", "", exit_table(out["minilm_exit"]), "",
                  f"![early exit]({out['minilm_exit_png']})", ""]
    if "cnn" in out:
        parts += ["## Zoo CNN trained on MNIST digits", "",
                  "Quality: accuracy on 1,000 held-out digits.", "", table(out["cnn"]), "",
                  f"Early exit (probe head after block 0 fitted on {out['cnn_exit']['n_train']} "
                  f"held-out digits, scored on {out['cnn_exit']['n_test']} others; the model's own "
                  f"head last):", "",
                  exit_table(out["cnn_exit"]), "", f"![early exit]({out['cnn_exit_png']})", ""]
    parts += ["## Commands", "", "```",
              "layerscope drop smollm2 --layers 21-29 -o smol-21 --data sentences --limit 64",
              "layerscope drop minilm --auto 2 --by angular --data sentences -o mini-4",
              "layerscope prune minilm --sparsity 0.5 --structured neurons -o mini-ffn",
              "layerscope prune smollm2 --sparsity 0.5 --structured heads -o smol-heads",
              "layerscope prune cnn --sparsity 0.5 --structured channels -o cnn-half",
              "layerscope prune minilm --sensitivity --data sentences --limit 64",
              "layerscope quantize minilm -o mini-int8 --layers 0-3",
              "layerscope early-exit minilm sentences --binarize 0 --threshold 0.9",
              "```", "",
              "Hugging Face results reload with `from_pretrained(OUT)`, zoo results with "
              "`layerscope.models.load_model(OUT)`, quantized ones with "
              "`layerscope.surgery.load_quantized(OUT)` (safetensors + JSON, no pickle).", ""]
    parts += ["## Notes", "",
              "- int8 dynamic quantization uses `torch.ao.quantization.quantize_dynamic` "
              "(deprecated in torch 2.13 in favour of torchao, still shipped; on this CPU it was "
              "faster than torchao 0.18's eager int8). Only `nn.Linear` is quantized; the CNN's "
              "convolutions stay float.",
              "- Magnitude pruning makes weights zero but not fewer: the file and the dense "
              "latency stay; structured pruning (neurons, heads, channels) shrinks both.",
              "- Early-exit time saved is estimated from measured per-block timings of the full "
              "forward, not measured on a dynamic-depth runtime.", ""]
    (DOCS / "SURGERY.md").write_text("\n".join(parts))


def main() -> None:
    if "--doc-only" in sys.argv:  # re-render the page from the saved numbers
        write_doc(json.loads(STATE.read_text()))
        return
    out = json.loads(STATE.read_text()) if STATE.exists() and "--resume" in sys.argv else {}
    out.update(date=datetime.date.today().isoformat(), threads=torch.get_num_threads(),
               load_average=round(os.getloadavg()[0], 1),
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    stages = [("cnn", cnn_stage), ("minilm", minilm_stage), ("minilm_exit", minilm_exit_stage),
              ("smollm2", smollm2_stage)]
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, stage in stages:
            if (only and name not in only) or (not only and name in out):
                continue
            start = time.time()
            stage(Path(tmp), out)
            log(f"{name} done in {time.time() - start:.0f} s")
            FIGS.mkdir(parents=True, exist_ok=True)
            STATE.write_text(json.dumps(out, indent=1))
            write_doc(out)
    write_doc(out)
    log(f"wrote {DOCS / 'SURGERY.md'}")


if __name__ == "__main__":
    main()
