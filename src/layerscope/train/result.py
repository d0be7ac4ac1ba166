"""What a training run returns: the per-epoch history, the best metric, the checkpoints, the flags.

Example:
    >>> r = TrainResult(task="classification", metric="accuracy", higher_is_better=True,
    ...                 history=[{"epoch": 1, "train_loss": 0.5, "accuracy": 0.9}],
    ...                 best_metric=0.9, best_epoch=1, out_dir="runs/x")
    >>> r.summary()
    'classification: best accuracy 0.9 at epoch 1 of 1; stopped: finished'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layerscope.results import Result


@dataclass
class TrainResult(Result):
    task: str
    metric: str                     # the held-out metric that picks the best epoch
    higher_is_better: bool
    history: list[dict]             # one row per finished epoch: train_loss, eval_loss, metrics
    best_metric: float | None
    best_epoch: int | None
    out_dir: str
    best_checkpoint: str | None = None   # folder: model.safetensors + layerscope.json
    last_checkpoint: str | None = None
    state_file: str | None = None        # optimizer / RNG / position state for resume
    metrics_file: str | None = None      # metrics.jsonl of the per-layer monitors
    plots: list[str] = field(default_factory=list)
    flags: list[dict] = field(default_factory=list)  # diagnoses: see layerscope.train.diagnose
    stopped: str = "finished"       # finished | early-stopping | interrupted | non-finite
    steps: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.best_metric is None:
            best = f"no held-out {self.metric} yet"
        else:
            best = f"best {self.metric} {self.best_metric:.4g} at epoch {self.best_epoch}"
        kinds = sorted({f["kind"] for f in self.flags})
        flags = f"; {len(self.flags)} flag(s): {', '.join(kinds)}" if self.flags else ""
        return (f"{self.task}: {best} of {len(self.history)}; stopped: {self.stopped}{flags}")

    def flag_lines(self) -> list[str]:
        """One line per flag (kind, layer, step and the figures behind it)."""
        return [f.get("message") or f"{f['kind']} in {f['layer']!r} at step {f['step']}"
                for f in self.flags]

    def plot_gradients(self, ax=None):
        """The gradient norm by depth over training, flagged layers marked (from metrics.jsonl)."""
        from .monitors import plot_grad_depth, read_metrics

        if not self.metrics_file:
            from layerscope.errors import LayerscopeError

            raise LayerscopeError("this run recorded no per-layer metrics (monitor_every=0); "
                                  "train with monitor_every > 0 to draw gradients by depth")
        return plot_grad_depth(read_metrics(self.metrics_file), self.flags, ax=ax)

    def plot(self, ax=None, kind: str = "history"):
        """Training and held-out loss per epoch (and the metric on a second axis);
        ``kind="gradients"``: the gradient norm by depth (:meth:`plot_gradients`)."""
        if kind == "gradients":
            return self.plot_gradients(ax=ax)
        if kind != "history":
            from layerscope.errors import LayerscopeError

            raise LayerscopeError(f"unknown plot kind {kind!r}; use 'history' or 'gradients'")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.5))
        else:
            fig = ax.figure
        epochs = [row["epoch"] for row in self.history]
        ax.plot(epochs, [row.get("train_loss") for row in self.history], "o-", label="train loss")
        if any("eval_loss" in row for row in self.history):
            ax.plot(epochs, [row.get("eval_loss") for row in self.history], "s-",
                    label="held-out loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(loc="upper left")
        if self.metric not in ("eval_loss",) and any(self.metric in r for r in self.history):
            twin = ax.twinx()
            twin.plot(epochs, [row.get(self.metric) for row in self.history], "^--", color="C2",
                      label=self.metric)
            twin.set_ylabel(self.metric)
        ax.set_title(self.summary(), fontsize=8)
        return fig
