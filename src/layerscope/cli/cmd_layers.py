"""``layerscope layers``: the model's layers at one granularity, with their roles."""

from __future__ import annotations

from .app import app
from .common import AllowMissingWeightsOpt
from .common import (BlocksOpt, GranularityOpt, InputShapeOpt, JsonOpt, ModelArg,
                     TrustRemoteCodeOpt, model_from_cli, print_json)


def layers_data(lay) -> dict:
    """The JSON of ``layerscope layers --json`` for a :class:`~layerscope.layers.Layers`."""
    return {"model": type(lay.model).__name__, "family": lay.family,
            "granularity": lay.granularity, "count": len(lay), "rule": lay.rule,
            "stack": lay.stack,
            "stacks": [{"name": s.name, "paths": list(s.paths), "blocks": len(s.blocks),
                        "kind": s.kind, "modality": s.modality} for s in lay.stacks],
            "layers": [{"index": l.index, "name": l.name, "role": l.role, "kind": l.kind,
                        "stack": l.stack} for l in lay]}


def layers_table(lay):
    """A rich table: index, name, role and class of every layer."""
    from rich.table import Table

    where = f" of stack {lay.stack}" if len(lay.stacks) > 1 else ""
    table = Table(title=f"{type(lay.model).__name__}: {len(lay)} {lay.granularity}{where}")
    for column, justify in (("#", "right"), ("name", "left"), ("role", "left"), ("kind", "left")):
        table.add_column(column, justify=justify)
    for layer in lay:
        table.add_row(str(layer.index), layer.name, layer.role, layer.kind)
    return table


@app.command("layers")
def layers_command(
    model: ModelArg,
    granularity: GranularityOpt = "blocks",
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the model's layers (blocks, sublayers or modules) with their roles."""
    from rich.console import Console

    from layerscope.layers import Layers

    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    lay = Layers(loaded, granularity, blocks=blocks)
    if as_json:
        print_json(layers_data(lay))
        return
    console = Console()
    console.print(layers_table(lay))
    console.print(lay.rule, highlight=False, markup=False)
