"""Check that the loss fits the output layer and the labels before training starts.

Cross-entropy wants logits; NLL wants log-probabilities (a ``LogSoftmax`` output); a one-unit
regression head wants a regression loss. A mismatch trains silently into nonsense, so it is
refused with an error naming both the output and the loss.

Example:
    >>> import torch
    >>> from torch import nn
    >>> probs = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=-1))
    >>> check_loss_fits(probs, probs(torch.randn(5, 4)), torch.tensor([0, 1, 2, 0, 1]),
    ...                 "cross-entropy")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerscope.errors.LayerscopeError: the model's output layer is a softmax (probabilities)...
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError

LOSSES = {
    "cross-entropy": "classification on logits (nn.CrossEntropyLoss)",
    "nll": "classification on log-probabilities from LogSoftmax (nn.NLLLoss)",
    "mse": "regression / reconstruction (nn.MSELoss)",
}
DEFAULT_LOSS = {"classification": "cross-entropy", "regression": "mse", "causal-lm": "cross-entropy",
                "autoencoder": "mse", "gan": "bce"}


def output_kind(model: nn.Module, output: Tensor) -> str:
    """``"probabilities"``, ``"log-probabilities"`` or ``"logits"`` for a classifier's output.

    The last module that runs decides when it is a Softmax / LogSoftmax; otherwise the numbers
    do: rows of non-negative values summing to 1 are probabilities, rows whose exponentials sum
    to 1 are log-probabilities.
    """
    last = _last_leaf(model)
    if isinstance(last, nn.Softmax):
        return "probabilities"
    if isinstance(last, nn.LogSoftmax):
        return "log-probabilities"
    x = output.detach().float()
    if x.dim() < 2 or x.shape[-1] < 2 or not torch.isfinite(x).all():
        return "logits"
    ones = torch.ones_like(x[..., 0])
    if (x >= 0).all() and torch.allclose(x.sum(-1), ones, atol=1e-4):
        return "probabilities"
    if (x <= 0).all() and torch.allclose(torch.logsumexp(x, -1), ones * 0, atol=1e-4):
        return "log-probabilities"
    return "logits"


def check_loss_fits(model: nn.Module, output: Tensor, labels: Tensor | None, loss: str,
                    task: str | None = None) -> None:
    """Raise :class:`LayerscopeError` when ``loss`` does not fit ``output`` and ``labels``."""
    if loss not in LOSSES:
        raise LayerscopeError(f"unknown loss {loss!r}; use one of: {', '.join(LOSSES)}")
    units = output.shape[-1] if output.dim() > 1 else 1
    if loss in ("cross-entropy", "nll"):
        if units == 1:
            raise LayerscopeError(
                f"the model has a regression head (1 output unit) but the loss {loss!r} is a "
                f"classification loss; use loss='mse' or give the head one unit per class")
        if labels is not None and labels.is_floating_point() and task != "causal-lm":
            raise LayerscopeError(
                f"the loss {loss!r} needs integer class labels; the data has real-valued "
                f"(regression) labels; use loss='mse' with a one-unit head")
        kind = output_kind(model, output)
        if loss == "cross-entropy" and kind != "logits":
            raise LayerscopeError(
                f"the model's output layer is a softmax ({kind}) but the loss 'cross-entropy' "
                f"takes logits; remove the final Softmax, or end with LogSoftmax and use loss='nll'")
        if loss == "nll" and kind != "log-probabilities":
            raise LayerscopeError(
                f"the loss 'nll' takes log-probabilities (a LogSoftmax output) but the model's "
                f"output layer gives {kind}; use loss='cross-entropy' for logits")
        if labels is not None and task != "causal-lm" and labels.numel():
            top = int(labels.max())
            if top >= units:
                raise LayerscopeError(
                    f"the labels go up to class {top} but the output layer has {units} units; "
                    f"build the head with at least {top + 1} classes")
    if loss == "mse" and labels is not None and task not in ("autoencoder",):
        if not labels.is_floating_point() and units > 1:
            raise LayerscopeError(
                f"the loss 'mse' is a regression loss but the model has a classification head "
                f"({units} units) and the labels are classes; use loss='cross-entropy'")
        want = 1 if labels.dim() <= 1 else labels.shape[-1]
        if units != want:
            raise LayerscopeError(
                f"the model outputs {units} values per item but the regression targets have "
                f"{want}; give the head {want} output unit(s)")


def _last_leaf(model: nn.Module) -> nn.Module | None:
    """The last registered leaf module (the output layer of a plain stack), or None."""
    last = None
    for module in model.modules():
        if next(module.children(), None) is None:
            last = module
    return last
