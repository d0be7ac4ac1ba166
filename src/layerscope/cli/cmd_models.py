"""``layerscope models``: the built-in model names, what each is, and whether it is installed."""

from __future__ import annotations

from .app import app
from .common import JsonOpt, print_json


@app.command("models")
def models_command(as_json: JsonOpt = False) -> None:
    """List the built-in models (real pretrained ones and the zoo) and whether each is installed."""
    from layerscope.builtin_models import is_installed
    from layerscope.models import builtin_models

    rows = [{"name": name, "description": text, "installed": is_installed(name)}
            for name, text in builtin_models().items()]
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="built-in models")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("installed")
    for row in rows:
        table.add_row(row["name"], row["description"], "yes" if row["installed"] else "no")
    Console().print(table)
