"""The anatomy of a model: per-layer shapes, parameters and FLOPs on an example input.

One forward pass on an example input under :class:`torch.utils.flop_counter.FlopCounterMode`,
with :class:`layerscope.layers.Capture` reading every layer's input and output shape. FLOPs are
counted at the level of aten operations and attributed to the innermost listed layer whose
module hierarchy they ran in, so functional calls (``x @ w``, attention matmuls, residual
blocks written as functions) count too. Parameters shared between layers (tied embeddings)
count once, for the first layer holding them. Whatever no listed layer accounts for (a top-level
``F.linear``, a root-level ``nn.Parameter``) is reported as ``rest``, so the rows plus ``rest``
equal the totals exactly.

At the ``blocks`` granularity the parts around the blocks (embeddings, stem, final norm, head)
are listed too, without an index, so that the table covers the whole model.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from layerscope.anatomy import anatomy
    >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> a = anatomy(mlp, example=torch.zeros(3, 4))
    >>> a.params, a.flops, a.total_params
    ([40, 18], [192, 96], 58)
    >>> a.output_shapes
    [[3, 8], [3, 2]]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from layerscope.errors import LayerscopeError
from layerscope.layers import GRANULARITIES, Capture, Layer, Layers
from layerscope.results import Result

_aten = torch.ops.aten


def _rnn_layer_flops(*args, out_shape=None, **kwargs) -> int:
    """FLOPs of one fused CPU RNN layer call: the input and hidden matmuls at every step."""
    input_shape, w_ih, w_hh = args[0], args[1], args[2]
    steps = 1
    for d in input_shape[:-1]:
        steps *= d
    return 2 * steps * (w_ih[0] * w_ih[1] + w_hh[0] * w_hh[1])


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU attention kernel: the two batched matmuls (scores, weighted values)."""
    return sdpa_flop_count(query, key, value)


#: CPU kernels flop_counter has no formula for: a fused LSTM layer, and the CPU attention
#: kernel (counted with flop_counter's own formula for the other attention kernels)
CUSTOM_FLOPS = {_aten.mkldnn_rnn_layer: _rnn_layer_flops,
                _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@dataclass
class AnatomyResult(Result):
    """Per-layer anatomy; lists are aligned with ``layers`` (module paths, in forward order).

    ``index`` is the layer's index in :class:`~layerscope.layers.Layers` (None for the parts
    around the blocks at the ``blocks`` granularity); ``rest_params`` / ``rest_flops`` are what
    no row accounts for, so ``sum(params) + rest_params == total_params`` (same for FLOPs).

    Example:
        >>> from torch import nn
        >>> from layerscope.anatomy import anatomy
        >>> a = anatomy(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)), input_shape=(2,))
        >>> a.total_params, len(a.layers)
        (17, 2)
    """

    model: str
    granularity: str
    rule: str
    example: str
    layers: list[str]
    index: list[int | None]
    roles: list[str]
    kinds: list[str]
    input_shapes: list[list[int] | None]
    output_shapes: list[list[int] | None]
    params: list[int]
    flops: list[int]
    tied: list[str | None]
    total_params: int
    total_flops: int
    rest_params: int
    rest_flops: int
    depth: int
    width: int | None
    width_rule: str
    counts: dict[str, int] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    stacks: list[dict] = field(default_factory=list)
    stack: str | None = None

    def rows(self) -> list[dict]:
        """One dict per row (the shape the CLI's JSON uses)."""
        return [{"index": self.index[i], "name": self.layers[i], "role": self.roles[i],
                 "kind": self.kinds[i], "input_shape": self.input_shapes[i],
                 "output_shape": self.output_shapes[i], "params": self.params[i],
                 "flops": self.flops[i], "tied_to": self.tied[i]}
                for i in range(len(self.layers))]

    def cli_dict(self) -> dict:
        """The JSON of ``layerscope summary --json``."""
        return {"model": self.model, "granularity": self.granularity, "example": self.example,
                "total_params": self.total_params, "total_flops": self.total_flops,
                "rest": {"params": self.rest_params, "flops": self.rest_flops},
                "depth": self.depth, "width": self.width, "width_rule": self.width_rule,
                "counts": dict(self.counts), "rules": dict(self.rules), "rule": self.rule,
                "stacks": [dict(s) for s in self.stacks], "stack": self.stack,
                "layers": self.rows()}

    def summary(self) -> str:
        biggest = max(range(len(self.params)), key=self.params.__getitem__) if self.params else None
        share = (f"; the largest is {self.layers[biggest]} with "
                 f"{self.params[biggest] / self.total_params:.0%} of the parameters"
                 if biggest is not None and self.total_params else "")
        width = f", width {self.width}" if self.width is not None else ""
        return (f"{self.model}: {self.counts.get('blocks', self.depth)} blocks{width}, "
                f"{self.total_params:,} parameters, {self.total_flops:,} FLOPs on "
                f"{self.example}{share}")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * len(self.layers) + 1.5), sharey=True)
        else:
            fig, axes = ax.figure, [ax, ax.twiny()]
        y = list(range(len(self.layers)))
        axes[0].barh(y, self.params, color="tab:blue")
        axes[0].set_xlabel("parameters")
        axes[0].set_yticks(y, self.layers)
        axes[0].invert_yaxis()
        axes[1].barh(y, self.flops, color="tab:orange", alpha=0.8 if ax is not None else 1.0)
        axes[1].set_xlabel(f"FLOPs on {self.example}")
        fig.suptitle(self.summary()[:100])
        fig.tight_layout()
        return fig


# --- the rows -----------------------------------------------------------------------------------


@dataclass
class _Row:
    layer: Layer              # what Capture hooks
    index: int | None
    path: str                 # module path of layer.module ("" for the root)


def _rows(lay: Layers, paths: dict[int, str]) -> list[_Row]:
    rows = []

    def outside(parts, role_where):
        from layerscope.layouts import role_of

        for path, mod in parts:
            layer = Layer(-1, path, mod, role_of(path, mod, role_where), type(mod).__name__)
            rows.append(_Row(layer, None, path))

    if lay.granularity == "blocks":
        outside(lay.found.before, "before")
    for layer in lay:
        rows.append(_Row(layer, layer.index, paths.get(id(layer.module), "")))
    if lay.granularity == "blocks":
        outside(lay.found.after, "after")
    return rows


def _own_params(row: _Row, granularity: str) -> list[tuple[str, nn.Parameter]]:
    mod, part = row.layer.module, row.layer.part
    if part is not None:
        pattern = re.compile(rf"_l{part}(_reverse)?$")
        return [(n, p) for n, p in mod.named_parameters() if pattern.search(n)]
    return list(mod.named_parameters(recurse=granularity != "modules"))


def _params(rows: list[_Row], granularity: str) -> tuple[list[int], list[str | None]]:
    owner: dict[int, str] = {}
    counts, tied = [], []
    for row in rows:
        n, tied_to = 0, None
        for _, p in _own_params(row, granularity):
            if id(p) in owner:
                tied_to = tied_to or owner[id(p)]
                continue
            owner[id(p)] = row.layer.name
            n += p.numel()
        counts.append(n)
        tied.append(tied_to)
    return counts, tied


def unique_params(model: nn.Module) -> int:
    """The number of parameters of ``model``, each shared tensor counted once.

    Example:
        >>> from torch import nn
        >>> lin = nn.Linear(3, 3)
        >>> unique_params(nn.Sequential(lin, lin))
        12
    """
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- FLOPs ------------------------------------------------------------------------------------


def _called(counts: dict, root: str) -> dict[str, int]:
    """FLOPs by module path for the modules whose forward ran (the counter's keys are
    ``Root.path``, each including everything that ran while that module was executing)."""
    out = {}
    for key, ops in counts.items():
        if key == root:
            out[""] = int(sum(ops.values()))
        elif key.startswith(root + "."):
            out[key[len(root) + 1:]] = int(sum(ops.values()))
    return out


def _subtree_flops(called: dict[str, int], path: str) -> int:
    """FLOPs under ``path``: its own count when its forward ran, else the sum over the outermost
    called modules inside it (a container whose children are called by someone else)."""
    if path in called:
        return called[path]
    inside = [k for k in called if k and (path == "" or k.startswith(path + "."))]
    outer = [k for k in inside
             if not any(k.startswith(o + ".") for o in inside if o != k)]
    return sum(called[k] for k in outer)


def _trailing(model: nn.Module, row: _Row, paths: dict[int, str]) -> list[str]:
    """Paths of the parameter-free siblings an nn.Sequential block spans after its module."""
    if row.layer.output_module is None:
        return []
    end = paths.get(id(row.layer.output_module), "")
    parent = row.path.rpartition(".")[0]
    names = [f"{parent}.{n}" if parent else n for n in model.get_submodule(parent)._modules]
    if row.path not in names or end not in names:
        return [end]
    return names[names.index(row.path) + 1:names.index(end) + 1]


def _flops(model: nn.Module, rows: list[_Row], counts: dict, paths: dict[int, str],
           cap: Capture) -> list[int]:
    """FLOPs of each row: its subtree (plus an nn.Sequential block's trailing activation) minus
    the rows nested inside it; a split RNN layer is recounted on its own captured input."""
    called = _called(counts, type(model).__name__)
    subtree = []
    for row in rows:
        layer = row.layer
        if layer.part is not None:
            subtree.append(_rnn_part_flops(layer, cap))
            continue
        total = _subtree_flops(called, row.path)
        for path in _trailing(model, row, paths):
            total += _subtree_flops(called, path)
        subtree.append(total)
    by_path = {row.path: i for i, row in enumerate(rows) if row.layer.part is None}
    own = list(subtree)
    for i, row in enumerate(rows):
        if row.layer.part is not None or row.path == "":
            continue
        parent = row.path
        while parent:
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            if parent in by_path:
                own[by_path[parent]] -= subtree[i]
                break
    return own


def _rnn_part_flops(layer: Layer, cap: Capture) -> int:
    from torch.func import functional_call

    from layerscope.layers import _single_layer

    x = cap.inputs.get(layer.name)
    if x is None:
        return 0
    template, weights = _single_layer(layer.module, layer.part)
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        functional_call(template, weights, (x,))
    return int(counter.get_total_flops())


# --- width ------------------------------------------------------------------------------------

WIDTH_RULE = "the widest block output (channels for images, the last dimension otherwise)"


def _width(shapes: list[list[int] | None]) -> int | None:
    widths = [s[1] if len(s) >= 4 else s[-1] for s in shapes if s]
    return max(widths) if widths else None


# --- the pass ---------------------------------------------------------------------------------


def _call_args(loaded, example, batch_size: int):
    from layerscope.models import Encoded

    if example is None:
        example = loaded.example(batch_size)
    if isinstance(example, Encoded):
        return example.args, example.kwargs
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    if isinstance(example, Tensor):
        return (example,), {}
    raise LayerscopeError(
        f"example must be a tensor, a tuple of tensors, a dict of keyword tensors or an Encoded; "
        f"got {type(example).__name__}")


def _describe(args, kwargs) -> str:
    def shape(t):
        return "(" + ", ".join(str(d) for d in t.shape) + ")"

    parts = [shape(a) for a in args if isinstance(a, Tensor)]
    parts += [f"{k} {shape(v)}" for k, v in kwargs.items() if isinstance(v, Tensor)]
    return "input " + ", ".join(parts) if parts else "the example input"


def _shape(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(d) for d in t.shape]


def stack_rows(lay: Layers) -> list[dict]:
    """Every stack of ``lay``'s model: name, container paths, blocks, block class, width (the
    size of the first block's last norm/bias), parameters (shared ones once), kind (main/stem),
    modality and whether it is counted (the chosen stack).

    Example:
        >>> from transformers import T5Config, T5Model
        >>> t5 = T5Model(T5Config(d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=2,
        ...                       num_decoder_layers=3, vocab_size=50))
        >>> [(s["name"], s["blocks"], s["width"], s["counted"]) for s in stack_rows(Layers(t5))]
        [('encoder', 2, 16, True), ('decoder', 3, 16, True)]
    """
    chosen = set((lay.stack or "").split("+"))
    out = []
    for s in lay.stacks:
        params = unique_params(nn.ModuleList([b.module for b in s.blocks]))
        out.append({"name": s.name, "paths": list(s.paths), "blocks": len(s.blocks),
                    "block_class": s.cls, "width": s.width, "params": params, "kind": s.kind,
                    "modality": s.modality, "counted": s.name in chosen})
    return out


def anatomy(model, *, granularity: str = "blocks", blocks: str | None = None, example=None,
            input_shape=None, batch_size: int = 1, stack: str | None = None) -> AnatomyResult:
    """Shapes, parameters and FLOPs of every layer of ``model`` at ``granularity``.

    ``model`` is a reference string, an ``nn.Module`` or a ``LoadedModel``; ``example`` a tensor,
    a tuple of tensors, a dict of keyword tensors or an ``Encoded`` (default: the model's own
    example input, which may need ``input_shape`` for a plain module). The model is not moved or
    switched between train/eval; buffers a training-mode forward updates (BatchNorm statistics)
    are put back.
    """
    from layerscope.models import load_model

    loaded = load_model(model, input_shape=input_shape)
    module = loaded.module
    lay = Layers(loaded, granularity, blocks=blocks, stack=stack)
    layers_by = {g: (lay if g == granularity else Layers(loaded, g, blocks=blocks, stack=stack))
                 for g in GRANULARITIES}
    paths = {}
    for path, mod in module.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), path)
    rows = _rows(lay, paths)
    args, kwargs = _call_args(loaded, example, batch_size)
    root = type(module).__name__

    saved = [(b, b.detach().clone()) for b in module.buffers()] if module.training else []
    capture = Capture(module, [r.layer for r in rows], inputs=True)
    try:
        with torch.no_grad():
            # counted without hooks: the capture recomputes the inner layers of split RNNs
            with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
                module(*args, **kwargs)
            with capture as cap:
                cap.call(module, *args, **kwargs)
            flops = _flops(module, rows, counter.get_flop_counts(), paths, cap)
            block_outputs = cap.outputs
            if granularity != "blocks":
                with layers_by["blocks"].capture(stop_early=True) as blocks_cap:
                    blocks_cap.call(module, *args, **kwargs)
                block_outputs = blocks_cap.outputs
    except LayerscopeError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayerscopeError(
            f"{root} failed on {_describe(args, kwargs)}: {first[:200]}; pass an input of the "
            f"shape the model takes (--input-shape / example=)") from exc
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)

    params, tied = _params(rows, granularity)
    total_params, total_flops = unique_params(module), int(counter.get_total_flops())
    block_shapes = [_shape(block_outputs.get(layer.name)) for layer in layers_by["blocks"]]
    return AnatomyResult(
        model=loaded.ref, granularity=granularity, rule=lay.rule, example=_describe(args, kwargs),
        layers=[r.layer.name for r in rows], index=[r.index for r in rows],
        roles=[r.layer.role for r in rows], kinds=[r.layer.kind for r in rows],
        input_shapes=[_shape(cap.inputs.get(r.layer.name)) for r in rows],
        output_shapes=[_shape(cap.outputs.get(r.layer.name)) for r in rows],
        params=params, flops=flops, tied=tied,
        total_params=total_params, total_flops=total_flops,
        rest_params=total_params - sum(params), rest_flops=total_flops - sum(flops),
        depth=len(layers_by["blocks"]),
        width=_width(block_shapes),
        width_rule=WIDTH_RULE,
        counts={g: len(v) for g, v in layers_by.items()},
        rules={g: v.rule for g, v in layers_by.items()},
        stacks=stack_rows(lay), stack=lay.stack)


__all__ = ["AnatomyResult", "anatomy", "stack_rows", "unique_params", "CUSTOM_FLOPS", "WIDTH_RULE"]
