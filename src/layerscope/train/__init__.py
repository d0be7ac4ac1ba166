"""Training that watches every layer: ``train(model, data, out_dir=...) -> TrainResult``.

See :mod:`layerscope.train.loop` for the loop, :mod:`.monitors` for the per-layer figures,
:mod:`.freezing` for freezing, BatchNorm and per-layer learning rates, and :mod:`.losses` for
the loss / output-layer checks.

Example:
    >>> import tempfile, torch
    >>> from layerscope.train import train
    >>> x = torch.randn(120, 64)
    >>> r = train("autoencoder", x, out_dir=tempfile.mkdtemp(), epochs=1, progress=False)
    >>> r.metric, 0.0 <= r.best_metric <= 1.0
    ('auroc', True)
"""

from .loop import NonFiniteLossError, first_non_finite_layer, train
from .result import TrainResult

__all__ = ["train", "TrainResult", "NonFiniteLossError", "first_non_finite_layer"]
