"""The Layers view: a model's layers as an ordered, named, indexable sequence, and hooks on them.

Three granularities: ``blocks`` (the units people count: transformer blocks, residual blocks,
LSTM layers, the layers of an MLP), ``sublayers`` (the parts inside each block plus the
embeddings, final norm and head around them) and ``modules`` (every module holding parameters
of its own). A multi-layer ``nn.LSTM``/``nn.GRU`` appears as one layer per ``num_layers``
(``lstm.l0``, ``lstm.l1``...); the outputs of its inner layers are recomputed from the module's
own weights with single-layer calls, so the module is never changed.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from layerscope.layers import Layers
    >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> lay = Layers(mlp)
    >>> len(lay), lay.names(), lay[-1].role
    (3, ['0', '2', '4'], 'head')
    >>> with lay.capture("0,1") as cap:
    ...     out = cap.call(mlp, torch.ones(5, 4))
    >>> tuple(cap.outputs["2"].shape), len(mlp._forward_hooks)
    ((5, 8), 0)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from layerscope.errors import LayerscopeError
from layerscope.layouts import (RNN_TYPES, Found, counts_as_sublayer, find_layout,
                                role_of)

GRANULARITIES = ("blocks", "sublayers", "modules")


@dataclass
class Layer:
    """One layer: position, module path, module, role and class name (``part`` for an RNN layer).

    ``output_module``, when set, is where the layer's output is read (an nn.Sequential block's
    trailing activation); inputs are always read at ``module``.

    Example:
        >>> from torch import nn
        >>> from layerscope.layers import Layers
        >>> layer = Layers(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))[0]
        >>> layer.index, layer.name, layer.kind
        (0, '0', 'Linear')
    """

    index: int
    name: str
    module: nn.Module
    role: str
    kind: str
    part: int | None = None
    output_module: nn.Module | None = None
    stack: str | None = None

    @property
    def observed(self) -> nn.Module:
        """The module whose output is this layer's output."""
        return self.module if self.output_module is None else self.output_module

    def __repr__(self) -> str:
        return f"Layer({self.index}, {self.name!r}, role={self.role!r}, kind={self.kind!r})"


def primary_tensor(output) -> Tensor:
    """The hidden-state tensor of a module's output (a tensor, tuple, ModelOutput or packed sequence).

    Example:
        >>> import torch
        >>> primary_tensor((torch.zeros(2, 3), (torch.ones(1),))).shape
        torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, PackedSequence):
        return pad_packed_sequence(output, batch_first=True)[0]
    found = _primary_slot(output)
    if found is None:
        raise LayerscopeError(
            f"a layer returned {type(output).__name__} with no tensor in it; choose a layer that "
            f"outputs a tensor")
    return found[1]


def _primary_slot(output) -> tuple | None:
    """``(key or index, tensor)``: where in a mapping, tuple or list the primary tensor lies.

    A mapping's ``last_hidden_state``, ``hidden_states`` or ``logits`` tensor comes first (in
    that order), else the first field or item that holds a tensor; None when nothing does.
    """
    if isinstance(output, Mapping):
        preferred = [k for k in ("last_hidden_state", "hidden_states", "logits")
                     if isinstance(output.get(k), Tensor)]
        slots = preferred or list(output.keys())
    elif isinstance(output, (tuple, list)):
        slots = range(len(output))
    else:
        return None
    for slot in slots:
        try:
            return slot, primary_tensor(output[slot])
        except LayerscopeError:
            continue
    return None


def _own_blocks(module: nn.Module) -> str | None:
    """Where a module says its blocks are (zoo networks do, so one block at ``depth=1`` counts)."""
    named = getattr(module, "layerscope_blocks", None)
    return named if isinstance(named, str) and named else None


def _unwrap(model) -> tuple[nn.Module, str | None, str | None]:
    if isinstance(model, nn.Module):
        return model, _own_blocks(model), None
    module = getattr(model, "module", None)
    if isinstance(module, nn.Module):
        meta = getattr(model, "meta", None) or {}
        blocks = meta.get("blocks")
        return module, blocks or (None if meta.get("stack") else _own_blocks(module)), meta.get("stack")
    raise LayerscopeError(
        f"Layers takes an nn.Module or a LoadedModel; got {type(model).__name__}")


class Layers(Sequence):
    """The layers of ``model`` at one granularity, found by :func:`layerscope.layouts.find_layout`.

    ``blocks`` overrides discovery: a dotted path to a ModuleList/Sequential, or a comma list of
    module paths. ``stack`` picks a named stack of a multi-stack model (``"vision_tower"``,
    ``"encoder+decoder"``); by default the stack a person counts (see
    :func:`layerscope.layouts.default_stacks`); a LoadedModel's ``meta["stack"]`` (``--stack``)
    is read the same way. ``stacks`` lists every stack found, ``stack`` names the chosen one(s).
    ``rule`` says in one line how the layers were found.

    Example:
        >>> from torch import nn
        >>> layers = Layers(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
        >>> len(layers), layers[-1].name, [layer.name for layer in layers]
        (2, '2', ['0', '2'])
    """

    def __init__(self, model, granularity: str = "blocks", blocks: str | None = None,
                 stack: str | None = None):
        module, meta_blocks, meta_stack = _unwrap(model)
        if granularity not in GRANULARITIES:
            raise LayerscopeError(
                f"unknown granularity {granularity!r}; use one of: {', '.join(GRANULARITIES)}")
        self.model = module
        self.granularity = granularity
        stack = stack or (None if blocks else meta_stack)
        self.found: Found = find_layout(module, blocks or (None if stack else meta_blocks), stack)
        self.family = self.found.family
        self.stacks = list(self.found.stacks)
        self.stack = self.found.stack
        self._layers, self.rule = _build(module, self.found, granularity)
        self._by_name = {layer.name: layer for layer in self._layers}

    # -- the sequence --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._subset(self._layers[key])
        if isinstance(key, str) and key in self._by_name:
            return self._by_name[key]
        if isinstance(key, str) and re.fullmatch(r"-?\d+", key.strip()):
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            n = len(self._layers)
            if -n <= key < n:
                return self._layers[key]
            from layerscope.errors import LayerscopeIndexError

            raise LayerscopeIndexError(
                f"layer {key} is out of range: {type(self.model).__name__} has {n} "
                f"{self.granularity} ({self._range()})")
        raise LayerscopeError(
            f"no layer {key!r} in {type(self.model).__name__}; use an index ({self._range()}) or "
            f"a name such as {', '.join(self.names()[:3])}")

    def __repr__(self) -> str:
        return (f"Layers({type(self.model).__name__}, granularity={self.granularity!r}, "
                f"{len(self)} layers: {self.rule})")

    def _range(self) -> str:
        n = len(self._layers)
        return f"0-{n - 1}" if n else "none"

    def _subset(self, layers: list[Layer]) -> "Layers":
        sub = object.__new__(Layers)
        sub.__dict__.update(self.__dict__)
        sub._layers = list(layers)
        sub._by_name = {layer.name: layer for layer in layers}
        return sub

    def names(self) -> list[str]:
        """The layer names (module paths) in order."""
        return [layer.name for layer in self._layers]

    def select(self, spec=None) -> list[Layer]:
        """Layers picked by ``spec``: None/"all", an index, "0,3,5", "2-4", "-1", names, or a list.

        Example:
            >>> from torch import nn
            >>> lay = Layers(nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)]))
            >>> [l.index for l in lay.select("0,2-3,-1")]
            [0, 2, 3, 5]
        """
        if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
            return list(self._layers)
        tokens = _tokens(spec)
        if isinstance(spec, str) and not tokens:
            raise LayerscopeError(f"layers {spec!r} names no layer; use indices {self._range()}, "
                                  "ranges like 2-4, names, or all")
        picked: dict[int, Layer] = {}
        for token in tokens:
            for layer in self._pick(token):
                picked[layer.index] = layer
        return [picked[i] for i in sorted(picked)]

    def _pick(self, token) -> list[Layer]:
        if isinstance(token, Layer):
            return [self[token.name]]
        if isinstance(token, slice):
            return self._layers[token]
        if isinstance(token, int):
            return [self[token]]
        text = str(token).strip()
        if text in self._by_name:
            return [self._by_name[text]]
        if re.fullmatch(r"-?\d+", text):
            return [self[int(text)]]
        m = re.fullmatch(r"(-?\d+)\s*(?:-|:|\.\.)\s*(-?\d+)", text)
        if m:
            lo, hi = (self[int(g)].index for g in m.groups())
            if lo > hi:
                raise LayerscopeError(f"layer range {text!r} is empty; write it low-high, e.g. 2-4")
            return self._layers[lo:hi + 1]
        shown = ", ".join(self.names()[:6]) + (", ..." if len(self) > 6 else "")
        raise LayerscopeError(
            f"no layer {text!r} in {type(self.model).__name__} ({self.granularity}); use indices "
            f"{self._range()}, ranges like 2-4, or names: {shown}")

    def capture(self, layers=None, *, inputs: bool = False, kwargs: bool = False,
                stop_early: bool = False, edit=None) -> "Capture":
        """A context manager hooking the chosen layers; see :class:`Capture`."""
        return Capture(self.model, self.select(layers), inputs=inputs, kwargs=kwargs,
                       stop_early=stop_early, edit=edit)


def _tokens(spec) -> list:
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            out.extend(_tokens(item))
        return out
    if isinstance(spec, str):
        return [t for t in spec.split(",") if t.strip()]
    return [spec]


# --- building the lists -------------------------------------------------------------------------


def _block_role(found: Found, i: int, ref) -> str:
    if ref.part is not None or isinstance(ref.module, RNN_TYPES):
        return "recurrent"
    if found.family in ("sequential", "flat", "explicit"):
        if found.family != "explicit" and i == len(found.blocks) - 1 and len(found.blocks) > 1:
            return "head"
        role = role_of(ref.path, ref.module)
        return "block" if role in ("stem",) else role
    return "block"


def _build(model: nn.Module, found: Found, granularity: str) -> tuple[list[Layer], str]:
    rows: list[tuple] = []
    if granularity == "blocks":
        for i, ref in enumerate(found.blocks):
            rows.append((ref.name, ref.module, _block_role(found, i, ref), ref.part, ref.output,
                         found.stack_of.get(id(ref.module))))
        rule = found.rule + f" [{found.family} layout]"
    elif granularity == "sublayers":
        for path, mod in found.before:
            rows.extend(_sub_rows(path, mod, "before"))
        if found.family in ("sequential", "flat") and not found.before and not found.after:
            prefix = _common_parent([ref.path for ref in found.blocks])
            owner = model.get_submodule(prefix) if prefix else model
            for name, child in owner.named_children():
                rows.extend(_sub_rows(f"{prefix}.{name}" if prefix else name, child, "inside"))
        else:
            for ref in found.blocks:
                if ref.part is not None:
                    rows.append((ref.name, ref.module, "recurrent", ref.part))
                    continue
                if ref.members:  # a block kept in parallel lists: each entry's parts, or the entry
                    for path, entry in ref.members:
                        inner = [(f"{path}.{n}", c) for n, c in entry.named_children()
                                 if counts_as_sublayer(n, c)]
                        for sub_path, child in inner or [(path, entry)]:
                            rows.extend(_sub_rows(sub_path, child, "inside"))
                    continue
                parts = [(f"{ref.path}.{n}" if ref.path else n, c)
                         for n, c in ref.module.named_children() if counts_as_sublayer(n, c)]
                if not parts:
                    rows.append((ref.name, ref.module, role_of(ref.path, ref.module), None))
                for path, child in parts:
                    rows.extend(_sub_rows(path, child, "inside"))
        for path, mod in found.after:
            rows.extend(_sub_rows(path, mod, "after"))
        rule = ("sublayers = the parts of each block (attention, feed-forward, norms; conv, pool, "
                "activation) plus the parts around the blocks (embeddings, stem, final norm, head)")
    else:
        for path, mod in model.named_modules():
            if next(mod.parameters(recurse=False), None) is None:
                continue
            rows.extend(_sub_rows(path or type(model).__name__, mod, "inside", split_only=True))
        rule = "modules = every module holding parameters of its own (tied ones listed where they occur)"
    layers = []
    seen: set[str] = set()
    for name, mod, role, part, *extra in rows:
        if name in seen:
            continue
        seen.add(name)
        layers.append(Layer(len(layers), name, mod, role, type(mod).__name__, part,
                            extra[0] if extra else None, extra[1] if len(extra) > 1 else None))
    return layers, rule


def _common_parent(paths: list[str]) -> str:
    parents = {p.rsplit(".", 1)[0] if "." in p else "" for p in paths}
    return parents.pop() if len(parents) == 1 else ""


def _sub_rows(path: str, mod: nn.Module, where: str, split_only: bool = False):
    if isinstance(mod, RNN_TYPES) and mod.num_layers > 1:
        return [(f"{path}.l{k}" if path else f"l{k}", mod, "recurrent", k)
                for k in range(mod.num_layers)]
    if not split_only and not counts_as_sublayer(path, mod):
        return []
    return [(path, mod, role_of(path, mod, where), None)]


def count_layers(model, blocks: str | None = None, stack: str | None = None) -> dict[str, int]:
    """How many layers ``model`` has at each granularity.

    Example:
        >>> from torch import nn
        >>> count_layers(nn.LSTM(3, 5, num_layers=3))
        {'blocks': 3, 'sublayers': 3, 'modules': 3}
    """
    return {g: len(Layers(model, g, blocks=blocks, stack=stack)) for g in GRANULARITIES}


# --- hooks ----------------------------------------------------------------------------------------


class StopForward(Exception):
    """Raised inside a hook after the last wanted layer; caught by :meth:`Capture.call`."""


class NotCaptured(LayerscopeError, KeyError):
    """``cap[name]`` for a layer the capture holds no output of (a ``KeyError`` too)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _first_tensor(args, kwargs) -> Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, Tensor):
            return value
        if isinstance(value, PackedSequence):
            return primary_tensor(value)
    return None


def replace_primary(output, new: Tensor):
    """``output`` with its hidden-state tensor (the one :func:`primary_tensor` reads) replaced by
    ``new``; a tuple, list or ModelOutput keeps its type and every other field.

    Example:
        >>> import torch
        >>> out = replace_primary((torch.zeros(2), "cache"), torch.ones(2))
        >>> out[0].tolist(), out[1]
        ([1.0, 1.0], 'cache')
    """
    if isinstance(output, Tensor):
        return new
    found = _primary_slot(output) if not isinstance(output, PackedSequence) else None
    if found is None:
        raise LayerscopeError(
            f"a layer returned {type(output).__name__}; only a tensor, or a tuple, list or "
            f"ModelOutput holding one, can be edited")
    slot = found[0]
    if isinstance(output, Mapping):
        fields = dict(output.items())
        fields[slot] = replace_primary(output[slot], new)
        try:
            return type(output)(**fields)
        except TypeError:
            return fields
    items = list(output)
    items[slot] = replace_primary(output[slot], new)
    if isinstance(output, list):
        return items
    return type(output)(*items) if hasattr(output, "_fields") else tuple(items)


class Capture:
    """Hooks on chosen layers: outputs (and optionally inputs, call arguments) by layer name, and
    optional edits of the outputs.

    ``outputs[name]`` (also ``cap[name]``) is the layer's primary output tensor as the rest of the
    model saw it (after any edit). ``inputs=True`` keeps each layer's first input tensor in
    ``inputs``; ``kwargs=True`` keeps its keyword arguments in ``kwargs`` and its positional
    arguments in ``args`` (enough to call the layer again). ``edit`` replaces outputs: a callable
    ``edit(output, name) -> Tensor`` applied to every captured layer, or a mapping ``{name:
    callable}`` for some of them; the returned tensor is put back in place of the primary tensor
    of the module's output (a tuple, list or ModelOutput keeps its structure), returning None
    leaves the output unchanged. Input hooks run before the layer, so an edit may read
    ``cap.inputs[name]`` (e.g. to skip a residual block: ``edit=lambda out, n: cap.inputs[n]``).

    Every hook is removed on exit, also when the forward pass raises. With ``stop_early`` the
    forward stops after the last wanted layer has produced its output; :meth:`call` then returns
    None.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> lay = Layers(net)
        >>> with lay.capture("0", edit=lambda out, name: torch.zeros_like(out)) as cap:
        ...     y = cap.call(net, torch.randn(4, 3))
        >>> torch.equal(y, net[2](torch.zeros(4, 3))), cap["0"].abs().sum().item()
        (True, 0.0)
    """

    def __init__(self, model: nn.Module, layers: list[Layer], *, inputs: bool = False,
                 kwargs: bool = False, stop_early: bool = False, edit=None):
        self.model = model
        self.layers = list(layers)
        self.want_inputs, self.want_kwargs, self.stop_early = inputs, kwargs, stop_early
        self.outputs: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        self.kwargs: dict[str, dict] = {}
        self.args: dict[str, tuple] = {}
        self._handles: list = []
        self._seen: set[str] = set()
        self._wanted = {layer.name for layer in self.layers}
        self._edits = self._edit_table(edit)

    def _edit_table(self, edit) -> dict:
        if edit is None:
            return {}
        if callable(edit) and not isinstance(edit, Mapping):
            table = {layer.name: edit for layer in self.layers}
        elif isinstance(edit, Mapping):
            unknown = [k for k in edit if k not in self._wanted]
            if unknown:
                raise LayerscopeError(
                    f"edit names layer {unknown[0]!r}, which this capture does not hook; capture "
                    f"it too (hooked: {', '.join(sorted(self._wanted)[:6])})")
            bad = [k for k, fn in edit.items() if not callable(fn)]
            if bad:
                raise LayerscopeError(f"edit for layer {bad[0]!r} is not callable; give a function "
                                      f"(output, name) -> tensor")
            table = dict(edit)
        else:
            raise LayerscopeError(f"edit must be a function (output, name) -> tensor or a mapping "
                                  f"of layer names to such functions; got {type(edit).__name__}")
        split = [layer.name for layer in self.layers if layer.name in table and layer.part is not None]
        if split:
            raise LayerscopeError(
                f"layer {split[0]!r} is one layer inside a multi-layer RNN, whose inner outputs are "
                f"recomputed, not hooked; it cannot be edited (edit the whole RNN module instead)")
        return table

    # -- reading ----------------------------------------------------------------------------------
    def __getitem__(self, name) -> Tensor:
        key = name.name if isinstance(name, Layer) else name
        if key in self.outputs:
            return self.outputs[key]
        if key in self._wanted:
            raise NotCaptured(f"layer {key!r} has produced no output yet; run the forward with "
                              f"cap.call(...) inside the with-block first")
        raise NotCaptured(f"layer {key!r} is not hooked by this capture; hooked layers: "
                          f"{', '.join(sorted(self._wanted)[:6])}")

    def __contains__(self, name) -> bool:
        return (name.name if isinstance(name, Layer) else name) in self.outputs

    def keys(self) -> list[str]:
        """The names of the layers with a captured output, in the order they ran."""
        return list(self.outputs)

    def __enter__(self) -> "Capture":
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset))
            groups: dict[int, list[Layer]] = {}
            for layer in self.layers:
                groups.setdefault(id(layer.module), []).append(layer)
            for group in groups.values():
                module = group[0].module
                if group[0].part is not None:
                    self._handles.append(module.register_forward_hook(
                        self._rnn_hook(group), with_kwargs=True))
                    continue
                layer = group[0]
                if self.want_inputs or self.want_kwargs:
                    self._handles.append(module.register_forward_pre_hook(
                        self._pre_hook(layer.name), with_kwargs=True))
                self._handles.append(layer.observed.register_forward_hook(
                    self._post_hook(layer.name), with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def remove(self) -> None:
        """Remove every hook this capture placed (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def clear(self) -> None:
        """Forget what was captured (before the next batch)."""
        self.outputs.clear()
        self.inputs.clear()
        self.kwargs.clear()
        self.args.clear()

    def call(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` (the forward); its output, or None if stopped early."""
        self._seen = set()
        try:
            return fn(*args, **kwargs)
        except StopForward:
            return None

    # -- the hooks --------------------------------------------------------------------------------
    def _reset(self, module, args):
        self._seen = set()

    def _mark(self, name: str) -> None:
        self._seen.add(name)
        if self.stop_early and self._wanted <= self._seen:
            raise StopForward()

    def _pre_hook(self, name: str):
        def hook(module, args, kwargs):
            if self.want_inputs:
                t = _first_tensor(args, kwargs)
                if t is not None:
                    self.inputs[name] = t
            if self.want_kwargs:
                self.kwargs[name] = dict(kwargs)
                self.args[name] = tuple(args)
        return hook

    def _post_hook(self, name: str):
        edit = self._edits.get(name)

        def hook(module, args, kwargs, output):
            new_output = None
            if edit is not None:
                new = edit(primary_tensor(output), name)
                if new is not None:
                    if not isinstance(new, Tensor):
                        raise LayerscopeError(
                            f"the edit of layer {name!r} returned {type(new).__name__}; return a "
                            f"tensor (or None to leave the output unchanged)")
                    new_output = replace_primary(output, new)
            self.outputs[name] = primary_tensor(output if new_output is None else new_output)
            self._mark(name)
            return new_output
        return hook

    def _rnn_hook(self, group: list[Layer]):
        parts = {layer.part: layer.name for layer in group}

        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("input")
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            ins, outs = rnn_layer_outputs(module, x, hx, max(parts), output)
            for k, name in parts.items():
                self.outputs[name] = primary_tensor(outs[k])
                if self.want_inputs:
                    self.inputs[name] = primary_tensor(ins[k])
                if self.want_kwargs:
                    self.kwargs[name] = dict(kwargs)
                    self.args[name] = tuple(args)
            for name in parts.values():
                self._mark(name)
        return hook


# --- multi-layer RNNs, one layer at a time ------------------------------------------------------------


def _single_layer(module: nn.Module, k: int) -> tuple[nn.Module, dict]:
    """A one-layer RNN of the same kind on the meta device, and layer ``k``'s weights for it."""
    dirs = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0)
    in_size = module.input_size if k == 0 else (proj or module.hidden_size) * dirs
    options = dict(num_layers=1, bias=module.bias, batch_first=module.batch_first,
                   bidirectional=module.bidirectional, device="meta")
    if isinstance(module, nn.LSTM):
        template = nn.LSTM(in_size, module.hidden_size, proj_size=proj, **options)
    elif isinstance(module, nn.GRU):
        template = nn.GRU(in_size, module.hidden_size, **options)
    else:
        template = nn.RNN(in_size, module.hidden_size, nonlinearity=module.nonlinearity, **options)
    own = dict(module.named_parameters())
    weights = {}
    for name, _ in template.named_parameters():
        source = re.sub(r"_l0(_reverse)?$", lambda m: f"_l{k}{m.group(1) or ''}", name)
        weights[name] = own[source]
    return template, weights


def _hx_slice(module: nn.Module, hx, k: int):
    if hx is None:
        return None
    dirs = 2 if module.bidirectional else 1
    if isinstance(hx, (tuple, list)):
        return tuple(h[k * dirs:(k + 1) * dirs] for h in hx)
    return hx[k * dirs:(k + 1) * dirs]


def rnn_layer_outputs(module: nn.Module, x, hx, upto: int, output=None) -> tuple[list, list]:
    """Inputs and output sequences of layers ``0..upto`` of a multi-layer ``nn.LSTM``/``GRU``/``RNN``.

    Inner layers are recomputed with single-layer calls on the module's own weights
    (``weight_ih_l{k}``...), without dropout between layers; the module itself is untouched.
    ``output`` (the module's own result), when given, is used for its last layer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True)
        >>> x = torch.randn(2, 5, 3)
        >>> ins, outs = rnn_layer_outputs(lstm, x, None, 1)
        >>> torch.allclose(outs[1], lstm(x)[0], atol=1e-6)
        True
    """
    from torch.func import functional_call

    ins, outs = [], []
    current = x
    last = module.num_layers - 1
    for k in range(upto + 1):
        ins.append(current)
        if k == last and output is not None:
            out = output[0] if isinstance(output, tuple) else output
        else:
            template, weights = _single_layer(module, k)
            args = (current,) if hx is None else (current, _hx_slice(module, hx, k))
            out = functional_call(template, weights, args)[0]
        outs.append(out)
        current = out
    return ins, outs


__all__ = ["GRANULARITIES", "Layer", "Layers", "Capture", "StopForward", "NotCaptured",
           "count_layers", "primary_tensor", "replace_primary", "rnn_layer_outputs"]
