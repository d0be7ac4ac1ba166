"""The registry of built-in data sets and ``load_dataset``, which also reads files.

Example:
    >>> from layerscope.data import builtin_datasets, load_dataset
    >>> sorted(builtin_datasets())[:3]
    ['co2', 'digits', 'digits-images']
    >>> load_dataset("digits", limit=5, seed=1).describe()
    'digits: 5 items, tensor (64,) float32, classification, 10 classes'
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from layerscope.errors import LayerscopeError

from .dataset import Dataset, take_limit
from .files import is_file_ref, load_file
from .images import digits, mnist, photos
from .series import timeseries
from .text_corpus import char_corpus, sentences


@dataclass(frozen=True)
class Builtin:
    """One built-in data set: how to load it, what it is, and its fixed options."""
    loader: Callable[..., Dataset]
    summary: str
    fixed: tuple = ()          # options set by the name itself, e.g. images=True

    def load(self, **options) -> Dataset:
        fixed = dict(self.fixed)
        clash = sorted(set(options) & set(fixed))
        allowed = [p for p in inspect.signature(self.loader).parameters if p not in fixed]
        unknown = sorted(set(options) - set(allowed)) + clash
        if unknown:
            takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes no options"
            raise LayerscopeError(f"unknown option(s) {', '.join(unknown)}; {takes}")
        return self.loader(**options, **fixed)


BUILTINS: dict[str, Builtin] = {
    "sentences": Builtin(sentences, "English sentences, human sentiment score -4..4 "
                                    "(regression); option source"),
    "text": Builtin(char_corpus, "the sentences as ASCII character windows (N, 64), "
                                 "next-character labels; option seq_len"),
    "digits": Builtin(digits, "handwritten digits 8x8 as (N, 64) in [0, 1], 10 classes"),
    "digits-images": Builtin(digits, "the digits as (N, 1, 8, 8) images", (("images", True),)),
    "mnist": Builtin(mnist, "real MNIST digits (N, 1, 28, 28) in [0, 1], 10 classes"),
    "photos": Builtin(photos, "two colour photos (2, 3, 427, 640), pixels 0-255; option size"),
    "timeseries": Builtin(timeseries, "windows (N, 32, 1) of a real series -> next value; "
                                      "options series (sunspots, co2, nile), seq_len"),
    "sunspots": Builtin(timeseries, "yearly sunspots 1700-2008 as windows (N, 32, 1) -> next "
                                    "value; option seq_len", (("series", "sunspots"),)),
    "co2": Builtin(timeseries, "weekly Mauna Loa CO2 1958-2001 as windows (N, 32, 1) -> next "
                               "value; option seq_len", (("series", "co2"),)),
    "nile": Builtin(timeseries, "yearly Nile flow 1871-1970 as windows (N, 32, 1) -> next "
                                "value; option seq_len", (("series", "nile"),)),
}


def builtin_datasets() -> dict[str, str]:
    """Built-in data set names and a one-line description of each."""
    return {name: b.summary for name, b in sorted(BUILTINS.items())}


def _option_value(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_data_ref(ref: str) -> tuple[str, dict]:
    """Split ``name:key=value,...`` (as on the command line) into the name and its options; a
    reference without options, or an existing file whose name holds ':', is returned whole.

    Example:
        >>> parse_data_ref("timeseries:series=co2,seq_len=16")
        ('timeseries', {'series': 'co2', 'seq_len': 16})
        >>> parse_data_ref("reviews.csv:text_column=review")
        ('reviews.csv', {'text_column': 'review'})
    """
    head, sep, rest = ref.rpartition(":")
    if not sep or "=" not in rest or not head or Path(ref).exists():
        return ref, {}
    options = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise LayerscopeError(f"cannot read option {part!r} in {ref!r}; write name:key=value,"
                                  "key=value, e.g. text:seq_len=32")
        options[key.strip()] = _option_value(value)
    return head, options


def load_dataset(ref, *, limit: int | None = None, seed: int = 0, **options) -> Dataset:
    """A built-in data set by name, or a data file or folder (see ``layerscope.data.files``);
    ``limit`` keeps the first N items after a shuffle seeded with ``seed``; other options go to
    the loader (e.g. ``seq_len=16``, ``text_column="review"``), and may also be written in the
    reference as on the command line: ``"text:seq_len=32"``, ``"reviews.csv:label_column=stars"``.
    A ``Dataset`` is passed through (limited if asked)."""
    if isinstance(ref, Dataset):
        return take_limit(ref, limit, seed)
    if limit is not None:   # check before any loading work
        take_limit(Dataset("check", [], None, "text", None), limit, seed)
    ref, inline = parse_data_ref(str(ref))
    options = {**inline, **options}
    name = ref.strip().lower()
    if name in BUILTINS:
        data = BUILTINS[name].load(**options)
        data = replace(data, name=name)
    elif is_file_ref(ref):
        data = load_file(ref, **options)
    else:
        raise LayerscopeError(f"unknown dataset {ref!r}: not a built-in name and no such file; "
                              f"built-in: {', '.join(sorted(BUILTINS))}")
    if len(data) == 0:
        raise LayerscopeError(f"data set {ref!r} is empty; give data with at least one item")
    return take_limit(data, limit, seed)
