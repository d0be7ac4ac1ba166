"""``layerscope record MODEL DATA -o DIR``: layer activations to disk, resumable after a kill."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import AllowMissingWeightsOpt
from .common import (
    BatchSizeOpt,
    DataArg,
    LimitOpt,
    MaxLengthOpt,
    BlocksOpt,
    GranularityOpt,
    InputShapeOpt,
    JsonOpt,
    LayersOpt,
    ModelArg,
    TrustRemoteCodeOpt,
    model_from_cli,
    parse_layers,
    print_json,
)


@app.command("record")
def record_command(
    model: ModelArg,
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder of the store.",
                                      show_default=False)],
    layers: LayersOpt = None,
    view: Annotated[str, typer.Option("--view", help="mean, first, last, tokens or flat.")] = "mean",
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype: float16, bfloat16 or float32.")] = "float16",
    batch_size: BatchSizeOpt = 32,
    shard_items: Annotated[int, typer.Option("--shard-items", help="Items per shard file.")] = 4096,
    limit: LimitOpt = None,
    max_length: MaxLengthOpt = 128,
    overwrite: Annotated[bool, typer.Option("--force", "--overwrite", help="Replace a different "
                                            "store in the folder, or write into a folder of other "
                                            "files (they stay).")] = False,
    granularity: GranularityOpt = "blocks",
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Record layer activations to safetensors shards plus a manifest; rerun the same command to resume."""
    from layerscope.outputs import check_dir
    from layerscope.store import MANIFEST, record

    check_dir(out, "store", force=overwrite, recognise=lambda folder: (folder / MANIFEST).is_file())
    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    from .limits import load_limited

    dataset = load_limited(data, limit, default=None)
    store = record(loaded, dataset, out, layers=parse_layers(layers), view=view, dtype=dtype,
                   batch_size=batch_size, shard_items=shard_items, max_length=max_length,
                   granularity=granularity, blocks=blocks, overwrite=overwrite,
                   progress=not as_json)
    info = {"path": str(store.path), "items": len(store), "layers": store.layers,
            "view": store.view, "dtype": store.dtype, "shapes": store.shapes,
            "shards": len(store.manifest["shards"]),
            "bytes": sum(s["bytes"] for s in store.manifest["shards"])}
    if as_json:
        print_json(info)
        return
    typer.echo(
        f"recorded {info['items']} items x {len(info['layers'])} layers ({store.view}, "
        f"{store.dtype}) into {info['shards']} shards, {info['bytes'] / 2**20:.1f} MiB: {store.path}"
    )
