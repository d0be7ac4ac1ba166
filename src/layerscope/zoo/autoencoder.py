"""A fully connected autoencoder: encoder, bottleneck, decoder; reconstruction error flags anomalies.

The encoder narrows the input through ``depth`` hidden layers (``width`` units, then half as
many each layer, or the sizes in ``hidden``) to ``bottleneck`` units; the decoder mirrors it
back. Trained to reproduce normal data (mean squared error), it reconstructs unusual items
badly, so ``anomaly_score(x)``, the per-item reconstruction error, ranks anomalies. Inputs are
flat feature vectors (8x8 digits = 64 features, or table rows); images are flattened and the
reconstruction comes back in the input's shape. The output layer is linear, so scale the data
(e.g. pixels / 16, or standardised columns).

Example:
    >>> import torch
    >>> from layerscope.zoo.autoencoder import Autoencoder, AutoencoderConfig
    >>> ae = Autoencoder(AutoencoderConfig(width=32, depth=1, bottleneck=4))
    >>> x = torch.randn(5, 64)
    >>> ae(x).shape, ae.encode(x).shape, ae.anomaly_score(x).shape
    (torch.Size([5, 64]), torch.Size([5, 4]), torch.Size([5]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError

from .base import (ZooModel, activation, check_choice, check_dropout, check_positive, norm1d,
                   widths)


@dataclass
class AutoencoderConfig:
    in_features: int = 64          # input size after flattening
    width: int = 32                # units in the first encoder layer; each next one halves
    depth: int = 2                 # hidden layers in the encoder (the decoder mirrors them)
    hidden: list[int] = field(default_factory=list)  # encoder widths, e.g. 48x24; when given
                                   # it sets width and depth
    bottleneck: int = 8            # size of the code
    activation: str = "relu"       # relu | gelu | tanh | silu | leaky_relu
    norm: str = "none"             # none | batch | layer
    dropout: float = 0.0           # after each hidden layer's activation

    def __post_init__(self):
        check_positive(in_features=self.in_features, width=self.width, depth=self.depth,
                       hidden=self.hidden, bottleneck=self.bottleneck)
        self.hidden, self.width, self.depth = widths(self.hidden, self.width, self.depth, 0.5)
        check_choice("activation", self.activation, ("relu", "gelu", "tanh", "silu", "leaky_relu"))
        check_choice("norm", self.norm, ("none", "batch", "layer"))
        check_dropout(self.dropout)


class Dense(nn.Module):
    """Linear map, then (unless ``last``) norm, activation and dropout."""

    def __init__(self, n_in: int, n_out: int, config: AutoencoderConfig, last: bool = False):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        if last:   # the code itself stays linear
            self.norm, self.act, self.dropout = nn.Identity(), nn.Identity(), nn.Identity()
        else:
            self.norm = norm1d(config.norm, n_out)
            self.act = activation(config.activation)
            self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.act(self.norm(self.linear(x))))  # (B, n_in) -> (B, n_out)


class Autoencoder(ZooModel):
    """``blocks`` = encoder layers, the bottleneck, decoder layers; ``head`` = output layer."""

    task = "autoencoder"

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        down = [config.in_features, *config.hidden, config.bottleneck]
        up = down[::-1][:-1]                       # bottleneck, ..., hidden[0]
        encoder = [Dense(a, b, config, last=(b == down[-1] and i == len(down) - 2))
                   for i, (a, b) in enumerate(zip(down[:-1], down[1:]))]
        decoder = [Dense(a, b, config) for a, b in zip(up[:-1], up[1:])]
        self.n_encoder = len(encoder)
        self.blocks = nn.ModuleList(encoder + decoder)
        self.head = nn.Linear(up[-1], config.in_features)

    @property
    def input_shape(self) -> tuple:
        return (self.config.in_features,)

    def encode(self, x: Tensor) -> Tensor:
        """The bottleneck code of each item: (B, ...) -> (B, bottleneck)."""
        x = x.flatten(1)
        if x.shape[1] != self.config.in_features:
            raise LayerscopeError(
                f"the autoencoder takes {self.config.in_features} features per item; got "
                f"{tuple(x.shape)} (flattened); set in_features={x.shape[1]} to fit this data")
        for block in self.blocks[:self.n_encoder]:
            x = block(x)
        return x

    def decode(self, z: Tensor) -> Tensor:
        """Reconstructions from codes: (B, bottleneck) -> (B, in_features)."""
        for block in self.blocks[self.n_encoder:]:
            z = block(z)
        return self.head(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)).view(x.shape)  # same shape as the input

    def anomaly_score(self, x: Tensor) -> Tensor:
        """Mean squared reconstruction error per item, shape (B,); higher = more unusual."""
        with torch.no_grad():
            error = (self(x) - x) ** 2
        return error.flatten(1).mean(dim=1)
