"""``layerscope study NAME | all | list``: claims about layers tested, with verdicts from numbers."""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .common import JsonOpt, print_json
from ..errors import first_line


def _print_result(r) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=False, soft_wrap=True)
    con.print(f"[bold]{r.title}[/bold] (study {r.name}, {r.mode}, {r.seconds:.0f} s)")
    con.print(f"Claim: {r.claim} (source: {r.source})", markup=False)
    con.print(f"Anchor: {r.anchor}", markup=False)
    con.print(f"Experiment: {r.experiment}", markup=False)
    table = Table(*r.columns)
    for row in r.rows:
        table.add_row(*[str(c) for c in row])
    con.print(table)
    for f in r.findings:
        con.print(f, markup=False)
    v = r.verdict
    con.print(f"Verdict: {v.verdict.upper()} — {v.reason}" + (f" ({v.needs})" if v.needs else ""), markup=False)
    con.print(f"Rule: {v.rule}", markup=False)
    for name, p in v.parts.items():
        con.print(f"  {name}: {p.verdict} — {p.reason}" + (f" ({p.needs})" if p.needs else ""), markup=False)
    con.print("")


@app.command("study")
def study_command(
    name: Annotated[str, typer.Argument(help="A study name, 'all', 'list', or 'merge' (with --from).", metavar="NAME")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The model to study (default: the study's own).",
                                                 show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="The data (default: the study's own).",
                                                show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="The small form (a few minutes on 2 CPU cores; the default).")] = False,
    full: Annotated[bool, typer.Option("--full", help="The large form the docs quote.")] = False,
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Repeats of training studies (at least 2; default 3).",
                                                 show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write index.html, results.json and figures here.",
                                                show_default=False)] = None,
    markdown_path: Annotated[Optional[Path], typer.Option("--markdown", help="Also write the results as Markdown "
                                                          "(figures next to it in <name>_figures/).",
                                                          show_default=False)] = None,
    from_: Annotated[Optional[list[Path]], typer.Option("--from", help="With NAME 'merge': results.json files "
                                                        "of earlier runs to put on one page.", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Test a claim about layers: run the experiment, repeat it, and state a verdict from the numbers."""
    from layerscope.errors import LayerscopeError
    from layerscope.studies.common import get_study, registry, run_study

    studies = registry()
    if name == "list":
        rows = [{"name": s.name, "title": s.title, "claim": s.claim, "models": s.models} for s in studies.values()]
        if as_json:
            print_json(rows)
        else:
            for r in rows:
                typer.echo(f"{r['name']:<22} {r['title']}: {r['claim']}")
        return
    if quick and full:
        raise LayerscopeError("choose one of --quick and --full")
    if name == "merge":
        from layerscope.studies.page import load_results

        if not from_:
            raise LayerscopeError("study merge needs --from RESULTS.json (one or more)")
        results = load_results(from_)
        order = list(studies)
        results.sort(key=lambda r: order.index(r.name) if r.name in order else len(order))
        missing = [f"{n}: no results given to this merge" for n in studies if n not in {r.name for r in results}]
        _write(results, out, markdown_path, as_json, missing)
        return
    names = list(studies) if name == "all" else [get_study(name).name]
    if name == "all" and (model or data):
        raise LayerscopeError("study all runs each study on its own model and data; drop --model/--data "
                              "or name one study")
    mode = "full" if full else "quick"
    results, failed = [], []
    with tempfile.TemporaryDirectory(prefix="layerscope-study-") as work:
        for n in names:
            if not as_json and name == "all":    # one study's bad input stays a one-line error
                typer.echo(f"running study {n} ({mode}) ...", err=True)
            try:
                r = run_study(n, model=model, data=data, mode=mode, seeds=seeds, workdir=work)
            except Exception as exc:   # in `all`, one failing study must not lose the others
                if name != "all":
                    raise
                first = first_line(exc)
                failed.append(f"{n}: {first}")
                typer.echo(f"error: study {n} failed: {first}", err=True)
                continue
            results.append(r)
            if not as_json:
                _print_result(r)
    _write(results, out, markdown_path, as_json, failed)
    if failed:
        raise typer.Exit(1)


def _write(results, out, markdown_path, as_json, failed) -> None:
    written = {}
    if out is not None:
        from layerscope.studies.page import write_outputs

        written = write_outputs(results, out)
        if not as_json:
            typer.echo(f"wrote {written['html']}", err=True)
    if markdown_path is not None:
        from layerscope.report.png import chart_png
        from layerscope.report.render import write_atomic
        from layerscope.studies.page import markdown

        md = Path(markdown_path)
        fig_dir = md.parent / f"{md.stem.lower()}_figures"
        figures = {}
        for r in results:
            if r.chart:
                write_atomic(fig_dir / f"{r.name}.png", chart_png(r.chart, r.title))
                figures[r.name] = f"{fig_dir.name}/{r.name}.png"
        command = "layerscope " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        write_atomic(md, markdown(results, figures=figures, command=command, failed=failed))
    if as_json:
        print_json({"studies": [r.to_dict() for r in results], "written": written, "failed": failed})
