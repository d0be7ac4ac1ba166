"""Per-layer monitors: gradient norm, update-to-weight ratio, weight norm, activations, dead ReLUs.

Every ``every`` steps (step 0 included) the monitor records, for each block of the Layers view
and each module holding parameters of its own:

* ``grad_norm``   – L2 norm of the layer's gradients (before clipping), trainable parameters only;
* ``weight_norm`` – L2 norm of its parameters;
* ``update_ratio``– ‖W_after − W_before‖ / ‖W_before‖ over the optimizer step;
* ``act_mean``, ``act_std`` – of its output on that step's training batch (blocks and ReLUs);
* ``dead_frac``   – for ``nn.ReLU`` modules, the fraction of units that output exactly 0 for every
  item of the batch (a unit is a feature for (B, D) outputs, a channel for (B, C, H, W), the
  last dimension for (B, T, D)); for a block, the same over the ReLU modules inside it.
  ReLUs called as functions (``F.relu``) are invisible to hooks and are not counted.

* ``dead_sustained`` – for ReLUs, the fraction of units silent on each of the last ``SUSTAIN``
  (3) monitored batches.

Hooks (one :class:`layerscope.layers.Capture`) are placed only for the forward pass of a
monitor step and always removed. The rows are judged by :mod:`layerscope.train.diagnose`
(vanishing / exploding gradients, dead units) at the end of training; :func:`plot_grad_depth`
draws the gradient norm by depth.

Example:
    >>> import torch, tempfile
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> mon = LayerMonitor(net, every=1, path=tempfile.mkdtemp() + "/m.jsonl", log=None)
    >>> with mon.watch(0):
    ...     loss = net(torch.randn(8, 3)).pow(2).mean()
    >>> loss.backward(); mon.after_backward(); mon.before_step()
    >>> rows = mon.finish(step=0, epoch=0, loss=loss.item()); mon.close()
    >>> sorted({r["layer"] for r in rows if r["kind"] == "module"})
    ['0', '2']
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

_RELUS = (nn.ReLU, nn.ReLU6)
SUSTAIN = 3      # monitored batches in a row a unit must stay silent to count as dead


def _activation_figures(y: Tensor, kind: str) -> dict:
    """Mean and std of one output (tensors, read once in ``finish``); per-unit life for ReLUs."""
    y = y.detach()
    if not y.is_floating_point() or y.numel() < 2:
        return {}
    std, mean = torch.std_mean(y.float())
    row = {"act_mean": mean, "act_std": std}
    if kind == "relu":
        alive = (y != 0).any(dim=(0, 2, 3)) if y.dim() == 4 else \
            (y != 0).reshape(-1, y.shape[-1]).any(dim=0)
        row.update(dead=(~alive).sum(), units=alive.numel(), alive=alive)
    return row


def dead_units(y: Tensor) -> tuple[int, int]:
    """(dead, total) units of an activation: units that are 0 for every item (and position)."""
    y = y.detach()
    if y.dim() == 4:
        alive = (y != 0).any(dim=(0, 2, 3))
    elif y.dim() >= 2:
        alive = (y != 0).reshape(-1, y.shape[-1]).any(dim=0)
    else:
        alive = (y != 0).any().reshape(1)
    return int((~alive).sum()), int(alive.numel())


class LayerMonitor:
    """Collects the per-layer figures on monitor steps and appends them to a JSONL file."""

    def __init__(self, model: nn.Module, *, every: int, path, log=print, csv: bool = False,
                 append: bool = False):
        self.model, self.every, self.log = model, int(every), log
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if append else "w")
        self.csv_path = self.path.with_suffix(".csv") if csv else None
        self.groups = self._groups(model)            # (name, kind, params)
        self._act_targets = self._activation_targets(model)
        self._acts: dict[str, dict] = {}
        self._before: list[Tensor] | None = None
        self._m = None
        self._silent: dict[str, Tensor] = {}   # ReLU -> monitored batches in a row each unit slept

    # -- what is watched ---------------------------------------------------------------------------
    @staticmethod
    def _groups(model: nn.Module) -> list[tuple[str, str, list]]:
        groups: list[tuple[str, str, list]] = []
        try:
            from .freezing import block_layers

            blocks = [layer for layer in block_layers(model) if layer.part is None]
        except Exception:   # a model without a recognisable block layout: modules only
            blocks = []
        for layer in blocks:
            params = list(layer.module.parameters())
            if params:
                groups.append((layer.name, "block", params))
        for name, module in model.named_modules():
            params = list(module.parameters(recurse=False))
            if params:
                groups.append((name or type(model).__name__, "module", params))
        return groups

    def _activation_targets(self, model: nn.Module) -> list[tuple[str, str, nn.Module]]:
        targets = [(n, "block", m) for n, kind, _ in self.groups if kind == "block"
                   for m in [model.get_submodule(n)]]
        targets += [(n, "relu", m) for n, m in model.named_modules() if isinstance(m, _RELUS)]
        return targets

    def active(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    # -- one monitor step --------------------------------------------------------------------------
    @contextmanager
    def watch(self, step: int):
        """Hooks on the watched layers for one forward pass (no-op off monitor steps).

        The hooks are a :class:`layerscope.layers.Capture` whose ``edit`` reads each output as
        it is produced (and returns None, so nothing is changed); they are removed on exit.
        """
        if not self.active(step):
            yield
            return
        from layerscope.layers import Capture, Layer

        self._acts = {}
        kinds = {name: kind for name, kind, _ in self._act_targets}
        layers = [Layer(index=i, name=name, module=module, role=kind, kind=type(module).__name__)
                  for i, (name, kind, module) in enumerate(self._act_targets)]

        def read(y, name):
            self._acts[name] = _activation_figures(y, kinds[name])

        with Capture(self.model, layers, edit=read):
            yield

    # -- the figures, vectorised: one norm per parameter, then group sums by one matrix product
    def _matrix(self) -> Tensor:
        if getattr(self, "_m", None) is None:
            self._params = list(self.model.parameters())
            index = {id(p): i for i, p in enumerate(self._params)}
            m = torch.zeros(len(self.groups), len(self._params), dtype=torch.float64)
            for g, (_, _, params) in enumerate(self.groups):
                for p in params:
                    m[g, index[id(p)]] = 1.0
            self._m = m
            self._grad_sq = torch.zeros(len(self.groups), dtype=torch.float64)
            self._has_grad = torch.zeros(len(self.groups), dtype=torch.bool)
        return self._m

    def _norms_sq(self, tensors: list, which: list[int]) -> Tensor:
        out = torch.zeros(len(self._params), dtype=torch.float64)
        if which:
            norms = torch.stack(torch._foreach_norm(tensors)).double().cpu()
            out[which] = norms ** 2
        return out

    def after_backward(self, only=None) -> None:
        """Record the gradient norm of every group (call before clipping).

        With ``only`` (parameters), record just the groups made entirely of those and keep the
        rest (a GAN's generator step after its discriminator step).
        """
        m = self._matrix()
        which = [i for i, p in enumerate(self._params) if p.requires_grad and p.grad is not None]
        sq = m @ self._norms_sq([self._params[i].grad for i in which], which)
        has = (m[:, which].sum(1) > 0) if which else torch.zeros(len(self.groups), dtype=torch.bool)
        if only is None:
            self._grad_sq, self._has_grad = sq, has
            return
        keep = torch.zeros(len(self._params), dtype=torch.float64)
        ids = {id(q) for q in only}
        keep[[i for i, p in enumerate(self._params) if id(p) in ids]] = 1.0
        inside = (m @ (1.0 - keep)) == 0                # groups made only of ``only``'s params
        self._grad_sq = torch.where(inside, sq, self._grad_sq)
        self._has_grad = torch.where(inside, has, self._has_grad)

    def before_step(self) -> None:
        """Snapshot the weights for the update ratio (call right before ``optimizer.step()``)."""
        self._matrix()
        self._trainable = [i for i, p in enumerate(self._params) if p.requires_grad]
        self._before = [self._params[i].detach().clone() for i in self._trainable]

    def finish(self, *, step: int, epoch: int, loss: float) -> list[dict]:
        """Compute the rest after ``optimizer.step()``, write the rows, raise flags; the rows."""
        m, trainable = self._matrix(), self._trainable
        moving = set(trainable)
        frozen = [i for i in range(len(self._params)) if i not in moving]
        w_sq = self._norms_sq([self._params[i].detach() for i in frozen], frozen)
        w_sq += self._norms_sq(self._before, trainable)
        after = [self._params[i].detach() for i in trainable]
        d_sq = self._norms_sq(torch._foreach_sub(after, self._before) if trainable else [],
                              trainable)
        w_all = (m @ w_sq).sqrt().tolist()
        d_all = (m @ d_sq).sqrt().tolist()
        g_all = self._grad_sq.sqrt().tolist()
        has = self._has_grad.tolist()
        acts = self._read_acts()
        rows = [{"step": step, "epoch": epoch, "layer": "(model)", "kind": "loss", "loss": loss}]
        relu_by_name = {n: a for n, a in acts.items() if "dead" in a}
        for g, (name, kind, _) in enumerate(self.groups):
            w, d = w_all[g], d_all[g]
            row = {"step": step, "epoch": epoch, "layer": name, "kind": kind,
                   "grad_norm": g_all[g] if has[g] else None, "weight_norm": w,
                   "update_ratio": d / w if w > 0 else None}
            row.update({k: v for k, v in acts.get(name, {}).items()
                        if k in ("act_mean", "act_std")})
            if kind == "block":
                inside = [a for n, a in relu_by_name.items() if n.startswith(name + ".")]
                if inside:
                    units = sum(a["units"] for a in inside)
                    row["dead_frac"] = sum(a["dead"] for a in inside) / units
            rows.append(row)
        for name, a in relu_by_name.items():
            rows.append({"step": step, "epoch": epoch, "layer": name, "kind": "relu",
                         "act_mean": a["act_mean"], "act_std": a["act_std"],
                         "dead_frac": a["dead"] / a["units"],
                         "dead_sustained": self._sustained(name, a["alive"])})
        self._file.write("".join(json.dumps(_finite(row)) + "\n" for row in rows))
        self._file.flush()
        self._before = None
        self._acts = {}
        return rows

    def _read_acts(self) -> dict:
        """The hooks' tensors as numbers, with one conversion for all of them."""
        keys = [(n, k) for n, row in self._acts.items() for k, v in row.items()
                if isinstance(v, Tensor) and k != "alive"]
        if not keys:
            return {n: dict(row) for n, row in self._acts.items()}
        values = torch.stack([self._acts[n][k].double().cpu() for n, k in keys]).tolist()
        out = {n: dict(row) for n, row in self._acts.items()}
        for (n, k), v in zip(keys, values):
            out[n][k] = int(v) if k == "dead" else v
        return out

    def _sustained(self, name: str, alive: Tensor) -> float:
        """Fraction of the ReLU's units silent on each of the last ``SUSTAIN`` monitored batches."""
        alive = alive.detach().cpu()
        streak = self._silent.get(name)
        if streak is None or streak.shape != alive.shape:
            streak = torch.zeros(alive.shape, dtype=torch.int32)
        streak = torch.where(alive, torch.zeros_like(streak), streak + 1)
        self._silent[name] = streak
        return float((streak >= SUSTAIN).float().mean())

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs to continue this monitor exactly (see ``train(resume=)``)."""
        self._file.flush()
        return {"metrics_bytes": self._file.tell(),
                "silent": {k: v.clone() for k, v in self._silent.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._silent = {k: v.clone() for k, v in state["silent"].items()}

    def close(self) -> None:
        self._file.close()
        if self.csv_path is not None:
            write_csv(self.path, self.csv_path)


def _finite(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def read_metrics(path) -> list[dict]:
    """The rows of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_csv(jsonl, csv_path) -> Path:
    """The metrics file as CSV (one row per step and layer)."""
    import csv

    rows = read_metrics(jsonl)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return Path(csv_path)


def plot_metrics(path, out_dir) -> list[str]:
    """One PNG per figure (gradient norm, update ratio, weight norm, activation std, dead ReLUs).

    Blocks are drawn when the model has them, otherwise the parameterised modules.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    if not rows:
        return []
    kinds = {r["kind"] for r in rows}
    main = "block" if "block" in kinds else "module"
    written = []
    for key, title, log in (("grad_norm", "gradient norm", True),
                            ("update_ratio", "update / weight ratio", True),
                            ("weight_norm", "weight norm", False),
                            ("act_std", "activation std", False),
                            ("dead_frac", "fraction of dead ReLU units", False)):
        want = ("relu", main) if key == "dead_frac" else (main,)
        series: dict[str, tuple[list, list]] = {}
        for r in rows:
            if r["kind"] in want and r.get(key) is not None:
                xs, ys = series.setdefault(r["layer"], ([], []))
                xs.append(r["step"])
                ys.append(r[key])
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for layer, (xs, ys) in list(series.items())[:24]:
            ax.plot(xs, ys, label=layer, linewidth=1)
        if log and all(y > 0 for _, ys in series.values() for y in ys):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{title} per {'layer' if main == 'block' else 'module'}")
        ax.legend(fontsize=6, ncol=2)
        target = Path(out_dir) / f"monitor_{key}.png"
        fig.tight_layout()
        fig.savefig(target, dpi=90)
        plt.close(fig)
        written.append(str(target))
    return written


def depth_kind(rows: list[dict]) -> str:
    """The rows read by depth: ``"block"`` when the model has at least three blocks, otherwise
    ``"module"`` (every module with parameters)."""
    blocks = {r["layer"] for r in rows if r["kind"] == "block"}
    return "block" if len(blocks) >= 3 else "module"


def grad_depth_series(rows: list[dict]) -> tuple[str, list[str], dict[int, list]]:
    """(kind, layers in depth order, {step: gradient norm per layer}) from metrics rows.

    The blocks when the model has at least three, otherwise the modules with parameters.
    """
    kind = depth_kind(rows)
    layers: list[str] = []
    by_step: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["kind"] != kind:
            continue
        if r["layer"] not in layers:
            layers.append(r["layer"])
        if r.get("grad_norm") is not None:
            by_step.setdefault(r["step"], {})[r["layer"]] = r["grad_norm"]
    return kind, layers, {s: [g.get(n) for n in layers] for s, g in sorted(by_step.items())}


def plot_grad_depth(rows: list[dict], flags: list[dict] = (), ax=None, max_lines: int = 12):
    """The gradient norm by depth: one curve per monitored step (colour = step), log scale,
    with the flagged layers marked at the step their flag starts. Returns the figure.

    Example:
        >>> rows = [{"step": s, "kind": "module", "layer": n, "grad_norm": g}
        ...         for s in (0, 5) for n, g in (("0", 1e-6), ("2", 1.0), ("4", 2.0))]
        >>> fig = plot_grad_depth(rows, [{"kind": "vanishing", "layer": "0", "step": 0}])
        >>> fig.axes[0].get_yscale()
        'log'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind, layers, series = grad_depth_series(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    steps = list(series)
    if len(steps) > max_lines:
        picks = sorted({round(i * (len(steps) - 1) / (max_lines - 1)) for i in range(max_lines)})
        steps = [steps[i] for i in picks]
    cmap = plt.get_cmap("viridis")
    x = list(range(len(layers)))
    positive = [g for s in steps for g in series[s] if g is not None and g > 0]
    floor = min(positive) / 10 if positive else 1e-12
    for i, s in enumerate(steps):
        ys = [floor if g is None or g <= 0 else g for g in series[s]]
        ax.plot(x, ys, "-o", markersize=2.5, linewidth=1,
                color=cmap(i / max(len(steps) - 1, 1)), label=f"step {s}")
    colours = {"vanishing": "tab:blue", "exploding": "tab:red"}
    for flag in flags:
        if flag.get("kind") not in colours or flag.get("layer") not in layers:
            continue
        step = min(series, key=lambda s: abs(s - flag["step"])) if series else None
        if step is None:
            continue
        i = layers.index(flag["layer"])
        g = series[step][i]
        ax.plot([i], [floor if g is None or g <= 0 else g], marker="v" if flag["kind"] ==
                "vanishing" else "^", markersize=11, color=colours[flag["kind"]],
                markerfacecolor="none", markeredgewidth=2,
                label=f"{flag['kind']} ({flag['layer']}, step {flag['step']})")
    if positive:
        ax.set_yscale("log")
    step_names = len(layers) <= 24
    ax.set_xticks(x if step_names else x[::max(1, len(x) // 12)])
    ax.set_xticklabels(layers if step_names else [layers[i] for i in x[::max(1, len(x) // 12)]],
                       rotation=60, ha="right", fontsize=6)
    ax.set_xlabel(f"depth ({'blocks' if kind == 'block' else 'modules with parameters'}, "
                  f"input side first)")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient norm by depth, over training" +
                 (f" ({len(flags)} flag(s))" if flags else ""), fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
