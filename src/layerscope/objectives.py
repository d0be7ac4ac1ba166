"""Task objectives: how good a model's output is, per task, summed exactly over batches.

One module for every analysis that scores a model's output against the intact model or labels
(layer removal in :mod:`layerscope.analyses.importance`, surgery's before/after quality in
:mod:`layerscope.surgery.measure` and prune sensitivity):

- causal LMs: next-token loss and perplexity over real tokens (padding masked);
- encoders: ``1 - cos`` between the original and the new mean-pooled, L2-normalised embedding
  (and per real token between the final hidden states);
- classifiers: accuracy and loss with labels, else KL(original ‖ new) of the class distribution;
- regression: mean squared error against float labels, else the output's mean squared change;
- anything else: ``1 - cos`` between the original and the new flattened outputs.

Each :class:`Objective` accumulates sums keyed by what was changed (a tuple of block indices;
``()`` is the intact model), so many variants are scored in one pass. :class:`Quality` scores
two models (before and after a surgery) on the same batches.

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> obj = make_objective("classification", torch.tensor([0, 1]))
    >>> enc = SimpleNamespace(mask=None, kwargs={}, args=())
    >>> obj.begin(enc, torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]))
    >>> obj.add((0,), torch.tensor([[2.0, 0.0], [2.0, 0.0]]))
    >>> obj.name, obj.value(())["metric"], obj.value((0,))["metric"]
    ('accuracy', 1.0, 0.5)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from layerscope.errors import LayerscopeError


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


def check_class_labels(labels: Tensor, logits: Tensor) -> None:
    """Refuse labels that are not one class index per item of ``logits`` ``(B, C)``.

    Example:
        >>> import torch
        >>> check_class_labels(torch.tensor([0, 1]), torch.zeros(2, 2))
        >>> check_class_labels(torch.zeros(2, 64, dtype=torch.long), torch.zeros(2, 2))
        Traceback (most recent call last):
        ...
        layerscope.errors.LayerscopeError: the data's labels are 64 per item (one per position?), but the model gives one of 2 classes per item, so they cannot score it; use data labelled with one class (0-1) per item, or data without labels to compare with the intact model's output
    """
    n_classes = logits.shape[-1]
    fix = (f"use data labelled with one class (0-{n_classes - 1}) per item, or data without "
           "labels to compare with the intact model's output")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise LayerscopeError(f"the data's labels are numbers, not classes, but the model gives "
                              f"one of {n_classes} classes per item; {fix}")
    if labels.dim() != 1 or logits.dim() != 2 or len(labels) != len(logits):
        per_item = int(labels[0].numel()) if labels.dim() and len(labels) else 0
        shape = (f"{per_item} per item (one per position?)" if labels.dim() > 1
                 else f"of shape {tuple(labels.shape)}")
        out = (f"one of {n_classes} classes per item" if logits.dim() == 2
               else f"an output of shape {tuple(logits.shape)}")
        raise LayerscopeError(f"the data's labels are {shape}, but the model gives {out}, so "
                              f"they cannot score it; {fix}")
    if len(labels) and not bool(((labels >= 0) & (labels < n_classes)).all()):
        raise LayerscopeError(f"the data's labels run from {int(labels.min())} to "
                              f"{int(labels.max())}, but the model has {n_classes} classes; {fix}")


class Objective(ABC):
    """Accumulates the effect of each removal (keyed by a tuple of block indices)."""

    name = ""

    def __init__(self):
        self.sums: dict[tuple, dict[str, float]] = {}

    def _add(self, key, **values):
        slot = self.sums.setdefault(key, {})
        for k, v in values.items():
            slot[k] = slot.get(k, 0.0) + float(v)

    @abstractmethod
    def begin(self, enc, reference: Tensor, labels):
        """Start a batch: keep what ``add`` compares against and score the intact ``reference``."""

    @abstractmethod
    def add(self, key: tuple, output: Tensor) -> None:
        """Add the batch's ``output`` with the blocks in ``key`` changed to that key's sums."""

    @abstractmethod
    def value(self, key: tuple) -> dict[str, float]:
        """The key's summed measure: ``{"metric": ..., ...}``."""

    def add_final(self, key: tuple, h: Tensor, stack) -> None:
        """Add the output computed by the model's tail from the last block's output ``h``."""
        self.add(key, stack.tail(h))


class LMObjective(Objective):
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


class EmbeddingObjective(Objective):
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


class ClassifierObjective(Objective):
    """Accuracy and cross-entropy with labels; KL(original ‖ new) of the class distribution without."""

    def __init__(self, with_labels: bool):
        super().__init__()
        self.with_labels = with_labels
        self.name = "accuracy" if with_labels else "kl"

    def begin(self, enc, reference, labels):
        if self.with_labels and labels is None:
            raise LayerscopeError("some batches have labels and some do not; pass labels for every item")
        if labels is not None:
            check_class_labels(labels, reference)
        self.labels = labels.to(reference.device).long() if labels is not None else None
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


class OutputObjective(Objective):
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


class RegressionObjective(Objective):
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


def make_objective(task: str, labels) -> Objective:
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


# --- before and after a surgery ----------------------------------------------------------------


def quality_task(loaded) -> str:
    """The quality measure's task family: causal-lm, encoder, classification or other."""
    from layerscope.layouts import infer_task

    task = infer_task(loaded)
    return task if task in ("causal-lm", "encoder", "classification") else "other"


class Quality:
    """Accumulates the quality of before and after over batches."""

    def __init__(self, task: str, with_labels: bool):
        self.task, self.with_labels = task, with_labels
        self.sums = {"before": 0.0, "after": 0.0}
        self.count = 0

    @property
    def metric(self) -> str:
        return {"causal-lm": "perplexity", "encoder": "embedding cosine",
                "classification": "accuracy" if self.with_labels else "agreement"}.get(
            self.task, "output cosine")

    def add(self, enc, labels, before: Tensor, after: Tensor) -> None:
        before, after = before.float(), after.float()
        if self.task == "causal-lm":
            ids = token_ids(enc)
            mask = real_mask(enc, ids.shape)[:, 1:]
            for key, logits in (("before", before), ("after", after)):
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(),
                                       reduction="none").view_as(mask)
                self.sums[key] += float(loss[mask].sum())
            self.count += int(mask.sum())
        elif self.task == "encoder":
            mask = real_mask(enc, before.shape[:2]).unsqueeze(-1).float()
            emb = [F.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
                   for h in (before, after)]
            self.sums["before"] += float(before.shape[0])
            self.sums["after"] += float((emb[0] * emb[1]).sum(-1).sum())
            self.count += before.shape[0]
        elif self.task == "classification":
            if self.with_labels:
                check_class_labels(labels, before)
            target = labels.to(before.device) if self.with_labels else before.argmax(-1)
            self.sums["before"] += float((before.argmax(-1) == target).sum())
            self.sums["after"] += float((after.argmax(-1) == target).sum())
            self.count += before.shape[0]
        else:
            a, b = before.flatten(1), after.flatten(1)
            self.sums["before"] += float(a.shape[0])
            self.sums["after"] += float(F.cosine_similarity(a, b, dim=-1).sum())
            self.count += a.shape[0]

    def values(self) -> tuple[float, float]:
        if self.count == 0:
            raise LayerscopeError("no items to measure quality on; pass data with at least one item")
        mean = [self.sums[k] / self.count for k in ("before", "after")]
        if self.task == "causal-lm":
            return math.exp(mean[0]), math.exp(mean[1])
        return mean[0], mean[1]


__all__ = ["Objective", "LMObjective", "EmbeddingObjective", "ClassifierObjective",
           "OutputObjective", "RegressionObjective", "make_objective", "Quality", "quality_task",
           "token_ids", "real_mask", "check_class_labels"]
