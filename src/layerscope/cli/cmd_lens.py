"""``layerscope lens MODEL [DATA] --prompt TEXT``: the logit lens of a causal language model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app
from .cmd_importance import LimitOpt, PlotOpt, load_data, save_plot
from .common import BlocksOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, model_from_cli, print_json


@app.command("lens")
def lens_command(
    model: ModelArg,
    data: Annotated[Optional[str], typer.Argument(
        help="Texts to average the per-layer statistics over: a built-in dataset name (e.g. "
             "sentences) or a file (.txt, one text per line). Without it, the prompt is used.",
        metavar="[DATA]", show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Show the top-k tokens at "
                                                  "every layer and position of this text.",
                                                  show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Tokens shown per layer and position.")] = 5,
    limit: LimitOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")] = 8,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest text in tokens.")] = 128,
    plot: PlotOpt = None,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Decode every layer's residual stream through the final norm and the LM head."""
    from layerscope.analyses.lens import lens_stack, logit_lens
    from layerscope.errors import LayerscopeError

    if data is None and prompt is None:
        raise LayerscopeError("pass DATA to average over, --prompt TEXT, or both")
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code)
    lens_stack(loaded, blocks)  # no LM head: fail before reading any data
    items = load_data(data, limit) if data is not None else None
    res = logit_lens(loaded, items, prompt=prompt, top_k=top_k, blocks=blocks,
                     batch_size=batch_size, max_length=max_length, progress=not as_json)
    save_plot(res, plot)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    typer.echo(f"  {'layer':<24} {'accuracy':>9} {'loss':>8} {'KL':>8} {'=final':>7}")
    for i, name in enumerate(res.layers):
        typer.echo(f"  {name:<24} {res.accuracy[i]:>9.3f} {res.loss[i]:>8.3f} {res.kl[i]:>8.3f} "
                   f"{res.top1_agreement[i]:>7.3f}")
    if res.top_tokens is not None:
        typer.echo(f"top-1 next token per layer for: {res.prompt!r}")
        for i, name in enumerate(res.layers):
            cells = " | ".join(repr(pos[0]) for pos in res.top_tokens[i])
            typer.echo(f"  {name:<24} {cells}")
        last = res.top_tokens[-1][-1]
        typer.echo(f"top-{res.top_k} after the prompt: " + ", ".join(repr(t) for t in last))
