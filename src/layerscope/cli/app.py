"""The typer application and the error handling every command shares.

Commands live in ``cli/cmd_*.py`` modules, each registering itself on :data:`app`; the package
imports every such module, so adding a command is adding a file.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

app = typer.Typer(
    name="layerscope",
    help="Build, train and dissect neural networks layer by layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def debug_enabled() -> bool:
    return _state["debug"] or os.environ.get("LAYERSCOPE_DEBUG") == "1"


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True,
        callback=lambda value: _print_version(value),
    ),
) -> None:
    """Build, train and dissect neural networks layer by layer."""
    _state["debug"] = debug


def _print_version(value: bool) -> None:
    if value:
        from layerscope import __version__

        typer.echo(f"layerscope {__version__}")
        raise typer.Exit(0)


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print ``error: message`` on stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: runs a command, turns errors into one line + exit 2.

    Usage errors (unknown command or option) are typer's own: a usage line and exit code 2.
    """
    from layerscope.errors import LayerscopeError

    from . import load_commands

    # the command line shows its own progress; transformers' "Loading weights" bar on every load
    # is noise there (read when transformers is first imported; a user's setting wins)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    load_commands()
    args = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in args:
        _state["debug"] = True
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="layerscope", standalone_mode=True)
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        typer.echo(str(code), err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except LayerscopeError as exc:
        if debug_enabled():
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an unexpected failure still gets one line unless --debug
        if debug_enabled():
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(
            f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True
        )
        return 1
