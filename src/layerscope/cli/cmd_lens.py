"""``layerscope lens MODEL [DATA] --prompt TEXT``: the logit lens of a causal language model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .cmd_importance import PlotOpt, save_plot
from .common import FIGURE_SUFFIXES, AllowMissingWeightsOpt, ForceOpt, out_file
from .common import BlocksOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, model_from_cli, print_json
from .limits import load_limited

#: items read unless told otherwise: the logit lens on SmolLM2 decodes every layer over the whole
#: vocabulary (about a minute for 64 texts here); a tuned lens needs more to train on
LENS_ITEMS, TUNED_ITEMS = 64, 600
LimitOpt = Annotated[Optional[str], typer.Option(
    "--limit", help=f"Use N items of DATA (a seeded random subset; default {LENS_ITEMS}, "
                    f"{TUNED_ITEMS} with --tuned), or 'all' for every item.", show_default=False,
    metavar="N|all")]


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
    tuned: Annotated[bool, typer.Option("--tuned", help="Train a tuned lens (one affine map per "
                                        "layer) on DATA and compare it with the logit lens on "
                                        "held-out items.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training part (--tuned).")] = 1,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Stop training after this many "
                                                 "batches (--tuned).", show_default=False)] = None,
    lens_out: Annotated[Optional[Path], typer.Option("--lens-out", help="Save the trained tuned "
                                                     "lens to this .safetensors file.",
                                                     show_default=False)] = None,
    lens_file: Annotated[Optional[Path], typer.Option("--lens", help="Decode through a tuned lens "
                                                      "saved with --lens-out.", show_default=False)] = None,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Decode every layer's residual stream through the final norm and the LM head."""
    from layerscope.errors import LayerscopeError

    if data is None and prompt is None:
        raise LayerscopeError("pass DATA to average over, --prompt TEXT, or both")
    if tuned and data is None:
        raise LayerscopeError("--tuned trains on DATA; pass texts to train and evaluate on")
    if tuned and lens_file is not None:
        raise LayerscopeError("pass --tuned to train a tuned lens or --lens FILE to use one, not both")
    if lens_out is not None and not tuned:
        raise LayerscopeError("--lens-out saves a lens trained with --tuned; add --tuned")
    plot = out_file(plot, force, FIGURE_SUFFIXES)
    lens_out = out_file(lens_out, force, (".safetensors",))
    from layerscope.analyses.lens import lens_stack, logit_lens  # after the checks: they import torch
    from layerscope.analyses.tuned_lens import TunedLens

    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    lens_stack(loaded, blocks)  # no LM head: fail before reading any data
    lens = TunedLens.load(lens_file) if lens_file is not None else None
    items = None if data is None else load_limited(
        data, limit, default=TUNED_ITEMS if tuned else LENS_ITEMS)
    if tuned:
        _tuned(loaded, items, epochs=epochs, steps=steps, batch_size=batch_size, max_length=max_length,
               blocks=blocks, plot=plot, lens_out=lens_out, as_json=as_json)
        return
    res = logit_lens(loaded, items, prompt=prompt, top_k=top_k, blocks=blocks, lens=lens,
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
        if res.prompt_tokens:  # columns headed by the prompt token each prediction follows
            typer.echo(f"  {'after token:':<24} " + " | ".join(repr(t) for t in res.prompt_tokens))
        for i, name in enumerate(res.layers):
            cells = " | ".join(repr(pos[0]) for pos in res.top_tokens[i])
            typer.echo(f"  {name:<24} {cells}")
        last = res.top_tokens[-1][-1]
        typer.echo(f"top-{res.top_k} after the prompt: " + ", ".join(repr(t) for t in last))


def _tuned(loaded, items, *, epochs, steps, batch_size, max_length, blocks, plot, lens_out, as_json) -> None:
    from layerscope.analyses.tuned_lens import train_tuned_lens

    res = train_tuned_lens(loaded, items, epochs=epochs, steps=steps, batch_size=batch_size,
                           max_length=max_length, blocks=blocks, progress=not as_json)
    if lens_out is not None:
        res.lens.save(lens_out)
    save_plot(res, plot)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    typer.echo(f"  {'layer':<24} {'KL logit':>9} {'KL tuned':>9} {'acc logit':>10} {'acc tuned':>10}")
    for i, name in enumerate(res.layers):
        typer.echo(f"  {name:<24} {res.logit_kl[i]:>9.3f} {res.tuned_kl[i]:>9.3f} "
                   f"{res.logit_accuracy[i]:>10.3f} {res.tuned_accuracy[i]:>10.3f}")
    typer.echo(f"  trained {res.steps} steps on {res.n_train_items} items; {res.n_test_items} held out"
               + (f"; lens saved to {lens_out}" if lens_out is not None else ""))
