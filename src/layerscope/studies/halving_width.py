"""Study: halving the hidden width of a trained network (structured pruning): speed and accuracy."""

from __future__ import annotations

import numpy as np
import torch

from layerscope.modes import evaluating
from layerscope.report.charts import bar_chart

from .common import (Settings, check_model, combine, make_result, mean_interval, pm, register,
                     seed_list, threshold_rule)
from .training import accuracy, split, train_once


def halving_verdict(speed: list[float], before: list[float], tuned: list[float]):
    """Two parts over seeds: the forward speed-up (time before / after − 1, ``speed``) above 0.2, and
    the accuracy lost after fine-tuning (``before`` − ``tuned``, paired) below 0.01."""
    sp = mean_interval(speed, what="forward speed-up (time before / after − 1)")
    drop = mean_interval(np.subtract(before, tuned), what="accuracy lost after fine-tuning (before − after)")
    return combine({"at least 20% faster": threshold_rule(sp, 0.2, line="0.2 (20%)"),
                    "without losing much accuracy (under 1 point after fine-tuning)":
                        threshold_rule(drop, 0.01, claim="below", line="0.01 (1 point)")})


def halve_mlp(module, keep: float = 0.5):
    """A copy of a zoo MLP (no residual, no norm) with every hidden layer cut to ``keep`` of its
    units: the units whose incoming weights have the largest L2 norm stay, and the next layer's
    matching input columns with them (the zoo MLP is not covered by ``prune_structured``)."""
    import copy

    from torch import nn

    net = copy.deepcopy(module)
    blocks = list(net.blocks)
    for i, block in enumerate(blocks):
        w = block.linear.weight.data
        n_keep = max(1, int(round(w.shape[0] * keep)))
        idx = torch.argsort(w.norm(dim=1), descending=True)[:n_keep].sort().values
        new = nn.Linear(w.shape[1], n_keep)
        new.weight.data, new.bias.data = w[idx].clone(), block.linear.bias.data[idx].clone()
        block.linear = new
        nxt = blocks[i + 1].linear if i + 1 < len(blocks) else net.head
        lin = nn.Linear(n_keep, nxt.out_features)
        lin.weight.data, lin.bias.data = nxt.weight.data[:, idx].clone(), nxt.bias.data.clone()
        if i + 1 < len(blocks):
            blocks[i + 1].linear = lin
        else:
            net.head = lin
    net.config.width = int(round(net.config.width * keep))
    return net


@register("halving-width", title="Halving the width of trained layers",
          claim="'I once cut a layer in half and gained 20% speed without losing much accuracy.'",
          source="seed 003 (forum post)",
          anchor="Li et al. 2017 (pruning filters): removing low-norm filters and fine-tuning keeps "
                 "CIFAR-10 accuracy with 34% fewer FLOPs on VGG-16",
          models="zoo MLPs (mlp, mlp:width=N) on a tensor data set such as digits", order=97)
def halving_width(s: Settings):
    from layerscope.surgery.measure import interleaved_latency

    model = s.model or "mlp"
    check_model("halving-width", model, ("mlp",), "zoo MLPs (mlp), whose hidden neurons can be pruned")
    data = s.data or "digits"
    width, epochs, tune = s.pick(256, 512), s.pick(4, 10), s.pick(1, 3)
    seeds = seed_list(s)
    before, cut, tuned, speed = [], [], [], []
    for seed in seeds:
        _, test_part = split(data, seed)
        run = train_once(f"mlp:depth=2,width={width}", data, seed=seed, epochs=epochs, workdir=s.workdir)
        small = halve_mlp(run.module)
        x = test_part.items
        with evaluating(run.module, small):     # median forward ms, the two runs interleaved
            t_big, t_small, _ = interleaved_latency(run.module, small, lambda: run.module(x),
                                                    lambda: small(x), repeats=15, warmup=1)
        before.append(run.test_accuracy)
        cut.append(accuracy(small, test_part))
        fine = train_once(small, data, seed=seed, epochs=tune, workdir=s.workdir, lr=3e-4, name="halved")
        tuned.append(fine.test_accuracy)
        speed.append(t_big / t_small - 1.0)
    rows = [["trained", width, pm(before), "1"],
            ["halved (no fine-tuning)", width // 2, pm(cut), pm([1 + v for v in speed])],
            [f"halved + {tune} epoch(s) fine-tuning", width // 2, pm(tuned), pm([1 + v for v in speed])]]
    chart = bar_chart(["trained", "halved", "halved + fine-tuned"],
                      {"held-out accuracy": [float(np.mean(before)), float(np.mean(cut)), float(np.mean(tuned))]},
                      x_title="", y_title="accuracy (mean over seeds)")
    return make_result(
        "halving-width",
        experiment=(f"mlp:depth=2,width={width} trained on {data} (Adam, {epochs} epochs, {len(seeds)} seeds); "
                    f"every hidden layer halved by structured pruning on a copy (the half of the units with "
                    f"the smallest incoming-weight norm removed, with the next layer's inputs from them), then fine-tuned "
                    f"{tune} epoch(s) at lr 3e-4; speed: median forward time on the held-out items."),
        columns=["network", "hidden width", "held-out accuracy", "speed (× trained)"], rows=rows, chart=chart,
        verdict=halving_verdict(speed, before, tuned), model=model, data=data,
        settings={"width": width, "epochs": epochs, "fine_tune_epochs": tune})
