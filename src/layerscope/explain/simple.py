"""Walk through an MLP layer (linear, norm, activation) or a CNN layer (conv, norm, activation, pool).

Understood layers: a hidden layer holding ``linear`` and ``act`` (the zoo MLP's ``Dense``), a
conv block holding ``conv`` and ``pool`` (the zoo CNN's ``ConvBlock``, plain or
depthwise-separable), a bare ``nn.Linear`` and a bare ``nn.Conv2d``. Convolutions are written out
as patches times a weight matrix (im2col), pooling as max/mean over windows, batch norm with its
running statistics.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from layerscope.explain.simple import explain_simple
    >>> conv = nn.Conv2d(2, 3, 3, padding=1).eval()
    >>> x = torch.randn(1, 2, 5, 5)
    >>> r = explain_simple(conv, x, conv(x).detach(), name="conv")
    >>> [s.name for s in r.steps], r.check < 1e-5
    (['input', 'conv'], True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerscope.errors import LayerscopeError

from .steps import ExplainResult, Step, step

KINDS = {
    "mlp-layer": "MLP layer (linear, norm, activation)",
    "cnn-layer": "CNN layer (conv, norm, activation, pool)",
    "residual-block": "ResNet block (conv, norm, activation, conv, norm, shortcut add, activation)",
    "linear": "nn.Linear",
    "conv": "nn.Conv2d",
}

ACT_FORMULAS = {
    "ReLU": "max(0, z)", "GELU": "z·Φ(z) (GELU)", "Tanh": "tanh(z)", "SiLU": "z·sigmoid(z) (SiLU)",
    "LeakyReLU": "z if z > 0 else slope·z", "Sigmoid": "1/(1 + e^(−z))",
}


def simple_kind(module: nn.Module) -> str | None:
    """The kind of layer this module is for the walk-through, or None.

    Example:
        >>> from torch import nn
        >>> simple_kind(nn.Linear(2, 3)), simple_kind(nn.LSTM(2, 3))
        ('linear', None)
    """
    if isinstance(getattr(module, "linear", None), nn.Linear) and hasattr(module, "act"):
        return "mlp-layer"
    if hasattr(module, "conv") and isinstance(getattr(module, "pool", None), nn.Module):
        return "cnn-layer"
    if all(isinstance(getattr(module, a, None), nn.Conv2d) for a in ("conv1", "conv2")) and \
            all(isinstance(getattr(module, a, None), nn.Module) for a in ("norm1", "norm2", "act1",
                                                                          "act2")):
        return "residual-block"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    return None


def _linear(x: Tensor, lin: nn.Linear) -> Tensor:
    y = x @ lin.weight.T
    return y if lin.bias is None else y + lin.bias


def _conv2d(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 2-d convolution as patches (im2col) times the flattened kernels, group by group."""
    if conv.padding_mode != "zeros":
        raise LayerscopeError(f"the walk-through covers zero-padded convolutions; this one pads "
                              f"with {conv.padding_mode!r}")
    kh, kw = conv.kernel_size
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "same":
            pads = []
            for k, dil in ((kw, conv.dilation[1]), (kh, conv.dilation[0])):
                total = dil * (k - 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        padding = (0, 0)
    B, C, H, W = x.shape
    G = conv.groups
    patches = F.unfold(x, (kh, kw), dilation=conv.dilation, padding=padding, stride=conv.stride)
    patches = patches.view(B, G, C // G * kh * kw, -1)                     # (B, G, C/G·k·k, L)
    kernels = conv.weight.reshape(G, conv.out_channels // G, -1)          # (G, O/G, C/G·k·k)
    out = torch.einsum("bgkl,gok->bgol", patches, kernels).reshape(B, conv.out_channels, -1)
    if conv.bias is not None:
        out = out + conv.bias[:, None]
    ho = (H + 2 * padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    wo = (W + 2 * padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    return out.view(B, conv.out_channels, ho, wo)


def _norm(z: Tensor, norm: nn.Module) -> tuple[Tensor, str] | None:
    """The normalisation written out, with its formula; None for Identity."""
    if isinstance(norm, nn.Identity):
        return None
    shape = (1, -1) + (1,) * (z.dim() - 2)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.running_mean is not None:
            mean, var = norm.running_mean.view(shape), norm.running_var.view(shape)
            text = "batch norm with running statistics: (z − μ)/√(σ² + ε)·γ + β"
        else:
            dims = [0] + list(range(2, z.dim()))
            mean = z.mean(dims, keepdim=True)
            var = z.var(dims, unbiased=False, keepdim=True)
            text = "batch norm with this batch's statistics: (z − μ)/√(σ² + ε)·γ + β"
        y = (z - mean) / torch.sqrt(var + norm.eps)
        if norm.affine:
            y = y * norm.weight.view(shape) + norm.bias.view(shape)
        return y, text
    if isinstance(norm, nn.GroupNorm):
        B = z.shape[0]
        g = z.reshape(B, norm.num_groups, -1)
        mean = g.mean(-1, keepdim=True)
        var = g.var(-1, unbiased=False, keepdim=True)
        y = ((g - mean) / torch.sqrt(var + norm.eps)).reshape(z.shape)
        if norm.affine:
            y = y * norm.weight.view(shape) + norm.bias.view(shape)
        return y, f"group norm ({norm.num_groups} group(s)): (z − mean)/√(var + ε)·γ + β per item"
    if isinstance(norm, nn.LayerNorm):
        dims = tuple(range(-len(norm.normalized_shape), 0))
        mean = z.mean(dims, keepdim=True)
        var = z.var(dims, unbiased=False, keepdim=True)
        y = (z - mean) / torch.sqrt(var + norm.eps)
        if norm.elementwise_affine:
            y = y * norm.weight + (norm.bias if norm.bias is not None else 0)
        return y, "layer norm: (z − mean)/√(var + ε)·γ + β per item"
    return norm(z), f"{type(norm).__name__} (applied by the module itself)"


def _pool(z: Tensor, pool: nn.Module) -> tuple[Tensor, str]:
    if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)) and not pool.ceil_mode and \
            pool.padding in (0, (0, 0)) and getattr(pool, "dilation", 1) in (1, (1, 1)):
        B, C, H, W = z.shape
        k, s = pool.kernel_size, pool.stride
        windows = F.unfold(z.reshape(B * C, 1, H, W), k, stride=s)        # (B·C, k·k, L)
        kk = k if isinstance(k, tuple) else (k, k)
        ss = s if isinstance(s, tuple) else (s, s)
        ho, wo = (H - kk[0]) // ss[0] + 1, (W - kk[1]) // ss[1] + 1
        if isinstance(pool, nn.MaxPool2d):
            out, text = windows.amax(1), f"max over each {kk[0]}×{kk[1]} window (stride {ss[0]})"
        else:
            out, text = windows.mean(1), f"mean over each {kk[0]}×{kk[1]} window (stride {ss[0]})"
        return out.view(B, C, ho, wo), text
    return pool(z), f"{type(pool).__name__} (applied by the module itself)"


def _act_formula(act: nn.Module) -> str:
    return f"{type(act).__name__}: {ACT_FORMULAS.get(type(act).__name__, 'element by element')}"


def _dims(shape) -> str:
    return "×".join(str(s) for s in shape)


def _walk(kind: str, module: nn.Module, x: Tensor) -> tuple[list[Step], Tensor, str]:
    steps = [step("input", f"what the layer receives ({_dims(x.shape[1:])} per item)", x[0])]

    def add(name, formula, value):
        steps.append(step(name, formula, value[0]))
        return value

    if kind == "linear":
        y = add("linear", f"x·Wᵀ + b: ({_dims(x.shape[1:])})·({_dims(module.weight.T.shape)})",
                _linear(x, module))
        return steps, y, f"1 layer: one weight matrix of {module.in_features}×" \
                         f"{module.out_features} with its bias (width {module.out_features})"
    if kind == "conv":
        y = add("conv", _conv_formula(module), _conv2d(x, module))
        return steps, y, f"1 layer: {module.out_channels} kernels of {module.in_channels // module.groups}" \
                         f"×{_dims(module.kernel_size)} with biases"
    if kind == "mlp-layer":
        lin = module.linear
        x_in = x.flatten(1) if x.dim() > 2 else x
        z = add("linear", f"x·Wᵀ + b: ({_dims(x_in.shape[1:])})·({_dims(lin.weight.T.shape)})",
                _linear(x_in, lin))
        normed = _norm(z, getattr(module, "norm", nn.Identity()))
        if normed is not None:
            z = add("norm", normed[1], normed[0])
        y = add("activation", _act_formula(module.act), module.act(z))
        if getattr(module, "residual", False) is True:
            y = add("residual add", "x + activation", x_in + y)
        note = (f"1 layer: a hidden layer of width {lin.out_features} (its {lin.in_features}×"
                f"{lin.out_features} weight matrix and bias, then the activation); dropout does "
                f"nothing at inference")
        return steps, y, note
    if kind == "residual-block":
        return _residual(module, x, steps, add)
    conv = module.conv
    if isinstance(conv, nn.Conv2d):
        z = add("conv", _conv_formula(conv), _conv2d(x, conv))
        width = conv.out_channels
    else:  # depthwise-separable: a per-channel conv, then a 1×1 channel mix
        z = add("depthwise conv", _conv_formula(conv.depthwise), _conv2d(x, conv.depthwise))
        z = add("pointwise conv", _conv_formula(conv.pointwise), _conv2d(z, conv.pointwise))
        width = conv.pointwise.out_channels
    normed = _norm(z, getattr(module, "norm", nn.Identity()))
    if normed is not None:
        z = add("norm", normed[1], normed[0])
    y = add("activation", _act_formula(module.act), module.act(z))
    shortcut = getattr(module, "shortcut", None)
    if shortcut is not None:
        s = x if isinstance(shortcut, nn.Identity) else _conv2d(x, shortcut)
        y = add("residual add", "activation + shortcut(x)", y + s)
    y, text = _pool(y, module.pool)
    add("pool", text, y)
    note = (f"1 layer: a conv block with {width} output channels (convolution, norm, activation, "
            f"pooling); dropout does nothing at inference")
    return steps, y, note


def _residual(module: nn.Module, x: Tensor, steps: list[Step], add):
    z = add("conv 1", _conv_formula(module.conv1), _conv2d(x, module.conv1))
    normed = _norm(z, module.norm1)
    if normed is not None:
        z = add("norm 1", normed[1], normed[0])
    z = add("activation 1", _act_formula(module.act1), module.act1(z))
    z = add("conv 2", _conv_formula(module.conv2), _conv2d(z, module.conv2))
    normed = _norm(z, module.norm2)
    if normed is not None:
        z = add("norm 2", normed[1], normed[0])
    shortcut = getattr(module, "shortcut", None)
    if shortcut is not None:
        if isinstance(shortcut, nn.Identity):
            s, text = x, "x (identity shortcut)"
        else:  # a 1×1 projection with its norm where the channels or the side change
            s, text = x, "x through the 1×1 projection shortcut"
            for part in shortcut:
                s = _conv2d(s, part) if isinstance(part, nn.Conv2d) else \
                    (_norm(s, part) or (s, ""))[0]
        z = add("residual add", f"norm 2 + {text}", z + s)
    y = add("activation 2", _act_formula(module.act2), module.act2(z))
    width = module.conv2.out_channels
    note = (f"1 layer: a residual block of two 3×3 convolutions with {width} channels "
            f"({'with' if shortcut is not None else 'without'} a skip connection); people count "
            f"it as one block, or as two conv layers")
    return steps, y, note


def _conv_formula(conv: nn.Conv2d) -> str:
    k = _dims(conv.kernel_size)
    per = conv.in_channels // conv.groups
    text = f"each output pixel = Σ over {per} channel(s) × {k} window of w·x, + b"
    if conv.groups > 1:
        text += f" ({conv.groups} groups)"
    return text + " (patches·kernels, im2col)"


def explain_simple(module: nn.Module, x: Tensor, output: Tensor | None = None, *, name: str,
                   inputs: str = "") -> ExplainResult:
    """Step through an MLP or CNN layer on its input ``x``; compare with ``output`` (or its own)."""
    kind = simple_kind(module)
    if kind is None:
        raise LayerscopeError(
            f"layer {name!r} is a {type(module).__name__}, which explain cannot walk; it walks "
            f"{', '.join(KINDS.values())} and transformer blocks (BERT-like, Llama-like, GPT-2)")
    with torch.no_grad():
        if output is None:
            from .capture import check_eval

            check_eval(module, name)
            output = module(x)
        steps, y, note = _walk(kind, module, x)
        check = float((y - output.reshape(y.shape)).abs().max())
    params = sum(p.numel() for p in module.parameters())
    return ExplainResult(
        title=f"{name} ({type(module).__name__}, {KINDS[kind]})", layer_kind=kind, layer=name,
        steps=steps, params=int(params), layers_note=note, check=check, inputs=inputs,
        tensors={"output": output.detach(), "step-by-step output": y.detach()})


__all__ = ["explain_simple", "simple_kind", "KINDS"]
