"""Before and after a surgery: parameters, file size, latency and quality, in one result.

* parameters: unique parameters (shared ones once); int8 weights of dynamically quantized
  linears are counted too; ``nonzero`` counts the weights that are not exactly zero (pruning);
* file size: the bytes of the saved folder (the original saved the same way, for the "before");
* latency: median milliseconds of one forward on the same batch, the two models run interleaved
  (A B A B ...) after a warm-up, with the ratio's spread over the pairs;
* quality on held-out data: perplexity (causal LMs, real tokens only), accuracy (classifiers with
  labels; else agreement with the original's predictions), cosine similarity of the mean-pooled
  sentence embedding to the original's (encoders such as MiniLM), or cosine similarity of the
  flattened outputs (anything else).

Example:
    >>> import torch
    >>> from layerscope.surgery import drop_blocks
    >>> from layerscope.surgery.measure import measure
    >>> from layerscope.models import load_model
    >>> mlp = load_model("mlp:depth=3,width=64")
    >>> res = measure(mlp, drop_blocks(mlp, "1").loaded, torch.randn(16, 64), operation="drop",
    ...               repeats=3)
    >>> res.params_after < res.params_before, res.quality_metric
    (True, 'agreement')
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.objectives import Quality, quality_task
from layerscope.replay import main_output
from layerscope.results import Result


@dataclass
class SurgeryResult(Result):
    """What a surgery cost and gained; ``*_before`` is the input model, ``*_after`` the copy."""

    operation: str
    model: str
    output: str | None
    changes: dict
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    bytes_before: int | None
    bytes_after: int | None
    latency_ms_before: float
    latency_ms_after: float
    latency_ratio_iqr: list[float]
    quality_metric: str
    quality_before: float
    quality_after: float
    n_items: int
    repeats: int
    threads: int = field(default_factory=torch.get_num_threads)

    @property
    def speedup(self) -> float:
        return self.latency_ms_before / self.latency_ms_after if self.latency_ms_after else float("nan")

    def summary(self) -> str:
        size = ""
        if self.bytes_before and self.bytes_after:
            size = (f", file {self.bytes_before / 2**20:.1f} -> {self.bytes_after / 2**20:.1f} MiB "
                    f"({100 * (self.bytes_after / self.bytes_before - 1):+.0f}%)")
        nz = ""
        dense_before = self.nonzero_before / max(self.params_before, 1)
        if self.nonzero_after / max(self.params_after, 1) < dense_before - 0.005:
            nz = f" ({self.nonzero_after / max(self.params_after, 1):.0%} nonzero)"
        big = self.params_before >= 1e5
        return (f"{self.operation} {self.model}: params {_count(self.params_before, big)} -> "
                f"{_count(self.params_after, big)}{nz}{size}, latency {self.latency_ms_before:.3g} -> "
                f"{self.latency_ms_after:.3g} ms (x{self.speedup:.2f} faster), "
                f"{self.quality_metric} {self.quality_before:.4g} -> {self.quality_after:.4g} "
                f"on {self.n_items} items")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [("parameters", self.params_before, self.params_after),
                ("latency (ms)", self.latency_ms_before, self.latency_ms_after),
                (self.quality_metric, self.quality_before, self.quality_after)]
        if self.bytes_before and self.bytes_after:
            rows.insert(1, ("file size (MiB)", self.bytes_before / 2**20, self.bytes_after / 2**20))
        fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2))
        for axis, (label, a, b) in zip(axes, rows):
            axis.bar(["before", "after"], [a, b], color=["#888888", "#3b7dd8"])
            axis.set_title(label)
        fig.suptitle(f"{self.operation}: {self.model}")
        fig.tight_layout()
        return fig


def _count(n: int, millions: bool) -> str:
    return f"{n / 1e6:.3g}M" if millions else str(n)


# --- counts ------------------------------------------------------------------------------------


def _quantized_weights(module: nn.Module) -> list[Tensor]:
    found = []
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if callable(weight) and type(sub).__module__.startswith("torch.ao.nn.quantized"):
            w = weight()
            found.append(w.dequantize() if w.is_quantized else w)
            bias = sub.bias() if callable(getattr(sub, "bias", None)) else None
            if bias is not None:
                found.append(bias)
    return found


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters): shared tensors once; quantized linear weights included."""
    tensors = list(module.parameters()) + _quantized_weights(module)
    total = sum(t.numel() for t in tensors)
    nonzero = sum(int(torch.count_nonzero(t.detach())) for t in tensors)
    return total, nonzero


# --- latency -----------------------------------------------------------------------------------


def interleaved_latency(a: nn.Module, b: nn.Module, call_a, call_b, *, repeats: int = 10,
                        warmup: int = 2) -> tuple[float, float, list[float]]:
    """Median ms of ``call_a()`` and ``call_b()`` run A B A B ...; and the B/A ratio's quartiles."""
    if repeats < 1:
        raise LayerscopeError(f"repeats must be at least 1; got {repeats}")
    times_a, times_b = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            call_a()
            call_b()
        for _ in range(repeats):
            for call, times in ((call_a, times_a), (call_b, times_b)):
                start = time.perf_counter()
                call()
                times.append(1000 * (time.perf_counter() - start))
    ratios = [tb / ta for ta, tb in zip(times_a, times_b) if ta > 0]
    q = np.percentile(ratios, [25, 75]).tolist() if ratios else [float("nan")] * 2
    return statistics.median(times_a), statistics.median(times_b), q


# --- quality -----------------------------------------------------------------------------------


def quality(before, after, data, *, batch_size: int = 8, max_length: int | None = 128,
            limit: int | None = None) -> tuple[str, float, float, int, Any]:
    """(metric, before, after, n_items, first batch) of two models on the same held-out data."""
    from layerscope.sweep import encoded_batches as iter_batches

    task = quality_task(before)
    first = None
    tracker = None
    with evaluating(before, after), torch.inference_mode():
        for enc, labels in iter_batches(before, data, batch_size=batch_size,
                                        max_length=max_length, limit=limit):
            if tracker is None:
                tracker = Quality(task, labels is not None and task == "classification")
                first = enc
            tracker.add(enc, labels, main_output(before(enc), task), main_output(after(enc), task))
    if tracker is None:
        raise LayerscopeError("the data gave no items; pass at least one item to measure on")
    metric = tracker.metric
    b, a = tracker.values()
    return metric, b, a, tracker.count, first


def saved_bytes(loaded, module: nn.Module) -> int | None:
    """Size of ``module`` saved in ``loaded``'s format (to a temporary folder), or None."""
    import dataclasses

    from .quantize import Quantized, _is_quantized_linear, save_quantized
    from .save import folder_bytes, save_model

    quantized = [n for n, m in module.named_modules() if _is_quantized_linear(m)]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if quantized:
                path = save_quantized(Quantized(dataclasses.replace(loaded, module=module),
                                                quantized), f"{tmp}/m")
            else:
                path = save_model(loaded, module, f"{tmp}/m")
        except LayerscopeError:
            return None
        return folder_bytes(path)


def measure(before, after, data=None, *, operation: str, output=None, changes: dict | None = None,
            batch_size: int = 8, max_length: int | None = 128, limit: int | None = None,
            repeats: int = 15, bytes_after: int | None = None,
            bytes_before: int | None = None) -> SurgeryResult:
    """Compare ``before`` and ``after`` (LoadedModels, or references) on held-out ``data``.

    ``data``: a Dataset, texts, a tensor, or a dataset reference; ``None`` uses an example batch.
    ``output``: the saved folder of ``after`` (its size is the "after" size). ``bytes_before``
    skips saving ``before`` to a temporary folder to size it (pass it when measuring many
    surgeries of one large model).
    """
    from layerscope.sweep import as_model

    from .save import folder_bytes

    before, after = as_model(before), as_model(after)
    if data is None:
        data = before.example(batch_size=batch_size)
    with evaluating(before, after):
        metric, q_before, q_after, n, first = quality(before, after, data, batch_size=batch_size,
                                                      max_length=max_length, limit=limit)
        lat_b, lat_a, iqr = interleaved_latency(before.module, after.module,
                                                lambda: before(first), lambda: after(first),
                                                repeats=repeats)
    p_before, nz_before = count_parameters(before.module)
    p_after, nz_after = count_parameters(after.module)
    if bytes_after is None:
        bytes_after = folder_bytes(output) if output else saved_bytes(after, after.module)
    return SurgeryResult(
        operation=operation, model=before.ref, output=str(output) if output else None,
        changes=dict(changes or {}), params_before=p_before, params_after=p_after,
        nonzero_before=nz_before, nonzero_after=nz_after,
        bytes_before=bytes_before if bytes_before is not None else saved_bytes(before, before.module),
        bytes_after=bytes_after,
        latency_ms_before=lat_b, latency_ms_after=lat_a, latency_ratio_iqr=iqr,
        quality_metric=metric, quality_before=q_before, quality_after=q_after, n_items=n,
        repeats=repeats)


__all__ = ["SurgeryResult", "measure", "quality", "count_parameters", "interleaved_latency",
           "saved_bytes"]
