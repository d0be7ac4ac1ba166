"""layerscope: build, train and dissect neural networks layer by layer.

The public names below load on first use, so ``import layerscope`` stays fast.

Example:
    >>> import layerscope
    >>> from torch import nn
    >>> layerscope.count_layers(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
    {'blocks': 2, 'sublayers': 3, 'modules': 2}
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Layers": "layerscope.layers",
    "Layer": "layerscope.layers",
    "Capture": "layerscope.layers",
    "count_layers": "layerscope.layers",
    "primary_tensor": "layerscope.layers",
    "AnatomyResult": "layerscope.anatomy",
    "load_model": "layerscope.models",
    "sweep": "layerscope.sweep",
    "Store": "layerscope.store",
    "LayerscopeError": "layerscope.errors",
}


#: exported functions named like their module: ``layerscope.sweep`` is the function; the module
#: is ``sys.modules["layerscope.sweep"]`` (``from layerscope.sweep import ...`` works as usual)
_FUNCTION_WINS = {"sweep"}


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _FUNCTION_WINS and isinstance(value, types.ModuleType):
            return  # the import system binding the submodule; keep the function visible
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'layerscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
