"""Freezing layers, the BatchNorm policy, and per-layer learning rates (optimizer param groups).

``freeze`` picks layers of the Layers view (blocks granularity): ``"blocks:0-2"``, ``"0,1"``,
module names such as ``"fc,blocks.0"``, or a list of those. Freezing block 0 also freezes what
runs before it (embeddings, stem): with the first k blocks frozen, nothing below block k needs a
gradient, so the backward pass stops there. A frozen layer is frozen whole:
its parameters get ``requires_grad=False`` and every BatchNorm inside it is kept in eval mode,
so its running statistics stay fixed too (``requires_grad=False`` alone would not stop them).

``freeze_bn`` says what happens to every other BatchNorm module:

* ``none``   – trains normally: affine weights learn, running statistics update;
* ``stats``  – kept in eval mode while training: running mean/var stay fixed and normalise
  with the stored statistics; the affine weight and bias still learn;
* ``affine`` – weight and bias frozen (``requires_grad=False``); running statistics still update;
* ``both``   – both of the above.

Everything is applied to the model being trained and undone afterwards by :func:`restore`
(``requires_grad`` flags and train/eval modes come back as they were; the weights are the
trained ones).

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> plan = plan_freezing(net, freeze="blocks:0", freeze_bn="none")
    >>> plan.frozen_layers, [p.requires_grad for p in net[0].parameters()]
    (['0'], [False, False])
    >>> restore(net, plan); [p.requires_grad for p in net[0].parameters()]
    [True, True]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from layerscope.errors import LayerscopeError

BN_POLICIES = ("none", "stats", "affine", "both")
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class FreezePlan:
    frozen_layers: list[str]
    stats_frozen: list[nn.Module]         # BatchNorm modules held in eval mode while training
    requires_grad: dict = field(default_factory=dict)   # parameter -> original flag
    training: dict = field(default_factory=dict)        # module -> original training flag

    def apply_modes(self) -> None:
        """After ``model.train()``: put the stats-frozen BatchNorms back into eval mode."""
        for module in self.stats_frozen:
            module.eval()


def block_layers(model: nn.Module):
    """The Layers view (blocks) of ``model``; a lone zoo block list ``.blocks`` also counts."""
    from layerscope.layers import Layers

    try:
        return Layers(model, "blocks")
    except LayerscopeError:
        if isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential)):
            return Layers(model, "blocks", blocks="blocks")
        raise


_layers = block_layers


def resolve_layers(model: nn.Module, spec) -> list[tuple[str, nn.Module]]:
    """(name, module) for a freeze / learning-rate spec: ``blocks:0-2``, indices, or module names."""
    tokens = spec if isinstance(spec, (list, tuple)) else [spec]
    found: dict[str, nn.Module] = {}
    named = dict(model.named_modules())
    for token in tokens:
        text = str(token).strip()
        if text.startswith("blocks:"):
            text = text[len("blocks:"):]
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if part in named and not re.fullmatch(r"-?\d+(\s*-\s*-?\d+)?", part):
                found[part] = named[part]
                continue
            layers = _layers(model)
            for layer in layers.select(part):
                if layer.index == 0:
                    for path, module in getattr(layers.found, "before", []) or []:
                        found[path] = module
                found[layer.name] = layer.module
    if not found:
        raise LayerscopeError(f"freeze={spec!r} picks no layer; use e.g. 'blocks:0-2' or a module name")
    return list(found.items())


def plan_freezing(model: nn.Module, *, freeze=None, freeze_bn: str = "none") -> FreezePlan:
    """Freeze the chosen layers and apply the BatchNorm policy; returns what to undo."""
    if freeze_bn not in BN_POLICIES:
        raise LayerscopeError(f"freeze_bn={freeze_bn!r} is not an option; use one of: "
                              f"{', '.join(BN_POLICIES)}")
    plan = FreezePlan(frozen_layers=[], stats_frozen=[])
    plan.requires_grad = {p: p.requires_grad for p in model.parameters()}
    plan.training = {m: m.training for m in model.modules()}
    frozen_modules: set[int] = set()
    if freeze:
        for name, module in resolve_layers(model, freeze):
            plan.frozen_layers.append(name)
            for sub in module.modules():
                frozen_modules.add(id(sub))
            for p in module.parameters():
                p.requires_grad_(False)
    for module in model.modules():
        if not isinstance(module, _BN):
            continue
        inside = id(module) in frozen_modules
        if inside or freeze_bn in ("stats", "both"):
            plan.stats_frozen.append(module)
        if not inside and freeze_bn in ("affine", "both"):
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
    return plan


def restore(model: nn.Module, plan: FreezePlan) -> None:
    """Put every ``requires_grad`` flag and train/eval mode back as before :func:`plan_freezing`."""
    for p, flag in plan.requires_grad.items():
        p.requires_grad_(flag)
    for m, flag in plan.training.items():
        m.training = flag


def param_groups(model: nn.Module, lr: float, *, layer_lr: dict | None = None,
                 lr_decay: float | None = None) -> list[dict]:
    """Optimizer param groups: trainable parameters only, each group with its own ``lr``.

    ``layer_lr`` maps a layer (index, range or module name, as for ``freeze``) to its learning
    rate; ``lr_decay`` gives block ``i`` of ``n`` the rate ``lr * lr_decay ** (n - 1 - i)``
    (layer-wise decay: the last block learns at ``lr``; embeddings before the first block at
    ``lr * lr_decay ** n``); parameters outside every named layer use ``lr``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> [(g["name"], g["lr"]) for g in param_groups(net, 0.1, layer_lr={"0": 0.01})]
        [('0', 0.01), ('rest', 0.1)]
    """
    if lr_decay is not None and layer_lr:
        raise LayerscopeError("give either layer_lr or lr_decay, not both")
    rates: list[tuple[str, float, list]] = []
    if layer_lr:
        for key, rate in layer_lr.items():
            if not float(rate) >= 0:
                raise LayerscopeError(f"learning rate {rate!r} for layer {key!r} must be >= 0")
            for name, module in resolve_layers(model, str(key)):
                rates.append((name, float(rate), list(module.parameters())))
    elif lr_decay is not None:
        if not 0 < lr_decay <= 1:
            raise LayerscopeError(f"lr_decay={lr_decay} must lie in (0, 1], e.g. 0.8")
        layers = _layers(model)
        n = len(layers)
        for path, module in getattr(layers.found, "before", []) or []:
            rates.append((path, lr * lr_decay ** n, list(module.parameters())))
        for layer in layers:
            rates.append((layer.name, lr * lr_decay ** (n - 1 - layer.index),
                          list(layer.module.parameters())))
    groups, seen = [], set()
    for name, rate, params in rates:
        mine = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in mine)
        if mine:
            groups.append({"params": mine, "lr": rate, "name": name})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": lr, "name": "rest"})
    if not groups:
        raise LayerscopeError("every parameter is frozen; freeze fewer layers")
    return groups
