"""Studies: the verdict rules on synthetic numbers (every verdict reachable), intervals against
scipy, the registry and CLI errors, and the smallest real runs of the studies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from layerscope.errors import LayerscopeError
from layerscope.studies.common import (Estimate, Settings, Verdict, band_rule, combine, diff_interval,
                                       mean_interval, needed_repeats, peak_rule, registry, run_study,
                                       threshold_rule, wilson_interval)


# --- intervals -------------------------------------------------------------------------------


def test_mean_interval_is_scipys_t_interval():
    v = [0.3, 0.1, 0.25, 0.4, 0.2]
    lo, hi = sps.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=sps.sem(v))
    e = mean_interval(v)
    assert e.value == pytest.approx(np.mean(v)) and e.low == pytest.approx(lo) and e.high == pytest.approx(hi)


def test_diff_interval_paired_and_welch():
    a, b = [1.0, 2.0, 3.5, 2.2], [0.5, 1.1, 2.0, 2.1]
    paired = diff_interval(a, b)
    lo, hi = sps.t.interval(0.95, 3, loc=np.mean(np.subtract(a, b)), scale=sps.sem(np.subtract(a, b)))
    assert (paired.low, paired.high) == (pytest.approx(lo), pytest.approx(hi))
    welch = diff_interval(a, b, paired=False)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 3)
    h = sps.t.ppf(0.975, int(df)) * math.sqrt(va + vb)
    assert welch.high - welch.value == pytest.approx(h)


def test_wilson_interval_matches_statsmodels_formula():
    e = wilson_interval(80, 100)
    assert (round(e.low, 4), round(e.high, 4)) == (0.7112, 0.8666)


def test_no_interval_from_one_repeat_is_cannot_tell_asking_for_two():
    v = threshold_rule(mean_interval([0.5]))
    assert v.verdict == "cannot tell" and "at least 2" in v.needs


# --- every verdict is reachable from numbers ---------------------------------------------------


@pytest.mark.parametrize("values,claim,expected", [
    ([0.30, 0.32, 0.31], "above", "supported"),
    ([-0.30, -0.32, -0.31], "above", "refuted"),
    ([-0.30, -0.32, -0.31], "below", "supported"),
    ([-0.1, 0.12, 0.03], "above", "cannot tell"),
])
def test_threshold_rule_gives_each_verdict(values, claim, expected):
    v = threshold_rule(mean_interval(values, what="gain"), 0.0, claim=claim)
    assert v.verdict == expected
    assert "gain" in v.reason and "[" in v.reason          # the interval is quoted
    if expected == "cannot tell":
        assert "seeds" in v.needs


def test_needed_repeats_grows_as_the_effect_shrinks():
    wide = Estimate(0.05, -0.05, 0.15, 3)
    assert needed_repeats(wide) > 3
    assert needed_repeats(Estimate(0.01, -0.09, 0.11, 3)) > needed_repeats(wide)


def test_band_rule_three_outcomes_and_undecided():
    kw = dict(below_text="b", inside_text="i", above_text="a", verdicts=("refuted", "mixed", "supported"))
    assert band_rule(mean_interval([0.5, 0.52, 0.51]), 0.0, 0.3, **kw).verdict == "supported"
    assert band_rule(mean_interval([0.1, 0.12, 0.11]), 0.0, 0.3, **kw).verdict == "mixed"
    assert band_rule(mean_interval([-0.5, -0.52, -0.51]), 0.0, 0.3, **kw).verdict == "refuted"
    assert band_rule(mean_interval([0.0, 0.6, 0.3]), 0.0, 0.3, **kw).verdict == "cannot tell"


def _peak(scores, half):
    s = np.asarray(scores, float)
    return peak_rule([str(i) for i in range(len(s))], s, s - half, s + half, [0, 1],
                     what="length", region="the first third", n=1000, per_item=5)


def test_peak_rule_gives_each_verdict():
    assert _peak([0.9, 0.8, 0.6, 0.5, 0.4, 0.3], 0.02).verdict == "supported"
    assert _peak([0.5, 0.6, 0.9, 0.5, 0.4, 0.3], 0.02).verdict == "refuted"
    undecided = _peak([0.80, 0.7, 0.79, 0.5, 0.4, 0.3], 0.03)
    assert undecided.verdict == "cannot tell"
    # half-width 0.03 must shrink below half the 0.01 gap: n * (0.03 / 0.005)^2 * 5 items
    assert "about 180000 items" in undecided.needs


def test_combine_all_four_outcomes():
    s, r, c = (Verdict("supported", "x", "r"), Verdict("refuted", "y", "r"),
               Verdict("cannot tell", "z", "r", "about 9 seeds"))
    assert combine({"a": s, "b": s}).verdict == "supported"
    assert combine({"a": r, "b": r}).verdict == "refuted"
    mixed = combine({"a": s, "b": r})
    assert mixed.verdict == "mixed" and "holds for a" in mixed.reason and "fails for b" in mixed.reason
    undecided = combine({"a": s, "b": c})
    assert undecided.verdict == "cannot tell" and "about 9 seeds" in undecided.needs


# --- registry and bad input --------------------------------------------------------------------


def test_registry_lists_the_studies():
    names = list(registry())
    for n in ("depth-represents", "prune-depth", "skip-connections", "activations", "batch-norm",
              "dropout", "similarity-across-seeds"):
        assert n in names


def test_unknown_study_lists_them():
    with pytest.raises(LayerscopeError, match="unknown study 'nope'; choose one of: .*skip-connections"):
        run_study("nope")


def test_study_that_does_not_apply_says_which_models_it_takes():
    with pytest.raises(LayerscopeError, match="does not apply to 'cnn': it takes zoo MLPs"):
        run_study("skip-connections", model="cnn")


def test_one_seed_is_too_few_for_an_interval():
    with pytest.raises(LayerscopeError, match="at least 2 seeds"):
        run_study("dropout", seeds=1)


def test_too_little_data_names_the_items_needed(tmp_path):
    f = tmp_path / "few.txt"
    f.write_text("\n".join(f"sentence number {i} is here" for i in range(40)))
    with pytest.raises(LayerscopeError, match="needs at least 200 sentences"):
        run_study("depth-represents", data=str(f))


def test_cli_errors_are_one_line_exit_2(capsys):
    from layerscope.cli.app import main

    assert main(["study", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown study 'nope'; choose one of:")
    assert main(["study", "lm-decides" if "lm-decides" in registry() else "dropout", "--model", "cnn"]) == 2
    assert main(["study", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in listed} == set(registry())


# --- the smallest real runs --------------------------------------------------------------------


def _tiny(name, **kw):
    return run_study(name, seeds=2, **kw)


def test_dropout_study_runs_and_quotes_its_interval(tmp_path):
    r = _tiny("dropout", workdir=str(tmp_path))
    assert r.verdict.verdict in ("supported", "refuted", "cannot tell")
    assert "over 2 seeds" in r.verdict.reason
    assert len(r.rows) == 2 and r.chart["data"]
    # the numbers in the table are the ones the verdict read
    gaps = [float(row[3].split(" ± ")[0]) for row in r.rows]
    quoted = float(r.verdict.reason.split("rate 0 − rate 0.5 ")[1].split(" ")[0])
    assert quoted == pytest.approx(gaps[0] - gaps[1], abs=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["skip-connections", "activations", "batch-norm", "similarity-across-seeds",
                                  "width-vs-depth", "depthwise", "halving-width"])
def test_training_studies_quick(name, tmp_path):
    r = run_study(name, workdir=str(tmp_path))
    assert r.seeds == 3 and r.rows and r.verdict.verdict in ("supported", "refuted", "mixed", "cannot tell")
    assert "[" in r.verdict.reason or any("[" in p.reason for p in r.verdict.parts.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["depth-represents", "prune-depth", "lm-decides"])
def test_model_studies_quick(name):
    r = run_study(name)
    quoted = [p.reason for p in r.verdict.parts.values()] or [r.verdict.reason]
    assert all("[" in q for q in quoted)


def test_lens_study_refuses_an_encoder():
    with pytest.raises(LayerscopeError, match="does not apply to 'minilm'.*causal language models"):
        run_study("lm-decides", model="minilm")


def test_page_and_markdown_are_written(tmp_path):
    from layerscope.studies.common import StudyResult
    from layerscope.studies.page import markdown, write_outputs
    from layerscope.report.charts import line_chart

    r = StudyResult("demo", "Demo", "x helps", "seed", "none", "ran it", ["a", "b"], [["1", "2"]],
                    line_chart(["0", "1"], {"s": [0.1, 0.2]}),
                    threshold_rule(mean_interval([0.3, 0.31, 0.29], what="gain")))
    out = write_outputs([r], tmp_path)
    html = (tmp_path / "index.html").read_text()
    assert "x helps" in html and "SUPPORTED" in html and (tmp_path / "figures" / "demo.png").exists()
    assert json.loads((tmp_path / "results.json").read_text())["studies"][0]["verdict"]["verdict"] == "supported"
    md = markdown([r], figures={"demo": "f/demo.png"})
    assert "gain 0.3 [" in md and "![Demo](f/demo.png)" in md
    assert out["html"].endswith("index.html")


def test_studies_page_renders_in_a_browser(tmp_path):
    from layerscope.report.browser import check_report, find_chromium
    from layerscope.report.charts import bar_chart
    from layerscope.studies.common import StudyResult
    from layerscope.studies.page import write_outputs

    if find_chromium() is None:
        pytest.skip("no chromium on PATH")
    results = [StudyResult(f"s{i}", f"Study {i}", "<script>window.__layerscope_injected=true</script>",
                           "seed", "anchor", "ran", ["a"], [["1"]], bar_chart(["0", "1"], {"x": [1, 2]}),
                           threshold_rule(mean_interval([0.3 + i, 0.31 + i, 0.29 + i], what="gain")))
               for i in range(2)]
    out = write_outputs(results, tmp_path)
    check = check_report(out["html"])
    assert not check.console_errors and not check.page_errors and not check.requests
    assert check.sections == ["s0", "s1"] and check.charts == check.charts_rendered == 2
    assert not check.injected


def test_merge_reads_back_what_was_written(tmp_path):
    from layerscope.studies.common import StudyResult, combine
    from layerscope.studies.page import load_results, write_outputs

    parts = {"a": threshold_rule(mean_interval([0.3, 0.31, 0.29], what="gain")),
             "b": threshold_rule(mean_interval([-0.3, -0.31, -0.29], what="loss"))}
    r = StudyResult("demo", "Demo", "x", "seed", "anchor", "ran", ["a"], [["1"]], None, combine(parts),
                    seconds=3.0, cpu_seconds=2.0)
    write_outputs([r], tmp_path)
    back = load_results([tmp_path / "results.json"])[0]
    assert back.verdict.verdict == "mixed" and back.verdict.parts["b"].verdict == "refuted"
    assert back.to_dict() == r.to_dict()
    with pytest.raises(LayerscopeError, match="not a results.json"):
        (tmp_path / "x.json").write_text('{"format": "other"}')
        load_results([tmp_path / "x.json"])


def test_halving_an_mlp_keeps_the_units_that_carry_the_output():
    import torch

    from layerscope import zoo
    from layerscope.studies.halving_width import halve_mlp

    torch.manual_seed(0)
    net = zoo.build("mlp:depth=2,width=8").eval()
    with torch.no_grad():                  # units 4-7 of both hidden layers are dead: zero weights in and out
        for block in net.blocks:
            block.linear.weight[4:] = 0
            block.linear.bias[4:] = 0
        net.blocks[1].linear.weight[:, 4:] = 0
        net.head.weight[:, 4:] = 0
    small = halve_mlp(net)
    x = torch.randn(5, 64)
    assert small.blocks[0].linear.out_features == 4 and small.head.in_features == 4
    assert torch.allclose(small(x), net(x), atol=1e-6)
    assert net.blocks[0].linear.out_features == 8           # the original is untouched
