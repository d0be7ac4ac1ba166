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

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.reducers import BatchInfo, Reducer
from layerscope.results import Result
from layerscope.views import pool

CRITERIA = ("block-influence", "angular", "single", "last")
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")


# --- the model: blocks, task, tail ----------------------------------------------------------------


@dataclass
class Stack:
    """A model seen as embeddings -> blocks -> tail: what removal and the logit lens need."""

    loaded: Any                      # LoadedModel
    names: list[str]
    blocks: list[nn.Module]
    task: str                        # "causal-lm" | "encoder" | "classification" | "other"
    norm: nn.Module | None = None    # final norm of a causal LM
    head: nn.Module | None = None    # LM head (output embeddings) of a causal LM

    @property
    def module(self) -> nn.Module:
        return self.loaded.module

    def tail(self, h: Tensor) -> Tensor:
        """The model's output computed from the last block's output (causal LM / encoder only)."""
        if self.task == "causal-lm":
            return self.head(self.norm(h))
        return h


def infer_task(loaded) -> str:
    """The objective family of a loaded model: causal-lm, encoder, classification or other."""
    if loaded.task in ("causal-lm", "encoder", "classification", "regression"):
        return loaded.task
    module = loaded.module
    cls = type(module).__name__
    if cls.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if cls.endswith("ForSequenceClassification"):
        return "classification"
    config = getattr(module, "config", None)
    if config is not None and getattr(module, "main_input_name", None) == "input_ids" \
            and cls.endswith("Model") and getattr(module, "base_model", None) is module:
        return "encoder"
    return loaded.task or "other"


def final_norm(module: nn.Module) -> nn.Module | None:
    """The final norm of a Hugging Face causal LM (``model.norm``, ``transformer.ln_f``, ...)."""
    base = getattr(module, "base_model", None) or module
    for owner in (base, module):
        for name in _FINAL_NORMS:
            found = getattr(owner, name, None)
            if isinstance(found, nn.Module):
                return found
    return None


def lm_head(module: nn.Module) -> nn.Module | None:
    """The unembedding of a causal LM, or None when the model has no LM head."""
    getter = getattr(module, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        head = getattr(module, "lm_head", None)
    return head if isinstance(head, nn.Module) else None


def build_stack(model, blocks: str | None = None) -> Stack:
    """Locate the blocks (via :class:`layerscope.layers.Layers`), the task and the LM tail."""
    from layerscope.layers import Layers
    from layerscope.sweep import as_model

    loaded = as_model(model)
    lay = Layers(loaded, granularity="blocks", blocks=blocks)
    if len(lay) == 0:
        raise LayerscopeError(f"model {loaded.ref!r} has no blocks to analyse; pass --blocks PATH")
    task = infer_task(loaded)
    stack = Stack(loaded, lay.names(), [layer.module for layer in lay], task)
    if task == "causal-lm":
        stack.norm, stack.head = final_norm(loaded.module), lm_head(loaded.module)
    return stack


# --- one forward that records every block call ---------------------------------------------------


def _hidden_of(args: tuple, kwargs: dict) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    h = kwargs.get("hidden_states")
    if not isinstance(h, Tensor):
        raise LayerscopeError("a block was called without a hidden-state tensor; pass --blocks PATH "
                              "naming the model's block list")
    return h


def _with_hidden(args: tuple, kwargs: dict, h: Tensor) -> tuple[tuple, dict]:
    if args and isinstance(args[0], Tensor):
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _replace_primary(output, h: Tensor):
    """``output`` with its hidden-state tensor replaced by ``h``, keeping its structure."""
    if isinstance(output, Tensor):
        return h
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return (h,) + tuple(output[1:])
    if isinstance(output, list) and output and isinstance(output[0], Tensor):
        return [h] + list(output[1:])
    raise LayerscopeError(f"a block returned {type(output).__name__}; layerscope can only skip "
                          f"blocks that return a tensor or a tuple starting with one")


def _primary(output) -> Tensor:
    from layerscope.layers import primary_tensor

    return primary_tensor(output)


@dataclass
class Recorded:
    """One batch's forward pass: the model output and every block's call and output."""

    output: Any
    calls: list[tuple[tuple, dict]]
    outs: list[Tensor]

    def block_input(self, i: int) -> Tensor:
        return _hidden_of(*self.calls[i])

    def removable(self) -> list[bool]:
        """Per block: whether its output has its input's shape, so that skipping it (identity)
        leaves the rest of the model a valid input."""
        return [tuple(self.block_input(i).shape) == tuple(out.shape) for i, out in enumerate(self.outs)]


def record_forward(stack: Stack, enc) -> Recorded:
    """Run the model once, keeping each block's positional and keyword arguments and its output."""
    n = len(stack.blocks)
    calls: list = [None] * n
    outs: list = [None] * n
    handles = []

    def pre(i):
        def hook(module, args, kwargs):
            calls[i] = (tuple(args), dict(kwargs))
        return hook

    def post(i):
        def hook(module, args, output):
            outs[i] = _primary(output)
        return hook

    try:
        for i, block in enumerate(stack.blocks):
            handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(block.register_forward_hook(post(i)))
        output = stack.loaded(enc)
    finally:
        for h in handles:
            h.remove()
    missing = [stack.names[i] for i in range(n) if calls[i] is None]
    if missing:
        raise LayerscopeError(f"block {missing[0]!r} was not called in the forward pass; pass --blocks "
                              f"naming the blocks the model runs")
    return Recorded(output, calls, outs)


def replay(stack: Stack, rec: Recorded, skip: set[int]) -> Tensor:
    """The last block's output with the blocks in ``skip`` removed, re-running only what follows."""
    start = min(skip)
    h = rec.block_input(start)
    for j in range(start, len(stack.blocks)):
        if j in skip:
            continue
        args, kwargs = _with_hidden(*rec.calls[j], h)
        h = _primary(stack.blocks[j](*args, **kwargs))
    return h


def naive_forward(stack: Stack, enc, skip: set[int]):
    """The full model output with the blocks in ``skip`` replaced by identity (forward hooks)."""
    handles = []

    def identity(module, args, kwargs, output):
        h = _hidden_of(args, kwargs)
        out = _primary(output)
        if out.shape != h.shape:
            raise LayerscopeError(
                f"a block maps {tuple(h.shape)} to {tuple(out.shape)}; only blocks that keep the "
                f"shape (residual blocks) can be skipped")
        return _replace_primary(output, h)

    try:
        for i in sorted(skip):
            handles.append(stack.blocks[i].register_forward_hook(identity, with_kwargs=True))
        return stack.loaded(enc)
    finally:
        for h in handles:
            h.remove()


def main_output(output, task: str) -> Tensor:
    """Logits for LMs and classifiers, the last hidden state for encoders, else the output tensor."""
    for key in (("logits",) if task in ("causal-lm", "classification") else ()) + (
            "last_hidden_state", "logits"):
        value = getattr(output, key, None)
        if isinstance(value, Tensor):
            return value
    return _primary(output)


def prepare(stack: Stack, enc):
    """The batch with ``use_cache=False`` for causal LMs, so re-run blocks see no KV cache."""
    config = getattr(stack.module, "config", None)
    if stack.task == "causal-lm" and config is not None and hasattr(config, "use_cache") \
            and "use_cache" not in enc.kwargs and enc.kwargs:
        from dataclasses import replace

        return replace(enc, kwargs={**enc.kwargs, "use_cache": False})
    return enc


def tail_matches(stack: Stack, rec: Recorded) -> bool:
    """Whether the tail reproduces the model's own output from the last block's output."""
    if stack.task == "causal-lm" and (stack.norm is None or stack.head is None):
        return False
    if stack.task not in ("causal-lm", "encoder"):
        return False
    want = main_output(rec.output, stack.task)
    try:
        got = stack.tail(rec.outs[-1])
    except Exception:
        return False
    return got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-4)


# --- data --------------------------------------------------------------------------------------


def iter_batches(loaded, data, *, batch_size: int, max_length: int | None,
                 limit: int | None = None) -> Iterator[tuple[Any, Tensor | None]]:
    """``(Encoded, labels)`` batches on the model's device from a Dataset, reference, texts,
    token-id tensor, or already encoded batches (one ``Encoded`` or a list of them)."""
    from layerscope.models import Encoded
    from layerscope.sweep import as_source, model_device

    device = model_device(loaded.module)
    if isinstance(data, Encoded) or (isinstance(data, (list, tuple)) and data
                                     and all(isinstance(e, Encoded) for e in data)):
        for enc in ([data] if isinstance(data, Encoded) else data):
            yield enc.to(device), None
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LayerscopeError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(data, str):
        from layerscope.data import load_dataset

        data = load_dataset(data, limit=limit)
    source = as_source(data)
    seen = 0
    for items, labels, _ in source.batches(batch_size):
        if limit is not None:
            if seen >= limit:
                return
            items = items[: limit - seen]
            labels = labels[: limit - seen] if labels is not None else None
        seen += len(items)
        yield loaded.encode(items, max_length=max_length).to(device), labels


def token_ids(enc) -> Tensor:
    ids = enc.kwargs.get("input_ids")
    if ids is None and enc.args and isinstance(enc.args[0], Tensor) and not enc.args[0].is_floating_point():
        ids = enc.args[0]
    if ids is None:
        raise LayerscopeError("a causal LM needs token ids (input_ids) to measure next-token loss")
    return ids


def real_mask(enc, shape) -> Tensor:
    """The (B, T) boolean mask of real tokens (all true without an attention mask)."""
    mask = enc.mask if enc.mask is not None else enc.kwargs.get("attention_mask")
    if mask is None or tuple(mask.shape) != tuple(shape):
        return torch.ones(shape, dtype=torch.bool, device=mask.device if mask is not None else None)
    return mask.bool()


# --- objectives --------------------------------------------------------------------------------


class _Objective:
    """Accumulates the effect of each removal (keyed by a tuple of block indices)."""

    name = ""

    def __init__(self):
        self.sums: dict[tuple, dict[str, float]] = {}

    def _add(self, key, **values):
        slot = self.sums.setdefault(key, {})
        for k, v in values.items():
            slot[k] = slot.get(k, 0.0) + float(v)

    def begin(self, enc, reference: Tensor, labels):  # pragma: no cover - overridden
        raise NotImplementedError

    def add(self, key: tuple, output: Tensor) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def value(self, key: tuple) -> dict[str, float]:  # pragma: no cover - overridden
        raise NotImplementedError

    def add_final(self, key: tuple, h: Tensor, stack: "Stack") -> None:
        """Add the output computed by the model's tail from the last block's output ``h``."""
        self.add(key, stack.tail(h))


class LMObjective(_Objective):
    """Next-token loss over real tokens; the metric is perplexity."""

    name = "perplexity"

    def begin(self, enc, reference, labels):
        ids = token_ids(enc)
        mask = real_mask(enc, ids.shape)
        self.targets = ids[:, 1:]
        self.valid = mask[:, :-1] & mask[:, 1:]
        self.add((), reference)

    def add(self, key, output):
        logits = output[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1),
                              reduction="none").view(self.targets.shape)
        self._add(key, nll=nll[self.valid].double().sum(), n=self.valid.sum())

    def add_final(self, key, h, stack):
        # the norm acts per position, so decoding only the scored positions is exact and skips
        # the (vocabulary-wide) head on padding and on each sequence's last token
        logits = stack.head(stack.norm(h[:, :-1][self.valid])).float()
        nll = F.cross_entropy(logits, self.targets[self.valid], reduction="sum")
        self._add(key, nll=nll.double(), n=self.valid.sum())

    def value(self, key):
        s = self.sums[key]
        loss = s["nll"] / s["n"] if s["n"] else float("nan")
        return {"metric": math.exp(loss) if math.isfinite(loss) else float("nan"), "loss": loss}


class EmbeddingObjective(_Objective):
    """1 - cos of the mean-pooled, L2-normalised embedding and of each real token's final state."""

    name = "embedding 1-cos"

    def begin(self, enc, reference, labels):
        self.mask = real_mask(enc, reference.shape[:2])
        self.ref_emb = self._embed(reference)
        self.ref_tok = reference.float()
        self.add((), reference)

    def _embed(self, h):
        m = self.mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1)
        return F.normalize(mean.float(), dim=-1)

    def add(self, key, output):
        emb_div = 1 - (self._embed(output) * self.ref_emb).sum(-1)
        tok = 1 - F.cosine_similarity(output.float(), self.ref_tok, dim=-1)
        self._add(key, emb=emb_div.double().sum(), items=emb_div.numel(),
                  tok=tok[self.mask].double().sum(), tokens=self.mask.sum())

    def value(self, key):
        s = self.sums[key]
        return {"metric": s["emb"] / s["items"], "token_divergence": s["tok"] / max(s["tokens"], 1)}


class ClassifierObjective(_Objective):
    """Accuracy and cross-entropy with labels; KL(original ‖ new) of the class distribution without."""

    def __init__(self, with_labels: bool):
        super().__init__()
        self.with_labels = with_labels
        self.name = "accuracy" if with_labels else "kl"

    def begin(self, enc, reference, labels):
        self.labels = labels.to(reference.device).long() if labels is not None else None
        if self.with_labels and self.labels is None:
            raise LayerscopeError("some batches have labels and some do not; pass labels for every item")
        self.ref_logp = F.log_softmax(reference.float(), dim=-1)
        self.add((), reference)

    def add(self, key, output):
        logp = F.log_softmax(output.float(), dim=-1)
        if self.with_labels:
            self._add(key, correct=(logp.argmax(-1) == self.labels).sum(),
                      nll=F.nll_loss(logp, self.labels, reduction="sum"), n=len(self.labels))
        else:
            kl = (self.ref_logp.exp() * (self.ref_logp - logp)).sum(-1)
            self._add(key, kl=kl.double().sum(), n=kl.numel())

    def value(self, key):
        s = self.sums[key]
        if self.with_labels:
            return {"metric": s["correct"] / s["n"], "loss": s["nll"] / s["n"]}
        return {"metric": s["kl"] / s["n"]}


class OutputObjective(_Objective):
    """1 - cos between each item's original and new flattened output."""

    name = "output 1-cos"

    def begin(self, enc, reference, labels):
        self.ref = reference.float().flatten(1)
        self.add((), reference)

    def add(self, key, output):
        div = 1 - F.cosine_similarity(output.float().flatten(1), self.ref, dim=-1)
        self._add(key, div=div.double().sum(), n=div.numel())

    def value(self, key):
        s = self.sums[key]
        return {"metric": s["div"] / s["n"]}


class RegressionObjective(_Objective):
    """Mean squared error against float labels; without labels, the mean squared change of the
    output (1 - cos says nothing about a one-number output: it is 0 or 2)."""

    def __init__(self, with_labels: bool):
        super().__init__()
        self.with_labels = with_labels
        self.name = "mse" if with_labels else "output mse change"

    def begin(self, enc, reference, labels):
        self.ref = reference.float().reshape(len(reference), -1)
        self.target = labels.to(reference.device).float().reshape(len(self.ref), -1) \
            if self.with_labels and labels is not None else None
        if self.with_labels and self.target is None:
            raise LayerscopeError("some batches have labels and some do not; pass labels for every item")
        self.add((), reference)

    def add(self, key, output):
        out = output.float().reshape(len(output), -1)
        goal = self.target if self.target is not None else self.ref
        self._add(key, se=((out - goal) ** 2).double().sum(), n=out.numel())

    def value(self, key):
        s = self.sums[key]
        return {"metric": s["se"] / s["n"]}


def make_objective(task: str, labels) -> _Objective:
    if task == "causal-lm":
        return LMObjective()
    if task == "encoder":
        return EmbeddingObjective()
    if task == "classification":
        return ClassifierObjective(with_labels=labels is not None)
    if task == "regression":
        usable = labels is not None and torch.is_floating_point(torch.as_tensor(labels))
        return RegressionObjective(with_labels=usable)
    return OutputObjective()


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
        for name, s in other.cos_sum.items():
            self.cos_sum[name] = self.cos_sum.get(name, 0.0) + s
            self.count[name] = self.count.get(name, 0) + other.count[name]
        return self

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

    def __init__(self, layers: list[str] | None = None):
        self.layers = layers
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
            return self
        if self.names is None:
            self.names, self.sums, self.n = list(other.names), other.sums.copy(), other.n
            return self
        if self.names != other.names:
            raise LayerscopeError("cannot merge AngularDistance over different blocks")
        self.sums = self.sums + other.sums
        self.n += other.n
        return self

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


def _feed_reducers(reducers, stack: Stack, rec: Recorded, enc, labels, first: int) -> None:
    names = stack.names
    for r in reducers:
        acts = {n: pool(rec.outs[i], enc.mask, r.view) for i, n in enumerate(names)}
        ins = {n: pool(rec.block_input(i), enc.mask, r.view) for i, n in enumerate(names)}
        r.update(acts, BatchInfo(first, enc.size, labels, None, ins, enc.mask))


def run_removals(stack: Stack, data, sets: Sequence[tuple[int, ...]] | None, *, batch_size: int = 16,
                 max_length: int | None = 128, limit: int | None = None, method: str = "auto",
                 reducers: Sequence[Reducer] = (), progress: bool = False) -> dict:
    """Evaluate the objective with each set of blocks removed, in one pass over the data.

    ``sets=None`` removes each removable block (one that keeps its input's shape) on its own.
    Returns ``{"objective", "values": {set: {...}}, "baseline": {...}, "method", "n_items",
    "seconds", "block_calls", "removable"}``; ``reducers`` are fed each batch's block inputs and
    outputs.
    """
    if method not in ("auto", "prefix", "naive"):
        raise LayerscopeError(f"unknown method {method!r}; use auto, prefix or naive")
    L = len(stack.blocks)
    for s in sets or ():
        if not s or any(not 0 <= i < L for i in s):
            raise LayerscopeError(f"blocks to remove must be between 0 and {L - 1}; got {list(s)}")
    keep = None
    objective = None
    use_prefix = None
    n_items = block_calls = 0
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(disable=not progress, unit="item", desc="importance")
    with evaluating(stack.loaded), torch.inference_mode():
        for first_batch, (enc, labels) in enumerate(iter_batches(
                stack.loaded, data, batch_size=batch_size, max_length=max_length, limit=limit)):
            enc = prepare(stack, enc)
            rec = record_forward(stack, enc)
            if keep is None:
                keep = rec.removable()
                sets = _removable_sets(stack, rec, keep, sets)
            if use_prefix is None:
                ok = tail_matches(stack, rec)
                if method == "prefix" and not ok:
                    raise LayerscopeError(
                        f"cannot reproduce {type(stack.module).__name__}'s output from its last block "
                        f"(no known final norm/head); use method='naive'")
                use_prefix = ok and method != "naive"
            if objective is None:
                objective = make_objective(stack.task, labels)
            reference = main_output(rec.output, stack.task)
            objective.begin(enc, reference, labels)
            for s in sets:
                skip = set(s)
                if use_prefix:
                    objective.add_final(tuple(s), replay(stack, rec, skip), stack)
                    block_calls += L - min(skip) - len(skip)
                else:
                    objective.add(tuple(s), main_output(naive_forward(stack, enc, skip), stack.task))
                    block_calls += L
            _feed_reducers(reducers, stack, rec, enc, labels, n_items)
            block_calls += L
            n_items += enc.size
            bar.update(enc.size)
    bar.close()
    if objective is None:
        raise LayerscopeError("the data is empty; pass at least one item")
    return {"objective": objective.name, "values": {tuple(s): objective.value(tuple(s)) for s in sets},
            "baseline": objective.value(()), "method": "prefix" if use_prefix else "naive",
            "n_items": n_items, "seconds": time.perf_counter() - t0, "block_calls": block_calls,
            "removable": keep}


def _removable_sets(stack: Stack, rec: Recorded, keep: list[bool], sets) -> list[tuple[int, ...]]:
    """``sets`` checked against the blocks that keep their shape (None: each such block alone)."""
    if not any(keep):
        raise LayerscopeError(
            f"no block of {type(stack.module).__name__} keeps its input's shape, so none can be "
            f"skipped; removal needs residual-style blocks (pass --blocks to choose others)")
    if sets is None:
        return [(i,) for i in range(len(keep)) if keep[i]]
    for s in sets:
        bad = [i for i in s if not keep[i]]
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
        order = self.ranking()
        worst, least = order[-1], order[0]
        lo_bi = min(order, key=lambda i: self.block_influence[i])
        n2 = f"; best 2-block drop by angular distance: blocks {self.best_start[1]}-{self.best_start[1] + 1}" \
            if len(self.best_start) > 1 and self.best_start[1] is not None else ""
        fixed = [name for name, ok in zip(self.layers, self.removable or []) if not ok]
        shape = (f"; {len(fixed)} block(s) change the shape and cannot be removed ({', '.join(fixed)})"
                 if fixed else "")
        return (f"{self.objective} intact {self.baseline:.4g}; removing block {worst} hurts most "
                f"({self.metric[worst]:.4g}), block {least} least ({self.metric[least]:.4g}); lowest "
                f"Block Influence: block {lo_bi} ({self.block_influence[lo_bi]:.3g}){n2}{shape}")

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
                     progress: bool = False) -> ImportanceResult:
    """Remove each block in turn; also Block Influence and angular distances, all in one pass.

    ``model``: a reference, ``nn.Module`` or LoadedModel; ``data``: a Dataset, a dataset
    reference, texts, a (N, T) tensor of token ids, or encoded batches. ``method``: "prefix"
    (re-run only the blocks after the removed one), "naive" (a full forward per removal) or
    "auto" (prefix where the model's tail is known).
    """
    stack = build_stack(model, blocks)
    L = len(stack.blocks)
    bi, ad = BlockInfluence(), AngularDistance()
    run = run_removals(stack, data, None, batch_size=batch_size, max_length=max_length, limit=limit,
                       method=method, reducers=[bi, ad], progress=progress)
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
        block_calls=run["block_calls"], removable=keep)


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
