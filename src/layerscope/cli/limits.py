"""``--limit N|all`` for the exploratory commands: a bounded default, said up front.

A command that reads a data set takes a seeded random subset by default (an amount that
finishes in about a minute on a small CPU machine) and says, before any model runs, how many
items it will use of how many, and how to ask for every item.

Example:
    >>> from layerscope.cli.limits import parse_limit
    >>> parse_limit(None, 2000), parse_limit("all", 2000), parse_limit("300", 2000)
    (2000, None, 300)
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from layerscope.errors import LayerscopeError

#: items the exploratory commands use unless told otherwise (MiniLM reads ~45 sentences/s here)
DEFAULT_ITEMS = 2000


def limit_option(default: int = DEFAULT_ITEMS):
    """The ``--limit`` option: a whole number of items or ``all`` (default: ``default`` items)."""
    return Annotated[Optional[str], typer.Option(
        "--limit", help=f"Use N items of DATA (a seeded random subset; default {default:,}), "
                        "or 'all' for every item.", show_default=False, metavar="N|all")]


def parse_limit(text: str | int | None, default: int | None, option: str = "--limit") -> int | None:
    """``--limit`` (or ``option``) as a number of items: ``default`` when not given, ``None`` for ``all``."""
    if text is None:
        return default
    if isinstance(text, int):
        value = text
    else:
        t = str(text).strip().lower()
        if t == "all":
            return None
        try:
            value = int(t)
        except ValueError:
            raise LayerscopeError(f"{option} must be a whole number of items or 'all'; got {text!r}") from None
    if value < 1:
        raise LayerscopeError(f"{option} must be at least 1 (or 'all'); got {value}")
    return value


def load_limited(data, limit_text, *, default: int | None = DEFAULT_ITEMS, seed: int = 0,
                 what: str = "items", minimum: int = 1, say: bool = True):
    """Load DATA, keep ``--limit`` items (seeded) and say up front how many of how many are used."""
    from layerscope.data import load_dataset, take_limit
    from layerscope.progress import announce

    n = parse_limit(limit_text, default)
    full = load_dataset(data) if isinstance(data, str) else data
    total = len(full)
    ds = full if n is None or n >= total else take_limit(full, n, seed=seed)
    if len(ds) < minimum:
        raise LayerscopeError(f"data {data!r} gives {len(ds)} items; this needs at least {minimum}")
    every = (f"leave out --limit for all {total:,}" if default is None else
             f"--limit all for all {total:,}, --limit N for another amount")
    how = "every item" if len(ds) == total else f"a seeded random subset; {every}"
    if say:
        announce(f"using {len(ds):,} of {total:,} {what} of {getattr(ds, 'name', data)} ({how})")
    return ds
