"""Which blocks matter: the effect of removing blocks, Block Influence and angular distance.

Removing block ``i`` means skipping it: its output is its input hidden state (an identity on the
residual stream). The effect is measured on the model's own objective:

- causal LMs: next-token loss and perplexity over real tokens (padding masked);
- encoders: ``1 - cos`` between the original and the new mean-pooled, L2-normalised sentence
  embedding (and, per real token, between the final hidden states);
- classifiers: accuracy and loss with labels, else KL(original ‖ new) of the class distribution;
- anything else: ``1 - cos`` between the original and the new flattened outputs.

**Prefix reuse.** One forward pass per batch records every block's input and the arguments it
was called with (attention mask, position embeddings, ...). Removing block ``i`` then re-runs
only blocks ``i+1 … L-1`` from block ``i``'s input, followed by the model's tail (final norm and
LM head for causal LMs; nothing for BERT-like encoders). A sweep over L blocks costs
L(L-1)/2 block calls plus one forward, about (L+1)/2 forwards instead of L. The tail is checked
against the model's own output on the first batch; where it cannot be reproduced (classifiers,
unknown heads) removal falls back to full forwards with an identity hook (``method="naive"``).

**Block Influence** (ShortGPT, Men et al. 2024): ``BI_i = 1 - E_tokens[cos(h_in, h_out)]`` over
real tokens. **Angular distance** (Gromov et al. 2024): ``d(l, l+n) = arccos(cos(h_l, h_{l+n}))/pi``
at the last real token, averaged over items, where ``h_l`` is block ``l``'s input and ``h_L`` the
last block's output; dropping the ``n`` blocks starting at ``argmin_l d(l, l+n)`` is its
recommendation. Both are :class:`~layerscope.reducers.Reducer` subclasses, so they also run inside
:func:`layerscope.sweep.sweep` and merge exactly.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.analyses.importance import layer_importance
    >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
    ...                   num_attention_heads=2, num_key_value_heads=2)
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(cfg).eval()
    >>> res = layer_importance(lm, torch.randint(0, 50, (4, 6)), batch_size=2)
    >>> res.objective, res.method, len(res.metric), len(res.block_influence)
    ('perplexity', 'prefix', 3, 3)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.objectives import make_objective
from layerscope.replay import (
    Recorded,
    Stack,
    build_stack,
    edited_forward,
    main_output,
    naive_forward,
    prepare,
    record_forward,
    replay,
    tail_matches,
)
from layerscope.reducers import BatchInfo, Reducer
from layerscope.results import Result
from layerscope.sweep import RAW
from layerscope.sweep import encoded_batches as iter_batches
from layerscope.views import pool

CRITERIA = ("block-influence", "angular", "single", "last")



# --- Block Influence and angular distance as reducers -----------------------------------------------


class BlockInfluence(Reducer):
    """ShortGPT's Block Influence: ``1 - mean cos(input, output)`` over real tokens, per block.
    Blocks whose output shape differs from their input's have none (left out of the result).

    Example:
        >>> import torch
        >>> from layerscope.reducers import BatchInfo
        >>> bi = BlockInfluence()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> bi.update({"b0": x}, BatchInfo(0, 2, inputs={"b0": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}))
        >>> bi.result()
        {'b0': 0.5}
    """

    view = "tokens"
    wants_inputs = True

    def __init__(self, layers: list[str] | None = None):
        self.layers = layers
        self.cos_sum: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        if not batch.inputs:
            raise LayerscopeError("BlockInfluence needs each block's input (wants_inputs=True)")
        for name, out in acts.items():
            inp = batch.inputs[name]
            if inp.shape != out.shape:
                continue
            cos = F.cosine_similarity(inp.double(), out.double(), dim=-1)
            self.cos_sum[name] = self.cos_sum.get(name, 0.0) + float(cos.sum())
            self.count[name] = self.count.get(name, 0) + cos.numel()

    def merge(self, other: "BlockInfluence") -> "BlockInfluence":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        for name, s in other.cos_sum.items():
            out.cos_sum[name] = out.cos_sum.get(name, 0.0) + s
            out.count[name] = out.count.get(name, 0) + other.count[name]
        return out

    def result(self) -> dict[str, float]:
        return {name: 1.0 - self.cos_sum[name] / self.count[name] for name in self.cos_sum}


class AngularDistance(Reducer):
    """Gromov et al.'s angular distance ``arccos(cos(h_l, h_{l+n}))/pi`` at the last real token.

    ``h_l`` is block ``l``'s input and ``h_L`` the last block's output; the blocks must be
    consecutive. ``result()`` is the (L+1, L+1) matrix of mean distances (upper triangle); NaN
    between states of different shapes.

    Example:
        >>> import torch
        >>> from layerscope.reducers import BatchInfo
        >>> ad = AngularDistance()
        >>> e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> ad.update({"b0": e2}, BatchInfo(0, 1, inputs={"b0": e1}))
        >>> ad.result()[0][1]
        0.5
    """

    view = "last"
    wants_inputs = True

    def __init__(self, layers: list[str] | None = None, view: str = "last"):
        self.layers = layers
        self.view = view
        self.names: list[str] | None = None
        self.sums: np.ndarray | None = None
        self.n = 0

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        names = list(acts)
        if self.names is None:
            self.names = names
            self.sums = np.zeros((len(names) + 1, len(names) + 1))
        elif names != self.names:
            raise LayerscopeError("AngularDistance got different blocks in different batches")
        states = [batch.inputs[n].double() for n in names] + [acts[names[-1]].double()]
        states = [h.reshape(h.shape[0], -1) for h in states]
        if len({h.shape for h in states}) == 1:
            x = F.normalize(torch.stack(states, 0), dim=-1)        # (L+1, B, D)
            cos = torch.einsum("lbd,mbd->lmb", x, x).clamp(-1.0, 1.0)
            self.sums += (torch.arccos(cos) / math.pi).sum(-1).cpu().numpy()
        else:   # blocks that change the width: no angle between states of different shapes
            x = [F.normalize(h, dim=-1) for h in states]
            for a in range(len(x)):
                for b in range(a, len(x)):
                    if x[a].shape != x[b].shape:
                        self.sums[a, b] = self.sums[b, a] = np.nan
                        continue
                    cos = (x[a] * x[b]).sum(-1).clamp(-1.0, 1.0)
                    angle = float((torch.arccos(cos) / math.pi).sum())
                    self.sums[a, b] += angle
                    if a != b:
                        self.sums[b, a] += angle
        self.n += states[0].shape[0]

    def merge(self, other: "AngularDistance") -> "AngularDistance":
        self._check_mergeable(other)
        if other.names is None:
            return copy.deepcopy(self)
        if self.names is None:
            return copy.deepcopy(other)
        if self.names != other.names:
            raise LayerscopeError("cannot merge AngularDistance over different blocks")
        out = copy.deepcopy(self)
        out.sums = self.sums + other.sums
        out.n = self.n + other.n
        return out

    def result(self) -> list[list[float]]:
        if self.names is None or self.n == 0:
            raise LayerscopeError("AngularDistance saw no data; pass at least one item")
        return (self.sums / self.n).tolist()


def best_drops(distance: Sequence[Sequence[float]], removable: Sequence[bool] | None = None
               ) -> tuple[list[list[float | None]], list[int | None], list[float | None]]:
    """From the (L+1)² distance matrix: rows ``d(l, l+n)`` for n=1..L, the best start and its value.
    A window is eligible only if every block in it is ``removable`` (None where none is)."""
    d = np.asarray(distance, dtype=float)
    n_blocks = d.shape[0] - 1
    ok = np.ones(n_blocks, bool) if removable is None else np.asarray(removable, bool)
    rows, starts, values = [], [], []
    for n in range(1, n_blocks + 1):
        row = [float(d[l, l + n]) if ok[l:l + n].all() and np.isfinite(d[l, l + n]) else None
               for l in range(n_blocks - n + 1)]
        finite = [(v, l) for l, v in enumerate(row) if v is not None]
        best = min(finite)[1] if finite else None
        rows.append(row + [None] * (n_blocks - len(row)))
        starts.append(best)
        values.append(row[best] if best is not None else None)
    return rows, starts, values


# --- the pass ------------------------------------------------------------------------------------


def natural_view(rec: Recorded) -> str:
    """The view removal's per-item statistics read: the last real token of token sequences, the
    global average of feature maps (CNNs, ResNets), the vector itself otherwise."""
    return "mean" if any(out.dim() >= 4 for out in rec.outs) else "last"


def _feed_reducers(reducers, stack: Stack, rec: Recorded, enc, labels, first: int) -> None:
    names = stack.names
    for r in reducers:
        acts = {n: pool(rec.outs[i], enc.mask, r.view) for i, n in enumerate(names)}
        ins = {n: pool(rec.block_input(i), enc.mask, r.view) for i, n in enumerate(names)}
        r.update(acts, BatchInfo(first, enc.size, labels, None, ins, enc.mask))


class RemovalSums(Reducer):
    """An :class:`~layerscope.objectives.Objective`'s per-removal sums and the block calls spent,
    as a reducer: removal passes on several ranks combine like the sweep's reducers
    (:func:`layerscope.distributed.combine`, rank order), and merging adds the sums.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from layerscope.objectives import make_objective
        >>> a, b = (RemovalSums(make_objective("other", None)) for _ in range(2))
        >>> enc = SimpleNamespace(mask=None, kwargs={}, args=())
        >>> a.objective.begin(enc, torch.ones(1, 2), None)
        >>> b.objective.begin(enc, torch.ones(1, 2), None)
        >>> b.objective.add((0,), torch.tensor([[1.0, -1.0]]))
        >>> a.objective.add((0,), torch.ones(1, 2))
        >>> round(a.merge(b).objective.value((0,))["metric"], 6)   # (0 + 1) / 2 items
        0.5
    """

    view = RAW

    def __init__(self, objective):
        self.objective, self.calls = objective, 0

    def update(self, acts, batch) -> None:
        raise LayerscopeError("RemovalSums is filled by run_removals, not by a sweep")

    def merge(self, other: "RemovalSums") -> "RemovalSums":
        self._check_mergeable(other)
        sums = copy.deepcopy(self.objective.sums)
        for key, slot in other.objective.sums.items():
            mine = sums.setdefault(key, {})
            for k, v in slot.items():
                mine[k] = mine.get(k, 0.0) + v
        return copy.copy(self).load_state_dict(
            {"type": type(self).__qualname__, "state": {"sums": sums, "calls": self.calls + other.calls}})

    def state_dict(self) -> dict:
        return {"type": type(self).__qualname__,
                "state": {"sums": copy.deepcopy(self.objective.sums), "calls": self.calls}}

    def load_state_dict(self, state: dict) -> "RemovalSums":
        if not isinstance(state, dict) or state.get("type") != type(self).__qualname__:
            raise LayerscopeError("not a RemovalSums state; pass what RemovalSums.state_dict() returned")
        self.objective = copy.copy(self.objective)   # never the sums of the reducer copied from
        self.objective.sums = copy.deepcopy(state["state"]["sums"])
        self.calls = state["state"]["calls"]
        return self

    def result(self) -> dict:
        return {key: self.objective.value(key) for key in self.objective.sums}


def _bar(data, limit, desc: str, progress: bool, part: range | None = None, unit: str = "item"):
    """A bar over the items, counting every rank's on rank 0 under a process group."""
    from layerscope import distributed
    from layerscope.sweep import count_items

    n = count_items(data, limit)
    return distributed.global_bar(n, len(part) if part is not None else n, desc=desc, unit=unit,
                                  progress=progress)


def _removal_bar(data, limit, first_size: int, n_sets: int, progress: bool,
                 part: range | None = None):
    """A bar counting removals evaluated (batches × sets), so it moves on every re-run; under a
    process group rank 0 counts every rank's."""
    from layerscope import distributed
    from layerscope.sweep import count_items

    n = count_items(data, limit)
    size = max(first_size, 1)
    total = -(-n // size) * n_sets if n is not None else None
    mine = -(-len(part) // size) * n_sets if part is not None else total
    return distributed.global_bar(total, mine, desc=f"removal ({n_sets} per batch)",
                                  unit="removal", progress=progress)


class _MeanSums(Reducer):
    """Per block, its outputs summed over items (None once the per-item shape varied)."""

    view = RAW

    def __init__(self, blocks: Sequence[int]):
        self.sums: dict[int, Tensor | None] = {i: None for i in blocks}
        self.varies: set[int] = set()
        self.n = 0

    def add(self, rec: Recorded, size: int) -> None:
        for i in self.sums:
            self._fold(i, rec.outs[i].double().sum(0))
        self.n += size

    def _fold(self, i: int, total: Tensor | None) -> None:
        if total is None or i in self.varies:
            return
        if self.sums[i] is None:
            self.sums[i] = total
        elif self.sums[i].shape != total.shape:
            self.varies.add(i)
        else:
            self.sums[i] = self.sums[i] + total

    def update(self, acts, batch) -> None:
        raise LayerscopeError("mean outputs are filled by mean_outputs, not by a sweep")

    def merge(self, other: "_MeanSums") -> "_MeanSums":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        out.varies |= other.varies
        for i, total in other.sums.items():
            out._fold(i, total)
        out.n += other.n
        return out

    def means(self) -> dict[int, Tensor]:
        return {i: (t / self.n).float() for i, t in self.sums.items()
                if t is not None and i not in self.varies}


def _combined(part: range | None, reducers: Sequence[Reducer], n_items: int, n_batches: int,
              failed: BaseException | None, module) -> int:
    """Outside a process group: ``n_items``. Under one: the ranks' ``reducers`` merged in rank
    order on every rank (the sweep's :func:`~layerscope.distributed.combine`, which raises the
    first failing rank's error everywhere) and the global item count."""
    if part is None:
        if failed is not None:
            raise failed
        return n_items
    from layerscope import distributed

    return distributed.combine(reducers, n_items, n_batches, failed, module)[0]


def mean_outputs(stack: Stack, data, blocks: Sequence[int], *, batch_size: int = 16,
                 max_length: int | None = 128, limit: int | None = None,
                 progress: bool = False) -> dict[int, Tensor]:
    """Per block in ``blocks``: its output averaged over the items (one item's shape), the
    stand-in of mean ablation. Blocks whose per-item output shape varies between batches (token
    sequences of different lengths) are left out. Under a process group each rank sums its
    shard and the sums are combined."""
    from layerscope import distributed

    data, part = distributed.shard_of(data, batch_size=batch_size, limit=limit, progress=False)
    sums = _MeanSums(blocks)
    bar = _bar(data, limit, "mean outputs", progress, part)
    failed, n_batches = None, 0
    with evaluating(stack.loaded), torch.inference_mode():
        try:
            for enc, _ in iter_batches(stack.loaded, data, batch_size=batch_size,
                                       max_length=max_length, limit=limit, part=part):
                sums.add(record_forward(stack, prepare(stack, enc)), enc.size)
                n_batches += 1
                bar.update(enc.size)
        except Exception as exc:
            failed = exc
        finally:
            bar.close()
    _combined(part, [sums], sums.n, n_batches, failed, stack.module)
    return sums.means()


def run_removals(stack: Stack, data, sets: Sequence[tuple[int, ...]] | None, *, batch_size: int = 16,
                 max_length: int | None = 128, limit: int | None = None, method: str = "auto",
                 reducers: Sequence[Reducer] = (), progress: bool = False,
                 ablate=None) -> dict:
    """Evaluate the objective with each set of blocks removed, in one pass over the data.

    ``sets=None`` removes each removable block (one that keeps its input's shape) on its own, and
    each block in ``ablate`` (block -> its mean output) by mean ablation; ``ablate`` may be a
    function of the shape-changing blocks' indices giving that mapping, called only when the
    first batch shows some (so residual models pay no extra pass). Returns
    ``{"objective", "values": {set: {...}}, "baseline": {...}, "method", "n_items", "seconds",
    "block_calls", "removable"}``; ``reducers`` are fed each batch's block inputs and outputs.

    Under a process group (torchrun) each rank runs every removal on its own shard of the items
    (the sweep's rule, :func:`layerscope.distributed.shard_of`); what the first batch decides
    (removable blocks, prefix reuse, the objective, mean ablation) every rank decides on the
    data's first batch, as one process does; the objective's sums and ``reducers`` are then
    merged in rank order like the sweep's, so every rank returns the one-process values.
    """
    from layerscope import distributed

    if method not in ("auto", "prefix", "naive"):
        raise LayerscopeError(f"unknown method {method!r}; use auto, prefix or naive")
    means_of = ablate if callable(ablate) else None
    ablate = {} if means_of is not None else dict(ablate or {})
    L = len(stack.blocks)
    for s in sets or ():
        if not s or any(not 0 <= i < L for i in s):
            raise LayerscopeError(f"blocks to remove must be between 0 and {L - 1}; got {list(s)}")
    data, part = distributed.shard_of(data, batch_size=batch_size, limit=limit, progress=progress)
    decided: dict = {}

    def decide(rec: Recorded, enc, labels) -> None:
        """What the first batch of the data decides, for the whole pass."""
        nonlocal ablate, sets
        keep = rec.removable()
        fixed = [i for i, ok in enumerate(keep) if not ok]
        if means_of is not None and fixed and sets is None:
            ablate = dict(means_of(fixed))
        sets = _removable_sets(stack, rec, keep, sets, ablate)
        ok = tail_matches(stack, rec)
        if method == "prefix" and not ok:
            raise LayerscopeError(
                f"cannot reproduce {type(stack.module).__name__}'s output from its last block "
                f"(no known final norm/head); use method='naive'")
        for r in reducers:
            if r.view == "auto":
                r.view = natural_view(rec)
        decided.update(keep=keep, ablated=set(ablate),
                       prefix=ok and method != "naive" and not stack.grouped  # parallel lists: naive
                       and rec.chained(),  # something runs between blocks (a stage's downsampling)
                       sums=RemovalSums(make_objective(stack.task, labels)),
                       bar=_removal_bar(data, limit, enc.size, len(sets), progress, part))

    n_items = n_batches = 0
    failed: BaseException | None = None
    t0 = time.perf_counter()
    with evaluating(stack.loaded), torch.inference_mode():
        if part is not None:   # every rank (an idle one too) decides on the data's first batch
            head = next(iter_batches(stack.loaded, data, batch_size=batch_size,
                                     max_length=max_length, limit=limit), None)
            if head is None:
                raise LayerscopeError("the data is empty; pass at least one item")
            enc = prepare(stack, head[0])
            decide(record_forward(stack, enc), enc, head[1])
            del head, enc
        try:
            for enc, labels in iter_batches(stack.loaded, data, batch_size=batch_size,
                                            max_length=max_length, limit=limit, part=part):
                enc = prepare(stack, enc)
                rec = record_forward(stack, enc)
                if not decided:
                    decide(rec, enc, labels)
                sums, objective, ablated = decided["sums"], decided["sums"].objective, decided["ablated"]
                objective.begin(enc, main_output(rec.output, stack.task), labels)
                for s in sets:
                    skip = set(s)
                    if skip & ablated:
                        out = edited_forward(stack, enc, skip=skip - ablated,
                                             ablate={i: ablate[i] for i in skip & ablated})
                        objective.add(tuple(s), main_output(out, stack.task))
                        sums.calls += L
                    elif decided["prefix"]:
                        objective.add_final(tuple(s), replay(stack, rec, skip), stack)
                        sums.calls += L - min(skip) - len(skip)
                    else:
                        objective.add(tuple(s), main_output(naive_forward(stack, enc, skip), stack.task))
                        sums.calls += L
                    decided["bar"].update(1)
                _feed_reducers(reducers, stack, rec, enc, labels,
                               (part.start if part is not None else 0) + n_items)
                sums.calls += L
                n_items += enc.size
                n_batches += 1
        except Exception as exc:
            if part is None:
                raise
            failed = exc   # sent to the other ranks, which then stop with it instead of waiting
        finally:
            if decided:
                decided["bar"].close()
    if not decided:
        raise LayerscopeError("the data is empty; pass at least one item")
    sums = decided["sums"]
    n_items = _combined(part, [sums, *reducers], n_items, n_batches, failed, stack.module)
    objective = sums.objective
    return {"objective": objective.name, "values": {tuple(s): objective.value(tuple(s)) for s in sets},
            "baseline": objective.value(()), "method": "prefix" if decided["prefix"] else "naive",
            "n_items": n_items, "seconds": time.perf_counter() - t0, "block_calls": sums.calls,
            "removable": decided["keep"]}


def _removable_sets(stack: Stack, rec: Recorded, keep: list[bool], sets,
                    ablate: dict | None = None) -> list[tuple[int, ...]]:
    """``sets`` checked against the blocks that keep their shape or are mean-ablated (None: each
    such block alone)."""
    ablate = ablate or {}
    if not any(keep) and not ablate:
        raise LayerscopeError(
            f"no block of {type(stack.module).__name__} keeps its input's shape, so none can be "
            f"skipped; removal needs residual-style blocks (pass --blocks to choose others)")
    if sets is None:
        return [(i,) for i in range(len(keep)) if keep[i] or i in ablate]
    for s in sets:
        bad = [i for i in s if not keep[i] and i not in ablate]
        if bad:
            i = bad[0]
            raise LayerscopeError(
                f"block {stack.names[i]!r} maps {tuple(rec.block_input(i).shape)} to "
                f"{tuple(rec.outs[i].shape)}; only blocks that keep the shape can be removed")
    return list(sets)


# --- results -------------------------------------------------------------------------------------


def _higher_is_worse(objective: str) -> bool:
    return objective != "accuracy"


@dataclass
class ImportanceResult(Result):
    """Per block: the objective with that block removed, Block Influence, and angular distances.

    ``metric[i]`` is perplexity (causal LMs), embedding ``1 - cos`` (encoders), accuracy or KL
    (classifiers) with block ``i`` removed; ``baseline`` the intact model's value.
    ``angular[n-1][l]`` is ``d(l, l+n)`` (None where ``l + n > L``); ``best_start[n-1]`` the
    start of the best ``n``-block drop. Blocks that change the shape of what flows through them
    cannot be skipped: ``removable[i]`` is False, and their ``metric`` and ``block_influence``
    are NaN.
    """

    model: str
    layers: list[str]
    objective: str
    baseline: float
    metric: list[float]
    loss: list[float] | None
    token_divergence: list[float] | None
    block_influence: list[float]
    angular: list[list[float | None]]
    best_start: list[int | None]
    best_angular: list[float | None]
    method: str
    n_items: int
    seconds: float
    block_calls: int
    removable: list[bool] | None = None
    intervention: list[str | None] | None = None   # per block: "skip", "mean-ablate" or None
    view: str | None = None                         # the view Block Influence / angles read

    def measured(self) -> list[int]:
        """Indices of the blocks with a removal effect (skipped or mean-ablated)."""
        return [i for i in range(len(self.layers)) if math.isfinite(self.metric[i])]

    def can_remove(self) -> list[int]:
        """Indices of the blocks that keep their input's shape (all, for residual stacks)."""
        return [i for i in range(len(self.layers)) if self.removable is None or self.removable[i]]

    def effect(self) -> list[float]:
        """How much worse each removal is than the intact model (positive = worse; NaN where a
        block cannot be removed)."""
        sign = 1.0 if _higher_is_worse(self.objective) else -1.0
        return [sign * (m - self.baseline) for m in self.metric]

    def ranking(self) -> list[int]:
        """The removable blocks from least to most harmful to remove."""
        eff = self.effect()
        return sorted(self.can_remove(), key=lambda i: eff[i])

    def summary(self) -> str:
        eff = self.effect()
        order = sorted(self.measured(), key=lambda i: eff[i])
        worst, least = order[-1], order[0]
        with_bi = [i for i in self.can_remove() if math.isfinite(self.block_influence[i])]
        lo_bi = min(with_bi, key=lambda i: self.block_influence[i]) if with_bi else None
        bi_text = (f"; lowest Block Influence: block {lo_bi} ({self.block_influence[lo_bi]:.3g})"
                   if lo_bi is not None else "")
        n2 = f"; best 2-block drop by angular distance: blocks {self.best_start[1]}-{self.best_start[1] + 1}" \
            if len(self.best_start) > 1 and self.best_start[1] is not None else ""
        fixed = [name for name, ok in zip(self.layers, self.removable or []) if not ok]
        ablated = [n for n, how in zip(self.layers, self.intervention or []) if how == "mean-ablate"]
        if ablated:
            shape = (f"; {len(ablated)} block(s) change the shape and were mean-ablated instead of "
                     f"skipped ({', '.join(ablated)})")
        else:
            shape = (f"; {len(fixed)} block(s) change the shape and cannot be removed "
                     f"({', '.join(fixed)})" if fixed else "")
        return (f"{self.objective} intact {self.baseline:.4g}; removing block {worst} hurts most "
                f"({self.metric[worst]:.4g}), block {least} least ({self.metric[least]:.4g})"
                f"{bi_text}{n2}{shape}")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        x = np.arange(len(self.layers))
        axes[0].plot(x, self.metric, marker="o", label="block removed")
        axes[0].axhline(self.baseline, color="grey", ls="--", label="intact")
        axes[0].set(xlabel="block", ylabel=self.objective, title="removal effect")
        if self.objective == "perplexity":
            axes[0].set_yscale("log")
        axes[0].legend()
        axes[1].bar(x, self.block_influence)
        axes[1].set(xlabel="block", ylabel="1 - cos(in, out)", title="Block Influence")
        grid = np.array([[np.nan if v is None else v for v in row] for row in self.angular])
        im = axes[2].imshow(grid, aspect="auto", origin="lower",
                            extent=(-0.5, len(x) - 0.5, 0.5, len(x) + 0.5))
        starts = [np.nan if v is None else v for v in self.best_start]
        axes[2].plot(starts, np.arange(1, len(x) + 1), "w.", label="best start")
        axes[2].set(xlabel="start block l", ylabel="n blocks dropped", title="angular distance d(l, l+n)")
        fig.colorbar(im, ax=axes[2])
        fig.tight_layout()
        return fig


@dataclass
class RemovalCurveResult(Result):
    """The objective after removing k = 1..K blocks chosen by each criterion."""

    model: str
    layers: list[str]
    objective: str
    baseline: float
    ks: list[int]
    curves: dict[str, list[float]]
    removed: dict[str, list[list[int]]]
    sum_of_singles: list[float] | None
    n_items: int
    seconds: float

    def summary(self) -> str:
        k = self.ks[-1]
        finals = {c: v[-1] for c, v in self.curves.items()}
        pick = min if _higher_is_worse(self.objective) else max
        best = pick(finals, key=finals.get)
        text = ", ".join(f"{c} {v:.4g}" for c, v in finals.items())
        return (f"{self.objective} with {k} blocks removed (intact {self.baseline:.4g}): {text}; "
                f"best criterion: {best}")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4)) if ax is None else (ax.figure, ax)
        for c, values in self.curves.items():
            ax.plot(self.ks, values, marker="o", label=c)
        ax.axhline(self.baseline, color="grey", ls="--", label="intact")
        ax.set(xlabel="blocks removed", ylabel=self.objective, title="removal curve")
        if self.objective == "perplexity":
            ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        return fig


# --- public API ----------------------------------------------------------------------------------


def _block_index(stack: Stack, spec) -> int:
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        i = int(spec) + (len(stack.blocks) if spec < 0 else 0)
        if 0 <= i < len(stack.blocks):
            return i
    elif isinstance(spec, str) and spec in stack.names:
        return stack.names.index(spec)
    raise LayerscopeError(f"block {spec!r} is not one of the {len(stack.blocks)} blocks "
                          f"(0-{len(stack.blocks) - 1} or {stack.names[0]!r}...)")


def layer_importance(model, data, *, blocks: str | None = None, batch_size: int = 16,
                     max_length: int | None = 128, limit: int | None = None, method: str = "auto",
                     view: str | None = None, ablate: bool = True,
                     progress: bool = False) -> ImportanceResult:
    """Remove each block in turn; also Block Influence and angular distances, all in one pass.

    ``model``: a reference, ``nn.Module`` or LoadedModel; ``data``: a Dataset, a dataset
    reference, texts, a (N, T) tensor of token ids, or encoded batches (with labels, classifiers
    are scored by accuracy and loss). ``method``: "prefix" (re-run only the blocks after the
    removed one), "naive" (a full forward per removal) or "auto" (prefix where the model's tail
    is known). Blocks that change the shape of what flows through them (a CNN's stages, a
    ResNet's downsampling blocks) cannot be skipped; with ``ablate`` they are mean-ablated (their
    output replaced by its mean over the data, one extra forward pass) and ``intervention`` says
    which blocks were. ``view``: how angular distance reads each state ("last" real token,
    "mean" over tokens or positions, ...); None picks the natural one (the last token of token
    sequences, the global average of feature maps).
    """
    from layerscope.views import check_view

    if view is not None:
        check_view(view)
    stack = build_stack(model, blocks)
    L = len(stack.blocks)
    if isinstance(data, str):   # a dataset reference: read once, for mean ablation and removal
        from layerscope.data import load_dataset

        data = load_dataset(data, limit=limit)
    means: dict[int, Tensor] = {}

    def means_of(fixed: list[int]) -> dict[int, Tensor]:
        means.update(mean_outputs(stack, data, fixed, batch_size=batch_size, max_length=max_length,
                                  limit=limit, progress=progress))
        return means

    bi, ad = BlockInfluence(), AngularDistance(view=view or "auto")
    run = run_removals(stack, data, None, batch_size=batch_size, max_length=max_length, limit=limit,
                       method=method, reducers=[bi, ad], progress=progress,
                       ablate=means_of if ablate else None)
    keep = run["removable"]
    nan = float("nan")
    values = [run["values"].get((i,), {}) for i in range(L)]
    some = next(v for v in values if v)

    def column(key):
        return [v.get(key, nan) for v in values] if key in some else None

    bi_values = bi.result()
    rows, starts, best = best_drops(ad.result(), keep)
    return ImportanceResult(
        model=stack.loaded.ref, layers=stack.names, objective=run["objective"],
        baseline=run["baseline"]["metric"], metric=column("metric"), loss=column("loss"),
        token_divergence=column("token_divergence"),
        block_influence=[bi_values.get(n, nan) for n in stack.names], angular=rows, best_start=starts,
        best_angular=best, method=run["method"], n_items=run["n_items"], seconds=run["seconds"],
        block_calls=run["block_calls"], removable=keep,
        intervention=["skip" if keep[i] else "mean-ablate" if i in means else None for i in range(L)],
        view=ad.view)


def removal_effect(model, data, remove: Sequence, *, blocks: str | None = None, batch_size: int = 16,
                   max_length: int | None = 128, limit: int | None = None,
                   method: str = "auto") -> dict[str, float]:
    """The objective with a SET of blocks removed together (not the sum of single removals).

    Returns ``{"metric": ..., "baseline": ..., (and "loss" / "token_divergence")}``.
    """
    stack = build_stack(model, blocks)
    skip = tuple(sorted({_block_index(stack, b) for b in remove}))
    if not skip:
        raise LayerscopeError("pass at least one block to remove")
    run = run_removals(stack, data, [skip], batch_size=batch_size, max_length=max_length,
                       limit=limit, method=method)
    return {**run["values"][skip], "baseline": run["baseline"]["metric"]}


def choose_blocks(importance: ImportanceResult, criterion: str, k: int) -> list[int]:
    """The ``k`` blocks a criterion removes: lowest Block Influence, the angular distance's best
    ``k`` consecutive blocks, the ``k`` least harmful single removals, or the last ``k``."""
    ok = importance.can_remove()
    if not 1 <= k <= len(ok):
        raise LayerscopeError(f"k must be between 1 and {len(ok)} (the blocks that can be removed); got {k}")
    if criterion == "block-influence":
        return sorted(sorted(ok, key=lambda i: importance.block_influence[i])[:k])
    if criterion == "angular":
        start = importance.best_start[k - 1]
        if start is None:
            raise LayerscopeError(f"no {k} consecutive blocks keep their shape; the angular criterion "
                                  f"cannot choose {k} blocks here")
        return list(range(start, start + k))
    if criterion == "single":
        return sorted(importance.ranking()[:k])
    if criterion == "last":
        return ok[-k:]
    raise LayerscopeError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")


def removal_curve(model, data, *, max_k: int = 10, criteria: Sequence[str] = CRITERIA,
                  importance: ImportanceResult | None = None, blocks: str | None = None,
                  batch_size: int = 16, max_length: int | None = 128, limit: int | None = None,
                  method: str = "auto", progress: bool = False) -> RemovalCurveResult:
    """The objective after removing k = 1..max_k blocks chosen by each criterion (each set measured
    as a whole). Computes :func:`layer_importance` first unless ``importance`` is given."""
    stack = build_stack(model, blocks)
    L = len(stack.blocks)
    if not 1 <= max_k <= L:
        raise LayerscopeError(f"max_k must be between 1 and {L} (the number of blocks); got {max_k}")
    for c in criteria:
        if c not in CRITERIA:
            raise LayerscopeError(f"unknown criterion {c!r}; use one of: {', '.join(CRITERIA)}")
    if importance is None:
        importance = layer_importance(stack.loaded, data, blocks=blocks, batch_size=batch_size,
                                      max_length=max_length, limit=limit, method=method,
                                      progress=progress)
    elif importance.layers != stack.names:
        raise LayerscopeError("the importance result was computed on other blocks; recompute it for this model")
    ks = list(range(1, max_k + 1))
    removed = {c: [choose_blocks(importance, c, k) for k in ks] for c in criteria}
    sets = sorted({tuple(s) for lists in removed.values() for s in lists})
    run = run_removals(stack, data, sets, batch_size=batch_size, max_length=max_length,
                       limit=limit, method=method, progress=progress)
    curves = {c: [run["values"][tuple(s)]["metric"] for s in removed[c]] for c in criteria}
    singles = None
    if importance.objective == "perplexity" and importance.loss is not None and "single" in criteria:
        base_loss = run["baseline"]["loss"]
        singles = [math.exp(base_loss + sum(importance.loss[i] - base_loss for i in s))
                   for s in removed["single"]]
    return RemovalCurveResult(
        model=stack.loaded.ref, layers=stack.names, objective=run["objective"],
        baseline=run["baseline"]["metric"], ks=ks, curves=curves, removed=removed,
        sum_of_singles=singles, n_items=run["n_items"], seconds=importance.seconds + run["seconds"])


__all__ = ["layer_importance", "removal_effect", "removal_curve", "choose_blocks", "ImportanceResult",
           "RemovalCurveResult", "BlockInfluence", "AngularDistance", "best_drops", "build_stack",
           "Stack", "CRITERIA"]
