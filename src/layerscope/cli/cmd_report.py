"""``layerscope report [MODEL] [DATA]``: every layer measured into one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .common import (AllowMissingWeightsOpt, BatchSizeOpt, BlocksOpt, ForceOpt, InputShapeOpt,
                     JsonOpt, LayersOpt, MaxLengthOpt, TrustRemoteCodeOpt, model_from_cli,
                     parse_layers, placement_given, print_json)


@app.command("report")
def report_command(
    model: Annotated[str, typer.Argument(
        help="The model (see `layerscope models`); default: minilm.", metavar="[MODEL]")] = "minilm",
    data: Annotated[Optional[str], typer.Argument(
        help="A built-in dataset (see `layerscope datasets`) or a file; default: the built-in "
             "data that suits the model (sentences for text models).", metavar="[DATA]",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("layerscope-report"),
    limit: Annotated[Optional[str], typer.Option(
        "--limit", help="Items for the main pass: N (a seeded random subset; default 2,000, 500 "
        "for models above 50M parameters) or 'all'.", show_default=False, metavar="N|all")] = None,
    importance_items: Annotated[Optional[int], typer.Option(
        "--importance-items", help="Items for the layer-removal and logit-lens passes "
        "(default 256; 64 for models above 50M parameters).", show_default=False)] = None,
    batch_size: BatchSizeOpt = 32,
    max_length: MaxLengthOpt = 128,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the subset and the pictures.")] = 0,
    causal: Annotated[Optional[Path], typer.Option(
        "--causal", help="Causal LMs: a .tsv of prompt pairs (clean<TAB>corrupt<TAB>target[<TAB>foil] "
        "per line, one token length) for the section 'What each layer does': activation patching "
        "of every block at every position.", show_default=False, metavar="PROMPTS.tsv")] = None,
    layers: LayersOpt = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the report in the browser.")] = False,
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure every layer of MODEL on DATA and write OUT/index.html, results.json and figures/."""
    from layerscope.models import parse_input_shape
    from layerscope.report.build import build_report

    shape = parse_input_shape(input_shape) if input_shape else None
    if placement_given():  # --device/--device-map/--dtype: load here, placed, and hand it over
        model = model_from_cli(model, input_shape=shape, trust_remote_code=trust_remote_code,
                               allow_missing_weights=allow_missing_weights)
    res = build_report(model, data, out, limit=limit, batch_size=batch_size, max_length=max_length,
                       seed=seed, input_shape=shape, blocks=blocks,
                       trust_remote_code=trust_remote_code, importance_items=importance_items,
                       progress=not as_json, force=force,
                       allow_missing_weights=allow_missing_weights, causal=causal,
                       layers=parse_layers(layers))
    if as_json:
        print_json(res)
    else:
        for line in res.findings:
            typer.echo(f"• {line}")
        for name, why in res.skipped.items():
            typer.echo(f"(left out {name}: {why})")
        typer.echo(f"report: {res.index}  ({res.n_items} items, {res.seconds:.0f} s)")
    if open_browser:
        import webbrowser

        webbrowser.open(Path(res.index).resolve().as_uri())
