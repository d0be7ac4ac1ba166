"""The tuned lens (Belrose et al. 2023): the logit lens with one learned affine map per layer.

Layer ℓ's residual stream ``h`` is translated to ``h + A_ℓ h + b_ℓ`` before the model's final
norm and unembedding. ``A`` and ``b`` start at zero, so an untrained tuned lens *is* the logit
lens; the last block has no translator (its lens is the model's own logits). Training minimises
KL(final ‖ lens) over sampled real tokens, summed over layers, with Adam. The model is only
read: its norm and unembedding enter the loss with detached parameters (``torch.func``), so no
gradient, flag, hook or weight of the model changes.

:func:`train_tuned_lens` splits the items (a seeded hash of each item's index), trains on one part
and measures both lenses on the held-out part in one pass, so the comparison is fair.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from layerscope.analyses.tuned_lens import train_tuned_lens
    >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                   num_attention_heads=2, num_key_value_heads=2)
    >>> _ = torch.manual_seed(0)
    >>> lm = LlamaForCausalLM(cfg).eval()
    >>> res = train_tuned_lens(lm, torch.randint(0, 50, (40, 8)), epochs=10, batch_size=8)
    >>> res.layers, res.tuned_kl[0] < res.logit_kl[0], res.tuned_kl[-1] == res.logit_kl[-1]
    (['embeddings', 'model.layers.0', 'model.layers.1'], True, True)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.results import Result

from layerscope.objectives import real_mask, token_ids
from layerscope.replay import main_output, prepare
from layerscope.sweep import encoded_batches as iter_batches
from .lens import _states, lens_stack


class TunedLens(nn.Module):
    """One zero-initialised affine translator per lens layer but the last (``layers``: the lens
    layer names, "embeddings" first); ``translate(i, h) = h + A_i h + b_i``."""

    def __init__(self, layers: list[str], width: int):
        super().__init__()
        self.layers, self.width = list(layers), int(width)
        self.translators = nn.ModuleList(nn.Linear(width, width) for _ in self.layers[:-1])
        for t in self.translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    def translate(self, layer: int, h: Tensor) -> Tensor:
        if layer >= len(self.translators):
            return h
        t = self.translators[layer]
        return h + t(h.to(t.weight.dtype)).to(h.dtype)

    def check_fits(self, layers: list[str]) -> None:
        if list(layers) != self.layers:
            raise LayerscopeError(
                f"this tuned lens was trained for {len(self.layers)} layers ({self.layers[1]} ...), "
                f"the model has {len(layers)} ({layers[1] if len(layers) > 1 else layers[0]} ...); "
                f"train one for this model")

    def save(self, path: str | Path) -> Path:
        """Write the translators to a safetensors file (layer names in its metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(tmp), metadata={"layers": json.dumps(self.layers), "width": str(self.width),
                                             "format": "layerscope-tuned-lens",
                                             "generator": "layerscope-output"})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TunedLens":
        """A tuned lens written by :meth:`save` (safetensors: no code is run)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LayerscopeError(f"no tuned lens at {path}; train one with `layerscope lens MODEL DATA --tuned --lens-out FILE`")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # a file that is not safetensors
            raise LayerscopeError(f"{path} is not a safetensors file ({err}); pass a file written by TunedLens.save") from None
        if meta.get("format") != "layerscope-tuned-lens":
            raise LayerscopeError(f"{path} is not a tuned lens written by layerscope")
        lens = cls(json.loads(meta["layers"]), int(meta["width"]))
        lens.load_state_dict(state)
        return lens


@dataclass
class TunedLensResult(Result):
    """The logit lens and the tuned lens on the same held-out tokens, per layer; the training
    loss (mean KL over layers, nats) per step. ``lens`` (not serialised) is the trained lens."""

    model: str
    layers: list[str]
    logit_kl: list[float]
    tuned_kl: list[float]
    logit_accuracy: list[float]
    tuned_accuracy: list[float]
    logit_agreement: list[float]
    tuned_agreement: list[float]
    train_loss: list[float]
    steps: int
    n_train_items: int
    n_test_items: int
    n_test_tokens: int
    seconds: float
    method: str = ("per layer h + A h + b (zero-initialised), Adam on KL(final ‖ lens) over sampled "
                   "real tokens; evaluated on held-out items")
    lens: TunedLens | None = field(default=None, repr=False, metadata={"serialize": False})

    def summary(self) -> str:
        inner = range(len(self.layers) - 1)
        gain = [self.logit_kl[i] - self.tuned_kl[i] for i in inner]
        mid = len(self.layers) // 2
        return (f"tuned lens on {self.n_test_tokens} held-out tokens: KL(final ‖ lens) at "
                f"{self.layers[mid]} {self.logit_kl[mid]:.3g} → {self.tuned_kl[mid]:.3g} nats "
                f"(logit → tuned); lower on {sum(g > 0 for g in gain)} of {len(gain)} layers "
                f"after {self.steps} steps")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        x = np.arange(len(self.layers))
        axes[0].plot(x, self.logit_kl, marker="o", label="logit lens")
        axes[0].plot(x, self.tuned_kl, marker="o", label="tuned lens")
        axes[0].set(xlabel="layer (0 = embeddings)", ylabel="KL(final ‖ lens), nats",
                    title=f"held-out, {self.n_test_tokens} tokens")
        axes[0].set_yscale("symlog", linthresh=0.1)      # the embeddings' KL dwarfs the rest
        axes[0].legend(fontsize=8)
        axes[1].plot(x, self.logit_accuracy, marker=".", label="logit lens")
        axes[1].plot(x, self.tuned_accuracy, marker=".", label="tuned lens")
        axes[1].set(xlabel="layer (0 = embeddings)", ylabel="next-token accuracy", ylim=(0, 1))
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        return fig


def split_data(data, test_fraction: float, seed: int, limit: int | None = None):
    """Training and held-out parts of texts, a Dataset (or reference) or an (N, T) id tensor."""
    from layerscope.data import Dataset, load_dataset

    from .probe import split_items

    if not 0.0 < test_fraction < 1.0:
        raise LayerscopeError(f"test_fraction must be between 0 and 1; got {test_fraction}")
    if isinstance(data, str):
        data = load_dataset(data, limit=limit, seed=seed)
    elif limit is not None:
        data = data[:limit] if not isinstance(data, Dataset) else data.subset(range(min(limit, len(data))))
    if isinstance(data, Tensor) and data.dim() == 2 and not data.is_floating_point():
        n = len(data)
        pick = lambda idx: data[torch.from_numpy(idx)]  # noqa: E731
    elif isinstance(data, Dataset):
        n = len(data)
        pick = lambda idx: data.subset(idx.tolist())  # noqa: E731
    elif isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        n = len(data)
        pick = lambda idx: [data[i] for i in idx]  # noqa: E731
    else:
        raise LayerscopeError("a tuned lens trains on texts, a Dataset or an (N, T) tensor of token ids")
    held = split_items(np.arange(n), test_fraction, 1, seed) < 0
    train, test = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train) < 1 or len(test) < 1:
        raise LayerscopeError(f"{n} items are too few to train a tuned lens and hold some out; "
                              f"pass at least {int(np.ceil(2 / test_fraction))}")
    return pick(train), pick(test)


def train_tuned_lens(model, data, *, epochs: int = 1, steps: int | None = None, lr: float = 1e-3,
                     tokens_per_step: int = 256, batch_size: int = 8, max_length: int | None = 128,
                     limit: int | None = None, test_fraction: float = 0.2, blocks: str | None = None,
                     seed: int = 0, progress: bool = False) -> TunedLensResult:
    """Train a tuned lens of a causal LM on part of ``data`` and compare it with the logit lens on
    the held-out rest. ``steps`` (one per batch) caps the training; each step samples up to
    ``tokens_per_step`` real tokens of its batch for every layer.

    Under a process group (torchrun) the training is data-parallel: every step's batch is cut
    into one contiguous piece per rank (:func:`layerscope.distributed.shard_range`), the token
    sample is drawn over the whole batch as one process draws it, each rank back-propagates the
    sampled tokens of its piece, and the gradients (and the loss) are summed over the ranks
    (:func:`layerscope.distributed.all_reduce_sum`) before the clipped Adam step, so every rank
    holds the same lens, equal to one process's up to float rounding. The held-out pass is a
    sweep, sharded and combined like any other.
    """
    if epochs < 1 or (steps is not None and steps < 1) or tokens_per_step < 1 or lr <= 0:
        raise LayerscopeError("epochs, steps and tokens_per_step must be positive integers and lr positive")
    stack = lens_stack(model, blocks)
    train, test = split_data(data, test_fraction, seed, limit)
    with evaluating(stack.loaded):
        return _train(stack, train, test, epochs=epochs, steps=steps, lr=lr,
                      tokens_per_step=tokens_per_step, batch_size=batch_size,
                      max_length=max_length, seed=seed, blocks=blocks, progress=progress)


def _my_sample(gen: torch.Generator, counts: list[int], rank: int, k: int) -> tuple[Tensor, int]:
    """Of ``k`` real tokens drawn over the whole batch (the ranks' pieces hold ``counts`` tokens,
    in rank order), the positions within this rank's piece, and how many were drawn in all."""
    pick = torch.randperm(sum(counts), generator=gen)[:k]
    lo = sum(counts[:rank])
    mine = pick[(pick >= lo) & (pick < lo + counts[rank])] - lo
    return mine, len(pick)


def _summed(lens: nn.Module, total: float) -> float:
    """Sum every rank's gradients of ``lens`` (in place) and the loss ``total``; returns the sum."""
    from layerscope import distributed

    params = list(lens.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params] + [torch.tensor([total], device=params[0].device,
                                                       dtype=params[0].dtype)])
    distributed.all_reduce_sum(flat)
    at = 0
    for p in params:
        p.grad = flat[at:at + p.numel()].view_as(p).clone()
        at += p.numel()
    return float(flat[-1])


def _train(stack, train, test, *, epochs, steps, lr, tokens_per_step, batch_size, max_length,
           seed, blocks=None, progress=False) -> TunedLensResult:
    from layerscope import distributed
    from layerscope.progress import bar as progress_bar
    from layerscope.sweep import as_source, model_device, sweep

    from .lens import LensReducer

    device = model_device(stack.module)
    norm_p = {k: v.detach() for k, v in stack.norm.named_parameters()}
    head_p = {k: v.detach() for k, v in stack.head.named_parameters()}
    head_dtype = next(iter(head_p.values())).dtype if head_p else torch.float32

    def decode(h: Tensor) -> Tensor:
        z = functional_call(stack.norm, norm_p, (h.to(head_dtype),))
        return functional_call(stack.head, head_p, (z,)).float()

    layers = ["embeddings"] + stack.names
    rank, size = distributed.world()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    lens, opt, losses = None, None, []
    per_epoch = -(-len(train) // batch_size)
    source = as_source(train)   # normalised once; every step reads one batch of it
    n_steps = min(steps, epochs * per_epoch) if steps else epochs * per_epoch
    bar = progress_bar(n_steps, desc="tuned lens", unit="step", enabled=progress and rank == 0)
    for step in range(n_steps):
        lo = (step % per_epoch) * batch_size
        piece = distributed.shard_range(min(lo + batch_size, len(train)), size, rank, start=lo)
        enc = next(iter_batches(stack.loaded, source, batch_size=batch_size, max_length=max_length,
                                part=piece), (None,))[0]
        states = None
        if enc is not None:
            enc = prepare(stack, enc)
            with torch.no_grad():
                output, states = _states(stack, enc)
            mask = real_mask(enc, token_ids(enc).shape)
            final = F.log_softmax(main_output(output, "causal-lm").float()[mask], dim=-1)
        mine = (len(final), states[0].shape[-1]) if states is not None else (0, None)
        gathered = [mine] if size == 1 else distributed.all_gather(mine)  # tokens, width per rank
        counts = [c for c, _ in gathered]
        if lens is None:
            lens = TunedLens(layers, next(w for _, w in gathered if w)).to(device)
            opt = torch.optim.Adam(lens.parameters(), lr=lr)
        pick, drawn = _my_sample(gen, counts, rank, tokens_per_step)
        opt.zero_grad()
        total = 0.0
        if len(pick):
            pick = pick.to(final.device)
            final = final[pick]
            final_p = final.exp()
            for layer in range(len(layers) - 1):
                h = states[layer][mask][pick].detach()
                logp = F.log_softmax(decode(lens.translate(layer, h)), dim=-1)
                kl = (final_p * (final - logp)).sum(-1).sum() / drawn
                kl.backward()
                total += float(kl.detach())
        if size > 1:
            total = _summed(lens, total)
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        losses.append(total / (len(layers) - 1))
        bar.update(1)
    bar.close()
    if lens is None:
        raise LayerscopeError("the training part of the data gave no batch; pass more items")
    lens.eval()
    logit, tuned = LensReducer(stack), LensReducer(stack, lens.translate)
    sweep(stack.loaded, test, reducers=[logit, tuned], blocks=blocks, batch_size=batch_size,
          max_length=max_length, progress=progress)
    a, b = logit.result(), tuned.result()
    return TunedLensResult(
        model=stack.loaded.ref, layers=layers, logit_kl=a["kl"], tuned_kl=b["kl"],
        logit_accuracy=a["accuracy"], tuned_accuracy=b["accuracy"],
        logit_agreement=a["top1_agreement"], tuned_agreement=b["top1_agreement"],
        train_loss=losses, steps=len(losses), n_train_items=len(train), n_test_items=len(test),
        n_test_tokens=logit.stats.n_tokens, seconds=time.perf_counter() - t0, lens=lens)


__all__ = ["TunedLens", "TunedLensResult", "train_tuned_lens", "split_data"]
