"""``layerscope patch MODEL --clean TEXT --corrupt TEXT --target TOKEN``: activation patching."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .common import (FIGURE_SUFFIXES, AllowMissingWeightsOpt, BlocksOpt, ForceOpt, JsonOpt,
                     LayersOpt, ModelArg, TrustRemoteCodeOpt, model_from_cli, out_file, print_json,
                     save_figure_to)

PlotFileOpt = Annotated[Optional[Path], typer.Option("--plot", help="Write the figure to this "
                                                     "file (.png, .svg or .pdf).", show_default=False)]


@app.command("patch")
def patch_command(
    model: ModelArg,
    clean: Annotated[Optional[str], typer.Option("--clean", help="The clean prompt.",
                                                 show_default=False)] = None,
    corrupt: Annotated[Optional[str], typer.Option("--corrupt", help="The corrupted prompt (same "
                                                   "token length as --clean).", show_default=False)] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="The clean answer, one token "
                                                  "(mind the leading space: ' Paris').",
                                                  show_default=False)] = None,
    foil: Annotated[Optional[str], typer.Option("--foil", help="The corrupted answer, one token "
                                                "(default: the model's top token on --corrupt).",
                                                show_default=False)] = None,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="A .tsv of prompt pairs: "
                                                  "clean<TAB>corrupt<TAB>target[<TAB>foil] per line; "
                                                  "results are averaged.", show_default=False)] = None,
    part: Annotated[str, typer.Option("--part", help="What to patch: block (the residual stream "
                                      "after each block), attention, feed-forward, or head (each "
                                      "head at all positions).")] = "block",
    direction: Annotated[str, typer.Option("--direction", help="denoise (clean activation into "
                                           "the corrupted run) or noise (corrupted into clean).")] = "denoise",
    metric: Annotated[str, typer.Option("--metric", help="logit-diff (target minus foil logit) or "
                                        "prob (target probability), at the last position.")] = "logit-diff",
    layers: LayersOpt = None,
    method: Annotated[str, typer.Option("--method", help="auto, prefix (re-run only the blocks from "
                                        "the patched one), full (batched full forwards) or loop "
                                        "(one forward per patch).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Patches per forward.")] = 32,
    plot: PlotFileOpt = None,
    force: ForceOpt = False,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which layer (sublayer, head) at which position carries the answer: activation patching."""
    from layerscope.analyses.causal.patching import patch, read_pairs
    from layerscope.errors import LayerscopeError

    if (clean is None) != (corrupt is None) or (clean is not None and target is None):
        raise LayerscopeError("give --clean, --corrupt and --target together (or --pairs FILE)")
    if clean is None and pairs is None:
        raise LayerscopeError("nothing to patch: give --clean/--corrupt/--target or --pairs FILE")
    todo = read_pairs(pairs) if pairs is not None else []
    out = out_file(plot, force, FIGURE_SUFFIXES)
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    res = patch(loaded, clean, corrupt, target, foil, pairs=todo, part=part, direction=direction,
                metric=metric, layers=layers, blocks=blocks, batch_size=batch_size, method=method)
    save_figure_to(res, out)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    cols = [repr(t)[1:-1][:8] for t in res.tokens]
    typer.echo(f"  restored share of {res.metric} ({res.direction}); columns: positions")
    typer.echo("  " + f"{res.part:<12}" + "".join(f"{c:>9}" for c in cols))
    for label, row in zip(res.labels, res.restored):
        typer.echo("  " + f"{label:<12}" + "".join(f"{v:>9.2f}" for v in row))
    typer.echo(f"  {res.block_calls} block evaluations, {res.forward_calls} full forwards, "
               f"{res.seconds:.1f}s" + (f"; heat map in {out}" if out else ""))
