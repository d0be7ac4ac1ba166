"""``layerscope datasets [DATA]``: the built-in data sets with size, source and licence, or the
details and first items of one data set (a built-in name or a file).

Example:
    >>> from layerscope.cli.cmd_datasets import preview
    >>> from layerscope.data import load_dataset
    >>> preview(load_dataset("digits"), 1)[0]["label"]
    '0'
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app
from .common import JsonOpt, print_json


def listing() -> list[dict]:
    """One row per built-in data set, read from the data set itself."""
    from layerscope.data import builtin_datasets, load_dataset

    rows = []
    for name, summary in builtin_datasets().items():
        data = load_dataset(name)
        rows.append({"name": name, "size": len(data), "description": summary,
                     "source": data.meta.get("source"), "licence": data.meta.get("licence")})
    return rows


def _item_text(data, i: int) -> str:
    item = data.items[i]
    if isinstance(item, str):
        return item.replace("\n", "\\n")
    vocab = data.meta.get("vocab")
    if vocab is not None and item.dim() == 1 and not item.dtype.is_floating_point:
        return "".join(vocab[t] for t in item.tolist()).replace("\n", "\\n")
    values = item.float()
    return (f"{tuple(item.shape)} {str(item.dtype)[6:]}, min {values.min():.3g}, "
            f"mean {values.mean():.3g}, max {values.max():.3g}")


def _label_text(data, i: int) -> str | None:
    if data.labels is None:
        return None
    label = data.labels[i]
    if label.dim() > 0:
        vocab = data.meta.get("vocab")
        if vocab is not None and not label.dtype.is_floating_point:
            return "".join(vocab[t] for t in label.tolist()).replace("\n", "\\n")
        return f"{tuple(label.shape)} {str(label.dtype)[6:]}"
    if data.classes is not None:
        return data.classes[int(label)]
    return f"{float(label):.4g}"


def preview(data, n: int) -> list[dict]:
    """The first ``n`` items as text (texts, decoded tokens, or shape and value range) and labels."""
    return [{"index": i, "item": _item_text(data, i), "label": _label_text(data, i)}
            for i in range(min(n, len(data)))]


def details(data, n: int) -> dict:
    """What a data set is: meta (without long lists), shape, task, classes and first items."""
    meta = {k: v for k, v in data.meta.items() if not isinstance(v, list)}
    shape = tuple(data.items.shape[1:]) if not isinstance(data.items, list) else None
    return {"name": data.name, "size": len(data), "modality": data.modality, "task": data.task,
            "item_shape": list(shape) if shape is not None else None,
            "item_dtype": str(data.items.dtype)[6:] if shape is not None else "str",
            "classes": data.classes, "meta": meta, "items": preview(data, n)}


@app.command("datasets")
def datasets_command(
    data: Annotated[Optional[str], typer.Argument(
        help="A built-in data set name or a data file/folder to describe; none lists the "
             "built-in data sets.", metavar="[DATA]", show_default=False)] = None,
    show: Annotated[int, typer.Option("--show", "-n", help="How many items to show.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """List the built-in data sets (size, source, licence), or describe one and show its items."""
    from layerscope.errors import LayerscopeError

    if show < 0:
        raise LayerscopeError(f"--show {show} must be 0 or more items")
    if data is None:
        rows = listing()
        if as_json:
            print_json(rows)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="built-in data sets")
        for column in ("name", "size", "description", "source", "licence"):
            table.add_column(column, style="bold" if column == "name" else None,
                             justify="right" if column == "size" else "left")
        for row in rows:
            table.add_row(row["name"], f"{row['size']:,}", row["description"],
                          row["source"] or "", row["licence"] or "")
        Console().print(table)
        return
    from layerscope.data import load_dataset

    info = details(load_dataset(data), show)
    if as_json:
        print_json(info)
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    shape = f"{tuple(info['item_shape'])} {info['item_dtype']}, " if info["item_shape"] \
        is not None else ""
    console.print(f"[bold]{escape(info['name'])}[/]: {info['size']:,} items, {shape}"
                  f"{info['modality']}, task {info['task'] or 'none (no labels)'}")
    if info["classes"]:
        console.print(f"classes ({len(info['classes'])}): "
                      + escape(", ".join(info["classes"][:20]))
                      + (" ..." if len(info["classes"]) > 20 else ""))
    for key in ("description", "source", "source_detail", "licence", "licence_detail", "citation"):
        if info["meta"].get(key):
            console.print(f"{key}: {escape(str(info['meta'][key]))}")
    for row in info["items"]:
        label = f"  -> {escape(row['label'])}" if row["label"] is not None else ""
        text = row["item"] if len(row["item"]) <= 120 else row["item"][:117] + "..."
        console.print(f"  \\[{row['index']}] {escape(text)}{label}")
