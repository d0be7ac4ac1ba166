"""Study: at which depth does a language model settle on its answer (logit and tuned lens)?"""

from __future__ import annotations

import numpy as np

from layerscope.errors import LayerscopeError
from layerscope.report.charts import line_chart

from .common import (Settings, combine, diff_interval, make_result, mean_interval, not_applicable,
                     register, threshold_rule)

CHUNKS = 6
LEVEL = 0.5


def lm_decides_verdict(first: list[float], lens: str = ""):
    """Supported when the interval over chunks of the relative depth (block / last block) at which
    top-1 agreement with the final output first reaches :data:`LEVEL` lies wholly above 2/3 (the
    last third); refuted when wholly below. Returns (verdict, estimate)."""
    est = mean_interval(first, what=f"{lens + ': ' if lens else ''}relative depth where top-1 agreement "
                                    f"with the final output first reaches {LEVEL:.0%}", unit="chunks")
    return threshold_rule(est, 2 / 3, claim="above", line="2/3 (the last third)"), est


def lens_verdict(logit_first: list[float], tuned_first: list[float]):
    """The claim read through both lenses: the logit lens's part (:func:`lm_decides_verdict`) and
    the tuned lens's (the same rule on its depths), combined; mixed when the lenses disagree,
    which is Belrose et al.'s point. Returns (verdict, logit estimate, tuned estimate).

    Example:
        >>> v, _, _ = lens_verdict([0.9, 0.93, 0.88, 0.9], [0.3, 0.35, 0.28, 0.31])
        >>> v.verdict
        'mixed'
    """
    logit, est_logit = lm_decides_verdict(logit_first, "logit lens")
    tuned, est_tuned = lm_decides_verdict(tuned_first, "tuned lens")
    return combine({"through the logit lens": logit, "through the tuned lens": tuned}), est_logit, est_tuned


def _first(values, level: float = LEVEL) -> float:
    """The relative depth (0 = embeddings, 1 = last layer) where ``values`` first reach ``level``."""
    hit = next((i for i, v in enumerate(values) if v >= level), len(values) - 1)
    return hit / (len(values) - 1)


@register("lm-decides", title="Where a language model decides",
          claim="Late layers handle task-specific reasoning and output formatting: the model's answer "
                "takes shape only in its last layers.",
          source="seeds 000/001 (glossary entry 'Layer')",
          anchor="Belrose et al. 2023 (tuned lens): through the logit lens the final top-1 token appears "
                 "late and KL to the final output stays high until the last layers; a tuned lens reads it "
                 "out much earlier, with lower KL at every layer",
          models="causal language models: smollm2, or a local Hugging Face causal LM", seeds=(0, 0), order=95)
def lm_decides(s: Settings):
    from layerscope.analyses.lens import LensReducer, lens_stack
    from layerscope.analyses.tuned_lens import train_tuned_lens
    from layerscope.data import load_dataset
    from layerscope.models import load_model
    from layerscope.sweep import sweep

    model_ref = s.model or "smollm2"
    loaded = load_model(model_ref)
    if loaded.task != "causal-lm":
        raise not_applicable("lm-decides", model_ref, "causal language models such as smollm2",
                             loaded.task or "no task")
    data_ref = s.data or "sentences"
    n_items, n_train = s.pick(30, 180), s.pick(24, 320)
    steps, epochs, tokens_per_step, max_length = s.pick(3, 120), s.pick(1, 4), 32, 48
    pool = load_dataset(data_ref, limit=n_items + n_train, seed=0)
    if len(pool) < CHUNKS * 2 + 10:
        raise LayerscopeError(f"study lm-decides needs at least {CHUNKS * 2 + 10} texts ({CHUNKS * 2} to "
                              f"measure, 10 to train the tuned lens on); {data_ref!r} gave {len(pool)}")
    n_items = min(n_items, len(pool) - 10)
    data, train = pool.subset(range(n_items)), pool.subset(range(n_items, len(pool)))
    tuned = train_tuned_lens(loaded, train, epochs=epochs, steps=steps, tokens_per_step=tokens_per_step,
                             batch_size=8, max_length=max_length, test_fraction=0.1, seed=0)
    bounds = np.linspace(0, len(data), CHUNKS + 1).astype(int)
    per = {"logit": {"agree": [], "agree5": [], "kl": []}, "tuned": {"agree": [], "agree5": [], "kl": []}}
    stack = lens_stack(loaded)
    layers = ["embeddings"] + stack.names
    for a, b in zip(bounds[:-1], bounds[1:]):   # one sweep per chunk reads both lenses
        reducers = {"logit": LensReducer(stack), "tuned": LensReducer(stack, tuned.lens.translate)}
        sweep(loaded, data.subset(range(a, b)), reducers=list(reducers.values()), batch_size=8,
              max_length=max_length)
        for kind, red in reducers.items():
            res = red.result()
            per[kind]["agree"].append(res["top1_agreement"])
            per[kind]["agree5"].append(res["top5_agreement"])
            per[kind]["kl"].append(res["kl"])
    arr = {k: {m: np.array(v) for m, v in d.items()} for k, d in per.items()}
    first = {k: [_first(row) for row in arr[k]["agree"]] for k in arr}
    first5 = {k: [_first(row) for row in arr[k]["agree5"]] for k in arr}
    verdict, est_logit, est_tuned = lens_verdict(first["logit"], first["tuned"])
    rows = []
    for i, name in enumerate(layers):
        cells = [i, name]
        for k in ("logit", "tuned"):
            ea = mean_interval(arr[k]["agree"][:, i], unit="chunks")
            cells += [f"{ea.value:.3f} [{ea.low:.3f}, {ea.high:.3f}]", f"{arr[k]['agree5'][:, i].mean():.3f}",
                      f"{arr[k]['kl'][:, i].mean():.3g}"]
        rows.append(cells)
    chart = line_chart([str(i) for i in range(len(layers))],
                       {"logit lens: top-1 = final top-1": arr["logit"]["agree"].mean(0).tolist(),
                        "logit lens: final top-1 in top 5": arr["logit"]["agree5"].mean(0).tolist(),
                        "tuned lens: top-1 = final top-1": arr["tuned"]["agree"].mean(0).tolist(),
                        "tuned lens: final top-1 in top 5": arr["tuned"]["agree5"].mean(0).tolist()},
                       y_title="share of tokens (mean over chunks)")
    inner = range(len(layers) - 1)
    lower = [i for i in inner if arr["tuned"]["kl"][:, i].mean() < arr["logit"]["kl"][:, i].mean()]
    gap = diff_interval(first["logit"], first["tuned"],
                        what="relative depth of 50% top-1 agreement, logit − tuned lens", unit="chunks")
    findings = [
        f"KL(final ‖ lens) falls from {arr['logit']['kl'][:, 0].mean():.3g} nats at {layers[0]} to "
        f"{arr['logit']['kl'][:, -2].mean():.3g} one layer before the end through the logit lens, and from "
        f"{arr['tuned']['kl'][:, 0].mean():.3g} to {arr['tuned']['kl'][:, -2].mean():.3g} through the tuned lens; "
        f"the tuned lens's KL is lower on {len(lower)} of {len(inner)} layers before the last "
        f"(Belrose et al.: lower at every layer).",
        f"The final top-1 token is in the top 5 on half the tokens from relative depth "
        f"{np.mean(first5['logit']):.2f} (logit lens) and {np.mean(first5['tuned']):.2f} (tuned lens); "
        f"top-1 from {est_logit.value:.2f} and {est_tuned.value:.2f}. {gap.text()}.",
        f"Tuned lens: {tuned.steps} Adam steps on {tuned.n_train_items} other items of {data_ref} "
        f"({tokens_per_step} sampled tokens per layer and step); on its own {tuned.n_test_items} held-out "
        f"items its mean KL over layers is {np.mean(tuned.tuned_kl[:-1]):.3g} nats against the logit lens's "
        f"{np.mean(tuned.logit_kl[:-1]):.3g}."]
    columns = ["layer", "name"] + [f"{k}: {c}" for k in ("logit", "tuned")
                                    for c in ("top-1 agreement [95%]", "top-5 contains final", "KL (nats)")]
    return make_result(
        "lm-decides",
        experiment=(f"Logit lens and tuned lens of {model_ref} ({len(layers)} layers) on {len(data)} {data_ref} "
                    f"items in {CHUNKS} chunks: each layer's residual stream decoded through the final norm and "
                    f"unembedding (the tuned lens first maps it by a per-layer affine translator trained on "
                    f"{tuned.n_train_items} other items, {tuned.steps} steps); per layer the share of real tokens "
                    f"whose top-1 token equals the model's own, the share whose top 5 holds it, and "
                    f"KL(final ‖ lens); the first layer reaching {LEVEL:.0%} top-1 agreement, as a share of the "
                    f"depth, with its interval over chunks, for each lens."),
        columns=columns, rows=rows, chart=chart, verdict=verdict, findings=findings, model=model_ref,
        data=data_ref, settings={"items": len(data), "tuned_lens_train_items": tuned.n_train_items,
                                 "tuned_lens_steps": tuned.steps, "tokens_per_step": tokens_per_step})
