"""Walk through one transformer block of a real model, sublayer by sublayer.

Three layouts are understood, recognised by the parts a block holds:

* BERT-like post-norm encoder blocks (``attention.self.query``, ``intermediate``, ``output``):
  attention, residual add, LayerNorm, feed-forward, residual add, LayerNorm.
* Llama-like pre-norm decoder blocks (``input_layernorm``, ``self_attn.q_proj``,
  ``mlp.gate_proj``): RMSNorm, attention with rotary positions and grouped key/value heads,
  residual add, RMSNorm, SwiGLU feed-forward, residual add (Mistral, Qwen, SmolLM2 alike).
* GPT-2 blocks (``ln_1``, ``attn.c_attn``, ``mlp.c_fc``): LayerNorm, causal attention, residual
  add, LayerNorm, feed-forward, residual add.
* The zoo's ``transformer``/``gpt`` blocks (``norm1``, ``attn.qkv``, ``ff.up``), pre- or post-norm.

Every step is computed here from the block's own weights on the input the block really received
(caught with a hook on the real forward); the last number is the max absolute difference
between this step-by-step result and the block's own output.

Example:
    >>> import torch
    >>> from transformers import GPT2Config, GPT2Model
    >>> from layerscope.explain.block import explain_block
    >>> torch.manual_seed(0) and None
    >>> net = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50)).eval()
    >>> r = explain_block(net, net.h[1], torch.randn(1, 5, 32), {}, name="h.1", head=2)
    >>> r.step("attention weights (head 2)").shape, r.check < 1e-5
    ([5, 5], True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.layouts import BLOCK_FAMILIES, attention_parts, block_family, block_roles

from .steps import ExplainResult, Step, step

KINDS = {fam.name: fam.description for fam in BLOCK_FAMILIES}


def block_kind(module: nn.Module) -> str | None:
    """The declared block layout of ``module`` (see :data:`layerscope.layouts.BLOCK_FAMILIES`):
    ``"bert"``, ``"llama"``, ``"gpt2"`` or ``"zoo"``, else None.

    Example:
        >>> from torch import nn
        >>> block_kind(nn.Linear(2, 2)) is None
        True
    """
    fam = block_family(module)
    if fam is None or (fam.name == "zoo" and not hasattr(attention_parts(module).module, "heads")):
        return None
    return fam.name


# --- the operations, written out -----------------------------------------------------------------


def _linear(x: Tensor, module: nn.Module) -> Tensor:
    """``x·Wᵀ + b`` for nn.Linear; ``x·W + b`` for GPT-2's Conv1D (weights stored in × out)."""
    if isinstance(module, nn.Linear):
        y = x @ module.weight.T
    else:
        y = x @ module.weight
    return y if module.bias is None else y + module.bias


def _layer_norm(x: Tensor, module: nn.Module) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + module.eps)
    if module.weight is not None:
        y = y * module.weight
    if getattr(module, "bias", None) is not None:
        y = y + module.bias
    return y


def _rms_norm(x: Tensor, module: nn.Module) -> Tensor:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return module.weight * y.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _heads(x: Tensor, n: int, d: int) -> Tensor:
    """(B, T, n·d) -> (B, n, T, d)."""
    return x.view(x.shape[0], x.shape[1], n, d).transpose(1, 2)


def _mask(batch_mask: Tensor | None, B: int, T: int, causal: bool, dtype, device) -> Tensor:
    """Additive (B, 1, T, T) mask: 0 where a query may look at a key, a huge negative elsewhere."""
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=device).tril()
    if batch_mask is not None:
        allowed = allowed & batch_mask.bool().to(device)[:, None, None, :]
    out = torch.zeros(B, 1, T, T, dtype=dtype, device=device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)


class _Walk:
    """Collects steps for one item of the batch (item 0) while the full batch is computed."""

    def __init__(self, head: int):
        self.head = head
        self.steps: list[Step] = []
        self.tensors: dict[str, Tensor] = {}

    def add(self, name: str, formula: str, value: Tensor, note: str = "") -> Tensor:
        self.steps.append(step(name, formula, value[0], note))
        self.tensors[name] = value.detach()
        return value


def _attention(w: _Walk, q: Tensor, k: Tensor, v: Tensor, n_heads: int, n_kv: int, d: int,
               scaling: float, mask: Tensor, where: str) -> Tensor:
    """Scores, weights and context of every head; steps for the chosen head. Returns (B, T, n·d)."""
    h = w.head
    if not 0 <= h < n_heads:
        raise LayerscopeError(f"head {h} is out of range: {where} has {n_heads} attention heads "
                              f"(0-{n_heads - 1})")
    group = n_heads // n_kv
    if group > 1:  # grouped-query attention: each key/value head serves `group` query heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    kv_note = f" (key/value head {h // group} of {n_kv}, shared by {group} query heads)" \
        if group > 1 else ""
    scores = (q @ k.transpose(-1, -2)) * scaling + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    context = weights @ v
    scale = f"1/√{d}" if abs(scaling * math.sqrt(d) - 1) < 1e-9 else f"1/√{d}, rescaled"
    w.add(f"attention scores (head {h})",
          f"Q_h·K_hᵀ × {scaling:.4g} (= {scale}) + mask{kv_note}; rows = queries, columns = keys",
          scores[:, h])
    w.add(f"attention weights (head {h})", "softmax over each row of the scores (rows sum to 1)",
          weights[:, h])
    w.tensors["attention weights (all heads)"] = weights.detach()
    B, _, T, _ = context.shape
    out = context.transpose(1, 2).reshape(B, T, n_heads * d)
    return w.add("attention context", f"weights·V for all {n_heads} heads, concatenated "
                 f"({n_heads}×{d} = {n_heads * d})", out)


def _bert(w: _Walk, block: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    roles, cfg = block_roles(block), getattr(block, "config", None)
    att, ffn, (norm1, norm2) = roles.attention, roles.ffn, (m for _, m in roles.norms)
    if any(getattr(m, "position_embedding_type", None) not in ("absolute", None)
           for m in att.module.modules()):
        raise LayerscopeError("this BERT block uses relative position attention, which the "
                              "walk-through does not cover; explain a model with absolute positions")
    n, d = att.n_heads, att.head_dim
    q = w.add("Q", "x·W_Qᵀ + b_Q", _linear(x, att.q))
    k = w.add("K", "x·W_Kᵀ + b_K", _linear(x, att.k))
    v = w.add("V", "x·W_Vᵀ + b_V", _linear(x, att.v))
    ctx = _attention(w, _heads(q, n, d), _heads(k, n, d), _heads(v, n, d), n, n, d,
                     1 / math.sqrt(d), mask, "this block")
    a = w.add("attention output", "context·W_Oᵀ + b_O (output projection)", _linear(ctx, att.o))
    r1 = w.add("residual add 1", "x + attention output", x + a)
    h1 = w.add("norm 1", "LayerNorm: (r − mean)/√(var + ε)·γ + β (post-norm)", _layer_norm(r1, norm1))
    up = w.add("ffn up", f"h·W_upᵀ + b_up ({_width(ffn.up)} units)", _linear(h1, ffn.up))
    act_name = getattr(cfg, "hidden_act", type(ffn.act).__name__)
    g = w.add("ffn activation", f"{act_name}, element by element", ffn.act(up))
    down = w.add("ffn down", "a·W_downᵀ + b_down", _linear(g, ffn.down))
    r2 = w.add("residual add 2", "norm 1 + ffn down", h1 + down)
    return w.add("norm 2", "LayerNorm (post-norm): the block's output", _layer_norm(r2, norm2))


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.weight.shape[-1]


def _llama(w: _Walk, block: nn.Module, x: Tensor, mask: Tensor, kwargs: dict) -> Tensor:
    roles = block_roles(block)
    parts, mlp, (norm1, norm2) = roles.attention, roles.ffn, (m for _, m in roles.norms)
    att = parts.module
    cfg = getattr(att, "config", None)
    d = parts.head_dim
    n = parts.q.out_features // d
    n_kv = parts.k.out_features // d
    pos = kwargs.get("position_embeddings")
    if pos is None:
        raise LayerscopeError(
            f"the block {type(block).__name__} did not receive rotary position embeddings; "
            f"explain it through its whole model so the positions are computed")
    cos, sin = (t.to(x.dtype) for t in pos)
    h0 = w.add("norm 1", "RMSNorm: x/√(mean(x²) + ε)·γ (pre-norm)", _rms_norm(x, norm1))
    q = w.add("Q", f"h·W_Qᵀ ({n} heads × {d})", _linear(h0, parts.q))
    k = w.add("K", f"h·W_Kᵀ ({n_kv} key/value heads × {d})", _linear(h0, parts.k))
    v = w.add("V", f"h·W_Vᵀ ({n_kv} key/value heads × {d})", _linear(h0, parts.v))
    qh, kh = _heads(q, n, d), _heads(k, n_kv, d)
    if hasattr(att, "q_norm") and hasattr(att, "k_norm"):
        qh, kh = _rms_norm(qh, att.q_norm), _rms_norm(kh, att.k_norm)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    qh = qh * c + _rotate_half(qh) * s
    kh = kh * c + _rotate_half(kh) * s
    B, T = x.shape[:2]
    w.add("Q rotated", "rotary positions: q·cos(θ_t) + rotate_half(q)·sin(θ_t)",
          qh.transpose(1, 2).reshape(B, T, n * d))
    w.add("K rotated", "rotary positions: k·cos(θ_t) + rotate_half(k)·sin(θ_t)",
          kh.transpose(1, 2).reshape(B, T, n_kv * d))
    ctx = _attention(w, qh, kh, _heads(v, n_kv, d), n, n_kv, d, att.scaling, mask, "this block")
    a = w.add("attention output", "context·W_Oᵀ (output projection)", _linear(ctx, parts.o))
    r1 = w.add("residual add 1", "x + attention output", x + a)
    h1 = w.add("norm 2", "RMSNorm (pre-norm)", _rms_norm(r1, norm2))
    act_name = getattr(cfg, "hidden_act", None) or type(mlp.act).__name__
    gate = w.add("ffn gate", f"h·W_gateᵀ ({_width(mlp.gate)} units)", _linear(h1, mlp.gate))
    up = w.add("ffn up", f"h·W_upᵀ ({_width(mlp.up)} units)", _linear(h1, mlp.up))
    g = w.add("ffn activation", f"{act_name}(gate) × up (SwiGLU)", mlp.act(gate) * up)
    down = w.add("ffn down", "a·W_downᵀ", _linear(g, mlp.down))
    return w.add("residual add 2", "residual add 1 + ffn down: the block's output", r1 + down)


def _gpt2(w: _Walk, block: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    roles = block_roles(block)
    parts, mlp, (norm1, norm2) = roles.attention, roles.ffn, (m for _, m in roles.norms)
    att = parts.module
    n, d = parts.n_heads, parts.head_dim
    h0 = w.add("norm 1", "LayerNorm: (x − mean)/√(var + ε)·γ + β (pre-norm)", _layer_norm(x, norm1))
    qkv = _linear(h0, parts.qkv)
    q, k, v = qkv.split(att.split_size, dim=2)
    w.add("Q", "h·W_Q + b_Q (first third of c_attn)", q)
    w.add("K", "h·W_K + b_K (second third of c_attn)", k)
    w.add("V", "h·W_V + b_V (last third of c_attn)", v)
    ctx = _attention(w, _heads(q, n, d), _heads(k, n, d), _heads(v, n, d), n, n, d, att.scaling,
                     mask, "this block")
    a = w.add("attention output", "context·W_O + b_O (c_proj)", _linear(ctx, parts.o))
    r1 = w.add("residual add 1", "x + attention output", x + a)
    h1 = w.add("norm 2", "LayerNorm (pre-norm)", _layer_norm(r1, norm2))
    up = w.add("ffn up", f"h·W_up + b_up ({_width(mlp.up)} units)", _linear(h1, mlp.up))
    act_name = getattr(getattr(mlp.module, "config", None), "activation_function", None) \
        or type(mlp.act).__name__
    g = w.add("ffn activation", f"{act_name}, element by element", mlp.act(up))
    down = w.add("ffn down", "a·W_down + b_down", _linear(g, mlp.down))
    return w.add("residual add 2", "residual add 1 + ffn down: the block's output", r1 + down)


def _zoo(w: _Walk, block: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    roles = block_roles(block)
    parts, ff, (norm1_m, norm2_m) = roles.attention, roles.ffn, (m for _, m in roles.norms)
    D = x.shape[-1]
    n = parts.n_heads
    d = D // n

    def norm(name, value, module, label):
        if isinstance(module, nn.Identity):
            return value
        return w.add(name, f"LayerNorm: (x − mean)/√(var + ε)·γ + β ({label})",
                     _layer_norm(value, module))

    def add(name, x_, y_, what):
        if not block.residual:
            return y_
        return w.add(name, f"{what} (residual connection)", x_ + y_)

    pre = roles.norm_position == "pre"
    h = norm("norm 1", x, norm1_m, "pre-norm") if pre else x
    q, k, v = _linear(h, parts.qkv).split(D, dim=2)
    w.add("Q", "h·W_Qᵀ + b_Q (first third of qkv)", q)
    w.add("K", "h·W_Kᵀ + b_K (second third of qkv)", k)
    w.add("V", "h·W_Vᵀ + b_V (last third of qkv)", v)
    ctx = _attention(w, _heads(q, n, d), _heads(k, n, d), _heads(v, n, d), n, n, d,
                     1 / math.sqrt(d), mask, "this block")
    a = w.add("attention output", "context·W_Oᵀ + b_O (proj)", _linear(ctx, parts.o))
    r1 = add("residual add 1", x, a, "x + attention output")
    if not pre:
        r1 = norm("norm 1", r1, norm1_m, "post-norm")
    h = norm("norm 2", r1, norm2_m, "pre-norm") if pre else r1
    up = w.add("ffn up", f"h·W_upᵀ + b_up ({_width(ff.up)} units)", _linear(h, ff.up))
    g = w.add("ffn activation", f"{type(ff.act).__name__}, element by element", ff.act(up))
    down = w.add("ffn down", "a·W_downᵀ + b_down", _linear(g, ff.down))
    y = add("residual add 2", r1, down, "residual add 1 + ffn down")
    if not pre:
        y = norm("norm 2", y, norm2_m, "post-norm")
    return y


def _is_decoder(model: nn.Module | None, block: nn.Module, kind: str) -> bool:
    if kind in ("llama", "gpt2"):
        return True
    if kind == "zoo":
        return bool(attention_parts(block).module.causal)
    return bool(getattr(getattr(model, "config", None), "is_decoder", False))


def explain_block(model: nn.Module | None, block: nn.Module, x: Tensor, kwargs: dict, *,
                  name: str, head: int = 0, output: Tensor | None = None,
                  batch_mask: Tensor | None = None, inputs: str = "") -> ExplainResult:
    """Step through ``block`` on its input ``x`` (B, T, D); compare with ``output`` (or the block's own).

    ``kwargs`` are the keyword arguments the block received in the real forward (Llama-like blocks
    need ``position_embeddings`` from there); ``batch_mask`` is the (B, T) attention mask.
    """
    kind = block_kind(block)
    if kind is None:
        raise LayerscopeError(
            f"layer {name!r} is a {type(block).__name__}, which explain cannot walk; it walks "
            f"{'; '.join(KINDS.values())}; MLP layers (linear + activation); CNN layers (conv, "
            f"norm, activation, pool)")
    if x.dim() != 3:
        raise LayerscopeError(f"layer {name!r} received a {x.dim()}-d input; a transformer block "
                              f"takes (batch, tokens, width)")
    with torch.no_grad():
        if output is None:
            from .capture import check_eval

            check_eval(block, name)
            out = block(x, **kwargs)
            output = out[0] if isinstance(out, tuple) else out
        B, T, D = x.shape
        mask = _mask(batch_mask, B, T, _is_decoder(model, block, kind), x.dtype, x.device)
        w = _Walk(head)
        w.add("input", f"the hidden states entering the block ({T} tokens × {D})", x)
        if kind == "bert":
            y = _bert(w, block, x, mask)
        elif kind == "llama":
            y = _llama(w, block, x, mask, kwargs)
        elif kind == "gpt2":
            y = _gpt2(w, block, x, mask)
        else:
            y = _zoo(w, block, x, mask)
        check = float((y - output).abs().max())
    params = sum(p.numel() for p in block.parameters())
    attn_params = sum(p.numel() for p in attention_parts(block).module.parameters())
    note = (f"1 layer (one {KINDS[kind]}): an attention sublayer ({attn_params:,} parameters) and "
            f"a feed-forward sublayer, each with its norm and residual add; people count one block "
            f"as one layer of the model")
    return ExplainResult(
        title=f"{name} ({type(block).__name__}, {KINDS[kind]})", layer_kind="transformer-block",
        layer=name, steps=w.steps, params=int(params), layers_note=note, check=check,
        inputs=inputs, head=head, tensors={**w.tensors, "output": output.detach(),
                                           "step-by-step output": y.detach()})


__all__ = ["explain_block", "block_kind", "KINDS"]
