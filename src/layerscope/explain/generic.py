"""Walk any block through the roles layerscope finds in it, when no declared layout fits.

The parts come from the role finder (:func:`layerscope.layouts.block_roles`): the token mixer
(attention with its q/k/v/o projections, or a state-space/recurrent mixer), the feed-forward (its
up/gate/down projections) and the norms. One real forward pass, with every part hooked through
:class:`~layerscope.layers.Capture`, gives each part's output in the order the block ran them.
The walk then rebuilds the block's output from the sublayers' outputs, trying the three ways a
residual block is wired, in this order, and keeps the first that reproduces it:

* **pre-norm**: ``h = h + sublayer(...)`` after each sublayer (the norms sit inside the branch);
* **post-norm**: ``h = norm(h + sublayer(...))``, with the norm the block ran next;
* **parallel**: ``y = x + mixer(...) + feed-forward(...)`` (both branches read the input).

The fallback, stated in the result's notes: when none reproduces the output (scaled residuals,
extra gates, parts the role finder does not see), the steps still show every part's real output
and ``check`` is the distance of the closest form. Attention weights are not recomputed here:
positions may enter q and k inside the attention in ways the roles do not describe.

Example:
    >>> import torch
    >>> from transformers import GPTJConfig, GPTJModel
    >>> from layerscope.explain import explain
    >>> torch.manual_seed(0) and None
    >>> m = GPTJModel(GPTJConfig(n_embd=16, n_layer=2, n_head=2, rotary_dim=4, vocab_size=40)).eval()
    >>> r = explain(m, layer=1, inputs=torch.tensor([[1, 2, 3]]))
    >>> r.layer_kind, r.check < 1e-5, r.notes[0].split(" (")[0]
    ('transformer-block', True, 'residual form: parallel')
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.layers import Capture, Layer
from layerscope.layouts import block_roles

from .steps import ExplainResult, step

TOLERANCE = 1e-4


def generic_kind(block: nn.Module) -> str | None:
    """``"generic"`` when the role finder sees a token mixer in ``block`` (a block it can walk).

    Example:
        >>> from torch import nn
        >>> generic_kind(nn.Linear(2, 2)) is None
        True
    """
    try:
        roles = block_roles(block)
    except Exception:  # noqa: BLE001 - a module the role finder cannot read is not walkable
        return None
    return "generic" if roles.mixer is not None else None


def _parts(roles) -> list[tuple[str, str, nn.Module, str]]:
    """(label, path, module, kind) of each part to hook; kind "sublayer", "norm" or "inner"."""
    out = [(f"norm {p}", p, m, "norm") for p, m in roles.norms if not isinstance(m, nn.Identity)]
    mixer = roles.mixer
    label = "attention" if mixer.kind == "attention" else f"{mixer.kind} mixer"
    out.append((label, mixer.path, mixer.module, "sublayer"))
    att = roles.attention
    if att is not None:
        for r in ("qkv", "q", "k", "v", "o"):
            mod = getattr(att, r)
            if mod is not None:
                out.append((f"attention {r}", att.paths.get(r, f"{att.path}.{r}"), mod, "inner"))
    ffn = roles.ffn
    if ffn is not None:
        if ffn.module is not None:
            out.append(("feed-forward", ffn.path, ffn.module, "sublayer"))
        for r in ("gate", "up", "down"):
            mod = getattr(ffn, r)
            if mod is not None:  # without a feed-forward module, its down projection ends the branch
                own = ffn.module is None and r == "down"
                out.append((f"feed-forward {r}", ffn.paths.get(r, r), mod, "sublayer" if own else "inner"))
    seen, unique = set(), []
    for part in out:
        if id(part[2]) not in seen:
            seen.add(id(part[2]))
            unique.append(part)
    return unique


def _residual_forms(x: Tensor, y: Tensor, order: list[tuple[str, str, Tensor, nn.Module | None, Tensor | None]]):
    """(form, steps, result) for each residual wiring, from the sublayer/norm outputs in run order
    (each with the part's input, which for a norm is the stream at that point)."""
    subs = [(i, label, out) for i, (label, kind, out, _, _) in enumerate(order) if kind == "sublayer"]
    forms = []
    h, steps = x, []
    for k, (i, label, out) in enumerate(subs):
        # the stream after this sublayer is checked against the next norm's input (or the
        # block's output): a sublayer module that holds its own norm and add returns the stream
        nxt = next((inp for label2, kind2, _, _, inp in order[i + 1:] if kind2 == "norm"), None)
        ref = nxt if nxt is not None and k + 1 < len(subs) else (y if k + 1 == len(subs) else None)
        added, own = h + out, out
        if ref is not None and ref.shape == out.shape and \
                float((own - ref).abs().max()) < float((added - ref).abs().max()):
            h = own
            steps.append((f"residual add {k + 1}", f"{label} output (the sublayer adds the stream "
                                                   f"itself)", h))
        else:
            h = added
            steps.append((f"residual add {k + 1}", f"stream + {label} output", h))
    forms.append(("pre-norm", steps, h))
    h, steps, pending = x, [], None
    for label, kind, out, module, _ in order:
        if kind == "sublayer":
            if pending is not None:  # no norm between two sublayers: a plain add
                h = h + pending[1]
                steps.append(("residual add", f"stream + {pending[0]} output", h))
            pending = (label, out)
        elif kind == "norm" and pending is not None:
            h = module(h + pending[1])
            steps.append((f"residual add + {label}", f"{label}(stream + {pending[0]} output)", h))
            pending = None
    if pending is not None:
        h = h + pending[1]
        steps.append(("residual add", f"stream + {pending[0]} output", h))
    forms.append(("post-norm", steps, h))
    if len(subs) >= 2:
        h = x + sum(out for _, _, out in subs)
        forms.append(("parallel", [("parallel residual add", "input + " + " + ".join(
            f"{label} output" for _, label, _ in subs), h)], h))
    return forms


def explain_generic(model: nn.Module, target: Layer, view: nn.Module, args: tuple, kwargs: dict, *,
                    head: int = 0, inputs: str = "") -> ExplainResult:
    """Walk block ``target`` of ``model`` (its roles read from ``view``: the block, or the group
    of its entries for a block kept in parallel lists) on one forward of ``model(*args, **kwargs)``."""
    roles = block_roles(view, getattr(model, "config", None))
    if roles.mixer is None:
        raise LayerscopeError(f"layer {target.name!r}: no attention or token mixer found in it, so "
                              f"explain cannot walk it; name the blocks with --blocks PATH")
    parts = _parts(roles)
    hooks = [Layer(i + 1, f"{label} ({path})", mod, kind, type(mod).__name__)
             for i, (label, path, mod, kind) in enumerate(parts)]
    by_module = {id(h.module): h.name for h in hooks}
    # a block kept in parallel lists is read at its parts: its input at the first, its output at
    # the last (hooking the same module twice would keep only one name)
    first, last = by_module.get(id(target.module)), by_module.get(id(target.observed))
    if first is None or last is None:
        hooks.insert(0, target)
        first = last = target.name
    kept: dict[str, Tensor] = {}

    def keep(out: Tensor, name: str) -> None:  # a copy: the block may later change it in place
        kept[name] = out.detach().clone()

    with torch.no_grad(), Capture(model, hooks, inputs=True, edit=keep) as cap:
        cap.call(model, *args, **kwargs)
    if last not in kept or first not in cap.inputs:
        raise LayerscopeError(f"layer {target.name!r} did not run during the forward pass; choose "
                              f"a layer the model uses on this input")
    x, y = cap.inputs[first], kept[last]
    if x.dim() != 3:
        raise LayerscopeError(f"layer {target.name!r} received a {x.dim()}-d input; a transformer "
                              f"block takes (batch, tokens, width)")
    kind_of = {f"{label} ({path})": (label, path, kind, mod) for label, path, mod, kind in parts}
    steps = [step("input", f"the hidden states entering the block ({x.shape[1]} tokens × "
                           f"{x.shape[2]})", x[0])]
    order = []
    for name, out in kept.items():   # the order the block ran its parts
        if name == target.name:
            continue
        label, path, kind, mod = kind_of[name]
        if out.shape != x.shape and out.numel() == x.numel():
            out = out.reshape(x.shape)  # a part run on (batch x tokens, width)
        steps.append(step(label, f"{type(mod).__name__} at {path}, as the "
                                 f"model ran it", out[0]))
        if out.shape == x.shape and kind in ("sublayer", "norm"):
            inp = cap.inputs.get(name)
            order.append((label, kind, out, mod, inp if inp is not None and inp.shape == x.shape else None))
    with torch.no_grad():
        forms = _residual_forms(x, y, order)
    scored = [(float((h - y).abs().max()) if h.shape == y.shape else float("inf"), form, s, h)
              for form, s, h in forms]
    check, form, form_steps, rebuilt = min(scored, key=lambda t: t[0])
    scale = max(1.0, float(y.abs().max()))
    steps += [step(name, formula, value[0]) for name, formula, value in form_steps]
    if check <= TOLERANCE * scale:
        notes = [f"residual form: {form} (the first of pre-norm, post-norm, parallel that "
                 f"reproduces the block's output from its parts)"]
    else:
        notes = [f"fallback: no residual form (pre-norm, post-norm, parallel) rebuilds the "
                 f"block's output from its parts (closest: {form}, off by {check:.2e}); the steps "
                 f"show each part's real output"]
    notes.append(f"roles: {roles.rule}")
    params = sum(p.numel() for p in view.parameters())
    return ExplainResult(
        title=f"{target.name} ({type(target.module).__name__}, walked through its roles)",
        layer_kind="transformer-block", layer=target.name, steps=steps, params=int(params),
        layers_note=(f"1 layer: a {roles.mixer.kind} sublayer and "
                     f"{'a feed-forward sublayer' if roles.ffn else 'no feed-forward'}, with their "
                     f"norms and residual adds; people count one block as one layer"),
        check=check, inputs=inputs, head=head, notes=notes,
        tensors={"output": y.detach(), "step-by-step output": rebuilt})


__all__ = ["explain_generic", "generic_kind"]
