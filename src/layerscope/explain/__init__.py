"""Explain one layer's computation step by step on concrete numbers.

* :func:`explain_ffn` walks a two-layer feed-forward network given as matrices in a JSON file
  (``seed002`` is the shipped worked example).
* :func:`explain` walks one block of a real model on a real input: a transformer block
  (BERT-like, Llama-like, GPT-2, the zoo's), an MLP, CNN, ResNet or LSTM/GRU layer, ending with the max absolute
  difference between the step-by-step result and the block's own forward output.

Example:
    >>> from layerscope.explain import explain
    >>> r = explain("mlp", layer=0)
    >>> [s.name for s in r.steps], r.check < 1e-5
    (['input', 'linear', 'activation'], True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.layouts import block_view

from .block import KINDS as BLOCK_KINDS
from .block import block_kind, explain_block
from .ffn import explain_ffn, load_ffn
from .generic import explain_generic, generic_kind
from .recurrent import explain_recurrent, recurrent_kind
from .simple import KINDS as SIMPLE_KINDS
from .simple import explain_simple, simple_kind
from .steps import ExplainResult, Step

DEFAULT_TEXT = "The cat sat on the mat."


def load_tensor_file(path: str | Path) -> Tensor:
    """A tensor from ``.npy``, ``.safetensors`` (one tensor, or the key ``input``) or ``.pt``.

    ``.pt`` files are read with ``torch.load(weights_only=True)``; nothing else is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise LayerscopeError(f"input file {path} does not exist; give a .npy, .safetensors or "
                              f".pt tensor file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            value = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            value = load_file(str(path))
        elif suffix in (".pt", ".pth"):
            value = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise LayerscopeError(f"input file {path} has an unknown type {suffix!r}; use .npy, "
                                  f".safetensors or .pt")
    except LayerscopeError:
        raise
    except Exception as exc:  # corrupt files, pickled objects refused by weights_only, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayerscopeError(f"cannot read input file {path}: {first[:200]}")
    if isinstance(value, dict):
        tensors = {k: v for k, v in value.items() if isinstance(v, Tensor)}
        if "input" in tensors:
            value = tensors["input"]
        elif len(tensors) == 1:
            value = next(iter(tensors.values()))
        else:
            raise LayerscopeError(f"input file {path} holds {len(tensors)} tensors "
                                  f"({', '.join(list(tensors)[:5])}); store one, or name it 'input'")
    if not isinstance(value, Tensor):
        raise LayerscopeError(f"input file {path} holds a {type(value).__name__}, not a tensor")
    return value


def _encode(loaded, inputs):
    """The Encoded batch of one item and a label saying what it was."""
    if loaded.modality == "text" and not isinstance(inputs, str):
        if inputs is None:
            inputs = DEFAULT_TEXT
        else:  # token ids: a tensor/array, or a tensor file
            label = f"file {inputs}" if isinstance(inputs, Path) else "token ids"
            ids = load_tensor_file(inputs) if isinstance(inputs, Path) else torch.as_tensor(inputs)
            if ids.dim() == 1:
                ids = ids.unsqueeze(0)
            return loaded.encode(ids[:1]), f"{label} {ids[0].tolist()[:12]}"
    if loaded.modality == "text":
        if not inputs.strip():
            raise LayerscopeError("the input text is empty; give --input \"some text\"")
        enc = loaded.encode([inputs])
        return enc, f"text {inputs!r}"
    if inputs is None:
        return loaded.example(1), f"the model's example input {tuple(loaded.input_shape or ())}"
    if isinstance(inputs, str) and not Path(inputs).suffix:
        raise LayerscopeError(f"model {loaded.ref!r} takes tensors of shape "
                              f"{tuple(loaded.input_shape or ())}, not text; give --input-file "
                              f"with a .npy, .safetensors or .pt tensor")
    if isinstance(inputs, (str, Path)):
        label = f"file {inputs}"
        inputs = load_tensor_file(inputs)
    else:
        label = "the given tensor"
        inputs = torch.as_tensor(inputs)
    if loaded.input_shape is not None and inputs.dim() == len(loaded.input_shape):
        inputs = inputs.unsqueeze(0)  # one item without its batch dimension
    return loaded.encode(inputs), f"{label} {tuple(inputs.shape)}"


def explain(model, layer=0, inputs=None, *, head: int = 0, blocks: str | None = None,
            input_shape=None) -> ExplainResult:
    """Walk block ``layer`` of ``model`` (a reference or LoadedModel/nn.Module) on one input.

    ``inputs`` is a text (or token ids, or a ``Path`` to a tensor file of token ids) for text
    models; a tensor, array or tensor file path for image/tensor models (``None``: a default sentence, or the model's example input). ``head`` picks the
    attention head whose scores and weights are shown.

    Example:
        >>> from layerscope.explain import explain
        >>> r = explain("mlp:depth=2,width=8", layer=0)
        >>> r.check < 1e-5, r.steps[0].name
        (True, 'input')
    """
    from layerscope.layers import Layers
    from layerscope.models import LoadedModel, load_model

    loaded = model if isinstance(model, LoadedModel) else load_model(model, input_shape=input_shape)
    view = Layers(loaded, "blocks", blocks=blocks)
    target = view[layer]
    module = target.module
    ref = next((b for b in view.found.blocks if b.name == target.name), None)
    roles_of = block_view(ref) if ref is not None else module
    grouped = ref is not None and bool(ref.members)
    kind = None if grouped else (block_kind(module) or simple_kind(module) or recurrent_kind(module))
    kind = kind or generic_kind(roles_of)
    if kind is None:
        raise LayerscopeError(
            f"layer {target.name!r} is a {type(module).__name__}, which explain cannot walk; "
            f"it walks {_kinds()}")
    from .capture import check_eval, run_layer

    check_eval(roles_of, target.name)
    enc, label = _encode(loaded, inputs)
    if kind == "generic":
        result = explain_generic(loaded.module, target, roles_of, enc.args, enc.kwargs, head=head,
                                 inputs=label)
    else:
        seen = run_layer(loaded.module, target, enc.args, enc.kwargs)
        if kind in BLOCK_KINDS:
            result = _declared_or_generic(loaded, target, module, kind, seen, enc, head, label)
        elif recurrent_kind(module):
            result = explain_recurrent(module, seen.input, seen.output, name=target.name,
                                       part=target.part, inputs=label)
        else:
            result = explain_simple(module, seen.input, seen.output, name=target.name, inputs=label)
    if loaded.modality == "text" and loaded.tokenizer is not None and "input_ids" in enc.kwargs:
        result.tokens = loaded.tokenizer.convert_ids_to_tokens(enc.kwargs["input_ids"][0].tolist())
    result.layers_note += (f". It is block {target.index} of the {len(view)} blocks of "
                           f"{type(loaded.module).__name__} ({view.rule})")
    return result


def _declared_or_generic(loaded, target, module, kind: str, seen, enc, head: int,
                         label: str) -> ExplainResult:
    """The declared layout's walk; when it does not fit this block after all (a part it expects is
    missing, or its result misses the block's output), the walk through the roles, saying so."""
    try:
        result = explain_block(loaded.module, module, seen.input, seen.kwargs, name=target.name,
                               head=head, output=seen.output, batch_mask=enc.mask, inputs=label)
        why = None if result.check <= 1e-3 * max(1.0, float(seen.output.abs().max())) else \
            f"its result is off by {result.check:.2e}"
    except (AttributeError, KeyError, TypeError, RuntimeError) as exc:
        why = f"{type(exc).__name__}: {str(exc)[:80]}"
    if why is None:
        return result
    generic = explain_generic(loaded.module, target, module, enc.args, enc.kwargs, head=head,
                              inputs=label)
    generic.notes.insert(0, f"the declared {kind} walk does not fit this block ({why}); "
                            f"walked through its roles instead")
    return generic


def _kinds() -> str:
    return "; ".join(list(BLOCK_KINDS.values()) + list(SIMPLE_KINDS.values())
                     + ["LSTM/GRU layers (one-directional)",
                        "any other block in which the role finder sees attention or a token mixer"])


__all__ = ["explain", "explain_ffn", "explain_block", "explain_generic", "explain_simple", "explain_recurrent", "load_ffn",
           "load_tensor_file", "ExplainResult", "Step", "DEFAULT_TEXT"]
