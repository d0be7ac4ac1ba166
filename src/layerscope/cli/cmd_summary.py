"""``layerscope summary``: every layer's shapes, parameters and FLOPs, and how many layers there are."""

from __future__ import annotations

from .app import app
from .common import AllowMissingWeightsOpt
from .common import (BlocksOpt, GranularityOpt, InputShapeOpt, JsonOpt, ModelArg,
                     TrustRemoteCodeOpt, model_from_cli, print_json)


def _shape(shape) -> str:
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


def summary_table(result):
    """The rich table of an :class:`~layerscope.anatomy.AnatomyResult`: one row per layer, then
    the rest (what no row accounts for, when there is any) and the totals.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from layerscope.anatomy import anatomy
        >>> a = anatomy(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        ...             example=torch.zeros(1, 4))
        >>> table = summary_table(a)
        >>> table.row_count, [c.footer for c in table.columns][-2:]
        (2, ['58', '96'])
    """
    from rich.table import Table

    rows = result.rows()
    names = [r["name"] + (f" (tied to {r['tied_to']})" if r["tied_to"] else "") for r in rows]
    params = [f"{r['params']:,}" for r in rows]
    flops = [f"{r['flops']:,}" for r in rows]
    shapes = [f"{_shape(r['input_shape'])} -> {_shape(r['output_shape'])}" for r in rows]
    rest = bool(result.rest_params or result.rest_flops)
    if rest:
        names.append("(rest: outside the rows)")
        params.append(f"{result.rest_params:,}")
        flops.append(f"{result.rest_flops:,}")
        shapes.append("")
    total_params, total_flops = f"{result.total_params:,}", f"{result.total_flops:,}"

    def widest(cells, footer=""):
        return max([len(c) for c in cells] + [len(footer)])

    table = Table(title=f"{result.model} ({result.granularity}) on {result.example}",
                  show_footer=True)
    # numbers and names never shrink (a narrow terminal wraps the shapes instead)
    table.add_column("#", justify="right", footer="", no_wrap=True)
    table.add_column("name", footer="total", no_wrap=True, min_width=widest(names, "total"))
    table.add_column("role")
    table.add_column("input -> output", overflow="fold")
    table.add_column("params", justify="right", footer=total_params, no_wrap=True,
                     min_width=widest(params, total_params))
    table.add_column("FLOPs", justify="right", footer=total_flops, no_wrap=True,
                     min_width=widest(flops, total_flops))
    for i, row in enumerate(rows):
        table.add_row("" if row["index"] is None else str(row["index"]), names[i], row["role"],
                      shapes[i], params[i], flops[i])
    if rest:
        table.add_row("", names[-1], "", "", params[-1], flops[-1])
    return table


def stack_lines(result) -> list[str]:
    """One line per stack (depth, width, parameters) when the model has more than one."""
    stacks = getattr(result, "stacks", None) or []
    if len(stacks) < 2:
        return []
    pad = max(len(s["name"]) for s in stacks)
    lines = [f"stacks: {len(stacks)} (counted: {result.stack}; pick another with --stack NAME)"]
    for s in stacks:
        width = "?" if s["width"] is None else s["width"]
        what = " ".join(w for w in (s["modality"], "stem" if s["kind"] == "stem" else "") if w)
        lines.append(f"  {s['name']:<{pad}}  {s['blocks']} blocks ({s['block_class']}), width "
                     f"{width}, {s['params']:,} parameters" + (f" [{what}]" if what else "")
                     + (" <- counted" if s["counted"] else ""))
    return lines


def summary_lines(result) -> list[str]:
    """Stacks, depth, width, and "how many layers?" per stack and at each granularity."""
    width = "?" if result.width is None else str(result.width)
    lines = stack_lines(result)
    lines += [f"depth: {result.depth} blocks; width: {width} — {result.width_rule}",
              "How many layers does this model have?"]
    stacks = getattr(result, "stacks", None) or []
    if len(stacks) > 1:
        per = "; ".join(f"{s['name']}: {s['blocks']}" for s in stacks)
        lines.append(f"  per stack (blocks): {per}")
    for g, n in result.counts.items():
        lines.append(f"  {g}: {n} — {result.rules[g]}")
    return lines


def render_summary(result, console) -> None:
    """Print the table and the lines under it on a rich ``console``."""
    console.print(summary_table(result))
    for line in summary_lines(result):
        console.print(line, highlight=False, markup=False)


@app.command("summary")
def summary_command(
    model: ModelArg,
    granularity: GranularityOpt = "blocks",
    input_shape: InputShapeOpt = None,
    blocks: BlocksOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_missing_weights: AllowMissingWeightsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Each layer's role, input -> output shape, parameters (tied ones once) and FLOPs on an
    example input, the totals, and how many layers the model has at each granularity."""
    from rich.console import Console

    from layerscope.anatomy import anatomy

    loaded = model_from_cli(model, blocks=blocks, input_shape=input_shape,
                            trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
    result = anatomy(loaded, granularity=granularity, blocks=blocks)
    if as_json:
        print_json(result.cli_dict())
        return
    render_summary(result, Console())
