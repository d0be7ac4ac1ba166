"""Where surgery writes its result, and how: the model's own format, never over the input.

A Hugging Face model is saved with ``save_pretrained`` (plus its tokenizer) so that
``from_pretrained`` loads it; a zoo network is saved as a layerscope checkpoint whose config
rebuilds the changed shape. The output folder may not be the input folder; an existing folder is
replaced only when it holds an earlier layerscope model output (its marker, see
:mod:`layerscope.outputs`), otherwise refused unless ``overwrite=True`` (``--force``), and even
then only files of the same names are replaced. The folder appears whole once the model is
written. Early-exit heads are saved beside no model: :func:`load_exit_heads` reads them back.

Example:
    >>> import pathlib, tempfile
    >>> from layerscope.surgery.save import check_output
    >>> taken = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (taken / "notes.txt").write_text("mine")
    >>> check_output(taken, source=None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerscope.errors.LayerscopeError: output folder ... is not empty and was not written by layerscope (model); pass --force to write there anyway, or another -o
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from torch import nn

from layerscope.errors import LayerscopeError
from layerscope.outputs import check_dir, claim_dir, publish_dir, staging_dir

KIND = "model"
EXIT_KIND = "early-exit"


def source_path(loaded) -> Path | None:
    """The folder a loaded model came from (HF folder or checkpoint), if any."""
    meta = loaded.meta if loaded is not None else {}
    path = meta.get("path") or meta.get("source_path")
    return Path(path).expanduser().resolve() if path else None


def check_output(out, *, source=None, overwrite: bool = False, kind: str = KIND) -> Path:
    """The output folder, checked before any work (nothing is created): not the input folder,
    and new, empty or an earlier layerscope output of ``kind`` unless ``overwrite``."""
    target = Path(out).expanduser().resolve()
    src = Path(source).expanduser().resolve() if source else None
    if src is not None and (target == src or src in target.parents or target in src.parents):
        raise LayerscopeError(
            f"output folder {str(out)!r} overlaps the input model's folder {str(src)!r}; "
            f"write the result to a new folder")
    check_dir(target, kind, force=overwrite, recognise=_older_output)
    return target


def _older_output(folder: Path):
    """The files of a model folder saved before output folders were marked, else None."""
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    if ("config.json" in names or "layerscope.json" in names) and \
            all(p.is_file() for p in folder.iterdir()):
        return sorted(names)
    return None


def publish(staging: Path, out, *, overwrite: bool = False, kind: str = KIND) -> Path:
    """Claim ``out`` and move the finished ``staging`` folder into it (see :mod:`layerscope.outputs`)."""
    target = claim_dir(Path(out).expanduser().resolve(), kind, force=overwrite,
                       recognise=_older_output)
    return publish_dir(staging, target, kind)


def zoo_spec(loaded) -> str | None:
    """The zoo name of a zoo network (``"mlp"`` for ``"mlp:depth=3"``), else None."""
    spec = loaded.meta.get("zoo_spec")
    return spec.split(":", 1)[0] if isinstance(spec, str) else None


def zoo_config(module: nn.Module) -> dict:
    """A zoo network's config as a plain dict."""
    config = getattr(module, "config", None)
    if not dataclasses.is_dataclass(config):
        raise LayerscopeError(f"{type(module).__name__} has no zoo config to save; "
                              f"only zoo networks and Hugging Face models can be saved")
    return dataclasses.asdict(config)


def rebuild_zoo(loaded, module: nn.Module, **changes) -> nn.Module:
    """A fresh zoo network from ``module.config`` with ``changes``, holding ``module``'s weights.

    The config dataclass is rebuilt first, so values it derives (a CNN's width and depth from
    its channels) stay consistent; a weight that does not fit raises :class:`LayerscopeError`.
    """
    from layerscope.builtin_models import build_zoo

    values = {**dataclasses.asdict(module.config), **changes}
    config = type(module.config)(**values)
    fresh = build_zoo(zoo_spec(loaded), **dataclasses.asdict(config))
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise LayerscopeError(f"the changed {loaded.ref!r} no longer fits its zoo config "
                              f"(e.g. {bad[0]}: {got.get(bad[0])} vs {want.get(bad[0])})")
    fresh.load_state_dict(module.state_dict())
    fresh.train(module.training)
    return fresh


def save_model(loaded, module: nn.Module, out, *, overwrite: bool = False,
               extra: dict | None = None) -> Path:
    """Save ``module`` (the changed copy of ``loaded.module``) in the model's own format.

    Hugging Face models: ``save_pretrained`` + the tokenizer. Zoo networks: a layerscope
    checkpoint with ``module.config``. Anything else raises :class:`LayerscopeError`.
    """
    target = check_output(out, source=source_path(loaded), overwrite=overwrite)
    spec = zoo_spec(loaded)
    is_hf = hasattr(module, "save_pretrained") and hasattr(module, "config")
    if not is_hf and spec is None:
        raise LayerscopeError(
            f"cannot save {type(module).__name__}: only Hugging Face models and zoo networks "
            f"have a format that reloads; use the Python API to keep the changed module")
    staging = staging_dir(target)
    try:
        if is_hf:
            config = module.config
            if getattr(config, "quantization_config", None) is not None:
                delattr(config, "quantization_config")
            module.save_pretrained(str(staging))
            if loaded.tokenizer is not None:
                loaded.tokenizer.save_pretrained(str(staging))
        else:
            from layerscope.checkpoint import checkpoint_manifest, write_checkpoint

            task = getattr(module, "task", None)
            manifest = checkpoint_manifest(spec=spec, config=zoo_config(module),
                                           task=task if isinstance(task, str) else None,
                                           input_shape=loaded.input_shape, extra=extra)
            write_checkpoint(module, staging, manifest)
        publish(staging, target, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_exit_info(folder, *, base: str, blocks: str | None = None) -> None:
    """Note beside saved early-exit heads which model they belong to (``exit_model.json``)."""
    (Path(folder) / "exit_model.json").write_text(
        json.dumps({"format": "layerscope-early-exit", "base": base, "blocks": blocks}, indent=2) + "\n")


def load_exit_heads(path) -> dict:
    """Early-exit heads saved by ``layerscope early-exit -o``: ``{"base": ref or None,
    "blocks": ..., "heads": {exit name: ExitHead}}`` (safetensors + JSON; nothing unpickled)."""
    from layerscope.safeload import load_json, load_tensors

    from .early_exit import ExitHead

    folder = Path(path)
    info = load_json(folder / "exit_heads.json", what="early-exit heads list",
                     fix="run layerscope early-exit -o again")
    names = info.get("exits") if isinstance(info, dict) else None
    if not isinstance(names, list):
        raise LayerscopeError(f"{str(folder / 'exit_heads.json')!r} lists no exits; run "
                              f"layerscope early-exit -o again")
    tensors = load_tensors(folder / "exit_heads.safetensors", what="early-exit heads")
    keys = ("mean", "scale", "coef", "intercept", "classes")
    try:
        heads = {n: ExitHead(*(tensors[f"{n}.{k}"].numpy() for k in keys)) for n in names}
    except KeyError as exc:
        raise LayerscopeError(f"{str(folder)!r}: the heads file lacks {exc.args[0]!r}; run "
                              f"layerscope early-exit -o again") from None
    base = {}
    if (folder / "exit_model.json").is_file():
        base = load_json(folder / "exit_model.json", what="early-exit base model note")
    return {"base": base.get("base"), "blocks": base.get("blocks"), "heads": heads}


def folder_bytes(path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


__all__ = ["rebuild_zoo", "check_output", "publish", "save_model", "folder_bytes", "source_path",
           "zoo_spec", "zoo_config", "write_exit_info", "load_exit_heads"]
