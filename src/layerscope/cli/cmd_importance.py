"""``layerscope importance MODEL DATA``: the effect of removing each block, Block Influence,
angular distance; with ``--curve``, the objective after removing k blocks by each criterion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from layerscope.report.defaults import IMPORTANCE_ITEMS  # the report's removal amount: also the command's

from .app import app
from .common import FIGURE_SUFFIXES, AllowMissingWeightsOpt, ForceOpt, out_file, save_figure_to
from .common import BlocksOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, model_from_cli, print_json
from .limits import limit_option, load_limited

DataArg = Annotated[str, typer.Argument(
    help="A built-in dataset name (e.g. sentences) or a file: .txt (one item per line), "
         ".csv/.jsonl (a text column).", metavar="DATA", show_default=False)]
LimitOpt = limit_option(IMPORTANCE_ITEMS)
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="Write the figure to this PNG file.",
                                                 show_default=False)]


def save_plot(result, path: Path | None) -> None:
    """Write ``result.plot()`` to ``path`` (checked before the work) when a path is given."""
    save_figure_to(result, path)


@app.command("importance")
def importance_command(
    model: ModelArg,
    data: DataArg,
    limit: LimitOpt = None,
    curve: Annotated[bool, typer.Option("--curve", help="Also remove k = 1..--max-k blocks chosen "
                                        "by each criterion (block-influence, angular, single, last).")] = False,
    max_k: Annotated[int, typer.Option("--max-k", help="Most blocks removed together with --curve.")] = 4,
    method: Annotated[str, typer.Option("--method", help="auto, prefix (re-run only the blocks "
                                        "after the removed one) or naive (full forwards).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")] = 16,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest text in tokens.")] = 128,
    view: Annotated[Optional[str], typer.Option(
        "--view", help="How angular distance reads each state: last (real token), mean (over "
        "tokens or positions), first, flat. Default: last for token sequences, mean for feature "
        "maps (CNNs, ResNets).", show_default=False)] = None,
    ablate: Annotated[bool, typer.Option(
        "--ablate/--no-ablate", help="Mean-ablate the blocks that change the shape (a CNN's "
        "stages, a ResNet's downsampling blocks) instead of leaving them out.")] = True,
    plot: PlotOpt = None,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which blocks matter: the model's own objective (accuracy and loss with labels) with each
    block removed (skipped; mean-ablated where it changes the shape)."""
    plot = out_file(plot, force, FIGURE_SUFFIXES)  # before the imports: a bad path fails fast
    from layerscope.analyses.importance import build_stack, layer_importance, removal_curve

    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    if curve:
        n_blocks = len(build_stack(loaded, blocks).blocks)
        if not 1 <= max_k <= n_blocks:
            from layerscope.errors import LayerscopeError

            raise LayerscopeError(f"max_k must be between 1 and {n_blocks} (the number of blocks); got {max_k}")
    items = load_limited(data, limit, default=IMPORTANCE_ITEMS)
    res = layer_importance(loaded, items, blocks=blocks, batch_size=batch_size,
                           max_length=max_length, method=method, view=view, ablate=ablate,
                           progress=not as_json)
    result = res
    if curve:
        result = removal_curve(loaded, items, max_k=max_k, importance=res, blocks=blocks,
                               batch_size=batch_size, max_length=max_length, method=method,
                               progress=not as_json)
    save_plot(result, plot)
    if as_json:
        print_json({**res.to_dict(), "curve": result.to_dict()} if curve else res.to_dict())
        return
    typer.echo(res.summary())
    removable = set(res.can_remove())
    how = res.intervention or [None] * len(res.layers)
    for i, name in enumerate(res.layers):
        if how[i] == "mean-ablate":
            typer.echo(f"  {i:>3} {name:<28} {res.objective} {res.metric[i]:<12.5g} "
                       f"(changes the shape: mean-ablated)")
            continue
        if i not in removable:
            typer.echo(f"  {i:>3} {name:<28} changes the shape: cannot be removed")
            continue
        typer.echo(f"  {i:>3} {name:<28} {res.objective} {res.metric[i]:<12.5g} "
                   f"BI {res.block_influence[i]:.4f}")
    if curve:
        typer.echo(result.summary())
        for c, values in result.curves.items():
            typer.echo(f"  {c:<16} " + " ".join(f"{v:.4g}" for v in values))
