"""Hugging Face folders and hub ids -> :class:`~layerscope.model_types.LoadedModel`.

The model class comes from ``config.architectures``: causal-LM architectures load with
``AutoModelForCausalLM``, any other architecture transformers knows loads as that class, and a
config without architectures loads with ``AutoModel``. The tokenizer is loaded when the folder has
one. Remote code runs only with ``trust_remote_code=True``. A local folder must hold safetensors
weights (pickled ``.bin`` files are never unpickled), and a load that leaves weights missing or
unexpected is refused unless ``allow_missing_weights=True``.

Example:
    >>> import tempfile, torch, transformers
    >>> from layerscope.hf import load_hf
    >>> cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
    ...                               num_attention_heads=2, intermediate_size=16)
    >>> folder = tempfile.mkdtemp()
    >>> transformers.BertModel(cfg).save_pretrained(folder)
    >>> model = load_hf(folder, ref=folder)
    >>> (model.family, model.modality, model.task, model.tokenizer is None)
    ('bert', 'text', 'encoder', True)
"""

from __future__ import annotations

from pathlib import Path

from .errors import LayerscopeError
from .layouts import task_of_class_name
from .model_types import LoadedModel, hf_meta
from .safeload import count_keys

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def load_hf(source: str, *, ref: str, trust_remote_code: bool = False, dtype=None,
            hub: bool = False, family: str | None = None, task: str | None = None,
            allow_missing_weights: bool = False) -> LoadedModel:
    """Load a local Hugging Face folder (or, with ``hub=True``, a hub id) in eval mode."""
    config = _load_config(source, ref, trust_remote_code, hub)
    if not hub:
        _check_weight_files(Path(source), ref)
    model_class, guessed_task = _model_class(config, trust_remote_code)
    options = {"trust_remote_code": trust_remote_code, "output_loading_info": True}
    if not hub:
        options["use_safetensors"] = True
    if dtype is not None:
        options[_dtype_keyword()] = dtype
    name = getattr(model_class, "__name__", str(model_class))
    try:
        module, info = model_class.from_pretrained(source, config=config, **options)
    except Exception as exc:  # transformers and safetensors raise many kinds for a bad folder
        where = "from the Hugging Face hub" if hub else "from the folder"
        raise LayerscopeError(f"could not load {ref!r} {where} as {name}: {_first_line(exc)}") from exc
    _check_loading_info(info, ref, name, allow_missing_weights)
    module.eval()
    tokenizer = _load_tokenizer(source, hub, trust_remote_code)
    meta = hf_meta(module)
    meta["path"] = source
    main_input = getattr(module, "main_input_name", "input_ids")
    input_shape = None
    if main_input == "input_ids":
        modality = "text"
    elif main_input == "pixel_values":
        modality = "image"
        input_shape = _image_shape(config)
    else:
        modality = "tensor"
    return LoadedModel(module=module, ref=ref, family=family or config.model_type,
                       modality=modality, task=task or guessed_task, tokenizer=tokenizer,
                       input_shape=input_shape, meta=meta)


def _check_weight_files(folder: Path, ref: str) -> None:
    """A local folder must hold safetensors weights; pickled ones are never loaded."""
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        for file in weights:
            _check_safetensors(file, ref)
        return
    if (folder / "model.safetensors.index.json").is_file():
        raise LayerscopeError(f"folder {ref!r} lists its weights in model.safetensors.index.json "
                              f"but holds none of the shards; copy the whole model folder")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise LayerscopeError(
            f"folder {ref!r} holds only pickled weights ({', '.join(pickled[:2])}), which layerscope "
            f"never unpickles; convert them to safetensors (load it in transformers where you "
            f"trust it and save_pretrained(..., safe_serialization=True))")
    raise LayerscopeError(f"folder {ref!r} has a config.json but no *.safetensors weights; "
                          f"pass a complete model folder")


def _check_safetensors(file: Path, ref: str) -> None:
    """A weights file whose header or size does not add up (cut short, not safetensors) is one line."""
    import json
    import struct

    size = file.stat().st_size
    problem = None
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if n is None or n > size - 8:
                problem = "its header is cut short"
            else:
                header = json.loads(fh.read(n))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
                if 8 + n + max(ends, default=0) > size:
                    problem = f"it is cut short ({size:,} of {8 + n + max(ends):,} bytes)"
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        problem = "it is not a safetensors file"
    if problem:
        raise LayerscopeError(f"the weights of {ref!r} are damaged: {file.name} is unreadable "
                              f"({problem}); copy or save the model again")


def _check_loading_info(info: dict, ref: str, name: str, allow: bool) -> None:
    """Refuse a load that left weights missing, unexpected or of the wrong shape."""
    problems = []
    for key, label in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                       ("mismatched_keys", "of another shape")):
        found = [str(k[0] if isinstance(k, (tuple, list)) else k) for k in (info or {}).get(key) or []]
        if found:
            problems.append(count_keys(found, label))
    if problems and not allow:
        raise LayerscopeError(
            f"the weights in {ref!r} do not fit {name}: {'; '.join(problems)} weights; it would run "
            f"with random weights there. Pass --allow-missing-weights (allow_missing_weights=True) "
            f"to load it anyway")


def _load_config(source: str, ref: str, trust_remote_code: bool, hub: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise LayerscopeError(
                f"model {ref!r} needs its own Python code to load; rerun with "
                f"--trust-remote-code (trust_remote_code=True) only if you trust its source"
            ) from exc
        raise LayerscopeError(f"could not read the config of {ref!r}: {_first_line(exc)}") from exc
    except OSError as exc:
        if hub:
            raise LayerscopeError(
                f"{ref!r} is not a local folder and could not be fetched from the Hugging Face "
                f"hub (no network, or no such model); pass a local folder holding config.json"
            ) from exc
        raise LayerscopeError(f"could not read {ref!r}/config.json: {_first_line(exc)}") from exc


def _model_class(config, trust_remote_code: bool):
    """The class to load with, and the task it implies."""
    import transformers

    architectures = list(getattr(config, "architectures", None) or [])
    for arch in architectures:
        if task_of_class_name(arch) == "causal-lm":
            return transformers.AutoModelForCausalLM, "causal-lm"
    has_remote = bool(getattr(config, "auto_map", None)) and trust_remote_code
    for arch in architectures:
        cls = None if has_remote else _known_class(transformers, arch)
        if cls is not None:
            return cls, _task_of(arch, config)
    return transformers.AutoModel, _task_of(architectures[0] if architectures else "", config)


def _known_class(transformers, name: str):
    try:
        cls = getattr(transformers, name, None)
    except Exception:  # a lazily imported class whose optional dependency is missing
        return None
    return cls if isinstance(cls, type) and hasattr(cls, "from_pretrained") else None


def _task_of(arch: str, config) -> str | None:
    if arch.endswith("Classification"):
        return "classification"
    if task := task_of_class_name(arch):
        return task
    if arch and not arch.endswith("Model"):
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "encoder" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else None


def _load_tokenizer(source: str, hub: bool, trust_remote_code: bool):
    if not hub and not any((Path(source) / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is not None:
            tokenizer.pad_token = fallback
    return tokenizer


def _image_shape(config) -> tuple | None:
    size = getattr(config, "image_size", None)
    channels = getattr(config, "num_channels", 3)
    if isinstance(size, int):
        return (channels, size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (channels, int(size[0]), int(size[1]))
    return None


def _dtype_keyword() -> str:
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


__all__ = ["load_hf", "hf_meta"]  # hf_meta lives in model_types; re-exported here
