"""How much each block tolerates pruning: quality against sparsity, one block pruned at a time.

For every block of the :class:`~layerscope.layers.Layers` view and every sparsity, the block's
Linear/Conv weights are magnitude-pruned (per layer, ``torch.nn.utils.prune.l1_unstructured``)
in a single working copy, the quality is measured on held-out data against the original's
outputs (computed once), and the weights are restored before the next trial. The result says
where pruning is cheap: :meth:`SensitivityResult.suggest` gives, per block, the highest sparsity
whose quality loss stays within a tolerance.

Example:
    >>> import torch
    >>> from layerscope.surgery.sensitivity import prune_sensitivity
    >>> res = prune_sensitivity("mlp:depth=2,width=64", torch.randn(32, 64), sparsities=[0.5, 0.9])
    >>> res.layers, len(res.values[0])
    (['blocks.0', 'blocks.1'], 2)
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils import prune as torch_prune

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.results import Result

DEFAULT_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class SensitivityResult(Result):
    """``values[i][j]``: quality with block ``layers[i]`` pruned to ``sparsities[j]``."""

    model: str
    layers: list[str]
    sparsities: list[float]
    metric: str
    baseline: float
    values: list[list[float]]
    n_items: int

    def loss(self) -> list[list[float]]:
        """Relative quality loss per block and sparsity (positive = worse)."""
        b = self.baseline
        if self.metric == "perplexity":
            return [[v / b - 1 for v in row] for row in self.values]
        return [[(b - v) / abs(b) if b else b - v for v in row] for row in self.values]

    def suggest(self, tolerance: float = 0.01) -> dict[str, float]:
        """Per block, the highest sparsity whose relative quality loss is at most ``tolerance``."""
        out = {}
        for name, row in zip(self.layers, self.loss()):
            ok = [s for s, l in zip(self.sparsities, row) if l <= tolerance]
            out[name] = max(ok) if ok else 0.0
        return out

    def summary(self) -> str:
        last = [row[-1] for row in self.loss()]
        worst, best = int(np.argmax(last)), int(np.argmin(last))
        s = self.sparsities[-1]
        return (f"{self.metric} intact {self.baseline:.4g}; at sparsity {s:g} pruning "
                f"{self.layers[worst]} hurts most ({self.values[worst][-1]:.4g}) and "
                f"{self.layers[best]} least ({self.values[best][-1]:.4g}); blocks within 1%: "
                f"{sum(1 for v in self.suggest(0.01).values() if v >= s)} of {len(self.layers)} "
                f"at {s:g}")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4)) if ax is None else (ax.figure, ax)
        cmap = plt.get_cmap("viridis")
        for i, (name, row) in enumerate(zip(self.layers, self.values)):
            ax.plot(self.sparsities, row, marker=".", color=cmap(i / max(len(self.layers) - 1, 1)),
                    label=name if len(self.layers) <= 12 else None)
        ax.axhline(self.baseline, color="grey", ls="--", label="intact")
        ax.set(xlabel="sparsity of one block", ylabel=self.metric,
               title="pruning sensitivity per block")
        if self.metric == "perplexity":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def prune_sensitivity(model, data, *, sparsities=DEFAULT_SPARSITIES, layers=None,
                      blocks: str | None = None, batch_size: int = 16,
                      max_length: int | None = 128, limit: int | None = None) -> SensitivityResult:
    """Quality of the model with each block alone magnitude-pruned to each sparsity."""
    from layerscope.layers import Layers
    from layerscope.sweep import as_model

    from .prune import check_sparsity

    loaded = as_model(model)
    sparsities = [check_sparsity(s) for s in sparsities]
    if not sparsities:
        raise LayerscopeError("give at least one sparsity, e.g. 0.5")
    view = Layers(loaded, granularity="blocks", blocks=blocks)
    chosen = view.select(layers) if layers is not None else list(view)
    work = copy.deepcopy(loaded.module)
    working = dataclasses.replace(loaded, module=work)
    with evaluating(loaded, working):
        return _sensitivity(loaded, working, chosen, sparsities, data, batch_size=batch_size,
                            max_length=max_length, limit=limit)


def _sensitivity(loaded, working, chosen, sparsities, data, *, batch_size, max_length,
                 limit) -> SensitivityResult:
    from layerscope.sweep import encoded_batches as iter_batches

    from layerscope.objectives import Quality, quality_task
    from layerscope.replay import main_output
    from .prune import prunable

    work = working.module
    task = quality_task(loaded)
    batches = list(iter_batches(loaded, data, batch_size=batch_size, max_length=max_length,
                                limit=limit))
    if not batches:
        raise LayerscopeError("the data gave no items; pass at least one item")
    with torch.inference_mode():
        reference = [main_output(loaded(enc), task) for enc, _ in batches]

    def score() -> tuple[float, float, int, str]:
        with_labels = batches[0][1] is not None and task == "classification"
        tracker = Quality(task, with_labels)
        with torch.inference_mode():
            for (enc, labels), ref in zip(batches, reference):
                tracker.add(enc, labels, ref, main_output(working(enc), task))
        b, a = tracker.values()
        return b, a, tracker.count, tracker.metric

    baseline, _, n, metric = score()
    values = []
    for layer in chosen:
        names, _ = prunable(work, [layer.name])
        if not names:
            raise LayerscopeError(f"block {layer.name!r} has no Linear/Conv weights to prune")
        saved = {n_: work.get_submodule(n_).weight.detach().clone() for n_ in names}
        row = []
        for s in sparsities:
            for n_ in names:
                sub = work.get_submodule(n_)
                torch_prune.l1_unstructured(sub, "weight", amount=s)
                torch_prune.remove(sub, "weight")
            row.append(score()[1])
            with torch.no_grad():
                for n_ in names:
                    work.get_submodule(n_).weight.copy_(saved[n_])
        values.append(row)
    return SensitivityResult(model=loaded.ref, layers=[l.name for l in chosen],
                             sparsities=sparsities, metric=metric, baseline=baseline,
                             values=values, n_items=n)


__all__ = ["prune_sensitivity", "SensitivityResult", "DEFAULT_SPARSITIES"]
