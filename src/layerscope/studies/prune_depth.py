"""Study: which depth can be pruned (removing early / middle / late thirds and single blocks)."""

from __future__ import annotations

import numpy as np

from layerscope.errors import LayerscopeError
from layerscope.report.charts import bar_chart

from .common import (Settings, combine, diff_interval, make_result, mean_interval, not_applicable, register,
                     threshold_rule)
from .depth_represents import thirds

CHUNKS = 8


def _damage(out: dict, key: tuple) -> float:
    """How much worse the objective is with ``key`` removed: extra loss in nats for language
    models, the embedding's 1 − cos for encoders (0 when nothing is removed)."""
    v, base = out["values"][key], out["baseline"]
    if "loss" in v and "loss" in base:
        return float(v["loss"] - base["loss"])
    return float(v["metric"] - base["metric"])


def prune_verdict(early: list[float], middle: list[float], late: list[float], unit: str):
    """Two parts, paired over chunks of items (per-chunk damage of removing each third): middle −
    early and middle − late wholly above 0."""
    return combine({
        "middle third hurts more than the early third": threshold_rule(diff_interval(
            middle, early, what=f"damage, middle − early third ({unit})", unit="chunks")),
        "middle third hurts more than the late third": threshold_rule(diff_interval(
            middle, late, what=f"damage, middle − late third ({unit})", unit="chunks")),
    })


@register("prune-depth", title="Which depth can be pruned",
          claim="Pruning middle layers hurts more than pruning early or late ones.",
          source="seeds 000/001 (glossary entry 'Layer')",
          anchor="ShortGPT (Men et al. 2024) and Gromov et al. 2024: in LLMs the deep layers except "
                 "the last are the most redundant; removing them costs least",
          models="transformer text models whose blocks keep their shape: minilm, smollm2, or a local "
                 "Hugging Face model", seeds=(0, 0), order=20)
def prune_depth(s: Settings):
    from layerscope.analyses.importance import build_stack, run_removals
    from layerscope.data import load_dataset
    from layerscope.models import load_model

    model_ref = s.model or s.pick("minilm", "smollm2")
    loaded = load_model(model_ref)
    if loaded.modality != "text" or loaded.task not in ("causal-lm", "encoder"):
        raise not_applicable("prune-depth", model_ref, "text encoders or language models (minilm, smollm2)")
    data_ref = s.data or "sentences"
    n_items = s.pick(160, 800)
    data = load_dataset(data_ref, limit=n_items, seed=0)
    if len(data) < 2 * CHUNKS:
        raise LayerscopeError(f"study prune-depth needs at least {2 * CHUNKS} items ({CHUNKS} chunks for "
                              f"the interval); {data_ref!r} gave {len(data)}")
    stack = build_stack(loaded)
    L = len(stack.blocks)
    if L < 3:
        raise LayerscopeError(f"study prune-depth needs at least 3 blocks to compare thirds; {model_ref!r} has {L}")
    th = thirds(L)
    sets = {f"{k} third ({v[0]}-{v[-1]})": tuple(v) for k, v in th.items()}
    singles = {f"block {i}": (i,) for i in range(L)}
    all_sets = list(sets.values()) + list(singles.values())
    per_chunk: dict[tuple, list[float]] = {k: [] for k in all_sets}
    bounds = np.linspace(0, len(data), CHUNKS + 1).astype(int)
    objective = ""
    for a, b in zip(bounds[:-1], bounds[1:]):
        out = run_removals(stack, data.subset(range(a, b)), all_sets, batch_size=16, max_length=64)
        objective = out["objective"]
        for key in all_sets:
            per_chunk[key].append(_damage(out, key))
    unit = "extra next-token loss (nats)" if loaded.task == "causal-lm" else "embedding 1 − cos"
    est = {k: mean_interval(v, what=unit, unit="chunks") for k, v in per_chunk.items()}
    rows = [[name, len(key), f"{est[key].value:.4g} [{est[key].low:.4g}, {est[key].high:.4g}]"]
            for name, key in list(sets.items()) + list(singles.items())]
    early, middle, late = (sets[n] for n in sets)
    verdict = prune_verdict(per_chunk[early], per_chunk[middle], per_chunk[late], unit)
    deep = list(range(L // 2, L - 1))
    shallow = list(range(0, L // 2))
    deep_mean = np.mean([per_chunk[(i,)] for i in deep], axis=0)
    shallow_mean = np.mean([per_chunk[(i,)] for i in shallow], axis=0)
    anchor = threshold_rule(diff_interval(
        deep_mean, shallow_mean, what=f"mean single-block damage, deep-not-last (blocks {deep[0]}-{deep[-1]}) "
                                      f"− first half (0-{shallow[-1]}) ({unit})", unit="chunks"), claim="below")
    order = sorted(range(L), key=lambda i: est[(i,)].value)
    findings = [f"Least harmful single blocks: {', '.join(str(i) for i in order[:3])}; most harmful: "
                f"{', '.join(str(i) for i in order[-3:][::-1])} (objective: {objective}).",
                f"Anchor check (ShortGPT / Gromov: deep-but-not-last blocks are the most redundant): "
                f"{anchor.verdict} — {anchor.reason}."]
    chart = bar_chart([str(i) for i in range(L)], {"remove this block alone": [est[(i,)].value for i in range(L)]},
                      x_title="block", y_title=unit)
    return make_result(
        "prune-depth",
        experiment=(f"{model_ref} ({L} blocks) on {len(data)} {data_ref} items in {CHUNKS} chunks: each "
                    f"third of the blocks removed at once (early {th['early'][0]}-{th['early'][-1]}, "
                    f"middle {th['middle'][0]}-{th['middle'][-1]}, late {th['late'][0]}-{th['late'][-1]}), and "
                    f"each block alone; a removed block passes its input through. Damage: {unit}; "
                    f"intervals over the {CHUNKS} chunks."),
        columns=["removed", "blocks", f"damage: {unit} [95%]"], rows=rows, chart=chart,
        verdict=verdict, findings=findings, model=model_ref, data=data_ref,
        settings={"items": len(data), "chunks": CHUNKS, "anchor_verdict": anchor.verdict})
