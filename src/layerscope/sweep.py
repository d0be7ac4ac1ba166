"""The sweep: one pass over a dataset, every chosen layer's output handed to every reducer.

The model runs in eval mode for the duration (every module's ``training`` flag is restored
after, see :mod:`layerscope.modes`). Each batch is encoded by the model (tokenised and padded per batch for text), moved to the
model's own device, run once under ``torch.inference_mode()`` with hooks on the chosen layers,
pooled once per view (see :mod:`layerscope.views`), given to each reducer, then dropped: memory
is bounded by one batch. When no reducer needs a later layer the forward pass stops early.

Example:
    >>> import torch
    >>> from layerscope.sweep import sweep
    >>> from layerscope.reducers import Moments
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> run = sweep(net, torch.randn(100, 4), reducers=[Moments()], batch_size=32, progress=False)
    >>> run.n_items, run.n_batches
    (100, 4)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.reducers import BatchInfo, Reducer
from layerscope.views import check_view, pool


RAW = "raw"   # a reducer's view that takes each layer's output as it is (e.g. (B, T, D)), unpooled


@dataclass
class SweepRun:
    """What a sweep did: items and batches seen, wall time, layers swept, the reducers (updated)."""

    n_items: int
    n_batches: int
    seconds: float
    layers: list[str]
    reducers: list

    @property
    def items_per_second(self) -> float:
        return self.n_items / self.seconds if self.seconds > 0 else float("inf")


# --- data sources -----------------------------------------------------------------------------


class Source:
    """Items to sweep over, sliceable by position: texts, a tensor, or a stream (DataLoader)."""

    def __init__(self, items, labels=None, modality: str = "tensor", name: str = "data",
                 stream: Any = None):
        self.items, self.labels, self.modality, self.name, self.stream = (
            items, labels, modality, name, stream)

    def __len__(self) -> int:
        return len(self.items) if self.stream is None else len(self.stream.dataset)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[Any, Tensor | None, int]]:
        """Yield ``(items, labels, start)`` batches, beginning at item ``start``."""
        if self.stream is None:
            for a in range(start, len(self.items), batch_size):
                b = min(a + batch_size, len(self.items))
                yield self.items[a:b], (self.labels[a:b] if self.labels is not None else None), a
            return
        pos = 0
        for batch in self.stream:
            x, y = _split_batch(batch)
            n = len(x)
            if pos + n > start:
                cut = max(start - pos, 0)
                yield x[cut:], (y[cut:] if y is not None else None), pos + cut
            pos += n


def _split_batch(batch):
    if isinstance(batch, dict):
        x = batch.get("x", batch.get("input", batch.get("text")))
        return x, batch.get("y", batch.get("label"))
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and not isinstance(batch[0], str):
        return batch[0], batch[1]
    return batch, None


def as_source(data) -> Source:
    """Normalise a Dataset, a dataset reference, a tensor/array, a list of texts or a DataLoader."""
    if isinstance(data, Source):
        return data
    if isinstance(data, str):
        from layerscope.data import load_dataset

        data = load_dataset(data)
    if isinstance(data, torch.utils.data.DataLoader):
        if not hasattr(data.dataset, "__len__") or len(data.dataset) == 0:
            raise LayerscopeError("the DataLoader's dataset is empty or has no length; pass at least one item")
        return Source(None, stream=data, modality="stream", name=type(data.dataset).__name__)
    if hasattr(data, "items") and hasattr(data, "modality") and not isinstance(data, dict):
        src = Source(data.items, getattr(data, "labels", None),
                     "text" if data.modality == "text" else "tensor", getattr(data, "name", "data"))
    elif isinstance(data, np.ndarray):
        src = Source(torch.from_numpy(data), name="array")
    elif isinstance(data, Tensor):
        src = Source(data, name="tensor")
    elif isinstance(data, (list, tuple)):
        if data and all(isinstance(t, str) for t in data):
            src = Source(list(data), modality="text", name="texts")
        elif not data:
            src = Source([], name="list")
        else:
            try:
                src = Source(torch.stack([torch.as_tensor(x) for x in data]), name="list")
            except Exception as exc:
                raise LayerscopeError(
                    f"a list of data must be texts or equally shaped arrays; got {type(data[0]).__name__} items ({exc})"
                ) from exc
    else:
        raise LayerscopeError(
            f"cannot sweep over {type(data).__name__}; pass a Dataset, a dataset name or file, "
            f"a tensor, a list of texts or a DataLoader"
        )
    if len(src) == 0:
        raise LayerscopeError(f"the data {src.name!r} is empty; pass at least one item")
    return src


# --- the model side ---------------------------------------------------------------------------


def as_model(model):
    """A LoadedModel for a reference string, an nn.Module or a LoadedModel."""
    from layerscope.models import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, nn.Module)):
        return load_model(model)
    raise LayerscopeError(
        f"model must be a reference (name, folder, factory), an nn.Module or a LoadedModel; got {type(model).__name__}"
    )


def model_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer) not offloaded to the meta device
    (accelerate's disk offload); CPU for a stateless or wholly offloaded module."""
    for t in module.parameters():
        if t.device.type != "meta":
            return t.device
    for t in module.buffers():
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def _resolve_device(module: nn.Module, device) -> torch.device:
    own = model_device(module)
    if device is None:
        return own
    want = torch.device(device)
    if want.type != own.type or (want.index is not None and own.index is not None and want.index != own.index):
        raise LayerscopeError(
            f"the model is on {own} but device={str(want)!r} was asked; layerscope never moves "
            f"your model: move it yourself (model.to({str(want)!r})) or leave device unset"
        )
    return own


def encoded_batches(loaded, data, *, batch_size: int, max_length: int | None,
                    limit: int | None = None, part: range | None = None
                    ) -> Iterator[tuple[Any, Tensor | None]]:
    """``(Encoded, labels)`` batches on the model's device: the one batching path of every pass
    that runs the model itself (removal, the lenses, surgery's quality, early exit).

    ``data``: a Dataset, a dataset reference, texts, a tensor, a DataLoader, or already encoded
    batches (one ``Encoded`` or a list of them, used as they are). ``limit`` keeps the first items.
    ``part``: only the items at these positions (a rank's shard, from
    :func:`layerscope.distributed.plan`), cut as the sweep cuts them; already encoded batches are
    kept whole, each by the position of its first item.
    """
    from layerscope import distributed
    from layerscope.models import Encoded

    device = model_device(loaded.module)
    if isinstance(data, Encoded) or (isinstance(data, (list, tuple)) and data
                                     and all(isinstance(e, Encoded) for e in data)):
        first = 0
        for enc in ([data] if isinstance(data, Encoded) else data):
            if part is None or first in part:
                yield enc.to(device), None
            first += enc.size
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LayerscopeError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(data, str):
        from layerscope.data import load_dataset

        data = load_dataset(data, limit=limit)
    source = as_source(data)
    batches = (source.batches(batch_size) if part is None
               else distributed.shard_batches(source, batch_size, part))
    for items, labels, first in batches:
        if limit is not None:
            if first >= limit:
                return
            items = items[: limit - first]
            labels = labels[: limit - first] if labels is not None else None
        yield loaded.encode(items, max_length=max_length).to(device), labels


def count_items(data, limit: int | None = None) -> int | None:
    """How many items :func:`encoded_batches` will yield (None when it cannot tell up front)."""
    from layerscope.models import Encoded

    if isinstance(data, Encoded):
        return data.size
    if isinstance(data, (list, tuple)) and data and all(isinstance(e, Encoded) for e in data):
        return sum(e.size for e in data)
    try:
        n = len(data) if not isinstance(data, str) else None
    except TypeError:
        n = None
    if isinstance(data, torch.utils.data.DataLoader):
        n = len(data.dataset) if hasattr(data.dataset, "__len__") else None
    if n is None:
        return limit
    return min(n, limit) if limit is not None else n


# --- the sweep --------------------------------------------------------------------------------


def plan_layers(lay, layers, reducers: Sequence[Reducer]) -> tuple[list[str], list[str]]:
    """(swept layer names, names to capture) in model order, checking every reducer's needs."""
    swept = [layer.name for layer in lay.select(layers)]
    order = {name: i for i, name in enumerate(lay.names())}
    wanted: set[str] = set()
    for r in reducers:
        if r.view != RAW:
            check_view(r.view)
        if r.layers is None:
            wanted.update(swept)
        else:
            for name in r.layers:
                wanted.update(layer.name for layer in lay.select(name))
    capture = sorted(wanted, key=lambda n: order.get(n, len(order)))
    return swept, capture


def sweep(model, data, *, reducers: Sequence[Reducer], layers=None, granularity: str = "blocks",
          blocks: str | None = None, batch_size: int | str = 32, max_length: int | None = 128,
          device=None, progress: bool = True, stop_early: bool = True,
          memory_budget_mb: float | None = None, start: int = 0) -> SweepRun:
    """Run ``data`` through ``model`` once, feeding every reducer each batch's layer outputs.

    ``layers`` picks the swept layers (``None``/"all", "0,3,5", "2-4", names); a reducer with
    ``layers=None`` sees all of them. ``batch_size="auto"`` picks the largest batch whose
    captured activations fit ``memory_budget_mb`` (estimated from one probe batch). ``start``
    skips the first items (used to resume a recording).

    Example:
        >>> import torch
        >>> from layerscope.reducers import Moments
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> sweep(net, torch.randn(10, 4), reducers=[Moments()], progress=False).n_items
        10
    """
    from layerscope.layers import Layers

    reducers = list(reducers)
    if not reducers:
        raise LayerscopeError("sweep needs at least one reducer (e.g. reducers=[Moments()])")
    loaded = as_model(model)
    source = as_source(data)
    dev = _resolve_device(loaded.module, device)
    lay = Layers(loaded, granularity=granularity, blocks=blocks)
    swept, capture = plan_layers(lay, layers, reducers)
    wants_inputs = any(r.wants_inputs for r in reducers)
    if batch_size == "auto":
        with evaluating(loaded):
            batch_size = auto_batch_size(loaded, source, lay, capture, memory_budget_mb or 1024.0,
                                         max_length, dev)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LayerscopeError(f"batch_size must be a positive integer or 'auto'; got {batch_size!r}")

    from layerscope import distributed

    n_total = len(source)
    needs = [swept if r.layers is None else [n for n in capture if n in set(r.layers)]
             for r in reducers]   # each reducer's layers, in model order
    # under a process group: this rank's shard of the items; the states are combined after
    rank, world, shard = distributed.plan(n_total, batch_size, start, progress=progress)
    batches = (source.batches(batch_size, start) if world == 1
               else distributed.shard_batches(source, batch_size, shard))
    bar = distributed.global_bar(max(n_total - start, 0), len(shard), desc="sweep",
                                 progress=progress)   # rank 0's bar counts all ranks' items
    n_items = n_batches = 0
    failed: BaseException | None = None
    t0 = time.perf_counter()
    try:
        with evaluating(loaded), \
                lay.capture(capture, inputs=wants_inputs, stop_early=stop_early) as cap:
            for items, labels, first in batches:
                with torch.inference_mode():
                    enc = loaded.encode(items, max_length=max_length).to(dev)
                    cap.outputs.clear()
                    cap.inputs.clear()
                    cap.call(loaded, enc)
                    missing = [n for n in capture if n not in cap.outputs]
                    if missing:
                        raise LayerscopeError(
                            f"layer {missing[0]!r} produced no output in the forward pass (it is "
                            f"not used by this model's forward); choose other layers"
                        )
                    views = _pooled(cap.outputs, enc.mask, reducers, swept, "out", dev)
                    in_views = (_pooled(cap.inputs, enc.mask, reducers, swept, "in", dev)
                                if wants_inputs else {})
                with torch.no_grad():
                    for r, names in zip(reducers, needs):
                        acts = {n: views[(r.view, n)] for n in names}
                        inputs = ({n: in_views[(r.view, n)] for n in names if (r.view, n) in in_views}
                                  if r.wants_inputs else None)
                        r.update(acts, BatchInfo(first, enc.size, labels,
                                                 items if isinstance(items, list) else None, inputs,
                                                 enc.mask, enc))
                del views, in_views, enc
                n_items += len(items)
                n_batches += 1
                bar.update(len(items))
    except Exception as exc:
        if world == 1:
            raise
        failed = exc  # sent to the other ranks, which then stop with it instead of waiting
    finally:
        bar.close()
    if world > 1:
        n_items, n_batches = distributed.combine(reducers, n_items, n_batches, failed,
                                                       loaded.module)
    return SweepRun(n_items, n_batches, time.perf_counter() - t0, swept, reducers)


def _pooled(captured: dict, mask, reducers, swept, kind: str, dev=None) -> dict[tuple[str, str], Tensor]:
    """Each (view, layer) pair any reducer needs, pooled once, on ``dev`` (the inputs' device:
    a model spread over devices by a device map hands every reducer one device)."""
    out: dict[tuple[str, str], Tensor] = {}
    for r in reducers:
        if kind == "in" and not r.wants_inputs:
            continue
        for name in (swept if r.layers is None else r.layers):
            key = (r.view, name)
            if key not in out and name in captured:
                x = captured[name]
                if dev is not None and isinstance(x, Tensor) and x.device != dev:
                    x = x.to(dev)
                out[key] = x if r.view == RAW else pool(x, mask, r.view)
    return out


def auto_batch_size(loaded, source: Source, lay, capture: list[str], budget_mb: float,
                    max_length: int | None, dev) -> int:
    """The largest batch whose captured activations (times 4 for the rest of the forward) fit the budget."""
    probe_items, _, _ = next(source.batches(min(4, len(source))))
    with torch.inference_mode(), lay.capture(capture, stop_early=True) as cap:
        enc = loaded.encode(probe_items, max_length=max_length).to(dev)
        cap.call(loaded, enc)
        size = sum(t.numel() * t.element_size() for t in cap.outputs.values() if isinstance(t, Tensor))
    per_item = 4.0 * size / max(enc.size, 1)
    if enc.mask is not None and max_length:
        per_item *= max_length / max(enc.mask.shape[1], 1)  # texts may be padded up to max_length
    return int(max(1, min(len(source), 4096, budget_mb * 2**20 // max(per_item, 1.0))))
