"""``layerscope drop | prune | quantize | early-exit``: surgery on a copy, saved and measured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .common import (
    AllowMissingWeightsOpt,
    BlocksOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    TrustRemoteCodeOpt,
    model_from_cli,
    parse_layers,
    print_json,
)
from .limits import limit_option, load_limited

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the changed model to "
                                      "(must not be the input's folder).", show_default=False)]
OverwriteOpt = Annotated[bool, typer.Option(
    "--force", "--overwrite", help="Write into an output folder layerscope did not write (files "
    "of the same names are replaced; others stay). An earlier output of the same command is "
    "replaced without it.")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Held-out data to measure quality on (and to choose blocks with --auto): a "
    "built-in dataset (e.g. sentences, digits) or a file. Default: an example batch.",
    show_default=False)]
#: items of --data measured on unless told otherwise (early exit calibrates its thresholds on more)
SURGERY_ITEMS, EXIT_ITEMS = 64, 600
LimitOpt = limit_option(SURGERY_ITEMS)
ExitLimitOpt = limit_option(EXIT_ITEMS)
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")]
NoMeasureOpt = Annotated[bool, typer.Option("--no-measure", help="Save without measuring before/after.")]


def _dataset(ref: str | None, limit: str | None, model=None, default: int = SURGERY_ITEMS):
    """DATA loaded (``None`` when not given), ``--limit`` items of it said up front, and, with
    ``model``, checked to fit it before any surgery is done or saved."""
    if ref is None:
        return None
    dataset = load_limited(ref, limit, default=default)
    if model is not None and len(dataset):
        model.encode(dataset.items[:2])  # wrong kind of data: one line now, not after the save
    return dataset


def _folder(model: str) -> Path | None:
    """MODEL as a folder, when it is one (the output may not be it)."""
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def _report(result, extra: dict, as_json: bool) -> None:
    if as_json:
        print_json({**(result.to_dict() if result is not None else {}), **extra})
        return
    for key, value in extra.items():
        typer.echo(f"{key}: {value}")
    if result is not None:
        typer.echo(result.summary())


def _measured(loaded, new_loaded, data, *, operation, out, changes, batch_size,
              no_measure, bytes_after=None):
    if no_measure:
        return None
    from layerscope.surgery.measure import measure

    return measure(loaded, new_loaded, data, operation=operation, output=out, changes=changes,
                   batch_size=batch_size, bytes_after=bytes_after)


@app.command("drop")
def drop_command(
    model: ModelArg,
    out: OutOpt,
    layers: Annotated[Optional[str], typer.Option(
        "--layers", help="Blocks to remove, numbered as `summary` numbers them: 21-29, 0,3,5.",
        show_default=False)] = None,
    auto: Annotated[Optional[int], typer.Option(
        "--auto", help="Choose N blocks to remove from the data (needs --data).",
        show_default=False)] = None,
    by: Annotated[str, typer.Option("--by", help="With --auto: influence (lowest Block "
                                    "Influence) or angular (best run of N by angular distance).")] = "influence",
    data: DataOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
    overwrite: OverwriteOpt = False,
    no_measure: NoMeasureOpt = False,
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove whole blocks and save a model that loads with its own library."""
    from layerscope.errors import LayerscopeError
    from layerscope.surgery import auto_blocks, drop_blocks, save_model
    from layerscope.surgery.save import check_output, source_path

    if (layers is None) == (auto is None):
        raise LayerscopeError("give either --layers (e.g. --layers 21-29) or --auto N with --data")
    check_output(out, source=_folder(model), overwrite=overwrite)
    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    check_output(out, source=source_path(loaded), overwrite=overwrite)
    dataset = _dataset(data, limit, loaded)
    if auto is not None:
        if dataset is None:
            raise LayerscopeError("--auto chooses blocks from data: pass --data (e.g. --data sentences)")
        chosen = auto_blocks(loaded, dataset, auto, by=by, blocks=blocks, batch_size=batch_size)
    else:
        chosen = parse_layers(layers)
    dropped = drop_blocks(loaded, chosen, blocks=blocks)
    path = save_model(dropped.loaded, dropped.module, out, overwrite=overwrite)
    result = _measured(loaded, dropped.loaded, dataset, operation="drop", out=path,
                       changes={"removed": dropped.removed, "names": dropped.removed_names},
                       batch_size=batch_size, no_measure=no_measure)
    _report(result, {"removed": dropped.removed, "saved": str(path)}, as_json)


@app.command("prune")
def prune_command(
    model: ModelArg,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder to write the pruned "
                                                "model to.", show_default=False)] = None,
    sparsity: Annotated[float, typer.Option("--sparsity", help="Fraction of weights (or units) "
                                            "to remove, in [0, 1).")] = 0.5,
    structured: Annotated[Optional[str], typer.Option(
        "--structured", help="Remove whole units: neurons (feed-forward width), heads "
        "(Llama-style attention) or channels (zoo CNN).", show_default=False)] = None,
    global_: Annotated[bool, typer.Option("--global", help="Unstructured: one magnitude threshold "
                                          "over all layers instead of per layer.")] = False,
    layers: Annotated[Optional[str], typer.Option(
        "--layers", help="Unstructured/sensitivity: only these blocks (0-3, 5).",
        show_default=False)] = None,
    sensitivity: Annotated[bool, typer.Option(
        "--sensitivity", help="Sweep: quality vs sparsity for each block pruned alone (needs "
        "--data; writes nothing).")] = False,
    sparsities: Annotated[str, typer.Option("--sparsities", help="With --sensitivity: the "
                                            "sparsities to try.")] = "0.1,0.3,0.5,0.7,0.9",
    data: DataOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
    overwrite: OverwriteOpt = False,
    no_measure: NoMeasureOpt = False,
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Prune by magnitude (sparser) or structurally (smaller and faster), or sweep sensitivity."""
    from layerscope.errors import LayerscopeError
    from layerscope.surgery import prune_magnitude, prune_structured, save_model
    from layerscope.surgery.prune import check_sparsity
    from layerscope.surgery.save import check_output, source_path

    if not sensitivity:
        if out is None:
            raise LayerscopeError("say where to write the pruned model: -o OUT")
        check_sparsity(sparsity)
        check_output(out, source=_folder(model), overwrite=overwrite)
    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    dataset = _dataset(data, limit, loaded)
    if sensitivity:
        from layerscope.surgery import prune_sensitivity

        if dataset is None:
            raise LayerscopeError("--sensitivity measures quality on data: pass --data")
        try:
            values = [float(s) for s in sparsities.split(",") if s.strip()]
        except ValueError:
            raise LayerscopeError(f"--sparsities must be numbers like 0.1,0.5,0.9; got {sparsities!r}") from None
        res = prune_sensitivity(loaded, dataset, sparsities=values, layers=parse_layers(layers),
                                blocks=blocks, batch_size=batch_size)
        _report(res, {"suggested (1% loss)": res.suggest(0.01)} if not as_json else
                {"suggested": res.suggest(0.01)}, as_json)
        return
    check_output(out, source=source_path(loaded) or _folder(model), overwrite=overwrite)
    if structured:
        pruned = prune_structured(loaded, sparsity, structured, blocks=blocks)
    else:
        pruned = prune_magnitude(loaded, sparsity, parse_layers(layers),
                                 scope="global" if global_ else "layer", blocks=blocks)
    path = save_model(pruned.loaded, pruned.module, out, overwrite=overwrite)
    result = _measured(loaded, pruned.loaded, dataset, operation=f"prune ({pruned.mode})",
                       out=path, changes={"mode": pruned.mode, "sparsity": pruned.sparsity,
                                          "layers": pruned.layers, "skipped": pruned.skipped},
                       batch_size=batch_size, no_measure=no_measure)
    _report(result, {"mode": pruned.mode, "saved": str(path)}, as_json)


@app.command("quantize")
def quantize_command(
    model: ModelArg,
    out: OutOpt,
    layers: Annotated[Optional[str], typer.Option(
        "--layers", help="Quantize only the Linear layers inside these blocks (default: all).",
        show_default=False)] = None,
    data: DataOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
    overwrite: OverwriteOpt = False,
    no_measure: NoMeasureOpt = False,
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """int8 dynamic quantization of nn.Linear layers (torch.ao), saved as safetensors."""
    from layerscope.surgery import quantize, save_quantized
    from layerscope.surgery.save import check_output, folder_bytes, source_path

    check_output(out, source=_folder(model), overwrite=overwrite)
    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    check_output(out, source=source_path(loaded), overwrite=overwrite)
    dataset = _dataset(data, limit, loaded)
    q = quantize(loaded, parse_layers(layers), blocks=blocks)
    path = save_quantized(q, out, overwrite=overwrite)
    result = _measured(loaded, q.loaded, dataset, operation="quantize int8",
                       out=path, changes={"quantized": q.quantized, "skipped": q.skipped},
                       batch_size=batch_size, no_measure=no_measure,
                       bytes_after=folder_bytes(path))
    skipped = "; ".join(f"{n} ({r})" for n, r in q.skipped) or "none"
    _report(result, {"quantized layers": len(q.quantized), "skipped": skipped,
                     "saved": str(path)}, as_json)


@app.command("early-exit")
def early_exit_command(
    model: ModelArg,
    data: Annotated[str, typer.Argument(help="Labelled data (a built-in dataset or a file).",
                                        metavar="DATA", show_default=False)],
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="One confidence threshold (default: a sweep 0.5 ... 0.99).",
        show_default=False)] = None,
    binarize: Annotated[Optional[float], typer.Option(
        "--binarize", help="Turn real-valued labels into classes: label > VALUE (e.g. 0 for "
        "sentiment scores).", show_default=False)] = None,
    limit: ExitLimitOpt = None,
    batch_size: BatchOpt = 32,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder to save the exit "
                                                "heads to (safetensors).", show_default=False)] = None,
    overwrite: OverwriteOpt = False,
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Exit heads per block + confidence threshold: accuracy vs blocks used and time saved."""
    import shutil

    from layerscope.outputs import staging_dir
    from layerscope.surgery import early_exit
    from layerscope.surgery.early_exit import DEFAULT_THRESHOLDS
    from layerscope.surgery.save import EXIT_KIND, check_output, publish, write_exit_info

    if out is not None:
        check_output(out, source=_folder(model), overwrite=overwrite, kind=EXIT_KIND)
    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    dataset = _dataset(data, limit, loaded, default=EXIT_ITEMS)
    items, labels = dataset.items, dataset.labels
    if binarize is not None and labels is not None:
        labels = (labels.float() > binarize).long()
    staging = staging_dir(out) if out is not None else None
    try:
        res = early_exit(loaded, (items, labels), blocks=blocks, batch_size=batch_size,
                         thresholds=[threshold] if threshold is not None else DEFAULT_THRESHOLDS,
                         save_to=staging)
        if staging is not None:
            base = str(Path(model).resolve()) if _folder(model) is not None else model
            write_exit_info(staging, base=base, blocks=blocks)
            publish(staging, out, overwrite=overwrite, kind=EXIT_KIND)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo("threshold  accuracy  blocks used  time saved")
    for t, a, u, s in zip(res.thresholds, res.accuracy, res.layers_used, res.latency_saved):
        typer.echo(f"{t:9g}  {a:8.3f}  {u:11.2f}  {s:10.0%}")
    typer.echo(res.summary())
