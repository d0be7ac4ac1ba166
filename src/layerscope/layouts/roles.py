"""The roles of a model's parts: embeddings, final norm, output head, and inside a block the
attention (q, k, v, o or a fused qkv; heads and key/value heads), the feed-forward (gate, up,
down), the norms and the residual points; the config keys that hold depth and widths.

Two ways to know a role, tried in this order and always stated in ``rule``:

* **declared**: :data:`BLOCK_FAMILIES` lists the module paths of known block layouts (BERT-like
  post-norm encoders, Llama-like decoders, GPT-2, the zoo's transformer); a block matches a
  family when every declared path exists in it. Model-level roles are declared by the model
  itself when it can (Hugging Face ``get_output_embeddings`` / ``get_input_embeddings``) or by
  the conventional attribute names in :data:`FINAL_NORM_NAMES` / :data:`HEAD_NAMES`.
* **generic**: inside a block, the attention is the first submodule named or classed like one
  (``attn``, ``attention``, ``*Attention``) and its projections are the first leaves with a
  conventional name (:data:`Q_NAMES` ...); the feed-forward is the first submodule outside the
  attention named or classed like one (``mlp``, ``ffn``, ``*MLP``, ``*MoE``) or, without one, the
  first up/down projections outside the attention; norms are the submodules whose class is a
  norm. Around the blocks, the final norm is the first norm after the last block and the output
  head is a linear layer after the blocks whose weight is the input embedding's (tied) or whose
  width out is the vocabulary.

A role that cannot be found is ``None``; the caller that needs it raises a one-line error naming
the role and the flag that supplies it (:func:`require`).

Example:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from layerscope.layouts import attention_parts, final_norm, output_head
    >>> lm = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=4, vocab_size=50))
    >>> type(final_norm(lm)).__name__, output_head(lm).out_features
    ('LayerNorm', 50)
    >>> att = attention_parts(lm.transformer.h[0])
    >>> att.fused, att.n_heads, att.n_kv_heads, att.head_dim
    (True, 4, 4, 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from layerscope.errors import LayerscopeError

from .discover import declared_module

# --- declared names ---------------------------------------------------------------------------

#: conventional attribute names of the norm after the last block
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm",
                    "final_norm_layer", "ln_final", "layer_norm", "layernorm", "post_layernorm",
                    "final_ln", "norm_out", "ln_out", "post_norm")
#: conventional attribute names of an output head / unembedding
HEAD_NAMES = ("lm_head", "embed_out", "output", "head", "proj_out", "lm_output", "output_layer",
              "logits", "out")
#: conventional names of the block stack's container when several exist (for stack names)
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "selfattention",
                   "self_attn_layer", "mixer_attn", "attention_layer", "SelfAttention")
FFN_NAMES = ("mlp", "ffn", "feed_forward", "feedforward", "ff", "block_sparse_moe", "moe",
             "ffn_layer", "mlp_block", "channel_mlp", "DenseReluDense", "fc", "ffwd",
             "feed_forward_layer", "dense_layer")
Q_NAMES = ("q_proj", "query", "q", "q_lin", "wq", "query_proj", "to_q", "q_linear", "linear_q",
           "q_a_proj")
K_NAMES = ("k_proj", "key", "k", "k_lin", "wk", "key_proj", "to_k", "k_linear", "linear_k")
V_NAMES = ("v_proj", "value", "v", "v_lin", "wv", "value_proj", "to_v", "v_linear", "linear_v")
O_NAMES = ("o_proj", "out_proj", "o", "out_lin", "wo", "dense", "c_proj", "proj", "to_out",
           "output_proj", "o_linear", "linear_out", "out", "proj_out", "attn_out")
QKV_NAMES = ("qkv_proj", "c_attn", "qkv", "Wqkv", "query_key_value", "W_pack", "qkv_linear",
             "att_proj", "in_proj", "to_qkv", "qkv_lin", "kv_a_proj_with_mqa")
GATE_NAMES = ("gate_proj", "wi_0", "gate", "fc_gate", "w_gate", "gate_linear")
UP_NAMES = ("up_proj", "fc1", "c_fc", "wi", "wi_1", "dense_h_to_4h", "lin1", "fc_in", "up",
            "w_in", "gate_up_proj", "fc_1", "linear1", "ff_proj", "in_proj", "intermediate_dense",
            "dense1", "w12")
DOWN_NAMES = ("down_proj", "fc2", "c_proj", "wo", "dense_4h_to_h", "lin2", "fc_out", "down",
              "w_out", "fc_2", "linear2", "ff_out", "out_proj", "output_dense", "dense2", "w3",
              "proj")
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_attn_heads",
               "n_heads_q", "nheads", "h")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv", "num_kv",
             "n_kv_head", "kv_heads")
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_k", "dim_head",
                   "key_value_proj_dim", "head_dimension")

#: config keys that hold a depth (a layer count), most specific first
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers",
              "decoder_layers", "num_decoder_layers", "num_encoder_layers", "depth", "n_layers",
              "num_blocks", "layers")
#: config keys that hold the feed-forward width
FFN_WIDTH_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")


@dataclass(frozen=True)
class BlockFamily:
    """A declared block layout: the module path of each role, relative to the block."""

    name: str
    description: str
    attention: str
    o: str
    up: str
    down: str
    norms: tuple[str, ...]
    norm_position: str            # "pre" | "post" | "attribute" (the block says, as ``pre``)
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    gate: str | None = None
    ffn: str | None = None
    act: str | None = None
    attrs: tuple[str, ...] = ()   # plain attributes the block must also have

    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.attention, self.q, self.k, self.v, self.qkv, self.o,
                                 self.gate, self.up, self.down, self.ffn, *self.norms) if p)


#: block layouts known by their module paths (explain walks these step by step)
BLOCK_FAMILIES: tuple[BlockFamily, ...] = (
    BlockFamily("bert", "BERT-like encoder block (post-norm)", attention="attention",
                q="attention.self.query", k="attention.self.key", v="attention.self.value",
                o="attention.output.dense", up="intermediate.dense", down="output.dense",
                act="intermediate.intermediate_act_fn",
                norms=("attention.output.LayerNorm", "output.LayerNorm"), norm_position="post"),
    BlockFamily("llama", "Llama-like decoder block (pre-norm RMSNorm, rotary, grouped KV, SwiGLU)",
                attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj",
                v="self_attn.v_proj", o="self_attn.o_proj", ffn="mlp", gate="mlp.gate_proj",
                up="mlp.up_proj", down="mlp.down_proj", act="mlp.act_fn",
                norms=("input_layernorm", "post_attention_layernorm"), norm_position="pre"),
    BlockFamily("gpt2", "GPT-2 block (pre-norm)", attention="attn", qkv="attn.c_attn",
                o="attn.c_proj", ffn="mlp", up="mlp.c_fc", down="mlp.c_proj", act="mlp.act",
                norms=("ln_1", "ln_2"), norm_position="pre"),
    BlockFamily("zoo", "zoo transformer block (pre- or post-norm)", attention="attn",
                qkv="attn.qkv", o="attn.proj", ffn="ff", up="ff.up", down="ff.down", act="ff.act",
                norms=("norm1", "norm2"), norm_position="attribute", attrs=("pre", "residual")),
)


# --- the parts ----------------------------------------------------------------------------------


@dataclass
class AttentionParts:
    """A block's attention: the module, its projections (separate q/k/v or a fused ``qkv``; ``o``),
    the number of query heads, key/value heads and the head size. Paths are relative to the block.
    """

    path: str
    module: nn.Module
    q: nn.Module | None = None
    k: nn.Module | None = None
    v: nn.Module | None = None
    o: nn.Module | None = None
    qkv: nn.Module | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    paths: dict = field(default_factory=dict)
    rule: str = ""

    @property
    def fused(self) -> bool:
        return self.qkv is not None


@dataclass
class FFNParts:
    """A block's feed-forward: the module (None when its layers sit directly in the block), the
    input projections (``gate``, ``up``), the output projection ``down``, the activation, and
    whether it is a mixture of experts (then the projections, when found, are expert 0's)."""

    path: str | None
    module: nn.Module | None
    up: nn.Module | None = None
    down: nn.Module | None = None
    gate: nn.Module | None = None
    act: object = None
    experts: bool = False
    paths: dict = field(default_factory=dict)
    rule: str = ""

    @property
    def inputs(self) -> list[nn.Module]:
        """The input projections whose rows are the hidden units (gate then up)."""
        return [m for m in (self.gate, self.up) if m is not None]


@dataclass
class BlockRoles:
    """The roles inside one block: family (a declared one, or "generic"), attention,
    feed-forward, norms in forward order, norm position and the residual points."""

    family: str
    attention: AttentionParts | None
    ffn: FFNParts | None
    norms: list[tuple[str, nn.Module]]
    norm_position: str | None
    residuals: tuple[str, ...]
    rule: str
    description: str = ""
    mixer: MixerParts | None = None
    ffn_absent: bool = False       # the block has no feed-forward by design (all weights in the
                                   # mixer and the norms: Mamba-like blocks)


# --- helpers ------------------------------------------------------------------------------------


def _get(module: nn.Module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _has_all(module: nn.Module, paths) -> bool:
    return all(_get(module, p) is not None for p in paths)


def _leaf_like(module: nn.Module) -> bool:
    """A module holding a weight of its own (Linear, HF Conv1D, Conv)."""
    return hasattr(module, "weight") and next(module.parameters(recurse=False), None) is not None


def _is_norm(module: nn.Module) -> bool:
    """A norm layer: torch's own, or a module classed ``*Norm*`` with no submodules (its weight,
    if any, its own: OLMo's parameter-free LayerNorm counts)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
        return True
    return "norm" in type(module).__name__.lower() and next(module.children(), None) is None


def _last(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _first_leaf(module: nn.Module, names, skip: tuple[str, ...] = ()) -> tuple[str, nn.Module] | None:
    for path, sub in module.named_modules():
        if not path or any(path == s or path.startswith(s + ".") for s in skip):
            continue
        if _last(path) in names and _leaf_like(sub):
            return path, sub
    return None


def _out_units(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.nf)
    w = getattr(module, "weight", None)
    return int(w.shape[0]) if w is not None and w.dim() >= 2 else None


def _int_attr(modules, names) -> int | None:
    for m in modules:
        if m is None:
            continue
        for name in names:
            value = getattr(m, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _heads(att: AttentionParts, config) -> None:
    inner = [m for m in att.module.modules() if not _leaf_like(m)]
    owners = [*inner, getattr(att.module, "config", None), config]
    att.n_heads = _int_attr(owners, _HEAD_ATTRS[:-1]) or _int_attr([config], ("num_attention_heads",))
    att.head_dim = _int_attr(inner, _HEAD_DIM_ATTRS)
    q_out = _out_units(att.q) if att.q is not None else None
    if att.head_dim is None and att.n_heads and q_out and q_out % att.n_heads == 0:
        att.head_dim = q_out // att.n_heads
    if att.head_dim is None and att.n_heads and att.qkv is not None:
        total = _out_units(att.qkv)
        if total and total % (3 * att.n_heads) == 0:
            att.head_dim = total // (3 * att.n_heads)
    if att.n_heads is None and att.head_dim and q_out and q_out % att.head_dim == 0:
        att.n_heads = q_out // att.head_dim
    kv = _int_attr(inner, _KV_ATTRS)
    if kv is None and att.k is not None and att.head_dim:
        k_out = _out_units(att.k)
        if k_out and k_out % att.head_dim == 0:
            kv = k_out // att.head_dim
    if kv is None:
        kv = _int_attr(owners[1:], _KV_ATTRS)
    att.n_kv_heads = kv or att.n_heads


def _config_of(block: nn.Module, config):
    return config if config is not None else getattr(block, "config", None)


# --- inside a block -----------------------------------------------------------------------------


def block_family(block: nn.Module) -> BlockFamily | None:
    """The declared family whose every path (and attribute) ``block`` has, else None.

    Example:
        >>> from torch import nn
        >>> block_family(nn.Linear(2, 2)) is None
        True
    """
    for fam in BLOCK_FAMILIES:
        if _has_all(block, fam.paths()) and all(hasattr(block, a) for a in fam.attrs):
            return fam
    return None


def _declared_attention(block: nn.Module, fam: BlockFamily, config) -> AttentionParts:
    paths = {r: getattr(fam, r) for r in ("q", "k", "v", "o", "qkv") if getattr(fam, r)}
    att = AttentionParts(fam.attention, block.get_submodule(fam.attention),
                         **{r: block.get_submodule(p) for r, p in paths.items()}, paths=paths,
                         rule=f"declared ({fam.name} layout)")
    _heads(att, _config_of(block, config))
    return att


def _find_attention_module(block: nn.Module) -> tuple[str, nn.Module] | None:
    for path, sub in block.named_modules():
        if not path:
            continue
        low, cls = _last(path).lower(), type(sub).__name__.lower()
        named = _last(path) in ATTENTION_NAMES or low in ATTENTION_NAMES
        classed = ("attention" in cls or "attn" in cls) and "norm" not in cls
        if (named or classed) and "cross" not in low and any(True for _ in sub.parameters()):
            return path, sub
    return None


def attention_parts(block: nn.Module, config=None) -> AttentionParts | None:
    """The attention inside ``block`` (see :class:`AttentionParts`), or None when it has none.

    Example:
        >>> from transformers import LlamaConfig, LlamaModel
        >>> m = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                            num_attention_heads=4, num_key_value_heads=2, vocab_size=50))
        >>> a = attention_parts(m.layers[0])
        >>> a.paths["q"], a.n_heads, a.n_kv_heads, a.head_dim
        ('self_attn.q_proj', 4, 2, 8)
    """
    fam = block_family(block)
    if fam is not None:
        return _declared_attention(block, fam, config)
    found = _find_attention_module(block)
    if found is None:
        return None
    path, module = found
    att = AttentionParts(path, module, rule="generic: the first submodule named or classed as "
                                            "attention; projections by conventional names")
    for role, names in (("qkv", QKV_NAMES), ("q", Q_NAMES), ("k", K_NAMES), ("v", V_NAMES)):
        hit = _first_leaf(module, names)
        if hit is not None:
            setattr(att, role, hit[1])
            att.paths[role] = f"{path}.{hit[0]}"
    taken = {id(getattr(att, r)) for r in ("q", "k", "v", "qkv") if getattr(att, r) is not None}
    for sub_path, sub in module.named_modules():
        if sub_path and _last(sub_path) in O_NAMES and _leaf_like(sub) and id(sub) not in taken:
            att.o, att.paths["o"] = sub, f"{path}.{sub_path}"
            break
    if att.o is None:  # BERT-like: the output projection sits beside the attention's inner module
        hit = _first_leaf(block, O_NAMES, skip=())
        if hit is not None and hit[0].startswith(path + ".") and id(hit[1]) not in taken:
            att.o, att.paths["o"] = hit[1], hit[0]
    _heads(att, _config_of(block, config))
    return att


MIXER_NAMES = ("mixer", "mamba", "ssm", "linear_attn", "time_mix", "token_mixer", "recurrent",
               "temporal_block", "retention", "rwkv", "attention_mixer", "conv_mixer", "hyena",
               "linear_attention", "gated_delta_net", "short_conv")
_MIXER_CLASSES = ("mixer", "mamba", "ssm", "recurrent", "rwkv", "retention", "timemix", "lstm",
                  "linearattention", "deltanet", "gateddelta", "shortconv", "hyena", "lightning")


@dataclass
class MixerParts:
    """The part of a block that mixes positions: ``kind`` "attention", "state-space" or
    "recurrent"; ``attention`` holds the projections when it is attention."""

    path: str
    module: nn.Module
    kind: str
    attention: AttentionParts | None = None
    rule: str = ""


def mixer_parts(block: nn.Module, config=None) -> MixerParts | None:
    """The token mixer of ``block``: its attention, else a state-space / recurrent mixer (a
    submodule named or classed like one: ``mixer``, ``*Mamba*``, ``*SSM*``, ``*Recurrent*``...).

    Example:
        >>> from transformers import MambaConfig, MambaModel
        >>> m = MambaModel(MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50,
        ...                            state_size=4, expand=2))
        >>> p = mixer_parts(m.layers[0])
        >>> p.path, p.kind
        ('mixer', 'state-space')
    """
    att = attention_parts(block, config)
    if att is not None:
        return MixerParts(att.path, att.module, "attention", att, att.rule)
    for path, sub in block.named_modules():
        if not path or not any(True for _ in sub.parameters()) or _is_norm(sub):
            continue
        low, cls = _last(path).lower(), type(sub).__name__.lower()
        if isinstance(sub, (nn.LSTM, nn.GRU, nn.RNN)) or "recurrent" in cls or "rnn" in low:
            return MixerParts(path, sub, "recurrent", rule="generic: a recurrent submodule")
        if low in MIXER_NAMES or any(c in cls for c in _MIXER_CLASSES):
            return MixerParts(path, sub, "state-space", rule="generic: a submodule named or "
                                                             "classed as a token mixer")
    return None


def ffn_parts(block: nn.Module, config=None) -> FFNParts | None:
    """The feed-forward inside ``block`` (see :class:`FFNParts`), or None when it has none.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                          intermediate_size=32, vocab_size=50))
        >>> f = ffn_parts(m.encoder.layer[0])
        >>> f.paths["up"], f.paths["down"], f.up.out_features
        ('intermediate.dense', 'output.dense', 32)
    """
    fam = block_family(block)
    if fam is not None:
        paths = {r: getattr(fam, r) for r in ("gate", "up", "down") if getattr(fam, r)}
        return FFNParts(fam.ffn, block.get_submodule(fam.ffn) if fam.ffn else None,
                        act=_get(block, fam.act) if fam.act else None, paths=paths,
                        rule=f"declared ({fam.name} layout)",
                        **{r: block.get_submodule(p) for r, p in paths.items()})
    att = _find_attention_module(block)
    mixer = None if att else mixer_parts(block, config)
    skip = (att[0],) if att else ((mixer.path,) if mixer else ())
    module_hit = None
    for path, sub in block.named_modules():
        if not path or any(path == s or path.startswith(s + ".") for s in skip):
            continue
        low, cls = _last(path), type(sub).__name__.lower()
        if (low in FFN_NAMES or low.lower() in FFN_NAMES or "mlp" in cls or "feedforward" in cls
                or "moe" in cls or "ffn" in cls) and not _is_norm(sub) and any(True for _ in sub.parameters()):
            module_hit = (path, sub)
            break
    if module_hit is not None:
        path, module = module_hit
        experts = _get(module, "experts")
        inner = module
        if isinstance(experts, (nn.ModuleList, nn.Sequential)) and len(experts):
            inner, prefix = experts[0], f"{path}.experts.0"
        else:
            prefix = path
        ffn = FFNParts(path, module, experts=experts is not None,
                       rule="generic: the first submodule outside the attention named or classed "
                            "as a feed-forward; projections by conventional names")
        _fill_ffn(ffn, inner, prefix)
        return ffn
    ffn = FFNParts(None, None, rule="generic: up/down projections by conventional names outside "
                                    "the attention")
    _fill_ffn(ffn, block, "", skip=skip)
    if ffn.up is None and ffn.down is None and ffn.paths.get("up") is None:
        inter, out = _get(block, "intermediate.dense"), _get(block, "output.dense")
        if inter is not None and out is not None:
            ffn.up, ffn.down = inter, out
            ffn.paths = {"up": "intermediate.dense", "down": "output.dense"}
    return ffn if (ffn.up is not None and ffn.down is not None) else None


def _fill_ffn(ffn: FFNParts, module: nn.Module, prefix: str, skip=()) -> None:
    def join(p):
        return f"{prefix}.{p}" if prefix else p

    names = {p for p, _ in module.named_modules() if p}
    w = {_last(p): p for p in names}
    if {"w1", "w2", "w3"} <= set(w):  # Llama-original naming: w1 gate, w3 up, w2 down
        roles = {"gate": w["w1"], "up": w["w3"], "down": w["w2"]}
    else:
        roles = {}
        for role, table in (("gate", GATE_NAMES), ("up", UP_NAMES)):
            hit = _first_leaf(module, table, skip=skip)
            if hit is not None:
                roles[role] = hit[0]
        taken = set(roles.values())
        for p, sub in module.named_modules():
            if (p and p not in taken and _last(p) in DOWN_NAMES and _leaf_like(sub)
                    and not any(p == s or p.startswith(s + ".") for s in skip)):
                roles["down"] = p
                break
        if "up" not in roles and "gate" in roles and "down" in roles:
            roles["up"] = roles.pop("gate")
    for role, p in roles.items():
        setattr(ffn, role, module.get_submodule(p))
        ffn.paths[role] = join(p)
    for name in ("act_fn", "act", "activation", "activation_fn", "intermediate_act_fn"):
        if hasattr(module, name):
            ffn.act = getattr(module, name)
            break


def block_norms(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """The norms inside ``block`` in module order, as (path, module); declared ones for known
    layouts (which may be ``nn.Identity`` when a model is built without norms).

    Example:
        >>> from transformers import GPT2Config, GPT2Model
        >>> m = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
        >>> [p for p, _ in block_norms(m.h[0])]
        ['ln_1', 'ln_2']
    """
    fam = block_family(block)
    if fam is not None:
        return [(p, block.get_submodule(p)) for p in fam.norms]
    att = _find_attention_module(block)
    inner_att = att[0] if att else None
    out = []
    for path, sub in block.named_modules():
        if not path or not _is_norm(sub):
            continue
        if inner_att and path.startswith(inner_att + ".") and path.count(".") > inner_att.count(".") + 1:
            continue  # q/k norms deep inside the attention are not the block's norms
        out.append((path, sub))
    return out


def block_roles(block: nn.Module, config=None) -> BlockRoles:
    """All the roles inside ``block``; ``rule`` says how they were found.

    Example:
        >>> from transformers import GPT2Config, GPT2Model
        >>> m = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
        >>> r = block_roles(m.h[0])
        >>> r.family, r.norm_position, r.residuals
        ('gpt2', 'pre', ('input', 'after attention', 'output'))
    """
    fam = block_family(block)
    att, ffn, norms = attention_parts(block, config), ffn_parts(block, config), block_norms(block)
    mixer = mixer_parts(block, config)
    if fam is not None:
        position = ("pre" if getattr(block, "pre", True) else "post") \
            if fam.norm_position == "attribute" else fam.norm_position
        return BlockRoles(fam.name, att, ffn, norms, position, ("input", "after attention", "output"),
                          rule=f"declared: the {fam.name} block layout ({', '.join(fam.paths())})",
                          description=fam.description, mixer=mixer)
    residuals = ("input", "after attention", "output") if att and ffn else ("input", "output")
    absent = False
    if ffn is None and mixer is not None:
        inside = {id(p) for p in mixer.module.parameters()}
        inside |= {id(p) for _, n in norms for p in n.parameters()}
        absent = all(id(p) in inside for p in block.parameters())
    return BlockRoles("generic", att, ffn, norms, _norm_position(block, att, ffn, norms, config),
                      residuals, mixer=mixer, ffn_absent=absent,
                      rule="generic: " + "; ".join(r for r in (
                          mixer.rule if mixer else "no attention or token mixer",
                          ffn.rule if ffn else ("no feed-forward (by design: every weight is in "
                                                "the mixer or the norms)" if absent
                                                else "no feed-forward found"))))


#: config flags that say the blocks normalise after the residual add (post-norm) when False
_PRE_NORM_FLAGS = ("normalize_before", "do_layer_norm_before", "pre_norm", "prenorm",
                   "encoder_normalize_before", "decoder_normalize_before")


def _norm_position(block, att, ffn, norms, config) -> str | None:
    """"post" when a norm sits beside an output projection (BERT's ``output.LayerNorm`` next to
    ``output.dense``) or the config says the blocks do not normalise first; else None."""
    outs = [p for p in ((att.paths.get("o") if att else None), (ffn.paths.get("down") if ffn else None)) if p]
    parents = {p.rsplit(".", 1)[0] for p in outs if "." in p}
    if any("." in n and n.rsplit(".", 1)[0] in parents for n, _ in norms):
        return "post"
    cfg = _config_of(block, config)
    for flag in _PRE_NORM_FLAGS:
        value = getattr(cfg, flag, None) if cfg is not None else None
        if isinstance(value, bool):
            return "pre" if value else "post"
    return None


# --- around the blocks --------------------------------------------------------------------------


def module_of(model) -> nn.Module:
    """The nn.Module of ``model`` (itself, or a LoadedModel's ``module``)."""
    if isinstance(model, nn.Module):
        return model
    module = getattr(model, "module", None)
    if isinstance(module, nn.Module):
        return module
    raise LayerscopeError(f"expected an nn.Module or a LoadedModel; got {type(model).__name__}")


#: roles a user can name with ``--role ROLE=PATH`` (kept in a LoadedModel's ``meta["roles"]``)
NAMED_ROLES = ("final_norm", "head")


def role_override(model, role: str) -> nn.Module | None:
    """The module a LoadedModel's ``meta["roles"]`` names for ``role`` (``--role head=lm_head``;
    ``final_norm=none`` is an identity), or None when it names none.

    Example:
        >>> from torch import nn
        >>> from layerscope.models import load_model
        >>> loaded = load_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3)))
        >>> loaded.meta["roles"] = {"head": "1"}
        >>> role_override(loaded, "head").out_features
        3
    """
    if isinstance(model, nn.Module):
        return None
    path = ((getattr(model, "meta", None) or {}).get("roles") or {}).get(role)
    if not path:
        return None
    if role == "final_norm" and str(path).lower() == "none":
        return nn.Identity()
    module = module_of(model)
    try:
        return module.get_submodule(path)
    except AttributeError:
        raise LayerscopeError(f"--role {role}={path}: {type(module).__name__} has no module at "
                              f"that path; name a dotted module path such as 'lm_head'") from None


def _found(model: nn.Module, found=None):
    if found is not None:
        return found
    from .discover import find_layout

    try:
        return find_layout(model)
    except LayerscopeError:
        return None


def _input_embedding(model: nn.Module) -> nn.Module | None:
    emb = declared_module(model, "get_input_embeddings")
    if emb is not None:
        return emb
    for _, sub in model.named_modules():
        if isinstance(sub, nn.Embedding):
            return sub
    return None


def embeddings(model, found=None) -> list[tuple[str, nn.Module]]:
    """The embedding tables outside the blocks, as (path, module); the input (token) embedding first.

    Example:
        >>> from transformers import GPT2Config, GPT2Model
        >>> m = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
        >>> [p for p, _ in embeddings(m)]
        ['wte', 'wpe']
    """
    module = module_of(model)
    found = _found(module, found)
    inside = [b.path for b in found.blocks] if found else []
    first = _input_embedding(module)
    out = []
    for path, sub in module.named_modules():
        if not isinstance(sub, nn.Embedding) and sub is not first:
            continue
        if any(path == p or path.startswith(p + ".") for p in inside if p):
            continue
        out.append((path, sub))
    out.sort(key=lambda item: item[1] is not first)
    return out


def output_head(model, found=None) -> nn.Module | None:
    """The output head that maps hidden states to the vocabulary (LM head / unembedding), or None.

    Declared: the model's ``get_output_embeddings()``; then a module named like a head
    (:data:`HEAD_NAMES`) or any linear layer after the blocks, whose weight is the input
    embedding's (tied) or whose width out equals the vocabulary.

    Example:
        >>> from layerscope.zoo.transformer import GPT, GPTConfig
        >>> lm = GPT(GPTConfig(width=16, depth=1, heads=2))
        >>> output_head(lm) is lm.head
        True
    """
    named = role_override(model, "head")
    if named is not None:
        return named
    module = module_of(model)
    head = declared_module(module, "get_output_embeddings")
    if head is not None:
        return head
    emb = _input_embedding(module)
    vocab = emb.weight.shape[0] if emb is not None and hasattr(emb, "weight") else None

    def fits(sub: nn.Module) -> bool:
        w = getattr(sub, "weight", None)
        if w is None or not isinstance(sub, nn.Linear):
            return False
        return (emb is not None and w is getattr(emb, "weight", None)) or (vocab is not None
                                                                          and sub.out_features == vocab)

    for name in HEAD_NAMES:
        sub = getattr(module, name, None)
        if isinstance(sub, nn.Module) and fits(sub):
            return sub
    found = _found(module, found)
    for _, sub in (found.after if found else []):
        if fits(sub):
            return sub
    return None


def final_norm(model, found=None) -> nn.Module | None:
    """The norm applied after the last block (before the head), or None.

    Declared: an attribute with a conventional name (:data:`FINAL_NORM_NAMES`) on the module that
    holds the block stack, on the base model, or on the model (it may be ``nn.Identity`` for a
    model built without it); then the first norm after the last block.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> lm = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, vocab_size=50))
        >>> final_norm(lm) is lm.model.norm
        True
    """
    named = role_override(model, "final_norm")
    if named is not None:
        return named
    module = module_of(model)
    found = _found(module, found)
    owners = []
    if found and found.blocks:
        last = found.blocks[-1].path
        parts = last.split(".")
        for cut in range(len(parts) - 2, -1, -1):  # the stack's owner, then outwards
            owner_path = ".".join(parts[:cut])
            owners.append(module.get_submodule(owner_path) if owner_path else module)
    base = getattr(module, "base_model", None)
    owners += [o for o in (base, module) if isinstance(o, nn.Module)]
    blocks = {id(b.module) for b in found.blocks} if found else set()
    for owner in owners:
        for name in FINAL_NORM_NAMES:
            sub = getattr(owner, name, None)
            if isinstance(sub, nn.Module) and id(sub) not in blocks and not isinstance(
                    sub, (nn.ModuleList, nn.Sequential)) and (_is_norm(sub) or isinstance(sub, nn.Identity)):
                return sub
    for _, sub in (found.after if found else []):
        if _is_norm(sub):
            return sub
    return None


def final_norm_absent(model, found=None) -> str | None:
    """Why ``model`` has no final norm by design (its blocks normalise after the residual add,
    so the last block's output goes to the head as it is), or None.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                          intermediate_size=32, vocab_size=50))
        >>> final_norm_absent(m)
        'post-norm blocks: each block ends with its own norm'

    Otherwise a model is without one when no norm follows the last block at all (none of the
    parts after the blocks holds a norm).
    """
    module = module_of(model)
    found = _found(module, found)
    if not found or not found.blocks or final_norm(module, found) is not None:
        return None
    roles = block_roles(found.blocks[-1].module, getattr(module, "config", None))
    if roles.norm_position == "post":
        return "post-norm blocks: each block ends with its own norm"
    if not any(_is_norm(sub) for _, part in found.after for sub in part.modules()):
        return "no norm follows the last block"
    return None


#: class-name suffixes of Hugging Face heads and the task each implies
TASK_SUFFIXES = (("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
                 ("ForSequenceClassification", "classification"))


def task_of_class_name(name: str) -> str | None:
    """The task a Hugging Face class name implies ("causal-lm", "classification"), or None.

    Example:
        >>> task_of_class_name("LlamaForCausalLM"), task_of_class_name("BertModel")
        ('causal-lm', None)
    """
    for suffix, task in TASK_SUFFIXES:
        if name.endswith(suffix):
            return task
    return None


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether a linear layer stores its weight as (in, out): Hugging Face's ``Conv1D`` (GPT-2).

    Example:
        >>> from torch import nn
        >>> is_transposed_linear(nn.Linear(2, 3))
        False
    """
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


#: config keys of the number of query heads, key/value heads and the head size
HEAD_KEYS = {"heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "head_dim": "head_dim"}


def set_head_counts(config, *, heads: int, kv_heads: int, head_dim: int) -> None:
    """Write the attention's head counts and head size into a Hugging Face ``config``."""
    for role, value in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        setattr(config, HEAD_KEYS[role], value)


def config_head_counts(config) -> tuple[int, int]:
    """(query heads, key/value heads) declared by ``config`` (key/value default: the query heads)."""
    heads = getattr(config, HEAD_KEYS["heads"])
    return heads, getattr(config, HEAD_KEYS["kv_heads"], None) or heads


def infer_task(model_or_loaded) -> str:
    """The objective family: causal-lm, encoder, classification, regression or other.

    A LoadedModel's own ``task`` wins; else the module's ``task`` attribute (zoo networks); else
    the Hugging Face class name's suffix; a Hugging Face base model taking ``input_ids`` is an
    encoder.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> infer_task(GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)))
        'causal-lm'
    """
    known = ("causal-lm", "encoder", "classification", "regression")
    task = None if isinstance(model_or_loaded, nn.Module) else getattr(model_or_loaded, "task", None)
    if task in known:
        return task
    module = module_of(model_or_loaded)
    own = getattr(module, "task", None)
    if isinstance(own, str) and own in known:
        return own
    cls = type(module).__name__
    if task_of_class_name(cls):
        return task_of_class_name(cls)
    if getattr(module, "config", None) is not None and getattr(module, "main_input_name", None) \
            == "input_ids" and cls.endswith("Model") and getattr(module, "base_model", None) is module:
        return "encoder"
    return task or (own if isinstance(own, str) else None) or "other"


def depth_keys(config, n: int) -> list[str]:
    """The config keys (of :data:`DEPTH_KEYS`) whose value is the layer count ``n``.

    Example:
        >>> from transformers import GPT2Config
        >>> depth_keys(GPT2Config(n_layer=3), 3)  # num_hidden_layers is GPT-2's alias of n_layer
        ['num_hidden_layers', 'n_layer']
    """
    values = config if isinstance(config, dict) else vars(config)
    out = []
    for key in DEPTH_KEYS:
        if key in out:
            continue
        value = values.get(key, getattr(config, key, None) if not isinstance(config, dict) else None)
        if isinstance(value, int) and not isinstance(value, bool) and value == n:
            out.append(key)
    return out


def depth_key(config, n: int) -> str | None:
    """The first config key holding the layer count ``n``, or None."""
    keys = depth_keys(config, n)
    return keys[0] if keys else None


def require(role: str, value, model, needed_by: str = "this analysis"):
    """``value`` if found, else a one-line LayerscopeError naming the role and the flag that
    supplies it (``--role ROLE=PATH``).

    Example:
        >>> from torch import nn
        >>> require("head", None, nn.Linear(2, 2), "the logit lens")
        Traceback (most recent call last):
        ...
        layerscope.errors.LayerscopeError: cannot find the head of Linear, which the logit lens needs; name it with --role head=PATH (a dotted module path)
    """
    if value is None:
        name = type(module_of(model)).__name__
        extra = " or final_norm=none when it has none" if role == "final_norm" else ""
        raise LayerscopeError(f"cannot find the {role.replace('_', ' ')} of {name}, which "
                              f"{needed_by} needs; name it with --role {role}=PATH (a dotted "
                              f"module path{extra})")
    return value


__all__ = ["module_of", "AttentionParts", "FFNParts", "BlockRoles", "BlockFamily", "BLOCK_FAMILIES",
           "MixerParts", "mixer_parts", "final_norm_absent", "role_override", "NAMED_ROLES", "task_of_class_name",
           "is_transposed_linear", "set_head_counts", "config_head_counts", "HEAD_KEYS",
           "attention_parts", "ffn_parts", "block_norms", "block_roles", "block_family",
           "final_norm", "output_head", "embeddings", "infer_task", "depth_key", "depth_keys",
           "require", "DEPTH_KEYS", "FFN_WIDTH_KEYS", "FINAL_NORM_NAMES", "HEAD_NAMES"]
