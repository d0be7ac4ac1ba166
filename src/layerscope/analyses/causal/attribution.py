"""Attribution per layer through Captum (the methods are Captum's; layerscope chooses the modules
through the Layers view and turns the numbers into per-layer, per-token / per-pixel results).

Methods (``method``):

- ``integrated-gradients``: Captum's ``LayerIntegratedGradients`` on each block's output. The
  baseline is the same input with every token replaced by a baseline token (the tokenizer's pad
  token, else its end-of-text token, else id 0; images: all zeros), so the block's activation on
  that input is the starting point of the path. **Completeness**: per block the attributions
  sum to f(x) - f(baseline); Captum's convergence delta is reported per block and item.
- ``conductance``: ``LayerConductance`` on each block; Captum interpolates the *inputs* here, so
  for text the path runs between the input embeddings of the tokens and of the baseline tokens
  (``inputs_embeds``), a Riemann sum of ``n_steps`` points.
- ``activation-x-gradient``: ``LayerGradientXActivation`` on each block.
- ``gradcam``: ``LayerGradCam`` on each block of a CNN (ReLU of the gradient-weighted channel
  sum), upsampled to the input with Captum's ``LayerAttribution.interpolate``.

The scalar explained, f(x): for a causal LM the logit of ``target`` (a token; default the
model's top next token) at the last position; for a classifier the logit of class ``target``
(default the predicted class). Per block the result keeps the attribution summed over the
hidden dimension per token (text) or the map per pixel (images), and the total.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.analyses.causal.attribution import attribute
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2)).eval()
    >>> res = attribute(lm, torch.tensor([[1, 5, 7, 9]]), target=3, n_steps=64)
    >>> len(res.per_token), len(res.per_token[0])
    (2, 4)
    >>> max(abs(d) for d in res.delta) < 0.01 * max(abs(res.output_diff), 1e-3)
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.layers import Capture, Layers
from layerscope.results import Result

METHODS = ("integrated-gradients", "conductance", "activation-x-gradient", "gradcam")


@dataclass
class AttributionResult(Result):
    """Per block (``layers``): the attribution per token (``per_token``, text) or per pixel
    (``maps``, images, upsampled to the input), its total, and for integrated gradients the
    completeness check (``delta`` = sum of attributions - (f(x) - f(baseline)), per block)."""

    model: str
    method: str
    target: int
    target_label: str
    baseline: str
    layers: list[str]
    tokens: list[str] | None
    per_token: list[list[float]] | None
    maps: list[list[list[float]]] | None
    totals: list[float]
    output: float
    output_baseline: float | None
    output_diff: float | None
    delta: list[float] | None
    n_steps: int
    seconds: float
    image: list | None = None

    def summary(self) -> str:
        i = int(np.argmax(np.abs(self.totals))) if self.totals else 0
        text = (f"{self.method} for {self.target_label!r} (f = {self.output:.4g}) over "
                f"{len(self.layers)} blocks; largest total at {self.layers[i]} ({self.totals[i]:.4g})")
        if self.delta is not None:
            worst = max(abs(d) for d in self.delta)
            text += (f"; completeness: attributions sum to f(x) - f(baseline) = {self.output_diff:.4g} "
                     f"within {worst:.2g} on every block")
        if self.per_token is not None and self.tokens:
            j = int(np.argmax(np.abs(np.asarray(self.per_token[-1]))))
            text += f"; last block's top token {self.tokens[j]!r}"
        return text + f" ({self.seconds:.1f}s)"

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if self.per_token is not None:
            arr = np.asarray(self.per_token, dtype=float)
            if ax is None:
                fig, ax = plt.subplots(figsize=(1.2 + 0.55 * max(arr.shape[1], 4), 1.4 + 0.22 * len(self.layers)))
            else:
                fig = ax.figure
            lim = float(np.nanmax(np.abs(arr))) or 1.0
            im = ax.imshow(arr, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks(range(arr.shape[1]))
            ax.set_xticklabels([repr(t)[1:-1] for t in self.tokens or []], rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(len(self.layers)))
            ax.set_yticklabels([str(i) for i in range(len(self.layers))], fontsize=7)
            ax.set_ylabel("block")
            ax.set_title(f"{self.method} for {self.target_label!r}, per block and token", fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
            fig.tight_layout()
            return fig
        n = len(self.maps or [])
        cols = min(n, 6)
        rows = -(-n // cols) if n else 1
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
        picture = None
        if self.image is not None:
            picture = np.asarray(self.image, dtype=float)
            picture = (picture - picture.min()) / (np.ptp(picture) or 1.0)
        for k, a in enumerate(axes.flat):
            a.axis("off")
            if k >= n:
                continue
            if picture is not None:
                a.imshow(picture if picture.ndim == 3 else picture, cmap=None if picture.ndim == 3 else "gray")
            a.imshow(np.asarray(self.maps[k]), cmap="jet", alpha=0.45 if picture is not None else 1.0)
            a.set_title(self.layers[k], fontsize=7)
        fig.suptitle(f"{self.method} for class {self.target_label}", fontsize=10)
        fig.tight_layout()
        return fig


def _scalar_forward(loaded, task: str, target_index: int):
    """f(inputs) -> (B,) the explained scalar; text models take input_ids."""
    module = loaded.module
    use_cache = {"use_cache": False} if getattr(getattr(module, "config", None), "use_cache", None) is not None else {}

    def run(x):
        if loaded.modality != "text":
            return module(x)
        if x.is_floating_point():  # input embeddings (conductance interpolates inputs)
            return module(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long,
                                                                     device=x.device), **use_cache)
        return module(input_ids=x, attention_mask=torch.ones_like(x), **use_cache)

    def forward(x):
        out = run(x)
        logits = getattr(out, "logits", out)
        return logits[:, -1, target_index] if task == "causal-lm" else logits[:, target_index]
    return forward


def _check_gradients(loaded, block, inputs_fn) -> None:
    """A one-line error when the output does not depend on the block's output through autograd."""
    with torch.enable_grad(), Capture(loaded.module, [block],
                                      edit=lambda out, name: out.detach().requires_grad_(True)) as cap:
        y = cap.call(inputs_fn)
    if not isinstance(y, Tensor) or not y.requires_grad:
        raise LayerscopeError(f"model {loaded.ref!r} gives no gradients from block {block.name!r} to its "
                              f"output (its forward runs without autograd or is not differentiable); "
                              f"attribution needs gradients: use a float model without no_grad")


def attribute(model, inputs, *, method: str = "integrated-gradients", layers=None, target=None,
              n_steps: int = 32, blocks: str | None = None,
              internal_batch_size: int | None = None) -> AttributionResult:
    """Captum's layer attribution ``method`` on every chosen block for one input.

    ``inputs``: a text (or (1, T) token ids) for a text model; one image (C, H, W) or a batch of
    one for an image model. ``target``: the token (text or id) or class index explained.
    """
    from captum.attr import (LayerAttribution, LayerConductance, LayerGradCam,
                             LayerGradientXActivation, LayerIntegratedGradients)

    from layerscope.layouts import infer_task
    from layerscope.modes import evaluating
    from layerscope.sweep import as_model, model_device

    if method not in METHODS:
        raise LayerscopeError(f"unknown attribution method {method!r}; use one of: {', '.join(METHODS)}")
    loaded = as_model(model)
    task = infer_task(loaded)
    if task not in ("causal-lm", "classification"):
        raise LayerscopeError(f"attribution explains one output number: a next-token logit (causal LM) "
                              f"or a class logit (classifier); model {loaded.ref!r} is a {task} model")
    view = Layers(loaded, "blocks", blocks=blocks)
    chosen = view.select(layers)
    device = model_device(loaded.module)
    started = time.perf_counter()
    tokens = None
    if loaded.modality == "text":
        from .patching import _ids, _tokens, token_id

        x = _ids(loaded, inputs, "input").to(device)
        tokens = _tokens(loaded, x.cpu())
        tok = loaded.tokenizer
        base_id = next((t for t in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None))
                        if isinstance(t, int)), 0) if tok is not None else 0
        baseline = torch.full_like(x, base_id)
        baseline_text = f"every token replaced by token id {base_id}" + (
            f" ({tok.decode([base_id])!r})" if tok is not None else "")
    else:
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs
                                       and isinstance(inputs[0], str)):
            raise LayerscopeError(f"model {loaded.ref!r} takes {loaded.modality} inputs, not text; give "
                                  f"an input of that kind (e.g. --data mnist or photos for an image model)")
        x = torch.as_tensor(inputs) if not isinstance(inputs, Tensor) else inputs
        x = x if x.dim() == len(loaded.input_shape or x.shape[1:]) + 1 else x.unsqueeze(0)
        x = loaded.encode(x).args[0].to(device) if loaded.encode is not None else x.to(device)
        if len(x) != 1:
            raise LayerscopeError(f"attribute one item at a time; got a batch of {len(x)}")
        baseline = torch.zeros_like(x)
        baseline_text = "an all-zero input"
        if not x.is_floating_point():  # token ids of a model without a tokenizer (the zoo GPT)
            baseline_text = "every token replaced by token id 0"
            tokens = [str(int(i)) for i in x[0].reshape(-1)]
            if method == "conductance":
                raise LayerscopeError(f"conductance interpolates the inputs, and model {loaded.ref!r} "
                                      f"takes token ids without a known embedding input; use "
                                      f"integrated-gradients or activation-x-gradient")
    if method == "gradcam" and loaded.modality == "text":
        raise LayerscopeError("gradcam is for convolutional blocks of image models; use "
                              "integrated-gradients, conductance or activation-x-gradient for text")
    with evaluating(loaded):
        with torch.no_grad():
            out = loaded.module(input_ids=x, attention_mask=torch.ones_like(x)) if loaded.modality == "text" \
                else loaded.module(x)
            logits = getattr(out, "logits", out)
            last = logits[0, -1] if task == "causal-lm" else logits[0]
        if target is None:
            t_index = int(last.argmax())
        elif loaded.modality == "text" and task == "causal-lm":
            t_index = token_id(loaded, target, "target")
        else:
            t_index = int(target)
            what = "token" if task == "causal-lm" else "class"
            if not 0 <= t_index < last.shape[-1]:
                raise LayerscopeError(f"{what} {t_index} is out of range: the model has {last.shape[-1]} "
                                      f"{what}s (0-{last.shape[-1] - 1})")
        label = loaded.tokenizer.decode([t_index]) if loaded.tokenizer is not None and task == "causal-lm" \
            else str(t_index)
        forward = _scalar_forward(loaded, task, t_index)
        _check_gradients(loaded, chosen[-1], lambda: forward(x))
        with torch.no_grad():
            f_x = float(forward(x)[0])
            f_b = float(forward(baseline)[0])
        per_token, maps, totals, deltas = [], [], [], []
        if loaded.modality == "text" and method == "conductance":
            from layerscope.layouts import embeddings

            table = embeddings(loaded.module)
            if not table:
                raise LayerscopeError(f"conductance interpolates input embeddings; cannot find the "
                                      f"token embedding of {loaded.ref!r}")
            token_table = table[0][1]

            def embed(ids):
                with torch.no_grad():
                    return token_table(ids).detach()
        for block in chosen:
            mod = block.observed
            if method == "integrated-gradients":
                algo = LayerIntegratedGradients(forward, mod)
                attr, delta = algo.attribute(x, baselines=baseline, n_steps=n_steps,
                                             internal_batch_size=internal_batch_size,
                                             return_convergence_delta=True)
                deltas.append(float(delta.reshape(-1)[0]))
            elif method == "conductance":
                xs, bs = (x, baseline) if loaded.modality != "text" else (embed(x), embed(baseline))
                attr = LayerConductance(forward, mod).attribute(
                    xs, baselines=bs, n_steps=n_steps, internal_batch_size=internal_batch_size)
            elif method == "activation-x-gradient":
                attr = LayerGradientXActivation(forward, mod).attribute(x)
            else:
                attr = LayerGradCam(forward, mod).attribute(x, relu_attributions=True)
            if isinstance(attr, (tuple, list)):
                attr = attr[0]
            attr = attr.detach().float()
            totals.append(float(attr.sum()))
            if method == "gradcam":
                up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
                maps.append(up[0, 0].cpu().tolist())
            elif attr.dim() >= 3 and tokens is not None:
                per_token.append(attr[0].reshape(attr.shape[1], -1).sum(-1).cpu().tolist())
            else:
                up = attr[0]
                if up.dim() == 3 and x.dim() == 4:
                    maps.append(LayerAttribution.interpolate(attr.sum(1, keepdim=True), tuple(x.shape[-2:]),
                                                             interpolate_mode="bilinear")[0, 0].cpu().tolist())
    image = None
    if loaded.modality != "text":
        picture = x[0].detach().float().cpu()
        image = (picture.permute(1, 2, 0) if picture.shape[0] in (1, 3) else picture).squeeze(-1).tolist()
    ig = method == "integrated-gradients"
    return AttributionResult(
        model=loaded.ref, method=method, target=t_index, target_label=label, baseline=baseline_text,
        layers=[b.name for b in chosen], tokens=tokens, per_token=per_token or None, maps=maps or None,
        totals=totals, output=f_x, output_baseline=f_b if method in ("integrated-gradients", "conductance") else None,
        output_diff=(f_x - f_b) if ig else None, delta=deltas if ig else None, n_steps=n_steps,
        seconds=time.perf_counter() - started, image=image)


__all__ = ["METHODS", "AttributionResult", "attribute"]
