"""The typer application and the error handling every command shares.

Commands live in ``cli/cmd_*.py`` modules, each registering itself on :data:`app`; the package
imports every such module, so adding a command is adding a file.

:func:`main` runs a command and turns what can go wrong into one line on stderr:

- bad input (a :class:`~layerscope.errors.LayerscopeError`, a usage error, an empty option
  value, a count option below 1, a file that cannot be read or written): ``error: ...``, exit 2;
- Ctrl-C: ``error: interrupted ...``, exit 130;
- anything else is a bug in layerscope and says so: ``error: internal error (...)``, exit 1
  (``--debug`` or ``LAYERSCOPE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback

import typer

try:  # typer 0.2x parses with its own copy of click
    from typer import _click as click
    from typer._click.core import ParameterSource
except ImportError:  # older typer uses click itself
    import click
    from click.core import ParameterSource

app = typer.Typer(
    name="layerscope",
    help="Build, train and dissect neural networks layer by layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

#: options that count something (items, tokens, steps, blocks): 0 or less is never meant
AT_LEAST_ONE = frozenset({
    "--batch-size", "--max-length", "--limit", "--sample", "--top-k", "--epochs", "--steps",
    "--max-k", "--shard-items", "--importance-items", "--patience", "--auto", "--save-every",
    "--eval", "--tokens",
})


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


def _checked(param):
    """``param.process_value`` that also refuses an empty text value given on the command line
    (``--layers ""``, ``-o ""`` is a slip, never a choice) and, for :data:`AT_LEAST_ONE`
    options, a count below 1."""
    process = param.process_value
    counts = param.param_type_name == "option" and bool(set(param.opts) & AT_LEAST_ONE)

    def process_value(ctx, value):
        given = ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE
        if given and isinstance(value, str) and not value.strip():
            fix = "leave the option out" if param.param_type_name == "option" else "name one"
            raise click.exceptions.BadParameter(f"is empty; give a value or {fix}", ctx=ctx,
                                                param=param)
        value = process(ctx, value)
        if counts and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise click.exceptions.BadParameter(f"{value} is not a count; give a whole number of at least 1",
                                     ctx=ctx, param=param)
        return value

    return process_value


def _tighten(command) -> None:
    """Apply :func:`_checked` to every parameter of every command in the tree."""
    for param in command.params:
        param.process_value = _checked(param)
    for sub in getattr(command, "commands", {}).values():
        _tighten(sub)


def _usage_line(exc) -> str:
    message = " ".join(exc.format_message().split())
    path = exc.ctx.command_path if exc.ctx is not None else "layerscope"
    return f"{message.rstrip('.')}; see `{path} --help`"


def _known_failure(exc: BaseException) -> str | None:
    """One line for errors that come from the user's files and paths rather than from a bug."""
    from safetensors import SafetensorError

    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or first
        return (f"cannot use {str(exc.filename)!r}: {reason}; check that the path exists and "
                "is the right kind (a file or a folder) and that you may read or write it")
    if isinstance(exc, SafetensorError):
        return (f"a .safetensors file is damaged or not safetensors ({first}); save or copy "
                "it again")
    if isinstance(exc, pickle.UnpicklingError):
        return ("a file could not be unpickled safely (only weights are loaded, never code); "
                "save it again or convert it to safetensors")
    if isinstance(exc, json.JSONDecodeError):
        return (f"a JSON file is malformed ({exc.msg} at line {exc.lineno}, column "
                f"{exc.colno}); fix it or write it again")
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: runs a command, turns errors into one line + exit 2.

    Usage errors (unknown command or option, a missing argument) are one line too, exit 2.
    """
    from layerscope.errors import LayerscopeError

    from . import load_commands

    # the command line shows its own progress; transformers' "Loading weights" bar on every load
    # is noise there (read when transformers is first imported; a user's setting wins)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and "transformers" in sys.modules:
        # already imported (main() called in-process, e.g. from a notebook or tests): the
        # environment is no longer read, so switch the bar off through transformers itself
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    load_commands()
    args = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in args:
        _state["debug"] = True
    command = typer.main.get_command(app)
    _tighten(command)
    try:
        # invoked directly rather than through command.main(), which would turn Ctrl-C into a
        # silent exit 130 and usage errors into a box of text
        with command.make_context("layerscope", args) as ctx:
            command.invoke(ctx)
        return 0
    except typer.Exit as exc:
        return exc.exit_code
    except click.exceptions.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `layerscope`: the help
            text = exc.ctx.get_help()
            if text:
                typer.echo(text)
            return 2
        typer.echo(f"error: {_usage_line(exc)}", err=True)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("error: interrupted; outputs of this run may be incomplete", err=True)
        return 130
    except LayerscopeError as exc:
        if debug_enabled():
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if debug_enabled():
            traceback.print_exc()
        known = _known_failure(exc)
        if known is not None:
            typer.echo(f"error: {known}", err=True)
            return 2
        first = (str(exc).strip().splitlines() or [""])[0]
        typer.echo(f"error: internal error ({type(exc).__name__}: {first}); this is a bug in "
                   "layerscope, not in your input: run again with --debug and report the "
                   "traceback", err=True)
        return 1
