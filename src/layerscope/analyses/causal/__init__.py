"""Causal layer analyses: what a layer *does* for the output, found by changing it.

- :mod:`.interventions`: replace / add / scale / zero / mean / resample a block's, a
  sublayer's or an attention head's output at chosen positions (through ``Capture(edit=...)``);
- :mod:`.patching`: activation patching between a clean and a corrupted prompt;
- :mod:`.ablation`: zero / mean / resample ablation measured with the layer-removal objectives;
- :mod:`.steering`: steering vectors from contrast sets, swept over layers and strengths;
- :mod:`.attribution`: Captum's layer attributions on the modules the Layers view names.
"""

from .interventions import (OPS, PARTS, Intervened, Intervention, Site, apply, mean_activation,
                            run_intervened, site_activations)

__all__ = ["OPS", "PARTS", "Intervened", "Intervention", "Site", "apply", "mean_activation",
           "run_intervened", "site_activations"]
