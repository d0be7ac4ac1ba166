"""Transformers over integer tokens: an encoder classifier and a small decoder-only LM (GPT).

Both stack the same block: a multi-head self-attention sublayer and a feed-forward sublayer,
each wrapped in a residual connection and a LayerNorm placed before the sublayer ("pre", as in
GPT-2) or after the residual sum ("post", as in the original Transformer and BERT). The GPT's
attention is causal, so position ``t`` only sees tokens ``<= t``; the encoder attends both ways
and mean-pools the tokens for its head. Tokens are characters or bytes (``vocab_size`` 128 or
256); every position is attended, so pad with an ordinary token.

Example:
    >>> import torch
    >>> from layerscope.zoo.transformer import GPT, GPTConfig
    >>> lm = GPT(GPTConfig(width=32, depth=2, heads=4))
    >>> lm(torch.randint(0, 128, (2, 10))).shape   # (batch, time) -> logits per position
    torch.Size([2, 10, 128])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from layerscope.errors import LayerscopeError

from .base import TASKS, ZooModel, activation, check_choice, check_dropout, check_positive


@dataclass
class GPTConfig:
    vocab_size: int = 128          # 128 for ASCII characters, 256 for bytes
    seq_len: int = 64              # context length (learned positions)
    width: int = 128               # embedding size d_model
    depth: int = 3                 # transformer blocks
    heads: int = 4                 # attention heads; must divide width
    ff_mult: int = 4               # feed-forward hidden size = ff_mult * width
    activation: str = "gelu"       # relu | gelu | tanh | silu, inside the feed-forward sublayer
    norm: str = "layer"            # layer | none
    norm_position: str = "pre"     # pre (norm, sublayer, add) | post (sublayer, add, norm)
    dropout: float = 0.0           # on attention weights and sublayer outputs
    residual: bool = True          # residual connections around both sublayers
    tie_weights: bool = True       # the head reuses the token embedding matrix

    def __post_init__(self):
        _check(self)


@dataclass
class TransformerConfig:
    vocab_size: int = 128          # token ids 0..vocab_size-1 (128 = ASCII characters)
    seq_len: int = 64              # tokens per item (learned positions)
    width: int = 64                # embedding size d_model
    depth: int = 2                 # transformer blocks
    heads: int = 4                 # attention heads; must divide width
    ff_mult: int = 4               # feed-forward hidden size = ff_mult * width
    activation: str = "gelu"       # relu | gelu | tanh | silu, inside the feed-forward sublayer
    norm: str = "layer"            # layer | none
    norm_position: str = "pre"     # pre (norm, sublayer, add) | post (sublayer, add, norm)
    dropout: float = 0.1           # on attention weights and sublayer outputs
    residual: bool = True          # residual connections around both sublayers
    task: str = "classification"   # classification (n_classes logits) | regression (one unit)
    n_classes: int = 2             # logits out for classification

    def __post_init__(self):
        _check(self)
        check_positive(n_classes=self.n_classes)
        check_choice("task", self.task, TASKS)


def _check(c) -> None:
    check_positive(vocab_size=c.vocab_size, seq_len=c.seq_len, width=c.width, depth=c.depth,
                   heads=c.heads, ff_mult=c.ff_mult)
    if c.width % c.heads:
        raise LayerscopeError(f"heads={c.heads} must divide width={c.width}, e.g. heads=4,width=64")
    check_choice("activation", c.activation, ("relu", "gelu", "tanh", "silu"))
    check_choice("norm", c.norm, ("layer", "none"))
    check_choice("norm_position", c.norm_position, ("pre", "post"))
    check_dropout(c.dropout)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (causal for the GPT)."""

    def __init__(self, config, causal: bool):
        super().__init__()
        self.heads, self.causal, self.p = config.heads, causal, config.dropout
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                        # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(                          # (B, heads, T, C/heads)
            q, k, v, is_causal=self.causal, dropout_p=self.p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)                       # heads side by side
        return self.dropout(self.proj(y))


class FeedForward(nn.Module):
    """Position-wise two-layer network: width -> ff_mult * width -> width."""

    def __init__(self, config):
        super().__init__()
        self.up = nn.Linear(config.width, config.ff_mult * config.width)
        self.act = activation(config.activation)
        self.down = nn.Linear(config.ff_mult * config.width, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.act(self.up(x))))  # (B, T, 4C) inside, (B, T, C) out


class Block(nn.Module):
    """Attention then feed-forward, each with its residual connection and norm."""

    def __init__(self, config, causal: bool):
        super().__init__()
        norm = (lambda: nn.LayerNorm(config.width)) if config.norm == "layer" else nn.Identity
        self.norm1, self.attn = norm(), SelfAttention(config, causal)
        self.norm2, self.ff = norm(), FeedForward(config)
        self.pre, self.residual = config.norm_position == "pre", config.residual

    def _add(self, x: Tensor, y: Tensor) -> Tensor:
        return x + y if self.residual else y

    def forward(self, x: Tensor) -> Tensor:   # (B, T, C) -> (B, T, C)
        if self.pre:
            x = self._add(x, self.attn(self.norm1(x)))
            return self._add(x, self.ff(self.norm2(x)))
        x = self.norm1(self._add(x, self.attn(x)))
        return self.norm2(self._add(x, self.ff(x)))


class _TokenModel(ZooModel):
    """Token and position embeddings, the block stack, and a final norm (pre-norm only)."""

    input_dtype = torch.long

    def __init__(self, config, causal: bool):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.width)
        self.pos_emb = nn.Embedding(config.seq_len, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal) for _ in range(config.depth))
        final = config.norm == "layer" and config.norm_position == "pre"
        self.norm = nn.LayerNorm(config.width) if final else nn.Identity()

    @property
    def input_shape(self) -> tuple:
        return (self.config.seq_len,)

    def example_input(self, batch_size: int = 2) -> Tensor:
        device = self.tok_emb.weight.device
        return torch.randint(0, self.config.vocab_size, (batch_size, self.config.seq_len),
                             device=device)

    def _init_weights(self) -> None:
        for module in self.modules():  # small weights keep the first logits near uniform
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _hidden(self, idx: Tensor) -> Tensor:
        name, c = type(self).__name__, self.config
        if idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise LayerscopeError(f"the {name} takes integer token ids of shape (batch, time); "
                                  f"got {idx.dtype} of shape {tuple(idx.shape)}")
        if idx.shape[1] > c.seq_len:
            raise LayerscopeError(f"the {name} reads at most seq_len={c.seq_len} tokens; got "
                                  f"{idx.shape[1]}; cut the input or build with a larger seq_len")
        if idx.numel() and (idx.min() < 0 or idx.max() >= c.vocab_size):
            raise LayerscopeError(f"token ids must lie in 0..{c.vocab_size - 1} "
                                  f"(vocab_size={c.vocab_size}); got {int(idx.min())}..{int(idx.max())}")
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.dropout(self.tok_emb(idx) + self.pos_emb(positions))  # (B, T) -> (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class GPT(_TokenModel):
    """Decoder-only language model; ``forward`` returns next-token logits at every position."""

    task = "causal-lm"

    def __init__(self, config: GPTConfig):
        super().__init__(config, causal=True)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight   # one matrix embeds and un-embeds

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self._hidden(idx))          # (B, T, C) -> (B, T, vocab_size)

    @torch.no_grad()
    def generate(self, idx: Tensor, n_new: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
        """Append ``n_new`` sampled tokens to ``idx`` (B, T); greedy when ``temperature`` is 0."""
        for _ in range(n_new):
            logits = self(idx[:, -self.config.seq_len:])[:, -1]      # (B, vocab_size)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


class TransformerClassifier(_TokenModel):
    """Bidirectional encoder; mean over positions, then logits (or one regression unit)."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config, causal=False)
        n_out = config.n_classes if config.task == "classification" else 1
        self.head = nn.Linear(config.width, n_out)
        self._init_weights()

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self._hidden(idx).mean(dim=1))  # (B, T, C) -> (B, C) -> (B, n_out)
