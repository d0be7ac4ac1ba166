"""Study: at which depth does a language model settle on its answer (logit lens)?"""

from __future__ import annotations

import numpy as np

from layerscope.errors import LayerscopeError
from layerscope.report.charts import line_chart

from .common import Settings, make_result, mean_interval, not_applicable, register, threshold_rule

CHUNKS = 6
LEVEL = 0.5


def lm_decides_verdict(first: list[float]):
    """Supported when the interval over chunks of the relative depth (block / last block) at which
    top-1 agreement with the final output first reaches :data:`LEVEL` lies wholly above 2/3 (the
    last third); refuted when wholly below. Returns (verdict, estimate)."""
    est = mean_interval(first, what=f"relative depth where top-1 agreement with the final output first reaches {LEVEL:.0%}",
                        unit="chunks")
    return threshold_rule(est, 2 / 3, claim="above", line="2/3 (the last third)"), est


@register("lm-decides", title="Where a language model decides",
          claim="Late layers handle task-specific reasoning and output formatting: the model's answer "
                "takes shape only in its last layers.",
          source="seeds 000/001 (glossary entry 'Layer')",
          anchor="Belrose et al. 2023 (tuned lens): through the logit lens the final top-1 token appears "
                 "late and KL to the final output stays high until the last layers; a tuned lens reads it "
                 "out much earlier",
          models="causal language models: smollm2, or a local Hugging Face causal LM", seeds=(0, 0), order=95)
def lm_decides(s: Settings):
    from layerscope.analyses.lens import logit_lens
    from layerscope.data import load_dataset
    from layerscope.models import load_model

    model_ref = s.model or "smollm2"
    loaded = load_model(model_ref)
    if loaded.task != "causal-lm":
        raise not_applicable("lm-decides", model_ref, "causal language models such as smollm2",
                             loaded.task or "no task")
    data_ref = s.data or "sentences"
    n_items = s.pick(36, 240)
    data = load_dataset(data_ref, limit=n_items, seed=0)
    if len(data) < CHUNKS * 2:
        raise LayerscopeError(f"study lm-decides needs at least {CHUNKS * 2} texts; {data_ref!r} gave {len(data)}")
    bounds = np.linspace(0, len(data), CHUNKS + 1).astype(int)
    agree, kl, first = [], [], []
    layers = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        res = logit_lens(loaded, data.subset(range(a, b)), batch_size=8, max_length=48)
        layers = res.layers
        agree.append(res.top1_agreement)
        kl.append(res.kl)
        hit = next((i for i, v in enumerate(res.top1_agreement) if v >= LEVEL), len(layers) - 1)
        first.append(hit / (len(layers) - 1))
    agree, kl = np.array(agree), np.array(kl)
    verdict, est = lm_decides_verdict(first)
    rows = []
    for i, name in enumerate(layers):
        ea = mean_interval(agree[:, i], unit="chunks")
        rows.append([i, name, f"{ea.value:.3f} [{ea.low:.3f}, {ea.high:.3f}]", f"{kl[:, i].mean():.3g}"])
    chart = line_chart([str(i) for i in range(len(layers))],
                       {"top-1 agreement with the final output": agree.mean(0).tolist()},
                       y_title="share of tokens (mean over chunks)")
    findings = [f"KL(final ‖ logit lens) falls from {kl[:, 0].mean():.3g} nats at {layers[0]} to "
                f"{kl[:, -2].mean():.3g} before the last layer; the tuned lens (Belrose et al.) is not "
                f"trained in this study (see `layerscope lens --tuned`)."]
    return make_result(
        "lm-decides",
        experiment=(f"Logit lens of {model_ref} ({len(layers)} layers) on {len(data)} {data_ref} items in "
                    f"{CHUNKS} chunks: each layer's residual stream decoded through the final norm and "
                    f"unembedding; per layer the share of real tokens whose top-1 token equals the "
                    f"model's own, and KL(final ‖ lens); the first layer reaching {LEVEL:.0%} agreement, "
                    f"as a share of the depth, with its interval over chunks."),
        columns=["layer", "name", "top-1 agreement [95%]", "KL (nats)"], rows=rows, chart=chart,
        verdict=verdict, findings=findings, model=model_ref, data=data_ref, settings={"items": len(data)})
