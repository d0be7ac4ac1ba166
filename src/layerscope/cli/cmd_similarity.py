"""``layerscope similarity MODEL DATA``: unbiased CKA between layers (of one or two models)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .cmd_probe import DataArg, LimitOpt, save_plot
from .common import FIGURE_SUFFIXES, AllowMissingWeightsOpt, ForceOpt, out_file
from .common import (BlocksOpt, GranularityOpt, JsonOpt, LayersOpt, ModelArg, TrustRemoteCodeOpt,
                     model_from_cli, parse_layers, print_json)


@app.command("similarity")
def similarity_command(
    model: ModelArg,
    data: DataArg,
    other: Annotated[Optional[str], typer.Option("--other", help="A second model to compare with "
                                                 "(same items).", show_default=False)] = None,
    kernel: Annotated[str, typer.Option("--kernel", help="linear (streamed, all items) or rbf "
                                        "(on a sample of --sample items).")] = "linear",
    sample: Annotated[int, typer.Option("--sample", help="Items sampled for the rbf kernel.")] = 1000,
    limit: LimitOpt = None,
    layers: LayersOpt = None,
    granularity: GranularityOpt = "blocks",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")] = 32,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest text in tokens.")] = 128,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the heatmap to this PNG file.",
                                                 show_default=False)] = None,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which layers compute alike: CKA between every pair of layers (unbiased estimator)."""
    plot = out_file(plot, force, FIGURE_SUFFIXES)  # before the imports: a bad path fails fast
    from .limits import load_limited
    from layerscope.analyses.similarity import similarity
    from layerscope.errors import LayerscopeError

    if kernel not in ("linear", "rbf"):
        raise LayerscopeError(f"unknown kernel {kernel!r}; use linear or rbf")
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    second = model_from_cli(other, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights) if other else None
    items = load_limited(data, limit, seed=0, minimum=4)
    res = similarity(loaded, items, other=second, kernel=kernel, sample=sample,
                     layers=parse_layers(layers), other_layers=parse_layers(layers) if other else None,
                     granularity=granularity, batch_size=batch_size, max_length=max_length,
                     progress=not as_json)
    save_plot(res, plot)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    typer.echo(f"  estimator: {res.estimator}")
    width = max(len(str(len(res.other_layers))), 5)
    typer.echo("      " + " ".join(f"{j:>{width}}" for j in range(len(res.other_layers))))
    for i, row in enumerate(res.cka):
        typer.echo(f"  {i:>3} " + " ".join(f"{v:>{width}.3f}" for v in row))
    if res.degenerate:
        typer.echo(f"  constant layers (CKA undefined, shown as 0): {', '.join(res.degenerate)}")
    if res.clamped:
        typer.echo(f"  {res.clamped} values outside [0, 1] by chance were clamped (raw min {res.raw_min:.3g})")
