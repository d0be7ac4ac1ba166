"""``layerscope steer MODEL [DATA]``: steering vectors from a contrast set, swept over blocks and strengths."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app
from .cmd_patch import PlotFileOpt
from .common import (FIGURE_SUFFIXES, AllowMissingWeightsOpt, BatchSizeOpt, BlocksOpt, ForceOpt,
                     JsonOpt, LayersOpt, MaxLengthOpt, ModelArg, TrustRemoteCodeOpt, model_from_cli,
                     out_file, print_json, save_figure_to)


def contrast_split(data, high: float, low: float, n_eval: int, seed: int):
    """(group A, group B, held-out neutral texts) from a scored dataset: A = score >= high,
    B = score <= low, held out = the items between, closest to 0 first (at most ``n_eval``)."""
    import torch

    from layerscope.errors import LayerscopeError

    if data.labels is None or not torch.is_floating_point(torch.as_tensor(data.labels)) \
            and data.classes is None:
        raise LayerscopeError(f"dataset {data.name!r} has no scores or labels to form the two groups; "
                              f"use one with scores (e.g. sentences) or binary labels")
    y = torch.as_tensor(data.labels).float()
    if high <= low:
        raise LayerscopeError(f"--high ({high:g}) must be above --low ({low:g})")
    a = [data.items[i] for i in torch.nonzero(y >= high).flatten().tolist()]
    b = [data.items[i] for i in torch.nonzero(y <= low).flatten().tolist()]
    middle = torch.nonzero((y > low) & (y < high)).flatten()
    order = middle[torch.argsort(y[middle].abs(), stable=True)]
    rest = [data.items[i] for i in order[:n_eval].tolist()]
    if len(a) < 2 or len(b) < 2 or not rest:
        raise LayerscopeError(f"the split gives {len(a)} items with score >= {high:g}, {len(b)} with "
                              f"score <= {low:g} and {len(rest)} in between; use more data (--limit) "
                              f"or other --high/--low")
    return a, b, rest


@app.command("steer")
def steer_command(
    model: ModelArg,
    data: Annotated[str, typer.Argument(help="A scored dataset for the contrast set (A: score >= "
                                        "--high, B: score <= --low) and the held-out texts (the "
                                        "items in between).", metavar="[DATA]")] = "sentences",
    alphas: Annotated[str, typer.Option("--alphas", help="Comma list of steering strengths.")] = "2,4,8",
    vector: Annotated[str, typer.Option("--vector", help="The steering direction per block: "
                                        "mean-difference (mean of A minus mean of B) or probe (a "
                                        "logistic-regression probe's direction, A vs B, scaled to "
                                        "the groups' separation along it).")] = "mean-difference",
    layers: LayersOpt = None,
    high: Annotated[float, typer.Option("--high", help="Group A: score at least this.")] = 2.0,
    low: Annotated[float, typer.Option("--low", help="Group B: score at most this.")] = -2.0,
    limit: Annotated[int, typer.Option("--limit", help="Items of DATA to draw the groups from.")] = 600,
    n_eval: Annotated[int, typer.Option("--eval", help="Held-out texts to measure on.")] = 32,
    prompt: Annotated[Optional[str], typer.Option("--generate", help="Also write greedy "
                                                  "continuations of this prompt with the best "
                                                  "setting, +alpha and -alpha.", show_default=False)] = None,
    tokens: Annotated[int, typer.Option("--tokens", help="Tokens to generate.")] = 20,
    batch_size: BatchSizeOpt = 16,
    max_length: MaxLengthOpt = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data draw.")] = 0,
    plot: PlotFileOpt = None,
    force: ForceOpt = False,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which block steers best, for how much damage: difference-of-means (or probe-direction)
    steering swept over blocks x strengths."""
    from layerscope.analyses.causal.steering import (generate, probe_vectors, steer, steering_vectors,
                                                     text_classifier)
    from functools import partial

    from layerscope.data import load_dataset
    from layerscope.errors import LayerscopeError

    make_vectors = {"mean-difference": steering_vectors,
                    "probe": partial(probe_vectors, seed=seed)}.get(vector)
    if make_vectors is None:
        raise LayerscopeError(f"--vector must be mean-difference or probe; got {vector!r}")

    try:
        alpha_list = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise LayerscopeError(f"--alphas must be a comma list of numbers, e.g. 2,4,8; got {alphas!r}") from None
    out = out_file(plot, force, FIGURE_SUFFIXES)
    loaded = model_from_cli(model, blocks=blocks, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    ds = load_dataset(data, limit=limit, seed=seed)
    group_a, group_b, rest = contrast_split(ds, high, low, n_eval, seed)
    vectors = make_vectors(loaded, group_a, group_b, layers=layers, blocks=blocks,
                           batch_size=batch_size, max_length=max_length)
    res = steer(loaded, group_a, group_b, rest, layers=layers, alphas=alpha_list, vectors=vectors,
                blocks=blocks, batch_size=batch_size, max_length=max_length, seed=seed)
    res.vector = vector
    if prompt is not None:
        label, alpha, _, _ = res.best()
        v = vectors[label]
        res.samples = [{"layer": label, "alpha": a, "text": generate(
            loaded, prompt, layer=int(label), vector=v, alpha=a, max_new_tokens=tokens, blocks=blocks)}
            for a in (0.0, alpha, -alpha)]
        if all(isinstance(t, str) for t in [*group_a, *group_b]):
            clf, res.text_classifier_accuracy = text_classifier(group_a, group_b, seed=seed)
            for sample in res.samples:
                sample["p_a"] = float(clf.predict_proba([sample["text"]])[0, 1])
    save_figure_to(res, out)
    if as_json:
        print_json(res.to_dict())
        return
    typer.echo(res.summary())
    typer.echo(f"  groups: {res.n_contrast[0]} with score >= {high:g} (A), {res.n_contrast[1]} with "
               f"score <= {low:g} (B); {res.n_eval} held-out texts")
    head = "".join(f"{'eff@' + format(a, 'g'):>10}{res.objective[:4] + '@' + format(a, 'g'):>11}"
                   for a in res.alphas)
    typer.echo(f"  {'block':<8}{'|v|':>8}{head}")
    for i, label in enumerate(res.labels):
        cells = "".join(f"{res.effect[i][j]:>+10.3f}{res.damage[i][j]:>11.4g}" for j in range(len(res.alphas)))
        typer.echo(f"  {label:<8}{res.vector_norms[i]:>8.2f}{cells}")
    if res.samples and res.text_classifier_accuracy is not None:
        typer.echo(f"  continuations' P(A) by a word classifier of the two groups (TF-IDF + logistic "
                   f"regression, 5-fold accuracy {res.text_classifier_accuracy:.2f}):")
    for s in res.samples or []:
        p_a = f" P(A) {s['p_a']:.2f}" if "p_a" in s else ""
        typer.echo(f"  block {s['layer']} alpha {s['alpha']:+g}{p_a}: {prompt}{s['text']!s}")
