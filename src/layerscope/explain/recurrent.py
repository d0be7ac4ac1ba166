"""Walk through one recurrent layer (LSTM or GRU): the gates, the cell and the hidden state.

Understood layers: a single-layer, one-directional ``nn.LSTM``/``nn.GRU``; one layer of a
multi-layer one (``lstm.l1`` in the Layers view); and the zoo's ``RecurrentLayer`` (the RNN plus
its optional norm and residual add). The first and last time steps are shown gate by gate; the
steps in between run the same recurrence. The state starts at zero, as when no ``hx`` is given.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from layerscope.explain.recurrent import explain_recurrent
    >>> lstm = nn.LSTM(3, 4, batch_first=True)
    >>> x = torch.randn(1, 5, 3)
    >>> r = explain_recurrent(lstm, x, lstm(x)[0].detach(), name="lstm")
    >>> r.step("hidden state, all steps").shape, r.check < 1e-5
    ([5, 4], True)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError

from .steps import ExplainResult, Step, step


def recurrent_kind(module: nn.Module) -> str | None:
    """``"lstm"`` or ``"gru"`` for an LSTM/GRU module or a layer wrapping one in ``.rnn``.

    Example:
        >>> from torch import nn
        >>> recurrent_kind(nn.GRU(2, 3)), recurrent_kind(nn.Linear(2, 3))
        ('gru', None)
    """
    rnn = module if isinstance(module, (nn.LSTM, nn.GRU)) else getattr(module, "rnn", None)
    if isinstance(rnn, nn.LSTM):
        return "lstm"
    if isinstance(rnn, nn.GRU):
        return "gru"
    return None


def _weights(rnn: nn.Module, k: int, name: str) -> dict[str, Tensor]:
    if rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise LayerscopeError(f"layer {name!r} is a bidirectional or projected {type(rnn).__name__}, "
                              f"which explain cannot walk; it walks one-directional LSTM/GRU layers")
    own = dict(rnn.named_parameters())
    out = {}
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        value = own.get(f"{kind}_l{k}")
        out[kind] = value if value is not None else torch.zeros(
            own[f"weight_ih_l{k}"].shape[0], dtype=own[f"weight_ih_l{k}"].dtype)
    return out


def _lstm_step(xp: Tensor, h: Tensor, c: Tensor, w: dict) -> tuple[Tensor, ...]:
    gates = xp + h @ w["weight_hh"].T + w["bias_hh"]
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return h, c, torch.cat([i, f, g, o], dim=-1)


def _gru_step(xp: Tensor, h: Tensor, w: dict) -> tuple[Tensor, Tensor]:
    hp = h @ w["weight_hh"].T + w["bias_hh"]
    xr, xz, xn = xp.chunk(3, dim=-1)
    hr, hz, hn = hp.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, torch.cat([r, z, n], dim=-1)


def _run(kind: str, x: Tensor, w: dict, add) -> Tensor:
    """The recurrence over (B, T, n_in) batch-first input; steps for t = 0 and t = T-1."""
    B, T, _ = x.shape
    H = w["weight_hh"].shape[1]
    xp = add("input projection", "x_t·W_ihᵀ + b_ih for every time step at once "
             f"({'4' if kind == 'lstm' else '3'}×{H} gate inputs)", x @ w["weight_ih"].T + w["bias_ih"])
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    outs = []
    for t in range(T):
        if kind == "lstm":
            h, c, gates = _lstm_step(xp[:, t], h, c, w)
        else:
            h, gates = _gru_step(xp[:, t], h, w)
        if t in (0, T - 1):
            if kind == "lstm":
                add(f"gates t={t}", "σ/tanh of input projection + h_{t−1}·W_hhᵀ + b_hh: "
                    "input i, forget f, candidate g, output o (side by side)", gates)
                add(f"cell t={t}", "c_t = f ⊙ c_{t−1} + i ⊙ g", c)
                add(f"hidden t={t}", "h_t = o ⊙ tanh(c_t)", h)
            else:
                add(f"gates t={t}", "reset r = σ(·), update z = σ(·), candidate "
                    "n = tanh(x-part + r ⊙ h-part) (side by side)", gates)
                add(f"hidden t={t}", "h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}", h)
        outs.append(h)
    return add("hidden state, all steps", f"h_t for t = 0..{T - 1}, the same recurrence at "
               f"every step", torch.stack(outs, dim=1))


def explain_recurrent(module: nn.Module, x: Tensor, output: Tensor | None = None, *, name: str,
                      part: int | None = None, inputs: str = "") -> ExplainResult:
    """Step through an LSTM/GRU layer (``part`` = which layer of a multi-layer one) on ``x``."""
    kind = recurrent_kind(module)
    if kind is None:
        raise LayerscopeError(f"layer {name!r} is a {type(module).__name__}, not an LSTM or GRU "
                              f"layer")
    rnn = module if isinstance(module, (nn.LSTM, nn.GRU)) else module.rnn
    if part is None and rnn.num_layers > 1:
        raise LayerscopeError(f"layer {name!r} has {rnn.num_layers} stacked layers; explain one of "
                              f"them (the Layers view lists them as {name}.l0 ...)")
    k = part or 0
    w = _weights(rnn, k, name)
    steps: list[Step] = []

    def add(label, formula, value):
        steps.append(step(label, formula, value[0]))
        return value

    with torch.no_grad():
        if output is None:
            from .capture import check_eval

            check_eval(module, name)
            out = module(x)
            output = out[0] if isinstance(out, tuple) else out
        seq = x if rnn.batch_first or x.dim() == 2 else x.transpose(0, 1)
        if seq.dim() == 2:
            seq = seq.unsqueeze(0)  # an unbatched sequence (T, n_in)
        add("input", f"the sequence entering the layer ({seq.shape[1]} steps × {seq.shape[2]})", seq)
        y = _run(kind, seq, w, add)
        if module is not rnn:
            norm = getattr(module, "norm", None)
            if isinstance(norm, nn.LayerNorm):
                y = add("norm", "layer norm over each step's hidden state",
                        nn.functional.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias,
                                                 norm.eps))
            elif norm is not None and not isinstance(norm, nn.Identity):
                y = add("norm", f"{type(norm).__name__} (applied by the module itself)", norm(y))
            if getattr(module, "residual", False) is True:
                y = add("residual add", "x + hidden states", seq + y)
        mine = y if rnn.batch_first or module is not rnn else y.transpose(0, 1)
        check = float((mine.reshape(output.shape) - output).abs().max())
    params = sum(p.numel() for n, p in rnn.named_parameters() if n.endswith(f"_l{k}"))
    if module is not rnn:  # the wrapper's own norm
        params += sum(p.numel() for n, p in module.named_parameters() if not n.startswith("rnn."))
    H = w["weight_hh"].shape[1]
    gates = "4 gates (input, forget, candidate, output)" if kind == "lstm" \
        else "3 gates (reset, update, candidate)"
    note = (f"1 layer: one {kind.upper()} layer of {H} hidden units with {gates}, applied at "
            f"every time step with the same weights")
    return ExplainResult(
        title=f"{name} ({type(module).__name__}, {kind.upper()} layer)", layer_kind=kind,
        layer=name, steps=steps, params=int(params), layers_note=note, check=check,
        inputs=inputs, tensors={"output": output.detach(), "step-by-step output": mine.detach()})


__all__ = ["explain_recurrent", "recurrent_kind"]
