"""Activation patching: which layer, sublayer or head, at which position, carries what the output
depends on.

A clean and a corrupted prompt of the same token length differ in one fact ("The Eiffel Tower
is in the city of" / "The Colosseum is in the city of"). **Denoising** runs the corrupted prompt
with one activation taken from the clean run; **noising** runs the clean prompt with one
activation from the corrupted run. For a metric ``m`` read at the last position (the logit
difference between the clean answer and the corrupted answer, ``logit-diff``, or the
probability of the clean answer, ``prob``) the **restored share** is

    (m_patched - m_corrupt) / (m_clean - m_corrupt)

in both directions: 1 means the patched run scores like the clean run, 0 like the corrupted
one. Denoising asks which activation is *enough* to bring the answer back; noising asks which
one the clean answer *needs* (a low share there).

Sites are blocks (the residual stream after block l) at each position, a block's attention or
feed-forward output at each position, or each attention head at all positions at once (the
head's slice of the attention output projection's input, see
:mod:`~layerscope.analyses.causal.interventions`).

**Batched, with prefix reuse** (``method="prefix"``): one recorded forward of each prompt keeps
every block's input, call arguments and output (through ``Capture(inputs=True, kwargs=True)``).
The blocks before the patched one are the same for every patch, so for block l the patched
rows (one per position, as a batch dimension) start from the recorded state and only blocks
l+1... (a block patch) or l... (a sublayer or head patch, with the edit in place) are run,
followed by the final norm and LM head. A block sweep of L layers x P positions costs
P * L(L-1)/2 block evaluations instead of P * L^2 for one full forward per patch. Where the
replay cannot reproduce the model's own output (checked once per prompt) it falls back to full
batched forwards (``method="full"``); ``method="loop"`` is the plain one-forward-per-patch loop.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.analyses.causal.patching import patch
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2)).eval()
    >>> clean, corrupt = torch.tensor([[1, 5, 7, 9]]), torch.tensor([[1, 6, 7, 9]])
    >>> res = patch(lm, clean, corrupt, target=3, foil=4)
    >>> res.method, len(res.restored), len(res.restored[0])
    ('prefix', 2, 4)
    >>> abs(res.restored[-1][-1] - 1.0) < 1e-4  # the last block's output at the last position
    True
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.layers import Capture, Layers
from layerscope.replay import main_output
from layerscope.results import Result

from .interventions import (Intervened, Intervention, Site, apply, normalise_part, run_blocks,
                            site_in)

DIRECTIONS = ("denoise", "noise")
METRICS = ("logit-diff", "prob")
METHODS = ("auto", "prefix", "full", "loop")


# --- prompts ------------------------------------------------------------------------------------


@dataclass
class PromptPair:
    """A clean and a corrupted prompt, the clean answer (``target``) and the corrupted answer
    (``foil``; None: the model's top token on the corrupted prompt)."""

    clean: Any
    corrupt: Any
    target: Any
    foil: Any = None


def read_pairs(path: str | Path) -> list[PromptPair]:
    """Prompt pairs from a tab-separated file: ``clean<TAB>corrupt<TAB>target[<TAB>foil]`` per line;
    a first line starting with ``clean`` is a header, lines starting with ``#`` are comments.
    Spaces inside fields are kept (write answers with their leading space, e.g. `` Paris``)."""
    p = Path(path)
    if not p.is_file():
        raise LayerscopeError(f"prompt-pair file {str(p)!r} does not exist; give a .tsv with "
                              f"clean, corrupt, target (and optionally foil) columns")
    pairs = []
    with p.open(newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if n == 1 and row[0].strip().lower() == "clean":
                continue
            if len(row) not in (3, 4):
                raise LayerscopeError(f"{p.name} line {n} has {len(row)} tab-separated fields; write "
                                      f"clean<TAB>corrupt<TAB>target[<TAB>foil]")
            pairs.append(PromptPair(row[0], row[1], row[2], row[3] if len(row) == 4 and row[3] else None))
    if not pairs:
        raise LayerscopeError(f"{p.name} holds no prompt pairs; write clean<TAB>corrupt<TAB>target lines")
    return pairs


def _ids(loaded, prompt, what: str) -> Tensor:
    if isinstance(prompt, str):
        enc = loaded.encode([prompt])
        ids = enc.kwargs.get("input_ids")
    else:
        ids = torch.as_tensor(prompt)
    if ids is None or ids.is_floating_point():
        raise LayerscopeError(f"the {what} prompt must be text or token ids")
    ids = ids.long().reshape(1, -1)
    if ids.shape[1] == 0:
        raise LayerscopeError(f"the {what} prompt is empty; give some text")
    return ids


def token_id(loaded, answer, what: str) -> int:
    """The single token id of ``answer`` (text or an id); a one-line error when it is not one token."""
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        return int(answer)
    if isinstance(answer, Tensor) and answer.numel() == 1:
        return int(answer)
    tok = getattr(loaded, "tokenizer", None)
    if tok is None:
        raise LayerscopeError(f"the model has no tokenizer; give the {what} as a token id")
    ids = tok.encode(str(answer), add_special_tokens=False)
    if len(ids) != 1:
        pieces = tok.convert_ids_to_tokens(ids)
        raise LayerscopeError(
            f"the {what} {str(answer)!r} is {len(ids)} tokens {pieces}, not one; give a single-token "
            f"answer (most tokenizers want the leading space, e.g. ' Paris')")
    return int(ids[0])


def _tokens(loaded, ids: Tensor) -> list[str]:
    tok = getattr(loaded, "tokenizer", None)
    if tok is None:
        return [str(int(i)) for i in ids[0]]
    return [tok.decode([int(i)]) for i in ids[0]]


def _answer(loaded, token: int) -> str:
    tok = getattr(loaded, "tokenizer", None)
    return tok.decode([token]) if tok is not None else str(token)


# --- the result ---------------------------------------------------------------------------------


@dataclass
class PatchResult(Result):
    """Restored share per site (rows: ``labels``) and position (columns: ``tokens``), averaged
    over the prompt pairs. ``patched`` holds the raw metric. For heads the single column is
    "all" (the head patched at every position)."""

    model: str
    direction: str
    metric: str
    part: str
    layers: list[str]
    labels: list[str]
    tokens: list[str]
    restored: list[list[float]]
    patched: list[list[float]]
    metric_clean: float
    metric_corrupt: float
    pairs: list[dict]
    method: str
    seconds: float
    block_calls: int
    forward_calls: int

    def best(self) -> tuple[str, str, float]:
        """The site and position with the largest restored share (denoising) or the smallest
        (noising: the activation the clean answer needs most)."""
        arr = np.asarray(self.restored, dtype=float)
        flat = np.nanargmax(arr) if self.direction == "denoise" else np.nanargmin(arr)
        i, j = np.unravel_index(flat, arr.shape)
        return self.labels[i], self.tokens[j], float(arr[i, j])

    def summary(self) -> str:
        site, tok, share = self.best()
        what = "restores" if self.direction == "denoise" else "keeps only"
        return (f"{self.direction} patching of {self.part} outputs over {len(self.pairs)} pair(s), "
                f"{self.metric} clean {self.metric_clean:.3f} vs corrupt {self.metric_corrupt:.3f}: "
                f"{self.part} {site} at {tok!r} {what} {share:.0%} of the gap "
                f"({len(self.labels)}x{len(self.tokens)} patches, {self.seconds:.1f}s, {self.method})")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        arr = np.asarray(self.restored, dtype=float)
        if ax is None:
            fig, ax = plt.subplots(figsize=(1.0 + 0.55 * max(len(self.tokens), 4),
                                            1.5 + 0.22 * len(self.labels)))
        else:
            fig = ax.figure
        lim = max(1.0, float(np.nanmax(np.abs(arr))) if arr.size else 1.0)
        im = ax.imshow(arr, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_xticks(range(len(self.tokens)))
        ax.set_xticklabels([repr(t)[1:-1] for t in self.tokens], rotation=60, ha="right", fontsize=8)
        step = max(1, len(self.labels) // 30)
        ax.set_yticks(range(0, len(self.labels), step))
        ax.set_yticklabels(self.labels[::step], fontsize=8)
        ax.set_ylabel(self.part)
        ax.set_title(f"{self.direction} patching: restored share of {self.metric}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        fig.tight_layout()
        return fig


# --- one prompt pair ----------------------------------------------------------------------------


@dataclass
class _Run:
    """One prompt's recorded forward: logits at the last position, and per block its call
    arguments, input and output; per non-block site its activation."""

    enc: Any
    logits: Tensor
    args: list[tuple]
    kwargs: list[dict]
    block_in: list[Tensor]
    block_out: list[Tensor]
    acts: dict[str, Tensor]


def _record(ctx: "_Context", ids: Tensor) -> _Run:
    from layerscope.models import Encoded

    enc = Encoded(args=(), kwargs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                  mask=torch.ones_like(ids), size=1).to(ctx.device)
    enc = ctx.prepare(enc)
    blocks = ctx.blocks
    extra = {s.name: s.layer for s in ctx.sites if s.part != "block"}
    with torch.no_grad(), Capture(ctx.module, blocks + list(extra.values()), inputs=True,
                                  kwargs=True) as cap:
        out = cap.call(ctx.loaded, enc)
    ctx.forward_calls += 1
    ctx.block_calls += len(blocks)
    logits = main_output(out, "causal-lm")[:, -1].float()
    acts = {}
    for s in ctx.sites:
        if s.part != "block":
            acts[s.name] = (cap.inputs[s.name] if s.head is not None else cap.outputs[s.name])
    return _Run(enc, logits, [cap.args[b.name] for b in blocks], [cap.kwargs[b.name] for b in blocks],
                [cap.inputs[b.name] for b in blocks], [cap.outputs[b.name] for b in blocks], acts)


class _Context:
    def __init__(self, model, part: str, layers, blocks: str | None, batch_size: int):
        from layerscope.layouts import infer_task
        from layerscope.replay import build_stack, prepare
        from layerscope.sweep import as_model, model_device

        self.loaded = as_model(model)
        self.module = self.loaded.module
        if infer_task(self.loaded) != "causal-lm":
            raise LayerscopeError(f"activation patching reads next-token logits; model "
                                  f"{self.loaded.ref!r} is not a causal language model")
        self.view = Layers(self.loaded, "blocks", blocks=blocks)
        self.stack = build_stack(self.loaded, blocks)
        self.blocks = list(self.view)
        self.device = model_device(self.module)
        self.prepare = lambda enc: prepare(self.stack, enc)
        self.part = normalise_part(part)
        self.chosen = self.view.select(layers)
        self.sites: list[Site] = []
        for block in self.chosen:
            if self.part == "head":
                n = site_in(block, "head", 0).n_heads
                self.sites += [site_in(block, "head", h) for h in range(n)]
            else:
                self.sites.append(site_in(block, self.part))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise LayerscopeError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.batch_size = batch_size
        self.block_calls = 0
        self.forward_calls = 0

    # -- running patched rows ---------------------------------------------------------------------
    def replay_ok(self, run: _Run) -> bool:
        """Whether re-running the recorded blocks on a batch of 2 rows reproduces the logits."""
        if self.stack.norm is None or self.stack.head is None:
            return False
        try:
            h = run.block_in[0].expand(2, *run.block_in[0].shape[1:])
            got = self.blocks_from(run, 0, h, ())
        except Exception:
            return False
        return bool(torch.allclose(got, run.logits.expand_as(got), rtol=1e-4, atol=1e-4))

    def blocks_from(self, run: _Run, start: int, h: Tensor, ivs: Sequence[Intervention]) -> Tensor:
        """Last-position logits after running blocks ``start..`` on ``h`` (rows as the batch) with
        the recorded call arguments, ``ivs`` in place, then the final norm and the LM head."""
        with torch.no_grad():
            h = run_blocks(self.module, self.blocks, list(zip(run.args, run.kwargs)), start, h, ivs)
            self.block_calls += h.shape[0] * (len(self.blocks) - start)
            return self.stack.tail(h[:, -1:])[:, -1].float()

    def full(self, run: _Run, rows: int, ivs: Sequence[Intervention]) -> Tensor:
        """Last-position logits of full forwards of ``rows`` copies of the run's prompt."""
        from layerscope.models import Encoded

        kw = {k: (v.expand(rows, *v.shape[1:]) if isinstance(v, Tensor) and v.dim() and v.shape[0] == 1
                  else v) for k, v in run.enc.kwargs.items()}
        enc = Encoded(args=(), kwargs=kw, mask=kw.get("attention_mask"), size=rows)
        with torch.no_grad(), Intervened(self.module, ivs) as edit:
            out = edit.call(self.loaded, enc)
        self.forward_calls += 1
        self.block_calls += rows * len(self.blocks)
        return main_output(out, "causal-lm")[:, -1].float()


def _jobs(ctx: _Context, positions: int) -> list[tuple[Site, int | None]]:
    """(site, position) for every patch; a head is patched at all positions (position None)."""
    if ctx.part == "head":
        return [(s, None) for s in ctx.sites]
    return [(s, p) for s in ctx.sites for p in range(positions)]


def _intervention(site: Site, source: _Run, position: int | None, row: int) -> Intervention:
    value = source.acts[site.name] if site.part != "block" else source.block_out[site.index]
    return Intervention(site, "replace", value, positions=None if position is None else [position],
                        rows=[row])


def _sweep(ctx: _Context, base: _Run, source: _Run, method: str) -> list[Tensor]:
    """Last-position logits for every patch of ``_jobs`` (in order)."""
    T = base.enc.kwargs["input_ids"].shape[1]
    jobs = _jobs(ctx, T)
    logits: list[Tensor] = []
    if method == "loop":
        for site, pos in jobs:
            logits.append(ctx.full(base, 1, [_intervention(site, source, pos, 0)]))
        return logits
    groups: dict[int, list] = {}
    for job in jobs:
        groups.setdefault(job[0].index, []).append(job)
    for index in sorted(groups):
        todo = groups[index]
        for at in range(0, len(todo), ctx.batch_size):
            chunk = todo[at:at + ctx.batch_size]
            rows = len(chunk)
            if method == "full":
                ivs = [_intervention(s, source, p, r) for r, (s, p) in enumerate(chunk)]
                logits.append(ctx.full(base, rows, ivs))
                continue
            if ctx.part == "block":
                h = base.block_out[index].expand(rows, *base.block_out[index].shape[1:])
                region = [_intervention(s, source, p, r) for r, (s, p) in enumerate(chunk)]
                h = apply(h, region)
                logits.append(ctx.blocks_from(base, index + 1, h, ()))
            else:
                h = base.block_in[index].expand(rows, *base.block_in[index].shape[1:])
                ivs = [_intervention(s, source, p, r) for r, (s, p) in enumerate(chunk)]
                logits.append(ctx.blocks_from(base, index, h, ivs))
    return logits


def _pair_ids(loaded, pair: PromptPair, k: int, n: int, length: int | None) -> tuple[Tensor, Tensor]:
    """The clean and corrupted token ids of pair ``k`` (of ``n``), of one length (and ``length``)."""
    where = f" (pair {k})" if n > 1 else ""
    c_ids, x_ids = _ids(loaded, pair.clean, "clean"), _ids(loaded, pair.corrupt, "corrupted")
    if c_ids.shape[1] != x_ids.shape[1]:
        raise LayerscopeError(
            f"the clean prompt is {c_ids.shape[1]} tokens and the corrupted prompt "
            f"{x_ids.shape[1]}{where}; patching needs the same token length: reword one prompt "
            f"so both tokenize to the same number of tokens")
    if length is not None and c_ids.shape[1] != length:
        raise LayerscopeError(f"pair {k} is {c_ids.shape[1]} tokens and pair 1 is {length}; every "
                              f"pair must have the same token length to share a positions axis")
    return c_ids, x_ids


def check_pairs(model, pairs: Sequence[PromptPair]) -> int:
    """Refuse, before any long work, prompt pairs that :func:`patch` would refuse (token lengths
    that differ, an answer that is not one token); the pairs' token length.

    Example:
        >>> import torch
        >>> check_pairs(torch.nn.Linear(2, 2), [PromptPair(torch.tensor([[1, 2]]), torch.tensor([[1, 3]]), 4)])
        2
    """
    from layerscope.sweep import as_model

    loaded = as_model(model)
    if not pairs:
        raise LayerscopeError("no prompt pairs to patch; write clean<TAB>corrupt<TAB>target lines")
    length = None
    for k, pair in enumerate(pairs, 1):
        c_ids, _ = _pair_ids(loaded, pair, k, len(pairs), length)
        length = c_ids.shape[1]
        token_id(loaded, pair.target, "target")
        if pair.foil is not None:
            token_id(loaded, pair.foil, "foil")
    return length


def _metric(logits: Tensor, metric: str, target: int, foil: int) -> Tensor:
    if metric == "prob":
        return torch.softmax(logits.double(), dim=-1)[..., target]
    return logits[..., target].double() - logits[..., foil].double()


def patch(model, clean=None, corrupt=None, target=None, foil=None, *, pairs: Sequence[PromptPair] = (),
          part: str = "block", direction: str = "denoise", metric: str = "logit-diff", layers=None,
          blocks: str | None = None, batch_size: int = 32, method: str = "auto") -> PatchResult:
    """Activation patching over every chosen layer (``layers``, default all) x position.

    ``clean``/``corrupt`` are texts (or (1, T) token ids), ``target`` the clean answer and
    ``foil`` the corrupted answer (text of one token, or a token id; default: the model's top
    token on the corrupted prompt); ``pairs`` adds more :class:`PromptPair`s (all of one token
    length). ``part`` is ``block``, ``attention``, ``feed-forward`` or ``head``.
    """
    if direction not in DIRECTIONS:
        raise LayerscopeError(f"unknown direction {direction!r}; use denoise (clean into corrupt) "
                              f"or noise (corrupt into clean)")
    if metric not in METRICS:
        raise LayerscopeError(f"unknown metric {metric!r}; use one of: {', '.join(METRICS)}")
    if method not in METHODS:
        raise LayerscopeError(f"unknown method {method!r}; use one of: {', '.join(METHODS)}")
    todo = list(pairs)
    if clean is not None or corrupt is not None:
        if clean is None or corrupt is None or target is None:
            raise LayerscopeError("give a clean prompt, a corrupted prompt and the clean answer (target)")
        todo.insert(0, PromptPair(clean, corrupt, target, foil))
    if not todo:
        raise LayerscopeError("no prompt pair to patch; give --clean/--corrupt/--target or --pairs FILE")
    from layerscope.modes import evaluating

    ctx = _Context(model, part, layers, blocks, batch_size)
    with evaluating(ctx.loaded):
        return _patch_all(ctx, todo, direction, metric, method)


def _patch_all(ctx: _Context, todo: list[PromptPair], direction: str, metric: str,
               method: str) -> PatchResult:
    started = time.perf_counter()
    length = None
    sums = None
    m_clean, m_corrupt, notes = [], [], []
    used = method
    tokens: list[str] = []
    for k, pair in enumerate(todo, 1):
        where = f" (pair {k})" if len(todo) > 1 else ""
        c_ids, x_ids = _pair_ids(ctx.loaded, pair, k, len(todo), length)
        length = c_ids.shape[1]
        t_id = token_id(ctx.loaded, pair.target, "target")
        clean_run, corrupt_run = _record(ctx, c_ids), _record(ctx, x_ids)
        f_id = token_id(ctx.loaded, pair.foil, "foil") if pair.foil is not None \
            else int(corrupt_run.logits[0].argmax())
        if f_id == t_id and metric == "logit-diff":
            raise LayerscopeError(
                f"the corrupted prompt's answer is the target {_answer(ctx.loaded, t_id)!r} too{where}; "
                f"pass --foil with the corrupted prompt's answer or use --metric prob")
        mc = float(_metric(clean_run.logits[0], metric, t_id, f_id))
        mx = float(_metric(corrupt_run.logits[0], metric, t_id, f_id))
        base, source = (corrupt_run, clean_run) if direction == "denoise" else (clean_run, corrupt_run)
        if method in ("auto", "prefix"):
            ok = ctx.replay_ok(base)
            if not ok and method == "prefix":
                raise LayerscopeError("the blocks re-run from a recorded pass do not reproduce this "
                                      "model's output; use method full or loop")
            used = "prefix" if ok else "full"
        values = torch.cat([_metric(chunk, metric, t_id, f_id) for chunk in _sweep(ctx, base, source, used)])
        cols = 1 if ctx.part == "head" else length
        values = values.reshape(len(ctx.sites), cols).numpy()
        share = (values - mx) / (mc - mx) if mc != mx else np.full_like(values, np.nan)
        sums = (values, share) if sums is None else (sums[0] + values, sums[1] + share)
        m_clean.append(mc)
        m_corrupt.append(mx)
        notes.append({"clean": str(pair.clean) if isinstance(pair.clean, str) else c_ids[0].tolist(),
                      "corrupt": str(pair.corrupt) if isinstance(pair.corrupt, str) else x_ids[0].tolist(),
                      "target": _answer(ctx.loaded, t_id), "foil": _answer(ctx.loaded, f_id),
                      "metric_clean": mc, "metric_corrupt": mx})
        if not tokens:
            tokens = ["all"] if ctx.part == "head" else _tokens(ctx.loaded, c_ids)
    n = len(todo)
    return PatchResult(
        model=ctx.loaded.ref, direction=direction, metric=metric, part=ctx.part,
        layers=[b.name for b in ctx.chosen], labels=[s.label for s in ctx.sites], tokens=tokens,
        restored=(sums[1] / n).tolist(), patched=(sums[0] / n).tolist(),
        metric_clean=float(np.mean(m_clean)), metric_corrupt=float(np.mean(m_corrupt)), pairs=notes,
        method=used, seconds=time.perf_counter() - started, block_calls=ctx.block_calls,
        forward_calls=ctx.forward_calls)


__all__ = ["PromptPair", "PatchResult", "patch", "check_pairs", "read_pairs", "token_id", "DIRECTIONS",
           "METRICS", "METHODS"]
