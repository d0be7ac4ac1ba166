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


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["summary", "mlp", "--bogus"], "No such option: --bogus"),
    (["summary"], "Missing argument"),
    (["summary", "mlp", "extra"], "unexpected extra argument"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["datasets", "--show", "many"], "--show"),
])
def test_usage_errors_are_one_line_with_the_help_to_read(capsys, argv, fragment):
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert fragment in line and "--help" in line and "╭" not in captured.err


@pytest.mark.parametrize("argv, option", [
    (["sweep", "mlp", "digits", "--max-length", "0"], "--max-length"),
    (["sweep", "mlp", "digits", "--batch-size", "-3"], "--batch-size"),
    (["sweep", "mlp", "digits", "--limit", "0"], "--limit"),
    (["importance", "mlp", "digits", "--max-k", "0"], "--max-k"),
    (["sweep", "mlp", "digits", "--layers", ""], "--layers"),
    (["sweep", "mlp", "digits", "--layers", "  "], "--layers"),
    (["sweep", "", "digits"], "MODEL"),
])
def test_counts_below_one_and_empty_values_are_refused_before_any_work(capsys, argv, option):
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)  # nothing else: no progress bar ran
    assert option in line


def test_ctrl_c_says_interrupted_and_exits_130(capsys):
    @app.command("_interrupt-for-test", hidden=True)
    def _interrupt() -> None:
        raise KeyboardInterrupt

    try:
        assert main(["_interrupt-for-test"]) == 130
    finally:
        app.registered_commands[:] = [
            c for c in app.registered_commands if c.name != "_interrupt-for-test"
        ]
    assert "interrupted" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("exc, fragment", [
    (FileNotFoundError(2, "No such file or directory", "/no/such/file.png"),
     "cannot use '/no/such/file.png': No such file or directory"),
    (__import__("pickle").UnpicklingError("Weights only load failed"), "unpickled safely"),
    (__import__("json").JSONDecodeError("Expecting value", "{x", 1), "JSON file is malformed"),
])
def test_known_file_errors_are_bad_input_not_bugs(capsys, exc, fragment):
    @app.command("_file-error-for-test", hidden=True)
    def _raise() -> None:
        raise exc

    try:
        assert main(["_file-error-for-test"]) == 2
    finally:
        app.registered_commands[:] = [
            c for c in app.registered_commands if c.name != "_file-error-for-test"
        ]
    line = _one_error_line(capsys.readouterr().err)
    assert fragment in line and "Error:" not in line


def test_a_bug_is_reported_as_a_bug(capsys):
    @app.command("_bug-for-test", hidden=True)
    def _bug() -> None:
        {}["missing"]

    try:
        assert main(["_bug-for-test"]) == 1
    finally:
        app.registered_commands[:] = [
            c for c in app.registered_commands if c.name != "_bug-for-test"
        ]
    line = _one_error_line(capsys.readouterr().err)
    assert "internal error (KeyError" in line and "bug in layerscope" in line
