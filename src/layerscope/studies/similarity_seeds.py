"""Study: do the same layers learn the same thing across seeds (Kornblith et al. 2019's check)?"""

from __future__ import annotations

import itertools

import numpy as np

from layerscope.report.charts import bar_chart

from .common import (Settings, check_model, combine, make_result, pm, register, seed_list,
                     threshold_rule, wilson_interval)
from .training import split, train_once

THRESHOLD = 0.9
COPY_CKA = 0.9          # a hidden layer whose linear CKA with the last hidden layer reaches this is a copy


def match_counts(nets, items) -> tuple[dict[int, list[int]], list[str]]:
    """Per layer, over all ordered pairs of ``nets``: 1 where its most CKA-similar layer in the other
    network sits at its own depth, else 0; and the layer names. Linear CKA is symmetric, so each
    unordered pair is measured once and b against a read from the transpose."""
    from layerscope.analyses.similarity import similarity

    per_layer: dict[int, list[int]] = {}
    layers: list[str] = []
    for a, b in itertools.combinations(range(len(nets)), 2):
        res = similarity(nets[a], items, other=nets[b], batch_size=128)
        layers = res.layers
        for m in (np.asarray(res.cka), np.asarray(res.cka).T):
            for i in range(min(m.shape)):
                per_layer.setdefault(i, []).append(int(np.argmax(m[i]) == i))
    return per_layer, layers


def matched(counts: dict[int, list[int]], what: str):
    """The threshold verdict on the share of matched layers in ``counts`` (from :func:`match_counts`;
    ``what`` qualifies "layers"), the matches and the comparisons."""
    k, n = sum(map(sum, counts.values())), sum(map(len, counts.values()))
    est = wilson_interval(k, n, what=f"share of layers{what} whose most CKA-similar layer in another "
                                     f"seed's network is its counterpart", unit="layer matches")
    return threshold_rule(est, THRESHOLD, line=f"{THRESHOLD:g}"), k, n


def similarity_verdict(per_layer: dict[int, list[int]], deep_matches: dict[int, dict[int, list[int]]],
                       depths: list[int]):
    """Parts: the share of the CNN's layers matched to their counterpart in another seed (``per_layer``
    from :func:`match_counts`) has a Wilson interval above :data:`THRESHOLD`, and so does the MLP's
    at each depth deeper than the base one (``deep_matches``: depth -> counts)."""
    parts = {"layers match their counterpart across seeds": matched(per_layer, "")[0]}
    for d in depths[1:]:
        parts[f"they still match at {d // depths[0]}x the depth (MLP, {d} layers)"] = \
            matched(deep_matches[d], f" of the depth-{d} MLP")[0]
    return combine(parts)


def copy_share(cka) -> float:
    """Share of a network's hidden layers, the last excluded, whose linear CKA with the last hidden
    layer is at least :data:`COPY_CKA` (Kornblith et al. 2019's 'deep copies' of the last layer).

    Example:
        >>> copy_share([[1, .2, .1, .1], [.2, 1, .5, .4], [.1, .5, 1, .95], [.1, .4, .95, 1]])
        0.3333333333333333
    """
    m = np.asarray(cka, dtype=float)
    last = m[-1, :-1]
    return float((last >= COPY_CKA).mean()) if len(last) else float("nan")


def deep_copies(s: Settings, seeds: list[int]):
    """Train the zoo MLP at a base depth and made 4x (and, --full, 8x) deeper; per seed and depth,
    the share of hidden layers that copy the last (CKA >= COPY_CKA on held-out items). The zoo CNN
    halves the image in every block, so the check deepens the MLP on digits."""
    from layerscope.analyses.similarity import similarity

    base, width, epochs = 4, s.pick(64, 128), s.pick(4, 10)
    depths = [base] + [base * m for m in s.pick((4,), (4, 8))]
    shares = {d: [] for d in depths}
    curves, nets = {}, {d: [] for d in depths}
    _, held = split("digits", 0)
    for seed in seeds:
        for d in depths:
            net = train_once(f"mlp:depth={d},width={width}", "digits", seed=seed, epochs=epochs,
                             workdir=s.workdir).module
            nets[d].append(net)
            res = similarity(net, held.items, batch_size=256)
            m = np.asarray(res.cka)[:d, :d]         # the hidden blocks (the head, when listed, left out)
            shares[d].append(copy_share(m))
            curves.setdefault(d, []).append(m[-1])
    matches = {d: match_counts(nets[d], held.items)[0] for d in depths}
    return depths, width, epochs, shares, curves, matches


@register("similarity-across-seeds", title="Layer similarity across seeds",
          claim="Each layer of a network learns a representation that another training run (another "
                "seed) also learns at the same depth, so layers can be matched across runs.",
          source="seed 003 ('early layers catch basics like lines or colors, while deeper ones grasp "
                 "concepts'), made testable by Kornblith et al. 2019",
          anchor="Kornblith et al. 2019: linear CKA finds each layer's counterpart in another seed's "
                 "network for 99.3% of layers of 10-layer CIFAR-10 CNNs (CCA: much less)",
          models="zoo CNNs (cnn, cnn-dw, with options) or MLPs on image / tensor data", order=70)
def similarity_seeds(s: Settings):
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
    per_layer, layers = match_counts(nets, probe_part.items)
    _, hits, total = matched(per_layer, "")
    depths, mlp_width, mlp_epochs, shares, curves, deep_matches = deep_copies(s, seeds)
    mlp_matched = {d: matched(deep_matches[d], "")[1:] for d in depths}
    verdict = similarity_verdict(per_layer, deep_matches, depths)
    rows = [[i, layers[i] if i < len(layers) else "", f"{sum(v)}/{len(v)}"] for i, v in per_layer.items()]
    rows += [[f"MLP depth {d}", f"matched / copies of the last layer (CKA >= {COPY_CKA:g})",
              f"{mlp_matched[d][0]}/{mlp_matched[d][1]} / {pm(shares[d])}"] for d in depths]
    findings = [f"Kornblith et al. report 99.3% on CIFAR-10 CNNs; this run: {hits}/{total} = {hits / total:.1%}."]
    for d in depths:
        mean_curve = np.mean(curves[d], axis=0)
        first = int(np.argmax(mean_curve >= COPY_CKA)) if (mean_curve >= COPY_CKA).any() else None
        findings.append(
            f"Deep copies: MLP (width {mlp_width}) at depth {d}, {len(seeds)} seeds: {pm(shares[d])} of the "
            f"hidden layers have linear CKA >= {COPY_CKA:g} with the last hidden layer"
            + (f"; on average from layer {first} on" if first is not None else "")
            + f"; {mlp_matched[d][0]}/{mlp_matched[d][1]} of its layers matched across seeds (Kornblith "
              "et al. 2019 see blocks of near-identical layers in networks made 4-8x deeper, where "
              "matching fails).")
    chart = bar_chart([str(i) for i in per_layer], {"matched to its counterpart": [float(np.mean(v)) for v in per_layer.values()]},
                      x_title="layer", y_title="share of seed pairs")
    return make_result(
        "similarity-across-seeds",
        experiment=(f"{spec} trained on {data}{f' ({limit} items)' if limit else ''} from {len(seeds)} seeds "
                    f"({epochs} epochs each, Adam); unbiased linear CKA between every layer of one network "
                    f"and every layer of another on {len(probe_part)} held-out items, for all "
                    f"{len(seeds) * (len(seeds) - 1)} ordered pairs; a layer is matched when its most similar "
                    f"layer in the other network sits at the same depth. Deep copies: the zoo MLP (width "
                    f"{mlp_width}, ReLU, no skips or norms) on digits at depths {', '.join(map(str, depths))}, "
                    f"{mlp_epochs} epochs, the same seeds; per network, the share of hidden layers (the last "
                    f"excluded) whose linear CKA with the last hidden layer on the held-out digits is at "
                    f"least {COPY_CKA:g} (the zoo CNN halves the image in every block, so the MLP is the "
                    f"network made deeper)."),
        columns=["layer", "name", "matched"], rows=rows, chart=chart, verdict=verdict, findings=findings,
        model=spec, data=data, settings={"epochs": epochs, "threshold": THRESHOLD, "copy_cka": COPY_CKA,
                                         "deep_depths": depths, "copy_shares": {str(d): v for d, v in shares.items()}})
