"""A feed-forward network: the input, ``depth`` hidden layers, and an output layer.

Inputs are flat feature vectors ``(B, in_features)``; anything with more dimensions, such as
8x8 digit images ``(B, 1, 8, 8)``, is flattened first, so both layouts of sklearn's digits work.
The reference task is sklearn's 8x8 digits (64 features, 10 classes).

Example:
    >>> import torch
    >>> from layerscope.zoo.mlp import MLP, MLPConfig
    >>> net = MLP(MLPConfig(width=32, depth=2))
    >>> net(torch.randn(4, 1, 8, 8)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from layerscope.errors import LayerscopeError

from .base import TASKS, ZooModel, activation, check_choice, check_dropout, check_positive, norm1d


@dataclass
class MLPConfig:
    in_features: int = 64          # input size after flattening (8x8 digits = 64)
    n_classes: int = 10            # logits out for classification (ignored for regression)
    width: int = 128               # units in every hidden layer
    depth: int = 2                 # number of hidden layers
    activation: str = "relu"       # relu | gelu | tanh | silu | leaky_relu
    norm: str = "none"             # none | batch | layer, after each hidden layer's linear map
    dropout: float = 0.0           # after each hidden layer's activation
    residual: bool = False         # add each hidden layer's input to its output (where sizes match)
    task: str = "classification"   # classification (n_classes logits) | regression (one unit)

    def __post_init__(self):
        check_positive(in_features=self.in_features, n_classes=self.n_classes,
                       width=self.width, depth=self.depth)
        check_choice("activation", self.activation, ("relu", "gelu", "tanh", "silu", "leaky_relu"))
        check_choice("norm", self.norm, ("none", "batch", "layer"))
        check_choice("task", self.task, TASKS)
        check_dropout(self.dropout)


class Dense(nn.Module):
    """One hidden layer: linear map, normalisation, activation, dropout; optionally residual."""

    def __init__(self, n_in: int, n_out: int, config: MLPConfig):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = norm1d(config.norm, n_out)
        self.act = activation(config.activation)
        self.dropout = nn.Dropout(config.dropout)
        self.residual = config.residual and n_in == n_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.dropout(self.act(self.norm(self.linear(x))))  # (B, n_in) -> (B, n_out)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class MLP(ZooModel):
    """Multi-layer perceptron; ``blocks`` holds the hidden layers, ``head`` the output layer."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        sizes = [config.in_features] + [config.width] * config.depth
        self.flatten = nn.Flatten()
        self.blocks = nn.ModuleList(Dense(a, b, config) for a, b in zip(sizes[:-1], sizes[1:]))
        n_out = config.n_classes if config.task == "classification" else 1
        self.head = nn.Linear(config.width, n_out)

    @property
    def input_shape(self) -> tuple:
        return (self.config.in_features,)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)  # (B, ...) -> (B, in_features)
        if x.shape[1] != self.config.in_features:
            raise LayerscopeError(
                f"the MLP takes {self.config.in_features} features per item; got {tuple(x.shape)}"
                f" (flattened); set in_features={x.shape[1]} to fit this data")
        for block in self.blocks:
            x = block(x)     # (B, width)
        return self.head(x)  # (B, n_classes) logits, or (B, 1) for regression

