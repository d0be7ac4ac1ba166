"""Study: activation functions and gradient flow by depth (ReLU, GELU, tanh, sigmoid)."""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from layerscope.report.charts import bar_chart

from .common import (Settings, check_model, combine, diff_interval, make_result, pm, register,
                     seed_list, threshold_rule)
from .training import build, constant_units, first_value, split, train_once

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid")
LR = 1e-3


def activations_verdict(stats: dict[str, dict[str, list[float]]], depth: int):
    """Two parts, each a paired interval over seeds (``stats[act]["ratio"]``: log10 of layer-0 over
    last-layer gradient norm, ``stats[act]["acc"]``: held-out accuracy): ReLU − sigmoid above 0."""
    return combine({
        "more gradient reaches layer 0 with ReLU than with sigmoid": threshold_rule(diff_interval(
            stats["relu"]["ratio"], stats["sigmoid"]["ratio"],
            what=f"log10(layer-0 / layer-{depth - 1} gradient norm), ReLU − sigmoid")),
        "ReLU networks train better than sigmoid ones": threshold_rule(diff_interval(
            stats["relu"]["acc"], stats["sigmoid"]["acc"], what="held-out accuracy, ReLU − sigmoid")),
    })


def network(depth: int, width: int, act: str, seed: int) -> nn.Module:
    """A zoo MLP with ``act`` after every hidden layer (sigmoid swapped in: the zoo has none)."""
    net = build(f"mlp:depth={depth},width={width},activation={'tanh' if act == 'sigmoid' else act}", seed)
    if act == "sigmoid":
        for block in net.blocks:
            block.act = nn.Sigmoid()
    return net


@register("activations", title="Activation functions and gradient flow",
          claim="ReLU keeps gradients flowing through deep stacks where sigmoid does not.",
          source="seed 003 (forum post: 'ReLU clipping negatives to zero, which keeps gradients flowing')",
          anchor="Glorot & Bengio 2010: sigmoid networks saturate and their lower layers get vanishing "
                 "gradients; Glorot, Bordes & Bengio 2011: rectifiers train deep networks without that",
          models="zoo MLPs (mlp, mlp:width=N) on a tensor data set such as digits", order=40)
def activations(s: Settings):
    model = s.model or "mlp"
    check_model("activations", model, ("mlp",), "zoo MLPs (mlp), whose activation can be swapped")
    data = s.data or "digits"
    depth, width, epochs = s.pick(10, 20), s.pick(32, 64), s.pick(3, 8)
    seeds = seed_list(s)
    first, last = "blocks.0.linear", f"blocks.{depth - 1}.linear"
    stats = {a: {"ratio": [], "acc": [], "dead": [], "first": []} for a in ACTIVATIONS}
    for seed in seeds:
        _, test_part = split(data, seed)
        for act in ACTIVATIONS:
            run = train_once(network(depth, width, act, seed), data, seed=seed, epochs=epochs,
                             workdir=s.workdir, lr=LR, optimizer="adam", monitor_every=5, name=act)
            per_epoch = max(1, run.steps // max(len(run.history), 1))
            g0 = first_value(run.grads.get(first, []), per_epoch)
            gl = first_value(run.grads.get(last, []), per_epoch)
            st = stats[act]
            st["ratio"].append(math.log10(max(g0, 1e-30) / max(gl, 1e-30)))
            st["first"].append(g0)
            st["acc"].append(run.test_accuracy)
            st["dead"].append(float(np.mean(constant_units(run.module, test_part,
                                                           [b.act for b in run.module.blocks]))))
    rows = [[a, pm([10 ** r for r in st["ratio"]]), pm(st["first"]), pm(st["dead"]), pm(st["acc"])]
            for a, st in stats.items()]
    findings = [f"Dead (constant) units after training: ReLU {pm(stats['relu']['dead'])}, GELU "
                f"{pm(stats['gelu']['dead'])}, tanh {pm(stats['tanh']['dead'])}, sigmoid "
                f"{pm(stats['sigmoid']['dead'])} (share of hidden units whose output is the same on every "
                f"held-out item)."]
    chart = bar_chart(list(ACTIVATIONS), {"layer 0 / last-layer gradient norm (log10)":
                                          [float(np.mean(stats[a]["ratio"])) for a in ACTIVATIONS],
                                          "held-out accuracy": [float(np.mean(stats[a]["acc"])) for a in ACTIVATIONS]},
                      x_title="activation", y_title="value (mean over seeds)")
    return make_result(
        "activations",
        experiment=(f"MLP with {depth} hidden layers of width {width} on {data}, one network per "
                    f"activation ({', '.join(ACTIVATIONS)}), default PyTorch initialisation; Adam "
                    f"(lr {LR:g}), {epochs} epochs, {len(seeds)} seeds. Gradient flow: median "
                    f"over epoch 1 of the ratio of layer 0's to layer {depth - 1}'s gradient norm (training "
                    f"monitor)."),
        columns=["activation", "layer-0 / last gradient ratio", "layer-0 gradient norm",
                 "dead units", "held-out accuracy"],
        rows=rows, chart=chart, verdict=activations_verdict(stats, depth), findings=findings, model=model, data=data,
        settings={"depth": depth, "width": width, "epochs": epochs, "lr": LR})
