"""Claims about layers, tested: each study runs a measurement, repeats it, and states a verdict
computed from the numbers by a stated rule (see :mod:`layerscope.studies.common`).

Example:
    >>> from layerscope.studies import registry
    >>> "skip-connections" in registry()
    True
"""

from . import (activations, batch_norm, depth_represents, dropout, prune_depth,  # noqa: F401
               similarity_seeds, skip_connections, width_depth, depthwise, lm_decides, halving_width,
               freezing)
from .common import STUDIES, StudyResult, Verdict, get_study, registry, run_study

__all__ = ["STUDIES", "StudyResult", "Verdict", "get_study", "registry", "run_study"]
