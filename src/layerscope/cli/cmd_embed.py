"""``layerscope embed MODEL DATA --layers ... --method pca|tsne --plot out.png``: 2-D maps of layers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .cmd_probe import DataArg, save_plot
from .common import FIGURE_SUFFIXES, AllowMissingWeightsOpt, ForceOpt, out_file
from .common import (BlocksOpt, GranularityOpt, JsonOpt, LayersOpt, ModelArg, TrustRemoteCodeOpt,
                     model_from_cli, parse_layers, print_json)


@app.command("embed")
def embed_command(
    model: ModelArg,
    data: DataArg,
    layers: LayersOpt = None,
    method: Annotated[str, typer.Option("--method", help="pca or tsne.")] = "pca",
    sample: Annotated[str, typer.Option("--sample", help="Items sampled (seeded, uniformly) for the "
                                        "map; only these run through the model. 'all' maps every "
                                        "item.", metavar="N|all")] = "1000",
    limit: Annotated[Optional[str], typer.Option("--limit", help="Draw the sample from the first N "
                                                 "items of DATA after a seeded shuffle (default: all).",
                                                 show_default=False, metavar="N|all")] = None,
    granularity: GranularityOpt = "blocks",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample and of t-SNE.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")] = 32,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest text in tokens.")] = 128,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the maps to this PNG file.",
                                                 show_default=False)] = None,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Pictures of layers: PCA or t-SNE of layer outputs on a sample, coloured by label."""
    plot = out_file(plot, force, FIGURE_SUFFIXES)  # before the imports: a bad path fails fast
    from layerscope.analyses.pictures import METHODS, embed
    from layerscope.errors import LayerscopeError

    if method not in METHODS:
        raise LayerscopeError(f"unknown method {method!r}; use pca or tsne")
    from layerscope.progress import announce

    from .limits import load_limited, parse_limit

    n_sample = parse_limit(sample, 1000, option="--sample")
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    items = load_limited(data, limit, default=None, seed=seed, what="items", say=limit is not None)
    n_sample = len(items) if n_sample is None else min(n_sample, len(items))
    if n_sample < 3:
        raise LayerscopeError(f"a 2-D map needs at least 3 items; --sample/--limit give {n_sample}")
    announce(f"mapping {n_sample:,} of {len(items):,} items of {getattr(items, 'name', data)} "
             f"(--sample N|all): only they run through the model")
    res = embed(loaded, items, layers=parse_layers(layers), method=method, sample=n_sample,
                granularity=granularity, seed=seed, batch_size=batch_size, max_length=max_length,
                progress=not as_json)
    save_plot(res, plot)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    if plot is not None:
        typer.echo(f"  maps written to {plot}")
