"""Turn a column of label values read from a file into a label tensor (and class names).

Integers stay the class ids when they are 0..K-1, other integers and strings become classes in
sorted order, and numbers with a fractional part are a regression target.

Example:
    >>> from layerscope.data.labels import labels_from_values
    >>> labels, classes, task = labels_from_values(["pos", "neg", "pos"])
    >>> labels.tolist(), classes, task
    ([1, 0, 1], ['neg', 'pos'], 'classification')
    >>> labels_from_values(["0.5", "-1.25"])[0].tolist(), labels_from_values(["1", "0"])[2]
    ([0.5, -1.25], 'classification')
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def labels_from_values(values: list) -> tuple[Tensor, list[str] | None, str]:
    """(labels, classes or None, task) for one label value per item."""
    numbers = [_number(v) for v in values]
    if all(x is not None and math.isfinite(x) for x in numbers):
        if all(x == int(x) for x in numbers):
            ints = np.array([int(x) for x in numbers], dtype=np.int64)
            if ints.min() == 0 and set(ints.tolist()) == set(range(int(ints.max()) + 1)):
                return torch.from_numpy(ints), [str(i) for i in range(int(ints.max()) + 1)], \
                    "classification"
            names = sorted(set(ints.tolist()))
            index = {v: i for i, v in enumerate(names)}
            return (torch.tensor([index[v] for v in ints.tolist()], dtype=torch.int64),
                    [str(v) for v in names], "classification")
        return torch.tensor(numbers, dtype=torch.float32), None, "regression"
    names = sorted({str(v) for v in values})
    index = {v: i for i, v in enumerate(names)}
    return torch.tensor([index[str(v)] for v in values], dtype=torch.int64), names, "classification"


def labels_from_tensor(labels: Tensor) -> tuple[Tensor, list[str] | None, str]:
    """(labels, classes, task) for a label tensor: integer dtype -> classes 0..max, float ->
    regression (float32)."""
    if labels.dtype.is_floating_point:
        return labels.to(torch.float32), None, "regression"
    labels = labels.to(torch.int64)
    if labels.dim() != 1:
        return labels, None, "classification"
    if len(labels) and int(labels.min()) < 0:
        return labels_from_values(labels.tolist())
    top = int(labels.max()) if len(labels) else -1
    return labels, [str(i) for i in range(top + 1)], "classification"
