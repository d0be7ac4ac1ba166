"""Study: does dropout curb overfitting (the train / held-out gap against the dropout rate)?"""

from __future__ import annotations

from layerscope.report.charts import line_chart

from .common import (Settings, check_model, diff_interval, make_result, pm, register, seed_list,
                     threshold_rule)
from .training import train_once


def dropout_verdict(gap: dict[float, list[float]]):
    """Supported when the train − held-out gap without dropout minus the gap at the highest rate
    (paired over seeds; ``gap``: rate -> per-seed gaps) lies wholly above 0, refuted when wholly
    below.

    Example:
        >>> dropout_verdict({0.0: [0.10, 0.12, 0.11], 0.5: [0.02, 0.03, 0.02]}).verdict
        'supported'
    """
    hi = max(gap)
    return threshold_rule(diff_interval(gap[0.0], gap[hi], what=f"train − held-out accuracy gap, rate 0 − rate {hi}"))


@register("dropout", title="Dropout and overfitting",
          claim="Adding dropout to a layer prevents overfitting (memorising the training data "
                "instead of generalising).",
          source="seed 003 (forum post)",
          anchor="Srivastava et al. 2014: dropout lowers held-out error of MLPs on MNIST from 1.6% to "
                 "about 1.25% at rate 0.5",
          models="zoo MLPs (mlp, mlp:width=N) on a tensor data set such as digits", order=60)
def dropout(s: Settings):
    model = s.model or "mlp"
    check_model("dropout", model, ("mlp",), "zoo MLPs (mlp), which have a dropout option")
    data = s.data or "digits"
    rates = s.pick((0.0, 0.5), (0.0, 0.1, 0.3, 0.5))
    depth, width, epochs = 2, s.pick(128, 256), s.pick(12, 40)
    seeds = seed_list(s)
    gap = {r: [] for r in rates}
    test = {r: [] for r in rates}
    train = {r: [] for r in rates}
    for seed in seeds:
        for r in rates:
            run = train_once(f"mlp:depth={depth},width={width},dropout={r}", data, seed=seed,
                             epochs=epochs, workdir=s.workdir, lr=1e-3)
            gap[r].append(run.train_accuracy - run.test_accuracy)
            test[r].append(run.test_accuracy)
            train[r].append(run.train_accuracy)
    hi = max(rates)
    verdict = dropout_verdict(gap)
    acc = threshold_rule(diff_interval(test[hi], test[0.0], what=f"held-out accuracy, rate {hi} − rate 0"))
    rows = [[r, pm(train[r]), pm(test[r]), pm(gap[r])] for r in rates]
    findings = [f"Held-out accuracy with dropout {hi} against none: {acc.verdict} that it is higher — {acc.reason}."]
    chart = line_chart([str(r) for r in rates], {"train − held-out gap": [sum(gap[r]) / len(gap[r]) for r in rates]},
                       x_title="dropout rate", y_title="accuracy gap (mean over seeds)")
    return make_result(
        "dropout",
        experiment=(f"MLP ({depth} hidden layers of width {width}) on {data}, dropout rate "
                    f"{', '.join(map(str, rates))} after each hidden layer; Adam (lr 1e-3), {epochs} epochs, "
                    f"{len(seeds)} seeds; both accuracies measured in eval mode on the seed's 80/20 split."),
        columns=["dropout", "train accuracy", "held-out accuracy", "gap"], rows=rows, chart=chart,
        verdict=verdict, findings=findings, model=model, data=data,
        settings={"rates": list(rates), "width": width, "epochs": epochs})
