"""Small fixed networks the golden-file tests load as factories (``tests/golden/nets.py:mlp``)."""

import torch
from torch import nn


def mlp() -> nn.Module:
    """An MLP of three layers: 4 -> 16 -> 16 -> 3, ReLU after the hidden ones."""
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(16, 3))


class Tagger(nn.Module):
    """Embedding, a 3-layer LSTM and a linear head: the LSTM's layers are the blocks."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=3, batch_first=True)
        self.head = nn.Linear(12, 5)

    def forward(self, ids):
        return self.head(self.lstm(self.embed(ids))[0])


def tagger():
    """The tagger and an example batch of 2 sequences of 6 token ids."""
    return Tagger(), torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
