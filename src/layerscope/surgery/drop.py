"""Remove whole blocks from a copy of a model, keeping it a real, loadable model.

Blocks are numbered as ``layerscope summary`` numbers them (the :class:`~layerscope.layers.Layers`
view at ``blocks`` granularity, from 0). The copy's block list is rebuilt without them and its
configuration follows: the layer count (``num_hidden_layers`` / ``n_layer``), per-layer lists
(``layer_types``) and the per-layer indices that key the attention cache (``layer_idx``).
A zoo network's config is updated so that ``zoo.build`` rebuilds exactly the new shape; a block
whose removal changes the shapes around it (a CNN's pooling blocks) is refused.

The dropped model computes what the original computes with those blocks skipped (each one an
identity on its input hidden state).

Example:
    >>> from layerscope.surgery.drop import drop_blocks
    >>> new = drop_blocks("mlp:depth=4,width=16", "1,2")
    >>> new.module.config.depth, len(new.module.blocks)
    (2, 2)
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from layerscope.errors import LayerscopeError
from layerscope.layouts import depth_keys


@dataclass
class Dropped:
    """A dropped copy: ``loaded`` (a LoadedModel of the new module) and what was removed."""

    loaded: Any
    removed: list[int]
    removed_names: list[str]
    n_blocks_before: int
    meta: dict = field(default_factory=dict)

    @property
    def module(self) -> nn.Module:
        return self.loaded.module


def block_indices(loaded, layers, *, blocks: str | None = None) -> tuple[list[int], list[str]]:
    """The sorted block indices a spec picks ("21-29", "0,3", [1, 2], names) and all block names."""
    from layerscope.layers import Layers

    view = Layers(loaded, granularity="blocks", blocks=blocks)
    names = view.names()
    if layers is None or (isinstance(layers, str) and layers.strip().lower() in ("", "all")):
        raise LayerscopeError(f"say which blocks to drop, e.g. --layers 1-2 (0-{len(names) - 1})")
    if isinstance(layers, int):
        layers = [layers]
    chosen = sorted({layer.index for layer in view.select(layers)})
    for i in chosen:
        if not 0 <= i < len(names):
            raise LayerscopeError(f"block {i} is out of range: {loaded.ref} has {len(names)} "
                                  f"blocks (0-{len(names) - 1})")
    if len(chosen) == len(names):
        raise LayerscopeError(f"dropping all {len(names)} blocks of {loaded.ref!r} leaves no model; "
                              f"keep at least one block")
    return chosen, names


def _container(module: nn.Module, names: Sequence[str]) -> tuple[str, nn.ModuleList]:
    parents = {name.rsplit(".", 1)[0] if "." in name else "" for name in names}
    tails = [name.rsplit(".", 1)[-1] for name in names]
    if len(parents) != 1 or tails != [str(i) for i in range(len(names))]:
        raise LayerscopeError(
            "the blocks are not one numbered block list (e.g. model.layers.0..N), so they cannot "
            "be dropped; pass --blocks with the path of the block list")
    parent = parents.pop()
    container = module.get_submodule(parent) if parent else module
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise LayerscopeError(f"{parent!r} is a {type(container).__name__}, not a block list; "
                              f"pass --blocks with the path of the block list")
    return parent, container


def _set_container(module: nn.Module, path: str, new: nn.Module) -> None:
    owner_path, _, attr = path.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    setattr(owner, attr, new)


def _update_hf_config(config, removed: list[int], n_before: int) -> None:
    keep = [i for i in range(n_before) if i not in set(removed)]
    keys = depth_keys(config, n_before)
    for key in keys:
        setattr(config, key, len(keep))
    if not keys:
        raise LayerscopeError(f"{type(config).__name__} has no layer count equal to {n_before}; "
                              f"cannot update the config after dropping blocks")
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == n_before and key.startswith("layer"):
            setattr(config, key, [value[i] for i in keep])
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise LayerscopeError("this GPT-2 scales attention by its layer index, which changes when "
                              "blocks move; dropping blocks would change its outputs")


def _renumber(blocks: nn.ModuleList) -> None:
    for j, block in enumerate(blocks):
        for sub in block.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = j


def _rebuild_zoo(loaded, module: nn.Module, removed: list[int], n_before: int) -> nn.Module:
    """A fresh zoo network built from the updated config, with the dropped copy's weights."""
    from .save import rebuild_zoo

    config = dataclasses.asdict(module.config)
    changed = False
    for key, value in config.items():
        if isinstance(value, bool):
            continue
        if key in ("depth", "n_layers", "num_layers", "layers") and value == n_before:
            config[key] = n_before - len(removed)
            changed = True
        elif isinstance(value, list) and len(value) == n_before and key != "input_shape":
            config[key] = [v for i, v in enumerate(value) if i not in set(removed)]
            changed = True
    if not changed:
        raise LayerscopeError(f"zoo model {loaded.ref!r} has no depth setting to update; its blocks "
                              f"cannot be dropped")
    try:
        return rebuild_zoo(loaded, module, **{k: config[k] for k in config
                                              if config[k] != getattr(module.config, k)})
    except LayerscopeError as exc:
        raise LayerscopeError(
            f"blocks {removed} of {loaded.ref!r} change the shape of what flows through them "
            f"(e.g. channels or pooling), so they cannot be dropped; pick shape-preserving "
            f"blocks") from exc


def drop_blocks(model, layers, *, blocks: str | None = None) -> Dropped:
    """A copy of ``model`` without the chosen blocks; the input model is not changed.

    ``model``: a reference, ``nn.Module`` or LoadedModel; ``layers``: "21-29", "0,3,5", a list of
    indices or block names.
    """
    from layerscope.sweep import as_model

    from .save import zoo_spec

    loaded = as_model(model)
    removed, names = block_indices(loaded, layers, blocks=blocks)
    n_before = len(names)
    module = copy.deepcopy(loaded.module)
    path, container = _container(module, names)
    kept = [b for i, b in enumerate(container) if i not in set(removed)]
    new_container = type(container)(kept) if isinstance(container, nn.Sequential) else nn.ModuleList(kept)
    _set_container(module, path, new_container)
    _renumber(new_container)
    config = getattr(module, "config", None)
    if zoo_spec(loaded) is not None and dataclasses.is_dataclass(config):
        module = _rebuild_zoo(loaded, module, removed, n_before)
    elif config is not None and hasattr(config, "to_dict"):
        _update_hf_config(config, removed, n_before)
    new_loaded = dataclasses.replace(loaded, module=module, meta=_new_meta(loaded, module))
    return Dropped(new_loaded, removed, [names[i] for i in removed], n_before)


def _new_meta(loaded, module: nn.Module) -> dict:
    meta = dict(loaded.meta)
    if "path" in meta:
        meta["source_path"] = meta.pop("path")
    if hasattr(getattr(module, "config", None), "to_dict"):
        meta["hf_config"] = module.config.to_dict()
    elif dataclasses.is_dataclass(getattr(module, "config", None)):
        meta["zoo_config"] = dataclasses.asdict(module.config)
    return meta


def auto_blocks(model, data, n: int, *, by: str = "influence", blocks: str | None = None,
                batch_size: int = 16, max_length: int | None = 128,
                limit: int | None = None) -> list[int]:
    """The ``n`` blocks to drop by Block Influence (lowest) or angular distance (best run of n)."""
    from layerscope.analyses.importance import choose_blocks, layer_importance

    criteria = {"influence": "block-influence", "block-influence": "block-influence",
                "angular": "angular", "last": "last", "single": "single"}
    if by not in criteria:
        raise LayerscopeError(f"unknown criterion {by!r}; use influence, angular, single or last")
    importance = layer_importance(model, data, blocks=blocks, batch_size=batch_size,
                                  max_length=max_length, limit=limit)
    return choose_blocks(importance, criteria[by], n)


__all__ = ["drop_blocks", "auto_blocks", "block_indices", "Dropped"]
