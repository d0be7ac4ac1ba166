"""``layerscope probe MODEL DATA --task ...``: a linear probe per layer, held out, with controls."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .common import (AllowMissingWeightsOpt, BlocksOpt, ForceOpt, GranularityOpt, JsonOpt,
                     LayersOpt, ModelArg, TrustRemoteCodeOpt, model_from_cli, out_file,
                     parse_layers, print_json, save_figure_to)
from .limits import DEFAULT_ITEMS, limit_option, load_limited

DataArg = Annotated[str, typer.Argument(
    help="A built-in dataset (e.g. sentences) or a file with labels (.csv/.jsonl).",
    metavar="DATA", show_default=False)]
LimitOpt = limit_option(DEFAULT_ITEMS)
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="Write the figure to this image "
                                                 "file (.png, .svg, .pdf).", show_default=False)]
TASKS_HELP = "length, bigram-shift, sentiment, sentiment-score, or labels (the data's own labels)."


def plot_path(path: Path | None, force: bool) -> Path | None:
    """``--plot`` checked before any work (a new file, or one layerscope wrote; else --force)."""
    from layerscope.outputs import FIGURE_SUFFIXES

    return out_file(path, force=force, suffixes=FIGURE_SUFFIXES)


def save_plot(result, path: Path | None) -> None:
    """Write ``result.plot()`` to ``path`` when a path is given (checked with :func:`plot_path`)."""
    save_figure_to(result, path)


@app.command("probe")
def probe_command(
    model: ModelArg,
    data: DataArg,
    task: Annotated[str, typer.Option("--task", "-t", help=TASKS_HELP)] = "labels",
    limit: LimitOpt = None,
    layers: LayersOpt = None,
    granularity: GranularityOpt = "blocks",
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of items held out.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the task and the controls.")] = 0,
    solver: Annotated[str, typer.Option("--solver", help="auto: for classes, L2 logistic regression "
                                        "with C by 3-fold CV (2 classes: all layers in one batched L-BFGS; more: "
                                        "scikit-learn's LogisticRegressionCV per layer) while the "
                                        "kept rows fit 1 GiB, else the closed form; closed: ridge / "
                                        "regularised LDA from streamed sums (fast, memory flat); lbfgs: "
                                        "always the batched logistic; logistic: scikit-learn's "
                                        "LogisticRegression(C) per layer (classes only).")] = "auto",
    c: Annotated[float, typer.Option("--C", help="Inverse penalty of --solver logistic.")] = 1.0,
    precision: Annotated[str, typer.Option("--precision", help="Float type of the streamed XᵀX "
                                           "products: float32 (fast) or float64.")] = "float32",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")] = 32,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest text in tokens.")] = 128,
    plot: PlotOpt = None,
    force: ForceOpt = False,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """What each layer encodes: held-out accuracy (or R²) of a linear probe per layer.

    A layer is named as the peak only when its interval clears the baseline and every other
    layer's; otherwise the first line says the peak is uncertain (or that no layer beats the
    baseline) and about how many held-out items would settle it.
    """
    from layerscope.analyses.probe import probe
    from layerscope.analyses.probe_tasks import TASKS
    from layerscope.errors import LayerscopeError

    if task not in (*TASKS, "labels"):
        raise LayerscopeError(f"unknown probing task {task!r}; use one of {', '.join(TASKS)} or labels")
    plot = plot_path(plot, force)
    chosen = parse_layers(layers)
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    items = load_limited(data, limit, seed=seed)
    res = probe(loaded, items, task=task, layers=chosen, granularity=granularity,
                test_fraction=test_fraction, seed=seed, precision=precision, solver=solver, C=c,
                batch_size=batch_size, max_length=max_length, progress=not as_json)
    save_plot(res, plot)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    for i, name in enumerate(res.layers):
        typer.echo(f"  {i:>3} {name:<28} {res.metric} {res.score[i]:.3f} "
                   f"[{res.ci_low[i]:.3f}, {res.ci_high[i]:.3f}]  alpha {res.alpha[i]:.3g}")
    typer.echo(f"  baseline {res.baseline:.3f}; random features (width {res.random_width}) "
               f"{res.random_features:.3f}; {res.n_train} train / {res.n_test} held-out items")
