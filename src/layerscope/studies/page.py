"""Write study results: one self-contained HTML page in the report's style (one section per
study: claim, experiment, table, picture, verdict), ``results.json``, PNG figures, and a
Markdown version for the docs.

Example:
    >>> from layerscope.studies.common import Verdict, StudyResult
    >>> r = StudyResult("demo", "Demo", "x helps", "seed", "none", "ran it", ["a"], [["1"]], None,
    ...                 Verdict("supported", "gain 0.1 [0.05, 0.15] over 3 seeds", "rule"))
    >>> "SUPPORTED" in markdown([r], figures={})
    True
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

from layerscope.results import to_plain

from .common import StudyResult


def _machine() -> str:
    import os

    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def _verdict_lines(r: StudyResult) -> list[str]:
    v = r.verdict
    lines = [f"Verdict: {v.verdict.upper()} — {v.reason}" + (f" ({v.needs})" if v.needs else ""),
             f"Rule: {v.rule}."]
    for name, p in v.parts.items():
        lines.append(f"Part “{name}”: {p.verdict} — {p.reason}" + (f" ({p.needs})" if p.needs else "")
                     + f". Rule: {p.rule}.")
    return lines


def build_page(results: list[StudyResult], *, title: str = "layerscope studies"):
    """The :class:`~layerscope.report.page.Page` of the studies (one section each)."""
    from layerscope.report.page import Figure, Page, Section, Table

    sections = []
    for r in results:
        sec = Section(r.name, r.title, findings=[f"Claim: {r.claim} (source: {r.source})",
                                                 f"Published anchor: {r.anchor}",
                                                 f"Experiment: {r.experiment}"]
                      + list(r.findings) + _verdict_lines(r),
                      note=f"{r.mode} run, {r.seconds:.0f} s")
        sec.add(Figure(f"{r.name}-table", "Numbers", _verdict_lines(r)[0],
                       table=Table(r.columns, [[str(c) for c in row] for row in r.rows])))
        if r.chart:
            sec.add(Figure(f"{r.name}-chart", r.title, _verdict_lines(r)[0], chart=r.chart,
                           alt=f"chart of {r.title}"))
        sections.append(sec)
    counts = {}
    for r in results:
        counts[r.verdict.verdict] = counts.get(r.verdict.verdict, 0) + 1
    headline = [f"{r.title}: {r.verdict.verdict}" for r in results]
    facts = [("studies", str(len(results))), ("machine", _machine()),
             ("verdicts", ", ".join(f"{k} {v}" for k, v in counts.items())),
             ("time", f"{sum(r.seconds for r in results):.0f} s")]
    return Page(title=title, facts=facts, headline=headline, sections=sections,
                generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write_outputs(results: list[StudyResult], out_dir: str | Path) -> dict[str, str]:
    """``index.html``, ``results.json`` and ``figures/<study>.png`` in ``out_dir``."""
    from layerscope.report.png import chart_png
    from layerscope.report.render import render_html, write_atomic

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for r in results:
        if r.chart:
            path = out / "figures" / f"{r.name}.png"
            write_atomic(path, chart_png(r.chart, r.title))
            figures[r.name] = f"figures/{r.name}.png"
    write_atomic(out / "results.json", json.dumps(
        {"format": "layerscope-studies", "machine": _machine(),
         "studies": [to_plain(r.to_dict()) for r in results]}, indent=1, allow_nan=False))
    write_atomic(out / "index.html", render_html(build_page(results)))
    return {"html": str(out / "index.html"), "json": str(out / "results.json"), **figures}


def load_results(paths) -> list[StudyResult]:
    """Study results back from ``results.json`` files written by :func:`write_outputs` (to put
    runs made in several processes on one page)."""
    from layerscope.errors import LayerscopeError

    from .common import Verdict

    def verdict(d: dict) -> Verdict:
        return Verdict(d["verdict"], d["reason"], d["rule"], d.get("needs", ""),
                       {k: verdict(v) for k, v in (d.get("parts") or {}).items()})

    out = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise LayerscopeError(f"cannot read study results from {str(path)!r}: {exc}") from None
        if doc.get("format") != "layerscope-studies":
            raise LayerscopeError(f"{str(path)!r} is not a results.json written by layerscope study")
        for d in doc["studies"]:
            d = {k: v for k, v in d.items() if k != "kind"}
            d["verdict"] = verdict(d["verdict"])
            out.append(StudyResult(**d))
    return out


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|")


def markdown(results: list[StudyResult], *, figures: dict[str, str], command: str = "",
             failed: list[str] | None = None) -> str:
    """The studies as Markdown (for ``docs/STUDIES.md``); every number comes from ``results``."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Claims about layers, tested", "",
             f"Generated by `{command or 'layerscope study all'}` on {when}; {_machine()}; load average "
             f"{__import__('os').getloadavg()[0]:.1f} at the end (a shared machine: wall times are inflated, "
             f"CPU times less so); {sum(r.seconds for r in results):.0f} s in all. Every number and verdict below was "
             "computed by that run; verdict rules are stated with each verdict.", "",
             "| study | verdict | size | wall time | CPU time |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| [{r.title}](#{r.name}) | **{r.verdict.verdict}** | {r.mode} | {r.seconds:.0f} s | "
                     f"{r.cpu_seconds:.0f} s |")
    quick = [r.name for r in results if r.mode == "quick"]
    full = [r.name for r in results if r.mode == "full"]
    if full:
        lines += ["", f"`--full` runs ({len(full)} of {len(results)}): {', '.join(full)}."]
    if quick:
        lines += ["", f"**Quick numbers, not full ({len(quick)} of {len(results)}): {', '.join(quick)}.** These "
                  "sections show `--quick` runs — small models, few items, short training — so their intervals "
                  "are wide, and a 'cannot tell' verdict states roughly how many items or seeds would decide "
                  "it. Their `--full` forms (larger versions of the same experiments) were not part of this page."]
    if failed:
        lines += ["", "Not in this page: " + "; ".join(failed) + "."]
    for r in results:
        lines += ["", f"<a id=\"{r.name}\"></a>",
                  f"## {r.title} (`layerscope study {r.name}`)" + (" — quick run" if r.mode == "quick" else ""), "",
                  f"**Claim.** {r.claim} *(source: {r.source})*", "",
                  f"**Published anchor.** {r.anchor}", "", f"**Experiment.** {r.experiment}", ""]
        lines += ["| " + " | ".join(map(_md_cell, r.columns)) + " |", "|" + "---|" * len(r.columns)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in r.rows]
        lines.append("")
        if r.name in figures:
            lines += [f"![{r.title}]({figures[r.name]})", ""]
        for f in r.findings:
            lines += [f, ""]
        for line in _verdict_lines(r):
            lines += [f"- {line}" if line.startswith("Part") else f"**{line.split(':', 1)[0]}:**{line.split(':', 1)[1]}", ""]
        lines += [f"*{r.mode} run, {r.seconds:.0f} s wall, {r.cpu_seconds:.0f} s CPU, model {r.model or '-'}, data {r.data or '-'}"
                  + (f", {r.seeds} seeds" if r.seeds else "") + ".*"]
    return "\n".join(lines) + "\n"
