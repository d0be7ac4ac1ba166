"""The Dataset every layerscope command reads: items, optional labels, and what they are.

Example:
    >>> import torch
    >>> from layerscope.data import Dataset
    >>> ds = Dataset("toy", torch.arange(12.0).reshape(6, 2), torch.tensor([0, 1] * 3),
    ...              modality="tensor", task="classification", classes=["a", "b"])
    >>> train, test = ds.split(test_fraction=0.5, seed=0)
    >>> len(train), len(test), sorted(test.labels.tolist())
    (3, 3, [0, 0, 1])
    >>> [(tuple(x.shape), start) for x, y, start in ds.batches(4)]
    [((4, 2), 0), ((2, 2), 4)]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError

MODALITIES = ("text", "image", "tensor", "sequence")
TASKS = ("classification", "regression", "language-modeling", None)


@dataclass
class Dataset:
    """Items (texts or a tensor ``(N, ...)``), labels ``(N,)`` or ``(N, ...)`` or None, and
    ``meta`` with description, source, licence, citation and size."""

    name: str
    items: list[str] | Tensor
    labels: Tensor | None
    modality: str
    task: str | None
    classes: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise LayerscopeError(f"unknown modality {self.modality!r}; use one of {MODALITIES}")
        if self.labels is not None and len(self.labels) != len(self.items):
            raise LayerscopeError(
                f"data set {self.name!r} has {len(self.items)} items but {len(self.labels)} labels;"
                " give one label per item")

    def __repr__(self) -> str:
        return f"Dataset({self.describe()})"

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices) -> "Dataset":
        """The items (and labels) at ``indices``, in that order; meta and classes are kept."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).reshape(-1)
        if isinstance(self.items, Tensor):
            items = self.items[idx]
        else:
            items = [self.items[i] for i in idx.tolist()]
        labels = self.labels[idx] if self.labels is not None else None
        meta = dict(self.meta, size=len(idx))
        return replace(self, items=items, labels=labels, meta=meta)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """(train, test): seeded and stratified by class when there are classes; in time order
        (the last ``test_fraction`` held out) when ``meta["ordered"]`` is set, as for windows of a
        series, so that no held-out value is seen in training."""
        n = len(self)
        if not 0.0 < test_fraction < 1.0:
            raise LayerscopeError(f"test_fraction={test_fraction} must lie between 0 and 1, e.g. 0.2")
        n_test = int(round(n * test_fraction))
        if n_test < 1 or n_test >= n:
            raise LayerscopeError(
                f"data set {self.name!r} has {n} items: too few to hold out {test_fraction:.0%};"
                " use more data or another test_fraction")
        if self.meta.get("ordered"):
            gap = int(self.meta.get("window", 0))  # windows straddling the cut would share values
            train_end = n - n_test - gap
            if train_end < 1:
                raise LayerscopeError(
                    f"data set {self.name!r} has {n} windows of {gap}: too few to hold out "
                    f"{test_fraction:.0%} without overlap; use more data or a shorter seq_len")
            return self.subset(range(train_end)), self.subset(range(n - n_test, n))
        from sklearn.model_selection import train_test_split

        stratify = None
        if self.classes is not None and self.labels is not None and self.labels.dim() == 1:
            counts = np.bincount(self.labels.numpy())
            present = int((counts > 0).sum())
            if counts[counts > 0].min() >= 2 and present <= n_test <= n - present:
                stratify = self.labels.numpy()
        train, test = train_test_split(np.arange(n), test_size=n_test, random_state=seed,
                                       shuffle=True, stratify=stratify)
        return self.subset(train), self.subset(test)

    def batches(self, batch_size: int) -> Iterator[tuple]:
        """``(items, labels or None, start)`` for consecutive batches, the last one shorter."""
        if int(batch_size) <= 0:
            raise LayerscopeError(f"batch_size={batch_size} must be a positive integer, e.g. 32")
        for start in range(0, len(self), int(batch_size)):
            stop = start + int(batch_size)
            labels = self.labels[start:stop] if self.labels is not None else None
            yield self.items[start:stop], labels, start

    def describe(self) -> str:
        """One line: name, size, item shape or kind, task and classes."""
        if isinstance(self.items, Tensor):
            kind = f"{self.modality} {tuple(self.items.shape[1:])} {str(self.items.dtype)[6:]}"
        else:
            kind = "texts"
        task = self.task or "no labels"
        classes = f", {len(self.classes)} classes" if self.classes else ""
        return f"{self.name}: {len(self):,} items, {kind}, {task}{classes}"


def positive_int(name: str, value, what: str) -> int:
    """``value`` as an int when it is a whole number above 0, else a LayerscopeError naming it.

    Example:
        >>> positive_int("seq_len", 32.0, "a number of steps, e.g. 32")
        32
    """
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value <= 0:
        raise LayerscopeError(f"{name}={value!r} must be a positive whole number: {what}")
    return int(value)


def take_limit(data: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """The first ``limit`` items after a seeded shuffle (all of them, shuffled, if fewer).
    ``None`` keeps the data set as it is. Ordered data (windows of a series) keep the first
    ``limit`` in time order instead, so a limited series is still a series."""
    if limit is None:
        return data
    limit = positive_int("limit", limit, "a whole number of items, e.g. 500")
    if data.meta.get("ordered"):
        return data.subset(range(min(limit, len(data))))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))
    return data.subset(order[:limit])
