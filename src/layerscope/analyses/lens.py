"""The logit lens: what a causal LM would predict if it stopped after each layer.

The residual stream after the embeddings and after each block is decoded through the model's
own final norm (applied to that hidden state, so with its own statistics) and its unembedding:
``lm_head(norm(h_l))``. After the last block this is exactly the model's logits. Per layer, over
a data set: next-token accuracy and loss over real tokens (padding excluded), top-1 agreement
with the model's final prediction and KL(final ‖ lens) averaged over real tokens; for one prompt,
the top-k tokens at every layer and position.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.analyses.lens import logit_lens
    >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                   num_attention_heads=2, num_key_value_heads=2)
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(cfg).eval()
    >>> res = logit_lens(lm, torch.randint(0, 50, (4, 6)), prompt=torch.tensor([1, 2, 3]), top_k=3)
    >>> res.layers, res.kl[-1] < 1e-6, len(res.top_tokens[0]), len(res.top_tokens[0][0])
    (['embeddings', 'model.layers.0', 'model.layers.1'], True, 3, 3)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.results import Result

from layerscope.objectives import real_mask, token_ids
from layerscope.reducers import BatchInfo, Reducer
from layerscope.replay import Stack, build_stack, main_output, prepare, record_forward, tail_matches
from layerscope.sweep import RAW
from layerscope.sweep import encoded_batches as iter_batches

_METRICS = ("nll", "correct", "kl", "agree", "agree5")
TOP_K_AGREE = 5    # "the final top-1 is among the lens's top 5": the second agreement measure
Translate = Callable[[int, Tensor], Tensor]   # (layer index, residual state) -> state to decode


def lens_stack(model, blocks: str | None = None) -> Stack:
    """The model's blocks, final norm and LM head; LayerscopeError when it has no LM head."""
    stack = build_stack(model, blocks)
    if stack.task != "causal-lm" or stack.head is None:
        raise LayerscopeError(
            f"model {stack.loaded.ref!r} ({type(stack.module).__name__}) has no LM head: the logit "
            f"lens needs a causal language model such as smollm2 (name its head with --role "
            f"head=PATH)")
    stack.norm_rule = "final norm: found by the layout roles"
    if stack.norm is None:
        from layerscope.layouts import final_norm_absent

        why = final_norm_absent(stack.loaded)
        if why is None:
            raise LayerscopeError(
                f"cannot find the final norm of {type(stack.module).__name__}, which the logit lens "
                f"needs; name it with --role final_norm=PATH (or final_norm=none when it has none)")
        stack.norm = nn.Identity()   # checked: the tail must still reproduce the model's logits
        stack.norm_rule = (f"final norm: none, found automatically ({why}); name one with --role "
                           f"final_norm=PATH")
    return stack


def _states(stack: Stack, enc) -> tuple[Any, list[Tensor]]:
    """The model output and the residual stream after the embeddings and after each block."""
    rec = record_forward(stack, enc)
    if not tail_matches(stack, rec):
        raise LayerscopeError(
            f"lm_head(norm(last block output)) does not reproduce {type(stack.module).__name__}'s "
            f"logits (it may scale or cap them); the logit lens cannot decode this model")
    return rec.output, [rec.block_input(0)] + list(rec.outs)


def lens_logits(model, inputs, *, blocks: str | None = None) -> tuple[list[str], list[Tensor]]:
    """Per layer, the lens logits ``(B, T, V)`` of one batch (``inputs``: an Encoded batch, a
    ``(B, T)`` tensor of token ids or a list of texts). The last equals the model's logits."""
    stack = lens_stack(model, blocks)
    enc = next(iter(iter_batches(stack.loaded, inputs, batch_size=1 << 30, max_length=None)))[0]
    with evaluating(stack.loaded), torch.inference_mode():
        _, states = _states(stack, prepare(stack, enc))
        return ["embeddings"] + stack.names, [stack.tail(h).float() for h in states]


class LensStats:
    """Per-layer sums over real tokens; ``merge`` adds them (exact)."""

    def __init__(self, n_layers: int):
        self.sums = {k: np.zeros(n_layers) for k in _METRICS}
        self.n_next = 0       # next-token positions (both ends real)
        self.n_tokens = 0     # real tokens
        self.n_items = 0

    def update(self, stack: Stack, enc, translate: Translate | None = None) -> None:
        output, states = _states(stack, enc)
        self.add(stack, enc, output, states, translate)

    def add(self, stack: Stack, enc, output, states: list[Tensor], translate: Translate | None = None) -> None:
        """Add one batch from its recorded forward (``output`` and the residual ``states``);
        ``translate(layer, h)`` maps each state before decoding (the tuned lens)."""
        ids = token_ids(enc)
        mask = real_mask(enc, ids.shape)
        valid = mask[:, :-1] & mask[:, 1:]
        targets = ids[:, 1:][valid]
        final = F.log_softmax(main_output(output, "causal-lm").float()[mask], dim=-1)
        final_p, final_top = final.exp(), final.argmax(-1)
        for layer, h in enumerate(states):
            logits = _decode(stack, layer, h, translate)
            logp = F.log_softmax(logits[mask], dim=-1)
            next_logits = logits[:, :-1][valid]
            self.sums["nll"][layer] += float(F.cross_entropy(next_logits, targets, reduction="sum"))
            self.sums["correct"][layer] += int((next_logits.argmax(-1) == targets).sum())
            kl = (final_p * (final - logp)).sum(-1)
            self.sums["kl"][layer] += float(kl.double().sum())
            self.sums["agree"][layer] += int((logp.argmax(-1) == final_top).sum())
            top = logp.topk(min(TOP_K_AGREE, logp.shape[-1]), dim=-1).indices
            self.sums["agree5"][layer] += int((top == final_top[:, None]).any(-1).sum())
        self.n_next += int(valid.sum())
        self.n_tokens += int(mask.sum())
        self.n_items += enc.size

    def merge(self, other: "LensStats") -> "LensStats":
        """The statistics of both (a new object; both inputs are left unchanged)."""
        if len(other.sums["kl"]) != len(self.sums["kl"]):
            raise LayerscopeError("cannot merge logit-lens statistics over different layers")
        out = LensStats(len(self.sums["kl"]))
        for k in _METRICS:
            out.sums[k] = self.sums[k] + other.sums[k]
        out.n_next = self.n_next + other.n_next
        out.n_tokens = self.n_tokens + other.n_tokens
        out.n_items = self.n_items + other.n_items
        return out

    def result(self) -> dict[str, list[float]]:
        if self.n_tokens == 0:
            raise LayerscopeError("the data has no real tokens; pass non-empty texts")
        per_next = max(self.n_next, 1)
        nan = float("nan")
        return {"loss": (self.sums["nll"] / per_next).tolist() if self.n_next else [nan] * len(self.sums["nll"]),
                "accuracy": (self.sums["correct"] / per_next).tolist() if self.n_next else [nan] * len(self.sums["nll"]),
                "kl": np.maximum(self.sums["kl"] / self.n_tokens, 0.0).tolist(),
                "top1_agreement": (self.sums["agree"] / self.n_tokens).tolist(),
                "top5_agreement": (self.sums["agree5"] / self.n_tokens).tolist()}


class LensReducer(Reducer):
    """The logit-lens statistics as a sweep reducer, so the lens shares a pass with probes,
    similarity and pictures (:func:`layerscope.analyses.combined.analyze`).

    It reads the residual stream unpooled (``view="raw"``): the first block's input (the
    embeddings) and every block's output, and decodes each through the model's final norm and
    output head; the final logits are the tail applied to the last block's output (the sweep stops
    there). ``state_dict``/``load_state_dict`` hold only the sums, never the model.
    """

    view = RAW
    wants_inputs = True

    def __init__(self, stack: Stack, translate: Translate | None = None):
        self.stack, self.translate = stack, translate
        self.layers = list(stack.names)
        self.stats = LensStats(len(stack.names) + 1)

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        if batch.encoded is None or not batch.inputs:
            raise LayerscopeError("the lens reducer needs the encoded batch and the first block's "
                                  "input; run it inside layerscope.sweep.sweep")
        enc = prepare(self.stack, batch.encoded)
        states = [batch.inputs[self.layers[0]]] + [acts[n] for n in self.layers]
        self.stats.add(self.stack, enc, self.stack.tail(states[-1]), states, self.translate)

    def merge(self, other: "LensReducer") -> "LensReducer":
        self._check_mergeable(other)
        out = copy.copy(self)
        out.stats = self.stats.merge(other.stats)
        return out

    def state_dict(self) -> dict:
        return {"type": type(self).__qualname__, "state": copy.deepcopy(vars(self.stats))}

    def load_state_dict(self, state: dict) -> "LensReducer":
        if not isinstance(state, dict) or state.get("type") != type(self).__qualname__:
            raise LayerscopeError("not a LensReducer state; pass what LensReducer.state_dict() returned")
        self.stats = LensStats(len(self.layers) + 1)
        saved = copy.deepcopy(state["state"])
        self.stats.sums.update(saved.pop("sums"))   # a metric an older version's state lacks stays 0
        self.stats.__dict__.update(saved)
        return self

    def result(self) -> dict[str, list[float]]:
        return self.stats.result()


def _limited(data, limit: int | None):
    """``data`` cut to its first ``limit`` items (a dataset reference is loaded that way)."""
    if isinstance(data, str):
        from layerscope.data import load_dataset

        return load_dataset(data, limit=limit)
    if limit is None:
        return data
    if hasattr(data, "subset") and hasattr(data, "items"):
        return data.subset(range(min(limit, len(data))))
    return data[:limit]


def lens_statistics(stack: Stack, data, *, translate: Translate | None = None,
                    blocks: str | None = None, batch_size: int = 8, max_length: int | None = 128,
                    limit: int | None = None, progress: bool = False) -> LensStats:
    """The lens statistics of ``data`` from one sweep with a :class:`LensReducer` (encoded
    batches, which the sweep does not take, are recorded one by one)."""
    from layerscope.models import Encoded
    from layerscope.sweep import sweep

    if isinstance(data, Encoded) or (isinstance(data, (list, tuple)) and data
                                     and all(isinstance(e, Encoded) for e in data)):
        stats = LensStats(len(stack.blocks) + 1)
        with evaluating(stack.loaded), torch.inference_mode():
            for enc, _ in iter_batches(stack.loaded, data, batch_size=batch_size,
                                       max_length=max_length):
                stats.update(stack, prepare(stack, enc), translate)
        return stats
    red = LensReducer(stack, translate)
    sweep(stack.loaded, _limited(data, limit), reducers=[red], blocks=blocks,
          batch_size=batch_size, max_length=max_length, progress=progress)
    return red.stats


def _decode(stack: Stack, layer: int, h: Tensor, translate: Translate | None) -> Tensor:
    """Layer ``layer``'s state through the final norm and the unembedding (float32 logits)."""
    return stack.tail(translate(layer, h) if translate is not None else h).float()


def _token_text(tokenizer, i: int) -> str:
    return tokenizer.decode([i]) if tokenizer is not None else str(i)


def prompt_top_k(stack: Stack, prompt, k: int, translate: Translate | None = None) -> tuple[list[str], list, list]:
    """The prompt's tokens, and per layer × position the top-k tokens and their probabilities."""
    if isinstance(prompt, str):
        if stack.loaded.tokenizer is None:
            raise LayerscopeError("this model has no tokenizer; pass the prompt as a tensor of token ids")
        if not prompt.strip():
            raise LayerscopeError("the prompt is empty; pass some text")
        enc = stack.loaded.encode([prompt])
    elif isinstance(prompt, Tensor) and not prompt.is_floating_point() and prompt.dim() == 1 and prompt.numel():
        enc = stack.loaded.encode(prompt.unsqueeze(0))
    else:
        raise LayerscopeError("the prompt must be text or a 1-D tensor of token ids")
    from layerscope.sweep import model_device

    enc = prepare(stack, enc.to(model_device(stack.module)))
    ids = token_ids(enc)[0]
    keep = real_mask(enc, token_ids(enc).shape)[0]
    tok = stack.loaded.tokenizer
    vocab = None
    _, states = _states(stack, enc)
    tokens, probs = [], []
    for layer, h in enumerate(states):
        p = F.softmax(_decode(stack, layer, h, translate)[0][keep], dim=-1)
        vocab = p.shape[-1]
        top = torch.topk(p, min(k, vocab), dim=-1)
        tokens.append([[_token_text(tok, int(i)) for i in row] for row in top.indices])
        probs.append(top.values.tolist())
    return [_token_text(tok, int(i)) for i in ids[keep]], tokens, probs


@dataclass
class LensResult(Result):
    """Per layer ("embeddings", then each block): next-token ``accuracy`` and ``loss`` over real
    tokens, ``top1_agreement`` with the model's own prediction, ``kl`` = KL(final ‖ lens) in nats
    averaged over real tokens; for ``prompt``: ``top_tokens[layer][position]`` (k strings) and
    ``top_probs`` alike."""

    model: str
    layers: list[str]
    accuracy: list[float]
    loss: list[float]
    kl: list[float]
    top1_agreement: list[float]
    n_items: int
    n_tokens: int
    prompt: str | None
    prompt_tokens: list[str] | None
    top_k: int
    top_tokens: list[list[list[str]]] | None
    top_probs: list[list[list[float]]] | None
    seconds: float
    lens: str = "logit"         # "logit", or "tuned" when decoded through a trained TunedLens
    norm_rule: str = ""         # how the final norm was found (or found absent, post-norm blocks)
    top5_agreement: list[float] | None = None   # share of tokens whose final top-1 is in the lens's top 5

    def first_layer_reaching(self, agreement: float = 0.5) -> int | None:
        """The first layer whose top-1 agrees with the final prediction at least this often."""
        for i, a in enumerate(self.top1_agreement):
            if a >= agreement:
                return i
        return None

    def summary(self) -> str:
        best = int(np.nanargmax(self.accuracy))
        half = self.first_layer_reaching(0.5)
        reach = f"; top-1 agrees with the final prediction on half the tokens from layer " \
                f"{self.layers[half]}" if half is not None else ""
        mid = len(self.layers) // 2
        return (f"{self.lens} lens over {self.n_tokens} tokens: next-token accuracy {self.accuracy[0]:.1%} "
                f"at the embeddings, {self.accuracy[mid]:.1%} at {self.layers[mid]}, "
                f"{self.accuracy[-1]:.1%} at the last layer (best {self.layers[best]}); "
                f"KL(final ‖ lens) falls from {self.kl[0]:.3g} to {self.kl[-2]:.3g} nats one layer "
                f"before the end{reach}" + (f"; {self.norm_rule}" if "automatically" in self.norm_rule else ""))

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with_prompt = self.top_tokens is not None
        fig, axes = plt.subplots(1, 2 if with_prompt else 1,
                                 figsize=(15, 5) if with_prompt else (7, 4), squeeze=False)
        left = axes[0][0]
        x = np.arange(len(self.layers))
        left.plot(x, self.kl, marker="o", color="C3", label="KL(final ‖ lens)")
        left.set(xlabel="layer (0 = embeddings)", ylabel="KL (nats)", title=f"{self.lens} lens")
        right = left.twinx()
        right.plot(x, self.accuracy, marker=".", color="C0", label="next-token accuracy")
        right.plot(x, self.top1_agreement, marker=".", color="C2", label="top-1 = final top-1")
        right.set(ylabel="fraction", ylim=(0, 1))
        lines = left.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        left.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
        if with_prompt:
            grid = np.array([[pos[0] for pos in layer] for layer in self.top_probs])
            hm = axes[0][1]
            im = hm.imshow(grid, aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1)
            for li, layer in enumerate(self.top_tokens):
                for pi, pos in enumerate(layer):
                    hm.text(pi, li, repr(pos[0])[1:-1][:8], ha="center", va="center", fontsize=6)
            hm.set_xticks(range(len(self.prompt_tokens)))
            hm.set_xticklabels([repr(t)[1:-1][:10] for t in self.prompt_tokens], rotation=60, fontsize=7)
            hm.set(ylabel="layer", title="top-1 next token per layer × position")
            fig.colorbar(im, ax=hm, label="probability")
        fig.tight_layout()
        return fig


def logit_lens(model, data=None, *, prompt=None, top_k: int = 5, blocks: str | None = None,
               batch_size: int = 8, max_length: int | None = 128, limit: int | None = None,
               lens=None, progress: bool = False) -> LensResult:
    """The logit lens of a causal LM over ``data`` (texts, a Dataset or reference, a (N, T)
    tensor of token ids) and, for ``prompt`` (text or 1-D token ids), the top-k tokens per layer.
    Without data the statistics are computed on the prompt. ``lens``: a trained
    :class:`~layerscope.analyses.tuned_lens.TunedLens` to decode through instead (a tuned lens)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise LayerscopeError(f"top_k must be a positive integer; got {top_k!r}")
    if data is None and prompt is None:
        raise LayerscopeError("pass data to average over, a prompt, or both")
    stack = lens_stack(model, blocks)
    translate = None
    if lens is not None:
        lens.check_fits(["embeddings"] + stack.names)
        from layerscope.sweep import model_device

        device = model_device(stack.module)
        if next(lens.parameters()).device != device:   # a lens loaded on the CPU: use a copy
            import copy

            lens = copy.deepcopy(lens).to(device)
        translate = lens.translate
    t0 = time.perf_counter()
    prompt_text = prompt if isinstance(prompt, str) else None
    with evaluating(stack.loaded), torch.inference_mode():
        if prompt is not None:
            prompt_tokens, tokens, probs = prompt_top_k(stack, prompt, top_k, translate)
        else:
            prompt_tokens = tokens = probs = None
        source = data if data is not None else ([prompt] if isinstance(prompt, str) else prompt.unsqueeze(0))
        if prompt is None:   # the tail must reproduce the model's logits: checked on one batch
            for enc, _ in iter_batches(stack.loaded, source, batch_size=batch_size,
                                       max_length=max_length, limit=limit):
                _states(stack, prepare(stack, enc))
                break
    stats = lens_statistics(stack, source, translate=translate, blocks=blocks,
                            batch_size=batch_size, max_length=max_length, limit=limit,
                            progress=progress)
    values = stats.result()
    return LensResult(model=stack.loaded.ref, layers=["embeddings"] + stack.names,
                      accuracy=values["accuracy"], loss=values["loss"], kl=values["kl"],
                      top1_agreement=values["top1_agreement"],
                      top5_agreement=values["top5_agreement"], n_items=stats.n_items,
                      n_tokens=stats.n_tokens, prompt=prompt_text, prompt_tokens=prompt_tokens,
                      top_k=top_k, top_tokens=tokens, top_probs=probs,
                      seconds=time.perf_counter() - t0, lens="logit" if lens is None else "tuned",
                      norm_rule=stack.norm_rule)


__all__ = ["logit_lens", "lens_logits", "lens_stack", "lens_statistics", "LensResult", "LensStats",
           "LensReducer", "prompt_top_k"]
