"""Running a model for reading only: eval mode for the duration, every flag put back after.

A read-only analysis must not change the model it reads. A model left in ``train()`` mode would
otherwise update BatchNorm's running statistics on every batch and apply dropout, so the numbers
would be random and the model changed. :func:`evaluating` switches every module to eval mode and,
on exit (also when the body raises), restores each module's own ``training`` flag, so a model
whose parts were in mixed modes comes back exactly as it was.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)).train()
    >>> net[2].eval()                                  # mixed modes are kept as they were
    Dropout(p=0.5, inplace=False)
    >>> with evaluating(net):
    ...     _ = net(torch.randn(4, 3))
    ...     net.training, net[1].training
    (False, False)
    >>> net.training, net[1].training, net[2].training, int(net[1].num_batches_tracked)
    (True, True, False, 0)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


def _modules_of(model) -> list[nn.Module]:
    if isinstance(model, nn.Module):
        return [model]
    module = getattr(model, "module", None)   # a LoadedModel
    return [module] if isinstance(module, nn.Module) else []


@contextmanager
def evaluating(*models) -> Iterator[None]:
    """Put ``models`` (nn.Modules or LoadedModels) in eval mode; restore every module's flag after."""
    flags: list[tuple[nn.Module, bool]] = []
    seen: set[int] = set()
    for model in models:
        for top in _modules_of(model):
            for sub in top.modules():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    flags.append((sub, sub.training))
    try:
        for sub, _ in flags:
            sub.training = False
        yield
    finally:
        for sub, was in flags:
            sub.training = was


__all__ = ["evaluating"]
