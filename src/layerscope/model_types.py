"""The model types: :class:`LoadedModel` (a module plus what is needed to feed and describe it)
and :class:`Encoded` (one batch). The loaders build them; :mod:`layerscope.models` picks the loader.

Example:
    >>> import torch
    >>> from layerscope.model_types import wrap_module
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> model = wrap_module(net, ref="net", input_shape=(4,))
    >>> model(model.example(batch_size=5)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import LayerscopeError

_EXAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


@dataclass
class Encoded:
    """One batch, ready to call the model with: ``module(*args, **kwargs)``.

    Example:
        >>> import torch
        >>> enc = Encoded(args=(torch.zeros(2, 3),), kwargs={}, mask=None, size=2)
        >>> enc.to("cpu").args[0].shape
        torch.Size([2, 3])
    """

    args: tuple
    kwargs: dict
    mask: Tensor | None
    size: int

    def to(self, device) -> "Encoded":
        """The same batch with every tensor on ``device``."""

        def move(value):
            return value.to(device) if isinstance(value, Tensor) else value

        return Encoded(
            args=tuple(move(a) for a in self.args),
            kwargs={k: move(v) for k, v in self.kwargs.items()},
            mask=move(self.mask),
            size=self.size,
        )


@dataclass
class LoadedModel:
    """A module plus what is needed to feed and describe it.

    ``preprocess`` (optional) turns one raw item (e.g. an ``H×W×3`` uint8 image) into a tensor of
    ``input_shape``; image models with a fixed input pipeline (EfficientNet) set it.

    Example:
        >>> import torch
        >>> model = LoadedModel(torch.nn.Linear(3, 1), ref="lin", family="module",
        ...                     modality="tensor", task=None, input_shape=(3,))
        >>> model.encode(torch.ones(4, 3)).size
        4
    """

    module: nn.Module
    ref: str
    family: str
    modality: str
    task: str | None
    tokenizer: Any = None
    input_shape: tuple | None = None
    meta: dict = field(default_factory=dict)
    preprocess: Callable[[Any], Tensor] | None = None

    def __repr__(self) -> str:
        shape = f", input_shape={self.input_shape}" if self.input_shape else ""
        return (
            f"LoadedModel(ref={self.ref!r}, family={self.family!r}, modality={self.modality!r}, "
            f"task={self.task!r}{shape}, module={type(self.module).__name__})"
        )

    # -- feeding -------------------------------------------------------------------------------
    def encode(self, items, max_length: int | None = None) -> Encoded:
        """Turn data into a batch: texts for text models, tensors/arrays for the others.

        ``items`` may also be a ``layerscope.data.Dataset`` (its items are used). Raises
        :class:`LayerscopeError` for data of the wrong kind or shape.
        """
        if hasattr(items, "items") and hasattr(items, "modality") and not isinstance(items, dict):
            items = items.items
        if self.modality == "text":
            return self._encode_text(items, max_length)
        return self._encode_tensors(items)

    def example(self, batch_size: int = 1) -> Encoded:
        """A ready example batch (for shapes, summaries and FLOP counts)."""
        custom = self.meta.get("example_input")
        if custom is not None:
            return _encoded_from_example(custom, batch_size)
        if self.modality == "text":
            if self.tokenizer is not None:
                return self.encode([_EXAMPLE_TEXT] * batch_size)
            vocab = int(self.meta.get("vocab_size") or 100)
            generator = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab, (batch_size, 8), generator=generator)
            return self.encode(ids)
        builder = getattr(self.module, "example_input", None)
        if callable(builder) and self.meta.get("zoo_spec") and _has_parameters(self.module):
            return self.encode(builder(batch_size=batch_size))
        if self.input_shape is None:
            raise LayerscopeError(
                f"model {self.ref!r} needs an example input to trace shapes: pass --input-shape "
                f"(e.g. --input-shape 3,32,32) or input_shape=(...) to load_model"
            )
        generator = torch.Generator().manual_seed(0)
        if self._takes_integers():
            high = int(self.meta.get("vocab_size") or 2)
            return self.encode(torch.randint(0, high, (batch_size, *self.input_shape),
                                             generator=generator))
        return self.encode(torch.randn((batch_size, *self.input_shape), generator=generator))

    def __call__(self, enc: Encoded):
        """Run the module on a batch: ``module(*enc.args, **enc.kwargs)``."""
        return self.module(*enc.args, **enc.kwargs)

    # -- helpers -------------------------------------------------------------------------------
    def _kind(self) -> str:
        if self.modality == "text":
            return "text"
        if self.input_shape is not None:
            return f"{'images' if self.modality == 'image' else 'tensors'} of shape {self.input_shape}"
        return "tensors"

    def _takes_integers(self) -> bool:
        return self.meta.get("input_dtype") in ("int64", "int32", "long")

    def _float_dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def _encode_text(self, items, max_length: int | None) -> Encoded:
        if isinstance(items, str):
            items = [items]
        if isinstance(items, (Tensor, np.ndarray)):
            ids = torch.as_tensor(items)
            if ids.is_floating_point() or ids.dim() != 2:
                raise LayerscopeError(
                    f"model {self.ref!r} takes text (or a (B, T) integer tensor of token ids); "
                    f"got a {_describe(items)}"
                )
            ids = ids.long()
            mask = torch.ones_like(ids)
            return Encoded(args=(), kwargs={"input_ids": ids, "attention_mask": mask},
                           mask=mask, size=ids.shape[0])
        items = list(items)
        if not items:
            raise LayerscopeError(f"model {self.ref!r} got an empty batch; pass at least one text")
        if not all(isinstance(t, str) for t in items):
            raise LayerscopeError(
                f"model {self.ref!r} takes text; got {_describe(items)}"
            )
        if self.tokenizer is None:
            raise LayerscopeError(
                f"model {self.ref!r} has no tokenizer, so it cannot read text; put tokenizer files "
                f"in its folder or pass a (B, T) tensor of token ids"
            )
        limit = max_length or self._default_max_length()
        batch = self.tokenizer(items, padding=True, truncation=True, max_length=limit,
                               return_tensors="pt")
        accepted = self.meta.get("forward_inputs")
        kwargs = {k: v for k, v in batch.items() if accepted is None or k in accepted}
        mask = kwargs.get("attention_mask")
        return Encoded(args=(), kwargs=kwargs, mask=mask, size=len(items))

    def _default_max_length(self) -> int:
        limits = [self.meta.get("max_positions"), getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 1_000_000]
        return min(limits) if limits else 512

    def _encode_tensors(self, items) -> Encoded:
        kind = self._kind()
        if isinstance(items, str) or (
            isinstance(items, (list, tuple)) and items and isinstance(items[0], str)
        ):
            raise LayerscopeError(f"model {self.ref!r} takes {kind}; got text")
        if isinstance(items, (list, tuple)):
            if not items:
                raise LayerscopeError(f"model {self.ref!r} got an empty batch; pass at least one item")
            tensors = [_as_tensor(x, self.ref, kind) for x in items]
            if self.preprocess is not None:
                tensors = [self._prepare(x) if self._is_raw(x[None]) else x for x in tensors]
            batch = torch.stack(_check_same_shapes(tensors, self.ref))
        elif isinstance(items, (Tensor, np.ndarray)):
            batch = _as_tensor(items, self.ref, kind)
            if self.preprocess is not None and self._is_raw(batch):
                batch = torch.stack([self._prepare(x) for x in batch])
        else:
            raise LayerscopeError(
                f"model {self.ref!r} takes {kind}; got {type(items).__name__} "
                f"(pass a tensor (B, ...) or a list of arrays)"
            )
        if self.input_shape is not None and tuple(batch.shape[1:]) != tuple(self.input_shape):
            raise LayerscopeError(
                f"model {self.ref!r} takes tensors of shape (B, {_shape(self.input_shape)}); "
                f"got {tuple(batch.shape)}"
                + (" (add a batch dimension)" if tuple(batch.shape) == tuple(self.input_shape) else "")
            )
        if self._takes_integers():
            if batch.is_floating_point():
                raise LayerscopeError(
                    f"model {self.ref!r} takes integer token ids; got a {_describe(batch)}"
                )
            batch = batch.long()
        else:
            batch = batch.to(self._float_dtype())
        return Encoded(args=(batch,), kwargs={}, mask=None, size=int(batch.shape[0]))

    def _is_raw(self, batch: Tensor) -> bool:
        """True for pixels that still need ``preprocess`` (uint8, or not the model's shape)."""
        return batch.dtype == torch.uint8 or tuple(batch.shape[1:]) != tuple(self.input_shape or ())

    def _prepare(self, item) -> Tensor:
        try:
            return self.preprocess(item)
        except LayerscopeError:
            raise
        except Exception as exc:
            raise LayerscopeError(
                f"model {self.ref!r} could not preprocess an item ({_describe(item)}): {exc}"
            ) from exc


def _has_parameters(module: nn.Module) -> bool:
    """False for a module whose every layer was replaced (e.g. int8-quantized linears only)."""
    return next(iter(module.parameters()), None) is not None


def _shape(shape: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shape)


def _describe(value) -> str:
    if isinstance(value, (Tensor, np.ndarray)):
        return f"{str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        inner = type(value[0]).__name__ if value else "nothing"
        return f"a {type(value).__name__} of {inner}"
    return type(value).__name__


def _as_tensor(value, ref: str, kind: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.from_numpy(np.array(value))
    except (TypeError, ValueError) as exc:
        raise LayerscopeError(
            f"model {ref!r} takes {kind}; got {_describe(value)} that is not numeric"
        ) from exc


def _check_same_shapes(items, ref: str):
    shapes = {tuple(x.shape) for x in items}
    if len(shapes) > 1:
        raise LayerscopeError(
            f"model {ref!r} got items of different shapes {sorted(shapes)}; make them one shape"
        )
    return items


def _encoded_from_example(example, batch_size: int) -> Encoded:
    """An Encoded batch from a factory's example input (tensor, tuple of tensors, or kwargs)."""

    def fit(t):
        if not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] == batch_size:
            return t
        reps = -(-batch_size // t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch_size]

    if isinstance(example, dict):
        kwargs = {k: fit(v) for k, v in example.items()}
        return Encoded(args=(), kwargs=kwargs, mask=kwargs.get("attention_mask"), size=batch_size)
    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    return Encoded(args=tuple(fit(a) for a in args), kwargs={}, mask=None, size=batch_size)


def wrap_module(
    module: nn.Module,
    *,
    ref: str,
    input_shape=None,
    family: str = "module",
    example_input=None,
) -> LoadedModel:
    """Describe a module layerscope did not load (never moved, never switched to eval).

    A Hugging Face ``PreTrainedModel`` is recognised as a text model of its family; any other
    module is a tensor model whose ``input_shape`` comes from the argument, the example input or
    a module attribute ``input_shape``.

    Example:
        >>> import torch
        >>> wrap_module(torch.nn.Conv2d(3, 8, 3), ref="conv", input_shape=(3, 16, 16)).modality
        'image'
    """
    meta: dict = {}
    shape = _parse_shape(input_shape)
    if shape is None and isinstance(example_input, Tensor) and example_input.dim() > 1:
        shape = tuple(example_input.shape[1:])
    if shape is None:
        shape = _parse_shape(getattr(module, "input_shape", None))
    config = getattr(module, "config", None)
    if example_input is not None:
        meta["example_input"] = example_input
        first = example_input
        if isinstance(first, dict):
            first = next(iter(first.values()), None)
        elif isinstance(first, (tuple, list)):
            first = first[0] if first else None
        if isinstance(first, Tensor):
            meta["input_dtype"] = str(first.dtype).replace("torch.", "")
    if _is_hf_text_model(module):
        meta.update(hf_meta(module))
        return LoadedModel(module=module, ref=ref, family=config.model_type, modality="text",
                           task=getattr(module, "task", None), meta=meta)
    task = getattr(module, "task", None)
    modality = "image" if shape is not None and len(shape) == 3 else "tensor"
    return LoadedModel(module=module, ref=ref, family=family, modality=modality,
                       task=task if isinstance(task, str) else None, input_shape=shape, meta=meta)


def _is_hf_text_model(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return (
        getattr(module, "main_input_name", None) == "input_ids"
        and isinstance(getattr(config, "model_type", None), str)
    )


def _parse_shape(shape) -> tuple | None:
    if shape is None:
        return None
    if isinstance(shape, str):
        return parse_input_shape(shape)
    if isinstance(shape, int):
        return (shape,)
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise LayerscopeError(
            f"input shape must be a tuple of positive integers like (1, 28, 28); got {shape!r}"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise LayerscopeError(
            f"input shape must be a tuple of positive integers like (1, 28, 28); got {shape!r}"
        )
    return dims


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse a per-item shape written as ``"1,28,28"`` (also ``"1x28x28"`` or ``"(1, 28, 28)"``).

    Example:
        >>> parse_input_shape("1,28,28")
        (1, 28, 28)
    """
    parts = [p for p in re.split(r"[,\s]+|(?<=\d)x(?=\d)", text.strip().strip("()[]")) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise LayerscopeError(
            f"input shape {text!r} is not a list of positive integers; write it like 1,28,28"
        )
    return dims


def hf_meta(module: nn.Module) -> dict:
    """What encoding needs to know about a transformers model: forward inputs, vocab, positions."""
    config = module.config
    try:
        forward_inputs = sorted(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        forward_inputs = None
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return {
        "hf_config": config.to_dict(),
        "forward_inputs": forward_inputs,
        "vocab_size": getattr(config, "vocab_size", None),
        "max_positions": positions,
    }


__all__ = ["Encoded", "LoadedModel", "wrap_module", "parse_input_shape", "hf_meta"]
