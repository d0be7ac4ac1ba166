"""``layerscope ablate MODEL DATA``: zero / mean / resample ablation of blocks, sublayers and heads."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app
from .cmd_patch import PlotFileOpt
from .common import (FIGURE_SUFFIXES, AllowMissingWeightsOpt, BatchSizeOpt, BlocksOpt, ForceOpt,
                     JsonOpt, LayersOpt, LimitOpt, MaxLengthOpt, ModelArg, TrustRemoteCodeOpt,
                     model_from_cli, out_file, print_json, save_figure_to)


@app.command("ablate")
def ablate_command(
    model: ModelArg,
    data: Annotated[str, typer.Argument(help="Items to score the model on: a built-in dataset "
                                        "(e.g. sentences) or a file.", metavar="DATA")],
    part: Annotated[str, typer.Option("--part", help="Comma list of block, attention, "
                                      "feed-forward, head.")] = "block",
    how: Annotated[str, typer.Option("--how", help="Comma list of zero, mean, resample.")] = "zero,mean,resample",
    reference: Annotated[Optional[str], typer.Option("--reference", help="Data for the mean "
                                                     "activation (default: DATA).", show_default=False)] = None,
    no_remove: Annotated[bool, typer.Option("--no-remove", help="Do not also measure removal "
                                            "(skipping) of each block.")] = False,
    layers: LayersOpt = None,
    limit: LimitOpt = 64,
    batch_size: BatchSizeOpt = 16,
    max_length: MaxLengthOpt = 128,
    method: Annotated[str, typer.Option("--method", help="auto, prefix or full.")] = "auto",
    plot: PlotFileOpt = None,
    force: ForceOpt = False,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """What the model loses when a block, sublayer or head is ablated (and when a block is removed)."""
    from layerscope.analyses.causal.ablation import ablate
    from layerscope.data import load_dataset

    out = out_file(plot, force, FIGURE_SUFFIXES)
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    items = load_dataset(data, limit=limit)
    ref = load_dataset(reference, limit=limit) if reference is not None else None
    res = ablate(loaded, items, parts=part, how=how, layers=layers, reference=ref, blocks=blocks,
                 batch_size=batch_size, max_length=max_length, remove=not no_remove, method=method)
    save_figure_to(res, out)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    hows = list(res.values)
    typer.echo(f"  {'site':<18}" + "".join(f"{h:>12}" for h in hows) + f"   ({res.objective}; intact "
               f"{res.baseline:.4g})")
    for i, label in enumerate(res.labels):
        typer.echo(f"  {label:<18}" + "".join(f"{res.values[h][i]:>12.4g}" for h in hows))
