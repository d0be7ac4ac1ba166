"""Views: how one layer's output becomes rows for the reducers.

A layer's output is a token sequence ``(B, T, D)`` (with the batch's attention mask), a feature
map ``(B, C, H, W)`` (or any ``(B, C, *spatial)``), or already one vector per item ``(B, D)``.
:func:`pool` turns it into a float32 matrix whose rows are what a statistic counts:

- ``mean``: one row per item; the mean over real tokens (padding excluded), or the global average
  pool of a feature map.
- ``first`` / ``last``: one row per item; the first / last *real* token (left or right padding).
- ``tokens``: one row per real token ``(N_real, D)``; for a feature map one row per position
  ``(B*H*W, C)``.
- ``flat``: one row per item, everything flattened; padded token positions are zeroed.

Example:
    >>> import torch
    >>> from layerscope.views import pool
    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])   # one item, 3 tokens, the last is padding
    >>> mask = torch.tensor([[1, 1, 0]])
    >>> pool(x, mask, "mean").tolist(), pool(x, mask, "last").tolist(), pool(x, mask, "tokens").shape
    ([[2.0]], [[3.0]], torch.Size([2, 1]))
"""

from __future__ import annotations

import torch
from torch import Tensor

from layerscope.errors import LayerscopeError

VIEWS = ("mean", "first", "last", "tokens", "flat")


def check_view(view: str) -> str:
    """Return ``view`` if it is a known view, else raise a LayerscopeError listing them."""
    if view not in VIEWS:
        raise LayerscopeError(f"unknown view {view!r}; use one of: {', '.join(VIEWS)}")
    return view


def pool(x: Tensor, mask: Tensor | None, view: str) -> Tensor:
    """Rows of ``x`` in ``view`` as float32 (see the module docstring for the shapes)."""
    check_view(view)
    if not isinstance(x, Tensor):
        raise LayerscopeError(f"a layer produced {type(x).__name__}, not a tensor; pick another layer")
    x = x.detach()
    if x.dim() == 0:
        raise LayerscopeError("a layer produced a scalar; pick a layer whose output has a batch dimension")
    if x.dim() == 1:
        return x.float().unsqueeze(1)
    if x.dim() == 2:
        return x.float()
    if x.dim() == 3:
        return _pool_tokens(x, _usable_mask(mask, x), view)
    return _pool_map(x, view)


def _usable_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """The mask as bool on x's device when it fits x's (B, T); None (all tokens real) otherwise."""
    if mask is None or tuple(mask.shape) != tuple(x.shape[:2]):
        return None
    return mask.to(device=x.device).bool()


def _pool_tokens(x: Tensor, mask: Tensor | None, view: str) -> Tensor:
    b, t, _ = x.shape
    if mask is None:
        if view == "mean":
            return x.float().mean(dim=1)
        if view == "first":
            return x[:, 0].float()
        if view == "last":
            return x[:, -1].float()
        if view == "tokens":
            return x.reshape(b * t, -1).float()
        return x.reshape(b, -1).float()
    if view == "mean":
        m = mask.to(torch.float32).unsqueeze(-1)
        counts = m.sum(dim=1).clamp_min(1.0)
        return (x.float() * m).sum(dim=1) / counts
    if view in ("first", "last"):
        rows = torch.arange(b, device=x.device)
        as_int = mask.to(torch.int8)
        if view == "first":
            idx = as_int.argmax(dim=1)
        else:
            idx = t - 1 - as_int.flip(1).argmax(dim=1)
        return x[rows, idx].float()
    if view == "tokens":
        return x[mask].float()
    return (x.float() * mask.unsqueeze(-1)).reshape(b, -1)


def _pool_map(x: Tensor, view: str) -> Tensor:
    b, c = x.shape[:2]
    if view == "mean":
        return x.float().reshape(b, c, -1).mean(dim=2)
    if view == "tokens":
        return x.float().reshape(b, c, -1).transpose(1, 2).reshape(-1, c)
    if view == "flat":
        return x.float().reshape(b, -1)
    raise LayerscopeError(
        f"view {view!r} needs token sequences, but this layer outputs a feature map of shape "
        f"{tuple(x.shape)}; use view 'mean', 'tokens' or 'flat'"
    )
