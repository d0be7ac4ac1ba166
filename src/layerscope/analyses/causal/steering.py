"""Steering: add a direction to a block's output and measure what it does and what it costs.

A **steering vector** per block comes from a contrast set: ``v_l = mean(h_l | group A) -
mean(h_l | group B)`` over the real tokens of each group's texts (activation addition, Turner et
al. 2023; contrastive activation addition, Rimsky et al. 2024), or from a probe's direction
(:func:`probe_vectors`: a logistic-regression probe per block, A vs B), or any given vector. Steering adds ``alpha * v_l`` to block l's output at every position.

:func:`steer` sweeps blocks x strengths on held-out texts and measures, per (block, alpha):

- **effect**: a logistic-regression probe trained on the *last* block's mean-pooled output of
  the contrast set (A = 1) reads the steered runs: the mean P(A) over the held-out texts; the
  shift from the unsteered reading is the effect;
- **damage**: the model's own objective on the held-out texts with the vector applied
  (perplexity for causal LMs; embedding ``1 - cos`` to the unsteered model for encoders).

Where the model's tail can be re-run (causal LMs, encoders) the held-out batch is recorded
once and only the blocks after l are re-run (prefix reuse). :func:`generate` writes greedy
continuations with a vector applied (Hugging Face ``generate``, the edit through Capture), and
:func:`text_classifier` (TF-IDF + logistic regression on the contrast texts, independent of the
model) reads their sentiment.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.analyses.causal.steering import steer
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2)).eval()
    >>> a, b = torch.randint(0, 20, (8, 6)), torch.randint(20, 40, (8, 6))
    >>> res = steer(lm, a, b, torch.randint(0, 40, (4, 6)), alphas=[1.0, 4.0])
    >>> res.objective, len(res.effect), len(res.effect[0]), res.method
    ('perplexity', 2, 2, 'prefix')
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.layers import Capture, Layers
from layerscope.results import Result

from .interventions import (Intervened, Intervention, Site, apply, mean_activation, record_batch,
                            run_blocks, site_in)


def steering_vectors(model, group_a, group_b, *, layers=None, blocks: str | None = None,
                     batch_size: int = 16, max_length: int | None = 128) -> dict[str, Tensor]:
    """Difference of mean block outputs (over real tokens) between two groups, by block label.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> v = steering_vectors(net, torch.ones(4, 2), torch.zeros(4, 2))
        >>> torch.allclose(v["0"], torch.relu(net[0](torch.ones(1, 2)))[0] - torch.relu(net[0].bias))
        True
    """
    view = Layers(model, "blocks", blocks=blocks)
    sites = [site_in(b, "block") for b in view.select(layers)]
    mean_a = mean_activation(model, sites, group_a, batch_size=batch_size, max_length=max_length)
    mean_b = mean_activation(model, sites, group_b, batch_size=batch_size, max_length=max_length)
    return {k: mean_a[k] - mean_b[k] for k in mean_a}


def probe_vectors(model, group_a, group_b, *, layers=None, blocks: str | None = None,
                  batch_size: int = 16, max_length: int | None = 128, seed: int = 0,
                  C: float = 1.0) -> dict[str, Tensor]:
    """Per block, the direction of a logistic-regression probe (scikit-learn) that tells group A
    from group B on the block's output mean-pooled over real tokens, as a steering vector.

    The probe is fitted on standardised features; its direction in activation space is the
    weights divided by the features' scales, ``u`` of unit length, pointing towards A. The
    vector is ``u`` times the groups' mean separation along it, ``u · (mean_A - mean_B)``, so an
    alpha means the same amount of movement as with the difference of means (whose projection
    on ``u`` this is).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> v = probe_vectors(net, torch.randn(20, 2) + 1, torch.randn(20, 2) - 1)
        >>> sorted(v), tuple(v["0"].shape)
        (['0', '1'], (3,))
    """
    from layerscope.modes import evaluating
    from layerscope.sweep import as_model

    loaded = as_model(model)
    chosen = Layers(loaded, "blocks", blocks=blocks).select(layers)
    with evaluating(loaded):
        pooled_a, pooled_b = (_pooled_outputs(loaded, chosen, group, batch_size=batch_size,
                                              max_length=max_length) for group in (group_a, group_b))
    out = {}
    for b in chosen:
        xa, xb = pooled_a[b.name].astype(np.float64), pooled_b[b.name].astype(np.float64)
        probe, _, sd = _group_probe(xa, xb, C=C, seed=seed, what="a probe direction")
        w = probe.coef_[0] / sd
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            raise LayerscopeError(f"the probe on block {b.index} has zero weights (the groups do not "
                                  f"differ there); use the difference of means")
        u = w / norm
        sep = float(u @ (xa.mean(0) - xb.mean(0)))
        out[str(b.index)] = torch.as_tensor(u * sep, dtype=torch.float32)
    return out


@dataclass
class SteerResult(Result):
    """Per block (rows, ``layers``/``labels``) and strength (columns, ``alphas``): the probe's mean
    P(group A) on the steered held-out texts (``reading``), its shift from unsteered (``effect``)
    and the objective (``damage``; ``damage_base`` unsteered)."""

    model: str
    objective: str
    layers: list[str]
    labels: list[str]
    alphas: list[float]
    reading: list[list[float]]
    effect: list[list[float]]
    damage: list[list[float]]
    reading_base: float
    damage_base: float
    vector_norms: list[float]
    probe_accuracy: float
    n_contrast: list[int]
    n_eval: int
    method: str
    seconds: float
    samples: list[dict] | None = None  # generated continuations: layer, alpha, text, p_a (by text_classifier)
    text_classifier_accuracy: float | None = None
    vector: str = "mean-difference"  # how the vectors were made: mean-difference, probe or given

    def best(self, max_damage: float = 1.2) -> tuple[str, float, float, float]:
        """(block label, alpha, effect, damage) with the largest |effect| among the settings whose
        damage stays within ``max_damage`` x the unsteered value (perplexity) or +0.2 (1 - cos)."""
        eff = np.abs(np.asarray(self.effect, dtype=float))
        dmg = np.asarray(self.damage, dtype=float)
        ok = dmg <= (self.damage_base * max_damage if self.objective == "perplexity"
                     else self.damage_base + (max_damage - 1.0))
        masked = np.where(ok, eff, -np.inf)
        if not np.isfinite(masked).any():
            masked = eff
        i, j = np.unravel_index(int(np.nanargmax(masked)), eff.shape)
        return self.labels[i], self.alphas[j], float(self.effect[i][j]), float(self.damage[i][j])

    def summary(self) -> str:
        label, alpha, eff, dmg = self.best()
        return (f"steering ({self.vector} vectors) {len(self.labels)} blocks x {len(self.alphas)} "
                f"strengths: block {label} at "
                f"alpha {alpha:g} moves the last-layer probe's P(A) from {self.reading_base:.2f} by "
                f"{eff:+.2f}, {self.objective} {self.damage_base:.4g} -> {dmg:.4g} (probe accuracy "
                f"{self.probe_accuracy:.2f} on the contrast set; {self.seconds:.1f}s, {self.method})")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        else:
            fig, axes = ax.figure, [ax, ax.twinx()]
        x = np.arange(len(self.labels))
        for j, alpha in enumerate(self.alphas):
            axes[0].plot(x, [row[j] for row in self.effect], marker="o", ms=3, label=f"alpha {alpha:g}")
            axes[1].plot(x, [row[j] for row in self.damage], marker="o", ms=3, label=f"alpha {alpha:g}")
        axes[1].axhline(self.damage_base, color="k", lw=0.8, ls="--", label="unsteered")
        axes[0].set_ylabel("effect: shift of P(A)")
        axes[1].set_ylabel(self.objective)
        if self.objective == "perplexity":
            axes[1].set_yscale("log")
        for a in axes:
            a.set_xticks(x[:: max(1, len(x) // 15)])
            a.set_xticklabels(self.labels[:: max(1, len(x) // 15)], fontsize=8)
            a.set_xlabel("block steered")
        axes[0].legend(fontsize=7)
        axes[0].set_title("effect", fontsize=10)
        axes[1].set_title("damage", fontsize=10)
        fig.tight_layout()
        return fig


def _pooled(cap_out: Tensor, enc) -> Tensor:
    from layerscope.objectives import real_mask

    if cap_out.dim() < 3:
        return cap_out.reshape(len(cap_out), -1).float()
    m = real_mask(enc, cap_out.shape[:2]).unsqueeze(-1).to(cap_out.dtype)
    return ((cap_out * m).sum(1) / m.sum(1).clamp_min(1)).float()


def _group_probe(xa: np.ndarray, xb: np.ndarray, *, C: float, seed: int, what: str):
    """A logistic regression telling group A (1) from group B (0) on standardised rows: returns
    ``(probe, mean, std)``; ``what`` names the caller in the error for a group under 2 items."""
    from sklearn.linear_model import LogisticRegression

    if len(xa) < 2 or len(xb) < 2:
        raise LayerscopeError(f"{what} needs at least 2 items per group; got {len(xa)} and {len(xb)}")
    x = np.concatenate([xa, xb])
    y = np.r_[np.ones(len(xa)), np.zeros(len(xb))]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    return probe, mu, sd


def _pooled_outputs(loaded, chosen, data, *, batch_size, max_length) -> dict[str, np.ndarray]:
    """The outputs of the ``chosen`` layers on ``data``, mean-pooled over real tokens (one row
    per item, float32), by layer name; the forward stops after the last of them."""
    from layerscope.sweep import encoded_batches

    rows: dict[str, list[Tensor]] = {b.name: [] for b in chosen}
    with torch.no_grad():
        for enc, _ in encoded_batches(loaded, data, batch_size=batch_size, max_length=max_length):
            with Capture(loaded.module, chosen, stop_early=True) as cap:
                cap.call(loaded, enc)
            for b in chosen:
                rows[b.name].append(_pooled(cap.outputs[b.name], enc))
    return {name: torch.cat(r).numpy() for name, r in rows.items()}


def steer(model, group_a, group_b, evaluate, *, layers=None, alphas: Sequence[float] = (2.0, 4.0, 8.0),
          vectors: dict[str, Tensor] | None = None, blocks: str | None = None, batch_size: int = 16,
          max_length: int | None = 128, method: str = "auto", seed: int = 0) -> SteerResult:
    """Sweep steering of each chosen block x ``alphas`` on the held-out texts ``evaluate``.

    ``group_a``/``group_b``: the contrast set (texts or token-id tensors); ``vectors`` (by block
    label) replaces the difference of means, e.g. with a probe's direction.
    """
    from layerscope.modes import evaluating
    from layerscope.objectives import make_objective
    from layerscope.replay import build_stack, main_output, prepare
    from layerscope.sweep import as_model, encoded_batches

    alphas = [float(a) for a in alphas]
    if not alphas:
        raise LayerscopeError("give at least one steering strength (alpha)")
    if method not in ("auto", "prefix", "full"):
        raise LayerscopeError(f"unknown method {method!r}; use auto, prefix or full")
    loaded = as_model(model)
    view = Layers(loaded, "blocks", blocks=blocks)
    chosen = view.select(layers)
    all_blocks = list(view)
    last = all_blocks[-1]
    stack = build_stack(loaded, blocks)
    started = time.perf_counter()
    kind = "given" if vectors is not None else "mean-difference"
    with evaluating(loaded):
        if vectors is None:
            vectors = steering_vectors(loaded, group_a, group_b, layers=[b.index for b in chosen],
                                       blocks=blocks, batch_size=batch_size, max_length=max_length)
        missing = [str(b.index) for b in chosen if str(b.index) not in vectors]
        if missing:
            raise LayerscopeError(f"no steering vector for block {missing[0]}; give one per chosen block")
        xa, xb = (_pooled_outputs(loaded, [last], group, batch_size=batch_size,
                                  max_length=max_length)[last.name] for group in (group_a, group_b))
        probe, mu, sd = _group_probe(xa, xb, C=1.0, seed=seed, what="the contrast set")
        accuracy = float(probe.score((np.concatenate([xa, xb]) - mu) / sd,
                                     np.r_[np.ones(len(xa)), np.zeros(len(xb))]))

        def read(h_last, enc) -> float:
            z = (_pooled(h_last, enc).numpy() - mu) / sd
            return float(probe.predict_proba(z)[:, 1].sum())

        sites = [site_in(b, "block") for b in chosen]
        n_eval = 0
        base_read = 0.0
        reads = np.zeros((len(sites), len(alphas)))
        objective = None
        used = method
        with torch.no_grad():
            for enc, labels in encoded_batches(loaded, evaluate, batch_size=batch_size,
                                               max_length=max_length):
                enc = prepare(stack, enc)
                rec, _, prefix = record_batch(stack, enc, method)
                calls, outs = rec.calls, rec.outs
                if objective is None:
                    objective = make_objective(stack.task, None)
                objective.begin(enc, main_output(rec.output, stack.task), None)
                used = "prefix" if prefix else "full"
                base_read += read(outs[-1], enc)
                n_eval += enc.size
                for i, site in enumerate(sites):
                    v = vectors[site.label]
                    for j, alpha in enumerate(alphas):
                        iv = Intervention(site, "add", alpha * v)
                        if prefix:
                            h = run_blocks(loaded.module, all_blocks, calls, site.index + 1,
                                           apply(outs[site.index], [iv]))
                            objective.add_final((i, j), h, stack)
                        else:
                            with Intervened(loaded.module, [iv], record=[site_in(last, "block")]) as ivd:
                                out = ivd.call(loaded, enc)
                            h = ivd.outputs[last.name]
                            objective.add((i, j), main_output(out, stack.task))
                        reads[i, j] += read(h, enc)
    if objective is None:
        raise LayerscopeError("no held-out texts to steer; pass at least one item")
    reading = reads / n_eval
    base = base_read / n_eval
    damage = [[objective.value((i, j))["metric"] for j in range(len(alphas))] for i in range(len(sites))]
    return SteerResult(
        model=loaded.ref, objective=objective.name, layers=[b.name for b in chosen],
        labels=[s.label for s in sites], alphas=alphas, reading=reading.tolist(),
        effect=(reading - base).tolist(), damage=damage, reading_base=base,
        damage_base=objective.value(())["metric"],
        vector_norms=[float(vectors[s.label].norm()) for s in sites], probe_accuracy=accuracy,
        n_contrast=[len(xa), len(xb)], n_eval=n_eval, method=used,
        seconds=time.perf_counter() - started, vector=kind)


def text_classifier(group_a: Sequence[str], group_b: Sequence[str], *, seed: int = 0):
    """A bag-of-words classifier of group A (1) vs group B (0), independent of the steered model:
    scikit-learn's TF-IDF (words and word pairs) and logistic regression, fitted on the contrast
    texts. It reads the sentiment (or whatever tells the groups apart) of generated text; its
    5-fold cross-validated accuracy on the groups says how far to trust it.

    Returns ``(pipeline, accuracy)``; ``pipeline.predict_proba([text])[0, 1]`` is P(A).

    Example:
        >>> a = ["a great film", "wonderful and great", "great fun", "a wonderful story", "great acting"]
        >>> b = ["an awful film", "boring and awful", "awful fun", "a boring story", "awful acting"]
        >>> clf, acc = text_classifier(a, b)
        >>> float(clf.predict_proba(["great"])[0, 1]) > 0.5 > float(clf.predict_proba(["boring"])[0, 1])
        True
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    texts = [*group_a, *group_b]
    if len(group_a) < 2 or len(group_b) < 2 or not all(isinstance(t, str) for t in texts):
        raise LayerscopeError("a text classifier needs at least 2 texts per group")
    y = [1] * len(group_a) + [0] * len(group_b)

    def make():
        return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                             LogisticRegression(C=4.0, max_iter=2000, random_state=seed))

    folds = min(5, len(group_a), len(group_b))  # at least 2: each group has 2 texts or more
    accuracy = float(np.mean(cross_val_score(make(), texts, y, cv=folds)))
    return make().fit(texts, y), accuracy


def generate(model, prompt: str, *, layer=None, vector: Tensor | None = None, alpha: float = 0.0,
             max_new_tokens: int = 20, blocks: str | None = None) -> str:
    """The greedy continuation of ``prompt`` with ``alpha * vector`` added to block ``layer``'s
    output at every position (no vector or alpha 0: the plain continuation)."""
    from layerscope.modes import evaluating
    from layerscope.sweep import as_model

    loaded = as_model(model)
    gen = getattr(loaded.module, "generate", None)
    if not callable(gen) or loaded.tokenizer is None:
        raise LayerscopeError(f"model {loaded.ref!r} cannot generate text (no Hugging Face generate "
                              f"or no tokenizer); steer it without --generate")
    enc = loaded.encode([prompt])
    ivs = []
    if vector is not None and alpha and layer is not None:
        ivs = [Intervention(Site.of(loaded, layer, blocks=blocks), "add", alpha * vector)]
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None \
        else loaded.tokenizer.eos_token_id
    with evaluating(loaded), torch.no_grad(), Intervened(loaded.module, ivs) as iv:
        out = iv.call(gen, **enc.kwargs, max_new_tokens=max_new_tokens, do_sample=False,
                      pad_token_id=pad)
    return loaded.tokenizer.decode(out[0, enc.kwargs["input_ids"].shape[1]:], skip_special_tokens=True)


__all__ = ["SteerResult", "steer", "steering_vectors", "probe_vectors", "text_classifier", "generate"]
