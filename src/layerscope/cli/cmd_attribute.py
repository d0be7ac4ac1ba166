"""``layerscope attribute MODEL --input TEXT``: Captum's layer attributions for every block."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app
from .cmd_patch import PlotFileOpt
from .common import (FIGURE_SUFFIXES, AllowMissingWeightsOpt, BlocksOpt, ForceOpt, JsonOpt,
                     LayersOpt, ModelArg, TrustRemoteCodeOpt, model_from_cli, out_file, print_json,
                     save_figure_to)


@app.command("attribute")
def attribute_command(
    model: ModelArg,
    text: Annotated[Optional[str], typer.Option("--input", help="The text to explain (text models).",
                                                show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Image models: a dataset (e.g. "
                                                "photos, digits) to take one item from.",
                                                show_default=False)] = None,
    item: Annotated[int, typer.Option("--item", help="Which item of --data.")] = 0,
    method: Annotated[str, typer.Option("--method", help="integrated-gradients, conductance, "
                                        "activation-x-gradient or gradcam (CNN blocks).")] = "integrated-gradients",
    target: Annotated[Optional[str], typer.Option("--target", help="The next token (causal LM) or "
                                                  "class index explained (default: the prediction).",
                                                  show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Points on the integration path.")] = 32,
    layers: LayersOpt = None,
    plot: PlotFileOpt = None,
    force: ForceOpt = False,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """How much each block (and each token or pixel in it) contributes to one output: Captum."""
    from layerscope.analyses.causal.attribution import attribute
    from layerscope.errors import LayerscopeError

    out = out_file(plot, force, FIGURE_SUFFIXES)
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    if loaded.modality == "text":
        if text is None:
            raise LayerscopeError("give the text to explain with --input")
        inputs = text
    else:
        if data is None:
            raise LayerscopeError(f"model {model!r} takes {loaded.modality} inputs; give --data (e.g. "
                                  f"photos) and --item")
        from layerscope.data import load_dataset

        ds = load_dataset(data)
        if not 0 <= item < len(ds):
            raise LayerscopeError(f"--item {item} is out of range: {data} has {len(ds)} items (0-{len(ds) - 1})")
        inputs = ds.items[item:item + 1]
    tgt = target
    if target is not None and (loaded.modality != "text" or loaded.task != "causal-lm"):
        try:
            tgt = int(target)
        except ValueError:
            raise LayerscopeError(f"--target must be a class index for this model; got {target!r}") from None
    res = attribute(loaded, inputs, method=method, layers=layers, target=tgt, n_steps=steps, blocks=blocks)
    save_figure_to(res, out)
    if as_json:
        print_json({k: v for k, v in res.to_dict().items() if k not in ("image",)})
        return
    typer.echo(res.summary())
    typer.echo(f"  baseline: {res.baseline}")
    for i, name in enumerate(res.layers):
        extra = f"  delta {res.delta[i]:+.2e}" if res.delta is not None else ""
        typer.echo(f"  {name:<20} total {res.totals[i]:>+10.4f}{extra}")
