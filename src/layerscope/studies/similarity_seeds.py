"""Study: do the same layers learn the same thing across seeds (Kornblith et al. 2019's check)?"""

from __future__ import annotations

import itertools

import numpy as np

from layerscope.report.charts import bar_chart

from .common import (Settings, check_model, make_result, register, seed_list, threshold_rule,
                     wilson_interval)
from .training import split, train_once

THRESHOLD = 0.9


@register("similarity-across-seeds", title="Layer similarity across seeds",
          claim="Each layer of a network learns a representation that another training run (another "
                "seed) also learns at the same depth, so layers can be matched across runs.",
          source="seed 003 ('early layers catch basics like lines or colors, while deeper ones grasp "
                 "concepts'), made testable by Kornblith et al. 2019",
          anchor="Kornblith et al. 2019: linear CKA finds each layer's counterpart in another seed's "
                 "network for 99.3% of layers of 10-layer CIFAR-10 CNNs (CCA: much less)",
          models="zoo CNNs (cnn, cnn-dw, with options) or MLPs on image / tensor data", order=70)
def similarity_seeds(s: Settings):
    from layerscope.analyses.similarity import similarity

    model = s.model or "cnn"
    check_model("similarity-across-seeds", model, ("cnn", "cnn-dw", "mlp"), "zoo CNNs or MLPs (cnn, cnn-dw, mlp)")
    base = model.split(":")[0]
    data = s.data or ("mnist" if base.startswith("cnn") else "digits")
    opts = model.split(":", 1)[1] if ":" in model else s.pick("width=8,depth=3", "width=16,depth=4")
    if base == "mlp" and ":" not in model:
        opts = s.pick("width=64,depth=4", "width=128,depth=6")
    spec = f"{base}:{opts}"
    limit = s.pick(2000, 5000) if data == "mnist" else None
    epochs = s.pick(2, 6)
    seeds = seed_list(s)
    nets = [train_once(spec, data, seed=seed, epochs=epochs, workdir=s.workdir, limit=limit).module
            for seed in seeds]
    # the same held-out images for every pair: seed 0's held-out part
    _, probe_part = split(data, 0, limit)
    hits = total = 0
    per_layer: dict[int, list[int]] = {}
    layers = []
    for a, b in itertools.permutations(range(len(nets)), 2):
        res = similarity(nets[a], probe_part.items, other=nets[b], batch_size=128)
        m = np.asarray(res.cka)
        layers = res.layers
        for i in range(min(m.shape)):
            ok = int(np.argmax(m[i]) == i)
            per_layer.setdefault(i, []).append(ok)
            hits += ok
            total += 1
    est = wilson_interval(hits, total, what="share of layers whose most CKA-similar layer in another "
                                            "seed's network is its counterpart", unit="layer matches")
    verdict = threshold_rule(est, THRESHOLD, line=f"{THRESHOLD:g}")
    rows = [[i, layers[i] if i < len(layers) else "", f"{sum(v)}/{len(v)}"] for i, v in per_layer.items()]
    findings = [f"Kornblith et al. report 99.3% on CIFAR-10 CNNs; this run: {hits}/{total} = {hits / total:.1%}."]
    chart = bar_chart([str(i) for i in per_layer], {"matched to its counterpart": [float(np.mean(v)) for v in per_layer.values()]},
                      x_title="layer", y_title="share of seed pairs")
    return make_result(
        "similarity-across-seeds",
        experiment=(f"{spec} trained on {data}{f' ({limit} items)' if limit else ''} from {len(seeds)} seeds "
                    f"({epochs} epochs each, Adam); unbiased linear CKA between every layer of one network "
                    f"and every layer of another on {len(probe_part)} held-out items, for all "
                    f"{len(seeds) * (len(seeds) - 1)} ordered pairs; a layer is matched when its most similar "
                    f"layer in the other network sits at the same depth."),
        columns=["layer", "name", "matched"], rows=rows, chart=chart, verdict=verdict, findings=findings,
        model=spec, data=data, settings={"epochs": epochs, "threshold": THRESHOLD})
