"""depth-represents: every task from one sweep (TaskRows / TokenSites), the token view against
transformers' own hidden states, and the study's verdict on synthetic numbers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from layerscope.errors import LayerscopeError
from layerscope.reducers import Reducer


class _Rows(Reducer):
    """Keeps every row it is given (layer -> list of (item number, row))."""

    view = "mean"

    def __init__(self):
        self.rows, self.labels = {}, []

    def update(self, acts, batch):
        for name, a in acts.items():
            self.rows.setdefault(name, []).append(a.detach().clone())
        self.labels.append((batch.start, batch.labels.clone()))


def test_task_rows_give_the_probe_its_task_as_a_sweep_of_its_own_items():
    from layerscope.analyses.probe import ProbeStats, probe
    from layerscope.data import Dataset
    from layerscope.studies.depth_represents import TaskRows
    from layerscope.sweep import sweep

    torch.manual_seed(0)
    x = torch.randn(300, 6)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    in_task = torch.rand(300) > 0.35
    labels = np.where(in_task.numpy(), y.numpy(), -1)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).eval()
    rows = TaskRows(ProbeStats(True, test_fraction=0.2), labels)
    sweep(net, x, reducers=[rows], batch_size=37, progress=False)      # batches cut across kept items
    shared = rows.result()
    alone = probe(net, Dataset("task", x[in_task], y[in_task], "tensor", "classification"), batch_size=64)
    assert rows.size == int(in_task.sum()) == shared.n_train + shared.n_test
    assert (shared.n_train, shared.n_test) == (alone.n_train, alone.n_test)
    assert shared.score == pytest.approx(alone.score, abs=1e-9)


def test_token_sites_are_the_block_outputs_transformers_returns(llama_folder):
    """A Llama's hidden_states[i + 1] is block i's output for every block but the last, whose
    entry is taken after the final norm: the token view reads block outputs (labelled by block)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from layerscope.analyses.probe_tasks import bigram_shift_sites
    from layerscope.data import load_dataset
    from layerscope.models import load_model
    from layerscope.studies.depth_represents import TokenSites, site_tokens
    from layerscope.sweep import sweep

    loaded = load_model(str(llama_folder))
    texts = list(load_dataset("sentences", limit=40, seed=0).items)
    items, shifted, sites = bigram_shift_sites(texts, seed=0)
    pos, lengths = site_tokens(loaded.tokenizer, items, sites, max_length=12)   # some sites cut off
    labels = np.where(pos >= 0, shifted, -1)
    assert 0 < (labels >= 0).sum() < len(items)
    inner = _Rows()
    sweep(loaded, items, reducers=[TokenSites(inner, labels, pos, lengths)], batch_size=7, max_length=12,
          progress=False)
    ours = {name: torch.cat(rows) for name, rows in inner.rows.items()}
    assert list(ours) == ["model.layers.0", "model.layers.1"]

    tok = AutoTokenizer.from_pretrained(llama_folder)
    model = LlamaForCausalLM.from_pretrained(llama_folder).eval()
    enc = tok(items, padding=True, truncation=True, max_length=12, return_offsets_mapping=True,
              return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    r, c = [], []
    for i, char in enumerate(sites):
        hit = ((offsets[i, :, 0] <= char) & (offsets[i, :, 1] > char)).nonzero().flatten()
        if len(hit):
            r.append(i)
            c.append(int(hit[0]))
    assert r == np.flatnonzero(labels >= 0).tolist()
    torch.testing.assert_close(ours["model.layers.0"], hidden[1][r, c], atol=1e-5, rtol=1e-4)
    last = ours["model.layers.1"]
    assert not torch.allclose(last, hidden[2][r, c], atol=1e-3)       # hidden_states' last entry is normed
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(last), hidden[2][r, c], atol=1e-5, rtol=1e-4)
    assert torch.cat([b for _, b in inner.labels]).tolist() == labels[labels >= 0].tolist()


def test_token_sites_refuse_another_tokenisation():
    from layerscope.reducers import BatchInfo
    from layerscope.studies.depth_represents import TokenSites

    ts = TokenSites(_Rows(), [0, 1], [1, 1], [3, 3])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with pytest.raises(LayerscopeError, match="another tokenisation"):
        ts.update({"h": torch.zeros(2, 4, 2)}, BatchInfo(0, 2, mask=mask))


def test_task_labels_share_one_pass_and_keep_sentiment_to_unshifted_items():
    from layerscope.data import load_dataset
    from layerscope.models import load_model
    from layerscope.studies.depth_represents import task_labels

    data = load_dataset("sentences", limit=120, seed=0)
    tok = load_model("minilm").tokenizer
    items, labels, extra = task_labels(list(data.items), data.labels, tokenizer=tok, max_length=16)
    n = len(items)
    assert all(len(v) == n for v in labels.values()) and len(extra["lengths"]) == n
    assert list(extra["lengths"]) == sorted(extra["lengths"])                 # shortest first
    sent, shift = labels["sentiment"], labels["bigram-shift"]
    assert (sent >= 0).sum() > 10 and not np.any((sent >= 0) & (shift == 1))
    token = labels["bigram-shift (token)"]
    assert np.array_equal(token >= 0, extra["positions"] >= 0) and (token < 0).any()   # 16 tokens cut some
    assert np.array_equal(token[token >= 0], shift[token >= 0])
    assert set(labels["length"]) == set(range(5))


# --- the verdict on synthetic numbers ------------------------------------------------------------


def _result(score, half, n_test=1000, baseline=0.5):
    from layerscope.analyses.probe import ProbeResult

    s = np.asarray(score, float)
    return ProbeResult([f"blocks.{i}" for i in range(len(s))], "t", "classification", "accuracy",
                       list(s), list(s - half), list(s + half), [1.0] * len(s), 4 * n_test, n_test,
                       baseline, baseline, [baseline, baseline], 8)


EARLY = [0.90, 0.85, 0.70, 0.65, 0.60, 0.55]
MIDDLE = [0.60, 0.65, 0.90, 0.70, 0.62, 0.60]
FLAT = [0.70, 0.71, 0.70, 0.69, 0.70, 0.70]


@pytest.mark.parametrize("length,sentiment,half,expected", [
    (EARLY, MIDDLE, 0.02, "supported"),       # length early, meaning middle
    (MIDDLE, EARLY, 0.02, "refuted"),         # both where the claim says they are not
    (EARLY, EARLY, 0.02, "mixed"),            # length holds, meaning does not
    (FLAT, FLAT, 0.03, "cannot tell"),        # no layer's interval clears the others
])
def test_depth_verdict_gives_each_verdict(length, sentiment, half, expected):
    from layerscope.studies.depth_represents import depth_verdict

    res = {"length": _result(length, half), "sentiment": _result(sentiment, half)}
    v = depth_verdict({"m": res}, {"m": 6250})
    assert v.verdict == expected, v.text()
    assert set(v.parts) == {"surface (length) peaks early", "meaning (sentiment) peaks middle"}
    assert all("[" in p.reason for p in v.parts.values())
    if expected == "cannot tell":       # held-out 1000 of 5000 task items from 6250 sentences
        assert all("items would separate them" in p.needs for p in v.parts.values())


def test_a_peak_below_chance_decides_nothing():
    from layerscope.studies.depth_represents import depth_verdict

    below = [0.45, 0.30, 0.30, 0.30, 0.30, 0.30]            # "early" by its interval, but under chance 0.5
    v = depth_verdict({"m": {"length": _result(below, 0.02)}}, {"m": 5000})
    assert v.verdict == "cannot tell" and "above chance" in v.parts["surface (length) peaks early"].needs


def test_the_study_refuses_too_little_data_and_a_non_text_model(tmp_path):
    from layerscope.studies.common import run_study

    f = tmp_path / "few.txt"
    f.write_text("\n".join(f"sentence number {i} is here" for i in range(40)))
    with pytest.raises(LayerscopeError, match="needs at least 200 sentences of 4 or more words.*has 40"):
        run_study("depth-represents", data=str(f))
    with pytest.raises(LayerscopeError, match="does not apply to 'cnn'.*takes text models"):
        run_study("depth-represents", model="cnn")


def test_two_models_share_one_chart_by_relative_depth():
    from layerscope.report.png import chart_png
    from layerscope.studies.depth_represents import _chart

    chart = _chart({"small": {"length": _result(EARLY, 0.02)},
                    "big": {"length": _result(EARLY + MIDDLE, 0.02)}})
    lines = {t["name"]: t["x"] for t in chart["data"] if t.get("mode") == "lines+markers"}
    assert lines["small: length"][-1] == lines["big: length"][-1] == 1.0 and len(lines["big: length"]) == 12
    assert chart["layout"]["xaxis"]["type"] == "linear"
    assert chart_png(chart, "t")[:4] == b"\x89PNG"
    colors = {t["name"]: t["line"]["color"] for t in chart["data"] if t.get("mode") == "lines+markers"}
    assert colors["small: length"] == colors["big: length"]          # one colour per task
    dash = {t["name"]: t["line"]["dash"] for t in chart["data"] if t.get("mode") == "lines+markers"}
    assert dash["small: length"] != dash["big: length"]              # the models differ by style


# --- part-of-speech: token sites, the sentence-wise split, the tagger ----------------------------

CLASSES = ["NOUN", "VERB", "DET", "ADV", "AUX", "PART", "PRON"]


def test_pos_sites_label_the_token_where_each_word_starts():
    """By hand, MiniLM's tokens: [CLS] the cat sat . [SEP] / [CLS] the token ##izer pu ##rred
    loudly . [SEP] / [CLS] they don ' t know . [SEP] (spaCy's "do" and "n't" start in one token)."""
    from layerscope.models import load_model
    from layerscope.studies.depth_represents import pos_sites

    tok = load_model("minilm").tokenizer
    items = ["The cat sat.", "The tokenizer purred loudly.", "They don't know.", "The cat sat."]
    tagged = [[(0, "DET"), (4, "NOUN"), (8, "VERB"), (11, "PUNCT")],
              [(0, "DET"), (4, "NOUN"), (14, "VERB"), (21, "ADV"), (27, "PUNCT")],
              [(0, "PRON"), (5, "AUX"), (7, "PART"), (11, "VERB"), (15, "PUNCT")],
              None]                                                     # not in the task (e.g. shifted)
    sites, lengths = pos_sites(tok, items, tagged, CLASSES, max_length=16)
    c = CLASSES.index
    assert sites == [[(1, c("DET")), (2, c("NOUN")), (3, c("VERB"))],
                     [(1, c("DET")), (2, c("NOUN")), (4, c("VERB")), (6, c("ADV"))],   # token, pu: first pieces
                     [(1, c("PRON")), (5, c("VERB"))],                                 # do / n't share "don"
                     []]
    assert lengths.tolist() == [6, 9, 8, 6]
    cut, lengths = pos_sites(tok, items[1:2], tagged[1:2], CLASSES, max_length=5)      # [CLS] the token ##izer [SEP]
    assert cut == [[(1, c("DET")), (2, c("NOUN"))]] and lengths.tolist() == [5]
    few, _ = pos_sites(tok, items[1:2], tagged[1:2], CLASSES, max_length=16, per_item=2, seed=3)
    again, _ = pos_sites(tok, items[1:2], tagged[1:2], CLASSES, max_length=16, per_item=2, seed=3)
    assert few == again and len(few[0]) == 2 and set(few[0]) < set(sites[1])


def test_the_tagger_gives_universal_tags_and_the_common_ones():
    pytest.importorskip("spacy")
    from layerscope.studies.depth_represents import common_tags, load_tagger, tag_words

    nlp = load_tagger()
    assert nlp is not None, "the [pos] extra (installed by scripts/setup.sh) is missing"
    assert not {"parser", "ner", "lemmatizer"} & set(nlp.pipe_names)
    words = tag_words(nlp, ["The cat sat.", "They don't know."])
    assert [t for _, t in words[0]] == ["DET", "NOUN", "VERB", "PUNCT"]
    assert [c for c, _ in words[1]] == [0, 5, 7, 11, 15]
    assert common_tags(words, 0.15) == ["VERB"] and "PUNCT" not in common_tags(words, 0.0)


def _site_items(n=60):
    from layerscope.data import load_dataset

    texts = [t for t in load_dataset("sentences", limit=2 * n, seed=0).items if len(t.split()) >= 4][:n]
    tagged = [[(m.start(), CLASSES[k % 3]) for k, m in enumerate(re.finditer(r"\S+", t))]
              for t in texts]
    return texts, tagged


def test_word_sites_are_the_block_outputs_transformers_returns(llama_folder):
    """Each row is the block output at its word's first token: hidden_states[i + 1][item, token]
    of transformers' own forward (the last block's entry there is after the final norm)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from layerscope.models import load_model
    from layerscope.studies.depth_represents import WordSites, pos_sites
    from layerscope.sweep import sweep

    loaded = load_model(str(llama_folder))
    texts, tagged = _site_items(30)
    tagged[4] = None
    sites, lengths = pos_sites(loaded.tokenizer, texts, tagged, CLASSES, max_length=12, per_item=3)
    inner = _Rows()
    ws = WordSites(inner, sites, lengths)
    sweep(loaded, texts, reducers=[ws], batch_size=7, max_length=12, progress=False)
    ours = {name: torch.cat(rows) for name, rows in inner.rows.items()}
    assert ws.size == sum(len(s) for s in sites) == len(ours["model.layers.0"]) and not sites[4]

    tok = AutoTokenizer.from_pretrained(llama_folder)
    model = LlamaForCausalLM.from_pretrained(llama_folder).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    r = [i for i, s in enumerate(sites) for _ in s]
    c = [p for s in sites for p, _ in s]
    assert all(enc["attention_mask"][i, :p + 1].all() for i, p in zip(r, c))        # right-padded: index = column
    torch.testing.assert_close(ours["model.layers.0"], hidden[1][r, c], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(ours["model.layers.1"]), hidden[2][r, c], atol=1e-5, rtol=1e-4)
    assert torch.cat([b for _, b in inner.labels]).tolist() == [y for s in sites for _, y in s]
    assert [start for start, _ in inner.labels] == sorted(start for start, _ in inner.labels)


def test_pos_probe_holds_whole_sentences_out():
    """With groups, a sentence's token rows all fall on one side of the held-out split; the same
    rows split one by one put some sentences on both sides (so the check can fail)."""
    from layerscope.analyses.probe import ProbeStats
    from layerscope.models import load_model
    from layerscope.studies.depth_represents import WordSites, pos_sites
    from layerscope.sweep import sweep

    loaded = load_model("minilm")
    texts, tagged = _site_items(60)
    sites, lengths = pos_sites(loaded.tokenizer, texts, tagged, CLASSES, max_length=24)
    by_sentence = WordSites(None, sites, lengths)
    by_sentence.inner = ProbeStats(True, test_fraction=0.3, groups=by_sentence.item_of_row)
    by_row = WordSites(ProbeStats(True, test_fraction=0.3), sites, lengths)
    sweep(loaded, texts, reducers=[by_sentence, by_row], batch_size=16, max_length=24, progress=False)
    item = by_sentence.item_of_row

    def sides(ws):
        test = np.zeros(ws.size, bool)
        test[np.concatenate(ws.inner.test_index)] = True
        return set(item[test]), set(item[~test])

    held, trained = sides(by_sentence)
    assert held and trained and not held & trained
    assert sum(len(sites[i]) for i in held) == sum(len(t) for t in by_sentence.inner.test_y)
    held, trained = sides(by_row)
    assert held & trained


def _sentence_file(tmp_path, n=220):
    from layerscope.data import load_dataset

    texts = [t for t in load_dataset("sentences", limit=2 * n, seed=1).items if len(t.split()) >= 4][:n]
    f = tmp_path / "sentences.txt"
    f.write_text("\n".join(texts))
    return str(f)


def test_the_study_reads_part_of_speech_into_its_verdict(tmp_path):
    pytest.importorskip("spacy")
    from layerscope.studies.common import run_study
    from layerscope.studies.depth_represents import POS, load_tagger

    assert load_tagger() is not None, "the [pos] extra (installed by scripts/setup.sh) is missing"
    r = run_study("depth-represents", model="minilm", data=_sentence_file(tmp_path))
    assert "syntax (part-of-speech) peaks early" in r.verdict.parts
    assert f"{POS} accuracy [95%]" in r.columns and POS in r.settings["tasks"]
    line = next(f for f in r.findings if f.startswith(f"{POS}: probe by"))
    assert "held out by sentence" in line and "chance (majority class)" in line
    assert r.settings["pos_rows"]["minilm"] > 220 and "NOUN" in r.settings["pos_classes"]


def test_the_study_runs_without_the_tagger_and_says_so(tmp_path, monkeypatch):
    import sys

    from layerscope.studies.common import run_study

    monkeypatch.setitem(sys.modules, "spacy", None)               # import spacy -> ImportError
    r = run_study("depth-represents", model="minilm", data=_sentence_file(tmp_path))
    left_out = [f for f in r.findings if "part-of-speech" in f]
    assert len(left_out) == 1 and "pip install layerscope[pos]" in left_out[0]
    assert "part-of-speech" not in r.settings["tasks"] and r.settings["pos_classes"] is None
    assert not any("part-of-speech" in p for p in r.verdict.parts)
    assert "bigram-shift (token)" in r.settings["tasks"]


@pytest.mark.parametrize("score,expected", [(EARLY, "supported"), (MIDDLE, "refuted"), (FLAT, "cannot tell")])
def test_part_of_speech_is_a_syntax_part_of_the_verdict(score, expected):
    from layerscope.studies.depth_represents import depth_verdict

    v = depth_verdict({"m": {"part-of-speech": _result(score, 0.02, baseline=0.26)}}, {"m": 5000})
    assert set(v.parts) == {"syntax (part-of-speech) peaks early"}
    assert v.verdict == expected, v.text()
