"""Where surgery writes its result, and how: the model's own format, never over the input.

A Hugging Face model is saved with ``save_pretrained`` (plus its tokenizer) so that
``from_pretrained`` loads it; a zoo network is saved as a layerscope checkpoint whose config
rebuilds the changed shape. The output folder may not be the input folder, and an existing
folder is refused unless ``overwrite=True``.

Example:
    >>> import tempfile
    >>> from layerscope.surgery.save import check_output
    >>> check_output(tempfile.mkdtemp(), source=None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerscope.errors.LayerscopeError: output folder ... exists; choose a new folder or pass --overwrite
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from layerscope.errors import LayerscopeError


def source_path(loaded) -> Path | None:
    """The folder a loaded model came from (HF folder or checkpoint), if any."""
    meta = loaded.meta if loaded is not None else {}
    path = meta.get("path") or meta.get("source_path")
    return Path(path).expanduser().resolve() if path else None


def check_output(out, *, source=None, overwrite: bool = False) -> Path:
    """The output folder, checked: not the input folder, not existing unless ``overwrite``."""
    target = Path(out).expanduser().resolve()
    src = Path(source).expanduser().resolve() if source else None
    if src is not None and (target == src or src in target.parents or target in src.parents):
        raise LayerscopeError(
            f"output folder {str(out)!r} overlaps the input model's folder {str(src)!r}; "
            f"write the result to a new folder")
    if target.exists() and not overwrite:
        raise LayerscopeError(
            f"output folder {str(out)!r} exists; choose a new folder or pass --overwrite")
    if target.exists() and not target.is_dir():
        raise LayerscopeError(f"output {str(out)!r} is a file; give a folder path")
    return target


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
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=_parent(target)))
    try:
        if hasattr(module, "save_pretrained") and hasattr(module, "config"):
            config = module.config
            if getattr(config, "quantization_config", None) is not None:
                delattr(config, "quantization_config")
            module.save_pretrained(str(staging))
            if loaded.tokenizer is not None:
                loaded.tokenizer.save_pretrained(str(staging))
        elif spec is not None:
            from layerscope.models import save_checkpoint

            shutil.rmtree(staging)
            task = getattr(module, "task", None)
            save_checkpoint(module, staging, spec=spec, config=zoo_config(module),
                            task=task if isinstance(task, str) else None,
                            input_shape=loaded.input_shape, extra=extra)
        else:
            raise LayerscopeError(
                f"cannot save {type(module).__name__}: only Hugging Face models and zoo networks "
                f"have a format that reloads; use the Python API to keep the changed module")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def folder_bytes(path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


__all__ = ["rebuild_zoo", "check_output", "save_model", "folder_bytes", "source_path", "zoo_spec",
           "zoo_config"]
