"""Interventions on the Layers view: replace, add to, scale, zero, mean- or resample-ablate the
output of a block, of a block's attention or feed-forward, or of one attention head, at chosen
token positions and batch rows.

A :class:`Site` says *where*: a block (by index or name, as :class:`~layerscope.layers.Layers`
reads it), a part of it (``"block"``, ``"attention"``, ``"feed-forward"``, ``"head"``) and for a
head its index. The parts come from :mod:`layerscope.layouts` (the block's attention module,
its output projection, the number of heads and the head size; the feed-forward module, or its
down projection where the block has no feed-forward module of its own; in a post-norm block
such as BERT's, whose attention module adds the residual and normalises, the attention's output
is its output projection's). A head's output is its
slice of the *input* of the attention output projection (heads are concatenated there): the
edit rewrites that slice and runs the projection's own ``forward`` on the edited input.

An :class:`Intervention` says *what*: ``op`` is ``"replace"``, ``"add"``, ``"scale"``, ``"zero"``,
``"mean"`` or ``"resample"`` (the last two are replacements by a mean activation or another
item's activation, see :func:`mean_activation` and :func:`site_activations`). ``value`` is either
a whole activation shaped like the site's output (batch 1 or B, the same tokens; the chosen rows
and positions are taken from it) or anything that broadcasts to the chosen region (a vector of
the hidden size, a scalar).

:class:`Intervened` is the context manager that applies a list of interventions during forward
passes. It is a :class:`~layerscope.layers.Capture` with ``edit=``: every hook comes off on exit,
also when the forward raises, and the model's weights, modes and devices are never touched.

Example:
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from layerscope.analyses.causal.interventions import Intervened, Intervention, Site
    >>> _ = torch.manual_seed(0)
    >>> lm = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=4, vocab_size=50)).eval()
    >>> ids = torch.randint(0, 50, (1, 5))
    >>> zero_head = Intervention(Site.of(lm, 1, "head", head=2), "zero", positions=[3, 4])
    >>> with torch.no_grad(), Intervened(lm, [zero_head]) as iv:
    ...     edited = iv.call(lm, ids).logits
    >>> plain = lm(ids).logits
    >>> torch.equal(edited[:, :3], plain[:, :3]), torch.equal(edited[:, 3:], plain[:, 3:])
    (True, False)
    >>> len(lm.transformer.h[1].attn.c_proj._forward_hooks)
    0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.layers import Capture, Layer, Layers, primary_tensor
from layerscope.layouts.roles import module_of

PARTS = ("block", "attention", "feed-forward", "head")
OPS = ("replace", "add", "scale", "zero", "mean", "resample")
_PART_ALIASES = {"attn": "attention", "ffn": "feed-forward", "mlp": "feed-forward",
                 "feedforward": "feed-forward", "blocks": "block", "heads": "head",
                 "output": "block", "resid": "block"}


def normalise_part(part: str) -> str:
    """``part`` spelled the canonical way (``attn`` -> ``attention``, ``mlp`` -> ``feed-forward``)."""
    key = str(part).strip().lower()
    key = _PART_ALIASES.get(key, key)
    if key not in PARTS:
        raise LayerscopeError(f"unknown layer part {part!r}; use one of: {', '.join(PARTS)}")
    return key


@dataclass(frozen=True)
class Site:
    """Where an intervention acts: ``module`` (the hooked module, named ``name``) inside block
    ``block`` (index ``index``); ``part`` as in :data:`PARTS`; for a head, its index and the
    slice ``[head * head_dim, (head + 1) * head_dim)`` of the output projection's input."""

    block: str
    index: int
    part: str
    name: str
    module: nn.Module = field(compare=False, repr=False)
    head: int | None = None
    head_dim: int | None = None
    n_heads: int | None = None

    @property
    def label(self) -> str:
        """A short label: ``"3"``, ``"3.attention"``, ``"3.head5"``."""
        if self.part == "block":
            return str(self.index)
        if self.part == "head":
            return f"{self.index}.head{self.head}"
        return f"{self.index}.{self.part}"

    @property
    def layer(self) -> Layer:
        """The :class:`~layerscope.layers.Layer` that :class:`Capture` hooks for this site."""
        role = {"block": "block", "attention": "attention", "feed-forward": "feed-forward",
                "head": "linear"}[self.part]
        return Layer(self.index, self.name, self.module, role, type(self.module).__name__)

    @property
    def head_slice(self) -> slice | None:
        if self.head is None:
            return None
        return slice(self.head * self.head_dim, (self.head + 1) * self.head_dim)

    @classmethod
    def of(cls, model, layer, part: str = "block", head: int | None = None, *,
           blocks: str | None = None, layers: Layers | None = None) -> "Site":
        """The site of ``part`` of block ``layer`` (index or name) of ``model``.

        Raises a one-line :class:`LayerscopeError` for a block out of range, a part the block
        does not have, a head index out of range or heads asked of a block without heads.
        """
        layers = layers if layers is not None else Layers(model, "blocks", blocks=blocks)
        block = layers[layer]
        return site_in(block, normalise_part(part), head)


def site_in(block: Layer, part: str, head: int | None = None) -> Site:
    """The :class:`Site` of ``part`` inside the block ``block`` (a Layer of the blocks view)."""
    from layerscope.layouts import attention_parts, ffn_parts

    part = normalise_part(part)
    if head is not None and part != "head":
        raise LayerscopeError(f"a head index was given for the {part} of block {block.index}; "
                              f"ask for part 'head' to act on one head")
    if part == "block":
        return Site(block.name, block.index, part, block.name, block.observed)

    def path(rel: str) -> str:
        return f"{block.name}.{rel}" if block.name else rel

    if part == "feed-forward":
        ffn = ffn_parts(block.module)
        if ffn is None or (ffn.module is None and ffn.down is None):
            raise LayerscopeError(f"block {block.index} ({block.kind}) has no feed-forward layers "
                                  f"that layerscope can find; act on the whole block instead")
        if ffn.module is not None:
            return Site(block.name, block.index, part, path(ffn.path), ffn.module)
        return Site(block.name, block.index, part, path(ffn.paths["down"]), ffn.down)
    att = attention_parts(block.module)
    if att is None:
        what = "heads" if part == "head" else "attention"
        raise LayerscopeError(f"block {block.index} ({block.kind}) has no attention, so no "
                              f"{what}; choose a block with attention or act on the whole block")
    if part == "attention":
        if att.o is not None and _post_norm(block):
            # a post-norm attention module returns LayerNorm(x + attention): its own contribution
            # to the residual stream is the output projection's output
            return Site(block.name, block.index, part, path(att.paths["o"]), att.o)
        return Site(block.name, block.index, part, path(att.path), att.module)
    if att.o is None or not att.n_heads or not att.head_dim:
        raise LayerscopeError(f"the attention of block {block.index} ({type(att.module).__name__}) "
                              f"has no output projection or head count layerscope can find, so its "
                              f"heads cannot be addressed; act on the attention as a whole")
    if head is None:
        raise LayerscopeError(f"name the head to act on (0-{att.n_heads - 1}) for block {block.index}")
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < att.n_heads:
        raise LayerscopeError(f"head {head} is out of range: block {block.index} has {att.n_heads} "
                              f"heads (0-{att.n_heads - 1})")
    return Site(block.name, block.index, part, path(att.paths["o"]), att.o, head=head,
                head_dim=att.head_dim, n_heads=att.n_heads)


def _post_norm(block: Layer) -> bool:
    from layerscope.layouts import block_roles

    return block_roles(block.module).norm_position == "post"


def heads_of(block: Layer) -> int:
    """The number of attention heads of a block (a LayerscopeError when it has none)."""
    return site_in(block, "head", 0).n_heads


@dataclass
class Intervention:
    """What to do at a site: ``op`` (see :data:`OPS`) with ``value`` (replace / add / mean /
    resample: a tensor; scale: a number), at token ``positions`` (None: all) of batch ``rows``
    (None: all). Positions index dimension 1 (tokens) of a ``(B, T, ...)`` activation."""

    site: Site
    op: str
    value: Any = None
    positions: Sequence[int] | Tensor | None = None
    rows: Sequence[int] | Tensor | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise LayerscopeError(f"unknown intervention {self.op!r}; use one of: {', '.join(OPS)}")
        if self.op in ("replace", "add", "mean", "resample") and self.value is None:
            raise LayerscopeError(f"intervention {self.op!r} at {self.site.label} needs a value "
                                  f"(a tensor)")
        if self.op == "scale" and not isinstance(self.value, (int, float, Tensor)):
            raise LayerscopeError(f"intervention 'scale' at {self.site.label} needs a number as value")


def _index(values, size: int, what: str, where: str) -> Tensor | None:
    if values is None:
        return None
    idx = torch.as_tensor(values, dtype=torch.long).reshape(-1)
    if len(idx) and (idx.max() >= size or idx.min() < -size):
        bad = int(idx[(idx >= size) | (idx < -size)][0])
        raise LayerscopeError(f"{what} {bad} is out of range at {where}: the activation has {size} "
                              f"{what}s (0-{size - 1})")
    return idx % size


def _region(t: Tensor, iv: Intervention):
    """Index tuple selecting the intervention's rows, positions and head slice of ``t``."""
    where = iv.site.label
    rows = _index(iv.rows, t.shape[0], "row", where)
    pos = None
    if iv.positions is not None:
        if t.dim() < 3:
            raise LayerscopeError(f"the output at {where} has shape {tuple(t.shape)}, without a token "
                                  f"dimension; intervene at all positions (positions=None)")
        pos = _index(iv.positions, t.shape[1], "position", where)
    idx: list = []
    if rows is not None and pos is not None:
        idx = [rows.to(t.device)[:, None], pos.to(t.device)[None, :]]
    elif rows is not None:
        idx = [rows.to(t.device)]
    elif pos is not None:
        idx = [slice(None), pos.to(t.device)]
    if iv.site.head is not None:
        idx += [Ellipsis, iv.site.head_slice]
    return tuple(idx) if idx else (Ellipsis,)


def _value_for(value: Tensor, t: Tensor, iv: Intervention) -> Tensor:
    """The part of a whole activation ``value`` matching the region; other values as given."""
    value = value.to(device=t.device, dtype=t.dtype)
    if value.dim() == t.dim() and value.dim() >= 2 and value.shape[1:-1] == t.shape[1:-1] \
            and value.shape[0] in (1, t.shape[0]):
        width = t.shape[-1]
        if value.shape[-1] != width:
            raise LayerscopeError(f"the value for {iv.site.label} has width {value.shape[-1]}; the "
                                  f"activation there has {width}")
        if value.shape[0] == 1 and t.shape[0] != 1:
            value = value.expand(t.shape)
        return value[_region(value, iv)]
    if iv.site.head is not None and value.dim() >= 1 and value.shape[-1] == t.shape[-1]:
        value = value[..., iv.site.head_slice]
    return value


def apply(t: Tensor, interventions: Sequence[Intervention]) -> Tensor:
    """``t`` with the interventions applied in order (a new tensor; ``t`` is not changed).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> site = Site("0", 0, "block", "0", nn.Identity())
        >>> out = apply(torch.ones(2, 3, 4), [Intervention(site, "scale", 3.0, positions=[1], rows=[0])])
        >>> out[0, :, 0].tolist(), out[1, 1, 0].item()
        ([1.0, 3.0, 1.0], 1.0)
    """
    out = t.clone()
    for iv in interventions:
        region = _region(out, iv)
        if iv.op == "zero":
            out[region] = 0
        elif iv.op == "scale":
            out[region] = out[region] * iv.value
        elif iv.op == "add":
            out[region] = out[region] + _value_for(torch.as_tensor(iv.value), out, iv)
        else:
            new = _value_for(torch.as_tensor(iv.value), out, iv)
            try:
                out[region] = new
            except RuntimeError as err:
                raise LayerscopeError(
                    f"the {iv.op} value for {iv.site.label} has shape {tuple(new.shape)}, which does "
                    f"not fit the chosen region {tuple(out[region].shape)}") from err
    return out


class Intervened:
    """Apply ``interventions`` during every forward pass inside the ``with`` block.

    Built on :class:`~layerscope.layers.Capture` (``edit=``): ``outputs`` holds each touched
    module's output as the rest of the model saw it; ``record`` names extra sites whose output is
    also kept (in ``outputs``, by site name). Hooks come off on exit, also when the forward raises.
    """

    def __init__(self, model, interventions: Sequence[Intervention], record: Sequence[Site] = ()):
        self.model = module_of(model)
        self.interventions = list(interventions)
        by_name: dict[str, list[Intervention]] = {}
        sites: dict[str, Site] = {}
        for iv in self.interventions:
            by_name.setdefault(iv.site.name, []).append(iv)
            sites.setdefault(iv.site.name, iv.site)
        for site in record:
            sites.setdefault(site.name, site)
        heads = {n for n, ivs in by_name.items() if any(iv.site.head is not None for iv in ivs)}
        mixed = [n for n in heads if any(iv.site.head is None for iv in by_name[n])]
        if mixed:
            raise LayerscopeError(f"module {mixed[0]!r} has head and whole-output interventions at "
                                  f"once; use one kind per module")
        edits = {name: (self._head_edit(ivs) if name in heads else self._output_edit(ivs))
                 for name, ivs in by_name.items()}
        self.capture = Capture(self.model, [s.layer for s in sites.values()], inputs=bool(heads),
                               edit=edits or None)

    @staticmethod
    def _output_edit(ivs):
        def edit(out, name):
            return apply(out, ivs)
        return edit

    def _head_edit(self, ivs):
        module = ivs[0].site.module

        def edit(out, name):
            x = self.capture.inputs[name]
            # the output projection's own forward on the edited input (no hooks: it is the
            # module's computation, run once more with the heads' slices changed)
            return module.forward(apply(x, ivs))
        return edit

    @property
    def outputs(self) -> dict[str, Tensor]:
        return self.capture.outputs

    @property
    def inputs(self) -> dict[str, Tensor]:
        return self.capture.inputs

    def __enter__(self) -> "Intervened":
        self.capture.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        return self.capture.__exit__(exc_type, exc, tb)

    def call(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` (the forward) with the interventions in place."""
        return self.capture.call(fn, *args, **kwargs)


def _run(model, inputs):
    from layerscope.models import Encoded

    if isinstance(inputs, Encoded):
        return model(*inputs.args, **inputs.kwargs)
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(x, Tensor) for x in inputs):
        return model(*inputs)
    return model(inputs)


def run_intervened(model, interventions: Sequence[Intervention], inputs):
    """The model's output on ``inputs`` (an Encoded batch, a dict of keyword tensors or a tensor)
    with ``interventions`` applied, without gradients.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> site = Site.of(net, 0)
        >>> run_intervened(net, [Intervention(site, "zero")], torch.ones(3, 2)).flatten().tolist() \\
        ...     == [net[2].bias.item()] * 3
        True
    """
    module = module_of(model)
    with torch.no_grad(), Intervened(module, interventions) as iv:
        return iv.call(_run, module, inputs)


def run_blocks(model, blocks: Sequence[Layer], calls: Sequence[tuple[tuple, dict]], start: int,
               h: Tensor, interventions: Sequence[Intervention] = ()) -> Tensor:
    """The last block's output after re-running ``blocks[start:]`` from the hidden state ``h``
    with each block's recorded call arguments ``calls[j] = (args, kwargs)`` (prefix reuse, see
    :mod:`layerscope.replay`) and ``interventions`` in place. Batch-1 arguments (masks,
    position embeddings) broadcast over the rows of ``h``."""
    from layerscope.replay import with_hidden

    with Intervened(module_of(model), interventions) as edit:
        for j in range(start, len(blocks)):
            args, kwargs = with_hidden(*calls[j], h)
            h = primary_tensor(edit.call(blocks[j].module, *args, **kwargs))
    return h


def record_batch(stack, enc, method: str, extra: Sequence[Layer] = ()):
    """One forward of ``enc`` recorded for prefix reuse (see :mod:`layerscope.replay`):
    ``(rec, cap, prefix)``, the :class:`~layerscope.replay.Recorded` pass (every block's call
    arguments and output), the :class:`~layerscope.layers.Capture` that also holds the inputs and
    outputs of the ``extra`` layers, and whether the blocks may be re-run from the record
    (``method`` is not ``"full"`` and the model's tail reproduces its output; ``"prefix"``
    without it is a LayerscopeError)."""
    from layerscope.replay import Recorded, tail_matches

    with Capture(stack.module, list(stack.layers) + list(extra), inputs=bool(extra),
                 kwargs=True) as cap:
        output = cap.call(stack.loaded, enc)
    rec = Recorded(output, [(cap.args[n], cap.kwargs[n]) for n in stack.names],
                   [cap.outputs[n] for n in stack.names])
    prefix = method != "full" and tail_matches(stack, rec)
    if method == "prefix" and not prefix:
        raise LayerscopeError("the model's tail cannot be re-run from the last block's output; use "
                              "method full")
    return rec, cap, prefix


def site_activations(model, sites: Sequence[Site], inputs) -> dict[str, Tensor]:
    """Each site's activation on ``inputs`` by site label: a block's / part's output, or for a
    head the whole input of the output projection (the head's slice is taken when it is used)."""
    module = module_of(model)
    plain = [s for s in sites if s.head is None]
    heads = [s for s in sites if s.head is not None]
    layers = {s.name: s.layer for s in plain + heads}
    with torch.no_grad(), Capture(module, list(layers.values()), inputs=bool(heads)) as cap:
        cap.call(_run, module, inputs)
    out = {}
    for s in sites:
        out[s.label] = (cap.inputs[s.name] if s.head is not None else cap.outputs[s.name]).detach()
    return out


def mean_activation(model, sites: Sequence[Site], data, *, batch_size: int = 16,
                    max_length: int | None = 128, limit: int | None = None) -> dict[str, Tensor]:
    """The mean activation of each site over the real tokens of ``data`` (a reference set), one
    vector per site (the hidden size; for a head, the projection's whole input width), by label.
    Padding is left out; without a token dimension the mean is over items."""
    from layerscope.objectives import real_mask
    from layerscope.sweep import as_model, encoded_batches

    loaded = as_model(model) if not hasattr(model, "encode") else model
    module = loaded.module
    layers = {s.name: s.layer for s in sites}
    heads = any(s.head is not None for s in sites)
    sums: dict[str, Tensor] = {}
    count: dict[str, float] = {}
    with torch.no_grad():
        for enc, _ in encoded_batches(loaded, data, batch_size=batch_size, max_length=max_length,
                                      limit=limit):
            with Capture(module, list(layers.values()), inputs=heads) as cap:
                cap.call(loaded, enc)
            for s in sites:
                act = (cap.inputs[s.name] if s.head is not None else cap.outputs[s.name]).double()
                if act.dim() >= 3:
                    keep = real_mask(enc, act.shape[:2])
                    rows = act[keep]
                else:
                    rows = act.reshape(len(act), -1)
                sums[s.label] = sums.get(s.label, 0) + rows.sum(0)
                count[s.label] = count.get(s.label, 0) + len(rows)
    if not sums:
        raise LayerscopeError("the reference data for mean ablation is empty; pass at least one item")
    return {k: (v / count[k]).float() for k, v in sums.items()}


__all__ = ["PARTS", "OPS", "Site", "Intervention", "Intervened", "apply", "site_in", "heads_of",
           "normalise_part", "run_intervened", "run_blocks", "record_batch", "site_activations",
           "mean_activation"]
