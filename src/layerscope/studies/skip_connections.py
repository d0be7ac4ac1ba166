"""Study: skip connections and depth (plain vs residual MLPs at several depths, with and without
gradient clipping)."""

from __future__ import annotations

import math

import numpy as np

from layerscope.report.charts import bar_chart

from .common import (Settings, StudyResult, check_model, combine, diff_interval, fmt, make_result, pm,
                     register, seed_list, threshold_rule)
from .training import first_value, train_once

CLIP = 1.0
LR = 1e-3


def skip_verdict(acc: dict[tuple, list[float]], grad: dict[tuple, list[float]], deepest: int):
    """Paired intervals over seeds at the deepest depth (``acc``/``grad``: (depth, residual, clip) ->
    per-seed held-out accuracy / log10 first-layer gradient norm in epoch 1): residual − plain
    accuracy and gradient above 0; clipped − unclipped accuracy above 0, for plain and residual."""
    key_p, key_r = (deepest, False, None), (deepest, True, None)
    parts = {
        f"skips train deeper (accuracy gain at depth {deepest})": threshold_rule(
            diff_interval(acc[key_r], acc[key_p], what=f"held-out accuracy, residual − plain, depth {deepest}")),
        f"skips carry gradient to layer 0 (depth {deepest})": threshold_rule(
            diff_interval(grad[key_r], grad[key_p],
                          what=f"log10 first-layer gradient norm in epoch 1, residual − plain, depth {deepest}")),
    }
    for residual in (False, True):
        net = "residual" if residual else "plain"
        parts[f"clipping helps at depth {deepest} ({net})"] = threshold_rule(
            diff_interval(acc[(deepest, residual, CLIP)], acc[(deepest, residual, None)],
                          what=f"held-out accuracy, clipped − unclipped, {net}, depth {deepest}"))
    return combine(parts)


@register("skip-connections", title="Skip connections and depth",
          claim="Deep plain stacks starve their early layers of gradient; skip connections (ResNets) "
                "fix that and let deep networks train. Deeper networks also need gradient clipping "
                "against exploding gradients.",
          source="seed 003 (forum post on the role of layers)",
          anchor="He et al. 2016 (ResNet): a 56-layer plain CNN trains worse than a 20-layer one; "
                 "residual versions do not degrade",
          models="zoo MLPs (mlp, mlp:width=...) on a tensor data set such as digits", order=30)
def skip_connections(s: Settings) -> StudyResult:
    model = s.model or "mlp"
    check_model("skip-connections", model, ("mlp",), "zoo MLPs (mlp or mlp:width=N), which have a residual option")
    data = s.data or "digits"
    depths = s.pick((4, 32), (4, 16, 32))
    width = s.pick(32, 64)
    epochs = s.pick(3, 8)
    extra = "" if ":" not in model else "," + model.split(":", 1)[1]
    seeds = seed_list(s)
    runs: dict[tuple, list] = {}
    deepest = max(depths)
    for seed in seeds:
        for depth in depths:
            for residual in (False, True):
                for clip in ((None, CLIP) if depth == deepest else (None,)):
                    spec = f"mlp:depth={depth},width={width},residual={str(residual).lower()}{extra}"
                    run = train_once(spec, data, seed=seed, epochs=epochs, workdir=s.workdir, lr=LR,
                                     optimizer="adam", monitor_every=5, clip_grad=clip)
                    runs.setdefault((depth, residual, clip), []).append(run)
    first = "blocks.0.linear"
    rows, acc, grad = [], {}, {}
    for (depth, residual, clip), rs in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        steps_first_epoch = max(1, rs[0].steps // max(len(rs[0].history), 1))
        g = [math.log10(max(first_value(r.grads.get(first, []), steps_first_epoch), 1e-30)) for r in rs]
        a = [r.test_accuracy for r in rs]
        acc[(depth, residual, clip)], grad[(depth, residual, clip)] = a, g
        rows.append([depth, "residual" if residual else "plain", "1.0" if clip else "none", pm(a),
                     pm([10 ** x for x in g]), f"{sum(r.diverged for r in rs)}/{len(rs)}",
                     fmt(float(np.mean([r.seconds for r in rs])))])
    verdict = skip_verdict(acc, grad, deepest)
    shallow = min(depths)
    gap_shallow = diff_interval(acc[(shallow, True, None)], acc[(shallow, False, None)],
                                what=f"accuracy, residual − plain at depth {shallow}")
    findings = [f"At depth {shallow} the gain is {gap_shallow.text()}; at depth {deepest} it is "
                f"{next(iter(verdict.parts.values())).reason}."]
    chart = bar_chart([str(d) for d in depths],
                      {"plain": [np.mean(acc[(d, False, None)]) for d in depths],
                       "residual": [np.mean(acc[(d, True, None)]) for d in depths]},
                      x_title="hidden layers", y_title="held-out accuracy (mean over seeds)")
    return make_result(
        "skip-connections",
        experiment=(f"{model} (width {width}) on {data}, plain vs residual at depths "
                    f"{', '.join(map(str, depths))}; Adam (lr {LR:g}, the training loop's default), {epochs} epochs, batch 64, "
                    f"{len(seeds)} seeds (initialisation and 80/20 split); at depth {deepest} also with "
                    f"the total gradient norm clipped to {CLIP}. First-layer gradient: median norm over "
                    f"epoch 1 from the training monitor."),
        columns=["depth", "network", "clip", "held-out accuracy", "layer-0 gradient norm (epoch 1)", "diverged (NaN)", "seconds/run"],
        rows=rows, chart=chart, verdict=verdict, findings=findings, model=model, data=data,
        settings={"depths": list(depths), "width": width, "epochs": epochs, "lr": LR, "clip": CLIP})

