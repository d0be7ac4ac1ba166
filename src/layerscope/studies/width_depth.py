"""Study: width against depth at a fixed parameter budget."""

from __future__ import annotations

import math

import numpy as np

from layerscope.report.charts import line_chart

from .common import (Settings, check_model, combine, diff_interval, make_result, pm, register,
                     seed_list, threshold_rule)
from .training import param_count, train_once


def width_depth_verdict(acc: dict[int, list[float]]):
    """Two parts, paired over seeds (``acc``: depth -> per-seed held-out accuracy at the fixed
    budget): the best inner depth beats the shallowest and the deepest (intervals above 0)."""
    depths = sorted(acc)
    lo, hi = depths[0], depths[-1]
    best = max(depths[1:-1], key=lambda d: np.mean(acc[d]))
    return combine({
        f"balanced (depth {best}) beats all-width (depth {lo})": threshold_rule(diff_interval(
            acc[best], acc[lo], what=f"held-out accuracy, depth {best} − depth {lo}")),
        f"balanced (depth {best}) beats all-depth (depth {hi})": threshold_rule(diff_interval(
            acc[best], acc[hi], what=f"held-out accuracy, depth {best} − depth {hi}")),
    })


def width_for(budget: int, depth: int, n_in: int = 64, n_out: int = 10) -> int:
    """The hidden width whose MLP of ``depth`` hidden layers has about ``budget`` parameters.

    Example:
        >>> w = width_for(20000, 1); abs((64 * w + w) + (w * 10 + 10) - 20000) < 80
        True
    """
    a = depth - 1                         # w² terms
    b = n_in + 1 + (depth - 1) + n_out    # linear terms: first layer, biases, head
    c = n_out - budget
    if a == 0:
        return max(1, round(-c / b))
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


@register("width-vs-depth", title="Width against depth at a fixed budget",
          claim="Width and depth should be scaled together: at a given size, a balanced network beats "
                "one that is all width or all depth.",
          source="seeds 000/001 (glossary entry 'Layer', section 'Width vs. Depth')",
          anchor="Kaplan et al. 2020: for Transformers, loss depends weakly on the shape at fixed "
                 "parameters over a wide range of depth/width ratios; Tan & Le 2019 (EfficientNet): "
                 "scaling width, depth and resolution together beats scaling one",
          models="zoo MLPs (mlp) on a tensor data set such as digits", order=80)
def width_vs_depth(s: Settings):
    model = s.model or "mlp"
    check_model("width-vs-depth", model, ("mlp",), "zoo MLPs (mlp), sized by width and depth")
    data = s.data or "digits"
    budget = s.pick(20000, 50000)
    depths = s.pick((1, 3, 8), (1, 2, 4, 8, 16))
    epochs = s.pick(4, 12)
    seeds = seed_list(s)
    acc, params, secs = {}, {}, {}
    for d in depths:
        w = width_for(budget, d)
        for seed in seeds:
            run = train_once(f"mlp:depth={d},width={w}", data, seed=seed, epochs=epochs, workdir=s.workdir)
            acc.setdefault(d, []).append(run.test_accuracy)
            secs.setdefault(d, []).append(run.seconds)
            params[d] = (w, param_count(run.module))
    inner = [d for d in depths if d not in (min(depths), max(depths))]
    best = max(inner, key=lambda d: np.mean(acc[d]))
    rows = [[d, params[d][0], f"{params[d][1]:,}", pm(acc[d]), pm(secs[d])] for d in depths]
    chart = line_chart([str(d) for d in depths], {"held-out accuracy": [float(np.mean(acc[d])) for d in depths]},
                       x_title="hidden layers (width shrinks to keep the budget)", y_title="accuracy (mean over seeds)")
    return make_result(
        "width-vs-depth",
        experiment=(f"MLPs on {data} with about {budget:,} parameters each: depth "
                    f"{', '.join(map(str, depths))} hidden layers, width solved for the budget; Adam (lr "
                    f"1e-3), {epochs} epochs, {len(seeds)} seeds. The balanced shape compared is the inner "
                    f"depth with the best mean accuracy (depth {best})."),
        columns=["depth", "width", "parameters", "held-out accuracy", "seconds"], rows=rows, chart=chart,
        verdict=width_depth_verdict(acc), model=model, data=data,
        settings={"budget": budget, "depths": list(depths), "epochs": epochs})
