"""Study: depthwise-separable convolutions (cnn vs cnn-dw): parameters, FLOPs, time, accuracy."""

from __future__ import annotations

import numpy as np
import torch

from layerscope.modes import evaluating
from layerscope.report.charts import bar_chart

from .common import (Estimate, Settings, check_model, combine, diff_interval, make_result, pm,
                     register, seed_list, threshold_rule)
from .training import param_count, split, train_once

DROP = 0.02


def depthwise_verdict(conv_ratio: float, acc: dict[str, list[float]]):
    """Two parts: conv parameters of cnn-dw / cnn (an exact count) at most 0.5, and the held-out
    accuracy cost cnn − cnn-dw (paired over seeds; ``acc``: network -> per-seed accuracy) wholly
    below :data:`DROP`."""
    fewer = threshold_rule(Estimate(conv_ratio, conv_ratio, conv_ratio, 1, "conv parameters, cnn-dw / cnn",
                                    "exact count"), 0.5, claim="below")
    drop = threshold_rule(diff_interval(acc["cnn"], acc["cnn-dw"], what="held-out accuracy, cnn − cnn-dw"),
                          DROP, claim="below", line=f"{DROP:g} (2 points)")
    return combine({"far fewer parameters": fewer, "only a bit of accuracy lost": drop})


def _conv_params(module) -> int:
    return int(sum(p.numel() for m in module.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters()))


def _flops(module, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with evaluating(module), torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return int(fc.get_total_flops())


@register("depthwise", title="Depthwise-separable convolutions",
          claim="Depthwise-separable layers (as in MobileNet) cut parameters, trading a bit of accuracy for speed.",
          source="seed 003 (forum post)",
          anchor="Howard et al. 2017 (MobileNet): 1.1 points less ImageNet accuracy for 7x fewer "
                 "parameters and 8.5x fewer multiply-adds than the same network with full convolutions",
          models="the zoo CNN (cnn, with options such as cnn:width=16) on images such as mnist", order=90)
def depthwise(s: Settings):
    from layerscope.surgery.measure import interleaved_latency

    model = s.model or "cnn"
    check_model("depthwise", model, ("cnn",), "the zoo CNN (cnn or cnn:width=N,...), compared with its cnn-dw twin")
    data = s.data or "mnist"
    opts = model.split(":", 1)[1] if ":" in model else s.pick("width=16,depth=2", "width=32,depth=3")
    limit = s.pick(2000, 5000)
    epochs = s.pick(2, 6)
    seeds = seed_list(s)
    _, test_part = split(data, 0, limit)
    x = test_part.items[:256]
    acc, runs = {}, {}
    for name in ("cnn", "cnn-dw"):
        for seed in seeds:
            run = train_once(f"{name}:{opts}", data, seed=seed, epochs=epochs, workdir=s.workdir, limit=limit)
            acc.setdefault(name, []).append(run.test_accuracy)
            runs.setdefault(name, []).append(run)
    full, dw = runs["cnn"][0].module, runs["cnn-dw"][0].module
    with evaluating(full, dw):      # median forward ms, the two networks interleaved
        ms = interleaved_latency(full, dw, lambda: full(x), lambda: dw(x), repeats=5, warmup=1)[:2]
    info = {name: {"params": param_count(m), "conv": _conv_params(m), "flops": _flops(m, x), "ms": t,
                   "train_s": float(np.mean([r.seconds for r in runs[name]]))}
            for name, m, t in (("cnn", full, ms[0]), ("cnn-dw", dw, ms[1]))}
    ratio = info["cnn-dw"]["conv"] / info["cnn"]["conv"]
    rows = [[n, f"{info[n]['params']:,}", f"{info[n]['conv']:,}", f"{info[n]['flops'] / 1e6:.1f}",
             f"{info[n]['ms']:.1f}", f"{info[n]['train_s']:.1f}", pm(acc[n])] for n in ("cnn", "cnn-dw")]
    chart = bar_chart(["parameters", "FLOPs", "forward time", "held-out accuracy"],
                      {"cnn-dw / cnn": [info["cnn-dw"]["params"] / info["cnn"]["params"],
                                        info["cnn-dw"]["flops"] / info["cnn"]["flops"],
                                        info["cnn-dw"]["ms"] / info["cnn"]["ms"],
                                        float(np.mean(acc["cnn-dw"]) / np.mean(acc["cnn"]))]},
                      x_title="", y_title="ratio")
    findings = [f"Whole network: {info['cnn-dw']['params'] / info['cnn']['params']:.2f}x the parameters, "
                f"{info['cnn-dw']['flops'] / info['cnn']['flops']:.2f}x the FLOPs and "
                f"{info['cnn-dw']['ms'] / info['cnn']['ms']:.2f}x the forward time on this CPU (256 images)."]
    return make_result(
        "depthwise",
        experiment=(f"cnn:{opts} against cnn-dw:{opts} (every convolution depthwise-separable) on {data} "
                    f"({limit} items, 80/20 split), Adam, {epochs} epochs, {len(seeds)} seeds; FLOPs by "
                    f"torch.utils.flop_counter and median forward time on 256 held-out images. Verdict: conv "
                    f"parameters at most half (exact) and an accuracy cost whose interval lies below {DROP:g}."),
        columns=["network", "parameters", "conv parameters", "MFLOPs (256 images)", "forward ms", "train s/run",
                 "held-out accuracy"],
        rows=rows, chart=chart, verdict=depthwise_verdict(ratio, acc),
        findings=findings, model=f"cnn:{opts}", data=data, settings={"epochs": epochs, "limit": limit})
