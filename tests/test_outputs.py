"""Output folders and files: nothing the user made is deleted or overwritten."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from layerscope.errors import LayerscopeError  # noqa: E402
from layerscope.outputs import (  # noqa: E402
    MARKER,
    TOKEN,
    check_out_file,
    claim_dir,
    is_layerscope_file,
    note_written,
    publish_dir,
    read_marker,
    remove_written,
    save_figure,
    staging_dir,
    write_atomic,
    written_files,
)


def test_claim_dir_creates_and_marks_a_missing_folder(tmp_path):
    folder = claim_dir(tmp_path / "a" / "b", "report")
    assert folder.is_dir()
    assert json.loads((folder / MARKER).read_text()) == {"kind": "report", "version": 1, "files": []}


def test_claim_dir_marks_an_empty_folder_and_reuses_its_own(tmp_path):
    claim_dir(tmp_path, "store")
    (tmp_path / "shard-0.safetensors").write_bytes(b"x")
    assert claim_dir(tmp_path, "store") == tmp_path
    assert read_marker(tmp_path)["kind"] == "store"


def test_claim_dir_refuses_user_files_and_other_kinds(tmp_path):
    (tmp_path / "index.html").write_text("<p>mine</p>")
    with pytest.raises(LayerscopeError, match="not written by layerscope.*--force"):
        claim_dir(tmp_path, "report")
    assert not (tmp_path / MARKER).exists()
    other = tmp_path / "o"
    claim_dir(other, "model")
    with pytest.raises(LayerscopeError, match="holds layerscope model output, not report"):
        claim_dir(other, "report")


def test_claim_dir_force_and_recognise(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert claim_dir(tmp_path, "report", force=True) == tmp_path
    assert read_marker(tmp_path)["kind"] == "report"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "results.json").write_text("{}")
    claim_dir(legacy, "report", recognise=lambda p: (p / "results.json").exists())
    assert read_marker(legacy)["kind"] == "report"


def test_claim_dir_refuses_a_file_and_an_unwritable_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LayerscopeError, match="is a file, not a folder"):
        claim_dir(tmp_path / "f", "report", force=True)
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(LayerscopeError, match="cannot|permission"):
            claim_dir(locked / "sub", "report")
        with pytest.raises(LayerscopeError, match="permission"):
            claim_dir(locked, "report")
    finally:
        locked.chmod(0o700)


def test_remove_written_deletes_only_listed_files(tmp_path):
    claim_dir(tmp_path, "report")
    (tmp_path / "figures").mkdir()
    for name in ("index.html", "figures/a.png"):
        (tmp_path / name).write_text("ours")
    (tmp_path / "figures" / "myplot.png").write_text("the user's")
    note_written(tmp_path, ["index.html", tmp_path / "figures" / "a.png"])
    assert written_files(tmp_path) == ["index.html", "figures/a.png"]
    assert sorted(remove_written(tmp_path)) == ["figures/a.png", "index.html"]
    assert (tmp_path / "figures" / "myplot.png").read_text() == "the user's"
    assert not (tmp_path / "index.html").exists()
    assert written_files(tmp_path) == []


def test_publish_dir_swaps_whole_or_file_by_file(tmp_path):
    target = tmp_path / "out"
    claim_dir(target, "model")
    stage = staging_dir(target)
    (stage / "model.safetensors").write_text("v1")
    (stage / "old.json").write_text("v1")
    publish_dir(stage, target, "model")
    assert sorted(written_files(target)) == ["model.safetensors", "old.json"]
    assert not stage.exists()
    (target / "README.md").write_text("the user's notes")
    stage = staging_dir(target)
    (stage / "model.safetensors").write_text("v2")
    publish_dir(stage, target, "model")
    assert (target / "model.safetensors").read_text() == "v2"
    assert not (target / "old.json").exists()
    assert (target / "README.md").read_text() == "the user's notes"
    assert written_files(target) == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_check_out_file_rules(tmp_path):
    with pytest.raises(LayerscopeError, match="is a folder"):
        check_out_file(tmp_path, suffixes=(".png",))
    with pytest.raises(LayerscopeError, match="does not exist"):
        check_out_file(tmp_path / "nope" / "a.png")
    with pytest.raises(LayerscopeError, match="suffixes .png"):
        check_out_file(tmp_path / "a.jpg", suffixes=(".png",))
    assert check_out_file(tmp_path / "a.png", suffixes=(".png",)) == tmp_path / "a.png"
    user = tmp_path / "mine.png"
    user.write_bytes(b"\x89PNG user picture")
    with pytest.raises(LayerscopeError, match="not written by layerscope"):
        check_out_file(user)
    assert check_out_file(user, force=True) == user


def test_saved_figures_are_recognised_as_ours(tmp_path):
    fig = plt.figure()
    plt.plot([1, 2, 3])
    for suffix in (".png", ".pdf", ".svg"):
        path = save_figure(fig, tmp_path / f"f{suffix}")
        assert is_layerscope_file(path), suffix
        assert check_out_file(path) == path
    plt.close(fig)
    assert not is_layerscope_file(tmp_path / "missing.png")


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path):
    write_atomic(tmp_path / "a.txt", "one")
    write_atomic(tmp_path / "a.txt", b"two")
    assert (tmp_path / "a.txt").read_text() == "two"

    class Boom:
        def __bytes__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "b.txt", Boom())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert TOKEN == "layerscope-output"


# -- through the CLI: every output is checked before the model is even loaded -------------------
def run_cli(args, capsys):
    from layerscope.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line.startswith("error: ")]
    return code, lines[-1] if lines else captured.err


PLOT_COMMANDS = [
    ["probe", "no-such-model", "sentences", "--plot"],
    ["similarity", "no-such-model", "sentences", "--plot"],
    ["embed", "no-such-model", "sentences", "--plot"],
    ["importance", "no-such-model", "sentences", "--plot"],
    ["lens", "no-such-model", "sentences", "--plot"],
    ["lens", "no-such-model", "sentences", "--tuned", "--lens-out"],
]


@pytest.mark.parametrize("command", PLOT_COMMANDS, ids=lambda c: " ".join(c[::3]))
def test_output_files_are_checked_before_any_work(command, tmp_path, capsys):
    lens = command[-1] == "--lens-out"
    suffix = ".safetensors" if lens else ".png"
    code, line = run_cli([*command, tmp_path], capsys)  # a folder: an error, not a sibling file
    assert code == 2 and "is a folder" in line, line
    code, line = run_cli([*command, tmp_path / "missing" / f"x{suffix}"], capsys)
    assert code == 2 and "does not exist" in line, line
    mine = tmp_path / f"mine{suffix}"
    mine.write_bytes(b"the user's own file")
    code, line = run_cli([*command, mine], capsys)
    assert code == 2 and "--force" in line, line
    assert mine.read_bytes() == b"the user's own file"
    code, line = run_cli([*command, mine, "--force"], capsys)  # accepted: now the model fails
    assert code == 2 and "unknown model" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"mine{suffix}"]


FOLDER_COMMANDS = [
    ["report", "no-such-model", "sentences", "-o"],
    ["drop", "no-such-model", "--layers", "1", "-o"],
    ["prune", "no-such-model", "-o"],
    ["quantize", "no-such-model", "-o"],
    ["early-exit", "no-such-model", "digits", "-o"],
    ["record", "no-such-model", "sentences", "-o"],
]


@pytest.mark.parametrize("command", FOLDER_COMMANDS, ids=lambda c: c[0])
def test_output_folders_are_checked_before_any_work(command, tmp_path, capsys):
    users = tmp_path / "users"
    (users / "figures").mkdir(parents=True)
    (users / "figures" / "myplot.png").write_bytes(b"the user's")
    (users / "index.html").write_text("<p>the user's page</p>")
    code, line = run_cli([*command, users], capsys)
    assert code == 2 and "not written by layerscope" in line and "--force" in line, line
    assert sorted(p.relative_to(users).as_posix() for p in users.rglob("*")) == \
        ["figures", "figures/myplot.png", "index.html"]
    other = tmp_path / "other-kind"
    claim_dir(other, "train-run")
    code, line = run_cli([*command, other], capsys)
    assert code == 2 and "train-run output" in line, line
    code, line = run_cli([*command, tmp_path / "new"], capsys)  # fine: now the model fails
    assert code == 2 and "unknown model" in line, line
    assert not (tmp_path / "new").exists()
