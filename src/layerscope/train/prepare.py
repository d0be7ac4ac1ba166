"""Turn a dataset into training and held-out items the model can eat, and batches of them.

Data may be a ``layerscope.data.Dataset`` (or its name, loaded with ``load_dataset``), a tensor
``X`` (unsupervised: autoencoders, GANs, token sequences) or a pair ``(X, y)``. Items are
adapted to the model only where the meaning is unambiguous: a flat vector reshaped to the
model's per-item shape when the sizes agree, texts turned into character ids (``ord(c)``,
clamped to the vocabulary) for zoo token models, and a single series cut into windows whose
target is the next value (standardised with the training part's mean and std). GAN data
outside [-1, 1] is scaled linearly to it with the training split's minimum and maximum (the
generator ends in tanh). Anything else that does not fit raises an error stating both shapes.

Example:
    >>> import torch
    >>> from layerscope.train.prepare import char_ids
    >>> char_ids(["hi"], length=4, vocab_size=128).tolist()
    [[104, 105, 0, 0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError


@dataclass
class Split:
    """Items and labels of one split; ``items`` is a tensor or a list of texts."""

    items: object
    labels: Tensor | None

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: Tensor):
        if isinstance(self.items, Tensor):
            items = self.items[index]
        else:
            items = [self.items[i] for i in index.tolist()]
        labels = self.labels[index] if self.labels is not None else None
        return items, labels


@dataclass
class Prepared:
    train: Split
    held_out: Split
    name: str                      # the dataset's name, for messages and the checkpoint
    meta: dict


def resolve_dataset(data, *, limit: int | None = None, seed: int = 0):
    """A Dataset, tensor or (X, y) pair; names go through ``layerscope.data.load_dataset``."""
    if isinstance(data, str):
        try:
            from layerscope.data import load_dataset
        except ModuleNotFoundError as exc:
            raise LayerscopeError(
                "this layerscope install has no data package; pass tensors (X, y) instead") from exc
        return load_dataset(data, limit=limit, seed=seed)
    return data


def split_data(data, *, held_out: float, seed: int, eval_data=None) -> tuple[object, object, str]:
    """(train, held-out, name): the Dataset's own (stratified) split, or a seeded one for tensors."""
    name = getattr(data, "name", "tensors")
    if eval_data is not None:
        return data, eval_data, name
    if not 0.0 < held_out < 1.0:
        raise LayerscopeError(f"held_out={held_out} must lie between 0 and 1, e.g. 0.2")
    if hasattr(data, "split") and hasattr(data, "items"):
        train, test = data.split(test_fraction=held_out, seed=seed)
        return train, test, name
    items, labels = _unpack(data)
    n = len(items)
    if n < 2:
        raise LayerscopeError(f"the data has {n} item(s); training needs at least 2")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * held_out)))
    test, train = order[:n_test], order[n_test:]
    pick = (lambda idx: items[idx]) if isinstance(items, Tensor) else \
        (lambda idx: [items[i] for i in idx.tolist()])
    as_pair = (lambda idx: (pick(idx), labels[idx]) if labels is not None else pick(idx))
    return as_pair(train), as_pair(test), name


def series_of(data) -> Tensor | None:
    """The values of ``data`` when it is one real-valued series without labels, else None."""
    items = getattr(data, "items", data)
    if getattr(data, "labels", None) is not None or not isinstance(items, (Tensor, np.ndarray)):
        return None
    x = torch.as_tensor(np.asarray(items)) if not isinstance(items, Tensor) else items
    if x.dim() == 1 or (x.dim() == 2 and 1 in x.shape):
        return x.reshape(-1).float()
    return None


def split_series(series: Tensor, held_out: float, window: int) -> tuple[Tensor, Tensor]:
    """Split a series in time: the last ``held_out`` fraction (plus one window of context)
    is held out, so no held-out target was seen in training."""
    if not 0.0 < held_out < 1.0:
        raise LayerscopeError(f"held_out={held_out} must lie between 0 and 1, e.g. 0.2")
    cut = int(round(len(series) * (1 - held_out)))
    if cut <= window or len(series) - cut < 1:
        raise LayerscopeError(
            f"a series of {len(series)} values is too short for windows of {window} with "
            f"held_out={held_out}; lower seq_len or use a longer series")
    return series[:cut], series[cut - window:]


def _unpack(data) -> tuple[object, Tensor | None]:
    if hasattr(data, "items") and hasattr(data, "modality") and not isinstance(data, dict):
        labels = data.labels
        return data.items, (torch.as_tensor(labels) if labels is not None else None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], str):
        x, y = data
        return _as_items(x), (torch.as_tensor(np.asarray(y)) if y is not None else None)
    if isinstance(data, (Tensor, np.ndarray)):
        return _as_items(data), None
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], str):
        return list(data), None
    raise LayerscopeError(
        f"cannot train on {type(data).__name__}; pass a dataset name, a layerscope Dataset, a "
        f"tensor X or a pair (X, y)")


def _as_items(x):
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
        return list(x)
    return torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x


def prepare(train_data, eval_data, *, name: str, info: dict) -> Prepared:
    """Adapt both splits to the model described by ``info`` (see :func:`model_info`)."""
    meta: dict = {}
    train = adapt(*_unpack(train_data), info=info, meta=meta, fit=True)
    held = adapt(*_unpack(eval_data), info=info, meta=meta, fit=False)
    if len(train) == 0 or len(held) == 0:
        raise LayerscopeError(
            f"dataset {name!r} gives {len(train)} training and {len(held)} held-out items after "
            f"adapting it to the model; use more data")
    return Prepared(train=train, held_out=held, name=name, meta=meta)


def adapt(items, labels, *, info: dict, meta: dict, fit: bool) -> Split:
    """Items and labels in the form the model takes (see the module docstring)."""
    shape = info.get("input_shape")
    if info.get("modality") == "text":
        if isinstance(items, Tensor):
            raise LayerscopeError(
                f"model {info['ref']!r} reads text; got a tensor of shape {tuple(items.shape)}")
        return Split(list(items), labels)
    if not isinstance(items, Tensor):       # texts for a zoo token model
        if not info.get("integer_input"):
            raise LayerscopeError(
                f"model {info['ref']!r} takes tensors of shape {_fmt(shape)}; got text")
        length = shape[0] + (1 if info["task"] == "causal-lm" else 0)
        if info["task"] == "causal-lm":
            return _shifted(text_chunks(items, length, info["vocab_size"]))
        return Split(char_ids(items, length, info["vocab_size"]), labels)
    if info["task"] == "gan":
        want = info["config"].get("out_features")
        flat = items.reshape(len(items), -1).float()
        if want is not None and flat.shape[1] != want:
            raise LayerscopeError(
                f"data items have shape {_fmt(tuple(items.shape[1:]))} ({flat.shape[1]} values) "
                f"but the GAN generates items of {want} values; build it with "
                f"out_features={flat.shape[1]}")
        if fit:
            lo, hi = float(flat.min()), float(flat.max())
            meta["gan_scale"] = (lo, hi) if (lo < -1 or hi > 1) and hi > lo else None
        if meta.get("gan_scale"):          # the generator ends in tanh: data to [-1, 1]
            lo, hi = meta["gan_scale"]
            flat = (flat - lo) / (hi - lo) * 2 - 1
        return Split(flat, labels)
    if info["task"] == "causal-lm":
        if items.is_floating_point():
            raise LayerscopeError(
                f"model {info['ref']!r} is a language model over token ids; got float data of "
                f"shape {tuple(items.shape)}")
        items = items.long()
        if labels is not None and tuple(labels.shape) == tuple(items.shape):
            split = Split(items, labels.long())      # next-token targets given by the data
        else:
            if items.dim() == 1:
                items = _chunks(items, shape[0] + 1)
            split = _shifted(items)
        if split.items.shape[1] > shape[0]:
            raise LayerscopeError(
                f"token sequences of length {split.items.shape[1]} exceed the model's seq_len "
                f"{shape[0]}; cut them or build the model with seq_len={split.items.shape[1]}")
        return split
    if info.get("sequence_model") and labels is None and (
            items.dim() == 1 or (items.dim() == 2 and 1 in items.shape)):
        return _windows(items.reshape(-1).float(), shape[0], meta, fit)
    if shape is not None and tuple(items.shape[1:]) != tuple(shape):
        if math.prod(items.shape[1:]) == math.prod(shape) and not info.get("sequence_model"):
            items = items.reshape(len(items), *shape)
        elif not (info.get("sequence_model") and items.dim() in (2, 3)):
            raise LayerscopeError(
                f"data items have shape {_fmt(tuple(items.shape[1:]))} but model {info['ref']!r} "
                f"takes {_fmt(shape)}; use data of that shape or build the model to fit it")
    if info.get("integer_input"):
        items = items.long()
    elif items.is_floating_point() or not items.dtype.is_floating_point:
        items = items.float()
    return Split(items, labels)


def _shifted(chunks: Tensor) -> Split:
    """Inputs = every token but the last, targets = every token but the first."""
    return Split(chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous())


def _windows(series: Tensor, length: int, meta: dict, fit: bool) -> Split:
    """Sliding windows of a standardised series; each target is the value after its window."""
    if fit:
        meta["series_mean"] = float(series.mean())
        meta["series_std"] = float(series.std()) or 1.0
    z = (series - meta["series_mean"]) / meta["series_std"]
    if len(z) <= length:
        raise LayerscopeError(
            f"a series of {len(z)} values is too short for windows of {length}; lower seq_len")
    windows = z.unfold(0, length + 1, 1)                  # (N, length + 1)
    return Split(windows[:, :-1].unsqueeze(-1).contiguous(), windows[:, -1].contiguous())


def char_ids(texts, length: int, vocab_size: int) -> Tensor:
    """Texts as (N, length) character ids, padded with 0 and clamped to ``vocab_size - 1``."""
    out = torch.zeros(len(texts), length, dtype=torch.long)
    for i, text in enumerate(texts):
        codes = [min(ord(c), vocab_size - 1) for c in text[:length]]
        out[i, :len(codes)] = torch.tensor(codes, dtype=torch.long)
    return out


def text_chunks(texts, length: int, vocab_size: int) -> Tensor:
    """The texts joined by newlines, as character ids cut into (N, length) chunks."""
    joined = "\n".join(texts)
    ids = torch.tensor([min(ord(c), vocab_size - 1) for c in joined], dtype=torch.long)
    return _chunks(ids, length)


def _chunks(ids: Tensor, length: int) -> Tensor:
    n = len(ids) // length
    if n == 0:
        raise LayerscopeError(f"{len(ids)} tokens make no chunk of length {length}; use more text")
    return ids[: n * length].view(n, length)


def _fmt(shape) -> str:
    return str(tuple(shape)) if shape is not None else "(unknown)"
