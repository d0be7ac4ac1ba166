"""A stacked LSTM or GRU over a sequence, read out at the last time step.

The layers are a ``ModuleList`` of single-layer ``nn.LSTM``/``nn.GRU`` modules rather than one
multi-layer module: each layer's output is then a plain ``(B, T, width)`` tensor that hooks and
the Layers view see directly, and a layer can carry its own normalisation, dropout and residual
connection. By default the head is one regression unit that predicts the next value of a
univariate series from a window of ``seq_len`` values; ``task=classification`` gives
``n_classes`` logits for the whole sequence instead.

Example:
    >>> import torch
    >>> from layerscope.zoo.rnn import RNN, RNNConfig
    >>> net = RNN(RNNConfig(cell="gru", width=16))
    >>> net(torch.randn(4, 32, 1)).shape   # (batch, time, features) -> next value
    torch.Size([4, 1])
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from layerscope.errors import LayerscopeError

from .base import TASKS, ZooModel, check_choice, check_dropout, check_positive, norm1d


@dataclass
class RNNConfig:
    cell: str = "lstm"             # lstm | gru
    input_size: int = 1            # features per time step (1 for a univariate series)
    seq_len: int = 32              # window length of example inputs (any length runs)
    width: int = 64                # hidden units per layer
    depth: int = 2                 # stacked recurrent layers
    norm: str = "none"             # none | layer, on each layer's output sequence
    dropout: float = 0.0           # on each layer's output sequence
    residual: bool = False         # add each layer's input to its output (where sizes match)
    task: str = "regression"       # regression (one unit: the next value) | classification
    n_classes: int = 2             # logits out for classification

    def __post_init__(self):
        check_choice("cell", self.cell, ("lstm", "gru"))
        check_positive(input_size=self.input_size, seq_len=self.seq_len, width=self.width,
                       depth=self.depth, n_classes=self.n_classes)
        check_choice("norm", self.norm, ("none", "layer"))
        check_choice("task", self.task, TASKS)
        check_dropout(self.dropout)


class RecurrentLayer(nn.Module):
    """One recurrent layer; returns its whole output sequence (the final state is dropped)."""

    def __init__(self, n_in: int, config: RNNConfig):
        super().__init__()
        cell = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = cell(n_in, config.width, batch_first=True)
        self.norm = norm1d(config.norm, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.residual = config.residual and n_in == config.width

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)                    # (B, T, n_in) -> (B, T, width)
        y = self.dropout(self.norm(y))
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class RNN(ZooModel):
    """Recurrent layers in ``blocks``, a linear ``head`` on the last time step."""

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        sizes = [config.input_size] + [config.width] * (config.depth - 1)
        self.blocks = nn.ModuleList(RecurrentLayer(n, config) for n in sizes)
        n_out = config.n_classes if config.task == "classification" else 1
        self.head = nn.Linear(config.width, n_out)

    @property
    def input_shape(self) -> tuple:
        return (self.config.seq_len, self.config.input_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and self.config.input_size == 1:
            x = x.unsqueeze(-1)               # (B, T) -> (B, T, 1)
        if x.dim() != 3 or x.shape[-1] != self.config.input_size:
            raise LayerscopeError(
                f"the {self.config.cell.upper()} takes sequences of shape (batch, time, "
                f"{self.config.input_size}); got {tuple(x.shape)}")
        for block in self.blocks:
            x = block(x)                      # (B, T, width)
        return self.head(x[:, -1])            # (B, 1) next value, or (B, n_classes) logits
