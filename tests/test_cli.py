"""The command line's plumbing: help, version, module entry point and error handling."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from layerscope import __version__
from layerscope.cli import app, load_commands, main
from layerscope.errors import LayerscopeError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layerscope", *args], capture_output=True, text=True, timeout=120
    )


def test_version_via_python_dash_m():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"layerscope {__version__}"


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    load_commands()
    names = [c.name for c in app.registered_commands]
    assert names, "no command registered"
    for name in names:
        assert name in out


def test_every_command_has_help(capsys):
    load_commands()
    for command in app.registered_commands:
        assert main([command.name, "--help"]) == 0, command.name
        assert "Usage" in capsys.readouterr().out


def test_unknown_command_exits_2():
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_layerscope_error_is_one_line_and_exit_2(capsys):
    @app.command("_raise-for-test", hidden=True)
    def _raise() -> None:
        raise LayerscopeError("the thing was wrong;\n do this instead")

    try:
        code = main(["_raise-for-test"])
    finally:
        app.registered_commands[:] = [
            c for c in app.registered_commands if c.name != "_raise-for-test"
        ]
    err = capsys.readouterr().err
    assert code == 2
    assert err == "error: the thing was wrong; do this instead\n"


def test_unexpected_error_has_no_traceback_without_debug(capsys):
    @app.command("_boom-for-test", hidden=True)
    def _boom() -> None:
        raise RuntimeError("kaboom")

    try:
        code = main(["_boom-for-test"])
        err = capsys.readouterr().err
        assert code == 1
        assert "Traceback" not in err and "kaboom" in err
        code = main(["--debug", "_boom-for-test"])
        err = capsys.readouterr().err
        assert "Traceback" in err
    finally:
        app.registered_commands[:] = [
            c for c in app.registered_commands if c.name != "_boom-for-test"
        ]


def test_error_message_is_normalised_to_one_line():
    assert str(LayerscopeError("a\n  b\tc")) == "a b c"


@pytest.mark.parametrize("exit_code", [0, 3])
def test_typer_exit_codes_pass_through(exit_code):
    @app.command("_exit-for-test", hidden=True)
    def _exit() -> None:
        raise typer.Exit(exit_code)

    try:
        assert main(["_exit-for-test"]) == exit_code
    finally:
        app.registered_commands[:] = [
            c for c in app.registered_commands if c.name != "_exit-for-test"
        ]
