"""``layerscope sweep MODEL DATA``: one pass, per-layer activation statistics."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app
from .common import (
    AllowMissingWeightsOpt,
    BatchSizeOpt,
    BlocksOpt,
    DataArg,
    GranularityOpt,
    InputShapeOpt,
    JsonOpt,
    LayersOpt,
    MaxLengthOpt,
    ModelArg,
    TrustRemoteCodeOpt,
    model_from_cli,
    parse_layers,
    print_json,
)
from .limits import DEFAULT_ITEMS, limit_option, load_limited

SweepLimitOpt = limit_option(DEFAULT_ITEMS)


@app.command("sweep")
def sweep_command(
    model: ModelArg,
    data: DataArg,
    layers: LayersOpt = None,
    view: Annotated[str, typer.Option("--view", help="tokens (every real token), mean, first, last or flat.")] = "tokens",
    batch_size: BatchSizeOpt = 32,
    limit: SweepLimitOpt = None,
    max_length: MaxLengthOpt = 128,
    granularity: GranularityOpt = "blocks",
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """One pass over DATA: activation mean, std, min, max and NaN/inf counts per layer."""
    from layerscope.reducers import Moments, NonFinite
    from layerscope.sweep import sweep

    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    dataset = load_limited(data, limit, default=DEFAULT_ITEMS)
    moments, nonfinite = Moments(view=view), NonFinite(view=view)
    run = sweep(loaded, dataset, reducers=[moments, nonfinite], layers=parse_layers(layers),
                granularity=granularity, blocks=blocks, batch_size=batch_size,
                max_length=max_length, progress=not as_json)
    m, nf = moments.result(), nonfinite.result()
    rows = [{"layer": name, "mean": m.mean[i], "std": m.std[i], "min": m.min[i], "max": m.max[i],
             "nan": nf.nan[i], "posinf": nf.posinf[i], "neginf": nf.neginf[i]}
            for i, name in enumerate(m.layers)]
    if as_json:
        print_json({"items": run.n_items, "seconds": run.seconds, "view": view, "layers": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{run.n_items} items, {view} view, {run.seconds:.1f} s")
    for col in ("layer", "mean", "std", "min", "max", "NaN", "+inf", "-inf"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r["layer"], *(f"{r[k]:.4g}" for k in ("mean", "std", "min", "max")),
                      *(str(r[k]) for k in ("nan", "posinf", "neginf")))
    Console().print(table)
