"""Study: what each depth represents (surface form, syntax, meaning), by linear probes per layer."""

from __future__ import annotations

from layerscope.errors import LayerscopeError
from layerscope.report.charts import line_chart

from .common import Settings, combine, fmt, make_result, not_applicable, peak_rule, register

# (task, what it stands for, the claimed region, Jawahar et al. 2019's peak on BERT-base: layer / 12)
TASKS = (("length", "surface", "early", 3), ("bigram-shift", "syntax", "early", 9),
         ("sentiment", "meaning", "middle", None))
TEST_FRACTION = 0.2


def thirds(n: int) -> dict[str, list[int]]:
    """Layer indices of the early / middle / late thirds of ``n`` layers (the remainder goes to
    the middle).

    Example:
        >>> thirds(6), thirds(7)["middle"]
        ({'early': [0, 1], 'middle': [2, 3], 'late': [4, 5]}, [2, 3, 4])
    """
    k = n // 3
    return {"early": list(range(k)), "middle": list(range(k, n - k)), "late": list(range(n - k, n))}


def peak_part(res, region: str, what: str):
    """:func:`peak_rule` on a probe result: is ``what`` best in the ``region`` third of its layers?"""
    idx = thirds(len(res.layers))[region]
    return peak_rule([f"{i} ({n})" for i, n in enumerate(res.layers)], res.score, res.ci_low, res.ci_high,
                     idx, what=what, region=f"the {region} third (layers {idx[0]}-{idx[-1]})", n=res.n_test,
                     per_item=1 / TEST_FRACTION)


def bigram_token_probe(loaded, texts: list[str], *, seed: int = 0, batch_size: int = 32,
                       max_length: int = 64):
    """The token-level view of bigram shift: per block, a probe (solver auto) on the hidden state
    of the token that starts the second word of the seeded pair (the swapped word in shifted
    sentences), read from the model's own ``hidden_states``; items whose site is cut off by
    ``max_length`` are dropped. Returns the :class:`~layerscope.analyses.probe.ProbeResult`."""
    import torch

    from layerscope.analyses.probe import ProbeStats
    from layerscope.analyses.probe_tasks import bigram_shift_sites
    from layerscope.reducers import BatchInfo

    tok = getattr(loaded, "tokenizer", None)
    if tok is None or not getattr(tok, "is_fast", False):
        raise LayerscopeError("the token-level bigram view needs a fast tokenizer (character offsets)")
    items, labels, sites = bigram_shift_sites(texts, seed=seed)
    red = ProbeStats(True, solver="auto", test_fraction=TEST_FRACTION, seed=seed)
    names = None
    kept = 0
    for a in range(0, len(items), batch_size):
        enc = tok(items[a:a + batch_size], padding=True, truncation=True, max_length=max_length,
                  return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        rows, cols = [], []
        for r, char in enumerate(sites[a:a + batch_size]):
            hit = ((offsets[r, :, 0] <= char) & (offsets[r, :, 1] > char)).nonzero().flatten()
            if len(hit):
                rows.append(r)
                cols.append(int(hit[0]))
        if not rows:
            continue
        with torch.inference_mode():
            out = loaded.module(**enc, output_hidden_states=True)
        states = out.hidden_states[1:]                    # one per block (the embeddings left out)
        names = names or [f"blocks.{i}" for i in range(len(states))]
        r, c = torch.tensor(rows), torch.tensor(cols)
        y = torch.tensor([labels[a + i] for i in rows])
        red.update({n: h[r, c].float() for n, h in zip(names, states)}, BatchInfo(kept, len(rows), y))
        kept += len(rows)
    return red.result(task_name="bigram shift (token at the swap)")


@register("depth-represents", title="What each depth represents",
          claim="Early layers handle syntax and surface patterns, middle layers semantic meaning, "
                "late layers the task.",
          source="seeds 000/001 (glossary entry 'Layer', section 'What Happens Across Layers')",
          anchor="Jawahar et al. 2019 (BERT-base, 12 layers): sentence length is best decoded at "
                 "layer 3 and falls after; bigram shift is at chance in layer 1 and rises to 87% at "
                 "layer 9",
          models="text models: minilm, smollm2, or a local Hugging Face text model",
          seeds=(0, 0), order=10)
def depth_represents(s: Settings) -> StudyResult:  # noqa: F821 - annotation only
    from layerscope.analyses.probe import probe
    from layerscope.data import load_dataset
    from layerscope.models import load_model

    model_ref = s.model or "minilm"
    loaded = load_model(model_ref)
    if loaded.modality != "text":
        raise not_applicable("depth-represents", model_ref, "text models such as minilm or smollm2",
                             f"{loaded.modality} input")
    data_ref = s.data or "sentences"
    n_items = s.pick(500, 4000)
    minimum = 200
    data = load_dataset(data_ref, limit=n_items, seed=0)
    if len(data) < minimum:
        raise LayerscopeError(f"study depth-represents needs at least {minimum} sentences for held-out "
                              f"intervals; {data_ref!r} has {len(data)}")
    # bigram shift is a hard binary task (chance 50%; SentEval used 100k items): it gets twice the items
    syntax_data = load_dataset(data_ref, limit=2 * n_items, seed=0)
    results, parts, findings = {}, {}, []
    for task, kind, region, jawahar in TASKS:
        if task.startswith("sentiment") and getattr(data, "labels", None) is None:
            continue
        res = probe(loaded, syntax_data if task == "bigram-shift" else data, task=task, solver="auto", test_fraction=TEST_FRACTION,
                    batch_size=32, max_length=64)
        results[task] = res
        parts[f"{kind} ({task}) peaks {region}"] = peak_part(res, region, f"{task} accuracy")
        peak = res.peak
        rel = peak / max(len(res.layers) - 1, 1)
        if jawahar is not None:
            findings.append(f"{task}: peak at layer {peak} of {len(res.layers) - 1} (relative depth {rel:.2f}); "
                            f"Jawahar et al.'s BERT-base peak is layer {jawahar} of 12 ({jawahar / 12:.2f}).")
        findings.append(f"{task}: probe by {res.solver}; chance (majority) {res.baseline:.3f}, random "
                        f"features {res.random_features:.3f}, {res.n_train} training / {res.n_test} held-out items.")
    if not results:
        raise LayerscopeError(f"no probing task could be made from {data_ref!r}; use the sentences data set")
    if getattr(loaded, "tokenizer", None) is not None and getattr(loaded.tokenizer, "is_fast", False):
        task = "bigram-shift (token)"
        res = bigram_token_probe(loaded, list(syntax_data.items))
        results[task] = res
        parts[f"syntax ({task}) peaks early"] = peak_part(res, "early", "bigram shift accuracy at the swapped token")
        findings.append(f"{task}: the hidden state of the token starting the second word of the pair "
                        f"(swapped or not), probe by {res.solver}; peak at layer {res.peak} of "
                        f"{len(res.layers) - 1}; chance (majority) {res.baseline:.3f}, {res.n_train} "
                        f"training / {res.n_test} held-out items.")
    first = next(iter(results.values()))
    layers = [str(i) for i in range(len(first.layers))]
    rows = []
    for i, name in enumerate(first.layers):
        row = [i, name]
        for task, res in results.items():
            row.append(f"{res.score[i]:.3f} [{res.ci_low[i]:.3f}, {res.ci_high[i]:.3f}]")
        rows.append(row)
    chart = line_chart(layers, {t: r.score for t, r in results.items()},
                       bands={t: (r.ci_low, r.ci_high) for t, r in results.items()},
                       y_title="held-out accuracy (95% Wilson interval)")
    region_text = ", ".join(f"{k}: {v[0]}-{v[-1]}" for k, v in thirds(len(layers)).items())
    return make_result(
        "depth-represents",
        experiment=(f"Linear probes on the mean-pooled output of every layer of {model_ref} "
                    f"({len(layers)} layers; thirds {region_text}) for three tasks made from {len(data)} "
                    f"{data_ref} items ({len(syntax_data)} for bigram shift): sentence length (5 equal-count bins), bigram shift (two adjacent "
                    f"words swapped in half the sentences; read both from the mean-pooled sentence and, "
                    f"token-level, from the token where the pair's second word starts) and sentiment "
                    f"(sign of the human score, "
                    f"|score| >= 0.5); {int(TEST_FRACTION * 100)}% held out; probe: "
                    f"{first.method}."),
        columns=["layer", "name"] + [f"{t} accuracy [95%]" for t in results],
        rows=rows, chart=chart, verdict=combine(parts), findings=findings, model=model_ref,
        data=data_ref, settings={"items": len(data), "tasks": list(results)})
