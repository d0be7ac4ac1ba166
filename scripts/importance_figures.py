"""SmolLM2-135M's 30 blocks: perplexity when each block is removed, and when k blocks are removed
by each criterion (Block Influence, angular distance, least harmful single removals, the last k).

Writes docs/importance/*.png, docs/importance/smollm2.json and docs/IMPORTANCE.md (numbers
computed here, nothing typed in by hand). Run by hand, about 10-20 minutes on 2 CPU cores:

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/importance_figures.py [--items 48] [--max-k 10]
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/importance_figures.py --lens   # then the logit lens

``--lens`` adds (or replaces) a "Logit lens" section of docs/IMPORTANCE.md, ``--tuned`` a "Tuned
lens" section (train on 480 sentences, compare on 120 held out; about 15 minutes):

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/importance_figures.py --tuned [--steps 60]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "importance"


def real_sentences(n: int, seed: int = 0, min_words: int = 8) -> tuple[list[str], str]:
    """``n`` real English sentences: layerscope's ``sentences`` data set, else the VADER files."""
    try:
        from layerscope.data import load_dataset

        items = [t for t in load_dataset("sentences", limit=20 * n, seed=seed).items
                 if len(t.split()) >= min_words][:n]
        return items, "layerscope 'sentences' (Hutto & Gilbert 2014)"
    except ImportError:
        folder = Path("/tmp/vader/hutto_ICWSM_2014")
        texts = []
        for f in sorted(folder.glob("*_GroundTruth.txt")):
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) >= 3 and len(parts[2].split()) >= min_words:
                    texts.append(parts[2].strip())
        random.Random(seed).shuffle(texts)
        return texts[:n], "VADER ground-truth sentences (Hutto & Gilbert 2014), seeded shuffle"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--max-k", type=int, default=12)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lens", action="store_true", help="only the logit-lens section")
    parser.add_argument("--tuned", action="store_true", help="only the tuned-lens section")
    parser.add_argument("--tuned-items", type=int, default=600)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompt", default="The capital of France is")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.lens:
        lens_section(args)
        return
    if args.tuned:
        tuned_section(args)
        return

    from layerscope.analyses.importance import removal_curve, layer_importance
    from layerscope.models import load_model

    t0 = time.perf_counter()
    model = load_model("smollm2")
    load_s = time.perf_counter() - t0
    texts, source = real_sentences(args.items)
    texts.sort(key=len)  # batches of similar lengths: less padding, same numbers
    imp = layer_importance(model, texts, batch_size=16, max_length=args.max_length, progress=True)
    print(imp.summary(), flush=True)
    curve = removal_curve(model, texts, max_k=args.max_k, importance=imp, batch_size=16,
                          max_length=args.max_length, progress=True)
    print(curve.summary(), flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    imp.plot().savefig(OUT / "smollm2_single.png", dpi=110)
    curve.plot().savefig(OUT / "smollm2_curve.png", dpi=110)
    (OUT / "smollm2.json").write_text(json.dumps(
        {"importance": imp.to_dict(), "curve": curve.to_dict(), "texts": texts, "source": source},
        indent=1))

    L = len(imp.layers)
    eff = imp.effect()
    order = imp.ranking()
    single_rows = [[i, f"{imp.metric[i]:.2f}", f"{imp.metric[i] / imp.baseline:.2f}",
                    f"{imp.block_influence[i]:.4f}", f"{imp.angular[0][i]:.4f}"] for i in range(L)]
    curve_rows = []
    for j, k in enumerate(curve.ks):
        row = [k] + [f"{curve.curves[c][j]:.1f}" for c in curve.curves]
        if curve.sum_of_singles is not None:
            row.append(f"{curve.sum_of_singles[j]:.1f}")
        curve_rows.append(row)
    sets = {c: curve.removed[c][-1] for c in curve.removed}
    k_last = curve.ks[-1]
    finals = {c: curve.curves[c][-1] for c in curve.curves}
    best = min(finals, key=finals.get)
    worst_single = int(max(range(L), key=lambda i: eff[i]))
    middle = [i for i in range(L) if 3 <= i < L - 3]
    mid_max = max(imp.metric[i] for i in middle)
    md = f"""# Which of SmolLM2's 30 blocks matter

Generated by `scripts/importance_figures.py` on {datetime.date.today().isoformat()}
({platform.machine()}, {args.threads} threads, torch {torch.__version__}); every number below is
computed by that script — rerun it to refresh. Model: SmolLM2-135M-Instruct (Q4_1 GGUF weights
dequantised to float32, 30 Llama blocks). Data: {len(texts)} sentences of at least 8 words from
{source}, at most {args.max_length} tokens each; the objective is next-token perplexity over real
tokens. Removing a block = skipping it (its output is its input on the residual stream).
Removal used the **{imp.method}** method (prefix reuse: one recorded forward per batch, then only
the blocks after the removed one are re-run); the single-removal sweep took {imp.seconds:.0f} s
and the curve {curve.seconds - imp.seconds:.0f} s (loading {load_s:.0f} s).

## Removing one block

Intact perplexity: **{imp.baseline:.2f}**. Removing block {worst_single} hurts most
(perplexity {imp.metric[worst_single]:.1f}, ×{imp.metric[worst_single] / imp.baseline:.1f}); the
least harmful are blocks {", ".join(str(i) for i in order[:5])} (perplexity
{", ".join(f"{imp.metric[i]:.2f}" for i in order[:5])}). Among the middle blocks (3 to {L - 4})
the worst single removal reaches {mid_max:.2f}.

![perplexity with each block removed, Block Influence, angular distance](importance/smollm2_single.png)

{table(["block", "perplexity without it", "× intact", "Block Influence", "angular d(l, l+1)"], single_rows)}

## Removing k blocks

Each set is measured as a whole (dropping several blocks is not the sum of dropping each).
Criteria: **block-influence** = the k lowest Block Influence blocks; **angular** = the k
consecutive blocks starting where d(l, l+k) is smallest (Gromov et al. 2024); **single** = the k
least harmful single removals; **last** = simply the last k blocks.
{"The last column is what adding up the single removals' log-perplexity increases predicts for the 'single' sets." if curve.sum_of_singles is not None else ""}

![perplexity against the number of blocks removed, per criterion](importance/smollm2_curve.png)

{table(["k"] + list(curve.curves) + (["single, predicted by sum"] if curve.sum_of_singles is not None else []), curve_rows)}

With {k_last} blocks removed the best criterion here is **{best}** (perplexity {finals[best]:.1f}
against {imp.baseline:.2f} intact); the sets removed at k = {k_last}:
{chr(10).join(f"- {c}: {s}" for c, s in sets.items())}
"""
    (ROOT / "docs" / "IMPORTANCE.md").write_text(md)
    print(f"wrote {ROOT / 'docs' / 'IMPORTANCE.md'} in {time.perf_counter() - t0:.0f} s")


def lens_section(args) -> None:
    from layerscope.analyses.lens import logit_lens

    texts, source = real_sentences(args.items)
    texts.sort(key=len)
    res = logit_lens("smollm2", texts, prompt=args.prompt, top_k=5, batch_size=8,
                     max_length=args.max_length, progress=True)
    print(res.summary(), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    res.plot().savefig(OUT / "smollm2_lens.png", dpi=110)
    res.to_json(OUT / "smollm2_lens.json")
    rows = [[name, f"{res.accuracy[i]:.3f}", f"{res.loss[i]:.2f}", f"{res.kl[i]:.3f}",
             f"{res.top1_agreement[i]:.3f}", repr(res.top_tokens[i][-1][0])]
            for i, name in enumerate(res.layers)]
    half = res.first_layer_reaching(0.5)
    best = max(range(len(res.layers)), key=lambda i: res.accuracy[i])
    text = f"""## Logit lens

Each layer's residual stream decoded through SmolLM2's final RMSNorm and its (tied) unembedding
(`scripts/importance_figures.py --lens`, {datetime.date.today().isoformat()}): {res.n_items}
sentences from {source} ({res.n_tokens} tokens), at most {args.max_length} tokens each. Next-token
accuracy is {res.accuracy[0]:.1%} straight from the embeddings, {res.accuracy[len(res.layers) // 2]:.1%}
at {res.layers[len(res.layers) // 2]} and {res.accuracy[-1]:.1%} at the last layer (highest:
{res.layers[best]}, {res.accuracy[best]:.1%}). The lens agrees with the model's final top-1 on half
the tokens from {res.layers[half] if half is not None else "no layer before the last"} on.
For the prompt {args.prompt!r} the last position's top-1 is
{", ".join(f"{res.layers[i]}: {res.top_tokens[i][-1][0]!r}" for i in range(0, len(res.layers), 5))}
and finally {res.top_tokens[-1][-1][0]!r} (top-5: {", ".join(repr(t) for t in res.top_tokens[-1][-1])}).

![logit lens: KL and accuracy per layer, top-1 tokens per layer and position](importance/smollm2_lens.png)

{table(["layer", "next-token accuracy", "loss", "KL(final ‖ lens)", "top-1 = final", "top-1 after the prompt"], rows)}
"""
    replace_section(ROOT / "docs" / "IMPORTANCE.md", "## Logit lens", text)


def replace_section(path: Path, header: str, text: str) -> None:
    """Put ``text`` in place of the section under ``header`` (up to the next '## '), or append it."""
    old = path.read_text() if path.exists() else ""
    start = old.find(header + "\n")
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
    else:
        end = old.find("\n## ", start + len(header))
        rest = old[end + 1:] if end >= 0 else ""
        path.write_text(old[:start] + text.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))
    print(f"wrote the {header[3:]} section of {path}")


def tuned_section(args) -> None:
    from layerscope.analyses.tuned_lens import train_tuned_lens

    texts, source = real_sentences(args.tuned_items, seed=1)
    t0 = time.perf_counter()
    res = train_tuned_lens("smollm2", texts, steps=args.steps, batch_size=8, tokens_per_step=128,
                           max_length=args.max_length, progress=True)
    wall = time.perf_counter() - t0
    print(res.summary(), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    res.plot().savefig(OUT / "smollm2_tuned_lens.png", dpi=110)
    res.to_json(OUT / "smollm2_tuned_lens.json")
    rows = [[name, f"{res.logit_kl[i]:.3f}", f"{res.tuned_kl[i]:.3f}", f"{res.logit_accuracy[i]:.3f}",
             f"{res.tuned_accuracy[i]:.3f}", f"{res.logit_agreement[i]:.3f}", f"{res.tuned_agreement[i]:.3f}"]
            for i, name in enumerate(res.layers)]
    mid = len(res.layers) // 2
    inner = range(len(res.layers) - 1)
    lower = sum(res.tuned_kl[i] < res.logit_kl[i] for i in inner)
    text = f"""## Tuned lens

One affine translator per layer (`h + A h + b`, zero-initialised, so it starts as the logit lens),
trained with Adam on KL(final ‖ lens) for {res.steps} steps of 8 sentences (128 sampled tokens per
step) from {res.n_train_items} of {res.n_train_items + res.n_test_items} sentences of {source}; both
lenses measured on the {res.n_test_items} held-out sentences ({res.n_test_tokens} tokens;
`scripts/importance_figures.py --tuned`, {datetime.date.today().isoformat()}, {wall / 60:.1f} min on
{args.threads} CPU threads). The tuned lens has lower KL on {lower} of {len(res.layers) - 1} layers; at
{res.layers[mid]} KL falls from {res.logit_kl[mid]:.2f} to {res.tuned_kl[mid]:.2f} nats and next-token
accuracy goes from {res.logit_accuracy[mid]:.1%} to {res.tuned_accuracy[mid]:.1%}. Training loss (mean KL
over layers): {res.train_loss[0]:.2f} at the first step, {sum(res.train_loss[-5:]) / 5:.2f} over the last five.
This is a short CPU run, far from Belrose et al.'s training budget: read it as a lower bound on what a
tuned lens recovers, not its converged value.

![tuned vs logit lens: KL and next-token accuracy per layer, held out](importance/smollm2_tuned_lens.png)

{table(["layer", "KL logit", "KL tuned", "accuracy logit", "accuracy tuned", "top-1 = final, logit", "top-1 = final, tuned"], rows)}
"""
    replace_section(ROOT / "docs" / "IMPORTANCE.md", "## Tuned lens", text)


if __name__ == "__main__":
    main()
