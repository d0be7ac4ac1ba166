"""``layerscope explain``: one layer's computation step by step on concrete numbers.

Two forms: ``layerscope explain --ffn FILE.json`` (or ``--example seed002``) walks a two-layer
feed-forward network given as matrices; ``layerscope explain MODEL --layer N --input "text"``
walks one block of a real model and checks the result against the block's own forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .common import AllowMissingWeightsOpt
from .common import BlocksOpt, InputShapeOpt, JsonOpt, TrustRemoteCodeOpt, print_json

TOLERANCE = 1e-5


@app.command("explain")
def explain_command(
    model: Annotated[Optional[str], typer.Argument(
        help="The model (as everywhere: minilm, a zoo spec such as cnn, a Hugging Face folder, a "
             "factory, a checkpoint). Leave out with --ffn/--example.",
        metavar="[MODEL]", show_default=False)] = None,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Which block: an index (negative "
                                       "counts from the end) or a name.")] = "0",
    text: Annotated[Optional[str], typer.Option("--input", "-i", help="The input text for a text "
                                                "model.", show_default=False)] = None,
    input_file: Annotated[Optional[Path], typer.Option(
        "--input-file", help="An input tensor (.npy, .safetensors, .pt) for image/tensor models, "
        "or token ids for a text model.", show_default=False)] = None,
    head: Annotated[int, typer.Option("--head", help="The attention head whose scores and "
                                      "weights are shown.")] = 0,
    ffn: Annotated[Optional[str], typer.Option(
        "--ffn", help="A JSON file with W1, b1, W2, b2 and x (rows = tokens) as nested lists; "
        "'seed002' names the shipped example.", show_default=False)] = None,
    example: Annotated[Optional[str], typer.Option(
        "--example", help="A shipped explain file: seed002.", show_default=False)] = None,
    activation: Annotated[str, typer.Option("--activation", help="relu or gelu (with --ffn).")] = "relu",
    blocks: BlocksOpt = None,
    input_shape: InputShapeOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show one layer's computation step by step: shapes and numbers at every step.

    Examples: `layerscope explain --example seed002`; `layerscope explain --ffn W.json --activation gelu`; `layerscope explain minilm --layer 2 --input "The cat sat." --head 3`; `layerscope explain cnn --layer 0`.
    """  # noqa: E501
    from layerscope.errors import LayerscopeError

    source = ffn or example
    if ffn and example:
        raise LayerscopeError("give either --ffn FILE.json or --example NAME, not both")
    if source is not None:
        if model is not None:
            raise LayerscopeError(f"--ffn/--example walks an explain file, not model {model!r}; "
                                  f"leave out MODEL or drop --ffn")
        from layerscope.explain import explain_ffn

        result = explain_ffn(source, activation=activation)
    else:
        if model is None:
            raise LayerscopeError("nothing to explain: give MODEL --layer N (e.g. `layerscope "
                                  "explain minilm --layer 0 --input \"some text\"`) or --ffn "
                                  "FILE.json (e.g. --example seed002)")
        if text is not None and input_file is not None:
            raise LayerscopeError("give either --input TEXT or --input-file FILE, not both")
        from layerscope.explain import explain

        from .common import model_from_cli

        loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                                trust_remote_code=trust_remote_code,
                                allow_missing_weights=allow_missing_weights)
        result = explain(loaded, layer, input_file if input_file is not None else text,
                         head=head, blocks=blocks)
    if as_json:
        print_json(result.to_dict())
        return
    _print(result)


def _fmt(v: float) -> str:
    return f"{v:.6f}" if abs(v) < 1e4 else f"{v:.4g}"


def _matrix(title: str, values, labels: list[str] | None = None) -> "Table":
    from rich.markup import escape
    from rich.table import Table

    rows = values if isinstance(values[0], list) else [values]
    labelled = labels is not None and len(labels) == len(rows) == len(rows[0])
    table = Table(title=title, show_header=labelled, title_justify="left")
    if labelled:
        table.add_column("")
        for label in labels:
            table.add_column(escape(label), justify="right")
    for i, row in enumerate(rows):
        cells = [_fmt(v) for v in row]
        table.add_row(*([escape(labels[i])] + cells if labelled else cells))
    return table


def _print(result) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    console = Console()
    text = f"input: {result.inputs}"
    if result.tokens:
        text += f"\ntokens: {' '.join(result.tokens)}"
    console.print(Panel(escape(text), title=escape(result.title), expand=False))
    for name, values in result.parameters.items():
        shape = (f"{len(values)}×{len(values[0])}" if values and isinstance(values[0], list)
                 else str(len(values)))
        console.print(_matrix(escape(f"{name} ({shape})"), values))
    full = result.layer_kind == "ffn"
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("step", style="bold")
    table.add_column("computes")
    table.add_column("shape")
    if not full:
        table.add_column("first values (row 0)")
    for i, s in enumerate(result.steps):
        cells = [str(i), s.name, s.formula, "×".join(map(str, s.shape)) or "scalar"]
        if not full:
            cells.append(" ".join(_fmt(v) for v in s.numbers) + (" ..." if len(s.numbers) > 5 else ""))
        table.add_row(*[escape(c) for c in cells])
    console.print(table)
    for i, s in enumerate(result.steps):
        small = s.values is not None and len(s.values) <= 12
        if (full and s.values is not None) or (s.name.startswith("attention weights") and small):
            # attention weights: one row per query token, one column per key token
            title = f"{i}. {s.name} ({'×'.join(map(str, s.shape))})"
            if s.name.startswith("attention weights"):
                title += ": rows = queries, columns = keys"
            console.print(_matrix(escape(title), s.values,
                                  result.tokens if s.name.startswith("attention") else None))
    console.print(f"parameters: {result.params:,}", markup=False)
    console.print(f"layers: {result.layers_note}", markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if result.compare is not None:
        other = result.compare
        console.print(f"\ncompare: the same network on {other.inputs}", markup=False)
        for i, s in enumerate(other.steps):
            if s.values is not None:
                console.print(_matrix(escape(f"{i}. {s.name} ({'×'.join(map(str, s.shape))})"),
                                      s.values))
        for note in other.notes:
            console.print(f"note: {note}", markup=False)
    if result.check is not None:
        verdict = "matches" if result.check <= TOLERANCE else "DOES NOT match"
        console.print(f"max |step-by-step − the layer's own forward output| = {result.check:.3g} "
                      f"({verdict} to {TOLERANCE:g})", markup=False)
