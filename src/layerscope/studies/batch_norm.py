"""Study: does batch norm make training converge faster (the "30% faster" claim)?"""

from __future__ import annotations

import numpy as np

from layerscope.report.charts import line_chart

from .common import (Settings, check_model, combine, make_result, mean_interval, pm, register,
                     seed_list, threshold_rule)
from .training import accuracy, build, split

LR = 0.01
EVERY = 5


def batch_norm_verdict(none: list[float], batch: list[float]):
    """Two parts on the per-seed speed-up in steps to the target (steps without / with batch norm − 1,
    ``none``/``batch``: steps per seed): its interval above 0 (fewer steps) and above 0.3 (30%).
    Returns (verdict, the speed-up estimate)."""
    est = mean_interval([a / b - 1.0 for a, b in zip(none, batch)],
                        what="speed-up in steps to target (steps without / with BN − 1)")
    return combine({"batch norm reaches the target in fewer steps": threshold_rule(est, 0.0),
                    "at least 30% faster (speed-up >= 0.3)": threshold_rule(est, 0.3, line="0.3 (30%)")}), est


def _steps_to_target(spec: str, data: str, seed: int, epochs: int, target: float, workdir):
    """Train with the library loop, checking held-out accuracy every few steps; returns
    (first step at or above ``target`` or None, the curve, seconds per step)."""
    import tempfile
    import time
    from pathlib import Path

    from layerscope.train import train

    train_part, test_part = split(data, seed)
    module = build(spec, seed)
    curve: list[tuple[int, float]] = []
    spent = [0.0]

    def watch(step, epoch, loss):
        if step % EVERY == 0:
            t = time.perf_counter()
            curve.append((step, accuracy(module, test_part)))
            spent[0] += time.perf_counter() - t

    out = Path(tempfile.mkdtemp(prefix="bn-", dir=workdir))
    t0 = time.perf_counter()
    res = train(module, train_part, eval_data=test_part, out_dir=out, epochs=epochs, lr=LR,
                optimizer="sgd", seed=seed, monitor_every=0, progress=False, plots=False,
                callbacks=[watch])
    per_step = (time.perf_counter() - t0 - spent[0]) / max(res.steps, 1)
    hit = next((st for st, a in curve if a >= target), None)
    return hit, curve, per_step, res.steps


@register("batch-norm", title="Batch norm and convergence speed",
          claim="Batch normalization speeds up convergence: 'I saw a 30% faster run once just by adding a few'.",
          source="seed 003 (forum post)",
          anchor="Ioffe & Szegedy 2015: the same accuracy in 14 times fewer steps on Inception (with a "
                 "raised learning rate); Santurkar et al. 2018: the gain comes from a smoother loss",
          models="zoo MLPs (mlp, mlp:width=N) on a tensor data set such as digits", order=50)
def batch_norm(s: Settings):
    model = s.model or "mlp"
    check_model("batch-norm", model, ("mlp",), "zoo MLPs (mlp), which have a norm option")
    data = s.data or "digits"
    depth, width, epochs = s.pick(4, 6), s.pick(64, 128), s.pick(6, 15)
    target = s.pick(0.9, 0.95)
    seeds = seed_list(s)
    steps = {"none": [], "batch": []}
    per_step = {"none": [], "batch": []}
    curves = {}
    censored = 0
    total = 0
    for seed in seeds:
        for norm in ("none", "batch"):
            hit, curve, sec, total = _steps_to_target(f"mlp:depth={depth},width={width},norm={norm}", data,
                                                      seed, epochs, target, s.workdir)
            if hit is None:
                censored += 1
                hit = total                        # never reached: counted as the whole budget
            steps[norm].append(hit)
            per_step[norm].append(sec)
            curves.setdefault(norm, curve)
    verdict, est = batch_norm_verdict(steps["none"], steps["batch"])
    wall = [a * ta / (b * tb) - 1.0 for a, b, ta, tb in zip(steps["none"], steps["batch"], per_step["none"], per_step["batch"])]
    west = mean_interval(wall, what="speed-up in seconds to target")
    rows = [[norm, pm(steps[norm]), pm([1e3 * x for x in per_step[norm]])] for norm in steps]
    findings = [f"In wall-clock time: {west.text()} (batch norm costs {pm([1e3 * x for x in per_step['batch']])} "
                f"ms a step against {pm([1e3 * x for x in per_step['none']])} without)."]
    if censored:
        findings.append(f"{censored} run(s) never reached {target:.0%} within {epochs} epochs; they count as "
                        f"the whole budget ({total} steps), which understates the gap.")
    x = sorted({st for c in curves.values() for st, _ in c})
    chart = line_chart([str(v) for v in x], {f"norm={k} (seed 0)": [dict(c).get(v) for v in x] for k, c in curves.items()},
                       x_title="step", y_title="held-out accuracy")
    return make_result(
        "batch-norm",
        experiment=(f"MLP ({depth} hidden layers of width {width}) on {data}, with and without batch norm "
                    f"after each linear map; SGD (momentum 0.9, lr {LR}), batch 64, up to {epochs} epochs, "
                    f"{len(seeds)} seeds; held-out accuracy checked every {EVERY} steps; steps to reach "
                    f"{target:.0%} held-out accuracy."),
        columns=["norm", f"steps to {target:.0%}", "ms per step"], rows=rows, chart=chart,
        verdict=verdict, findings=findings, model=model, data=data,
        settings={"depth": depth, "width": width, "epochs": epochs, "target": target, "lr": LR})
