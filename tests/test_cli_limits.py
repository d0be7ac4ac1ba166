"""Commands that read a data set use a bounded, seeded subset by default and say so up front."""

from __future__ import annotations

import json

import pytest

from layerscope.cli import main


@pytest.mark.parametrize("argv, used, total", [
    (["importance", "mlp", "digits", "--json"], 256, 1797),
    (["importance", "mlp", "digits", "--limit", "all", "--json", "-b", "512"], 1797, 1797),
    (["lens", "gpt", "text", "--json", "--max-length", "16"], 64, None),
])
def test_default_limit_is_bounded_and_announced(argv, used, total, capsys):
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["n_items"] == used
    said = [line for line in captured.err.splitlines() if line.startswith("using ")]
    assert len(said) == 1 and said[0].startswith(f"using {used:,} of "), captured.err
    if total is not None:
        assert f" of {total:,} items" in said[0]


def test_importance_limit_takes_all_or_a_count_only(capsys):
    assert main(["importance", "mlp", "digits", "--limit", "many"]) == 2
    assert "--limit must be a whole number of items or 'all'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, used", [
    (["prune", "mlp", "--sensitivity", "--data", "digits", "--sparsities", "0.5", "--json"], 64),
    (["prune", "mlp", "--sensitivity", "--data", "digits", "--sparsities", "0.5", "--json",
      "--limit", "all"], 1797),
    (["early-exit", "mlp", "digits", "--json"], 600),
])
def test_surgery_data_is_bounded_and_announced(argv, used, capsys):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)
    said = [line for line in captured.err.splitlines() if line.startswith("using ")]
    assert len(said) == 1 and said[0].startswith(f"using {used:,} of 1,797 items"), captured.err
