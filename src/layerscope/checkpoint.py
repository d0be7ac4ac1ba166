"""Layerscope checkpoint folders: ``model.safetensors`` + ``layerscope.json``.

``layerscope.json`` holds ``{"format": "layerscope-checkpoint", "version": 1, "zoo": spec,
"config": {...}, "task": ..., "input_shape": ..., **extra}``; loading rebuilds the network with
``zoo.build(spec, **config)`` and loads the weights strictly. Folders are written atomically: a
checkpoint is either the old one or the complete new one, never half written.

Example:
    >>> import tempfile, torch
    >>> from layerscope.checkpoint import save_checkpoint, read_manifest
    >>> folder = save_checkpoint(torch.nn.Linear(2, 2), tempfile.mkdtemp() + "/ck",
    ...                          spec="mlp", config={"depth": 1})
    >>> read_manifest(folder)["zoo"]
    'mlp'
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors
from torch import nn

from .errors import LayerscopeError

CHECKPOINT_FILE = "layerscope.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "layerscope-checkpoint"
VERSION = 1


def save_checkpoint(module: nn.Module, path, *, spec: str, config, task=None, input_shape=None,
                    extra: dict | None = None) -> Path:
    """Write ``module``'s weights and how to rebuild it to the folder ``path``; returns the path.

    ``config`` is a dict or a dataclass (a zoo model's ``.config``). An existing folder is
    replaced only when it is a layerscope checkpoint or empty.
    """
    target = Path(path).expanduser()
    if target.exists() and not _replaceable(target):
        raise LayerscopeError(
            f"{str(target)!r} exists and is not a layerscope checkpoint; choose a new folder"
        )
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    manifest = {"format": FORMAT, "version": VERSION, "zoo": spec, "config": dict(config or {}),
                "task": task, "input_shape": list(input_shape) if input_shape else None,
                **(extra or {})}
    try:
        text = json.dumps(manifest, indent=2)
    except TypeError as exc:
        raise LayerscopeError(f"checkpoint config must be JSON data: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_safetensors(module, str(staging / WEIGHTS_FILE))
        (staging / CHECKPOINT_FILE).write_text(text + "\n")
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_manifest(path) -> dict:
    """The checked contents of a checkpoint folder's ``layerscope.json``."""
    folder = Path(path)
    try:
        manifest = json.loads((folder / CHECKPOINT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LayerscopeError(
            f"{str(folder / CHECKPOINT_FILE)!r} is unreadable ({type(exc).__name__}); save the "
            f"checkpoint again"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LayerscopeError(f"{str(folder / CHECKPOINT_FILE)!r} is not a layerscope checkpoint")
    if manifest.get("version") != VERSION:
        raise LayerscopeError(
            f"checkpoint {str(folder)!r} has version {manifest.get('version')!r}; this layerscope "
            f"reads version {VERSION}: upgrade layerscope"
        )
    if not isinstance(manifest.get("zoo"), str):
        raise LayerscopeError(f"checkpoint {str(folder)!r} names no zoo model to rebuild")
    return manifest


def load_checkpoint(path, *, ref: str | None = None):
    """Rebuild the zoo network of a checkpoint folder and load its weights (strict), in eval mode."""
    from .builtin_models import build_zoo, describe_zoo_module

    folder = Path(path)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise LayerscopeError(f"checkpoint {str(folder)!r} has no {WEIGHTS_FILE}; save it again")
    if manifest["zoo"] == "pooled-head":
        return _load_pooled_head(folder, manifest, weights, ref)
    module = build_zoo(manifest["zoo"], **manifest["config"])
    try:
        missing, unexpected = load_safetensors(module, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise LayerscopeError(
            f"{str(weights)!r} is unreadable or does not fit {manifest['zoo']!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if missing or unexpected:
        raise LayerscopeError(
            f"{str(weights)!r} does not fit {manifest['zoo']!r}: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}; was it saved from another model?"
        )
    module.eval()
    loaded = describe_zoo_module(module, ref=ref or str(folder), spec=manifest["zoo"])
    if manifest.get("input_shape"):
        loaded.input_shape = tuple(manifest["input_shape"])
    if manifest.get("task"):
        loaded.task = manifest["task"]
    loaded.meta.update({"path": str(folder), "checkpoint": manifest})
    return loaded


def _replaceable(target: Path) -> bool:
    return target.is_dir() and ((target / CHECKPOINT_FILE).is_file() or not any(target.iterdir()))


def _swap_in(staging: Path, target: Path) -> None:
    """Move the finished folder into place; an old checkpoint is removed only afterwards."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["save_checkpoint", "load_checkpoint", "read_manifest", "CHECKPOINT_FILE",
           "WEIGHTS_FILE"]


def _load_pooled_head(folder: Path, manifest: dict, weights: Path, ref: str | None):
    """A pretrained encoder with the pooled head `layerscope train` gave it: the base model is
    loaded by its reference, then the trained weights of encoder and head replace its own."""
    from .models import load_model
    from .train.heads import PooledHead

    cfg = manifest["config"]
    try:
        base = load_model(cfg["base"])
        module = PooledHead(base.module, int(cfg["n_out"]), task=cfg.get("task", "regression"))
    except KeyError as exc:
        raise LayerscopeError(f"checkpoint {str(folder)!r} lacks {exc.args[0]!r} in its config; "
                              f"save it again with layerscope train") from None
    try:
        missing, unexpected = load_safetensors(module, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise LayerscopeError(f"{str(weights)!r} is unreadable or does not fit {cfg['base']!r} with a "
                              f"{cfg['n_out']}-output head ({type(exc).__name__})") from exc
    if missing or unexpected:
        raise LayerscopeError(f"{str(weights)!r} does not fit {cfg['base']!r} with a pooled head: missing "
                              f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    module.eval()
    base.module = module
    base.ref = ref or str(folder)
    base.task = manifest.get("task") or cfg.get("task")
    base.family = f"{base.family}+head"
    base.meta.update({"path": str(folder), "checkpoint": manifest})
    return base
