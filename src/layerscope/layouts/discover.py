"""Where a model keeps its layers: a generic rule for block stacks, a registry that names them.

The generic rule looks for *stacks*: an ``nn.ModuleList`` (or an ``nn.Sequential`` of one block
class) whose children are mostly one class. The stack holding the most parameters wins; stacks
with the same attribute name elsewhere (an encoder and a decoder, two towers) and sibling stages
of the same block class (ResNet's ``layer1``..``layer4``) join it. Flat models (an
``nn.Sequential`` of leaves, a module of ``fc1``/``fc2``) count their parameterised children;
a multi-layer ``nn.LSTM``/``nn.GRU`` counts each of its layers. In an ``nn.Sequential`` a block
is a parameterised child together with the parameter-free children after it (activation,
dropout, pool, flatten), and its output is read after the last of those. The registry only names the
family and the roles of the parts (embedding, block, attention, feed-forward, norm, head).

Example:
    >>> from torch import nn
    >>> from layerscope.layouts import find_layout
    >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> found = find_layout(mlp)
    >>> [b.path for b in found.blocks], found.family
    (['0', '2'], 'sequential')
    >>> found.blocks[0].output_path  # the block's output is read after its activation
    '1'
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import nn

from layerscope.errors import LayerscopeError

#: attribute names that conventionally hold a model's block stack
STACK_NAMES = ("layer", "layers", "h", "block", "blocks", "_blocks", "stages", "encoder_layers",
               "decoder_layers", "transformer_blocks", "resblocks", "layer_list")
#: an unconventionally named stack must hold at least this share of the model's parameters
MIN_SHARE = 0.5
RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)
_SKIP = (nn.Dropout, nn.Identity)


@dataclass
class BlockRef:
    """One block: its module path, the module, and for a split multi-layer RNN its layer number.

    ``output`` (at ``output_path``) is the module whose output is the block's output when that
    is not ``module`` itself: the last parameter-free child after a Linear in an nn.Sequential,
    or the trailing norm of a block kept in parallel lists. ``members`` (path, module) are the
    i-th entries of parallel lists (XLM's ``attentions``/``layer_norm1``/``ffns``/``layer_norm2``)
    that together make the block; empty for a block that is one module.
    """

    path: str
    module: nn.Module
    part: int | None = None
    output: nn.Module | None = None
    output_path: str | None = None
    members: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.part is None:
            return self.path
        return f"{self.path}.l{self.part}" if self.path else f"l{self.part}"


class BlockGroup(nn.Module):
    """One block kept in parallel lists, seen as one module: the i-th entries as children named
    by their list (``attentions``, ``layer_norm1``, ``ffns``, ``layer_norm2``). A view only: it
    is not put into the model and has no forward; the roles read it like a block.

    Example:
        >>> from torch import nn
        >>> net = nn.Module()
        >>> net.attentions = nn.ModuleList([nn.MultiheadAttention(4, 2) for _ in range(2)])
        >>> net.norms = nn.ModuleList([nn.LayerNorm(4) for _ in range(2)])
        >>> ref = find_layout(net).blocks[1]
        >>> [name for name, _ in block_view(ref).named_children()]
        ['attentions', 'norms']
        >>> block_view(find_layout(net.eval()).blocks[1]).training  # its entries' mode
        False
    """

    def __init__(self, members: list[tuple[str, nn.Module]]):
        super().__init__()
        for path, module in members:
            self.add_module(path.rsplit(".", 2)[-2], module)
        # the entries' mode, not a new module's default (train): set here only, not on them
        self.training = any(module.training for _, module in members)


def block_view(ref: "BlockRef") -> nn.Module:
    """The module to read a block's roles from: the block, or for a block kept in parallel lists
    a :class:`BlockGroup` of its entries."""
    return BlockGroup(ref.members) if ref.members else ref.module


@dataclass
class Found:
    """The blocks of a model, the parts outside them, the family name and the rule used."""

    blocks: list[BlockRef]
    before: list[tuple[str, nn.Module]] = field(default_factory=list)
    after: list[tuple[str, nn.Module]] = field(default_factory=list)
    family: str = "generic"
    rule: str = ""
    stacks: list = field(default_factory=list)   # every Stack found (generic rule only)
    stack: str | None = None                      # the chosen stack's name ("encoder+decoder")
    stack_of: dict = field(default_factory=dict)  # id(block module) -> stack name


# --- roles ------------------------------------------------------------------------------------

_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softmax,
                nn.Mish, nn.Hardswish, nn.ReLU6, nn.Softplus, nn.PReLU, nn.Hardtanh, nn.SELU)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool3d)
_HEAD_NAMES = ("lm_head", "classifier", "head", "fc", "pooler", "score", "cls", "qa_outputs",
               "_fc", "output", "out", "decoder_head")


def role_of(name: str, module: nn.Module, where: str = "inside") -> str:
    """The role of a part: ``where`` is "inside" a block, "before" or "after" the blocks.

    Example:
        >>> from torch import nn
        >>> role_of("self_attn", nn.Module()), role_of("ln_f", nn.LayerNorm(4), "after")
        ('attention', 'norm')
    """
    cls = type(module).__name__
    low_name, low_cls = name.rsplit(".", 1)[-1].lower(), cls.lower()
    if isinstance(module, nn.Embedding) or "embed" in low_name or "embedding" in low_cls or low_name == "wte":
        return "embedding"
    if isinstance(module, RNN_TYPES):
        return "recurrent"
    if "norm" in low_cls or low_name.startswith(("ln", "norm")) or isinstance(module, nn.modules.batchnorm._NormBase):
        return "norm"
    if "attn" in low_name or "attention" in low_name or "attention" in low_cls or "attn" in low_cls:
        return "attention"
    if where == "after" and (low_name in _HEAD_NAMES or "head" in low_name):
        return "head"
    if (low_name in ("mlp", "ffn", "feed_forward", "feedforward", "intermediate", "ff", "fc")
            or "mlp" in low_cls or "feedforward" in low_cls or "intermediate" in low_cls
            or (where == "inside" and low_cls.endswith("output"))):
        return "feed-forward"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
        return "stem" if where == "before" else "conv"
    if isinstance(module, _POOLS) or "pool" in low_cls:
        return "pool"
    if isinstance(module, _ACTIVATIONS) or module.__class__.__module__ == "torch.nn.modules.activation":
        return "activation"
    if where == "before":
        return "stem"
    if where == "after":
        return "head"
    if isinstance(module, nn.Linear):
        return "linear"
    return "block"


def has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def counts_as_sublayer(name: str, module: nn.Module) -> bool:
    """Parameterised parts, activations and pools; not dropout or identity."""
    if isinstance(module, _SKIP):
        return False
    return has_params(module) or role_of(name, module) in ("activation", "pool")


def _numel(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _majority(children: list[nn.Module]) -> tuple[str, float]:
    names = Counter(type(c).__name__ for c in children)
    cls, n = names.most_common(1)[0]
    return cls, n / len(children)


# --- the generic rule -------------------------------------------------------------------------


@dataclass
class _Stack:
    path: str
    module: nn.Module
    cls: str
    params: int
    eligible: bool  # conventionally named, or holding MIN_SHARE of the parameters

    @property
    def attr(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def _stacks(model: nn.Module, total: int) -> list[_Stack]:
    out = []
    for path, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) < 2:
            continue
        children = list(mod.children())
        if not children:
            continue
        cls, share = _majority(children)
        if isinstance(mod, nn.Sequential) and (share < 1.0 or not all(has_params(c) for c in children)):
            continue
        if share < 0.5 and (path.rsplit(".", 1)[-1] not in STACK_NAMES):
            continue
        if not any(has_params(c) for c in children):
            continue
        params = _numel(mod)
        out.append(_Stack(path, mod, cls, params, _conventional(path, mod) or params >= MIN_SHARE * total))
    return out


def _conventional(path: str, mod: nn.Module) -> bool:
    """A conventional stack name: one of :data:`STACK_NAMES`, or a name ending in ``_layers``
    for a list of blocks that mix tokens (BridgeTower's ``cross_modal_text_layers``; not a
    list of convs such as ``channel_projection_layers``)."""
    attr = path.rsplit(".", 1)[-1]
    if attr in STACK_NAMES:
        return True
    first = next(iter(mod.children()), None)
    return attr.endswith("_layers") and first is not None and _has_mixer(first)


def _twins(a: nn.Module, b: nn.Module) -> bool:
    """Two lists of one block class, as long as each other, whose entries hold the same
    parameter shapes: two streams run side by side at each depth (BridgeTower's cross-modal
    text and image layers), not consecutive stages (a stage changes the width)."""
    return (len(a) == len(b)
            and [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()])


def _named_twins(a: "_Stack", b: "_Stack") -> bool:
    """Twins (:func:`_twins`) held as two named attributes; the numbered lists of a list of
    lists (Funnel's ``encoder.blocks.0``..``2``) are consecutive stages of one width."""
    return not a.attr.isdigit() and not b.attr.isdigit() and _twins(a.module, b.module)


def _pipeline(stack: "Stack") -> bool:
    """A list of mixed modules, no class the majority, whose first entry does not mix tokens (a
    SEANet-like conv encoder: convs, ELUs, residual units and an LSTM in one list): a feature
    extractor, not repeated blocks."""
    if not stack.blocks or stack.blocks[0].members or _mixes(stack):
        return False
    return _majority([b.module for b in stack.blocks])[1] < 0.5


def _inside(a: str, b: str) -> bool:
    """True when path ``a`` is ``b`` or lies inside ``b``."""
    return a == b or b == "" or a.startswith(b + ".")


@dataclass
class Stack:
    """One stack of repeated blocks: its name, container path(s), blocks and what it is.

    ``kind`` is "main" (blocks a person counts) or "stem" (a convolutional feature extractor or
    backbone on the input side of a transformer stack); ``modality`` is "vision", "audio",
    "bridge" (a connector between towers) or "" (the model's own / text).
    """

    name: str
    paths: list[str]
    blocks: list[BlockRef]
    cls: str
    params: int
    kind: str = "main"
    modality: str = ""

    @property
    def width(self) -> int | None:
        """The hidden width: the output size of the last linear/norm weight of the first block."""
        last = None
        for p in self.blocks[0].module.parameters() if self.blocks else ():
            if p.dim() == 1:
                last = p.shape[0]
        return int(last) if last is not None else None


#: path words that say a stack is a tower of another modality, or a bridge between towers
VISION_WORDS = ("vision", "visual", "image", "img", "vit", "pixel", "video", "patch")
AUDIO_WORDS = ("audio", "speech", "acoustic", "sound", "mel", "wav")
BRIDGE_WORDS = ("qformer", "resampler", "projector", "connector", "perceiver", "adapter",
                "abstractor", "aligner", "mm_proj")
LANGUAGE_WORDS = ("language_model", "llm", "lm", "text_decoder", "language", "thinker", "decoder")
#: path parts that carry no name of their own (skipped when naming a stack)
GENERIC_PARTS = frozenset(("model", "base_model", "transformer", "layers", "layer", "h", "blocks",
                           "block", "stages", "_blocks", "resblocks", "module", "net", "body",
                           "layer_list", "encoder_layers", "decoder_layers", "transformer_blocks",
                           "model_", "backbone_model", "inner"))
#: attributes of a dual encoder (towers scored against each other, no language model)
DUAL_MARKS = ("logit_scale", "logit_scale_a", "logit_scale_t", "temperature", "logit_bias")


def _words(path: str) -> list[str]:
    return [w for part in path.lower().split(".") for w in part.split("_") if w]


def _modality(path: str) -> str:
    parts = path.lower().split(".")
    words = _words(path)
    back = next((i for i, part in enumerate(parts) if part == "backbone" or part.endswith("_backbone")), None)
    if back is not None:  # a tower's own backbone (SAM 3's vision_encoder.backbone) is the tower
        outer = _modality(".".join(parts[:back])) if back else ""
        return outer if outer in ("vision", "audio") else "backbone"
    if any(b in part for part in parts for b in BRIDGE_WORDS):
        return "bridge"
    if any(w in VISION_WORDS or w.startswith(("vision", "visual")) for w in words):
        return "vision"
    if any(w in AUDIO_WORDS or w.startswith("audio") for w in words):
        return "audio"
    return ""


def _leaf_stack(mod: nn.Module) -> bool:
    """A list of leaf modules (embedding tables, linear layers), not of blocks."""
    return all(all("." not in n for n, _ in c.named_parameters()) for c in mod.children())


_MIXER_WORDS = ("attention", "attn", "mixer", "mamba", "ssm", "recurrent", "rwkv", "retention",
                "deltanet", "delta_net", "linear_attn", "timemix", "time_mix", "lstm")


def _has_mixer(block: nn.Module) -> bool:
    """Whether a block mixes tokens: attention, a state-space/recurrent mixer or an RNN."""
    for path, sub in block.named_modules():
        low, cls = path.rsplit(".", 1)[-1].lower(), type(sub).__name__.lower()
        if isinstance(sub, RNN_TYPES) or any(k in cls or k in low for k in _MIXER_WORDS):
            return True
    return False


def find_stacks(model: nn.Module) -> list[Stack]:
    """Every stack of repeated blocks in ``model``, named, in module order (stems included).

    Example:
        >>> from transformers import T5Config, T5Model
        >>> t5 = T5Model(T5Config(d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=2,
        ...                       num_decoder_layers=3, vocab_size=50))
        >>> [(s.name, len(s.blocks)) for s in find_stacks(t5)]
        [('encoder', 2), ('decoder', 3)]
    """
    total = _numel(model)
    cands = _stacks(model, total)
    paths = {s.path for s in cands}
    # a list of lists (Funnel's encoder.blocks) stands for its inner lists
    cands = [s for s in cands if not all(_join(s.path, n) in paths for n, _ in s.module.named_children())]
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    cands.sort(key=lambda s: order[s.path])
    groups: list[list[_Stack]] = []
    for s in cands:  # sibling stages of one block class (ResNet's layer1..layer4) form one stack
        for g in groups:
            if _parent(g[0].path) == _parent(s.path) and g[0].cls == s.cls \
                    and not _named_twins(g[0], s):
                g.append(s)
                break
        else:
            groups.append([s])
    every = list(groups)
    groups = [g for g in groups if any(s.eligible for s in g)
              or sum(s.params for s in g) >= MIN_SHARE * total]
    staged_from: dict[int, str] = {}  # a list of stages taken apart -> the list's path
    for i, g in enumerate(groups):
        inner = _staged(g[0]) if len(g) == 1 else None
        if inner:
            staged_from[id(inner)] = g[0].path
            groups[i] = inner
    groups = _join_stem_stage(model, groups, every, staged_from, order)
    joined = {s.path for g in groups if len(g) > 1 for s in g}  # a stage's list joined above
    groups = [g for g in groups if len(g) > 1 or g[0].path not in joined]
    # a stack inside a block of another (experts inside a layer, blocks inside a stage) is not one
    groups = [g for g in groups if not any(o is not g and any(_inside(g[0].path, x.path) and g[0].path != x.path
                                                              for x in o) for o in groups)]
    if any(not _leaf_stack(s.module) for g in groups for s in g):
        groups = [g for g in groups if not all(_leaf_stack(s.module) for s in g)]
    staged = {s.path for g in groups if len(g) > 1 for s in g}  # stages of another stack
    parallel = {id(g[0]): _parallel_lists(model, g[0], staged) for g in groups if len(g) == 1}
    in_parallel = {p for lists in parallel.values() for p, _ in lists}
    seen_lists: set[tuple[str, ...]] = set()
    stacks = []
    for g in groups:
        lists = parallel.get(id(g[0]))
        if lists:  # one stack per set of parallel lists, at the first of them found
            key = tuple(p for p, _ in lists)
            if key not in seen_lists:
                seen_lists.add(key)
                stacks.append(_parallel_stack(g[0], lists))
            continue
        if len(g) == 1 and g[0].path in in_parallel:
            continue
        blocks = _split_rnns([BlockRef(_join(s.path, n), c) for s in g for n, c in s.module.named_children()])
        stacks.append(Stack("", [s.path for s in g], blocks, g[0].cls, sum(s.params for s in g),
                            modality=_modality(g[0].path)))
    _name_stacks(stacks)
    mixing = [s for s in stacks if _mixes(s)]
    if mixing:
        towers = {m.paths[0].split(".")[0] for m in mixing}
        for s in stacks:  # a convolutional tower of its own (ALIGN's image CNN) stays a tower
            own_tower = s.modality in ("vision", "audio") and s.paths[0].split(".")[0] not in towers
            if s not in mixing and not own_tower:
                s.kind = "stem"
    if any(s.kind == "main" and not _pipeline(s) for s in stacks):
        for s in stacks:
            if _pipeline(s):
                s.kind = "stem"
    return stacks


def _is_conv(module: nn.Module) -> bool:
    """A convolution, or a wrapper holding only one (a causal conv's padding wrapper)."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    leaves = [m for m in module.modules() if has_params_direct(m)]
    return len(leaves) == 1 and isinstance(leaves[0], convs)


def _join_stem_stage(model: nn.Module, groups: list[list[_Stack]], every: list[list[_Stack]],
                     staged_from: dict, order: dict) -> list[list[_Stack]]:
    """A stem's list of blocks of the stages' block class, held (with only a conv beside it) by
    a sibling of the list of stages that comes before it, is the first stage (VibeVoice's
    tokenizer: the stem's blocks, then each downsampling layer's)."""
    out = list(groups)
    for g in groups:
        if id(g) not in staged_from:
            continue
        parent = _parent(staged_from[id(g)])
        for h in every:  # the stem's list may hold too few parameters to be a stack alone
            if len(h) != 1 or h[0].cls != g[0].cls or any(h[0] in x for x in out if x is not h) \
                    or h[0].path == staged_from[id(g)]:
                continue
            holder_path = _parent(h[0].path)
            if not holder_path or _parent(holder_path) != parent or order[h[0].path] > order[staged_from[id(g)]]:
                continue
            holder = model.get_submodule(holder_path)
            rest = [c for n, c in holder.named_children() if c is not h[0].module]
            if _numel(h[0].module) >= 0.5 * _numel(holder) or (len(rest) == 1 and not _has_mixer(rest[0])):
                if not any(_has_mixer(c) for c in rest):
                    if h in out:
                        out.remove(h)
                    g.insert(0, h[0])
                    break
    return out


def _staged(s: _Stack) -> list[_Stack] | None:
    """A list of stages, each holding its blocks in one list under the same name (ResNet's
    ``encoder.stages.i.layers``, Swin's ``encoder.layers.i.blocks``): the blocks are the entries
    of those lists, joined in stage order, when they hold most of each stage's parameters and
    nothing else in a stage mixes tokens (a stage's downsampling layer is not a block, nor is a
    list entry of another class, holding no list, between the stages: SwiftFormer's
    embeddings; a decoder layer whose experts sit in a list beside its attention is not a stage;
    a block's list of sublayers with no class the majority, T5's attention and feed-forward, is
    not one). Else None."""
    inner, suffix = [], None
    for name, stage in s.module.named_children():
        lists = [(n, c) for n, c in stage.named_children()
                 if isinstance(c, (nn.ModuleList, nn.Sequential)) and len(c) and not _leaf_stack(c)
                 and any(has_params(b) for b in c.children()) and _majority(list(c.children()))[1] > 0.5]
        if not lists and type(stage).__name__ != s.cls and not _has_mixer(stage) \
                and not any(isinstance(c, (nn.ModuleList, nn.Sequential)) for c in stage.modules()):
            continue  # a downsampling layer between stages (SwiftFormer's embeddings)
        if len(lists) != 1 or (suffix is not None and lists[0][0] != suffix):
            return None
        suffix, blocks = lists[0]
        rest = [c for n, c in stage.named_children() if n != suffix]
        sampling = len(rest) == 1 and _is_conv(rest[0])  # the stage's down/upsampling conv alone
        if (_numel(blocks) < 0.5 * _numel(stage) and not sampling) or any(_has_mixer(c) for c in rest):
            return None
        inner.append(_Stack(_join(s.path, name, suffix), blocks, _majority(list(blocks.children()))[0],
                            _numel(blocks), s.eligible))
    return inner if len(inner) > 1 and sum(len(x.module) for x in inner) > len(inner) else None


def _parallel_lists(model: nn.Module, s: _Stack, staged: frozenset | set = frozenset()
                    ) -> list[tuple[str, nn.ModuleList]]:
    """The sibling ModuleLists (same parent, same length, another entry class) whose i-th
    entries belong to ``s``'s i-th block, ``s`` included, in definition order; [] when none.

    An encoder list beside a decoder list of the same length is two stacks, not one.
    """
    if not isinstance(s.module, nn.ModuleList):
        return []
    parent_path = _parent(s.path)
    parent = model.get_submodule(parent_path) if parent_path else model
    def side(name: str) -> set[str]:
        return {w for w in ("encoder", "decoder") if w in name.lower()}

    lists = []
    for name, mod in parent.named_children():
        path = _join(parent_path, name)
        if path == s.path:
            lists.append((path, mod))
        elif (isinstance(mod, nn.ModuleList) and len(mod) == len(s.module) and path not in staged
              and all(has_params(c) for c in mod.children())
              and (_majority(list(mod.children()))[0] != s.cls
                   or (not name.isdigit() and not s.attr.isdigit() and _twins(mod, s.module)))
              and not (side(name) and side(s.attr) and side(name) != side(s.attr))):
            lists.append((path, mod))
    return lists if len(lists) > 1 else []


def _parallel_stack(s: _Stack, lists: list[tuple[str, nn.ModuleList]]) -> Stack:
    """One stack whose block i is the i-th entry of every parallel list.

    Its inputs are read at the first list whose entries mix tokens (the attention) when that
    list comes before the stack's own list, else at the stack's own; its output at the last
    norm list after the stack's own list (a post-norm block), else at the stack's own entry.
    """
    own = next(i for i, (p, _) in enumerate(lists) if p == s.path)
    first = next((i for i, (_, m) in enumerate(lists[:own]) if _has_mixer(m[0])), own)
    norms = [i for i, (_, m) in enumerate(lists) if i > own and _leaf_stack(m)
             and all("norm" in type(c).__name__.lower() for c in m.children())]
    out = norms[-1] if norms else None
    blocks = []
    for k in range(len(s.module)):
        members = [(f"{p}.{k}", m[k]) for p, m in lists]
        ref = BlockRef(members[first][0], members[first][1], members=members)
        if out is not None or first != own:
            end = members[out if out is not None else own]
            ref.output, ref.output_path = end[1], end[0]
        blocks.append(ref)
    return Stack("", [p for p, _ in lists], blocks, s.cls, sum(_numel(m) for _, m in lists),
                 modality=_modality(s.path))


def _name_stacks(stacks: list[Stack]) -> None:
    """Name each stack by the first path part that tells it from the others (generic parts skipped)."""
    informative = []
    for s in stacks:
        parts = [p for p in _stem_path(s.paths).split(".") if p not in GENERIC_PARTS and not p.isdigit()]
        shared = _shared_words([p.rsplit(".", 1)[-1] for p in s.paths]) if len(s.paths) > 1 else ""
        if parts and shared and parts[-1] == s.paths[0].rsplit(".", 1)[-1]:
            parts[-1] = shared  # parallel lists named alike (cross_modal_text/image_layers)
        informative.append(parts)
    common = set.intersection(*(set(p) for p in informative)) if len(informative) > 1 else set()
    names = []
    for s, parts in zip(stacks, informative):
        own = [p for p in parts if p not in common] or parts
        names.append(own[:1] if own else [_stem_path(s.paths).rsplit(".", 1)[-1] or "blocks"])
    for depth in range(2, 6):  # lengthen names that still collide
        counts = Counter(".".join(n) for n in names)
        if all(c == 1 for c in counts.values()):
            break
        for i, (s, parts) in enumerate(zip(stacks, informative)):
            if counts[".".join(names[i])] > 1:
                own = [p for p in parts if p not in common] or parts
                names[i] = own[:depth] if len(own) >= depth else (own or [s.paths[0]])
    seen: Counter = Counter()
    for s, n in zip(stacks, names):
        name = ".".join(n)
        seen[name] += 1
        s.name = name if seen[name] == 1 else f"{name}{seen[name]}"


def _stem_path(paths: list[str]) -> str:
    """The path a stack is named by: its first list's, or for lists inside the stages of one
    list (``encoder.stages.0.layers``, ``encoder.stages.1.layers``) that list's."""
    split = [p.split(".") for p in paths]
    common = []
    for parts in zip(*split):
        if len(set(parts)) > 1:
            if all(p.isdigit() for p in parts) and common:
                return ".".join(common)
            if len(paths) > 2:  # a stem's blocks joined before the stages: the stages' list
                rest = _stem_path(paths[1:])
                return rest if rest != paths[1] else paths[0]
            return paths[0]
        common.append(parts[0])
    return paths[0]


def _shared_words(names: list[str]) -> str:
    """The words the names start with in common ("cross_modal" for ``cross_modal_text_layers``
    and ``cross_modal_image_layers``), or ""."""
    split = [n.split("_") for n in names]
    common = []
    for words in zip(*split):
        if len(set(words)) > 1:
            break
        common.append(words[0])
    return "_".join(w for w in common if w)


def _is_dual(model: nn.Module) -> bool:
    owners = [model, getattr(model, "base_model", None)]
    for owner in owners:
        if not isinstance(owner, nn.Module):
            continue
        own = {n for n, _ in owner.named_parameters(recurse=False)} | set(vars(owner))
        projections = [n for n, _ in owner.named_children() if n.endswith("_projection")
                       or n in ("text_projection", "visual_projection", "image_projection")]
        if any(m in own for m in DUAL_MARKS) or len(projections) >= 2:
            return True
    return False


def declared_module(model: nn.Module, getter_name: str) -> nn.Module | None:
    """What the model's own getter (``get_input_embeddings``/``get_output_embeddings``) returns,
    when it has one that answers with a module (transformers' getters raise on models without)."""
    getter = getattr(model, getter_name, None)
    try:
        found = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError, TypeError):
        return None
    return found if isinstance(found, nn.Module) else None


def _has_lm_head(model: nn.Module) -> bool:
    return declared_module(model, "get_output_embeddings") is not None


def _describe(stacks: list[Stack]) -> str:
    return ", ".join(f"{s.name} ({len(s.blocks)} blocks{', stem' if s.kind == 'stem' else ''})"
                     for s in stacks)


def _scores_towers(model: nn.Module) -> bool:
    """Whether the model's forward declares an output scoring towers against each other: two or
    more ``logits_per_*`` fields (CLIP's ``logits_per_image``/``logits_per_text``)."""
    import inspect
    import typing

    try:
        ann = inspect.signature(type(model).forward).return_annotation
    except (TypeError, ValueError):
        return False
    for cls in (typing.get_args(ann) or (ann,)):
        fields = getattr(cls, "__dataclass_fields__", None) or {}
        if sum(f.startswith("logits_per_") for f in fields) >= 2:
            return True
    return False


def _no_forward(model: nn.Module) -> bool:
    """A container with no forward of its own (its sub-models are run one after another by
    ``generate``), so no stack comes first."""
    return getattr(type(model).forward, "__name__", "") == "_forward_unimplemented"


def _config_owner(model: nn.Module, path: str):
    """The config of the innermost module on ``path`` (the model included) that holds one."""
    parts = path.split(".")
    for k in range(len(parts), -1, -1):
        try:
            mod = model.get_submodule(".".join(parts[:k])) if k else model
        except AttributeError:
            continue
        cfg = getattr(mod, "config", None)
        if cfg is not None and not isinstance(cfg, (int, float, str, bool, dict)):
            return cfg
    return None


def _takes_tokens(model: nn.Module, stacks: list[Stack]) -> bool:
    """Whether the model reads token ids: its declared input embedding holds an nn.Embedding,
    or (none declared) an nn.Embedding comes before the first stack."""
    emb = declared_module(model, "get_input_embeddings")
    if emb is not None:
        return any(isinstance(m, nn.Embedding) for m in emb.modules())
    firsts = {s.paths[0] for s in stacks}
    for path, mod in model.named_modules():
        if path in firsts:
            return False
        if isinstance(mod, nn.Embedding):
            return True
    return False


def _side_key(path: str, side: str) -> str | None:
    """The path up to the first part naming ``side`` ("encoder"/"decoder"), that word written
    "decoder", so an encoder and its decoder share a key."""
    parts = path.split(".")
    for k, part in enumerate(parts):
        if side in part:
            return ".".join(parts[:k] + [part.replace(side, "decoder")])
    return None


def _encoder_decoder(pool: list[Stack]) -> list[Stack]:
    """The shallowest encoder/decoder pair in ``pool`` (paths that differ only by the
    encoder/decoder word: ``encoder``/``decoder``, ``text_encoder``/``text_decoder``,
    ``encoder.encoder_transformer``/``decoder.decoder_transformer``), encoder first; [] if none."""
    enc = {s.name: _side_key(s.paths[0], "encoder") for s in pool}
    dec = {s.name: _side_key(s.paths[0], "decoder") for s in pool}
    keys = sorted({k for k in enc.values() if k and k in dec.values()}, key=lambda k: k.count("."))
    if not keys:
        return []
    key = keys[0]
    return ([s for s in pool if enc[s.name] == key and dec[s.name] != key]
            + [s for s in pool if dec[s.name] == key and enc[s.name] != key])


def _mixes(stack: Stack) -> bool:
    """Whether the stack's first block (any of its entries, for parallel lists) mixes tokens."""
    if not stack.blocks:
        return False
    ref = stack.blocks[0]
    return any(_has_mixer(m) for m in [m for _, m in ref.members] or [ref.module])


def _between(stacks: list[Stack], pair: list[Stack]) -> list[Stack]:
    """The stacks of the model's own that sit, in module order, between an encoder and its
    decoder under the same parent, and mix tokens: the data runs encoder, them, decoder (BLT's
    global transformer between its local encoder and local decoder). Stems, towers of another
    modality and bridges are not among them."""
    order = {id(s): i for i, s in enumerate(stacks)}
    first, last = order[id(pair[0])], order[id(pair[-1])]
    key = _side_key(pair[-1].paths[0], "decoder") or ""
    parent = _parent(key)
    return [s for s in stacks[first + 1:last] if s not in pair and s.kind == "main"
            and s.modality == "" and _mixes(s) and _inside(s.paths[0], parent)]


def _twin_towers(model: nn.Module, pool: list[Stack]) -> bool:
    """Whether every stack in ``pool`` (two or more) is built from its own sub-config of the
    model's config, all of one config class, held side by side by the model's config (DepthPro's
    patch and image encoders, both from DINOv2 configs): towers of one kind, none first."""
    root = getattr(model, "config", None)
    if root is None or len(pool) < 2:
        return False
    held = [v for v in vars(root).values() if v is not root and hasattr(v, "to_dict")]
    cfgs = [_config_owner(model, s.paths[0]) for s in pool]
    return all(c is not None and c is not root and any(c is h for h in held) for c in cfgs) \
        and len({id(c) for c in cfgs}) == len(cfgs) and len({type(c) for c in cfgs}) == 1


def _twin_stacks(pool: list[Stack]) -> bool:
    """Whether ``pool`` is two or more stacks of one block class, as deep as each other, whose
    blocks hold the same parameter shapes, under different parents and not an encoder and its
    decoder (HRM's high- and low-level modules, run in alternation): none comes first."""
    if len(pool) < 2 or any(s.blocks[0].members for s in pool if s.blocks):
        return False
    first = pool[0]
    shapes = [p.shape for p in first.blocks[0].module.parameters()] if first.blocks else None
    return (all(s.cls == first.cls and len(s.blocks) == len(first.blocks) and s.blocks
                and [p.shape for p in s.blocks[0].module.parameters()] == shapes for s in pool)
            and len({_parent(s.paths[0]) for s in pool}) == len(pool)
            and not any(w in s.paths[0].lower() for s in pool for w in ("encoder", "decoder")))


def _block_size(stack: Stack) -> float:
    """Parameters per block: how large a stack's blocks are, whatever its depth."""
    return stack.params / max(len(stack.blocks), 1)


def _backbone_config(model: nn.Module, stack: Stack) -> bool:
    """Whether ``stack`` is built from the model's own ``*backbone*`` sub-config (a detector's or
    segmenter's backbone; a tower's backbone inside its own config stays the tower)."""
    root = getattr(model, "config", None)
    cfg = _config_owner(model, stack.paths[0])
    if root is None or cfg is None or cfg is root:
        return False
    return any(value is cfg and "backbone" in key for key, value in vars(root).items())


def default_stacks(model: nn.Module, stacks: list[Stack]) -> tuple[list[Stack], str]:
    """The stack(s) a person counts, and the rule that chose them; LayerscopeError for a dual
    encoder or a container of models run one after another (it asks which stack).

    The rule, in order: a model without a forward of its own asks; a dual encoder (towers
    scored against each other: a ``logit_scale``/``temperature``, two ``*_projection`` heads or
    two ``logits_per_*`` outputs, and no LM head) asks; in a model that is not an
    encoder-decoder, stacks of sub-models built from a config of their own (a codec, a protein
    encoder, a semantic encoder) give way to those built from the model's own config when these
    mix tokens and their blocks are the largest (parameters per block, so the depth a config
    declares does not decide it); towers of another modality (vision, audio), bridges between towers and
    backbones give way to the model's own stack, unless the model reads no tokens (SAM: its
    vision encoder is its own; there, towers that do not mix tokens and stacks built from the
    model's ``*backbone*`` config still give way); in a model that reads tokens, a lone stack
    named as a language model (``language_model``, ``llm``...) wins; then an encoder and its
    decoder (paths that differ only by that word, the shallowest such pair), encoder first,
    with the model's own token-mixing stacks that sit between them in module order (BLT's
    global transformer between its local encoder and decoder);
    then a lone language-model stack (a ``*decoder`` counts as one only in a model that reads
    tokens); then a lone encoder; a dual encoder asks; otherwise the stack with the most
    parameters.
    """
    main = [s for s in stacks if s.kind == "main"] or stacks
    if len(main) == 1:
        return main, ""
    if _no_forward(model):
        raise LayerscopeError(
            f"{type(model).__name__} runs its sub-models one after another and has no forward of "
            f"its own; its stacks: {_describe(stacks)}; say which with --stack NAME (or "
            f"Layers(model, stack=NAME))")
    dual = _is_dual(model) or _scores_towers(model)
    if dual and not _has_lm_head(model) and any(s.modality == "" for s in main) \
            and any(s.modality in ("vision", "audio") for s in main):
        raise _dual_question(model, stacks)
    tokens = _takes_tokens(model, main)
    own_config = getattr(model, "config", None)
    if own_config is not None and not getattr(own_config, "is_encoder_decoder", False):
        same = [s for s in main if _config_owner(model, s.paths[0]) is own_config]
        others = [s for s in main if s not in same]
        if same and others and any(_mixes(s) for s in same) \
                and max(map(_block_size, same)) >= max(map(_block_size, others)):
            main = same
            if len(main) == 1:
                return main, "the stack built from the model's own config (the others are sub-models)"
    own = [s for s in main if s.modality == ""]
    if tokens:
        pool = own or [s for s in main if s.modality not in ("bridge", "backbone")] or main
    else:  # no language stack to give way to: the towers that mix tokens are the model's own
        pool = [s for s in main if s.modality not in ("bridge", "backbone")
                and (s.modality == "" or _mixes(s)) and not _backbone_config(model, s)] or main
    if len(pool) == 1:
        return pool, f"the others are {_other(main, pool)}"

    def named_like(words) -> list[Stack]:
        return [s for s in pool if any(w in words or p in words
                                       for p in s.paths[0].lower().split(".") for w in p.split("_"))]

    pair = _encoder_decoder(pool)
    strong = named_like(tuple(w for w in LANGUAGE_WORDS if w != "decoder"))
    if tokens and len(strong) == 1 and strong[0] not in pair:
        return strong, "the language-model stack"
    if pair:
        between = _between(stacks, pair)
        if between:  # BLT: local encoder, global transformer, local decoder
            return ([s for s in pair if s not in pair[-1:]] + between + pair[-1:],
                    "encoder, the stacks between them, then decoder")
        return pair, "encoder then decoder stacks"
    lang = named_like(LANGUAGE_WORDS) if tokens else strong
    if len(lang) == 1:
        return lang, "the language-model stack"
    enc = [s for s in pool if "encoder" in s.paths[0].lower()]
    if len(enc) == 1:
        return enc, "the encoder (the other stacks work on its output)"
    if dual and not _has_lm_head(model):
        raise _dual_question(model, stacks)
    if _twin_towers(model, pool) or _twin_stacks(pool):
        raise LayerscopeError(
            f"{type(model).__name__} has stacks of one kind side by side, none run before the "
            f"other: {_describe(stacks)}; say which with --stack NAME (or Layers(model, "
            f"stack=NAME))")
    best = max(pool, key=lambda s: s.params)
    return [best], "the stack holding the most parameters"


def _dual_question(model: nn.Module, stacks: list[Stack]) -> LayerscopeError:
    return LayerscopeError(
        f"{type(model).__name__} is a dual encoder with stacks {_describe(stacks)}; say which "
        f"with --stack NAME (or Layers(model, stack=NAME))")


def _other(main: list[Stack], chosen: list[Stack]) -> str:
    rest = [s for s in main if s not in chosen]
    return ", ".join(f"{s.name}{' (' + s.modality + ')' if s.modality else ''}" for s in rest) or "none"


def pick_stacks(model: nn.Module, stacks: list[Stack], stack: str | None) -> tuple[list[Stack], str]:
    """The stacks named by ``stack`` (a name, or names joined by "+"), or the default ones."""
    if not stack:
        return default_stacks(model, stacks)
    names = {s.name: s for s in stacks}
    wanted = [w.strip() for w in str(stack).split("+") if w.strip()]
    if len(stacks) == 1 and any(w not in names for w in wanted):
        raise LayerscopeError(
            f"--stack {stack}: {type(model).__name__} has a single stack ({_describe(stacks)}); "
            f"drop --stack")
    missing = [w for w in wanted if w not in names]
    if missing:
        raise LayerscopeError(
            f"no stack {missing[0]!r} in {type(model).__name__}; its stacks: {_describe(stacks)}")
    return [names[w] for w in wanted], "named with stack="


def _generic(model: nn.Module, stack: str | None = None) -> Found | None:
    stacks = find_stacks(model)
    if not stacks:
        if stack:
            raise LayerscopeError(f"--stack {stack}: {type(model).__name__} has no stacks of "
                                  f"repeated blocks; drop --stack")
        return None
    chosen, why = pick_stacks(model, stacks, stack)
    blocks = [b for s in chosen for b in s.blocks]
    parts = []
    for s in chosen:
        if s.blocks and s.blocks[0].members:
            parts.append(f"the {len(s.blocks)} blocks of the parallel lists {', '.join(s.paths)} "
                         f"(block i = the i-th entry of each; read from {s.blocks[0].path} to "
                         f"{s.blocks[0].output_path or s.blocks[0].path})")
        elif len(s.paths) == 1:
            parts.append(f"the {len(s.blocks)} children of {s.paths[0]} ({s.cls})")
        else:
            parts.append(f"the {len(s.blocks)} {s.cls} blocks of stages " + ", ".join(s.paths))
    where = " then ".join(parts)
    if len(stacks) > 1:
        where += f"; stack {'+'.join(s.name for s in chosen)}" + (f": {why}" if why else "") + \
            f" (stacks: {', '.join(s.name for s in stacks)})"
    found = Found(blocks, family="generic", rule=f"blocks = {where}")
    found.stacks = stacks
    found.stack = "+".join(s.name for s in chosen)
    found.stack_of = {id(b.module): s.name for s in chosen for b in s.blocks}
    _add_outside(model, found, [p for s in chosen for p in s.paths])
    return found


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _add_outside(model: nn.Module, found: Found, stack_paths: list[str]) -> None:
    """Parameterised parts on the way to the stacks: before (embeddings, stem) or after (norm, head)."""
    block_ids = {id(b.module) for b in found.blocks}
    seen: set[int] = set(block_ids)
    seen_params: set[int] = set()

    def walk(prefix: str, module: nn.Module) -> str:
        state = "before"
        for name, child in module.named_children():
            path = _join(prefix, name)
            if any(_inside(sp, path) for sp in stack_paths):
                if path in stack_paths:
                    state = "after"
                else:
                    sub = walk(path, child)
                    if sub == "after":
                        state = "after"
                continue
            if id(child) in seen or not has_params(child) or isinstance(child, _SKIP):
                continue
            own = {id(p) for p in child.parameters()}
            if own <= seen_params and role_of(path, child) == "embedding":
                continue  # a second handle on a tied embedding (T5's encoder.embed_tokens)
            seen.add(id(child))
            seen_params.update(own)
            (found.before if state == "before" else found.after).append((path, child))
        return state

    walk("", model)


def _split_rnns(blocks: list[BlockRef]) -> list[BlockRef]:
    out = []
    for b in blocks:
        if isinstance(b.module, RNN_TYPES) and b.module.num_layers > 1 and b.part is None:
            out.extend(BlockRef(b.path, b.module, k) for k in range(b.module.num_layers))
        else:
            out.append(b)
    return out


# --- flat models and explicit blocks ------------------------------------------------------------


def _is_leafish(module: nn.Module) -> bool:
    """A module whose parameters are all its own (Linear, Conv, LSTM, norms)."""
    return all("." not in n for n, _ in module.named_parameters())


def _flat(model: nn.Module) -> Found | None:
    if isinstance(model, RNN_TYPES):
        blocks = _split_rnns([BlockRef("", model)])
        return Found(blocks, family="rnn",
                     rule=f"blocks = the {len(blocks)} layers of the {type(model).__name__} (num_layers={model.num_layers})")
    children = [(n, c) for n, c in model.named_children() if has_params(c)]
    if not children or has_params_direct(model):
        return None
    is_seq = isinstance(model, nn.Sequential)
    if not is_seq and not all(_is_leafish(c) for _, c in children):
        return None
    rnns = [(n, c) for n, c in children if isinstance(c, RNN_TYPES)]
    if rnns:
        blocks = _split_rnns([BlockRef(n, c) for n, c in rnns])
        first, last = children.index(rnns[0]), children.index(rnns[-1])
        found = Found(blocks, before=children[:first], after=children[last + 1:], family="rnn",
                      rule="blocks = the layers of " + ", ".join(
                          f"{n} ({type(c).__name__}, num_layers={c.num_layers})" for n, c in rnns))
        return found
    if len(children) < 2 and not is_seq:
        return None
    classes = ", ".join(sorted({type(c).__name__ for _, c in children}))
    if not is_seq:
        return Found([BlockRef(n, c) for n, c in children], family="flat",
                     rule=f"blocks = the {len(children)} parameterised children of the "
                          f"{type(model).__name__} ({classes})")
    blocks = _sequential_blocks(model)
    return Found(blocks, family="sequential",
                 rule=f"blocks = the {len(blocks)} parameterised children of the nn.Sequential "
                      f"({classes}), each with the parameter-free children after it "
                      f"(activation, dropout, pool, flatten); a block's output is read after the "
                      f"last of them")


def _sequential_blocks(model: nn.Sequential) -> list[BlockRef]:
    """Each parameterised child plus the parameter-free children that follow it.

    A parameter-free child used at two places of the Sequential (one ``nn.ReLU`` object reused)
    ends the group before it: its hook would fire once per use.
    """
    entries = [(n, c) for n, c in model._modules.items() if c is not None]
    uses = Counter(id(c) for _, c in entries)
    blocks: list[BlockRef] = []
    open_group = False
    for name, child in entries:
        if has_params(child):
            blocks.append(BlockRef(name, child))
            open_group = True
        elif open_group and uses[id(child)] == 1:
            blocks[-1].output, blocks[-1].output_path = child, name
        else:
            open_group = False
    return blocks


def _wrapped(model: nn.Module) -> Found | None:
    """A module whose parameters all sit in one nn.Sequential / RNN child (``self.net = Sequential(...)``)."""
    path, inner = "", model
    while not has_params_direct(inner):
        children = [(n, c) for n, c in inner.named_children() if has_params(c)]
        if len(children) != 1:
            return None
        path, inner = _join(path, children[0][0]), children[0][1]
        if isinstance(inner, (nn.Sequential, *RNN_TYPES)):
            found = _flat(inner)
            if found is None:
                return None
            for ref in found.blocks:
                ref.path = _join(path, ref.path)
                if ref.output_path is not None:
                    ref.output_path = _join(path, ref.output_path)
            found.before = [(_join(path, n), c) for n, c in found.before]
            found.after = [(_join(path, n), c) for n, c in found.after]
            found.rule = found.rule.replace("blocks = the", f"blocks = in {path}, the", 1)
            return found
    return None


def has_params_direct(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def explicit_blocks(model: nn.Module, spec: str) -> Found:
    """Blocks named by the user: a dotted path to a ModuleList/Sequential, or a comma list of paths.

    Example:
        >>> from torch import nn
        >>> net = nn.Module(); net.body = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        >>> [b.path for b in explicit_blocks(net, "body").blocks]
        ['body.0', 'body.1']
    """
    modules = dict(model.named_modules())
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if not paths:
        raise LayerscopeError("blocks= is empty; name a module path such as 'encoder.layer'")
    for p in paths:
        if p not in modules:
            close = [n for n in modules if n.endswith(p.rsplit(".", 1)[-1]) and n][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise LayerscopeError(
                f"blocks={p!r}: {type(model).__name__} has no module at that path{hint}; "
                f"name a dotted module path such as 'encoder.layer'")
    if len(paths) == 1 and isinstance(modules[paths[0]], (nn.ModuleList, nn.Sequential)):
        stack = modules[paths[0]]
        blocks = [BlockRef(_join(paths[0], n), c) for n, c in stack.named_children()]
        rule = f"blocks = the {len(blocks)} children of {paths[0]} (named with blocks=)"
        stack_paths = paths
    else:
        blocks = [BlockRef(p, modules[p]) for p in paths]
        rule = f"blocks = the {len(blocks)} modules named with blocks= ({spec})"
        stack_paths = paths
    if not blocks:
        raise LayerscopeError(f"blocks={spec!r} names an empty container; name a non-empty one")
    found = Found(_split_rnns(blocks), family="explicit", rule=rule)
    _add_outside(model, found, stack_paths)
    return found


# --- the registry ------------------------------------------------------------------------------

#: the families the rule recognises by name (the generic rule finds their blocks)
REGISTRY: list[tuple[str, str]] = [
    ("bert", "BERT-like encoder: embeddings, encoder.layer.N, pooler"),
    ("gpt2", "GPT-2: transformer.wte/wpe, transformer.h.N, ln_f, lm_head (tied to wte)"),
    ("llama", "Llama/Mistral/Qwen-like decoder: model.embed_tokens, model.layers.N, model.norm, lm_head"),
    ("encoder-decoder", "two stacks: encoder.*.N then decoder.*.N (T5, BART, Whisper, ...)"),
    ("efficientnet", "EfficientNet-like: _conv_stem, _blocks.N, _conv_head, _fc"),
    ("resnet", "ResNet-like: a stem, residual blocks in stages layer1..layerK, a head"),
    ("sequential", "nn.Sequential: its parameterised children, each with the activation/dropout/pool after it"),
    ("rnn", "stacked nn.LSTM/nn.GRU: one layer per num_layers"),
]


def _family(model: nn.Module, found: Found) -> str:
    paths = [b.path for b in found.blocks]
    parents = list(dict.fromkeys(_parent(p) for p in paths))
    cls = type(model).__name__
    if found.family != "generic":
        return found.family
    if len(parents) > 1 and any("decoder" in p for p in parents) and any("encoder" in p for p in parents):
        return "encoder-decoder"
    if len(parents) > 1 and len({_parent(p) for p in parents}) == 1:
        return "resnet"
    parent = parents[0]
    if parent.endswith("encoder.layer"):
        return "bert"
    if parent.endswith("_blocks"):
        return "efficientnet"
    if parent == "h" or parent.endswith(".h"):
        return "gpt2"
    if (parent == "layers" or parent.endswith(".layers")) and "DecoderLayer" in type(found.blocks[0].module).__name__:
        return "llama"
    return cls


def find_layout(model: nn.Module, blocks: str | None = None, stack: str | None = None) -> Found:
    """The blocks of ``model`` (and the parts before/after them), or a LayerscopeError.

    Example:
        >>> from torch import nn
        >>> found = find_layout(nn.LSTM(4, 8, num_layers=3))
        >>> [b.name for b in found.blocks]
        ['l0', 'l1', 'l2']
    """
    if blocks and stack:
        raise LayerscopeError(f"blocks={blocks!r} and stack={stack!r} both name the blocks; give "
                              f"one of --blocks / --stack")
    if blocks:
        return explicit_blocks(model, blocks)
    found = _flat(model) if isinstance(model, (nn.Sequential, *RNN_TYPES)) else None
    if found is not None and stack:
        raise LayerscopeError(f"--stack {stack}: {type(model).__name__} has a single stack of "
                              f"layers; drop --stack")
    if found is None:
        found = _generic(model, stack)
    if found is None:
        found = _flat(model)
    if found is None:
        found = _wrapped(model)
    if found is None:
        raise LayerscopeError(
            f"cannot tell the blocks of {type(model).__name__}: it has no stack of repeated "
            f"blocks (nn.ModuleList/nn.Sequential); name them with Layers(model, "
            f"blocks=\"encoder.layer\") or --blocks PATH (a dotted path to the block list, or a "
            f"comma list of module paths)")
    found.family = _family(model, found)
    return found


__all__ = ["BlockGroup", "block_view", "Stack", "find_stacks", "default_stacks", "pick_stacks", "BlockRef", "Found", "REGISTRY",
           "STACK_NAMES", "find_layout", "explicit_blocks", "role_of", "counts_as_sublayer",
           "has_params"]
