"""Run a model once and catch one layer's input, keyword arguments and its own output.

The hooks come from :class:`layerscope.layers.Capture`, so they are removed on exit, also when
the forward raises; the forward stops right after the layer. The model is neither moved nor
switched between train and eval.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from layerscope.layers import Layers
    >>> from layerscope.explain.capture import run_layer
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> seen = run_layer(net, Layers(net)[1], (torch.ones(2, 3),), {})
    >>> tuple(seen.input.shape), tuple(seen.output.shape), len(net[2]._forward_hooks)
    ((2, 4), (2, 2), 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.layers import Capture, Layer


@dataclass
class Seen:
    """What one layer received and returned during a real forward pass."""

    input: Tensor
    kwargs: dict
    output: Tensor


def run_layer(model: nn.Module, layer: Layer, args: tuple, kwargs: dict) -> Seen:
    """Call ``model(*args, **kwargs)`` without gradients; the input and output of ``layer``."""
    with torch.no_grad(), Capture(model, [layer], inputs=True, kwargs=True, stop_early=True) as cap:
        cap.call(model, *args, **kwargs)
    if layer.name not in cap.outputs or layer.name not in cap.inputs:
        raise LayerscopeError(
            f"layer {layer.name!r} did not run during the forward pass; choose a layer the model "
            f"uses on this input")
    return Seen(cap.inputs[layer.name], cap.kwargs.get(layer.name, {}), cap.outputs[layer.name])


def check_eval(module: nn.Module, name: str) -> None:
    """Refuse a layer in training mode: dropout and batch statistics would make numbers random."""
    if module.training and any(isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm))
                               or "Dropout" in type(m).__name__ for m in module.modules()):
        raise LayerscopeError(
            f"layer {name!r} is in training mode, so dropout/batch norm make its output random; "
            f"call model.eval() before explaining it")


__all__ = ["Seen", "run_layer", "check_eval"]
