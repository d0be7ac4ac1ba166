"""Ablation: zero, mean or resample the output of each block, sublayer or head, and measure what
the model loses with the same objectives as layer removal (:mod:`layerscope.objectives`:
perplexity for causal LMs, embedding ``1 - cos`` for encoders, accuracy / KL for classifiers,
output change otherwise), so removal, ablation and patching read as one table.

- **zero**: the output set to 0 (off-distribution: the rest of the model never saw zeros there);
- **mean**: the output replaced by its mean over the real tokens of a reference set (``reference``,
  default the data itself), the same vector at every position;
- **resample**: each item's output replaced by another item's (the batch rolled by one: item b
  gets item b+1's activation, position by position), which keeps activations on-distribution;
- **remove** (blocks only, shape-keeping ones): the block skipped, its input passed on — the
  number :func:`layerscope.analyses.importance.layer_importance` reports.

Prefix reuse as in layer removal: one recorded forward per batch; an ablation in block l re-runs
only blocks l (l + 1 for a whole block) to the end, then the model's tail, when the tail
reproduces the model's output (checked on every batch); otherwise full forwards.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.analyses.causal.ablation import ablate
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2)).eval()
    >>> res = ablate(lm, torch.randint(0, 40, (4, 6)), parts="block,head", how="zero,mean")
    >>> res.objective, res.labels, res.method
    ('perplexity', ['0', '1', '0.head0', '0.head1', '1.head0', '1.head1'], 'prefix')
    >>> len(res.values["zero"]), len(res.values["remove"])
    (6, 6)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from layerscope.errors import LayerscopeError
from layerscope.layers import Layers
from layerscope.results import Result

from .interventions import (Intervened, Intervention, Site, apply, mean_activation, normalise_part,
                            record_batch, run_blocks, site_in)

HOWS = ("zero", "mean", "resample")


@dataclass
class AblationResult(Result):
    """The objective's value with each site ablated each way (``values[how]`` aligned with
    ``labels``), the intact model's value (``baseline``) and, for blocks, removal (``remove``)."""

    model: str
    objective: str
    baseline: float
    labels: list[str]
    parts: list[str]
    layers: list[str]
    values: dict[str, list[float]]
    n_items: int
    method: str
    seconds: float

    def higher_is_worse(self) -> bool:
        return self.objective not in ("accuracy",)

    def effect(self, how: str) -> list[float]:
        """How much worse than intact each ablation leaves the model (positive = worse)."""
        sign = 1.0 if self.higher_is_worse() else -1.0
        return [sign * (v - self.baseline) for v in self.values[how]]

    def summary(self) -> str:
        hows = [h for h in self.values if h != "remove"] + (["remove"] if "remove" in self.values else [])
        parts = []
        for how in hows:
            eff = np.asarray(self.effect(how), dtype=float)
            if np.all(np.isnan(eff)):
                continue
            i = int(np.nanargmax(eff))
            parts.append(f"{how}: {self.labels[i]} ({self.values[how][i]:.3g})")
        return (f"{self.objective} intact {self.baseline:.4g} on {self.n_items} items; worst site by "
                + "; ".join(parts) + f" ({len(self.labels)} sites, {self.seconds:.1f}s, {self.method})")

    def table(self) -> list[dict]:
        """One row per site: label, part and the objective under each ablation."""
        return [{"site": lab, "part": part, **{h: v[i] for h, v in self.values.items()}}
                for i, (lab, part) in enumerate(zip(self.labels, self.parts))]

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(self.labels) + 2), 3.6))
        else:
            fig = ax.figure
        hows = list(self.values)
        width = 0.8 / max(len(hows), 1)
        x = np.arange(len(self.labels))
        for k, how in enumerate(hows):
            ax.bar(x + (k - (len(hows) - 1) / 2) * width, self.values[how], width, label=how)
        ax.axhline(self.baseline, color="k", lw=0.8, ls="--", label="intact")
        ax.set_xticks(x)
        ax.set_xticklabels(self.labels, rotation=90, fontsize=7)
        ax.set_ylabel(self.objective)
        if self.objective == "perplexity":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("ablation: the objective with each site ablated", fontsize=10)
        fig.tight_layout()
        return fig


def _sites(view: Layers, chosen, parts: list[str]) -> list[Site]:
    sites = []
    for part in parts:
        for block in chosen:
            if part == "head":
                n = site_in(block, "head", 0).n_heads
                sites += [site_in(block, "head", h) for h in range(n)]
            else:
                sites.append(site_in(block, part))
    return sites


def _parse(spec, allowed, what: str) -> list[str]:
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    out = []
    for item in items:
        key = normalise_part(item) if what == "part" else item.lower()
        if key not in allowed:
            raise LayerscopeError(f"unknown {what} {item!r}; use one of: {', '.join(allowed)}")
        if key not in out:
            out.append(key)
    if not out:
        raise LayerscopeError(f"name at least one {what} ({', '.join(allowed)})")
    return out


def ablate(model, data, *, parts="block", how="zero,mean,resample", layers=None, reference=None,
           blocks: str | None = None, batch_size: int = 16, max_length: int | None = 128,
           limit: int | None = None, remove: bool = True, method: str = "auto") -> AblationResult:
    """Ablate every chosen site (``parts``: block, attention, feed-forward, head; ``layers``:
    which blocks) each way in ``how`` and score the model on ``data`` with its own objective."""
    from layerscope.modes import evaluating
    from layerscope.objectives import make_objective
    from layerscope.replay import build_stack, main_output, prepare
    from layerscope.sweep import as_model, encoded_batches

    part_list = _parse(parts, ("block", "attention", "feed-forward", "head"), "part")
    hows = _parse(how, HOWS, "ablation")
    if method not in ("auto", "prefix", "full"):
        raise LayerscopeError(f"unknown method {method!r}; use auto, prefix or full")
    loaded = as_model(model)
    view = Layers(loaded, "blocks", blocks=blocks)
    stack = build_stack(loaded, blocks)
    chosen = view.select(layers)
    sites = _sites(view, chosen, part_list)
    all_blocks = stack.layers
    started = time.perf_counter()
    means = {}
    with evaluating(loaded):
        if "mean" in hows:
            means = mean_activation(loaded, sites, reference if reference is not None else data,
                                    batch_size=batch_size, max_length=max_length, limit=limit)
        objective = None
        used = method
        n_items = 0
        extra = {s.name: s.layer for s in sites if s.part != "block"}
        with torch.no_grad():
            for enc, labels in encoded_batches(loaded, data, batch_size=batch_size,
                                               max_length=max_length, limit=limit):
                enc = prepare(stack, enc)
                if "resample" in hows and enc.size < 2:
                    raise LayerscopeError("resample ablation swaps activations between items; use "
                                          "batches of at least 2 items (--batch-size 2 or more)")
                rec, cap, prefix = record_batch(stack, enc, method, list(extra.values()))
                calls, outs = rec.calls, rec.outs
                if objective is None:
                    objective = make_objective(stack.task, labels)
                objective.begin(enc, main_output(rec.output, stack.task), labels)
                used = "prefix" if prefix else "full"
                removable = rec.removable()
                n_items += enc.size

                def score(key, site_index: int, ivs, start_h=None):
                    if prefix:
                        start = site_index if start_h is None else site_index + 1
                        h = rec.block_input(site_index) if start_h is None else start_h
                        objective.add_final(key, run_blocks(loaded.module, all_blocks, calls, start,
                                                            h, ivs), stack)
                    else:
                        with Intervened(loaded.module, ivs) as iv:
                            out = iv.call(loaded, enc)
                        objective.add(key, main_output(out, stack.task))

                for k, site in enumerate(sites):
                    for h in hows:
                        if h == "zero":
                            iv = Intervention(site, "zero")
                        elif h == "mean":
                            iv = Intervention(site, "mean", means[site.label])
                        else:
                            act = outs[site.index] if site.part == "block" else (
                                cap.inputs[site.name] if site.head is not None else cap.outputs[site.name])
                            iv = Intervention(site, "resample", torch.roll(act, -1, dims=0))
                        if site.part == "block" and prefix:
                            score((h, k), site.index, (), apply(outs[site.index], [iv]))
                        else:
                            score((h, k), site.index, [iv])
                    if remove and site.part == "block" and removable[site.index]:
                        if prefix:
                            score(("remove", k), site.index, (), rec.block_input(site.index))
                        else:
                            skip = Intervention(site, "replace", rec.block_input(site.index))
                            score(("remove", k), site.index, [skip])
    if objective is None:
        raise LayerscopeError("no data to ablate on; pass at least one item")
    values = {h: [objective.value((h, k))["metric"] for k in range(len(sites))] for h in hows}
    if remove and "block" in part_list:
        values["remove"] = [objective.value(("remove", k))["metric"]
                            if ("remove", k) in objective.sums else math.nan for k in range(len(sites))]
    return AblationResult(model=loaded.ref, objective=objective.name,
                          baseline=objective.value(())["metric"], labels=[s.label for s in sites],
                          parts=[s.part for s in sites], layers=[b.name for b in chosen], values=values,
                          n_items=n_items, method=used, seconds=time.perf_counter() - started)


__all__ = ["HOWS", "AblationResult", "ablate"]
