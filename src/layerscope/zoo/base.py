"""Parts every zoo network shares: the option checks, activations, norms and the model base class.

Example:
    >>> from layerscope.zoo.base import activation, norm1d
    >>> activation("gelu")
    GELU(approximate='none')
    >>> type(norm1d("layer", 8)).__name__, type(norm1d("none", 8)).__name__
    ('LayerNorm', 'Identity')
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}
NORMS = ("none", "batch", "layer")
TASKS = ("classification", "regression")


# -- option checks (called from each Config.__post_init__) ----------------------------------------
def check_choice(key: str, value: str, choices) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise LayerscopeError(f"{key}={value!r} is not an option; use one of: {', '.join(choices)}")


def check_positive(**values: int) -> None:
    """Raise for any value (or list entry) that is not a whole number above zero."""
    for key, value in values.items():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise LayerscopeError(f"{key}={value} must be a positive whole number (at least 1)")


def widths(given: list[int], width: int, depth: int, factor: float) -> tuple[list[int], int, int]:
    """Per-layer sizes: ``given`` when not empty, else ``width`` scaled by ``factor`` per layer.

    Returns the sizes with the width and depth they imply, so a config stays consistent.

    Example:
        >>> widths([], 16, 3, 2), widths([8, 8], 16, 3, 2), widths([], 32, 3, 0.5)
        (([16, 32, 64], 16, 3), ([8, 8], 8, 2), ([32, 16, 8], 32, 3))
    """
    sizes = list(given) or [max(1, int(width * factor ** i)) for i in range(depth)]
    return sizes, sizes[0], len(sizes)


def check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise LayerscopeError(f"dropout={p} must be at least 0 and below 1")


# -- building blocks -------------------------------------------------------------------------------
def activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, gelu, tanh, silu, leaky_relu)."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def norm1d(kind: str, width: int) -> nn.Module:
    """Normalisation of feature vectors (B, width): none, batch or layer."""
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def norm2d(kind: str, channels: int) -> nn.Module:
    """Normalisation of feature maps (B, C, H, W); "layer" normalises over (C, H, W) per item."""
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


# -- the base class --------------------------------------------------------------------------------
class ZooModel(nn.Module):
    """What every zoo network offers besides ``forward``.

    Subclasses set ``self.config`` (their dataclass) and define ``input_shape`` (per item, no
    batch dimension) and ``task``. Inputs are float tensors unless ``input_dtype`` says otherwise.
    """

    config: object
    input_dtype = torch.float32

    @property
    def input_shape(self) -> tuple:
        raise NotImplementedError

    @property
    def task(self) -> str:
        return self.config.task

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A random batch of the right shape and dtype, on the model's device."""
        device = next(self.parameters()).device
        return torch.randn(batch_size, *self.input_shape, device=device)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities: the softmax of the logits ``forward`` returns (classifiers only).

        Train on the logits with ``nn.CrossEntropyLoss``; this is for reading predictions.
        """
        if self.task != "classification":
            raise LayerscopeError(
                f"predict_proba needs a classifier; this {type(self).__name__} does {self.task}")
        return torch.softmax(self(x), dim=-1)

    @property
    def layerscope_blocks(self) -> str:
        """Where the blocks are, as ``Layers(model, blocks=...)`` takes it: ``"blocks"``.

        The Layers view finds stacks of two or more blocks by itself; this names the stack
        also when ``depth=1`` leaves a single block.
        """
        return "blocks"

    def num_parameters(self) -> int:
        """Trainable and frozen parameters, each shared tensor counted once."""
        return sum(p.numel() for p in self.parameters())

    def _check_item_shape(self, x: Tensor, expected: tuple, what: str | None = None) -> None:
        if tuple(x.shape[1:]) != tuple(expected):
            name = what or type(self).__name__
            raise LayerscopeError(
                f"{name} takes inputs of shape (batch, {', '.join(map(str, expected))}); "
                f"got {tuple(x.shape)}")
