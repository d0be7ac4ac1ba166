"""Pruning a copy of a model: magnitude pruning, and structured pruning that really shrinks it.

**Unstructured** (:func:`prune_magnitude`): ``torch.nn.utils.prune.l1_unstructured`` per layer
(or ``global_unstructured`` over all chosen layers at once), then ``prune.remove`` so the zeros
are plain weights of the copy. Every ``nn.Linear`` and ``nn.Conv*d`` weight in scope is pruned;
a weight tied to another module (an LM head tied to the embedding) is skipped and listed. The
model gets sparser, not smaller: the saved file and the dense latency stay the same.

**Structured** (:func:`prune_structured`) removes whole units, the same number from every block
so that the model's config still describes it and its own library reloads it:

* ``neurons``: feed-forward width (Llama-style ``gate/up/down_proj``, BERT ``intermediate/output``,
  GPT-2 ``c_fc/c_proj``); neuron ``j`` scores ``‖W_in[j]‖₂ · ‖W_out[:, j]‖₂`` (gate and up rows
  together) and the lowest-scoring ones go; ``intermediate_size`` / ``n_inner`` follow.
* ``heads``: attention heads of Llama-style attention, whole key/value groups at a time so
  grouped-query attention keeps its ratio; a group scores the L2 norm of its q/k/v rows and
  o_proj columns. ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim`` follow.
  (BERT and GPT-2 derive the head size from ``hidden_size / heads``, so fewer heads cannot be
  written in their config: refused.)
* ``channels``: output channels of a zoo CNN's convolutions, scored by filter L2 norm; the
  following norm layer, the next convolution's input channels and the first fully connected
  layer's inputs follow, and the config's ``channels`` list is updated.

A pruned model equals the original with the removed units' outgoing weights set to zero (tested).

Example:
    >>> from layerscope.surgery.prune import prune_structured
    >>> small = prune_structured("cnn:channels=8x16", 0.5, "channels")
    >>> small.module.config.channels
    [4, 8]
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from layerscope.errors import LayerscopeError
from layerscope.layouts import (FFN_WIDTH_KEYS, attention_parts, config_head_counts, ffn_parts,
                                is_transposed_linear, set_head_counts)


@dataclass
class Pruned:
    """The pruned copy (``loaded``) and what was done: per-layer sparsity or the new sizes."""

    loaded: Any
    mode: str
    sparsity: float
    layers: dict = field(default_factory=dict)
    skipped: list[list[str]] = field(default_factory=list)

    @property
    def module(self) -> nn.Module:
        return self.loaded.module


def check_sparsity(sparsity) -> float:
    """``sparsity`` as a float in [0, 1), else :class:`LayerscopeError`."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise LayerscopeError(f"sparsity must be a number in [0, 1); got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise LayerscopeError(f"sparsity must be in [0, 1) (the fraction of weights to remove); "
                              f"got {value}")
    return value


def _copy(loaded):
    module = copy.deepcopy(loaded.module)
    meta = dict(loaded.meta)
    if "path" in meta:
        meta["source_path"] = meta.pop("path")
    return module, meta


def _scope(loaded, layers, blocks):
    from .quantize import _scope as scope_of

    return scope_of(loaded, layers, blocks)


def prunable(module: nn.Module, scope=None) -> tuple[list[str], list[list[str]]]:
    """(names of Linear/Conv layers whose weight can be pruned, [name, reason] skipped)."""
    from .quantize import _in_scope

    owners: dict[int, int] = {}
    for _, sub in module.named_modules(remove_duplicate=False):
        w = getattr(sub, "weight", None)
        if isinstance(w, nn.Parameter):
            owners[id(w)] = owners.get(id(w), 0) + 1
    names, skipped = [], []
    for name, sub in module.named_modules():
        if not name or not _in_scope(name, scope):
            continue
        if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_transposed_linear(sub):
            if owners.get(id(sub.weight), 0) > 1:
                skipped.append([name, "weight tied to another module"])
            else:
                names.append(name)
    return names, skipped


def prune_magnitude(model, sparsity: float, layers=None, *, scope: str = "layer",
                    blocks: str | None = None) -> Pruned:
    """Zero the smallest-magnitude ``sparsity`` fraction of weights, per layer or globally."""
    from layerscope.sweep import as_model

    loaded = as_model(model)
    sparsity = check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise LayerscopeError(f"scope must be 'layer' or 'global'; got {scope!r}")
    names, skipped = prunable(loaded.module, _scope(loaded, layers, blocks))
    if not names:
        raise LayerscopeError(f"{loaded.ref!r} has no Linear or Conv layers to prune in scope")
    module, meta = _copy(loaded)
    targets = [(module.get_submodule(n), "weight") for n in names]
    if scope == "global":
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured,
                                        amount=sparsity)
    else:
        for sub, attr in targets:
            torch_prune.l1_unstructured(sub, attr, amount=sparsity)
    for sub, attr in targets:
        torch_prune.remove(sub, attr)
    reached = {n: float((module.get_submodule(n).weight == 0).float().mean()) for n in names}
    return Pruned(dataclasses.replace(loaded, module=module, meta=meta), f"magnitude-{scope}",
                  sparsity, reached, skipped)


# --- structured ----------------------------------------------------------------------------------


def _rows_out(layer: nn.Module) -> Tensor:
    """The weight as (out units, in units)."""
    return layer.weight.detach().t() if is_transposed_linear(layer) else layer.weight.detach().flatten(1) \
        if layer.weight.dim() > 2 else layer.weight.detach()


def _keep_out(layer: nn.Module, idx: Tensor) -> None:
    with torch.no_grad():
        if is_transposed_linear(layer):
            layer.weight = nn.Parameter(layer.weight[:, idx].clone())
            layer.nf = len(idx)
        else:
            layer.weight = nn.Parameter(layer.weight[idx].clone())
            if isinstance(layer, nn.Linear):
                layer.out_features = len(idx)
            else:
                layer.out_channels = len(idx)
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[idx].clone())


def _keep_in(layer: nn.Module, idx: Tensor) -> None:
    with torch.no_grad():
        if is_transposed_linear(layer):
            layer.weight = nn.Parameter(layer.weight[idx].clone())
        else:
            layer.weight = nn.Parameter(layer.weight[:, idx].clone())
            if isinstance(layer, nn.Linear):
                layer.in_features = len(idx)
            else:
                layer.in_channels = len(idx)


def _n_keep(n: int, sparsity: float) -> int:
    return max(1, n - int(round(n * sparsity)))


def _blocks(loaded, blocks):
    from layerscope.layers import Layers

    return Layers(loaded, granularity="blocks", blocks=blocks)


def _prune_neurons(module: nn.Module, block_names: list[str], sparsity: float) -> dict:
    sizes = {}
    for name in block_names:
        block = module.get_submodule(name)
        ffn = ffn_parts(block, getattr(module, "config", None))
        if ffn is None or ffn.experts or ffn.up is None or ffn.down is None:
            what = "a mixture of experts" if ffn is not None and ffn.experts else \
                "no feed-forward input/output projections layerscope can find"
            raise LayerscopeError(f"block {name!r} has {what}; neuron pruning needs one "
                                  f"feed-forward per block (see layerscope.layouts.ffn_parts)")
        ins, out = ffn.inputs, ffn.down
        w_in = torch.cat([_rows_out(layer) for layer in ins], dim=1)  # (I, H * n_in)
        w_out = _rows_out(out).t()                                     # (I, H)
        score = w_in.norm(dim=1) * w_out.norm(dim=1)
        keep = _n_keep(score.numel(), sparsity)
        idx = torch.sort(torch.topk(score, keep).indices).values
        for layer in ins:
            _keep_out(layer, idx)
        _keep_in(out, idx)
        sizes[name] = {"neurons": keep, "removed": sorted(set(range(score.numel())) - set(idx.tolist()))}
    return sizes


def _prune_heads(module: nn.Module, block_names: list[str], sparsity: float) -> dict:
    config = module.config
    n_heads, n_kv = config_head_counts(config)
    group = n_heads // n_kv
    sizes = {}
    for name in block_names:
        block = module.get_submodule(name)
        attn = attention_parts(block, config)
        if attn is None or attn.fused or not all(isinstance(m, nn.Linear) for m in (attn.q, attn.k, attn.v, attn.o)) \
                or not _head_dim_in_config(config):
            raise LayerscopeError(
                f"block {name!r} has no Llama-style attention (separate q/k/v/o projections and a "
                f"head size in the config); head pruning works on those only (BERT/GPT-2 tie head size to "
                f"hidden_size / heads), try --structured neurons")
        d = attn.head_dim
        q = attn.q.weight.detach().view(n_kv, group * d, -1)
        k = attn.k.weight.detach().view(n_kv, d, -1)
        v = attn.v.weight.detach().view(n_kv, d, -1)
        o = attn.o.weight.detach().view(-1, n_kv, group * d).transpose(0, 1)
        score = torch.stack([t.flatten(1).norm(dim=1) for t in (q, k, v, o)]).norm(dim=0)
        keep = _n_keep(n_kv, sparsity)
        kv_idx = torch.sort(torch.topk(score, keep).indices).values
        kv_units = (kv_idx[:, None] * d + torch.arange(d)).flatten()
        q_units = (kv_idx[:, None] * group * d + torch.arange(group * d)).flatten()
        _keep_out(attn.q, q_units)
        _keep_out(attn.k, kv_units)
        _keep_out(attn.v, kv_units)
        _keep_in(attn.o, q_units)
        sizes[name] = {"kv_heads": keep, "heads": keep * group,
                       "removed_kv_groups": sorted(set(range(n_kv)) - set(kv_idx.tolist()))}
    return sizes


def _head_dim_in_config(config) -> bool:
    """Whether the config can state a head size apart from ``hidden_size / heads``."""
    return "head_dim" in config.to_dict() or hasattr(type(config), "head_dim")


def _prune_channels(module: nn.Module, sparsity: float) -> dict:
    config = getattr(module, "config", None)
    if not (hasattr(config, "channels") and hasattr(module, "blocks") and hasattr(module, "fc")):
        raise LayerscopeError("channel pruning works on the zoo CNN (cnn); use --structured "
                              "neurons or heads for transformers")
    if config.separable or config.residual:
        raise LayerscopeError("channel pruning supports the plain zoo CNN (no separable or "
                              "residual convolutions)")
    sizes = {}
    blocks = list(module.blocks)
    for i, block in enumerate(blocks):
        conv = block.conv
        score = conv.weight.detach().flatten(1).norm(dim=1)
        keep = _n_keep(conv.out_channels, sparsity)
        idx = torch.sort(torch.topk(score, keep).indices).values
        _keep_out(conv, idx)
        _slice_norm(block.norm, idx)
        if i + 1 < len(blocks):
            _keep_in(blocks[i + 1].conv, idx)
        else:
            linear = module.fc[1]
            side = config.image_size >> len(config.channels)
            features = (idx[:, None] * side * side + torch.arange(side * side)).flatten()
            _keep_in(linear, features)
        sizes[f"blocks.{i}"] = {"channels": keep}
    return sizes


def _slice_norm(norm: nn.Module, idx: Tensor) -> None:
    with torch.no_grad():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean = norm.running_mean[idx].clone()
            norm.running_var = norm.running_var[idx].clone()
            norm.num_features = len(idx)
        elif isinstance(norm, nn.GroupNorm):
            norm.num_channels = len(idx)
        elif not isinstance(norm, nn.Identity):
            raise LayerscopeError(f"cannot prune channels through a {type(norm).__name__}")
        if getattr(norm, "weight", None) is not None:
            norm.weight = nn.Parameter(norm.weight[idx].clone())
            norm.bias = nn.Parameter(norm.bias[idx].clone())


def prune_structured(model, sparsity: float, structure: str = "neurons", *,
                     blocks: str | None = None) -> Pruned:
    """Remove the ``sparsity`` fraction of neurons / heads / channels from every block of a copy."""
    from layerscope.sweep import as_model

    from .save import zoo_spec

    loaded = as_model(model)
    sparsity = check_sparsity(sparsity)
    if structure not in ("neurons", "heads", "channels"):
        raise LayerscopeError(f"unknown structure {structure!r}; use neurons, heads or channels")
    module, meta = _copy(loaded)
    if structure == "channels":
        sizes = _prune_channels(module, sparsity)
        from .save import rebuild_zoo

        module = rebuild_zoo(loaded, module, channels=[s["channels"] for s in sizes.values()])
    else:
        config = getattr(module, "config", None)
        if not hasattr(config, "to_dict"):
            raise LayerscopeError(f"--structured {structure} works on Hugging Face transformers; "
                                  f"for a zoo CNN use --structured channels")
        names = _blocks(loaded, blocks).names()
        if structure == "neurons":
            sizes = _prune_neurons(module, names, sparsity)
            width = next(iter(sizes.values()))["neurons"]
            keys = [k for k in FFN_WIDTH_KEYS if hasattr(config, k)]
            if not keys:
                raise LayerscopeError(f"{type(config).__name__} has no feed-forward width setting")
            for key in keys:
                setattr(config, key, width)
        else:
            sizes = _prune_heads(module, names, sparsity)
            first = next(iter(sizes.values()))
            set_head_counts(config, heads=first["heads"], kv_heads=first["kv_heads"],
                            head_dim=attention_parts(module.get_submodule(names[0]), config).head_dim)
        meta["hf_config"] = config.to_dict()
    if zoo_spec(loaded) is not None:
        meta["zoo_config"] = dataclasses.asdict(module.config)
    return Pruned(dataclasses.replace(loaded, module=module, meta=meta), f"structured-{structure}",
                  sparsity, sizes)


__all__ = ["prune_magnitude", "prune_structured", "prunable", "check_sparsity", "Pruned"]
