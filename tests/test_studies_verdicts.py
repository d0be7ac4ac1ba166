"""Every study's verdict rule on synthetic numbers: each verdict the rule can give is reached
(so no verdict is constant). Single-part claims cannot be "mixed"; the multi-part ones reach all
four. freezing and depth-represents have their own tests (test_studies.py, test_studies_depth.py)."""

from __future__ import annotations

import pytest


def seeds(m: float, s: float = 0.002, turn: int = 0, n: int = 3) -> list[float]:
    """``n`` per-seed values around ``m``; ``turn`` rotates the jitter so paired differences keep a spread."""
    jitter = [s * ((i + turn) % n - (n - 1) / 2) for i in range(n)]
    return [m + j for j in jitter]


NOISY = [0.0, 0.3, -0.25]


def _check(v, expected):
    assert v.verdict == expected, v.text()
    quoted = [p.reason for p in v.parts.values()] or [v.reason]
    assert all("[" in q for q in quoted)        # every part quotes its interval
    if expected == "cannot tell":
        assert v.needs


@pytest.mark.parametrize("with_dropout,expected", [
    (0.02, "supported"), (0.20, "refuted"), (None, "cannot tell")])
def test_dropout(with_dropout, expected):
    from layerscope.studies.dropout import dropout_verdict

    gap0 = seeds(0.10)
    gap5 = [0.10 + x for x in NOISY] if with_dropout is None else seeds(with_dropout, turn=1)
    _check(dropout_verdict({0.0: gap0, 0.5: gap5}), expected)


@pytest.mark.parametrize("ratio,acc,expected", [
    (1.0, 0.05, "supported"), (-1.0, -0.05, "refuted"), (1.0, -0.05, "mixed"), (None, None, "cannot tell")])
def test_activations(ratio, acc, expected):
    from layerscope.studies.activations import activations_verdict

    base = {"ratio": seeds(-2.0), "acc": seeds(0.8)}
    relu = ({"ratio": [-2.0 + x for x in NOISY], "acc": [0.8 + x / 10 for x in NOISY]} if ratio is None else
            {"ratio": seeds(-2.0 + ratio, turn=1), "acc": seeds(0.8 + acc, turn=1)})
    _check(activations_verdict({"relu": relu, "sigmoid": base}, depth=8), expected)


@pytest.mark.parametrize("speedup,expected", [
    ([0.5, 0.55, 0.45], "supported"), ([-0.2, -0.25, -0.15], "refuted"),
    ([0.1, 0.12, 0.11], "mixed"), ([-0.2, 0.6, 0.2], "cannot tell")])
def test_batch_norm(speedup, expected):
    from layerscope.studies.batch_norm import batch_norm_verdict

    verdict, est = batch_norm_verdict([100 * (1 + s) for s in speedup], [100.0] * 3)
    assert est.value == pytest.approx(sum(speedup) / 3)
    _check(verdict, expected)


@pytest.mark.parametrize("ratio,drop,expected", [
    (0.2, 0.005, "supported"), (0.8, 0.10, "refuted"), (0.2, 0.10, "mixed"), (0.2, None, "cannot tell")])
def test_depthwise(ratio, drop, expected):
    from layerscope.studies.depthwise import depthwise_verdict

    full = seeds(0.95)
    dw = [0.95 - 0.02 + x / 10 for x in NOISY] if drop is None else seeds(0.95 - drop, turn=1)
    _check(depthwise_verdict(ratio, {"cnn": full, "cnn-dw": dw}), expected)


@pytest.mark.parametrize("speed,drop,expected", [
    (0.5, 0.002, "supported"), (0.05, 0.05, "refuted"), (0.5, 0.05, "mixed"), (None, 0.002, "cannot tell")])
def test_halving_width(speed, drop, expected):
    from layerscope.studies.halving_width import halving_verdict

    sp = [0.2 + x for x in NOISY] if speed is None else seeds(speed, s=0.02)
    before = seeds(0.9, s=0.0005)
    _check(halving_verdict(sp, before, seeds(0.9 - drop, s=0.0005, turn=1)), expected)


@pytest.mark.parametrize("first,expected", [
    ([0.9, 0.92, 0.88, 0.9, 0.91, 0.89], "supported"), ([0.3, 0.32, 0.28, 0.31, 0.3, 0.29], "refuted"),
    ([0.4, 0.95, 0.7, 0.5, 0.9, 0.66], "cannot tell")])
def test_lm_decides(first, expected):
    from layerscope.studies.lm_decides import lm_decides_verdict

    verdict, est = lm_decides_verdict(first)
    assert est.n == 6 and est.unit == "chunks"
    _check(verdict, expected)


@pytest.mark.parametrize("early,middle,late,expected", [
    (0.1, 0.5, 0.2, "supported"), (0.5, 0.1, 0.4, "refuted"), (0.1, 0.3, 0.5, "mixed"),
    (0.3, None, 0.3, "cannot tell")])
def test_prune_depth(early, middle, late, expected):
    from layerscope.studies.prune_depth import prune_verdict

    mid = [0.3 + x for x in NOISY * 2 + [0.1, -0.1]] if middle is None else seeds(middle, s=0.01, n=8)
    v = prune_verdict(seeds(early, s=0.01, turn=3, n=8), mid, seeds(late, s=0.01, turn=5, n=8), "nats")
    _check(v, expected)


@pytest.mark.parametrize("accs,expected", [
    ((0.90, 0.95, 0.93, 0.91), "supported"), ((0.95, 0.90, 0.91, 0.96), "refuted"),
    ((0.90, 0.95, 0.94, 0.97), "mixed"), ((0.95, 0.95, 0.94, None), "cannot tell")])
def test_width_vs_depth(accs, expected):
    from layerscope.studies.width_depth import width_depth_verdict

    acc = {d: ([0.95 + x / 10 for x in NOISY] if a is None else seeds(a, turn=i))
           for i, (d, a) in enumerate(zip((1, 2, 4, 8), accs))}
    _check(width_depth_verdict(acc), expected)


@pytest.mark.parametrize("skip,clip,expected", [
    (0.1, 0.05, "supported"), (-0.1, -0.05, "refuted"), (0.1, -0.05, "mixed"), (None, None, "cannot tell")])
def test_skip_connections(skip, clip, expected):
    from layerscope.studies.skip_connections import CLIP, skip_verdict

    def val(m, turn):   # noisy values rotated by ``turn``, so paired differences keep a spread
        return [m + x / 10 for x in NOISY[turn:] + NOISY[:turn]] if skip is None else seeds(m, turn=turn)

    plain, res = 0.5, 0.5 + (skip or 0)
    acc = {(32, False, None): val(plain, 0), (32, True, None): val(res, 1),
           (32, False, CLIP): val(plain + (clip or 0), 2), (32, True, CLIP): val(res + (clip or 0), 0)}
    grad = {(32, False, None): val(-3.0, 0), (32, True, None): val(-3.0 + 10 * (skip or 0), 1)}
    _check(skip_verdict(acc, grad, 32), expected)


def test_skip_connections_clipping_that_leaves_plain_at_chance_does_not_help():
    """Both plain runs at chance on every seed: clipped − unclipped is exactly 0 with no spread,
    which is wholly outside 'clipping helps' (> 0): refuted, not an undecidable interval."""
    from layerscope.studies.skip_connections import CLIP, skip_verdict

    acc = {(32, False, None): [0.1] * 3, (32, False, CLIP): [0.1] * 3,
           (32, True, None): seeds(0.8), (32, True, CLIP): seeds(0.85, turn=1)}
    grad = {(32, False, None): seeds(-9.0), (32, True, None): seeds(-3.0, turn=1)}
    v = skip_verdict(acc, grad, 32)
    plain = v.parts["clipping helps at depth 32 (plain)"]
    assert plain.verdict == "refuted" and not plain.needs
    assert plain.reason.endswith("0 [0, 0] over 3 seeds, wholly at or below 0")
    assert v.verdict == "mixed"


@pytest.mark.parametrize("cnn,deep,expected", [
    (100, 100, "supported"), (10, 10, "refuted"), (100, 10, "mixed"), (100, 9, "cannot tell")])
def test_similarity_across_seeds(cnn, deep, expected):
    from layerscope.studies.similarity_seeds import similarity_verdict

    def counts(hits, total):         # layer -> one 0/1 per comparison
        flat = [1] * hits + [0] * (total - hits)
        return {i: flat[i::4] for i in range(4)}

    small = 10 if expected == "cannot tell" else 100
    v = similarity_verdict(counts(cnn, 100), {4: counts(cnn, 100), 16: counts(deep, small)}, [4, 16])
    _check(v, expected)


# --- bad input: one line, exit 2 -----------------------------------------------------------------

# a model each study does not take (cheap to load), and the words of its "it takes" list
NOT_FOR = {"depth-represents": ("cnn", "text models"), "prune-depth": ("cnn", "text encoders or language models"),
           "width-vs-depth": ("cnn", "zoo MLPs"), "skip-connections": ("cnn", "zoo MLPs"),
           "batch-norm": ("cnn", "zoo MLPs"), "activations": ("cnn", "zoo MLPs"), "dropout": ("cnn", "zoo MLPs"),
           "freezing": ("cnn", "pretrained text encoders"), "halving-width": ("cnn", "zoo MLPs"),
           "depthwise": ("mlp", "the zoo CNN"), "similarity-across-seeds": ("minilm", "zoo CNNs or MLPs"),
           "lm-decides": ("minilm", "causal language models")}


def _one_line_error(capsys, argv) -> str:
    from layerscope.cli.app import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_every_study_has_a_model_it_refuses():
    from layerscope.studies.common import registry

    assert set(NOT_FOR) == set(registry())


@pytest.mark.parametrize("name", sorted(NOT_FOR))
def test_a_study_given_a_model_it_does_not_take_says_which_it_takes(name, capsys):
    model, takes = NOT_FOR[name]
    line = _one_line_error(capsys, ["study", name, "--model", model])
    assert f"study {name} does not apply to {model!r}" in line and f"it takes {takes}" in line


@pytest.mark.parametrize("name,minimum", [("depth-represents", r"at least 200 sentences"),
                                          ("prune-depth", r"at least 16 items"),
                                          ("lm-decides", r"at least \d+ texts"),
                                          ("freezing", r"at least 100 sentences")])
def test_too_little_data_says_how_many_items_are_needed(name, minimum, tmp_path, capsys):
    import re

    f = tmp_path / "few.csv"
    f.write_text("text,label\n" + "\n".join(f"sentence number {i} is fine here,{(-1) ** i * 1.5}" for i in range(8)))
    line = _one_line_error(capsys, ["study", name, "--data", str(f)])
    assert re.search(minimum, line), line


def test_unknown_study_lists_them_and_a_seeded_study_needs_two_seeds(capsys):
    from layerscope.studies.common import registry

    line = _one_line_error(capsys, ["study", "nope"])
    assert all(n in line for n in registry())
    assert "at least 2 seeds" in _one_line_error(capsys, ["study", "dropout", "--seeds", "1"])
