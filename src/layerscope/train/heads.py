"""A new task head on a pretrained Hugging Face encoder, for transfer learning.

:class:`PooledHead` runs the encoder, averages the last hidden state over the real tokens
(attention mask) and maps it with a fresh linear layer to ``n_out`` values: one for
regression, one per class for classification.

Example:
    >>> from transformers import BertConfig, BertModel
    >>> enc = BertModel(BertConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
    ...                            num_attention_heads=2, vocab_size=50))
    >>> import torch
    >>> head = PooledHead(enc, n_out=1)
    >>> ids = torch.ones(2, 5, dtype=torch.long)
    >>> head(input_ids=ids, attention_mask=torch.ones_like(ids)).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PooledHead(nn.Module):
    """``encoder`` (a Hugging Face model), masked mean pooling, then ``head`` (Linear)."""

    def __init__(self, encoder: nn.Module, n_out: int, task: str = "regression"):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_out)
        self.task = task

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              **kwargs).last_hidden_state            # (B, T, H)
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)           # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)     # (B, H)
        return self.head(pooled)                                        # (B, n_out)
