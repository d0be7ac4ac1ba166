"""Layerscope checkpoint folders: ``model.safetensors`` + ``layerscope.json``.

``layerscope.json`` holds ``{"format": "layerscope-checkpoint", "version": 1, "zoo": spec,
"config": {...}, "task": ..., "input_shape": ..., **extra}``; loading rebuilds the network with
``zoo.build(spec, **config)`` and loads the weights strictly. Folders are written atomically: a
checkpoint is either the old one or the complete new one, never half written, and a folder that
holds anything but a checkpoint is refused (see :mod:`layerscope.outputs`).

Nothing named in ``layerscope.json`` runs as code unless ``trust_remote_code=True``: the base of a
pooled-head checkpoint must be a built-in name, a model folder or a hub id, and a network trained
from a factory is rebuilt by calling that factory only when trusted.

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
import re
import shutil
from pathlib import Path
from typing import Callable

from safetensors.torch import save_model as save_safetensors
from torch import nn

from .errors import LayerscopeError
from .factories import load_factory, looks_like_factory
from .outputs import claim_dir, publish_dir, staging_dir
from .safeload import load_json, load_weights

CHECKPOINT_FILE = "layerscope.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "layerscope-checkpoint"
VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def save_checkpoint(module: nn.Module, path, *, spec: str, config, task=None, input_shape=None,
                    extra: dict | None = None, force: bool = False) -> Path:
    """Write ``module``'s weights and how to rebuild it to the folder ``path``; returns the path.

    ``config`` is a dict or a dataclass (a zoo model's ``.config``). An existing folder is
    replaced only when it is a layerscope checkpoint or empty (or ``force=True``; the user's own
    files in it are kept).
    """
    manifest = checkpoint_manifest(spec=spec, config=config, task=task, input_shape=input_shape,
                                   extra=extra)
    target = claim_dir(path, "checkpoint", force=force, recognise=_older_checkpoint)
    staging = staging_dir(target)
    try:
        write_checkpoint(module, staging, manifest)
        publish_dir(staging, target, "checkpoint")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def checkpoint_manifest(*, spec: str, config, task=None, input_shape=None,
                        extra: dict | None = None) -> dict:
    """The ``layerscope.json`` contents for a zoo network (checked to be JSON data)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    manifest = {"format": FORMAT, "version": VERSION, "zoo": spec, "config": dict(config or {}),
                "task": task, "input_shape": list(input_shape) if input_shape else None,
                **(extra or {})}
    try:
        json.dumps(manifest)
    except TypeError as exc:
        raise LayerscopeError(f"checkpoint config must be JSON data: {exc}") from exc
    return manifest


def write_checkpoint(module: nn.Module, folder, manifest: dict) -> None:
    """Write ``model.safetensors`` and ``layerscope.json`` into the existing folder ``folder``."""
    folder = Path(folder)
    save_safetensors(module, str(folder / WEIGHTS_FILE))
    (folder / CHECKPOINT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _older_checkpoint(folder: Path):
    """The files of a checkpoint written before folders were marked, else None."""
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    if CHECKPOINT_FILE in names and names <= {CHECKPOINT_FILE, WEIGHTS_FILE}:
        return sorted(names)
    return None


def read_manifest(path) -> dict:
    """The checked contents of a checkpoint folder's ``layerscope.json``."""
    folder = Path(path)
    where = repr(str(folder / CHECKPOINT_FILE))
    manifest = load_json(folder / CHECKPOINT_FILE, what="checkpoint manifest",
                         fix="save the checkpoint again")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LayerscopeError(f"{where} is not a layerscope checkpoint")
    if manifest.get("version") != VERSION:
        raise LayerscopeError(
            f"checkpoint {str(folder)!r} has version {manifest.get('version')!r}; this layerscope "
            f"reads version {VERSION}: upgrade layerscope"
        )
    if not isinstance(manifest.get("zoo"), str):
        raise LayerscopeError(f"checkpoint {str(folder)!r} names no zoo model to rebuild")
    if manifest.get("config") is None:
        manifest["config"] = {}
    if not isinstance(manifest["config"], dict):
        raise LayerscopeError(f"{where}: 'config' must be a JSON object of settings; got "
                              f"{type(manifest['config']).__name__}; save the checkpoint again")
    shape = manifest.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape and
                                  all(isinstance(d, int) and d > 0 for d in shape)):
        raise LayerscopeError(f"{where}: 'input_shape' must be a list of positive integers or "
                              f"null; got {shape!r}")
    if manifest.get("task") is not None and not isinstance(manifest["task"], str):
        raise LayerscopeError(f"{where}: 'task' must be a string or null; got {manifest['task']!r}")
    return manifest


def load_checkpoint(path, *, ref: str | None = None, trust_remote_code: bool = False,
                    allow_missing_weights: bool = False, load_ref: Callable | None = None):
    """Rebuild the network of a checkpoint folder and load its weights (strict), in eval mode.

    ``load_ref`` loads a pooled-head checkpoint's base model by reference (the dispatcher,
    :func:`layerscope.models.load_model`); it is passed in so this loader never imports it.
    """
    from .builtin_models import build_zoo, describe_zoo_module, zoo_names

    folder = Path(path)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise LayerscopeError(f"checkpoint {str(folder)!r} has no {WEIGHTS_FILE}; save it again")
    spec = manifest["zoo"]
    options = {"trust_remote_code": trust_remote_code, "allow_missing_weights": allow_missing_weights}
    if spec == "pooled-head":
        return _load_pooled_head(folder, manifest, weights, ref, load_ref, options)
    if spec.split(":", 1)[0] not in zoo_names():
        return _load_factory_trained(folder, manifest, weights, ref, options, load_ref)
    module = build_zoo(spec, **manifest["config"])
    load_weights(module, weights, what=f"zoo model {spec!r}",
                 allow_missing_weights=allow_missing_weights)
    module.eval()
    loaded = describe_zoo_module(module, ref=ref or str(folder), spec=spec)
    if manifest.get("input_shape"):
        loaded.input_shape = tuple(manifest["input_shape"])
    if manifest.get("task"):
        loaded.task = manifest["task"]
    loaded.meta.update({"path": str(folder), "checkpoint": manifest})
    return loaded


def looks_like_code(ref: str) -> bool:
    """Whether ``ref`` names code to run: ``pkg.module:function``, ``file.py:function`` or a ``.py``.

    Example:
        >>> looks_like_code("payload.py:make"), looks_like_code("mlp:depth=2")
        (True, False)
    """
    return ref.endswith(".py") or looks_like_factory(ref)


def check_base_reference(base, folder: Path, trust_remote_code: bool) -> str:
    """A checkpoint's base model reference, refused when it names code and code is not trusted.

    Allowed: a built-in name (real model or zoo spec), a model folder, a hub id ``org/name``.

    Example:
        >>> check_base_reference("minilm", Path("ck"), False)
        'minilm'
        >>> check_base_reference("payload.py:make", Path("ck"), False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        layerscope.errors.LayerscopeError: checkpoint 'ck' names the code 'payload.py:make' ...
    """
    from .builtin_models import REAL_MODELS, zoo_names

    if not isinstance(base, str) or not base.strip():
        raise LayerscopeError(f"checkpoint {str(folder)!r} names no base model ('base' in its "
                              f"config); save it again with layerscope train")
    base = base.strip()
    if base.lower() in REAL_MODELS or base.split(":", 1)[0] in zoo_names():
        return base
    if looks_like_code(base):
        if trust_remote_code:
            return base
        raise LayerscopeError(
            f"checkpoint {str(folder)!r} names the code {base!r} as its base model; rerun with "
            f"--trust-remote-code (trust_remote_code=True) only if you trust that code")
    if Path(base).expanduser().is_dir() or _HUB_ID.match(base):
        return base
    raise LayerscopeError(f"checkpoint {str(folder)!r} names the base model {base!r}, which is "
                          f"no built-in name, model folder or hub id; save it again")


def _load_factory_trained(folder: Path, manifest: dict, weights: Path, ref, options,
                          load_ref=None):
    """A network trained from a factory: rebuilt by that factory, only when code is trusted."""

    trained = manifest.get("trained") if isinstance(manifest.get("trained"), dict) else {}
    made_by = trained.get("model")
    if isinstance(made_by, str) and not looks_like_code(made_by) and load_ref is not None \
            and _is_model_reference(made_by):
        return _load_model_trained(folder, manifest, weights, ref, made_by, load_ref, options)
    if not isinstance(made_by, str) or ":" not in made_by or not looks_like_code(made_by):
        raise LayerscopeError(
            f"checkpoint {str(folder)!r} holds a {manifest['zoo']!r} that layerscope cannot rebuild "
            f"(no zoo name or factory recorded); build the module in Python and load "
            f"{str(weights)!r} with safetensors.torch.load_model(module, path)")
    if not options["trust_remote_code"]:
        raise LayerscopeError(
            f"checkpoint {str(folder)!r} is rebuilt by running the factory {made_by!r}; rerun with "
            f"--trust-remote-code (trust_remote_code=True) only if you trust that code")
    loaded = load_factory(made_by, input_shape=manifest.get("input_shape"))
    return _with_trained_weights(loaded, f"factory {made_by!r}", folder, manifest, weights, ref,
                                 options)


def _is_model_reference(text: str) -> bool:
    try:
        check_base_reference(text, Path("."), False)
    except LayerscopeError:
        return False
    return True


def _load_model_trained(folder: Path, manifest: dict, weights: Path, ref, made_by: str, load_ref,
                        options):
    """A trained model layerscope loaded by reference (e.g. a Hugging Face LM): that model is
    loaded again and the trained weights replace its own, strictly."""
    base_ref = check_base_reference(made_by, folder, options["trust_remote_code"])
    loaded = load_ref(base_ref, **options)
    want = manifest["zoo"].split(":", 1)[1] if manifest["zoo"].startswith("module:") else None
    if want is not None and type(loaded.module).__name__ != want:
        raise LayerscopeError(
            f"checkpoint {str(folder)!r} holds a {want} trained from {made_by!r}, which now loads "
            f"as {type(loaded.module).__name__}; load {str(weights)!r} into a {want} yourself")
    return _with_trained_weights(loaded, f"{made_by!r}", folder, manifest, weights, ref, options)


def _with_trained_weights(loaded, what: str, folder: Path, manifest: dict, weights: Path, ref,
                          options: dict):
    """``loaded`` with the checkpoint's weights in place of its own (strict), in eval mode, named
    and described by the checkpoint."""
    load_weights(loaded.module, weights, what=what,
                 allow_missing_weights=options["allow_missing_weights"])
    loaded.module.eval()
    loaded.ref = ref or str(folder)
    if manifest.get("task"):
        loaded.task = manifest["task"]
    loaded.meta.update({"path": str(folder), "checkpoint": manifest})
    return loaded


def _load_pooled_head(folder: Path, manifest: dict, weights: Path, ref: str | None, load_ref,
                      options: dict):
    """A pretrained encoder with the pooled head `layerscope train` gave it: the base model is
    loaded by its reference, then the trained weights of encoder and head replace its own."""
    from .train.heads import PooledHead

    cfg = manifest["config"]
    base_ref = check_base_reference(cfg.get("base"), folder, options["trust_remote_code"])
    if load_ref is None:
        raise LayerscopeError(f"checkpoint {str(folder)!r} needs its base model {base_ref!r}: load "
                              f"it with layerscope.models.load_model")
    try:
        n_out = int(cfg["n_out"])
    except KeyError as exc:
        raise LayerscopeError(f"checkpoint {str(folder)!r} lacks {exc.args[0]!r} in its config; "
                              f"save it again with layerscope train") from None
    except (TypeError, ValueError):
        raise LayerscopeError(f"checkpoint {str(folder)!r}: 'n_out' must be an integer; got "
                              f"{cfg['n_out']!r}") from None
    base = load_ref(base_ref, **options)
    module = PooledHead(base.module, n_out, task=cfg.get("task", "regression"))
    load_weights(module, weights, what=f"{base_ref!r} with a {n_out}-output pooled head",
                 allow_missing_weights=options["allow_missing_weights"])
    module.eval()
    base.module = module
    base.ref = ref or str(folder)
    base.task = manifest.get("task") or cfg.get("task")
    base.family = f"{base.family}+head"
    base.meta.update({"path": str(folder), "checkpoint": manifest})
    return base


__all__ = ["save_checkpoint", "load_checkpoint", "read_manifest", "checkpoint_manifest",
           "write_checkpoint", "check_base_reference", "looks_like_code", "CHECKPOINT_FILE",
           "WEIGHTS_FILE"]
