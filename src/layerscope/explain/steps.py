"""The pieces of an explanation: one :class:`Step` per operation, and the :class:`ExplainResult`.

A step records what was computed (its name and formula), the shape of the result, a few of its
numbers, and — when the result is small — every number. The result collects the steps of one
layer with its parameter count, a sentence on how many layers it holds and why, and (for real
models) the largest difference between the step-by-step result and the layer's own forward.

Example:
    >>> import torch
    >>> from layerscope.explain.steps import ExplainResult, step
    >>> s = step("x", "input", torch.tensor([[1.0, -2.0]]))
    >>> s.shape, s.numbers, s.values
    ([1, 2], [1.0, -2.0], [[1.0, -2.0]])
    >>> r = ExplainResult(title="demo", layer_kind="ffn", layer="ffn", steps=[s], params=0)
    >>> r.summary()
    'demo: 1 steps, 0 parameters, output 1x2'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from layerscope.results import Result

FULL_LIMIT = 256   # results with at most this many numbers keep all of them
PREVIEW = 6        # how many numbers a step shows otherwise


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().to("cpu").double().numpy()
    return np.asarray(value, dtype=np.float64)


@dataclass
class Step:
    """One operation: name, formula, shape of its result, a few numbers, all numbers if small."""

    name: str
    formula: str
    shape: list[int]
    numbers: list[float]               # the first few values of the first row (token / item)
    values: list | None = None         # every value when there are at most FULL_LIMIT of them
    rms: float = 0.0                   # root mean square of the whole result
    note: str = ""


def step(name: str, formula: str, value, note: str = "", full_limit: int = FULL_LIMIT) -> Step:
    """A :class:`Step` from a tensor or array: its shape, first numbers, and all if small."""
    arr = _array(value)
    flat_first = arr.reshape(-1, arr.shape[-1])[0] if arr.ndim >= 1 and arr.size else arr.reshape(-1)
    numbers = [float(v) for v in flat_first[:PREVIEW]]
    values = arr.tolist() if arr.size <= full_limit else None
    rms = float(np.sqrt(np.mean(arr ** 2))) if arr.size else 0.0
    return Step(name, formula, list(arr.shape), numbers, values, rms, note)


@dataclass
class ExplainResult(Result):
    """One layer's computation, step by step, on concrete numbers.

    ``check`` is the max absolute difference between the step-by-step output and the layer's own
    forward output (None where there is no module to compare with, as for an explain file).
    ``tensors`` keeps the full intermediate tensors for Python users; it is not serialised.
    """

    title: str
    layer_kind: str                    # "ffn" | "transformer-block" | "mlp-layer" | "cnn-layer" | ...
    layer: str                         # the layer's name (module path), or "ffn"
    steps: list[Step]
    params: int
    layers_note: str = ""              # how many layers this holds and why
    check: float | None = None
    inputs: str = ""                   # what went in (the text, the file, the example input)
    head: int | None = None
    tokens: list[str] | None = None    # the input tokens of a text model (rows of the steps)
    tensors: dict = field(default_factory=dict, metadata={"serialize": False}, repr=False)
    parameters: dict = field(default_factory=dict)   # small weight matrices by name (W1, b1, ...)
    notes: list = field(default_factory=list)        # what the numbers show that is worth saying
    compare: "ExplainResult | None" = None           # the same layer on another input, to compare

    def step(self, name: str) -> Step:
        """The step called ``name``."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in self.steps)}")

    def summary(self) -> str:
        text = f"{self.title}: {len(self.steps)} steps, {self.params:,} parameters"
        if self.steps:
            text += f", output {'x'.join(map(str, self.steps[-1].shape))}"
        if self.check is not None:
            text += (f"; the step-by-step output differs from the layer's own forward output by at "
                     f"most {self.check:.2e}")
        return text

    def plot(self, ax=None):
        """Bar chart of each step's root-mean-square value (how big the numbers are at each step)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(self.steps)), 3.5))
        else:
            fig = ax.figure
        names = [s.name for s in self.steps]
        ax.bar(range(len(names)), [s.rms for s in self.steps], color="#4477aa")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("RMS of the values")
        ax.set_title(self.title)
        fig.tight_layout()
        return fig


__all__ = ["Step", "ExplainResult", "step", "FULL_LIMIT", "PREVIEW"]
