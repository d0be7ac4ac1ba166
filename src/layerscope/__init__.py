"""layerscope: build, train and dissect neural networks layer by layer.

The names below are the public API; each loads on first use, so ``import layerscope`` stays
fast. Everything else lives in the subpackages (``layerscope.data``, ``layerscope.analyses``,
``layerscope.train``, ``layerscope.surgery``, ``layerscope.explain``, ...).

Example:
    >>> import layerscope
    >>> from torch import nn
    >>> layerscope.count_layers(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
    {'blocks': 2, 'sublayers': 3, 'modules': 2}
"""

import importlib as _importlib
import sys as _sys
import types as _types

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "load_model": "layerscope.models",
    "Layers": "layerscope.layers",
    "Layer": "layerscope.layers",
    "Capture": "layerscope.layers",
    "count_layers": "layerscope.layers",
    "primary_tensor": "layerscope.layers",
    "AnatomyResult": "layerscope.anatomy",
    "sweep": "layerscope.sweep",
    "Store": "layerscope.store",
    "probe": "layerscope.analyses.probe",
    "similarity": "layerscope.analyses.similarity",
    "embed": "layerscope.analyses.pictures",
    "build_report": "layerscope.report.build",
    "Result": "layerscope.results",
    "LayerscopeError": "layerscope.errors",
    "LayerscopeIndexError": "layerscope.errors",
}

#: exported functions named like their module: ``layerscope.sweep`` is the function; the module
#: is ``sys.modules["layerscope.sweep"]`` (``from layerscope.sweep import ...`` works as usual)
_FUNCTION_WINS = {"sweep"}


class _Package(_types.ModuleType):
    def __setattr__(self, name, value):
        if name in _FUNCTION_WINS and isinstance(value, _types.ModuleType):
            return  # the import system binding the submodule; keep the function visible
        super().__setattr__(name, value)

    def __dir__(self):
        # the public API only: submodules bound by imports are reachable but not listed
        return sorted(["__version__", *_EXPORTS])


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'layerscope' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
