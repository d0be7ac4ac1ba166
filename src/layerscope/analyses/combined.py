"""Several analyses from ONE sweep: each analysis gives its reducers, the sweep feeds them all.

Every analysis module (probe, similarity, pictures) exposes ``reducers(...)`` (what it needs
from a pass over the data) and ``from_reducers(...)`` (its result from those reducers), so
:func:`analyze` — and the report — run the model once for all of them.

Example:
    >>> import torch
    >>> from layerscope.data import Dataset
    >>> from layerscope.analyses.combined import analyze
    >>> X = torch.randn(120, 4)
    >>> ds = Dataset("toy", X, (X[:, 0] > 0).long(), "tensor", "classification")
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> out = analyze(net, ds, probe="labels", similarity=True, embed="pca")
    >>> sorted(out.results), out.n_batches
    (['embed', 'probe', 'similarity'], 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layerscope.errors import LayerscopeError
from layerscope.results import Result


@dataclass
class Analyses(Result):
    """The results of one shared pass, by analysis name, and what the pass cost."""

    results: dict = field(default_factory=dict)
    n_items: int = 0
    n_batches: int = 0
    seconds: float = 0.0
    layers: list = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{k}: {v.summary()}" for k, v in self.results.items()]
        return f"one pass over {self.n_items} items in {self.seconds:.1f} s; " + "; ".join(parts)

    def plot(self, ax=None):
        first = next(iter(self.results.values()), None)
        if first is None:
            raise LayerscopeError("no analysis was asked for; nothing to plot")
        return first.plot(ax)


def analyze(model, data, *, probe: str | None = None, similarity: bool | str = False,
            embed: str | None = None, layers=None, embed_layers=None, granularity: str = "blocks",
            view: str = "mean", limit: int | None = None, sample: int = 1000, seed: int = 0,
            batch_size: int = 32, max_length: int | None = 128, progress: bool = False,
            lens: bool = False, importance: bool = False) -> Analyses:
    """Run the chosen analyses in one sweep of ``model`` over ``data``.

    ``probe``: None, "labels" (the data's own labels) or a probing task ("length",
    "bigram-shift", "sentiment", "sentiment-score": the sweep then runs over the task's items).
    ``similarity``: False, True / "linear", or "rbf". ``embed``: None, "pca" or "tsne" (of
    ``embed_layers``, default all swept layers). ``lens``: the logit lens of a causal LM, its
    statistics gathered in the same sweep (:class:`~layerscope.analyses.lens.LensReducer`).
    ``importance``: layer removal, which re-runs blocks and so takes passes of its own (through
    the same engine), reported with the rest.
    """
    from layerscope.analyses import pictures as pic
    from layerscope.analyses import probe as prb
    from layerscope.analyses import similarity as sim
    from layerscope.sweep import as_model, sweep

    if not probe and not similarity and not embed and not lens and not importance:
        raise LayerscopeError("choose at least one analysis: probe=..., similarity=True, "
                              "embed='pca', lens=True or importance=True")
    model = as_model(model)
    data = prb.prepare_data(data, probe, limit=limit, seed=seed) if probe else data
    if not probe and (isinstance(data, str) or limit is not None):
        data = prb.prepare_data(data, None, limit=limit, seed=seed)
    parts: dict[str, list] = {}
    if probe:
        parts["probe"] = prb.reducers(data, view=view, seed=seed)
    if similarity:
        kernel = "linear" if similarity is True else str(similarity)
        parts["similarity"] = sim.reducers(kernel=kernel, view=view, sample=sample, seed=seed)
    if embed:
        if embed not in pic.METHODS:
            raise LayerscopeError(f"unknown embed method {embed!r}; use pca or tsne")
        parts["embed"] = pic.reducers(layers=_names(model, embed_layers, granularity), sample=sample,
                                      view=view, seed=seed)
    stack = None
    if lens:
        from layerscope.analyses.lens import LensReducer, lens_stack

        stack = lens_stack(model)
        parts["lens"] = [LensReducer(stack)]
    if lens and granularity != "blocks":
        raise LayerscopeError("the lens reads blocks; run it with granularity='blocks'")
    all_reds = [r for reds in parts.values() for r in reds]
    results = {}
    run = None
    if all_reds:
        run = sweep(model, data, reducers=all_reds, layers=layers, granularity=granularity,
                    batch_size=batch_size, max_length=max_length, progress=progress)
    if lens:
        results["lens"] = _lens_result(stack, parts["lens"][0], run.seconds)
    if importance:
        from layerscope.analyses.importance import layer_importance

        results["importance"] = layer_importance(model, data, batch_size=batch_size,
                                                 max_length=max_length, progress=progress)
    if run is None:
        imp = results["importance"]
        return Analyses(results, imp.n_items, 0, imp.seconds, imp.layers)
    if probe:
        results["probe"] = prb.from_reducers(parts["probe"], data=data, task_name=probe)
    if similarity:
        results["similarity"] = sim.from_reducers(parts["similarity"], model_name=sim._name(model))
    if embed:
        results["embed"] = pic.from_reducers(parts["embed"], method=embed, seed=seed)
    return Analyses(results, run.n_items, run.n_batches, run.seconds, run.layers)


def _lens_result(stack, red, seconds: float):
    from layerscope.analyses.lens import LensResult

    values = red.result()
    return LensResult(model=stack.loaded.ref, layers=["embeddings"] + stack.names,
                      accuracy=values["accuracy"], loss=values["loss"], kl=values["kl"],
                      top1_agreement=values["top1_agreement"],
                      top5_agreement=values["top5_agreement"], n_items=red.stats.n_items,
                      n_tokens=red.stats.n_tokens, prompt=None, prompt_tokens=None, top_k=0,
                      top_tokens=None, top_probs=None, seconds=seconds)


def _names(model, spec, granularity: str) -> list[str] | None:
    """Layer names for ``spec`` (None: every swept layer)."""
    if spec is None:
        return None
    from layerscope.layers import Layers
    from layerscope.sweep import as_model

    return [layer.name for layer in Layers(as_model(model), granularity=granularity).select(spec)]
