"""Ablation against hand-written hooks and layer removal, on random-config models and MiniLM."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerscope.analyses.causal.ablation import ablate
from layerscope.errors import LayerscopeError

IDS = torch.tensor([[1, 5, 7, 9, 2, 8], [3, 4, 6, 1, 1, 2], [7, 7, 2, 5, 9, 1], [2, 3, 4, 5, 6, 7]])


def perplexity(logits, ids):
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1))
    return math.exp(float(loss))


def hooked_ppl(lm, module, fn, pre=False):
    if pre:
        h = module.register_forward_pre_hook(lambda m, a: (fn(a[0]),))
    else:
        h = module.register_forward_hook(lambda m, a, out: (fn(out[0]),) + tuple(out[1:])
                                         if isinstance(out, tuple) else fn(out))
    try:
        with torch.no_grad():
            return perplexity(lm(IDS).logits, IDS)
    finally:
        h.remove()


def test_block_ablations_equal_hand_hooks_and_removal(small_lm):
    lm = small_lm()
    res = ablate(lm, IDS, batch_size=4)
    full = ablate(lm, IDS, batch_size=4, method="full")
    assert res.method == "prefix" and full.method == "full"
    with torch.no_grad():
        assert res.baseline == pytest.approx(perplexity(lm(IDS).logits, IDS), rel=1e-6)
    for i, block in enumerate(lm.model.layers):
        want_zero = hooked_ppl(lm, block, torch.zeros_like)
        # mean over every token of the data (no padding here)
        store = {}
        h = block.register_forward_hook(lambda m, a, out: store.__setitem__("x", out[0] if isinstance(out, tuple) else out))
        with torch.no_grad():
            lm(IDS)
        h.remove()
        mean = store["x"].reshape(-1, 16).double().mean(0).float()
        want_mean = hooked_ppl(lm, block, lambda x: mean.expand_as(x).clone())
        want_resample = hooked_ppl(lm, block, lambda x: torch.roll(x, -1, 0))
        for r in (res, full):
            assert r.values["zero"][i] == pytest.approx(want_zero, rel=1e-5)
            assert r.values["mean"][i] == pytest.approx(want_mean, rel=1e-5)
            assert r.values["resample"][i] == pytest.approx(want_resample, rel=1e-5)
    from layerscope.analyses.importance import layer_importance

    imp = layer_importance(lm, IDS, batch_size=4)
    np.testing.assert_allclose(res.values["remove"], imp.metric, rtol=1e-5)
    np.testing.assert_allclose(full.values["remove"], imp.metric, rtol=1e-5)


def test_head_and_sublayer_zero_ablation_equal_hand_hooks(small_lm):
    lm = small_lm()
    res = ablate(lm, IDS, parts="head,attention,mlp", how="zero", layers="1", batch_size=2)
    assert res.labels == ["1.head0", "1.head1", "1.head2", "1.head3", "1.attention", "1.feed-forward"]
    assert "remove" not in res.values
    block = lm.model.layers[1]
    for head in range(4):
        def zero(x, head=head):
            x = x.clone()
            x[..., head * 4:(head + 1) * 4] = 0
            return x
        assert res.values["zero"][head] == pytest.approx(hooked_ppl(lm, block.self_attn.o_proj, zero, pre=True), rel=1e-5)
    assert res.values["zero"][4] == pytest.approx(hooked_ppl(lm, block.self_attn, torch.zeros_like), rel=1e-5)
    assert res.values["zero"][5] == pytest.approx(hooked_ppl(lm, block.mlp, torch.zeros_like), rel=1e-5)


@pytest.mark.slow
def test_minilm_encoder_ablation_uses_the_embedding_objective():
    res = ablate("minilm", ["The cat sat on the mat.", "A terrible, awful film.", "Great fun!"],
                 parts="block,attention", how="zero,mean", layers="0,5", batch_size=3)
    assert res.objective == "embedding 1-cos" and res.baseline == pytest.approx(0.0, abs=1e-6)
    assert all(v > 0 for v in res.values["zero"])
    assert res.labels == ["0", "5", "0.attention", "5.attention"]


def test_bad_input(small_lm):
    lm = small_lm()
    with pytest.raises(LayerscopeError, match="unknown ablation 'shuffle'"):
        ablate(lm, IDS, how="shuffle")
    with pytest.raises(LayerscopeError, match="at least 2 items"):
        ablate(lm, IDS[:1], how="resample", batch_size=1)
    with pytest.raises(LayerscopeError, match="unknown layer part 'neurons'"):
        ablate(lm, IDS, parts="neurons")


def test_result_summary_table_and_plot(small_lm):
    import matplotlib.pyplot as plt

    res = ablate(small_lm(), IDS, how="zero", batch_size=4)
    assert res.summary().startswith("perplexity intact ")
    rows = res.table()
    assert rows[0]["site"] == "0" and set(rows[0]) == {"site", "part", "zero", "remove"}
    assert res.effect("zero") == [v - res.baseline for v in res.values["zero"]]
    plt.close(res.plot())
