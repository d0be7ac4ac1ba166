"""The command line: thin modules that parse options, call the library and print.

Every ``cmd_*.py`` module in this package registers its command(s) on ``app``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .app import app, main

_loaded = False


def load_commands() -> None:
    """Import every ``cmd_*`` module so its commands register on :data:`app`."""
    global _loaded
    if _loaded:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}")
    from .common import with_placement_options, with_stack_option

    for command in app.registered_commands:  # --stack wherever a command takes --blocks
        command.callback = with_placement_options(with_stack_option(command.callback))
    _loaded = True


__all__ = ["app", "main", "load_commands"]
