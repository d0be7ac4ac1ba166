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


@pytest.mark.slow
def test_steer_minilm_json(capsys):
    code, out, err = run(capsys, "steer", "minilm", "--limit", "300", "--eval", "6", "--layers", "4,5",
                         "--alphas", "4,-4", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["objective"] == "embedding 1-cos" and res["labels"] == ["4", "5"]
    assert len(res["effect"][0]) == 2 and res["n_eval"] == 6
    assert res["effect"][1][0] > 0 > res["effect"][1][1]


@pytest.mark.slow
def test_steer_along_a_probe_direction(capsys):
    code, out, err = run(capsys, "steer", "minilm", "--vector", "probe", "--limit", "300", "--eval", "6",
                         "--layers", "5", "--alphas", "4,-4", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["vector"] == "probe" and res["labels"] == ["5"]
    assert res["effect"][0][0] > 0 > res["effect"][0][1]


def test_steer_generates_and_reads_the_continuations_sentiment(capsys, llama_folder):
    from layerscope.analyses.causal.steering import text_classifier
    from layerscope.cli.cmd_steer import contrast_split
    from layerscope.data import load_dataset

    code, out, err = run(capsys, "steer", str(llama_folder), "--limit", "300", "--eval", "4",
                         "--layers", "1", "--alphas", "4", "--generate", "the film was", "--tokens", "4",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [s["alpha"] for s in res["samples"]] == [0.0, 4.0, -4.0]
    a, b, _ = contrast_split(load_dataset("sentences", limit=300, seed=0), 2.0, -2.0, 4, 0)
    clf, accuracy = text_classifier(a, b)
    assert res["text_classifier_accuracy"] == pytest.approx(accuracy) and accuracy > 0.6
    for sample in res["samples"]:
        assert sample["p_a"] == pytest.approx(float(clf.predict_proba([sample["text"]])[0, 1]))


def test_steer_bad_vector(capsys):
    code, _, err = run(capsys, "steer", "minilm", "--vector", "pca")
    assert code == 2 and "--vector must be mean-difference or probe" in err


def test_steer_bad_alphas(capsys):
    code, _, err = run(capsys, "steer", "minilm", "--alphas", "big")
    assert code == 2 and "--alphas must be a comma list of numbers" in err


def test_attribute_gradcam_on_the_zoo_cnn(capsys, tmp_path):
    png = tmp_path / "cam.png"
    code, out, err = run(capsys, "attribute", "cnn", "--data", "mnist", "--item", "3", "--method",
                         "gradcam", "--target", "1", "--plot", str(png), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["target"] == 1 and len(res["maps"]) == len(res["layers"]) and png.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["cnn", "--data", "mnist", "--target", "12"], "class 12 is out of range"),
    (["cnn"], "give --data"),
    (["cnn", "--data", "mnist", "--method", "gradcam", "--layers", "7"], "layer 7 is out of range"),
])
def test_attribute_bad_input(capsys, args, message):
    code, _, err = run(capsys, "attribute", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_ablate_the_zoo_cnn(capsys):
    code, out, err = run(capsys, "ablate", "cnn", "mnist", "--limit", "8", "--batch-size", "4", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["objective"] == "accuracy" and set(res["values"]) == {"zero", "mean", "resample", "remove"}
    code, _, err = run(capsys, "ablate", "cnn", "mnist", "--limit", "8", "--part", "head")
    assert code == 2 and "has no attention, so no heads" in err
