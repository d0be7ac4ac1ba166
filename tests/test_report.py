"""`layerscope report`: the folder protocol, PNG copies of the charts, and real reports checked
against independent computations and in headless Chromium."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from layerscope.errors import LayerscopeError
from layerscope.report import charts
from layerscope.report.browser import find_chromium
from layerscope.outputs import claim_dir
from layerscope.report.outdir import prepare_out_dir, record_report_files
from layerscope.report.png import chart_png

PNG = b"\x89PNG\r\n\x1a\n"
needs_chromium = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                    reason="no chromium here (CI installs it)")


# --- the output folder ---------------------------------------------------------------------------


def test_out_dir_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(LayerscopeError, match="not empty.*--force"):
        prepare_out_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LayerscopeError, match="is a file"):
        prepare_out_dir(f)


@pytest.mark.parametrize("name", ["index.html", "figures/myplot.png"])
def test_out_dir_never_takes_a_users_report_like_files(tmp_path, name):
    (tmp_path / "figures").mkdir()
    (tmp_path / name).write_text("the user's own")
    with pytest.raises(LayerscopeError, match="not written by layerscope"):
        prepare_out_dir(tmp_path)
    assert (tmp_path / name).read_text() == "the user's own"
    prepare_out_dir(tmp_path, force=True)
    assert (tmp_path / name).read_text() == "the user's own"


def test_out_dir_clears_only_the_older_reports_files(tmp_path):
    d = prepare_out_dir(tmp_path / "r")
    (d / "index.html").write_text("<html>old</html>")
    (d / "results.json").write_text(json.dumps({"format": "layerscope-report"}))
    (d / "figures" / "old.png").write_bytes(PNG)
    record_report_files(d, ["index.html", "results.json", "figures/old.png"])
    (d / "figures" / "myplot.png").write_bytes(PNG)  # the user's, added later
    prepare_out_dir(d)
    assert not (d / "index.html").exists() and not (d / "results.json").exists()
    assert [p.name for p in (d / "figures").iterdir()] == ["myplot.png"]
    other = tmp_path / "m"
    claim_dir(other, "model")
    with pytest.raises(LayerscopeError, match="holds layerscope model output"):
        prepare_out_dir(other)


def test_out_dir_recognises_an_unmarked_older_report(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG)
    (tmp_path / "figures" / "mine.png").write_bytes(PNG)
    (tmp_path / "index.html").write_text("<html>old</html>")
    (tmp_path / "results.json").write_text(json.dumps({"format": "layerscope-report",
                                                       "figures": ["figures/a.png"]}))
    prepare_out_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".layerscope.json", "figures"]
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["mine.png"]


# --- PNG copies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chart", [
    charts.line_chart(["0", "1", "2"], {"a": [0.1, None, 0.3], "b": [1, 2, 3]},
                      bands={"a": ([0, 0, 0.2], [0.2, 0.3, 0.4])}, dashed=["b"], marks={"a": 2}),
    charts.bar_chart(["x", "y"], {"p": [3, 4], "q": [1, 2]}, log_y=True),
    charts.heatmap([[1, 0.5], [0.5, 1]], ["0", "1"], ["0", "1"], zmin=0, zmax=1),
    charts.scatter_chart([[0, 1], [1, 0], [2, 2]], ["a", "b", "a"]),
    charts.scatter_chart([[0, 1], [1, 0], [2, 2]], [0.1, -2.0, 3.0], continuous=True),
])
def test_every_chart_kind_draws_as_png(chart):
    png = chart_png(chart, "title")
    assert png.startswith(PNG) and len(png) > 2000


# --- real reports ----------------------------------------------------------------------------------

SCRIPT = "<script>window.__injected = true</script> a line that tries to run"


@pytest.fixture(scope="module")
def scored_file(tmp_path_factory):
    """40 real sentences with their human scores, plus one that carries a script tag."""
    from layerscope.data import load_dataset

    ds = load_dataset("sentences", limit=40, seed=3)
    rows = [{"text": t, "label": float(y)} for t, y in zip(ds.items, ds.labels)]
    rows.append({"text": SCRIPT, "label": -2.5})
    path = tmp_path_factory.mktemp("data") / "scored.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, [r["text"] for r in rows]


@pytest.fixture(scope="module")
def minilm_report(scored_file, tmp_path_factory):
    from layerscope.report.build import build_report

    out = tmp_path_factory.mktemp("rep") / "report"
    res = build_report("minilm", str(scored_file[0]), out, importance_items=12, progress=False)
    return res, out


def _hsic1(K, L):
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    return ((K * L).sum() + K.sum() * L.sum() / ((n - 1) * (n - 2))
            - 2 / (n - 2) * K.sum(0) @ L.sum(0)) / (n * (n - 3))


def test_minilm_report_numbers_equal_an_independent_computation(minilm_report, scored_file, minilm,
                                                                minilm_tokenizer):
    res, out = minilm_report
    _, texts = scored_file
    assert res.sections == ["anatomy", "probes", "similarity", "importance", "activations", "pictures"]
    assert res.skipped == {} and res.n_items == len(texts)
    payload = json.loads((out / "results.json").read_text())
    assert payload["format"] == "layerscope-report"
    enc = minilm_tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hs = minilm(**enc, output_hidden_states=True).hidden_states[1:]
    mask = enc["attention_mask"].bool()
    acts = payload["results"]["activations"]
    assert acts["layers"] == [f"encoder.layer.{i}" for i in range(6)]
    for i, h in enumerate(hs):
        real = h[mask].double()
        assert acts["mean"][i] == pytest.approx(real.mean().item(), rel=1e-4, abs=1e-6)
        assert acts["max"][i] == pytest.approx(real.max().item(), rel=1e-4)
    pooled = [((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).double().numpy() for h in hs]
    grams = [p @ p.T for p in pooled]
    cka = np.asarray(payload["results"]["similarity"]["cka"])
    for i, j in [(0, 1), (0, 5), (2, 4)]:
        want = _hsic1(grams[i], grams[j]) / np.sqrt(_hsic1(grams[i], grams[i]) * _hsic1(grams[j], grams[j]))
        assert cka[i, j] == pytest.approx(want, abs=1e-4)
    assert np.allclose(np.diag(cka), 1.0, atol=1e-6)
    probes = {k for k in payload["results"] if k.startswith("probe:")}
    assert probes == {"probe:sentence length", "probe:bigram shift", "probe:sentiment"}
    anatomy = payload["results"]["anatomy"]
    assert anatomy["total_params"] == 22_713_216 and anatomy["counts"]["blocks"] == 6
    for fig in payload["figures"]:
        assert (out / fig).read_bytes().startswith(PNG)
    assert len(payload["figures"]) >= 12


def test_minilm_readings_quote_this_runs_numbers(minilm_report):
    res, out = minilm_report
    payload = json.loads((out / "results.json").read_text())
    imp = payload["results"]["importance"]
    worst = int(np.argmax(imp["metric"]))
    reading = payload["findings"]["importance"][0]
    assert f"Removing {imp['layers'][worst]} hurts most" in reading
    assert f"{imp['metric'][worst]:.3g}"[:4] in reading
    length = payload["results"]["probe:sentence length"]
    peak = int(np.argmax(length["score"]))
    assert any(length["layers"][peak] in f for f in payload["findings"]["probes"])


@needs_chromium
def test_minilm_report_renders_in_chromium_and_data_cannot_run_scripts(minilm_report, tmp_path):
    from layerscope.report.browser import check_report

    res, out = minilm_report
    html = (out / "index.html").read_text()
    assert SCRIPT not in html and "&lt;script&gt;" in html or "\\u003cscript" in html
    shot = tmp_path / "report.png"
    check = check_report(out / "index.html", screenshot=shot, width=1200)
    assert check.console_errors == [] and check.page_errors == [] and check.requests == []
    assert check.sections == res.sections
    assert check.charts > 10 and check.charts_rendered == check.charts
    assert not check.injected and check.width_overflow == 0
    assert shot.read_bytes().startswith(PNG)
    phone = check_report(out / "index.html", width=390)
    assert phone.width_overflow == 0 and phone.console_errors == []


def test_an_interrupted_report_leaves_no_index(tmp_path, monkeypatch):
    from layerscope.data import Dataset
    from layerscope.report import build

    d = prepare_out_dir(tmp_path / "r")
    (d / "index.html").write_text("<html>an older report</html>")
    record_report_files(d, ["index.html"])
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ds = Dataset("toy", torch.randn(40, 4), torch.randint(0, 3, (40,)), "tensor", "classification")

    def cut(page):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "render_html", cut)
    with pytest.raises(KeyboardInterrupt):
        build.build_report(net, ds, d, input_shape=(4,), progress=False)
    assert not (d / "index.html").exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".index.html")]


def test_report_of_a_trained_zoo_network_shows_its_training(tmp_path):
    from layerscope.data import load_dataset
    from layerscope.report.build import build_report
    from layerscope.train import train

    digits = load_dataset("digits", limit=400)
    torch.manual_seed(0)
    train("mlp", digits, out_dir=tmp_path / "run", epochs=2, batch_size=64, lr=1e-2,
          monitor_every=2, progress=False)
    res = build_report(str(tmp_path / "run" / "best"), "digits", tmp_path / "rep", limit=300,
                       importance_items=64, progress=False)
    assert "training" in res.sections and "probes" in res.sections
    # the first MLP block widens 64 -> 128, so blocks cannot simply be skipped: the section says why
    assert "importance" in res.sections or "keep the shape" in res.skipped["layer removal"]
    payload = json.loads((tmp_path / "rep" / "results.json").read_text())
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({m["step"] for m in metrics if m["kind"] == "block"})
    assert payload["results"]["training"]["steps"] == steps
    probe = payload["results"]["probe:digits labels"]
    assert max(probe["score"]) > probe["baseline"] + 0.3


def test_report_of_a_cnn_has_feature_maps(tmp_path):
    from layerscope.report.build import build_report

    torch.manual_seed(0)
    res = build_report("cnn", "mnist", tmp_path / "rep", limit=64, importance_items=16, progress=False)
    payload = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert payload["results"]["feature_maps"]["layer"] == "blocks.0"
    assert any(f.startswith("figures/pictures-image") for f in payload["figures"])
    assert "pictures" in res.sections


def test_cli_report_and_its_errors(tmp_path, scored_file, capsys):
    from layerscope.cli import main

    out = tmp_path / "cli"
    code = main(["report", "minilm", str(scored_file[0]), "-o", str(out), "--limit", "24",
                 "--importance-items", "8", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = json.loads(captured.out)
    assert info["n_items"] == 24 and (out / "index.html").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    cases = [
        (["report", "no-such-model"], "no-such-model"),
        (["report", "minilm", "digits", "-o", str(tmp_path / "x")], "takes text"),
        (["report", "minilm", str(scored_file[0]), "-o", str(tmp_path / "mine")], "not empty"),
        (["report", "minilm", str(scored_file[0]), "--limit", "2"], "--limit"),
    ]
    for args, needle in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # progress lines may come before it on stderr
        assert last.startswith("error: ") and needle in last and "Traceback" not in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "x").exists()


def test_report_shows_training_flags_of_every_kind(tmp_path):
    """Flags that carry no gradient norm (dead units, chance, overfitting) reach the page too."""
    from layerscope.data import load_dataset
    from layerscope.report.build import build_report
    from layerscope.train import train
    from layerscope.train.diagnose import chance_flags, dead_unit_flags, held_out_flags
    from layerscope.train.monitors import SUSTAIN

    digits = load_dataset("digits", limit=200)
    torch.manual_seed(0)
    train("mlp", digits, out_dir=tmp_path / "run", epochs=1, batch_size=64, lr=1e-2,
          monitor_every=0, progress=False)
    history = [{"epoch": e, "step": 20 * e, "eval_loss": v, "train_loss": 1.0 / e, "accuracy": 0.1}
               for e, v in enumerate([0.9, 0.5, 0.7, 0.8], 1)]
    relu = [{"kind": "relu", "layer": "blocks.0.act", "step": s, "dead_sustained": 0.8}
            for s in range(0, 10 * SUSTAIN, 10)]
    flags = (held_out_flags(history) + dead_unit_flags(relu)
             + chance_flags(history, {"accuracy": 0.1, "majority": 0.1, "classes": 10, "n": 200},
                            min_steps=50))
    assert sorted(f["kind"] for f in flags) == ["dead-units", "overfitting", "stuck-at-chance"]
    result_file = tmp_path / "run" / "result.json"
    saved = json.loads(result_file.read_text())
    saved["flags"] = flags
    result_file.write_text(json.dumps(saved))
    res = build_report(str(tmp_path / "run" / "best"), "digits", tmp_path / "rep", limit=40,
                       importance_items=8, progress=False)
    assert "training" in res.sections
    from html import unescape

    html = unescape((tmp_path / "rep" / "index.html").read_text())
    for f in flags:
        assert f["message"].split(":")[0] in html, f["kind"]
    payload = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert [f["kind"] for f in payload["results"]["training"]["flags"]] == [f["kind"] for f in flags]


def _write_pairs(path, rows):
    path.write_text("clean\tcorrupt\ttarget\tfoil\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_report_causal_section_patches_every_block_and_position(tmp_path, llama_folder):
    """--causal adds 'What each layer does': the patching heat map equals patch() run by itself,
    and the last block's output at the last position restores the whole gap."""
    from layerscope.analyses.causal.patching import patch, read_pairs
    from layerscope.models import load_model
    from layerscope.report.build import build_report

    tsv = _write_pairs(tmp_path / "pairs.tsv", [
        ("the capital of france is", "the capital of italy is", " paris", " rome"),
        ("the river runs through france", "the river runs through italy", " paris", " rome")])
    loaded = load_model(str(llama_folder))
    res = build_report(loaded, "sentences", tmp_path / "rep", limit=24, importance_items=4,
                       progress=False, causal=tsv)
    assert "causal" in res.sections, res.skipped
    got = json.loads((tmp_path / "rep" / "results.json").read_text())["results"]["causal"]
    want = patch(loaded, pairs=read_pairs(tsv))
    assert got["labels"] == ["0", "1"] and got["tokens"] == want.tokens
    assert np.allclose(got["restored"], want.restored, atol=1e-9)
    assert abs(got["restored"][-1][-1] - 1.0) < 1e-4
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "What each layer does" in html and "figures/causal-patching.png" in " ".join(
        json.loads((tmp_path / "rep" / "results.json").read_text())["figures"])


def test_report_causal_refusals_come_before_any_work(tmp_path, llama_folder, capsys):
    from layerscope.cli import main

    uneven = _write_pairs(tmp_path / "uneven.tsv", [("the capital of france is", "the capital of "
                                                     "the united kingdom is", " paris", " london")])
    good = _write_pairs(tmp_path / "good.tsv", [("the capital of france is", "the capital of italy is",
                                                 " paris", " rome")])
    cases = [(["report", str(llama_folder), "sentences", "--causal", str(uneven)], "same token length"),
             (["report", "mlp", "digits", "--causal", str(good)], "not a causal language model"),
             (["report", str(llama_folder), "sentences", "--causal", str(tmp_path / "none.tsv")],
              "does not exist")]
    for argv, fragment in cases:
        out = tmp_path / f"out{len(fragment)}"
        code = main(argv + ["-o", str(out), "--limit", "8"])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err, err
        assert not out.exists()


def test_report_layers_measures_and_shows_only_the_chosen_blocks(tmp_path, llama_folder, capsys):
    """--layers (the CLI's layer syntax): the per-layer sections hold only the chosen blocks,
    with the numbers a report of every block gives for them, and say so; a bad spec fails first."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from layerscope.cli import main
    from layerscope.report.build import build_report

    tok = AutoTokenizer.from_pretrained(str(llama_folder))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path / "llama4"
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    build_report(str(folder), "sentences", tmp_path / "all", limit=60, importance_items=4,
                 progress=False)
    assert main(["report", str(folder), "sentences", "-o", str(tmp_path / "two"), "--limit", "60",
                 "--importance-items", "4", "--layers", "1,-1", "--json"]) == 0
    chosen = ["model.layers.1", "model.layers.3"]
    every, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("all", "two"))
    assert two["layers"] == chosen and two["chosen_layers"] == "1,-1" and len(every["layers"]) == 4
    pick = [every["layers"].index(n) for n in chosen]
    a, b = every["results"]["activations"], two["results"]["activations"]
    assert b["layers"] == chosen
    for key in ("mean", "std"):
        assert np.allclose(b[key], [a[key][i] for i in pick], rtol=1e-6)
    cka_all, cka_two = (np.asarray(r["results"]["similarity"]["cka"]) for r in (every, two))
    assert np.allclose(cka_two, cka_all[np.ix_(pick, pick)], atol=1e-9)
    probes = [k for k in two["results"] if k.startswith("probe:")]
    assert probes and all(len(two["results"][k]["score"]) == 2 for k in probes)
    for section in ("importance", "lens", "activations", "similarity"):
        text = " ".join(two["findings"][section])
        assert "model.layers.0" not in text and "model.layers.2" not in text, (section, text)
    html = (tmp_path / "two" / "index.html").read_text()
    assert html.count("Only the 2 of 4 blocks chosen with --layers") >= 5
    capsys.readouterr()
    assert main(["report", str(folder), "sentences", "-o", str(tmp_path / "bad"), "--limit", "8",
                 "--layers", "7"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]   # after the load stage's lines
    assert last.startswith("error: layer 7 is out of range") and not (tmp_path / "bad").exists()
