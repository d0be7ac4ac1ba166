"""Layer surgery on a copy of a model: drop blocks, prune, quantize, exit early; measured.

Every operation leaves the input model untouched, returns the changed copy, saves it in the
model's own format (:func:`save_model`), and :func:`measure` compares before and after
(parameters, file size, latency, quality).

Example:
    >>> from layerscope.surgery import drop_blocks
    >>> drop_blocks("mlp:depth=3,width=64", "1").module.config.depth
    2
"""

from .drop import Dropped, auto_blocks, drop_blocks
from .early_exit import EarlyExitResult, early_exit
from .measure import SurgeryResult, measure
from .prune import Pruned, prune_magnitude, prune_structured
from .quantize import Quantized, load_quantized, quantize, save_quantized
from .save import check_output, folder_bytes, save_model
from .sensitivity import SensitivityResult, prune_sensitivity

__all__ = ["drop_blocks", "auto_blocks", "Dropped", "save_model", "check_output", "folder_bytes",
           "measure", "SurgeryResult", "quantize", "Quantized", "save_quantized", "load_quantized",
           "prune_magnitude", "prune_structured", "Pruned", "prune_sensitivity",
           "SensitivityResult", "early_exit", "EarlyExitResult"]
