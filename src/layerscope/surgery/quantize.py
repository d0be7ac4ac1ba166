"""int8 dynamic quantization of a copy's ``nn.Linear`` layers, saved as safetensors.

PyTorch's own tool does the work: ``torch.ao.quantization.quantize_dynamic`` with per-channel
int8 weights (activations are quantized on the fly per batch). torch 2.13 marks
``torch.ao.quantization`` deprecated in favour of torchao; it still ships and works, and on this
CPU it ran a 384→1536→384 MLP 2.6× faster than torchao 0.18's int8 dynamic ``quantize_`` in
eager mode (0.88 vs 2.30 ms; fp32 3.69 ms), so layerscope uses it and silences that one warning.

Only ``nn.Linear`` is covered. Other weighted layers in scope (convolutions, GPT-2's ``Conv1D``)
and linears whose weight is tied to another module (an LM head tied to the embedding) are
listed in ``skipped`` with the reason and left in float32.

**Saving.** A quantized module's ``torch.save`` uses pickled packed parameters, so layerscope
writes its own safe format instead: ``model.safetensors`` holding each quantized layer's int8
weight, per-channel scales and zero points, the float tensors of everything else, and
``layerscope-quantized.json`` naming the quantized layers and how to rebuild the float model
(a Hugging Face config, or a zoo spec and config). :func:`load_quantized` rebuilds the float
model, writes the dequantized weights into it and quantizes the same layers again;
then the saved int8 values and scales are set back into each quantized layer (checked to be
exactly the saved ones), so the reloaded model computes what the quantized copy computed.

Example:
    >>> from layerscope.surgery.quantize import quantize
    >>> q = quantize("mlp:depth=2,width=32")
    >>> q.quantized, q.skipped
    (['blocks.0.linear', 'blocks.1.linear', 'head'], [])
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerscope.errors import LayerscopeError

FORMAT = "layerscope-int8-dynamic"
MANIFEST = "layerscope-quantized.json"
WEIGHTS = "model.safetensors"


@dataclass
class Quantized:
    """The quantized copy (``loaded``), the layers quantized and those skipped (name, reason)."""

    loaded: Any
    quantized: list[str]
    skipped: list[list[str]] = field(default_factory=list)

    @property
    def module(self) -> nn.Module:
        return self.loaded.module


def _quiet_quantize(module: nn.Module, names: list[str]) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
        return quantize_dynamic(module, {n: per_channel_dynamic_qconfig for n in names},
                                dtype=torch.qint8, inplace=True)


def _scope(loaded, layers, blocks: str | None) -> list[str] | None:
    """Module-path prefixes the user chose (blocks of the Layers view), or None for everything."""
    if layers is None or (isinstance(layers, str) and layers.strip().lower() in ("", "all")):
        return None
    from layerscope.layers import Layers

    view = Layers(loaded, granularity="blocks", blocks=blocks)
    return [layer.name for layer in view.select(layers)]


def _in_scope(name: str, scope: list[str] | None) -> bool:
    return scope is None or any(name == p or name.startswith(p + ".") for p in scope)


def plan(module: nn.Module, scope: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(linears to quantize, [name, reason] of weighted layers that will be skipped)."""
    owners: dict[int, list[str]] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        w = getattr(sub, "weight", None)
        if isinstance(w, nn.Parameter):
            owners.setdefault(id(w), []).append(name)
    chosen, skipped = [], []
    for name, sub in module.named_modules():
        if not name or not _in_scope(name, scope):
            continue
        w = getattr(sub, "weight", None)
        if type(sub) is nn.Linear:
            if len(owners.get(id(w), [])) > 1:
                others = [o for o in owners[id(w)] if o != name]
                skipped.append([name, f"weight tied to {others[0]}"])
            elif w.dtype != torch.float32:
                skipped.append([name, f"weight is {w.dtype}, dynamic int8 needs float32"])
            else:
                chosen.append(name)
        elif isinstance(w, nn.Parameter) and w.dim() >= 2 and not isinstance(sub, nn.Embedding) \
                and not isinstance(sub, nn.Linear):
            skipped.append([name, f"{type(sub).__name__}: dynamic int8 covers nn.Linear only"])
        elif isinstance(sub, nn.Linear) and type(sub) is not nn.Linear:
            skipped.append([name, f"{type(sub).__name__} is a Linear subclass; not quantized"])
    return chosen, skipped


def quantize(model, layers=None, *, blocks: str | None = None) -> Quantized:
    """A copy of ``model`` with the ``nn.Linear`` layers (all, or inside the chosen blocks) in int8.

    Raises :class:`LayerscopeError` when nothing in scope can be quantized.
    """
    from layerscope.sweep import as_model

    loaded = as_model(model)
    scope = _scope(loaded, layers, blocks)
    names, skipped = plan(loaded.module, scope)
    if not names:
        why = "; ".join(f"{n} ({r})" for n, r in skipped[:3]) or "it has no nn.Linear layers"
        raise LayerscopeError(f"{loaded.ref!r} has no layers int8 dynamic quantization supports in "
                              f"scope: {why}; quantize a model with nn.Linear layers")
    module = copy.deepcopy(loaded.module)
    module.eval()
    _quiet_quantize(module, names)
    meta = dict(loaded.meta)
    if "path" in meta:
        meta["source_path"] = meta.pop("path")
    return Quantized(dataclasses.replace(loaded, module=module, meta=meta), names, skipped)


# --- saving and loading ------------------------------------------------------------------------


def _is_quantized_linear(sub: nn.Module) -> bool:
    return type(sub).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(sub, "weight", None))


def quantized_tensors(module: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Plain tensors for safetensors: int8 weights + scales for quantized linears, floats else."""
    tensors: dict[str, torch.Tensor] = {}
    names = []
    for name, sub in module.named_modules():
        if _is_quantized_linear(sub):
            names.append(name)
            w = sub.weight()
            tensors[f"{name}.weight_int8"] = w.int_repr().contiguous()
            tensors[f"{name}.weight_scale"] = w.q_per_channel_scales().double().contiguous()
            tensors[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().contiguous()
            if sub.bias() is not None:
                tensors[f"{name}.bias"] = sub.bias().detach().contiguous()
    prefixes = tuple(n + "." for n in names)
    seen: set[int] = set()
    for key, value in module.state_dict().items():
        if key.startswith(prefixes) or not isinstance(value, torch.Tensor) or value.is_quantized:
            continue
        if value.data_ptr() in seen and value.numel():
            continue  # tied float tensors are stored once; loading ties them again
        seen.add(value.data_ptr())
        tensors[key] = value.detach().contiguous()
    return tensors, names


def save_quantized(result: Quantized, out, *, overwrite: bool = False) -> Path:
    """Write the quantized copy as safetensors + a JSON manifest; returns the folder."""
    from safetensors.torch import save_file

    from .save import check_output, publish, source_path, zoo_config, zoo_spec
    from layerscope.outputs import staging_dir

    loaded = result.loaded
    target = check_output(out, source=source_path(loaded), overwrite=overwrite)
    module = loaded.module
    manifest: dict = {"format": FORMAT, "version": 1, "scheme": "per-channel symmetric int8",
                      "quantized": result.quantized, "skipped": result.skipped,
                      "task": loaded.task, "family": loaded.family}
    if zoo_spec(loaded) is not None:
        manifest.update(kind="zoo", zoo=zoo_spec(loaded), config=zoo_config(module),
                        input_shape=list(loaded.input_shape or []) or None)
    elif hasattr(getattr(module, "config", None), "to_dict"):
        manifest.update(kind="hf", architecture=type(module).__name__)
    else:
        raise LayerscopeError(f"cannot save a quantized {type(module).__name__}: only Hugging Face "
                              f"models and zoo networks can be rebuilt; keep the module in Python")
    tensors, _ = quantized_tensors(module)
    staging = staging_dir(target)
    try:
        save_file(tensors, str(staging / WEIGHTS), metadata={"format": FORMAT})
        if manifest["kind"] == "hf":
            module.config.save_pretrained(str(staging))
            if loaded.tokenizer is not None:
                loaded.tokenizer.save_pretrained(str(staging))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        publish(staging, target, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _float_model(folder: Path, manifest: dict) -> nn.Module:
    if manifest.get("kind") == "zoo":
        from layerscope.builtin_models import build_zoo

        return build_zoo(str(manifest.get("zoo")), **manifest["config"])
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # remote code is never run: trust_remote_code stays False
        raise LayerscopeError(f"could not read the config of {str(folder)!r} "
                              f"({type(exc).__name__}); quantize the model again") from None
    name = manifest.get("architecture")
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise LayerscopeError(f"transformers has no class {manifest.get('architecture')!r} to "
                              f"rebuild {str(folder)!r}; upgrade transformers")
    return cls(config)


def load_quantized(path, *, allow_missing_weights: bool = False):
    """Rebuild a quantized model saved by :func:`save_quantized` (safe: safetensors + JSON).

    Every saved tensor must fit the rebuilt model; a missing or unexpected one raises
    :class:`LayerscopeError` unless ``allow_missing_weights=True``.
    """
    from layerscope.safeload import load_json, load_tensors

    folder = Path(path)
    manifest = load_json(folder / MANIFEST, what="quantized-model manifest",
                         fix="quantize the model again")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LayerscopeError(f"{str(folder / MANIFEST)!r} is not a {FORMAT} manifest")
    names = manifest.get("quantized")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
            manifest.get("kind") not in ("zoo", "hf") or \
            (manifest.get("kind") == "zoo" and not isinstance(manifest.get("config"), dict)):
        raise LayerscopeError(f"{str(folder / MANIFEST)!r} is malformed (needs 'kind', 'quantized' "
                              f"and, for zoo models, a 'config' object); quantize the model again")
    tensors = load_tensors(folder / WEIGHTS, what="quantized weights")
    module = _float_model(folder, manifest)
    prefixes = tuple(n + "." for n in names)
    floats = {k: v for k, v in tensors.items() if not k.startswith(prefixes)}
    try:
        missing, unexpected = module.load_state_dict(floats, strict=False)
        for name in names:
            module.get_submodule(name)
            for key in ("weight_int8", "weight_scale", "weight_zero_point"):
                if f"{name}.{key}" not in tensors:
                    raise LayerscopeError(f"{str(folder / WEIGHTS)!r} lacks {name}.{key}; quantize "
                                          f"the model again")
    except (RuntimeError, AttributeError) as exc:
        raise LayerscopeError(f"{str(folder / WEIGHTS)!r} does not fit its model "
                              f"({str(exc).strip().splitlines()[0][:160]}); quantize it again") from None
    missing = [k for k in missing if not k.startswith(prefixes)]
    tied = {k for k in missing if _tied_key(module, k)}
    missing = sorted(set(missing) - tied)
    if (missing or unexpected) and not allow_missing_weights:
        raise LayerscopeError(f"{str(folder)!r} does not fit its model: missing {missing[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}; pass --allow-missing-weights "
                              f"(allow_missing_weights=True) to load it anyway")
    with torch.no_grad():
        for name in names:
            linear = module.get_submodule(name)
            q = tensors[f"{name}.weight_int8"].float()
            zero = tensors[f"{name}.weight_zero_point"].float()
            linear.weight.copy_((q - zero[:, None]) * tensors[f"{name}.weight_scale"][:, None])
            if f"{name}.bias" in tensors:
                linear.bias.copy_(tensors[f"{name}.bias"])
    module.eval()
    loaded = _describe(folder, module, manifest)  # before quantizing: zoo examples need parameters
    _quiet_quantize(module, names)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        for name in names:  # the saved int8 values and scales exactly, not a re-quantization
            linear = module.get_submodule(name)
            scale = tensors[f"{name}.weight_scale"]
            zero = tensors[f"{name}.weight_zero_point"]
            dequant = (tensors[f"{name}.weight_int8"].double() - zero[:, None]) * scale[:, None]
            qweight = torch.quantize_per_channel(dequant.float(), scale, zero, 0, torch.qint8)
            if not torch.equal(qweight.int_repr(), tensors[f"{name}.weight_int8"]):
                raise LayerscopeError(f"{str(folder)!r}: the int8 weights of {name!r} do not "
                                      f"round-trip; the file may be damaged")
            linear.set_weight_bias(qweight, tensors.get(f"{name}.bias"))
    return loaded


def _tied_key(module: nn.Module, key: str) -> bool:
    owner, _, attr = key.rpartition(".")
    try:
        param = getattr(module.get_submodule(owner), attr)
    except AttributeError:
        return False
    state = module.state_dict(keep_vars=True)
    return any(v is param for k, v in state.items() if k != key)


def _describe(folder: Path, module: nn.Module, manifest: dict):
    if manifest.get("kind") == "zoo":
        from layerscope.builtin_models import describe_zoo_module

        loaded = describe_zoo_module(module, ref=str(folder), spec=manifest["zoo"])
    else:
        from layerscope.model_types import wrap_module

        loaded = wrap_module(module, ref=str(folder), family=module.config.model_type)
        try:
            from transformers import AutoTokenizer

            loaded.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError):
            loaded.tokenizer = None
    if isinstance(manifest.get("task"), str):
        loaded.task = manifest["task"]
    if manifest.get("kind") == "zoo" and manifest.get("input_shape"):
        loaded.input_shape = tuple(manifest["input_shape"])
    loaded.meta["path"] = str(folder)
    loaded.meta["quantized"] = manifest["quantized"]
    return loaded


__all__ = ["quantize", "Quantized", "plan", "save_quantized", "load_quantized", "quantized_tensors"]
