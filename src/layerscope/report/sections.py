"""Report sections built from plain numbers: each returns a :class:`Section` with its readings.

The builders take lists aligned with layer names (what every :class:`~layerscope.results.Result`
holds) so that they neither run models nor depend on how an analysis computed its numbers. Each
figure carries one sentence computed from the numbers it shows (:mod:`.readings`).

Example:
    >>> sec = activations_section(["0", "1"], mean=[0.0, 0.1], std=[1.0, 3.0],
    ...                           sparsity=[0.0, 0.5], nonfinite=[0, 0])
    >>> sec.figures[0].reading
    'Activation scale grows from 1 at 0 to 3 at 1 (largest at 1).'
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from . import charts
from .page import Figure, Section, Table
from .readings import (adjacent_similarity, argmax, argmin, compare_to_control, fmt, fmt_count,
                       largest_sentence, most_similar_pair, peak_sentence)


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


# --- anatomy ----------------------------------------------------------------------------------


def anatomy_section(model: str, counts: Mapping[str, int], rules: Mapping[str, str],
                    rows: Sequence[Mapping], total_params: int, total_flops: float | None = None,
                    flops_input: str = "") -> Section:
    """How many layers, the layer table, and parameters / FLOPs per layer as bars.

    ``rows`` are the layers at the chosen granularity, each a mapping with ``index``, ``name``,
    ``role``, ``params`` and optionally ``flops``, ``in_shape``, ``out_shape``.
    """
    sec = Section("anatomy", "Anatomy")
    parts = [f"{counts[g]} {g}" for g in ("blocks", "sublayers", "modules") if g in counts]
    sec.findings.append(f"{model} has {', '.join(parts)} and {total_params:,} parameters"
                        + (f" ({fmt_count(total_flops)} FLOPs on {flops_input or 'one example'})"
                           if _finite(total_flops) else "") + ".")
    for g, rule in rules.items():
        sec.findings.append(f"{g}: {rule}")
    names = [r["name"] if r["index"] in ("", None) else f"{r['index']}: {r['name']}" for r in rows]
    params = [r.get("params", 0) for r in rows]
    sec.add(Figure("params", "Parameters per layer", largest_sentence("parameters", names, params)
                   + (f"; the listed layers hold {sum(params):,} of {total_params:,}"
                      if sum(params) != total_params else "") + ".",
                   chart=charts.bar_chart(names, {"parameters": params}, y_title="parameters",
                                          log_y=False)))
    flops = [r.get("flops") for r in rows]
    if any(_finite(f) and f > 0 for f in flops):
        sec.add(Figure("flops", "FLOPs per layer", largest_sentence("FLOPs", names, flops) + ".",
                       chart=charts.bar_chart(names, {"FLOPs": flops}, y_title="FLOPs", log_y=False)))
    columns = ["#", "name", "role", "input → output", "parameters", "FLOPs"]
    table_rows = []
    for r in rows:
        shapes = f"{r.get('in_shape', '')} → {r.get('out_shape', '')}" if r.get("out_shape") else ""
        table_rows.append([str(r["index"]), str(r["name"]), str(r.get("role", "")), shapes,
                           f"{int(r.get('params', 0)):,}",
                           fmt_count(r["flops"]) if _finite(r.get("flops")) else ""])
    sec.add(Figure("table", "Layer table", f"{len(rows)} layers listed in forward order.",
                   table=Table(columns, table_rows, [True, False, False, False, True, True])))
    return sec


# --- probes -----------------------------------------------------------------------------------


def probes_section(layers: Sequence[str], tasks: Mapping[str, Mapping]) -> Section:
    """Probe curves per task; each task maps to ``score`` (per layer), ``metric`` ("accuracy" or
    "R²"), and optionally ``lo``/``hi`` (interval), ``n_test`` (held-out items), ``baseline`` (a
    number), ``control`` (per layer, random features) and ``kind`` (surface/syntax/meaning).

    With intervals, a layer is named as the peak (and starred) only when its interval lies above
    the baseline and every other layer's (:func:`~layerscope.analyses.claims.peak_claim`);
    otherwise the finding says the peak is uncertain, or that no layer beats the baseline, and
    about how many items would settle it.
    """
    from layerscope.analyses.claims import peak_claim

    sec = Section("probes", "What each layer represents")
    for name, t in tasks.items():
        score, metric = list(t["score"]), t["metric"]
        k = argmax(score)
        control = t.get("control")
        if t.get("lo") is not None and t.get("hi") is not None:
            claim = peak_claim(name, layers, score, t["lo"], t["hi"], baseline=t.get("baseline"),
                               n_test=int(t.get("n_test") or 0), metric=metric)
            reading = _sentence(claim.sentence)[:-1]
            star = claim.best if claim.is_peak else None
            extra = ""
            if claim.is_peak and control is not None and _finite(control[k]):
                extra = f"random-feature control {fmt(control[k], 2)}"
        else:
            reading = peak_sentence(name, layers, score, metric)
            star = k
            ctrl_at_peak = control[k] if control is not None and k is not None else None
            extra = compare_to_control(metric, score[k], t.get("baseline"), ctrl_at_peak) if k is not None else ""
        sec.findings.append(reading + (f"; {extra}" if extra else "") + ".")
        series = {name: score}
        bands = {name: (t["lo"], t["hi"])} if t.get("lo") is not None else None
        dashed = []
        if control is not None:
            series["random-feature control"] = list(control)
            dashed.append("random-feature control")
        if _finite(t.get("baseline")):
            series["baseline"] = [t["baseline"]] * len(layers)
            dashed.append("baseline")
        title = f"{name}" + (f" ({t['kind']})" if t.get("kind") else "")
        sec.add(Figure(f"probe-{_slug(name)}", title, reading + ".",
                       chart=charts.line_chart(layers, series, y_title=metric, bands=bands,
                                               dashed=dashed, marks={name: star} if star is not None else None)))
    return sec


# --- similarity -------------------------------------------------------------------------------


def similarity_section(layers: Sequence[str], matrix: Sequence[Sequence[float]], *,
                       kind: str = "linear CKA (unbiased)",
                       other_layers: Sequence[str] | None = None) -> Section:
    """The CKA heatmap between layers (of one model, or of two when ``other_layers`` is given)."""
    sec = Section("similarity", "How layers relate")
    if other_layers is None:
        pair = most_similar_pair(layers, matrix)
        adj = adjacent_similarity(matrix)
        bits = []
        if pair:
            bits.append(f"the most similar pair is {layers[pair[0]]} and {layers[pair[1]]} "
                        f"(CKA {fmt(pair[2], 2)})")
        if adj:
            lo = argmin(adj)
            bits.append(f"the largest change between neighbours is from {layers[lo]} to "
                        f"{layers[lo + 1]} (CKA {fmt(adj[lo], 2)})")
            first_last = matrix[0][len(layers) - 1]
            bits.append(f"first and last layer: CKA {fmt(first_last, 2)}")
        reading = _sentence("; ".join(bits)) if bits else "Too few layers to compare."
        y = layers
    else:
        best = [argmax(row) for row in matrix]
        reading = "; ".join(f"{layers[i]} best matches {other_layers[j]} ({fmt(matrix[i][j], 2)})"
                            for i, j in enumerate(best) if j is not None) + "."
        y = layers
    sec.findings.append(reading)
    x = other_layers if other_layers is not None else layers
    sec.add(Figure("cka", f"Layer similarity: {kind}", reading,
                   chart=charts.heatmap(matrix, x, y, zmin=0.0, zmax=1.0, value_name="CKA")))
    return sec


# --- importance -------------------------------------------------------------------------------


def importance_section(blocks: Sequence[str], effect: Sequence[float], objective: str, *,
                       baseline: float | None = None, block_influence: Sequence[float] | None = None,
                       curve: Mapping[str, Sequence[float]] | None = None,
                       curve_x: Sequence[int] | None = None, higher_is_worse: bool = True) -> Section:
    """Removal effect per block, Block Influence, and (optionally) quality vs blocks removed."""
    sec = Section("importance", "Which layers matter")
    k = argmax(effect) if higher_is_worse else argmin(effect)
    j = argmin(effect) if higher_is_worse else argmax(effect)
    base = f" (intact: {fmt(baseline, 3)})" if _finite(baseline) else ""
    if k is not None and j is not None:
        reading = (f"Removing {blocks[k]} hurts most ({objective} {fmt(effect[k], 3)}{base}); "
                   f"removing {blocks[j]} hurts least ({fmt(effect[j], 3)}).")
    else:
        reading = "No finite removal effects."
    sec.findings.append(reading)
    sec.add(Figure("removal", f"Effect of removing each block on {objective}", reading,
                   chart=charts.bar_chart(blocks, {objective: effect}, x_title="removed block",
                                          y_title=objective)))
    if block_influence is not None:
        b = argmax(block_influence)
        r2 = (f"Block Influence (1 − cos of input and output) is largest at {blocks[b]} "
              f"({fmt(block_influence[b], 3)}) and smallest at "
              f"{blocks[argmin(block_influence)]} ({fmt(block_influence[argmin(block_influence)], 3)}).") \
            if b is not None else ""
        agree = _rank_agreement(effect, block_influence)
        if agree is not None:
            r2 += f" Its ranking agrees with the removal effect at Spearman ρ = {fmt(agree, 2)}."
        sec.findings.append(r2)
        sec.add(Figure("influence", "Block Influence", r2,
                       chart=charts.bar_chart(blocks, {"Block Influence": block_influence},
                                              x_title="block", y_title="1 − cos(input, output)")))
    if curve:
        xs = [str(v) for v in (curve_x or range(1, len(next(iter(curve.values()))) + 1))]
        final = {name: vals[-1] for name, vals in curve.items() if vals and _finite(vals[-1])}
        if final:
            best = min(final, key=final.get) if higher_is_worse else max(final, key=final.get)
            r3 = (f"After removing {xs[-1]} blocks, choosing by {best} keeps {objective} at "
                  f"{fmt(final[best], 3)}; " + ", ".join(f"{n}: {fmt(v, 3)}" for n, v in final.items()
                                                         if n != best) + ".")
        else:
            r3 = "No finite values on the removal curve."
        sec.findings.append(r3)
        sec.add(Figure("curve", f"{objective} against the number of blocks removed", r3,
                       chart=charts.line_chart(xs, curve, x_title="blocks removed", y_title=objective)))
    return sec


def _rank_agreement(a: Sequence[float], b: Sequence[float]) -> float | None:
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if _finite(x) and _finite(y)]
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(rho) if math.isfinite(rho) else None


# --- causal -----------------------------------------------------------------------------------


def causal_section(blocks: Sequence[str], tokens: Sequence[str], restored: Sequence[Sequence[float]], *,
                   metric: str, metric_clean: float, metric_corrupt: float,
                   pairs: Sequence[Mapping] = (), direction: str = "denoise", top: int = 3) -> Section:
    """Activation patching of the residual stream after each block at each position (rows:
    ``blocks``, columns: the prompt's ``tokens``): the heat map of restored shares, where the
    answer sits (the earlier positions or the last one) block by block, and the top blocks: those
    whose own step raises the last position's share most (where the answer is moved there).

    Example:
        >>> sec = causal_section(["0", "1", "2"], ["The", "Eiffel", " of"],
        ...                      [[0.0, 0.9, 0.1], [0.0, 0.2, 0.8], [0.0, 0.0, 1.0]],
        ...                      metric="logit-diff", metric_clean=3.0, metric_corrupt=-2.0)
        >>> sec.findings[1]
        'The last position (“ of”) carries at least half of the gap from block 1 on; before that the answer sits at “Eiffel” (90% at block 0).'
    """
    sec = Section("causal", "What each layer does")
    n_pairs = max(1, len(pairs))
    arr = [[float(v) if _finite(v) else float("nan") for v in row] for row in restored]
    flat = [(v, i, j) for i, row in enumerate(arr) for j, v in enumerate(row) if math.isfinite(v)]
    over = f"the mean of {n_pairs} prompt pairs" if n_pairs > 1 else "one prompt pair"
    what = "restores" if direction == "denoise" else "keeps"
    gap = f"{metric} clean {fmt(metric_clean, 3)}, corrupted {fmt(metric_corrupt, 3)}; {over}"
    if not flat:
        sec.findings.append(f"Patching gave no finite restored shares ({gap}).")
        return sec
    # the last block at the last position restores everything by construction: not a finding
    informative = [t for t in flat if not (t[1] == len(arr) - 1 and t[2] == len(tokens) - 1)] or flat
    v, i, j = max(informative) if direction == "denoise" else min(informative)
    tok = _token_text(tokens[j])
    head = (f"Patching the clean residual stream after block {blocks[i]} at “{tok}” {what} "
            f"{100 * v:.0f}% of the gap ({gap}).")
    sec.findings.append(head)
    last = [row[-1] for row in arr]
    earlier = [max((x for x in row[:-1] if math.isfinite(x)), default=float("nan")) for row in arr]
    where = [max(range(len(row) - 1), key=lambda k: row[k] if math.isfinite(row[k]) else -math.inf)
             if len(row) > 1 else 0 for row in arr]
    from_block = next((k for k, x in enumerate(last) if math.isfinite(x) and x >= 0.5), None)
    if from_block is not None and len(tokens) > 1:
        before = [k for k in range(from_block) if math.isfinite(earlier[k])]
        text = (f"The last position (“{_token_text(tokens[-1])}”) carries at least half of the gap from "
                f"block {blocks[from_block]} on")
        if before:
            k = max(before, key=lambda b: earlier[b])
            text += (f"; before that the answer sits at “{_token_text(tokens[where[k]])}” "
                     f"({100 * earlier[k]:.0f}% at block {blocks[k]})")
        sec.findings.append(text + ".")
    elif len(tokens) > 1:
        sec.findings.append(f"No block's output at the last position (“{_token_text(tokens[-1])}”) "
                            f"restores half of the gap.")
    steps = [(last[k] - (last[k - 1] if k else 0.0), k) for k in range(len(last)) if math.isfinite(last[k])
             and (k == 0 or math.isfinite(last[k - 1]))]
    ranked = [(d, k) for d, k in sorted(steps, reverse=True)[:top] if d > 0.05]
    if ranked:
        sec.findings.append("The blocks that move the answer to the last position most (their own "
                            "step in its restored share): "
                            + ", ".join(f"block {blocks[k]} (+{100 * d:.0f} points)" for d, k in ranked) + ".")
    heads = [f"{j}: {_token_text(t)}" for j, t in enumerate(tokens)]
    sec.add(Figure("patching", f"Restored share of {metric} ({direction}), blocks × positions",
                   head, chart=charts.heatmap(arr, heads, list(blocks), zmin=-1.0, zmax=1.0,
                                              colorscale="RdBu", value_name="restored share",
                                              x_title="position (token)", y_title="block patched")))
    series = {f"last position (“{_token_text(tokens[-1])}”)": last}
    if len(tokens) > 1:
        series["best earlier position"] = earlier
    reading = sec.findings[1] if len(sec.findings) > 1 else head
    sec.add(Figure("patching-by-block", "Restored share by block: the last position and the best "
                   "earlier one", reading,
                   chart=charts.line_chart(list(blocks), series, x_title="block patched",
                                           y_title="restored share", log_y=False)))
    if pairs:
        rows = [[str(p.get("clean", "")), str(p.get("corrupt", "")), _token_text(str(p.get("target", ""))),
                 _token_text(str(p.get("foil", ""))), fmt(p.get("metric_clean"), 3),
                 fmt(p.get("metric_corrupt"), 3)] for p in pairs]
        sec.add(Figure("pairs", "Prompt pairs", f"{len(rows)} prompt pair(s), {metric} read at the last "
                       f"position.", table=Table(["clean", "corrupted", "target", "foil",
                                                 f"{metric} clean", f"{metric} corrupted"], rows,
                                                [False, False, False, False, True, True])))
    return sec


# --- activations ------------------------------------------------------------------------------


def activations_section(layers: Sequence[str], *, mean: Sequence[float], std: Sequence[float],
                        sparsity: Sequence[float], nonfinite: Sequence[int],
                        view: str = "") -> Section:
    """Per-layer scale, sparsity and non-finite counts."""
    sec = Section("activations", "Activations")
    hi, lo = argmax(std), argmin(std)
    if hi is None:
        scale = "No finite activation statistics."
    else:
        trend = "grows" if _finite(std[-1]) and _finite(std[0]) and std[-1] > std[0] else "shrinks"
        scale = (f"Activation scale {trend} from {fmt(std[0], 3)} at {layers[0]} to "
                 f"{fmt(std[-1], 3)} at {layers[-1]} (largest at {layers[hi]}).")
    sec.add(Figure("scale", "Activation mean and spread per layer" + (f" ({view})" if view else ""),
                   scale, chart=charts.line_chart(layers, {"mean": mean, "std": std},
                                                  y_title="activation")))
    sec.findings.append(scale)
    s = argmax(sparsity)
    sp = (f"Exact zeros are most common at {layers[s]} ({100 * float(sparsity[s]):.1f}% of values)."
          if s is not None and float(sparsity[s]) > 0 else "No layer outputs exact zeros.")
    sec.findings.append(sp)
    sec.add(Figure("sparsity", "Fraction of zeros (dead units) per layer", sp,
                   chart=charts.bar_chart(layers, {"zeros": sparsity}, y_title="fraction")))
    bad = [(n, int(c)) for n, c in zip(layers, nonfinite) if c]
    nf = ("All activations were finite." if not bad else
          "Non-finite values (left out of every statistic): "
          + ", ".join(f"{n}: {c:,}" for n, c in bad) + ".")
    sec.findings.append(nf)
    return sec


# --- pictures ---------------------------------------------------------------------------------


def pictures_section(views: Sequence[Mapping], *, label_name: str = "label",
                     images: Sequence[Mapping] = ()) -> Section:
    """2-D maps of layers (``views``: ``layer``, ``method``, ``points`` (n×2), ``labels``,
    optional ``hover``, ``continuous``, ``reading``) and PNG images (``title``, ``png``,
    ``reading``), e.g. CNN feature maps."""
    sec = Section("pictures", "Pictures of layers")
    for v in views:
        reading = v.get("reading") or f"{len(v['points'])} items from {v['layer']}."
        sec.add(Figure(f"map-{_slug(v['layer'])}-{v['method']}", f"{v['method'].upper()} of {v['layer']}",
                       reading, chart=charts.scatter_chart(v["points"], v["labels"], hover=v.get("hover"),
                                                           continuous=v.get("continuous", False),
                                                           x_title=f"{v['method']} 1",
                                                           y_title=f"{v['method']} 2")))
    for i, im in enumerate(images):
        sec.add(Figure(f"image-{i}", im["title"], im["reading"], image_png=im["png"], alt=im["title"]))
    if views:
        sec.findings.append(views[-1].get("reading") or "")
    return sec


# --- logit lens -------------------------------------------------------------------------------


def lens_section(layers: Sequence[str], *, kl: Sequence[float], accuracy: Sequence[float],
                 prompt: str | None = None, top_tokens: Sequence[Sequence[str]] | None = None,
                 prompt_tokens: Sequence[str] | None = None) -> Section:
    """The logit lens: KL to the final distribution (its own chart, on a log axis when it spans
    orders of magnitude) and next-token accuracy per layer, and the top token at each layer and
    position of a prompt, the columns headed by the prompt's own tokens."""
    sec = Section("lens", "Logit lens")
    k = argmax(accuracy)
    first_close = next((i for i, v in enumerate(kl) if _finite(v) and float(v) < 1.0), None)
    reading = (f"Next-token accuracy through the lens peaks at {layers[k]} ({fmt(accuracy[k], 3)}); "
               if k is not None else "")
    reading += (f"KL to the final distribution first drops below 1 nat at {layers[first_close]}."
                if first_close is not None else "KL to the final distribution stays above 1 nat before the end.")
    sec.findings.append(reading)
    # the last layer's KL to itself is 0, which a log axis cannot show; it is left out there
    kl_drawn = [v if _finite(v) and float(v) > 0 else None for v in kl]
    log = charts.wide_range(kl_drawn)
    zeros = [layers[i] for i, v in enumerate(kl) if _finite(v) and float(v) <= 0]
    kl_reading = reading + (f" (log axis; KL is 0 at {', '.join(zeros)}, not drawn)" if log and zeros
                            else " (log axis)" if log else "")
    sec.add(Figure("lens", "KL(final ‖ layer) per layer", kl_reading,
                   chart=charts.line_chart(layers, {"KL(final ‖ layer)": kl_drawn if log else kl},
                                           y_title="nats", log_y=log)))
    if k is not None:
        sec.add(Figure("lens-accuracy", "Next-token accuracy through the lens",
                       f"Next-token accuracy peaks at {layers[k]} ({fmt(accuracy[k], 3)}).",
                       chart=charts.line_chart(layers, {"next-token accuracy": accuracy},
                                               y_title="accuracy", log_y=False)))
    if top_tokens:
        rows = [[layers[i]] + [str(t) for t in toks] for i, toks in enumerate(top_tokens)]
        width = max(len(t) for t in top_tokens)
        heads = [f"{_token_text(prompt_tokens[j])} →" if prompt_tokens and j < len(prompt_tokens)
                 else f"pos {j}" for j in range(width)]
        sec.add(Figure("top", "Top next token at each layer, after each prompt token"
                       + (f" of “{prompt}”" if prompt else ""),
                       f"The last layer predicts “{top_tokens[-1][-1]}” after the prompt; "
                       f"{_first_layer_with(top_tokens, top_tokens[-1][-1], layers)}.",
                       table=Table(["layer"] + heads, rows)))
    return sec


def _token_text(token: str) -> str:
    """A token as a person reads it: tokenizer space marks shown as a visible space."""
    t = str(token).replace("Ġ", "␣").replace("▁", "␣").replace("Ċ", "↵").replace("\n", "↵")
    return t if t.strip() else repr(t)


def _first_layer_with(top_tokens, token, layers) -> str:
    for i, toks in enumerate(top_tokens):
        if toks and toks[-1] == token:
            return f"it first appears at {layers[i]}"
    return "no earlier layer predicts it"


# --- training ---------------------------------------------------------------------------------


def training_section(steps: Sequence[int], grad_norm: Mapping[str, Sequence[float]], *,
                     loss: Sequence[float] | None = None, flags: Sequence[str] = ()) -> Section:
    """Gradient flow recorded during training: gradient norm per layer over steps, and the loss;
    ``flags`` (one sentence each) are findings of their own, also when no steps were monitored."""
    sec = Section("training", "Gradient flow in training")
    if not steps or not grad_norm:
        sec.findings.extend(flags)
        sec.findings.append("The run recorded no per-layer gradient norms (it was trained without "
                            "monitoring).")
        return sec
    names = list(grad_norm)
    last = [grad_norm[n][-1] for n in names]
    first = [grad_norm[n][0] for n in names]
    lo, hi = argmin(last), argmax(last)
    reading = (f"At step {steps[-1]} the gradient norm ranges from {fmt(last[lo], 3)} at {names[lo]} "
               f"to {fmt(last[hi], 3)} at {names[hi]}" if lo is not None else "No gradient norms recorded")
    ratio = [f / la for f, la in zip(first, last) if _finite(f) and _finite(la) and la > 0]
    reading += "." if not ratio else f" (median change since step {steps[0]}: ×{fmt(1 / sorted(ratio)[len(ratio) // 2], 3)})."
    sec.findings.append(reading)
    sec.findings.extend(flags)
    sec.add(Figure("gradnorm", "Gradient norm per layer over training", reading,
                   chart=charts.line_chart([str(s) for s in steps], dict(grad_norm), x_title="step",
                                           y_title="gradient norm")))
    if loss is not None:
        r = f"Loss went from {fmt(loss[0], 3)} to {fmt(loss[-1], 3)}."
        sec.add(Figure("loss", "Training loss", r,
                       chart=charts.line_chart([str(s) for s in steps], {"loss": loss}, x_title="step",
                                               y_title="loss")))
    return sec


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in str(text).lower()).strip("-")
    return out or "x"


def _sentence(text: str) -> str:
    """``text`` with its first letter upper-cased (the rest kept, unlike ``str.capitalize``) and a full stop."""
    return (text[:1].upper() + text[1:]).rstrip(".") + "."
