"""Training runs for the studies: zoo networks trained by :func:`layerscope.train.train` on a
seeded split, then read back (held-out and training accuracy, per-layer gradient norms from
``metrics.jsonl``, units that never change).

Example:
    >>> import tempfile
    >>> run = train_once("mlp:depth=1,width=16", "digits", seed=0, epochs=1, workdir=tempfile.mkdtemp())
    >>> 0.0 <= run.test_accuracy <= 1.0, run.steps > 0
    (True, True)
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

_SPLITS: dict = {}


def split(data: str, seed: int, limit: int | None = None):
    """(train, held-out) parts of a named data set: a stratified 80/20 split seeded by ``seed``."""
    from layerscope.data import load_dataset

    key = (data, seed, limit)
    if key not in _SPLITS:
        ds = load_dataset(data, limit=limit, seed=0)
        _SPLITS[key] = ds.split(0.2, seed=seed)
    return _SPLITS[key]


def build(spec: str | nn.Module, seed: int) -> nn.Module:
    """A zoo network with weights initialised from ``seed`` (a module is used as given)."""
    if isinstance(spec, nn.Module):
        return spec
    from layerscope import zoo

    torch.manual_seed(seed)
    return zoo.build(spec)


@dataclass
class Run:
    """One finished training run, read back."""

    spec: str
    seed: int
    module: nn.Module
    history: list[dict]
    steps: int
    seconds: float
    test_accuracy: float
    train_accuracy: float
    grads: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # layer -> (step, norm)
    result: object = None
    diverged: bool = False           # the loss became NaN/inf (accuracy measured as it stands)

    def accuracy_at_epochs(self) -> list[float]:
        return [h.get("accuracy", float("nan")) for h in self.history]


def accuracy(module: nn.Module, part, batch_size: int = 512) -> float:
    """Accuracy of ``module`` on a labelled tensor data set, in eval mode (restored after)."""
    from layerscope.modes import evaluating

    correct = 0
    with evaluating(module), torch.no_grad():
        for i in range(0, len(part), batch_size):
            x = part.items[i:i + batch_size]
            out = torch.nan_to_num(module(x), nan=-1e30)    # a diverged network predicts nothing
            correct += int((out.argmax(-1) == part.labels[i:i + batch_size]).sum())
    return correct / max(len(part), 1)


def read_grads(path: str | Path | None) -> dict[str, list[tuple[int, float]]]:
    """Gradient norms per layer over steps from a training run's ``metrics.jsonl``."""
    out: dict[str, list[tuple[int, float]]] = {}
    if not path or not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "module" and row.get("grad_norm") is not None:
            out.setdefault(row["layer"], []).append((int(row["step"]), float(row["grad_norm"])))
    return out


def train_once(spec: str | nn.Module, data: str, *, seed: int, epochs: int, workdir: str | None = None,
               lr: float = 1e-3, batch_size: int = 64, monitor_every: int = 0,
               clip_grad: float | None = None, limit: int | None = None, optimizer: str = "adam",
               name: str | None = None, freeze=None) -> Run:
    """Train ``spec`` (a zoo spec or a module) on the seeded split of ``data`` with the library's
    training loop; checkpoints go to a scratch folder under ``workdir``."""
    from layerscope.train import train

    train_part, test_part = split(data, seed, limit)
    module = build(spec, seed)
    root = Path(workdir or tempfile.mkdtemp(prefix="layerscope-study-"))
    root.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    from layerscope.train import NonFiniteLossError

    t0 = time.perf_counter()
    diverged = False
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # small networks: a second thread only adds synchronisation
    with contextlib.redirect_stderr(io.StringIO()):     # the monitor's per-layer warnings
        try:
            res = train(module, train_part, eval_data=test_part, out_dir=out, epochs=epochs, lr=lr,
                        batch_size=batch_size, seed=seed, monitor_every=monitor_every,
                        clip_grad=clip_grad, progress=False, plots=False, optimizer=optimizer,
                        freeze=freeze)
        except NonFiniteLossError as exc:     # a diverged run is an outcome, not an error
            res, diverged = exc.result, True
        finally:
            torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    return Run(spec=name or (spec if isinstance(spec, str) else type(spec).__name__), seed=seed,
               module=module, history=res.history, steps=res.steps, seconds=seconds,
               test_accuracy=accuracy(module, test_part), train_accuracy=accuracy(module, train_part),
               grads=read_grads(res.metrics_file or out / "metrics.jsonl"), result=res,
               diverged=diverged)


def constant_units(module: nn.Module, part, layer_modules: list[nn.Module], tol: float = 1e-6) -> list[float]:
    """Per given module: the share of its output units that take the same value (within ``tol``)
    on every item of ``part`` — units that pass no signal (dead ReLUs, saturated sigmoids)."""
    from layerscope.layers import Capture, Layer
    from layerscope.modes import evaluating

    names = {id(m): n for n, m in module.named_modules()}
    layers = [Layer(i, names.get(id(m), f"module{i}"), m, "layer", type(m).__name__)
              for i, m in enumerate(layer_modules)]
    with evaluating(module), torch.no_grad(), Capture(module, layers) as cap:
        cap.call(module, part.items)
        outs = {i: [cap[layer.name].detach().flatten(1)] for i, layer in enumerate(layers)}
    fracs = []
    for i in range(len(layer_modules)):
        y = torch.cat(outs[i])
        spread = (y.max(0).values - y.min(0).values)
        fracs.append(float((spread <= tol).float().mean()))
    return fracs


def param_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def first_value(series: list[tuple[int, float]], upto: int | None = None) -> float:
    """Median gradient norm over the logged steps up to ``upto`` (all when None)."""
    vals = [g for s, g in series if upto is None or s <= upto]
    return float(np.median(vals)) if vals else float("nan")
