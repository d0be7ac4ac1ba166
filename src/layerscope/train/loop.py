"""The fit loop: seeded batches, per-layer monitors, held-out evaluation, checkpoints, resume.

``train`` trains the model it is given: a module or ``LoadedModel`` you pass in is updated in
place (that is the point), but its ``requires_grad`` flags and train/eval modes are put back as
they were afterwards, and it is only moved when you name a ``device``. A reference string
(zoo spec, built-in name, checkpoint folder) is loaded fresh; a zoo spec is built after
``torch.manual_seed(seed)`` so its initial weights are reproducible too.

Files written to ``out_dir``: ``best/`` and ``last/`` checkpoints (``model.safetensors`` +
``layerscope.json``, loadable with ``layerscope.models.load_model`` for zoo networks),
``train_state.pt`` (optimizer, RNG and position, for ``resume=True``), ``metrics.jsonl`` (the
per-layer monitors; ``metrics.csv`` with ``metrics_csv=True``), ``monitor_*.png`` plots,
``history.png`` and ``result.json``.

Example:
    >>> import tempfile, torch
    >>> from layerscope.train import train
    >>> x = torch.randn(200, 4); y = (x[:, 0] > 0).long()
    >>> r = train("mlp:in_features=4,width=16,depth=1,n_classes=2", (x, y),
    ...           out_dir=tempfile.mkdtemp(), epochs=3, batch_size=32, lr=0.01, progress=False)
    >>> r.history[-1]["accuracy"] > 0.8
    True
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from layerscope.errors import LayerscopeError

from .freezing import FreezePlan, param_groups, plan_freezing, restore
from .losses import DEFAULT_LOSS, check_loss_fits
from .diagnose import chance_baseline, diagnose
from .monitors import LayerMonitor, plot_grad_depth, plot_metrics, read_metrics
from .prepare import (Prepared, prepare, resolve_dataset, series_of, split_data,
                      split_series)
from .result import TrainResult
from .tasks import objective, unigram_entropy

STATE_FILE = "train_state.pt"
GRAD_DEPTH_PNG = "grad_norm_by_depth.png"
OPTIMIZERS = ("adam", "adamw", "sgd")


class NonFiniteLossError(LayerscopeError):
    """Training stopped on a NaN/inf loss or gradient; ``layer`` names where it first appeared."""

    def __init__(self, message: str, *, step: int, layer: str | None, result: TrainResult):
        super().__init__(message)
        self.step, self.layer, self.result = step, layer, result


def train(model, data, *, out_dir, epochs: int = 5, batch_size: int = 64, lr: float = 1e-3,
          optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 0, device=None,
          monitor_every: int = 50, clip_grad: float | None = None, freeze=None,
          freeze_bn: str = "none", layer_lr: dict | None = None, lr_decay: float | None = None,
          patience: int | None = None, resume: bool = False, progress: bool = True,
          task: str | None = None, loss: str | None = None, held_out: float = 0.2,
          eval_data=None, limit: int | None = None, max_length: int = 64,
          metrics_csv: bool = False, plots: bool = True, callbacks=(),
          save_every: int | None = None, force: bool = False) -> TrainResult:
    """Train ``model`` on ``data`` and watch every layer; see the module docstring.

    ``data``: a dataset name, a ``layerscope.data.Dataset``, a tensor ``X`` (autoencoders,
    token sequences, one series) or a pair ``(X, y)``; ``held_out`` of it is kept for
    evaluation unless ``eval_data`` is given; ``limit`` keeps N items of a named data set.

    ``task`` / ``loss`` default to the model's task and its usual loss. ``freeze``,
    ``freeze_bn``, ``layer_lr`` and ``lr_decay``: see :mod:`layerscope.train.freezing`.
    ``monitor_every`` (0 = off): see :mod:`layerscope.train.monitors`. ``clip_grad`` clips the
    total gradient norm. ``patience`` stops after that many epochs without a better held-out
    metric. ``max_length`` truncates texts for tokenizer models. ``plots=False`` skips the PNG
    files. ``callbacks`` are called as ``fn(step=, epoch=, loss=)`` after every optimizer step.

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves ``last/`` and the state and
    returns with ``stopped="interrupted"``; the state is also saved at every epoch end and
    every ``save_every`` steps (default: every 5 minutes), so after a hard kill ``resume=True``
    goes back to the last save. Either way the resumed run reaches the same weights, metrics
    and flags as an uninterrupted one: the state holds the weights, optimizer, every RNG
    (torch, CUDA, numpy, Python), the position in the epoch's seeded order, the running loss
    and the monitors' state, written atomically.

    ``out_dir`` must be new, empty or a previous ``train`` run's folder (``force=True`` writes
    anywhere); it is checked before any work starts.
    A NaN/inf loss raises :class:`NonFiniteLossError` naming the first layer whose output (or
    gradient) was not finite; the checkpoints written before it are kept.
    """
    _check_settings(epochs, batch_size, lr, optimizer, monitor_every, clip_grad, patience,
                    save_every, weight_decay, lr_decay)
    started = time.perf_counter()
    out = check_run_dir(out_dir, force=force, resume=resume)
    state = read_state(out) if resume else None
    dataset = resolve_dataset(data, limit=limit, seed=seed)
    module, info = resolve_model(model, dataset, seed=seed, task=task)
    if info["sequence_model"] and eval_data is None and series_of(dataset) is not None:
        train_part, eval_part = split_series(series_of(dataset), held_out, info["input_shape"][0])
        data_name = getattr(dataset, "name", "series")
    else:
        train_part, eval_part, data_name = split_data(dataset, held_out=held_out, seed=seed,
                                                      eval_data=eval_data)
    prepared = prepare(train_part, eval_part, name=data_name, info=info)
    task = info["task"]
    if task in ("classification", "regression") and prepared.train.labels is None:
        raise LayerscopeError(
            f"{task} needs labels, and data {data_name!r} has none; give labelled data (an "
            f".npz with 'labels' or 'y', a CSV/JSONL label column, (X, y)) or another --task "
            f"(autoencoder)")
    obj = objective(task, loss)
    dev = _device(module, device)
    settings = {"model": _portable_factory(info["ref"]), "data": data_name, "task": task, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                "weight_decay": weight_decay, "seed": seed, "monitor_every": monitor_every,
                "clip_grad": clip_grad, "freeze": freeze, "freeze_bn": freeze_bn,
                "layer_lr": layer_lr, "lr_decay": lr_decay, "patience": patience,
                "loss": obj.loss_name, "held_out": held_out, "n_train": len(prepared.train),
                "n_held_out": len(prepared.held_out), "device": str(dev)}
    settings.update({k: v for k, v in prepared.meta.items() if v is not None})
    if task == "causal-lm":
        settings["unigram_entropy"] = unigram_entropy(prepared.train.labels)
    log = _logger(progress)
    cuda = dev.type == "cuda"   # CPU kernels are deterministic already; switching costs imports
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    plan: FreezePlan | None = None
    try:
        if cuda:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(seed)
        plan = plan_freezing(module, freeze=freeze, freeze_bn=freeze_bn)
        run = _Runner(module, obj, info, dev, max_length)
        _check_fit(run, prepared, obj, batch_size)
        obj.module = module
        if task == "gan":
            if layer_lr or lr_decay:
                raise LayerscopeError("layer_lr / lr_decay are not supported for GANs; give lr")
            opt = OptimizerPair(
                _optimizer(optimizer, param_groups(module.generator, lr), lr, weight_decay, gan=True),
                _optimizer(optimizer, param_groups(module.discriminator, lr), lr, weight_decay,
                           gan=True))
        else:
            groups = param_groups(module, lr, layer_lr=layer_lr, lr_decay=lr_decay)
            opt = _optimizer(optimizer, groups, lr, weight_decay)
        out = claim_run_dir(out, force=force, resume=resume)   # files appear from here on
        if state is not None and state.get("monitor"):
            keep_first_bytes(out / "metrics.jsonl", state["monitor"]["metrics_bytes"])
        monitor = LayerMonitor(module, every=monitor_every, path=out / "metrics.jsonl",
                               log=log, csv=metrics_csv,
                               append=bool(state and state.get("monitor"))) \
            if monitor_every else None
        loop = _Loop(module=module, call=run, obj=obj, prepared=prepared, opt=opt, plan=plan,
                     monitor=monitor, out=out, info=info, settings=settings, log=log,
                     progress=progress, callbacks=callbacks, clip_grad=clip_grad,
                     patience=patience, epochs=epochs, batch_size=batch_size, seed=seed,
                     plots=plots, save_every=save_every)
        if state is not None:
            loop.load_state(state)
        else:
            loop.save_state()      # a run killed before its first save resumes from the start
        result = loop.run()
    finally:
        if cuda:
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        if plan is not None:
            restore(module, plan)
    result.seconds = time.perf_counter() - started
    result.to_json(out / "result.json")
    from layerscope.outputs import note_written

    note_written(out, run_files(out))
    return result


# -- the model ---------------------------------------------------------------------------------------
def resolve_model(model, train_part, *, seed: int, task: str | None):
    """(module, info): the module to train and what is known about feeding it."""
    from layerscope.models import LoadedModel, load_model

    spec, python_module = None, False
    if isinstance(model, str):
        ref = model.strip()
        if _is_zoo(ref):
            from layerscope.builtin_models import build_zoo, describe_zoo_module

            torch.manual_seed(seed)
            module = build_zoo(ref)
            loaded = describe_zoo_module(module, ref=ref, spec=ref)
            spec = ref
        else:
            loaded = load_model(ref)
            spec = (loaded.meta.get("checkpoint") or {}).get("zoo")
    elif isinstance(model, LoadedModel):
        loaded = model
        spec = loaded.meta.get("zoo_spec") or (loaded.meta.get("checkpoint") or {}).get("zoo")
    elif isinstance(model, nn.Module):
        loaded = load_model(model)
        spec = _zoo_name_of(model)
        python_module = spec is None
    else:
        raise LayerscopeError(
            f"cannot train a {type(model).__name__}; pass a model name, a checkpoint folder or "
            f"an nn.Module")
    module = loaded.module
    if loaded.modality == "text" and loaded.tokenizer is not None and \
            not hasattr(module, "head") and loaded.task in ("encoder", None):
        module, task = _with_head(loaded, train_part, seed, task)
        spec = HEAD_SPEC
    labels = _labels_of(train_part)
    inferred = getattr(module, "task", None) or loaded.task
    task = task or (inferred if inferred not in ("encoder", None) else None)
    if task is None and labels is not None:
        task = "regression" if labels.is_floating_point() else "classification"
    if task is None:
        raise LayerscopeError(
            f"cannot tell which task to train {loaded.ref!r} for; pass task= (classification, "
            f"regression, causal-lm or autoencoder)")
    config = getattr(module, "config", None)
    if spec == HEAD_SPEC:
        config = None
    info = {"ref": loaded.ref, "spec": spec, "task": task, "modality": loaded.modality,
            "tokenizer": loaded.tokenizer, "input_shape": loaded.input_shape,
            "integer_input": getattr(module, "input_dtype", None) == torch.long
            or loaded.meta.get("input_dtype") in ("int64", "long"),
            "vocab_size": getattr(config, "vocab_size", None),
            "sequence_model": hasattr(config, "cell"),
            "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {},
            "python_module": python_module}
    if spec == HEAD_SPEC:
        info["config"] = {"base": _portable_ref(loaded.ref), "n_out": module.head.out_features,
                          "task": task}
    return module, info


#: the checkpoint kind of a pretrained encoder with a new pooled head (see ``heads.PooledHead``)
HEAD_SPEC = "pooled-head"


def _portable_factory(ref):
    """A factory ``file.py:function`` with the file's absolute path, so the checkpoint that
    records it rebuilds from any working directory (with --trust-remote-code)."""
    if isinstance(ref, str) and ":" in ref:
        target, func = ref.rsplit(":", 1)
        if target.endswith(".py") and Path(target).expanduser().is_file():
            return f"{Path(target).expanduser().resolve()}:{func}"
    return ref


def _portable_ref(ref: str) -> str:
    """A model reference that still resolves from another working directory."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def _is_zoo(ref: str) -> bool:
    from layerscope.builtin_models import zoo_names

    return ref.split(":", 1)[0] in zoo_names() and not Path(ref).exists()


def _zoo_name_of(module: nn.Module) -> str | None:
    config = getattr(module, "config", None)
    if not dataclasses.is_dataclass(config):
        return None
    try:
        from layerscope import zoo

        for name in zoo.names():
            if type(config) is zoo.config_class(name):
                return name
    except Exception:
        return None
    return None


def _labels_of(part):
    labels = getattr(part, "labels", None)
    if labels is None and isinstance(part, tuple) and len(part) == 2:
        labels = part[1]
    return torch.as_tensor(labels) if labels is not None else None


def _with_head(loaded, train_part, seed: int, task: str | None):
    """A pretrained text encoder with a fresh head for the data's labels (transfer learning)."""
    from .heads import PooledHead

    labels = _labels_of(train_part)
    if labels is None:
        raise LayerscopeError(
            f"{loaded.ref!r} is an encoder: training it needs labelled data for a new head")
    task = task or ("regression" if labels.is_floating_point() else "classification")
    n_out = 1 if task == "regression" else int(labels.max()) + 1
    torch.manual_seed(seed)
    head = PooledHead(loaded.module, n_out, task=task)
    return head, task


def _device(module: nn.Module, device) -> torch.device:
    current = next(module.parameters()).device
    if device is None:
        return current
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LayerscopeError(f"unknown device {device!r}; use cpu or cuda (cuda:0, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LayerscopeError(f"device {device!r} is not available here; use device='cpu'")
    if dev != current:
        module.to(dev)   # asked for explicitly
    return dev


def _check_settings(epochs, batch_size, lr, optimizer, monitor_every, clip_grad, patience,
                    save_every=None, weight_decay=0.0, lr_decay=None):
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise LayerscopeError(f"{name}={value!r} must be a whole number of at least 1")
    if not lr > 0:
        raise LayerscopeError(f"lr={lr!r} must be above 0, e.g. 1e-3")
    if optimizer not in OPTIMIZERS:
        raise LayerscopeError(f"unknown optimizer {optimizer!r}; use one of: {', '.join(OPTIMIZERS)}")
    if monitor_every is not None and monitor_every < 0:
        raise LayerscopeError(f"monitor_every={monitor_every} must be 0 (off) or positive")
    if clip_grad is not None and not clip_grad > 0:
        raise LayerscopeError(f"clip_grad={clip_grad!r} must be above 0, e.g. 1.0")
    if patience is not None and patience < 1:
        raise LayerscopeError(f"patience={patience} must be at least 1 epoch")
    if not weight_decay >= 0:
        raise LayerscopeError(f"weight_decay={weight_decay!r} must be 0 or above, e.g. 0.01")
    if lr_decay is not None and not 0 < lr_decay <= 1:
        raise LayerscopeError(f"lr_decay={lr_decay!r} must lie in (0, 1], e.g. 0.8")
    if save_every is not None and (not isinstance(save_every, int) or save_every < 0):
        raise LayerscopeError(f"save_every={save_every!r} must be 0 (epoch ends only) or a "
                              f"number of steps")


def _optimizer(name: str, groups, lr: float, weight_decay: float, gan: bool = False):
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    betas = (0.5, 0.999) if gan else (0.9, 0.999)   # the usual GAN setting (Radford et al.)
    return cls(groups, lr=lr, weight_decay=weight_decay, betas=betas)


class OptimizerPair:
    """The generator's and the discriminator's optimizers, saved and restored together."""

    def __init__(self, g, d):
        self.g, self.d = g, d

    @property
    def param_groups(self):
        return self.g.param_groups + self.d.param_groups

    def state_dict(self) -> dict:
        return {"g": self.g.state_dict(), "d": self.d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])


# -- resume: the state of a run between two steps --------------------------------------------------
STATE_VERSION = 2
AUTO_SAVE_SECONDS = 300.0     # mid-epoch state saves when save_every is not given


class _StopRequested(Exception):
    """SIGINT / SIGTERM arrived; raised between two steps so the saved state is consistent."""


@contextmanager
def _deferred_signals(loop):
    """SIGINT and SIGTERM set ``loop.stop_signal``; the loop stops at the next step boundary.

    A second SIGINT while waiting raises KeyboardInterrupt at once (the state saved last is
    kept). Outside the main thread signals cannot be caught and the handlers are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and loop.stop_signal == "SIGINT":
            raise KeyboardInterrupt
        loop.stop_signal = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def rng_state() -> dict:
    """Every random stream a step may draw from: torch (CPU and CUDA), numpy and Python.

    Example:
        >>> import random
        >>> s = rng_state(); a = (torch.rand(1), random.random())
        >>> set_rng_state(s); (torch.rand(1), random.random()) == a
        True
    """
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back the streams saved by :func:`rng_state`."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def run_identity(loop) -> dict:
    """What must match between a saved run and the one resuming it."""
    s = loop.settings
    return {"seed": loop.seed, "batch_size": loop.batch_size, "n_train": len(loop.prepared.train),
            "model": s.get("model"), "data": s.get("data"), "optimizer": s.get("optimizer"),
            "lr": s.get("lr"), "task": s.get("task")}


def read_state(out: Path) -> dict:
    """The saved state of the run in ``out``; a missing or unreadable file is a one-line error."""
    path = out / STATE_FILE
    if not path.is_file():
        raise LayerscopeError(f"nothing to resume: {str(path)!r} is missing; train without "
                              f"--resume first")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:   # truncated / not a torch file / foreign pickle: all one answer
        raise LayerscopeError(
            f"cannot resume: {str(path)!r} is not a readable training state "
            f"({type(exc).__name__}); train again without --resume") from exc
    needed = ("version", "epoch", "batch", "step", "model", "optimizer", "rng", "history",
              "identity")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise LayerscopeError(f"cannot resume: {str(path)!r} is not a training state written "
                              f"by layerscope train; train again without --resume")
    if state["version"] != STATE_VERSION:
        raise LayerscopeError(
            f"cannot resume: {str(path)!r} was written by another layerscope version (state "
            f"version {state['version']}, this one reads {STATE_VERSION}); train again")
    return state


def check_run_dir(out_dir, *, force: bool, resume: bool) -> Path:
    """The run folder, checked before any work (see :mod:`layerscope.outputs`): new, empty, a
    previous run's, or anything with ``force``; nothing is created yet."""
    from layerscope.outputs import check_dir

    out = Path(out_dir).expanduser()
    if resume and not (out / STATE_FILE).is_file():
        raise LayerscopeError(f"nothing to resume: {str(out / STATE_FILE)!r} is missing; "
                              f"train without --resume first")
    return Path(check_dir(out, "train-run", force=force, recognise=_earlier_run))


def claim_run_dir(out_dir, *, force: bool, resume: bool) -> Path:
    """Create and mark the run folder once the data and model are known to fit."""
    from layerscope.outputs import claim_dir, remove_written

    folder = Path(claim_dir(out_dir, "train-run", force=force, recognise=_earlier_run))
    if not resume:
        remove_written(folder)      # a new run: the previous run's files go, nobody else's
    return folder


RUN_FILES = (STATE_FILE, "metrics.jsonl", "metrics.csv", "result.json", "history.png",
             GRAD_DEPTH_PNG)


def run_files(out: Path) -> list[str]:
    """The files a training run wrote in ``out`` (relative paths)."""
    names = [n for n in RUN_FILES if (out / n).is_file()]
    names += [p.name for p in sorted(out.glob("monitor_*.png"))]
    for sub in ("best", "last"):
        if (out / sub).is_dir():
            names += [p.relative_to(out).as_posix() for p in sorted((out / sub).rglob("*"))
                      if p.is_file()]
    return names


def _earlier_run(folder: Path):
    """A run folder written before folders were marked: its own files, else None."""
    return run_files(folder) if (folder / STATE_FILE).is_file() else None


def keep_first_bytes(path: Path, size: int) -> None:
    """Cut a file appended to after the last state save back to what that save had seen."""
    if path.is_file() and path.stat().st_size > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)


def _logger(progress: bool):
    from tqdm import tqdm

    def log(message: str) -> None:
        tqdm.write(message, file=sys.stderr)
    return log


# -- running the model on a batch ------------------------------------------------------------------------
class _Runner:
    """Calls the module on raw items (texts are tokenized, tensors moved to the device)."""

    def __init__(self, module, obj, info, device, max_length):
        self.module, self.obj, self.info, self.device = module, obj, info, device
        self.max_length = max_length

    def __call__(self, items):
        if self.info["modality"] == "text":
            enc = self.info["tokenizer"](list(items), padding=True, truncation=True,
                                         max_length=self.max_length, return_tensors="pt")
            kwargs = {k: v.to(self.device) for k, v in enc.items()
                      if k in ("input_ids", "attention_mask", "token_type_ids")}
            return self.module(**kwargs)
        return self.module(self.obj.inputs(items).to(self.device))


def _check_fit(run: _Runner, prepared: Prepared, obj, batch_size: int) -> None:
    """One forward pass on a few training items in eval mode (no statistics change) + checks."""
    if obj.task == "gan":
        return          # the GAN reads noise; prepare() checked the items against its output
    items, labels = prepared.train.take(torch.arange(min(len(prepared.train), batch_size, 8)))
    was = {m: m.training for m in run.module.modules()}
    run.module.eval()
    try:
        with torch.no_grad():
            output = run(items)
    except LayerscopeError:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        shape = tuple(items.shape[1:]) if isinstance(items, torch.Tensor) else "text"
        raise LayerscopeError(
            f"model {run.info['ref']!r} cannot run on items of shape {shape} from dataset "
            f"{prepared.name!r} (expects {run.info.get('input_shape')}): "
            f"{str(exc).splitlines()[0][:160]}") from exc
    finally:
        for m, flag in was.items():
            m.training = flag
    if not isinstance(output, torch.Tensor):
        from layerscope.layers import primary_tensor

        output = primary_tensor(output)
    task = obj.task
    if task == "gan":
        return
    if task == "autoencoder":
        if tuple(output.shape) != tuple(items.shape):
            raise LayerscopeError(
                f"an autoencoder must return its input's shape {tuple(items.shape)}; "
                f"model {run.info['ref']!r} returned {tuple(output.shape)}")
        return
    if task == "causal-lm":
        check_loss_fits(run.module, output, None, obj.loss_name, task)
        if output.shape[:2] != labels.shape[:2]:
            raise LayerscopeError(
                f"the language model returned {tuple(output.shape)} for inputs "
                f"{tuple(items.shape)}; it must give (batch, time, vocab) logits")
        return
    all_labels = prepared.train.labels if prepared.train.labels is not None else labels
    check_loss_fits(run.module, output, all_labels, obj.loss_name, task)


# -- the loop itself --------------------------------------------------------------------------------------
class _Loop:
    def __init__(self, *, module, call, obj, prepared, opt, plan, monitor, out, info, settings,
                 log, progress, callbacks, clip_grad, patience, epochs, batch_size, seed, plots,
                 save_every):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict] = []
        self.best, self.best_epoch, self.bad_epochs = None, None, 0
        self.loss_sum, self.loss_n = 0.0, 0
        self.best_path = self.last_path = None
        self.saved_step: int | None = None      # the step of the last train_state.pt written
        self._saved_at = time.monotonic()
        self._between_steps = True              # False while a step changes the model
        self.stop_signal: str | None = None     # set by the SIGINT / SIGTERM handler

    # -- state for resume --------------------------------------------------------------------------
    def save_state(self) -> Path:
        """Write everything the next step depends on, atomically (temp file + os.replace).

        Called only between steps, so the weights, optimizer, RNGs and counters agree.
        """
        state = {"version": STATE_VERSION, "epoch": self.epoch, "batch": self.batch,
                 "step": self.step,
                 "model": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
                 "optimizer": self.opt.state_dict(), "rng": rng_state(),
                 "history": self.history, "best": self.best, "best_epoch": self.best_epoch,
                 "bad_epochs": self.bad_epochs, "loss_sum": self.loss_sum,
                 "loss_n": self.loss_n, "monitor": self.monitor.state_dict()
                 if self.monitor is not None else None, "identity": run_identity(self)}
        target = self.out / STATE_FILE
        tmp = target.with_name(f".{STATE_FILE}.tmp-{os.getpid()}")
        try:
            torch.save(state, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.saved_step, self._saved_at = self.step, time.monotonic()
        return target

    def load_state(self, state: dict) -> None:
        """Continue from a state read by :func:`read_state` (checked against this run first)."""
        saved = state.get("identity") or {}
        for key, want in run_identity(self).items():
            if saved.get(key) != want:
                raise LayerscopeError(
                    f"cannot resume: the saved run has {key}={saved.get(key)!r} but this one has "
                    f"{want!r}; use the same settings (or train without --resume)")
        try:
            self.module.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise LayerscopeError(
                f"cannot resume from {str(self.out / STATE_FILE)!r}: it does not fit this model "
                f"({str(exc).splitlines()[0][:120]}); train without --resume") from exc
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.history, self.best = state["history"], state["best"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        self.loss_sum, self.loss_n = state["loss_sum"], state["loss_n"]
        if self.monitor is not None and state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])
        set_rng_state(state["rng"])
        self.saved_step = self.step
        for name in ("best", "last"):
            if (self.out / name).is_dir():
                setattr(self, f"{name}_path", str(self.out / name))

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, name: str, extra: dict) -> str:
        from layerscope.models import save_checkpoint

        info = self.info
        spec = info["spec"] or f"module:{type(self.module).__name__}"
        shape = info["input_shape"]
        items = self.prepared.train.items
        if shape is None and isinstance(items, torch.Tensor):
            shape = tuple(items.shape[1:])     # what it was trained on: enough to load it back
        path = save_checkpoint(self.module, self.out / name, spec=spec, config=info["config"],
                               task=info["task"], input_shape=shape,
                               extra={"trained": {**_plain(self.settings), **extra}})
        if info.get("python_module") and not getattr(self, "_noted", False):
            self._noted = True
            self.log(f"note: {type(self.module).__name__} was built in Python, so layerscope "
                     f"cannot rebuild it from {path}: build it again and load the weights with "
                     f"safetensors.torch.load_model(module, '{path}/model.safetensors')")
        return str(path)

    # -- epochs and steps --------------------------------------------------------------------------
    def order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.prepared.train), generator=gen)

    def run(self) -> TrainResult:
        self.stopped = "finished"
        try:
            with _deferred_signals(self):
                self._epochs()
        except _StopRequested:
            self._interrupted(f"{self.stop_signal} received")
        except KeyboardInterrupt:
            self._interrupted("interrupted")
        finally:
            if self.monitor is not None:
                self.monitor.close()
        return self.result()

    def _interrupted(self, why: str) -> None:
        """Save ``last/`` and the state when the model is between steps; else keep the last save."""
        self.stopped = "interrupted"
        if not self._between_steps:
            kept = (f"the state saved at step {self.saved_step}" if self.saved_step is not None
                    else "no saved state (resume starts over)")
            self.log(f"{why} in the middle of step {self.step}: kept {kept}; continue with "
                     f"resume=True (--resume)")
            return
        self.last_path = self.save_checkpoint("last", {"epoch": self.epoch,
                                                       "interrupted_at_step": self.step})
        self.save_state()
        self.log(f"{why} at step {self.step}: saved {self.last_path} and "
                 f"{self.out / STATE_FILE}; continue with resume=True (--resume)")

    def result(self) -> TrainResult:
        plots = []
        rows = read_metrics(self.monitor.path) if self.monitor is not None else []
        if self.monitor is not None and self.plots:
            plots = plot_metrics(self.monitor.path, self.out)
        flags = self.diagnose(rows)
        r = TrainResult(task=self.obj.task, metric=self.obj.metric,
                        higher_is_better=self.obj.higher_is_better, history=self.history,
                        best_metric=self.best, best_epoch=self.best_epoch, out_dir=str(self.out),
                        best_checkpoint=self.best_path, last_checkpoint=self.last_path,
                        state_file=str(self.out / STATE_FILE),
                        metrics_file=str(self.monitor.path) if self.monitor else None,
                        plots=plots, flags=flags, stopped=self.stopped, steps=self.step,
                        settings=_plain(self.settings))
        for line in r.flag_lines():
            self.log(f"flag: {line}")
        if self.plots:
            import matplotlib.pyplot as plt

            figures = [("history.png", r.plot)] if self.history else []
            if rows:
                figures.append((GRAD_DEPTH_PNG, lambda: plot_grad_depth(rows, flags)))
            for name, draw in figures:
                fig = draw()
                fig.savefig(self.out / name, dpi=90)
                plt.close(fig)
                r.plots.append(str(self.out / name))
        return r

    def diagnose(self, rows: list[dict]) -> list[dict]:
        """The run's flags (see :mod:`layerscope.train.diagnose`)."""
        baseline = None
        if self.obj.task == "classification" and self.prepared.held_out.labels is not None:
            train_labels = self.prepared.train.labels
            k = int(train_labels.max()) + 1 if train_labels is not None and len(train_labels) \
                else None
            baseline = chance_baseline(self.prepared.held_out.labels, k)
        return diagnose(rows, self.history, task=self.obj.task, baseline=baseline)

    def _epochs(self) -> None:
        from tqdm import tqdm

        while self.epoch < self.epochs:
            order = self.order(self.epoch)
            starts = list(range(0, len(order), self.batch_size))
            bar = tqdm(total=len(starts), initial=self.batch, disable=not self.progress,
                       desc=f"epoch {self.epoch + 1}/{self.epochs}", file=sys.stderr,
                       leave=False, dynamic_ncols=True)
            try:
                self._train_mode()
                while self.batch < len(starts):
                    self._check_stop()
                    index = order[starts[self.batch]:starts[self.batch] + self.batch_size]
                    self._between_steps = False
                    loss = self._step(index)
                    self.batch += 1
                    self.step += 1
                    self._between_steps = True
                    bar.update(1)
                    if self.step % 10 == 0 or self.batch == len(starts):
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    for fn in self.callbacks:
                        fn(step=self.step, epoch=self.epoch, loss=loss)
                    if self.batch < len(starts) and self._save_due():
                        self.save_state()
            finally:
                bar.close()
            self._check_stop()
            self._between_steps = False
            stop = self._end_epoch()
            self._between_steps = True
            if stop:
                self.stopped = "early-stopping"
                break

    def _check_stop(self) -> None:
        if self.stop_signal is not None:
            raise _StopRequested()

    def _save_due(self) -> bool:
        """A mid-epoch state save: every ``save_every`` steps, or by default every few minutes."""
        if self.save_every is None:
            return time.monotonic() - self._saved_at >= AUTO_SAVE_SECONDS
        return self.save_every > 0 and self.step % self.save_every == 0

    def _train_mode(self) -> None:
        self.module.train()
        self.plan.apply_modes()

    def _step(self, index: torch.Tensor) -> float:
        items, labels = self.prepared.train.take(index)
        if self.obj.task == "gan":
            return self._gan_step(items)
        watching = self.monitor is not None and self.monitor.active(self.step)
        with self.monitor.watch(self.step) if watching else nullcontext():
            output = self.call(items)
        loss = self.obj.loss(output, items, labels)
        if not torch.isfinite(loss):
            self._non_finite(items, f"the loss became {float(loss.detach())}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if watching:
            self.monitor.after_backward()
        if self.clip_grad is not None or watching:
            params = [p for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
            if self.clip_grad is not None:
                total = torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
            else:
                total = torch.nn.utils.get_total_norm([p.grad for p in params])
            if not torch.isfinite(total):
                self._non_finite_grad()
        if watching:
            self.monitor.before_step()
        self.opt.step()
        value = float(loss.detach())
        self.loss_sum += value * len(items)
        self.loss_n += len(items)
        if watching:
            self.monitor.finish(step=self.step, epoch=self.epoch, loss=value)
        return value

    def _gan_step(self, real: torch.Tensor) -> float:
        """One discriminator step, then one generator step; returns the sum of both losses."""
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        gan, dev = self.module, self.call.device
        real = real.to(dev)
        watching = self.monitor is not None and self.monitor.active(self.step)
        z = torch.randn(len(real), gan.config.noise_dim, device=dev)
        with self.monitor.watch(self.step) if watching else nullcontext():
            fake = gan.generator(z)
            d_real, d_fake = gan.discriminator(real), gan.discriminator(fake.detach())
            d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        if not torch.isfinite(d_loss):
            self._non_finite(real, f"the discriminator loss became {float(d_loss.detach())}")
        self.opt.d.zero_grad(set_to_none=True)
        d_loss.backward()
        if watching:
            self.monitor.after_backward()
            self.monitor.before_step()
        self.opt.d.step()
        d_out = gan.discriminator(fake)
        g_loss = bce(d_out, torch.ones_like(d_out))
        if not torch.isfinite(g_loss):
            self._non_finite(real, f"the generator loss became {float(g_loss.detach())}")
        self.opt.g.zero_grad(set_to_none=True)
        g_loss.backward()
        if watching:
            self.monitor.after_backward(only=gan.generator.parameters())
        self.opt.g.step()
        value = float(d_loss.detach()) + float(g_loss.detach())
        self.loss_sum += value * len(real)
        self.loss_n += len(real)
        if watching:
            self.monitor.finish(step=self.step, epoch=self.epoch, loss=value)
        return value

    def _end_epoch(self) -> bool:
        figures = self._evaluate()
        row = {"epoch": self.epoch + 1, "step": self.step,
               "train_loss": self.loss_sum / max(self.loss_n, 1), **figures}
        self.history.append(row)
        metric = figures.get(self.obj.metric)
        better = metric is not None and (
            self.best is None or (metric > self.best if self.obj.higher_is_better
                                  else metric < self.best))
        self.epoch += 1
        self.batch, self.loss_sum, self.loss_n = 0, 0.0, 0
        if better:
            self.best, self.best_epoch, self.bad_epochs = metric, self.epoch, 0
            self.best_path = self.save_checkpoint(
                "best", {"epoch": self.epoch, self.obj.metric: metric})
        else:
            self.bad_epochs += 1
        self.last_path = self.save_checkpoint("last", {"epoch": self.epoch,
                                                       self.obj.metric: metric})
        self.save_state()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                          if isinstance(v, float) and k != "epoch")
        if self.progress:
            self.log(f"epoch {self.epoch}/{self.epochs}: {shown}")
        return self.patience is not None and self.bad_epochs >= self.patience

    def _evaluate(self) -> dict:
        self.module.eval()
        held = self.prepared.held_out
        n = len(held)
        batches = (held.take(torch.arange(i, min(i + self.batch_size, n)))
                   for i in range(0, n, self.batch_size))
        saved = rng_state()
        try:
            with torch.no_grad():
                figures = self.obj.evaluate(self.call, batches)
        finally:
            set_rng_state(saved)
            self._train_mode()
        return figures

    # -- NaN / inf -----------------------------------------------------------------------------------
    def _non_finite(self, items, what: str):
        layer = first_non_finite_layer(self.module, lambda: self.call(items))
        where = (f"first non-finite output: layer {layer!r}" if layer
                 else "every layer's output was finite (the loss itself overflowed)")
        self._stop(f"{what} at step {self.step} (epoch {self.epoch + 1}); {where}", layer)

    def _non_finite_grad(self):
        bad = None
        for name, module in self.module.named_modules():
            if any(p.grad is not None and not torch.isfinite(p.grad).all()
                   for p in module.parameters(recurse=False)):
                bad = name     # the last in forward order is the first reached by backward
        self._stop(f"the gradients became non-finite at step {self.step} (epoch "
                   f"{self.epoch + 1}); first non-finite gradient: layer {bad!r}", bad)

    def _stop(self, message: str, layer):
        kept = self.last_path or "none written yet"
        if self.monitor is not None:
            self.monitor.close()
        result = self.result()
        result.stopped = "non-finite"
        raise NonFiniteLossError(f"{message}; training stopped, last good checkpoint: {kept}; "
                                 f"lower lr or set clip_grad", step=self.step, layer=layer,
                                 result=result)


def first_non_finite_layer(module: nn.Module, forward) -> str | None:
    """The first module (in the order they finish) whose output holds NaN or inf, re-running
    ``forward`` once with hooks on every module; buffers are restored afterwards.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Boom(nn.Module):
        ...     def forward(self, x): return x / 0.0
        >>> net = nn.Sequential(nn.Linear(2, 2), Boom(), nn.Linear(2, 1))
        >>> first_non_finite_layer(net, lambda: net(torch.ones(1, 2)))
        '1'
    """
    from layerscope.layers import Capture, Layer

    found: list[str] = []

    def check(y, name):
        if not found and y.is_floating_point() and not torch.isfinite(y).all():
            found.append(name)

    layers = [Layer(index=i, name=name or type(module).__name__, module=m, role="module",
                    kind=type(m).__name__) for i, (name, m) in enumerate(module.named_modules())]
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    try:
        with torch.no_grad(), Capture(module, layers, edit=check):
            forward()
    except LayerscopeError:
        pass        # a module whose output holds no tensor: what was found before it stands
    finally:
        with torch.no_grad():
            for k, v in module.named_buffers():
                v.copy_(buffers[k])
    return found[0] if found else None


def _plain(settings: dict) -> dict:
    from layerscope.results import to_plain

    return to_plain({k: v for k, v in settings.items()})
