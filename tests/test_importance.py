"""Layer importance: prefix-reuse removal against full forwards with identity hooks written here,
Block Influence and angular distance against numpy, exact reducer merges, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerscope.analyses.importance import (
    AngularDistance,
    BlockInfluence,
    layer_importance,
    removal_curve,
    removal_effect,
)
from layerscope.errors import LayerscopeError
from layerscope.models import Encoded
from layerscope.reducers import BatchInfo

TEXTS = ["The film was a delight from start to finish.", "Terrible.",
         "A quiet, patient story about two brothers who stop talking for a decade.",
         "I would not watch it again.", "Rain all day", "Nobody expected the ending, least of all the cast."]


def padded_batches(vocab: int, lengths=((7, 3, 5), (4, 6)), seed: int = 0) -> list[Encoded]:
    """Right-padded token-id batches of uneven lengths, with attention masks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lens in lengths:
        T = max(lens)
        ids = torch.randint(1, vocab, (len(lens), T), generator=g)
        mask = torch.zeros(len(lens), T, dtype=torch.long)
        for b, n in enumerate(lens):
            mask[b, :n] = 1
        ids = ids * mask
        out.append(Encoded(args=(), kwargs={"input_ids": ids, "attention_mask": mask}, mask=mask,
                           size=len(lens)))
    return out


def blocks_of(model) -> list[torch.nn.Module]:
    for path in ("model.layers", "transformer.h", "encoder.layer"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise AssertionError("no blocks")


def hooked_forward(model, enc: Encoded, skip: set[int]):
    """The model's output with the blocks in ``skip`` replaced by identity (hooks written here)."""
    blocks = blocks_of(model)

    def identity(module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handles = [blocks[i].register_forward_hook(identity, with_kwargs=True) for i in skip]
    try:
        with torch.no_grad():
            return model(**enc.kwargs)
    finally:
        for h in handles:
            h.remove()


def hand_perplexity(model, batches, skip: set[int]) -> float:
    nll, n = 0.0, 0
    for enc in batches:
        logits = hooked_forward(model, enc, skip).logits.double().numpy()
        ids, mask = enc.kwargs["input_ids"].numpy(), enc.mask.numpy().astype(bool)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1] - 1):
                if mask[b, t] and mask[b, t + 1]:
                    nll -= logp[b, t, ids[b, t + 1]]
                    n += 1
    return math.exp(nll / n)


def sentence_embeddings(model, batches, skip: set[int]) -> list[np.ndarray]:
    """Per batch, the mean-pooled (real tokens), L2-normalised embeddings with ``skip`` removed."""
    out = []
    for enc in batches:
        h = hooked_forward(model, enc, skip).last_hidden_state.double().numpy()
        m = enc.mask.numpy()[..., None].astype(float)
        e = (h * m).sum(1) / m.sum(1)
        out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return out


def hand_embedding_divergence(model, batches, skip: set[int], intact=None) -> float:
    """Mean over items of 1 - cos between the intact and the new mean-pooled sentence embedding."""
    intact = intact or sentence_embeddings(model, batches, set())
    new = sentence_embeddings(model, batches, skip)
    return float(np.mean(np.concatenate([1 - (a * b).sum(1) for a, b in zip(intact, new)])))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_prefix_removal_equals_hooked_full_forward_causal_lm(name, request):
    model = request.getfixturevalue(name)
    batches = padded_batches(model.config.vocab_size)
    res = layer_importance(model, batches, method="prefix")
    assert res.method == "prefix" and res.objective == "perplexity"
    assert res.baseline == pytest.approx(hand_perplexity(model, batches, set()), rel=1e-5)
    for i in range(len(res.layers)):
        assert res.metric[i] == pytest.approx(hand_perplexity(model, batches, {i}), rel=1e-5)
    naive = layer_importance(model, batches, method="naive")
    assert naive.method == "naive"
    np.testing.assert_allclose(naive.metric, res.metric, rtol=1e-5)
    assert res.block_calls < naive.block_calls


def test_prefix_removal_equals_hooked_full_forward_bert(tiny_bert):
    batches = padded_batches(tiny_bert.config.vocab_size)
    res = layer_importance(tiny_bert, batches, method="prefix")
    assert res.method == "prefix" and res.objective == "embedding 1-cos"
    for i in range(len(res.layers)):
        assert res.metric[i] == pytest.approx(hand_embedding_divergence(tiny_bert, batches, {i}), abs=1e-5)
    assert res.baseline == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def minilm_importance():
    from layerscope.models import load_model

    loaded = load_model("minilm")
    return loaded, layer_importance(loaded, TEXTS, batch_size=4)


def test_minilm_removal_equals_hooked_full_forward(minilm_importance, minilm, minilm_tokenizer):
    loaded, res = minilm_importance
    assert res.method == "prefix" and len(res.layers) == 6
    batches = []
    for start in (0, 4):
        tok = minilm_tokenizer(TEXTS[start:start + 4], padding=True, return_tensors="pt", truncation=True,
                               max_length=128)
        batches.append(Encoded(args=(), kwargs=dict(tok), mask=tok["attention_mask"], size=len(tok["input_ids"])))
    intact = sentence_embeddings(minilm, batches, set())
    for i in range(6):
        assert res.metric[i] == pytest.approx(hand_embedding_divergence(minilm, batches, {i}, intact), abs=1e-5)
    # removing the first block of a sentence encoder changes the embedding more than a middle one
    assert max(res.metric) > 0.01 and min(res.metric) >= 0


def block_io(model, batches):
    """Per block, every batch's (input, output) hidden states and the masks, captured here."""
    blocks = blocks_of(model)
    per_batch = []
    for enc in batches:
        ins, outs = {}, {}
        handles = []
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(
                lambda m, a, k, i=i: ins.__setitem__(i, (a[0] if a else k["hidden_states"]).double().numpy()),
                with_kwargs=True))
            handles.append(block.register_forward_hook(
                lambda m, a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).double().numpy())))
        try:
            with torch.no_grad():
                model(**enc.kwargs)
        finally:
            for h in handles:
                h.remove()
        per_batch.append((ins, outs, enc.mask.numpy().astype(bool)))
    return per_batch


def test_block_influence_and_angular_distance_against_numpy(tiny_gpt2):
    batches = padded_batches(tiny_gpt2.config.vocab_size, lengths=((2, 7, 4), (5, 3, 6)))
    res = layer_importance(tiny_gpt2, batches)
    io = block_io(tiny_gpt2, batches)
    L = len(res.layers)
    for i in range(L):
        cos = []
        for ins, outs, mask in io:
            a, b = ins[i][mask], outs[i][mask]          # real tokens only
            cos.extend((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
        assert res.block_influence[i] == pytest.approx(1 - np.mean(cos), abs=1e-6)
    # angular distance at the last real token between h_l (block l's input; h_L = last output)
    last_states = []
    for ins, outs, mask in io:
        last = mask.sum(1) - 1
        rows = np.arange(len(last))
        last_states.append(np.stack([ins[l][rows, last] for l in range(L)] + [outs[L - 1][rows, last]]))
    h = np.concatenate(last_states, axis=1)                  # (L+1, N, D)
    for n in range(1, L + 1):
        for l in range(L - n + 1):
            a, b = h[l], h[l + n]
            cos = np.clip((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1), -1, 1)
            assert res.angular[n - 1][l] == pytest.approx(np.mean(np.arccos(cos) / np.pi), abs=1e-6)
        row = [v for v in res.angular[n - 1] if v is not None]
        assert res.best_start[n - 1] == int(np.argmin(row))


def test_padding_changes_nothing_but_real_tokens(tiny_llama):
    """Appending extra padding to a batch must not move any number."""
    a = padded_batches(tiny_llama.config.vocab_size, lengths=((5, 3, 4),))
    enc = a[0]
    ids = torch.cat([enc.kwargs["input_ids"], torch.zeros(3, 4, dtype=torch.long)], 1)
    mask = torch.cat([enc.mask, torch.zeros(3, 4, dtype=torch.long)], 1)
    b = [Encoded(args=(), kwargs={"input_ids": ids, "attention_mask": mask}, mask=mask, size=3)]
    ra, rb = layer_importance(tiny_llama, a), layer_importance(tiny_llama, b)
    np.testing.assert_allclose(ra.block_influence, rb.block_influence, atol=1e-6)
    np.testing.assert_allclose(ra.metric, rb.metric, rtol=1e-5)


@pytest.mark.parametrize("cls,view", [(BlockInfluence, "tokens"), (AngularDistance, "last")])
def test_reducers_merge_exactly(cls, view):
    g = torch.Generator().manual_seed(1)
    names = ["b0", "b1", "b2"]

    def batch(n, start):
        xs = [torch.randn(n, 8, generator=g) for _ in range(len(names) + 1)]
        acts = {nm: xs[i + 1] for i, nm in enumerate(names)}
        ins = {nm: xs[i] for i, nm in enumerate(names)}
        return acts, BatchInfo(start, n, inputs=ins)

    b1, b2 = batch(5, 0), batch(7, 5)
    whole = cls()
    whole.update({k: torch.cat([b1[0][k], b2[0][k]]) for k in names},
                 BatchInfo(0, 12, inputs={k: torch.cat([b1[1].inputs[k], b2[1].inputs[k]]) for k in names}))
    r1, r2 = cls(), cls()
    r1.update(*b1)
    r2.update(*b2)
    merged = r1.merge(r2)
    got, want = merged.result(), whole.result()
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in names], [want[k] for k in names], atol=1e-12)
    else:
        np.testing.assert_allclose(got, want, atol=1e-12)
    assert cls.view == view and cls.wants_inputs


def test_removing_a_set_is_measured_as_a_whole(tiny_gpt2):
    batches = padded_batches(tiny_gpt2.config.vocab_size)
    got = removal_effect(tiny_gpt2, batches, [0, 2])
    assert got["metric"] == pytest.approx(hand_perplexity(tiny_gpt2, batches, {0, 2}), rel=1e-5)
    curve = removal_curve(tiny_gpt2, batches, max_k=2)
    assert curve.removed["last"] == [[2], [1, 2]]
    assert curve.curves["last"][1] == pytest.approx(hand_perplexity(tiny_gpt2, batches, {1, 2}), rel=1e-5)
    assert set(curve.curves) == {"block-influence", "angular", "single", "last"}
    assert "best criterion" in curve.summary()


def test_model_is_left_as_it_was(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    tiny_llama.train()
    layer_importance(tiny_llama, padded_batches(tiny_llama.config.vocab_size))
    assert tiny_llama.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.modules())
    for k, v in tiny_llama.state_dict().items():
        assert torch.equal(v, before[k])


def test_result_is_data(tiny_gpt2, tmp_path):
    res = layer_importance(tiny_gpt2, padded_batches(tiny_gpt2.config.vocab_size))
    data = json.loads(res.to_json(tmp_path / "r.json"))
    assert data["metric"] == res.metric and data["kind"] == "ImportanceResult"
    worst = int(np.argmax(res.effect()))
    assert f"removing block {worst} hurts most" in res.summary()
    assert res.plot() is not None
    assert sorted(res.ranking()) == list(range(3))


def test_bad_input(tiny_gpt2):
    batches = padded_batches(tiny_gpt2.config.vocab_size)
    with pytest.raises(LayerscopeError, match="not one of the 3 blocks"):
        removal_effect(tiny_gpt2, batches, [7])
    with pytest.raises(LayerscopeError, match="max_k must be between 1 and 3"):
        removal_curve(tiny_gpt2, batches, max_k=4)
    with pytest.raises(LayerscopeError, match="unknown criterion"):
        removal_curve(tiny_gpt2, batches, max_k=1, criteria=["random"])
    with pytest.raises(LayerscopeError, match="unknown method"):
        layer_importance(tiny_gpt2, batches, method="fast")


def test_cli_importance_json_and_exit_codes(tmp_path, capsys):
    from layerscope.cli import main

    data = tmp_path / "s.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    png = tmp_path / "c.png"
    assert main(["importance", "minilm", str(data), "--limit", "4", "--curve", "--max-k", "2",
                 "--json", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "ImportanceResult" and len(out["metric"]) == 6 and out["n_items"] == 4
    assert out["curve"]["kind"] == "RemovalCurveResult" and out["curve"]["removed"]["last"] == [[5], [4, 5]]
    assert png.stat().st_size > 1000
    assert main(["importance", "minilm", str(data), "--curve", "--max-k", "9"]) == 2
    err = capsys.readouterr().err
    assert "error: max_k must be between 1 and 6" in err and "Traceback" not in err


class _Residual(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.f = torch.nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.f(x))


class _Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Residual(4) for _ in range(3))
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x, skip=()):
        for i, b in enumerate(self.blocks):
            if i not in skip:
                x = b(x)
        return self.head(x).squeeze(-1)


def test_regression_removal_is_mse_against_the_labels():
    from layerscope.data import Dataset
    from layerscope.models import LoadedModel

    torch.manual_seed(0)
    net = _Regressor().eval()
    x = torch.randn(40, 4)
    y = torch.randn(40)
    loaded = LoadedModel(net, ref="reg", family="module", modality="tensor", task="regression",
                         input_shape=(4,))
    res = layer_importance(loaded, Dataset("r", x, y, "tensor", "regression"), batch_size=16)
    assert res.objective == "mse"
    with torch.no_grad():
        assert res.baseline == pytest.approx(F.mse_loss(net(x), y).item(), rel=1e-5)
        for i in range(3):
            assert res.metric[i] == pytest.approx(F.mse_loss(net(x, skip=(i,)), y).item(), rel=1e-5)


def test_blocks_that_change_the_shape_are_left_out_and_the_rest_measured():
    from layerscope import zoo
    from layerscope.analyses.importance import choose_blocks
    from layerscope.data import load_dataset

    torch.manual_seed(0)
    net = zoo.build("mlp:depth=4,width=32").eval()      # block 0 maps 64 -> 32, blocks 1-3 keep 32
    digits = load_dataset("digits", limit=96)
    res = layer_importance(net, digits, batch_size=32, ablate=False)
    assert res.removable == [False, True, True, True] and res.can_remove() == [1, 2, 3]
    assert np.isnan(res.metric[0]) and np.isnan(res.block_influence[0])
    ablated = layer_importance(net, digits, batch_size=32)      # block 0 mean-ablated instead
    assert ablated.intervention == ["mean-ablate", "skip", "skip", "skip"]
    assert ablated.metric[1:] == res.metric[1:] and np.isnan(ablated.block_influence[0])
    assert "mean-ablated instead of skipped (blocks.0)" in ablated.summary()
    x, y = digits.items, digits.labels
    with torch.no_grad():
        h = [x]
        for b in net.blocks:
            h.append(b(h[-1]))
        for i in (1, 2, 3):                                  # skip block i by hand
            z = h[i]
            for j in range(i + 1, 4):
                z = net.blocks[j](z)
            acc = float((net.head(z).argmax(1) == y).double().mean())
            assert res.metric[i] == pytest.approx(acc, abs=1e-9)
            cos = F.cosine_similarity(h[i].double(), h[i + 1].double(), dim=-1)
            assert res.block_influence[i] == pytest.approx(1 - float(cos.mean()), abs=1e-9)
        z = h[1].mean(0, keepdim=True).expand_as(h[1])         # block 0's output: its data mean
        for j in range(1, 4):
            z = net.blocks[j](z)
        acc = float((net.head(z).argmax(1) == y).double().mean())
        assert ablated.metric[0] == pytest.approx(acc, abs=1e-9)
    assert res.angular[0][0] is None and res.best_start[0] in (1, 2, 3) and res.best_start[3] is None
    assert 0 not in choose_blocks(res, "block-influence", 3) and choose_blocks(res, "last", 2) == [2, 3]
    assert "cannot be removed (blocks.0)" in res.summary()
    with pytest.raises(LayerscopeError, match="maps .* only blocks that keep the shape"):
        removal_effect(net, digits, [0])
    with pytest.raises(LayerscopeError, match="no 4 consecutive blocks|between 1 and 3"):
        choose_blocks(res, "angular", 4)
    curve = removal_curve(net, digits, max_k=3, importance=res, batch_size=32)
    assert curve.removed["single"][-1] == [1, 2, 3]


@pytest.mark.parametrize("spec", ["cnn", "resnet"])
def test_cli_importance_on_cnn_and_resnet_with_labels(spec, capsys):
    """Removal on image networks: natural view (global average of feature maps), accuracy and
    loss from the labels, shape-changing blocks mean-ablated; --view last is a one-line error."""
    from layerscope.cli import main

    code = main(["importance", spec, "mnist", "--limit", "24", "--batch-size", "12", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert res["objective"] == "accuracy" and res["view"] == "mean" and res["n_items"] == 24
    assert all(0.0 <= m <= 1.0 for m in res["metric"]) and all(v is not None for v in res["loss"])
    assert set(res["intervention"]) <= {"skip", "mean-ablate"}
    assert ("skip" in res["intervention"]) == (spec == "resnet")    # ResNet's stride-1 block
    code = main(["importance", spec, "mnist", "--limit", "8", "--view", "last"])
    err = capsys.readouterr().err
    assert code == 2 and "error: view 'last' needs token sequences" in err and "Traceback" not in err
