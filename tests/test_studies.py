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


@pytest.mark.parametrize("claim,line,expected,side", [
    ("above", 0.0, "refuted", "at or below"), ("below", 0.0, "refuted", "at or above"),
    ("above", -0.1, "supported", "above"), ("below", 0.1, "supported", "below")])
def test_threshold_rule_reads_a_zero_spread_interval_on_the_line_as_outside_the_claim(claim, line, expected, side):
    """Every repeat exactly at the line: the strict claim ('above' / 'below' it) does not hold,
    and more repeats of the same would not change that, so it is refuted, not cannot tell."""
    v = threshold_rule(mean_interval([0.0, 0.0, 0.0], what="gain"), line, claim=claim)
    assert v.verdict == expected and v.reason.endswith(f"wholly {side} {line:g}") and not v.needs


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
    # the two half-widths (0.03 + 0.03) must shrink below the 0.01 gap: n * (0.06 / 0.01)^2 * 5 items
    assert "about 180000 items" in undecided.needs


def test_peak_rule_items_needed_is_the_claims_formula_with_unequal_intervals():
    from layerscope.analyses.claims import items_to_separate

    s = np.array([0.80, 0.7, 0.78, 0.5])
    half = np.array([0.01, 0.02, 0.04, 0.02])          # the best inside: 0.01, the best outside: 0.04
    v = peak_rule([str(i) for i in range(4)], s, s - half, s + half, [0, 1], what="x",
                  region="the first half", n=1000, per_item=5)
    assert v.verdict == "cannot tell"
    expected = items_to_separate(1000, 0.01 + 0.04, 0.02) * 5       # 6250 held-out -> 31250 items
    assert expected == 31250 and f"about {expected} items" in v.needs


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
              "dropout", "freezing", "similarity-across-seeds"):
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


TRAINING_QUICK = ["skip-connections", "activations", "batch-norm", "similarity-across-seeds", "width-vs-depth",
                  "depthwise", "halving-width"]
MODEL_QUICK = ["depth-represents", "prune-depth", "lm-decides"]


def test_every_study_runs_in_quick_form_somewhere():
    """The slow tier runs these; dropout (above) and freezing (below) have their own runs."""
    assert set(TRAINING_QUICK + MODEL_QUICK + ["dropout", "freezing"]) == set(registry())


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINING_QUICK)
def test_training_studies_quick(name, tmp_path):
    r = run_study(name, workdir=str(tmp_path))
    assert r.seeds == 3 and r.rows and r.verdict.verdict in ("supported", "refuted", "mixed", "cannot tell")
    assert "[" in r.verdict.reason or any("[" in p.reason for p in r.verdict.parts.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_QUICK)
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


# --- freezing for transfer -----------------------------------------------------------------------


def _freeze_numbers(full, half, head, noise=0.002, cpu=(10.0, 5.0, 1.0)):
    """Per-seed numbers for 0, 3 and 6 frozen blocks, the seed-to-seed jitter rotated between
    settings so that paired differences keep a spread."""
    jitter = {0: [0.0, noise, -noise], 3: [noise, -noise, 0.0], 6: [-noise, 0.0, noise]}
    acc = {k: [m + j for j in jitter[k]] for k, m in ((0, full), (3, half), (6, head))}
    times = {k: [c + j for j in jitter[k]] for k, c in zip((0, 3, 6), cpu)}
    return acc, times


@pytest.mark.parametrize("full,half,head,noise,expected", [
    (0.80, 0.795, 0.70, 0.002, "supported"),      # half frozen keeps accuracy, head only loses, time saved
    (0.80, 0.70, 0.60, 0.002, "mixed"),           # half frozen loses 10 points: the features part fails
    (0.80, 0.80, 0.81, 0.002, "mixed"),           # head only is better: "later layers adapt" fails
    (0.80, 0.79, 0.70, 0.05, "cannot tell"),      # seeds too noisy for the accuracy parts
])
def test_freezing_verdict_from_synthetic_numbers(full, half, head, noise, expected):
    from layerscope.studies.freezing import freezing_verdict

    acc, cpu = _freeze_numbers(full, half, head, noise)
    v = freezing_verdict(acc, cpu, blocks=6)
    assert v.verdict == expected, v.text()
    assert set(v.parts) == {"freezing the first half keeps accuracy", "the later blocks need adapting",
                            "freezing saves time"}
    assert all("[" in p.reason for p in v.parts.values())


def test_freezing_verdict_refuted_when_every_part_fails():
    from layerscope.studies.freezing import freezing_verdict

    acc, cpu = _freeze_numbers(0.80, 0.60, 0.70, cpu=(5.0, 10.0, 1.0))   # slower and worse when frozen
    v = freezing_verdict(acc, cpu, blocks=6)
    assert v.verdict == "refuted" and all(p.verdict == "refuted" for p in v.parts.values())
    with pytest.raises(LayerscopeError, match=r"needs runs with \[3\] blocks frozen"):
        freezing_verdict({0: [0.8] * 3, 6: [0.7] * 3}, {0: [1.0] * 3, 6: [1.0] * 3}, blocks=6)


def test_freezing_study_refuses_a_causal_lm_and_leaves_minilm_unchanged():
    import torch

    from layerscope.models import load_model
    from layerscope.replay import build_stack
    from layerscope.studies.freezing import record, train_frozen

    with pytest.raises(LayerscopeError, match="does not apply to 'cnn'.*text encoders"):
        run_study("freezing", model="cnn")
    loaded = load_model("minilm")
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    flags = {n: p.requires_grad for n, p in loaded.module.named_parameters()}
    stack = build_stack(loaded)
    texts = ["a fine film", "a dreadful bore", "lovely and warm", "flat and dull"] * 4
    labels = torch.tensor([1, 0, 1, 0] * 4)
    batches, per_block = record(stack, texts, labels, batch_size=8, max_length=12, timed=1)
    assert len(batches) == 2 and len(per_block) == 6 and (per_block >= 0).all()
    acc, params, sec = train_frozen(stack, batches[:1], batches[1:], frozen=4, seed=0, epochs=1)
    block = sum(p.numel() for p in stack.blocks[5].parameters())
    assert params == 2 * block + 384 * 2 + 2 and 0.0 <= acc <= 1.0 and sec >= 0.0
    head_only = train_frozen(stack, batches[:1], batches[1:], frozen=6, seed=0, epochs=1)
    assert head_only[1] == 384 * 2 + 2
    after = loaded.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.requires_grad for n, p in loaded.module.named_parameters()} == flags
    assert not loaded.module.training


@pytest.mark.slow
def test_freezing_study_quick():
    r = run_study("freezing")
    assert r.seeds == 3 and [row[0] for row in r.rows] == [0, 3, 6]
    assert r.verdict.verdict in ("supported", "refuted", "mixed", "cannot tell")
    assert all("[" in p.reason for p in r.verdict.parts.values())


# --- depth-represents: the token-level bigram view; similarity: deep copies ----------------------


def test_bigram_sites_mark_the_second_word_of_the_pair():
    from layerscope.analyses.probe_tasks import bigram_shift, bigram_shift_sites
    from layerscope.data import load_dataset

    texts = list(load_dataset("sentences", limit=60, seed=0).items)
    items, labels, sites = bigram_shift_sites(texts, seed=2)
    assert (items, labels) == bigram_shift(texts, seed=2)          # the same task, sites added
    originals = [" ".join(t.split()) for t in texts if len(t.split()) >= 4]
    assert 0 < sum(labels) < len(labels)
    for item, orig, y, site in zip(items, originals, labels, sites):
        i = item[:site].count(" ") - 1                              # the pair is words i, i + 1
        words, before = item.split(), orig.split()
        assert item[site - 1] == " " and item[site:].split()[0] == words[i + 1]
        if y:
            assert (words[i], words[i + 1]) == (before[i + 1], before[i]) and words[i] != words[i + 1]
        else:
            assert words == before


def test_copy_share_counts_layers_close_to_the_last():
    from layerscope.studies.similarity_seeds import copy_share

    m = np.eye(5)
    m[4, 2] = m[2, 4] = 0.95
    m[4, 3] = m[3, 4] = 0.89
    assert copy_share(m) == pytest.approx(1 / 4)
