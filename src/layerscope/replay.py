"""Prefix reuse: record one forward pass block by block, then re-run only what follows a change.

A model is seen as embeddings -> blocks -> tail (:class:`Stack`). :func:`record_forward` runs the
model once through :class:`~layerscope.layers.Capture`, keeping every block's call arguments
(the hidden state, attention mask, position embeddings, ...) and its output. From that record,
:func:`replay` computes the last block's output with some blocks skipped by re-running only the
blocks after the first skipped one, and :meth:`Stack.tail` turns it into the model's output (final
norm and output head for causal LMs; nothing for encoders). :func:`edited_forward` is the full
forward with chosen blocks' outputs replaced (skipped: their input passed on; mean-ablated: a
fixed tensor), for models whose tail cannot be reproduced. Removal (importance), the logit and
tuned lens, surgery's quality and early exit all read blocks through this module; it places no
hook itself (every hook goes through Capture) and never changes the model.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.replay import build_stack, prepare, record_forward, replay, tail_matches
    >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
    ...                   num_attention_heads=2, num_key_value_heads=2)
    >>> _ = torch.manual_seed(0)
    >>> stack = build_stack(LlamaForCausalLM(cfg).eval())
    >>> enc = prepare(stack, stack.loaded.encode(torch.randint(0, 50, (2, 5))))
    >>> with torch.no_grad():
    ...     rec = record_forward(stack, enc)
    ...     same = torch.allclose(replay(stack, rec, set()), rec.outs[-1], atol=1e-6)
    >>> stack.task, len(rec.outs), tail_matches(stack, rec), same
    ('causal-lm', 3, True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.layers import Capture, Layer, primary_tensor


@dataclass
class Stack:
    """A model seen as embeddings -> blocks -> tail: what removal and the logit lens need."""

    loaded: Any                      # LoadedModel
    names: list[str]
    blocks: list[nn.Module]
    task: str                        # "causal-lm" | "encoder" | "classification" | "regression" | "other"
    norm: nn.Module | None = None    # final norm of a causal LM
    head: nn.Module | None = None    # output head (unembedding) of a causal LM
    layers: list[Layer] | None = None
    grouped: str | None = None       # blocks kept in parallel lists: re-running one is refused
    norm_rule: str = ""              # how the logit lens found the final norm (lens_stack sets it)

    @property
    def module(self) -> nn.Module:
        return self.loaded.module

    def tail(self, h: Tensor) -> Tensor:
        """The model's output computed from the last block's output (causal LM / encoder only)."""
        if self.task == "causal-lm":
            return self.head(self.norm(h))
        return h


def build_stack(model, blocks: str | None = None) -> Stack:
    """Locate the blocks (via :class:`layerscope.layers.Layers`), the task and the LM tail (the
    final norm and output head from :mod:`layerscope.layouts`' roles)."""
    from layerscope.layers import Layers
    from layerscope.layouts import final_norm, infer_task, output_head
    from layerscope.sweep import as_model

    loaded = as_model(model)
    lay = Layers(loaded, granularity="blocks", blocks=blocks)
    if len(lay) == 0:
        raise LayerscopeError(f"model {loaded.ref!r} has no blocks to analyse; pass --blocks PATH")
    task = infer_task(loaded)
    stack = Stack(loaded, lay.names(), [layer.module for layer in lay], task, layers=list(lay))
    grouped = next((ref for ref in lay.found.blocks if ref.members), None)
    if grouped is not None:
        stack.grouped = " + ".join(p for p, _ in grouped.members)
    if task == "causal-lm":
        stack.norm, stack.head = final_norm(loaded), output_head(loaded)
    return stack


# --- one forward that records every block call ---------------------------------------------------


def hidden_of(args: tuple, kwargs: dict) -> Tensor:
    """The hidden-state argument of a block call (first positional tensor or ``hidden_states``)."""
    if args and isinstance(args[0], Tensor):
        return args[0]
    h = kwargs.get("hidden_states")
    if not isinstance(h, Tensor):
        raise LayerscopeError("a block was called without a hidden-state tensor; pass --blocks PATH "
                              "naming the model's block list")
    return h


def with_hidden(args: tuple, kwargs: dict, h: Tensor) -> tuple[tuple, dict]:
    """A block call's arguments with its hidden-state argument (see :func:`hidden_of`) set to ``h``."""
    if args and isinstance(args[0], Tensor):
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


@dataclass
class Recorded:
    """One batch's forward pass: the model output and every block's call and output."""

    output: Any
    calls: list[tuple[tuple, dict]]
    outs: list[Tensor]

    def block_input(self, i: int) -> Tensor:
        return hidden_of(*self.calls[i])

    def chained(self) -> bool:
        """Whether each block's input is the previous block's output, so that re-running the
        blocks after a removed one reproduces the model (not so for blocks kept in stages with a
        downsampling layer between them: Swin's patch merging)."""
        return all(self.block_input(i) is self.outs[i - 1] or (
            self.block_input(i).shape == self.outs[i - 1].shape and torch.equal(self.block_input(i), self.outs[i - 1]))
            for i in range(1, len(self.outs)))

    def removable(self) -> list[bool]:
        """Per block: whether its output has its input's shape, so that skipping it (identity)
        leaves the rest of the model a valid input."""
        return [tuple(self.block_input(i).shape) == tuple(out.shape) for i, out in enumerate(self.outs)]


def _layers(stack: Stack) -> list[Layer]:
    if stack.layers is None:
        raise LayerscopeError("this Stack has no layers; build it with build_stack")
    return stack.layers


def record_forward(stack: Stack, enc) -> Recorded:
    """Run the model once, keeping each block's positional and keyword arguments and its output."""
    names = stack.names
    with Capture(stack.module, _layers(stack), kwargs=True) as cap:
        output = cap.call(stack.loaded, enc)
    missing = [n for n in names if n not in cap.args or n not in cap.outputs]
    if missing:
        raise LayerscopeError(f"block {missing[0]!r} was not called in the forward pass; pass --blocks "
                              f"naming the blocks the model runs")
    return Recorded(output, [(cap.args[n], cap.kwargs[n]) for n in names],
                    [cap.outputs[n] for n in names])


def replay(stack: Stack, rec: Recorded, skip: set[int]) -> Tensor:
    """The last block's output with the blocks in ``skip`` removed, re-running only what follows."""
    if not skip:
        return rec.outs[-1]
    if stack.grouped:
        raise LayerscopeError(
            f"the blocks of {type(stack.module).__name__} are kept in parallel lists (block 0 = "
            f"{stack.grouped}), which only the model's own loop runs; re-running the blocks after "
            f"a removed one is not possible here: use the full forward with the block skipped")
    start = min(skip)
    h = rec.block_input(start)
    for j in range(start, len(stack.blocks)):
        if j in skip:
            continue
        args, kwargs = with_hidden(*rec.calls[j], h)
        h = primary_tensor(stack.blocks[j](*args, **kwargs))
    return h


def edited_forward(stack: Stack, enc, skip=(), ablate: dict[int, Tensor] | None = None):
    """The full model output with the blocks in ``skip`` replaced by identity (their input flows
    on) and the blocks in ``ablate`` replaced by a fixed tensor broadcast over the batch (mean
    ablation), all through Capture's ``edit``."""
    ablate = ablate or {}
    layers = _layers(stack)
    by_name = {layers[i].name: i for i in set(skip) | set(ablate)}

    def edit(out: Tensor, name: str) -> Tensor:
        i = by_name[name]
        if i in ablate:
            return ablate[i].to(out.device, out.dtype).expand_as(out)
        h = hidden_of(cap.args[name], cap.kwargs[name])
        if out.shape != h.shape:
            raise LayerscopeError(
                f"a block maps {tuple(h.shape)} to {tuple(out.shape)}; only blocks that keep the "
                f"shape (residual blocks) can be skipped")
        return h

    chosen = [layers[i] for i in sorted(by_name.values())]
    with Capture(stack.module, chosen, kwargs=True, edit=edit) as cap:
        return cap.call(stack.loaded, enc)


def naive_forward(stack: Stack, enc, skip: set[int]):
    """The full model output with the blocks in ``skip`` replaced by identity."""
    return edited_forward(stack, enc, skip=skip)


def main_output(output, task: str) -> Tensor:
    """Logits for LMs and classifiers, the last hidden state for encoders, else the output tensor."""
    for key in (("logits",) if task in ("causal-lm", "classification") else ()) + (
            "last_hidden_state", "logits"):
        value = getattr(output, key, None)
        if isinstance(value, Tensor):
            return value
    return primary_tensor(output)


def prepare(stack: Stack, enc):
    """The batch with ``use_cache=False`` for causal LMs, so re-run blocks see no KV cache."""
    config = getattr(stack.module, "config", None)
    if stack.task == "causal-lm" and config is not None and hasattr(config, "use_cache") \
            and "use_cache" not in enc.kwargs and enc.kwargs:
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


__all__ = ["Stack", "Recorded", "build_stack", "record_forward", "replay", "edited_forward",
           "naive_forward", "main_output", "prepare", "tail_matches", "hidden_of", "with_hidden"]
