"""``layerscope zoo [NAME]``: the zoo networks and their options, or one network in detail."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app
from .common import JsonOpt, print_json


@app.command("zoo")
def zoo_command(
    name: Annotated[Optional[str], typer.Argument(
        help="A zoo network (e.g. gpt) or a spec (e.g. cnn:depth=3): show its options, shapes "
             "and blocks.", metavar="[NAME]", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the zoo networks with their options and defaults, or show one network in detail."""
    from layerscope import zoo

    if name is None:
        rows = [_listing(n, text) for n, text in zoo.names().items()]
        if as_json:
            print_json(rows)
        else:
            _print_listing(rows)
        return
    info = network_info(name)
    if as_json:
        print_json(info)
    else:
        _print_info(info)


def network_info(spec: str) -> dict:
    """One network's description, options, shapes on an example batch, blocks and usage.

    Example:
        >>> info = network_info("gpt:depth=2,width=32,heads=2")
        >>> info["output_shape"], info["blocks"]
        ([2, 64, 128], ['blocks.0', 'blocks.1'])
    """
    import torch

    from layerscope import zoo
    from layerscope.layers import Layers
    from layerscope.zoo.describe import options

    name, _ = zoo.parse_spec(spec)
    torch.manual_seed(0)
    net = zoo.build(spec).eval()
    x = net.example_input(batch_size=2)
    with torch.no_grad():
        out = net(x)
    config = {f.name: getattr(net.config, f.name) for f in options(name)}
    example_spec = _example_spec(name, config)
    return {
        "name": name,
        "spec": spec,
        "description": zoo.names()[name],
        "task": net.task,
        "input_shape": list(net.input_shape),
        "input_dtype": str(x.dtype).replace("torch.", ""),
        "example_input_shape": list(x.shape),
        "output_shape": list(out.shape),
        "parameters": net.num_parameters(),
        "blocks": Layers(net, "blocks", blocks=net.layerscope_blocks).names(),
        "options": [dict(o.to_dict(), value=config[o.name]) for o in options(name)],
        "example": {
            "cli": f"layerscope summary {example_spec}",
            "python": (f"from layerscope import zoo; net = zoo.build({example_spec!r}); "
                       f"out = net(net.example_input(batch_size=2))"),
        },
    }


def _example_spec(name: str, config: dict) -> str:
    keys = [k for k in ("depth", "width") if k in config]
    return name + (":" + ",".join(f"{k}={config[k]}" for k in keys) if keys else "")


def _listing(name: str, text: str) -> dict:
    from layerscope.zoo.describe import options

    return {"name": name, "description": text,
            "options": {o.name: o.default for o in options(name)}}


def _show(value) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _print_listing(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="zoo networks (name or name:key=value,...)")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("options (defaults)")
    for row in rows:
        table.add_row(row["name"], row["description"],
                      ", ".join(f"{k}={_show(v)}" for k, v in row["options"].items()))
    console = Console()
    console.print(table)
    console.print("Details of one: layerscope zoo NAME (e.g. layerscope zoo gpt)")


def _print_info(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{info['name']}[/bold]: {info['description']}")
    console.print(f"task: {info['task']}    parameters: {info['parameters']:,}")
    console.print(f"input per item: {tuple(info['input_shape'])} "
                  f"{info['input_dtype']}    example batch {tuple(info['example_input_shape'])} "
                  f"-> output {tuple(info['output_shape'])}")
    blocks = info["blocks"]
    shown = ", ".join(blocks[:6]) + (", ..." if len(blocks) > 6 else "")
    console.print(f"blocks: {len(blocks)} ({shown})")
    table = Table(title=f"options of {info['spec']}")
    table.add_column("option", style="bold")
    table.add_column("type")
    table.add_column("value")
    table.add_column("meaning")
    for o in info["options"]:
        value = _show(o["value"]) + ("" if o["value"] == o["default"] else
                                     f" (default {_show(o['default'])})")
        table.add_row(o["name"], o["type"], value, o["help"])
    console.print(table)
    console.print("example (a spec goes wherever a MODEL goes):")
    console.print(f"  {info['example']['cli']}", markup=False)
    console.print(f"  {info['example']['python']}", markup=False)
