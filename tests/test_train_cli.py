"""`layerscope train` output folders and bad input: the user's files are never written among,
bad input is one line with exit 2 and leaves no folder behind, and a network trained from a
factory loads back (with --trust-remote-code) with the weights it was saved with."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from layerscope.cli import main
from layerscope.errors import LayerscopeError
from layerscope.train import train

TINY = "mlp:width=16,depth=1"
QUICK = ["--epochs", "1", "--limit", "120", "--batch-size", "32", "--no-progress"]


@pytest.fixture
def cli(capsys):
    def run(*args):
        code = main(["train", *map(str, args)])
        printed = capsys.readouterr()
        return code, printed.out + printed.err
    return run


def _one_line_error(output: str) -> str:
    lines = [x for x in output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def test_a_folder_holding_the_users_files_is_refused_before_any_work(cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, output = cli(TINY, "digits", "-o", out, *QUICK)
    assert code == 2 and "--force" in _one_line_error(output)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, output = cli(TINY, "digits", "-o", out, "--force", *QUICK)
    assert code == 0, output
    assert (out / "notes.txt").read_text() == "my notes" and (out / "best").is_dir()


def test_a_run_folder_is_reused_and_the_previous_runs_files_replaced(cli, tmp_path):
    out = tmp_path / "run"
    assert cli(TINY, "digits", "-o", out, *QUICK)[0] == 0
    assert (out / "monitor_grad_norm.png").is_file()
    marker = json.loads((out / ".layerscope.json").read_text())
    assert marker["kind"] == "train-run" and "best/model.safetensors" in marker["files"]
    code, output = cli(TINY, "digits", "-o", out, "--no-plots", *QUICK)
    assert code == 0, output
    assert not (out / "monitor_grad_norm.png").exists()      # the old run's plot is gone


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_unlabeled_arrays_for_a_classifier_are_one_line_and_leave_nothing(cli, tmp_path, kind):
    x = np.random.default_rng(0).normal(size=(50, 64)).astype("float32")
    data = tmp_path / f"x.{kind}"
    np.save(data, x) if kind == "npy" else np.savez(data, x=x)
    out = tmp_path / "run"
    code, output = cli("mlp", data, "-o", out, *QUICK)
    assert code == 2 and "needs labels" in _one_line_error(output)
    assert not out.exists()


def test_output_that_is_a_file_or_under_a_file_is_refused_first(cli, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        code, output = cli(TINY, "digits", "-o", out, *QUICK)
        assert code == 2 and str(blocker) in _one_line_error(output)
    assert blocker.read_text() == "x"


def test_a_corrupt_state_file_on_resume_is_one_line_exit_2(cli, tmp_path):
    out = tmp_path / "run"
    assert cli(TINY, "digits", "-o", out, *QUICK)[0] == 0
    (out / "train_state.pt").write_bytes(b"\x80\x02garbage")
    code, output = cli(TINY, "digits", "-o", out, "--resume", *QUICK)
    assert code == 2 and "train_state.pt" in _one_line_error(output)
    code, output = cli(TINY, "digits", "-o", tmp_path / "none", "--resume", *QUICK)
    assert code == 2 and "nothing to resume" in _one_line_error(output)


def test_a_network_trained_from_a_factory_loads_back_with_its_weights(cli, tmp_path, monkeypatch):
    from layerscope.models import load_model

    factory = tmp_path / "net.py"
    factory.write_text("import torch\ndef make():\n    torch.manual_seed(1)\n"
                       "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    monkeypatch.chdir(tmp_path)                                # a relative reference...
    code, output = cli("net.py:make", "digits", "-o", "run", *QUICK)
    assert code == 0, output
    monkeypatch.chdir(tmp_path.parent)                         # ...loads from elsewhere too
    folder = tmp_path / "run" / "last"
    with pytest.raises(LayerscopeError, match="--trust-remote-code"):
        load_model(str(folder))
    loaded = load_model(str(folder), trust_remote_code=True)
    saved = load_file(str(folder / "model.safetensors"))
    state = loaded.module.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    x = torch.randn(5, 64)
    expected = x @ saved["1.weight"].T + saved["1.bias"]
    assert torch.allclose(loaded.module(x), expected, atol=1e-6)
    assert tuple(loaded.input_shape) == (64,)                  # the items it was trained on


def test_train_api_refuses_a_users_folder_too(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    with pytest.raises(LayerscopeError, match="not empty"):
        train("mlp:in_features=4,width=8,depth=1,n_classes=2", (x, y), out_dir=tmp_path,
              epochs=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


def test_a_module_built_in_python_is_saved_with_a_note_and_refused_on_load(tmp_path, capsys):
    from torch import nn

    from layerscope.models import load_model

    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    r = train(net, (x, y), out_dir=tmp_path, epochs=1, task="classification", progress=False,
              plots=False)
    err = capsys.readouterr().err
    assert "note: Sequential was built in Python" in err and "load_model(module" in err
    with pytest.raises(LayerscopeError):
        load_model(r.last_checkpoint)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    from safetensors.torch import load_model as load_weights

    load_weights(module, f"{r.last_checkpoint}/model.safetensors")   # the way the note names
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(),
                                                 net.state_dict().values()))
