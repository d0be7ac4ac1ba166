"""Which built-in data set suits a model when the user names none, and how much of it to use.

Example:
    >>> from layerscope.models import LoadedModel
    >>> import torch
    >>> m = LoadedModel(torch.nn.Linear(64, 10), ref="mlp", family="zoo:mlp", modality="tensor",
    ...                 task="classification", input_shape=(64,))
    >>> default_data(m)
    'digits'
"""

from __future__ import annotations

from layerscope.errors import LayerscopeError

#: items used by default: enough for stable probes and CKA, small enough for about a minute of
#: MiniLM on two CPU cores (see BENCHMARKS.md, "Report")
DEFAULT_LIMIT = {"text": 2000, "image": 2000, "tensor": 2000, "sequence": 2000}
#: items for the removal pass, which runs about (L+1)/2 forwards per item
IMPORTANCE_ITEMS = 256
#: above this many parameters (SmolLM2 has 135M) the default amounts shrink to keep a report
#: within minutes on a laptop CPU
LARGE_MODEL = 50_000_000


def default_amounts(loaded) -> tuple[int, int]:
    """(items for the main pass, items for the removal pass) when the user gives neither.

    Example:
        >>> from layerscope.models import LoadedModel
        >>> import torch
        >>> default_amounts(LoadedModel(torch.nn.Linear(4, 2), ref="lin", family="module",
        ...                             modality="tensor", task=None, input_shape=(4,)))
        (2000, 256)
    """
    params = sum(p.numel() for p in loaded.module.parameters())
    main = DEFAULT_LIMIT.get(loaded.modality, 2000)
    if params > LARGE_MODEL:
        return main // 4, IMPORTANCE_ITEMS // 4
    return main, IMPORTANCE_ITEMS


def default_data(loaded) -> str:
    """The built-in data set a model can read: sentences for text, digits/mnist/photos by shape."""
    shape = tuple(loaded.input_shape or ())
    spec = str(loaded.meta.get("zoo_spec") or "")
    if loaded.modality == "text":
        if spec.startswith("gpt") or (loaded.tokenizer is None and loaded.task == "causal-lm"):
            return "text"
        return "sentences"
    if shape == (64,):
        return "digits"
    if shape in {(1, 28, 28), (784,)}:
        return "mnist"
    if len(shape) == 3 and shape[0] == 3:
        return "photos"
    if len(shape) == 1 and spec.startswith("gpt"):
        return "text"
    if len(shape) == 2 and shape[-1] == 1:
        return "timeseries"
    if len(shape) == 1 and loaded.meta.get("input_dtype") in ("int64", "int32", "long"):
        return "text"
    raise LayerscopeError(
        f"no built-in data set fits model {loaded.ref!r} (input {shape or 'unknown'}): name one, "
        f"e.g. `layerscope report {loaded.ref} DATA` (see `layerscope datasets`)"
    )
