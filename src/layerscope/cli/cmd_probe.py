"""``layerscope probe MODEL DATA --task ...``: a linear probe per layer, held out, with controls."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .limits import DEFAULT_ITEMS, limit_option, load_limited
from .common import FIGURE_SUFFIXES, AllowMissingWeightsOpt, ForceOpt, out_file, save_figure_to
from .common import (BlocksOpt, GranularityOpt, JsonOpt, LayersOpt, ModelArg, TrustRemoteCodeOpt,
                     model_from_cli, parse_layers, print_json)

DataArg = Annotated[str, typer.Argument(
    help="A built-in dataset (e.g. sentences) or a file with labels (.csv/.jsonl).",
    metavar="DATA", show_default=False)]
LimitOpt = limit_option(DEFAULT_ITEMS)
TASKS_HELP = "length, bigram-shift, sentiment, sentiment-score, or labels (the data's own labels)."


def save_plot(result, path: Path | None) -> None:
    """Write ``result.plot()`` to ``path`` (checked before the work) when a path is given."""
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
    solver: Annotated[str, typer.Option("--solver", help="closed: ridge / regularised LDA from "
                                        "streamed sums (fast, memory flat); logistic: scikit-learn's "
                                        "LogisticRegression per layer on kept rows (classes only).")] = "closed",
    c: Annotated[float, typer.Option("--C", help="Inverse penalty of --solver logistic.")] = 1.0,
    precision: Annotated[str, typer.Option("--precision", help="Float type of the streamed XᵀX "
                                           "products: float32 (fast) or float64.")] = "float32",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")] = 32,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest text in tokens.")] = 128,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the figure to this PNG file.",
                                                 show_default=False)] = None,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """What each layer encodes: held-out accuracy (or R²) of a linear probe per layer."""
    from layerscope.analyses.probe import probe

    from layerscope.analyses.probe_tasks import TASKS
    from layerscope.errors import LayerscopeError

    if task not in (*TASKS, "labels"):
        raise LayerscopeError(f"unknown probing task {task!r}; use one of {', '.join(TASKS)} or labels")
    plot = out_file(plot, force, FIGURE_SUFFIXES)
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    items = load_limited(data, limit, seed=seed)
    res = probe(loaded, items, task=task, layers=parse_layers(layers), granularity=granularity,
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
