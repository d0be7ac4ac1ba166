"""What a zoo network's options are: each config field's type, default and the comment beside it.

Example:
    >>> from layerscope.zoo.describe import options
    >>> depth = next(o for o in options("mlp") if o.name == "depth")
    >>> depth.type, depth.default, depth.help
    ('int', 2, 'number of hidden layers')
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s?(.*))?$")
_MORE = re.compile(r"^\s+#\s?(.*)$")


@dataclass
class Option:
    """One config field: name, type as written in a spec, default (the preset for this name), help."""

    name: str
    type: str
    default: object
    help: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def options(name: str) -> list[Option]:
    """The options of zoo network ``name`` with their defaults (as this name presets them)."""
    from . import _entry, build_config, config_class

    cls = config_class(name)
    defaults = dataclasses.asdict(build_config(name))
    helps = _comments(cls)
    hints = typing.get_type_hints(cls)
    preset = _entry(name).defaults
    out = []
    for f in dataclasses.fields(cls):
        text = helps.get(f.name, "")
        if f.name in preset:
            text = f"{text} (preset by {name!r})".strip()
        out.append(Option(f.name, _type_name(hints[f.name]), defaults[f.name], text))
    return out


def _type_name(kind) -> str:
    if typing.get_origin(kind) in (list, tuple):
        return "list of int (e.g. 16x32)"
    return getattr(kind, "__name__", str(kind))


def _comments(cls) -> dict[str, str]:
    """Field name -> the comment on its line and on the comment-only lines right after it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    last = None
    for line in lines[1:]:
        more = _MORE.match(line)
        if more and last is not None:
            out[last] = f"{out[last]} {more.group(1).strip()}".strip()
            continue
        field = _FIELD.match(line)
        if field and not line.strip().startswith(("def ", "@")):
            last = field.group(1)
            out[last] = (field.group(2) or "").strip()
        else:
            last = None
    return out


__all__ = ["Option", "options"]
