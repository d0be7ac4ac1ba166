"""The causal commands end to end on SmolLM2 (patch, ablate, steer) and the zoo (attribute)."""

from __future__ import annotations

import json

import pytest

from layerscope.cli import main

EIFFEL = ["--clean", "The Eiffel Tower is in the city of", "--corrupt", "The Colosseum is in the city of"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_patch_last_blocks_on_smollm2(capsys, tmp_path):
    png = tmp_path / "patch.png"
    code, out, err = run(capsys, "patch", "smollm2", *EIFFEL, "--target", " Paris", "--foil", " Rome",
                         "--layers", "28-29", "--plot", str(png), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["labels"] == ["28", "29"] and len(res["tokens"]) == len(res["restored"][0])
    assert res["restored"][1][-1] == pytest.approx(1.0, abs=1e-4)
    assert res["metric_clean"] > res["metric_corrupt"]
    assert png.stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--clean", "The Eiffel Tower is in the city of", "--corrupt", "Rome's Colosseum is in the city of",
      "--target", " Paris"], "the clean prompt is 9 tokens and the corrupted prompt 10"),
    (EIFFEL + ["--target", " Parisians"], "is 2 tokens"),
    (EIFFEL + ["--target", " Paris", "--part", "heads", "--layers", "99"], "layer 99 is out of range"),
])
def test_patch_bad_input_is_one_line_exit_2(capsys, args, message):
    code, out, err = run(capsys, "patch", "smollm2", *args)
    assert code == 2
    assert message in err and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_patch_needs_prompts(capsys):
    code, _, err = run(capsys, "patch", "smollm2", "--clean", "a b")
    assert code == 2 and "give --clean, --corrupt and --target together" in err
