"""Objectives per task: the training loss on a batch and the held-out evaluation.

* classification – cross-entropy on logits (or NLL on log-probabilities); metric: accuracy;
* regression     – mean squared error; metric: held-out MSE (and R²; for series windows the MSE
  of the persistence forecast "next value = last value" as a baseline);
* causal-lm      – next-token cross-entropy; metric: held-out loss in nats per token;
* gan            – alternating discriminator / generator steps (see :class:`GAN`);
* autoencoder    – reconstruction MSE; metric: AUROC (scikit-learn ``roc_auc_score``) of the
  reconstruction error separating held-out items from planted anomalies: the same items with
  their features shuffled (a fixed random permutation per item), which keeps every item's
  values but destroys its structure.

Example:
    >>> import torch
    >>> obj = objective("classification", "cross-entropy")
    >>> float(obj.loss(torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2), torch.tensor([0]))) < 0.2
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from layerscope.errors import LayerscopeError

from .losses import DEFAULT_LOSS

TASKS = ("classification", "regression", "causal-lm", "autoencoder", "gan")


class Objective:
    """Loss on a batch and evaluation on the held-out split for one task.

    ``evaluate(run, batches)`` gets ``run(items) -> model output`` and an iterable of
    ``(items, labels)`` held-out batches and returns the held-out figures.
    """

    metric = "eval_loss"
    higher_is_better = False

    def __init__(self, task: str, loss: str):
        self.task, self.loss_name = task, loss

    def inputs(self, items):
        """What the model is called with for these items (the targets are separate)."""
        return items

    def loss(self, output: Tensor, items, labels) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, run, batches) -> dict:
        total, n = 0.0, 0
        self._begin()
        for items, labels in batches:
            out = run(items)
            total += float(self.loss(out, items, labels)) * len(items)
            n += len(items)
            self._update(out, items, labels)
        figures = {"eval_loss": total / max(n, 1)}
        figures.update(self._finish(run))
        return figures

    def _begin(self) -> None:
        pass

    def _update(self, out, items, labels) -> None:
        pass

    def _finish(self, run) -> dict:
        return {}


class Classification(Objective):
    metric, higher_is_better = "accuracy", True

    def loss(self, output, items, labels):
        labels = labels.to(output.device).long()
        if self.loss_name == "nll":
            return F.nll_loss(output, labels)
        return F.cross_entropy(output, labels)

    def _begin(self):
        self._right, self._n = 0, 0

    def _update(self, out, items, labels):
        self._right += int((out.argmax(-1).cpu() == labels.cpu()).sum())
        self._n += len(labels)

    def _finish(self, run):
        return {"accuracy": self._right / max(self._n, 1)}


class Regression(Objective):
    metric = "eval_mse"

    def loss(self, output, items, labels):
        labels = labels.to(output.device).float()
        pred = output.reshape(labels.shape) if output.numel() == labels.numel() else output
        return F.mse_loss(pred.float(), labels)

    def _begin(self):
        self._p, self._y, self._last = [], [], []

    def _update(self, out, items, labels):
        self._p.append(out.float().reshape(-1).cpu())
        self._y.append(labels.float().reshape(-1).cpu())
        if isinstance(items, Tensor) and items.dim() == 3 and items.shape[-1] == 1:
            self._last.append(items[:, -1, 0].float().cpu())

    def _finish(self, run):
        p, y = torch.cat(self._p), torch.cat(self._y)
        mse = float(((p - y) ** 2).mean())
        var = float(y.var(unbiased=False))
        out = {"eval_mse": mse, "r2": 1 - mse / var if var > 0 else None}
        if self._last and len(torch.cat(self._last)) == len(y):
            out["persistence_mse"] = float(((torch.cat(self._last) - y) ** 2).mean())
        return out


class CausalLM(Objective):
    def loss(self, output, items, labels):
        target = labels.to(output.device)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1))


class Autoencoder(Objective):
    metric, higher_is_better = "auroc", True

    def loss(self, output, items, labels):
        return F.mse_loss(output.float(), items.to(output.device).float())

    def _begin(self):
        self._normal, self._odd = [], []

    def _update(self, out, items, labels):
        err = (out.float() - items.to(out.device).float()) ** 2
        self._normal.append(err.flatten(1).mean(1).cpu())
        planted = planted_anomalies(items, seed=len(self._odd))
        rec = self._run(planted)
        self._odd.append(((rec.float() - planted.to(rec.device).float()) ** 2)
                         .flatten(1).mean(1).cpu())

    def evaluate(self, run, batches):
        self._run = run
        return super().evaluate(run, batches)

    def _finish(self, run):
        return {"auroc": auroc(torch.cat(self._normal), torch.cat(self._odd))}


def planted_anomalies(items: Tensor, seed: int = 0) -> Tensor:
    """Each item with its features shuffled by its own random permutation (same values, no form)."""
    flat = items.reshape(len(items), -1)
    gen = torch.Generator().manual_seed(seed)
    keys = torch.rand(flat.shape, generator=gen)
    order = keys.argsort(dim=1)
    return torch.gather(flat, 1, order.to(flat.device)).reshape(items.shape)


def auroc(normal_scores: Tensor, anomaly_scores: Tensor) -> float:
    """AUROC of scores separating anomalies (1) from normal items (0), by scikit-learn."""
    from sklearn.metrics import roc_auc_score

    y = [0] * len(normal_scores) + [1] * len(anomaly_scores)
    s = torch.cat([normal_scores, anomaly_scores]).double().cpu().numpy()
    return float(roc_auc_score(y, s))


def unigram_entropy(tokens: Tensor) -> float:
    """Entropy in nats of the token frequencies (the loss of the best context-free model)."""
    counts = torch.bincount(tokens.reshape(-1)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def objective(task: str, loss: str | None = None) -> Objective:
    """The objective for ``task`` with ``loss`` (default: the task's usual loss)."""
    classes = {"classification": Classification, "regression": Regression,
               "causal-lm": CausalLM, "autoencoder": Autoencoder, "gan": GAN}
    if task not in classes:
        known = ", ".join(classes)
        raise LayerscopeError(f"cannot train task {task!r}; use one of: {known}")
    return classes[task](task, loss or DEFAULT_LOSS[task])


def nats(x: float) -> str:
    return f"{x:.3f} nats ({x / math.log(2):.3f} bits)"


class GAN(Objective):
    """Alternating steps: the discriminator on real (label 1) and generated (label 0) items with
    ``BCEWithLogitsLoss``, then the generator to make the discriminator say "real".

    Judged on the held-out split by a classifier two-sample test (Lopez-Paz & Oquab 2017): the
    5-fold cross-validated accuracy of scikit-learn's logistic regression telling held-out real
    items from as many generated ones (0.5 = indistinguishable, 1.0 = trivially told apart;
    lower is better), plus ``mean_gap``, the mean absolute difference of the per-feature means.
    """

    metric = "c2st_accuracy"

    def loss(self, output, items, labels):
        raise NotImplementedError("the GAN trains with its own two-step loop")

    @torch.no_grad()
    def evaluate(self, run, batches) -> dict:
        module = self.module
        real = torch.cat([items.flatten(1).float() for items, _ in batches])
        device = next(module.parameters()).device
        gen = torch.Generator(device=device).manual_seed(0)
        z = torch.randn(len(real), module.config.noise_dim, generator=gen, device=device)
        fake = module.generator(z).float().cpu()
        d_real = module.discriminator(real.to(device)).reshape(-1)
        d_fake = module.discriminator(fake.to(device)).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
            F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        return {"eval_loss": float(loss), "c2st_accuracy": c2st_accuracy(real, fake),
                "mean_gap": float((real.mean(0) - fake.mean(0)).abs().mean())}


def c2st_accuracy(real: Tensor, fake: Tensor, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic regression separating ``real`` from ``fake``."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = torch.cat([real, fake]).double().numpy()
    y = [1] * len(real) + [0] * len(fake)
    folds = StratifiedKFold(n_splits=min(5, len(real), len(fake)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_score(LogisticRegression(max_iter=500), x, y, cv=folds)
    return float(scores.mean())
