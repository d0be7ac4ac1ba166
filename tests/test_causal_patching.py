"""Interventions and activation patching against hand-written hook loops on random-config models."""

import numpy as np
import pytest
import torch
from torch import nn

from layerscope.analyses.causal.interventions import (Intervened, Intervention, Site,
                                                      mean_activation, run_intervened,
                                                      site_activations)
from layerscope.analyses.causal.patching import PromptPair, patch, read_pairs
from layerscope.errors import LayerscopeError

CLEAN = torch.tensor([[1, 5, 7, 9, 2, 8]])
CORRUPT = torch.tensor([[1, 6, 7, 9, 3, 8]])


def blocks_of(lm):
    return lm.model.layers if hasattr(lm, "model") else lm.transformer.h


def o_proj_of(block):
    return block.self_attn.o_proj if hasattr(block, "self_attn") else block.attn.c_proj


def hooks_left(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.modules())


@pytest.fixture(params=["llama", "gpt2"])
def lm(small_lm, request):
    return small_lm() if request.param == "llama" else small_lm("gpt2")


def test_patching_a_layer_with_its_own_activation_is_bit_identical(lm):
    own = site_activations(lm, [Site.of(lm, i) for i in range(3)], CLEAN)
    plain = lm(CLEAN).logits
    for i in range(3):
        out = run_intervened(lm, [Intervention(Site.of(lm, i), "replace", own[str(i)])], CLEAN).logits
        assert torch.equal(out, plain)


def test_clean_activations_everywhere_turn_corrupt_into_clean(lm):
    sites = [Site.of(lm, i) for i in range(3)]
    clean = site_activations(lm, sites, CLEAN)
    ivs = [Intervention(s, "replace", clean[s.label]) for s in sites]
    out = run_intervened(lm, ivs, CORRUPT).logits
    assert torch.allclose(out, lm(CLEAN).logits, atol=1e-6)
    # the last block alone at every position gives exactly the clean output too
    last = run_intervened(lm, [Intervention(sites[-1], "replace", clean["2"])], CORRUPT).logits
    assert torch.equal(last, lm(CLEAN).logits)


def test_head_ablation_equals_zeroing_the_heads_slice_by_hand(lm):
    block = blocks_of(lm)[1]
    o = o_proj_of(block)
    head_dim = 16 // 4

    def zero_head(module, args):
        x = args[0].clone()
        x[:, 2:4, 3 * head_dim:4 * head_dim] = 0
        return (x,)

    handle = o.register_forward_pre_hook(zero_head)
    try:
        want = lm(CLEAN).logits
    finally:
        handle.remove()
    got = run_intervened(lm, [Intervention(Site.of(lm, 1, "head", head=3), "zero", positions=[2, 3])],
                         CLEAN).logits
    assert torch.equal(got, want)
    assert hooks_left(lm) == 0


def _hand_block_patching(lm, base_ids, source_ids, target, foil):
    """TransformerLens-style: one hooked full forward per (layer, position)."""
    blocks = blocks_of(lm)
    store = {}
    handles = [b.register_forward_hook(lambda m, a, out, i=i: store.__setitem__(i, out[0] if isinstance(out, tuple) else out))
               for i, b in enumerate(blocks)]
    with torch.no_grad():
        lm(source_ids)
    for h in handles:
        h.remove()
    out = np.zeros((len(blocks), base_ids.shape[1]))
    for i, block in enumerate(blocks):
        for p in range(base_ids.shape[1]):
            def hook(m, a, output, i=i, p=p):
                hs = output[0] if isinstance(output, tuple) else output
                hs = hs.clone()
                hs[:, p] = store[i][:, p]
                return (hs,) + tuple(output[1:]) if isinstance(output, tuple) else hs
            h = block.register_forward_hook(hook)
            try:
                with torch.no_grad():
                    logits = lm(base_ids).logits[0, -1]
            finally:
                h.remove()
            out[i, p] = float(logits[target] - logits[foil])
    return out


def _hand_head_patching(lm, base_ids, source_ids, target, foil):
    blocks = blocks_of(lm)
    store = {}
    handles = [o_proj_of(b).register_forward_pre_hook(lambda m, a, i=i: store.__setitem__(i, a[0]))
               for i, b in enumerate(blocks)]
    with torch.no_grad():
        lm(source_ids)
    for h in handles:
        h.remove()
    out = np.zeros((len(blocks) * 4, 1))
    for i, block in enumerate(blocks):
        for head in range(4):
            sl = slice(head * 4, head * 4 + 4)

            def hook(m, a, i=i, sl=sl):
                x = a[0].clone()
                x[..., sl] = store[i][..., sl]
                return (x,)
            h = o_proj_of(block).register_forward_pre_hook(hook)
            try:
                with torch.no_grad():
                    logits = lm(base_ids).logits[0, -1]
            finally:
                h.remove()
            out[i * 4 + head, 0] = float(logits[target] - logits[foil])
    return out


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_block_patching_agrees_with_a_hand_written_hook_loop(lm, direction):
    base, source = (CORRUPT, CLEAN) if direction == "denoise" else (CLEAN, CORRUPT)
    want = _hand_block_patching(lm, base, source, 3, 4)
    for method in ("prefix", "full", "loop"):
        res = patch(lm, CLEAN, CORRUPT, target=3, foil=4, direction=direction, method=method, batch_size=4)
        assert res.method == method
        np.testing.assert_allclose(res.patched, want, atol=1e-5)
    with torch.no_grad():
        c, x = lm(CLEAN).logits[0, -1], lm(CORRUPT).logits[0, -1]
    mc, mx = float(c[3] - c[4]), float(x[3] - x[4])
    np.testing.assert_allclose(res.restored, (want - mx) / (mc - mx), atol=1e-4)
    # the last block at the last position carries the whole answer in a causal LM
    assert res.restored[-1][-1] == pytest.approx(1.0 if direction == "denoise" else 0.0, abs=1e-4)
    assert hooks_left(lm) == 0


def test_head_patching_agrees_with_a_hand_written_hook_loop(lm):
    want = _hand_head_patching(lm, CORRUPT, CLEAN, 3, 4)
    res = patch(lm, CLEAN, CORRUPT, target=3, foil=4, part="head")
    assert res.labels[:5] == ["0.head0", "0.head1", "0.head2", "0.head3", "1.head0"]
    assert res.tokens == ["all"]
    np.testing.assert_allclose(res.patched, want, atol=1e-5)


def test_sublayer_patching_prefix_equals_full_forwards(lm):
    for part in ("attention", "feed-forward"):
        a = patch(lm, CLEAN, CORRUPT, target=3, foil=4, part=part, method="prefix")
        b = patch(lm, CLEAN, CORRUPT, target=3, foil=4, part=part, method="loop")
        np.testing.assert_allclose(a.patched, b.patched, atol=1e-5)
        assert a.labels[0] == f"0.{part}"


def test_prefix_reuse_halves_block_calls(small_lm):
    lm = small_lm()
    a = patch(lm, CLEAN, CORRUPT, target=3, foil=4, method="prefix")
    b = patch(lm, CLEAN, CORRUPT, target=3, foil=4, method="loop")
    L, P = 3, CLEAN.shape[1]
    assert b.block_calls == 2 * L + L * P * L
    assert a.block_calls == 2 * L + 2 * L + P * L * (L - 1) // 2


def test_probability_metric_and_pairs_average(small_lm):
    lm = small_lm()
    one = patch(lm, CLEAN, CORRUPT, target=3, metric="prob")
    with torch.no_grad():
        p = torch.softmax(lm(CLEAN).logits[0, -1].double(), -1)[3]
    assert one.metric_clean == pytest.approx(float(p))
    two = patch(lm, pairs=[PromptPair(CLEAN, CORRUPT, 3, 4), PromptPair(CORRUPT, CLEAN, 4, 3)])
    a = patch(lm, CLEAN, CORRUPT, target=3, foil=4)
    b = patch(lm, CORRUPT, CLEAN, target=4, foil=3)
    np.testing.assert_allclose(two.restored, (np.array(a.restored) + np.array(b.restored)) / 2, atol=1e-9)


def test_hooks_come_off_when_the_forward_raises_and_weights_stay(small_lm):
    lm = small_lm()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    site = Site.of(lm, 1)
    bad = Intervention(site, "replace", torch.zeros(1, 99, 16))
    with pytest.raises(Exception):
        run_intervened(lm, [bad], CLEAN)
    assert hooks_left(lm) == 0
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())
    assert not lm.training


def test_scale_add_zero_and_mean_on_a_small_mlp():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    site = Site.of(net, 0)
    h = torch.relu(net[0](x))
    with torch.no_grad():
        assert torch.allclose(run_intervened(net, [Intervention(site, "scale", 2.0)], x), net[2](2 * h))
        v = torch.arange(4.0)
        assert torch.allclose(run_intervened(net, [Intervention(site, "add", v)], x), net[2](h + v))
        assert torch.allclose(run_intervened(net, [Intervention(site, "zero", rows=[1])], x)[1], net[2].bias)
    mean = mean_activation(net, [site], x)["0"]
    assert torch.allclose(mean, h.mean(0), atol=1e-6)


def test_mean_activation_skips_padding(small_lm):
    lm = small_lm()
    from layerscope.models import Encoded

    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    enc = Encoded(args=(), kwargs={"input_ids": ids, "attention_mask": mask}, mask=mask, size=2)
    site = Site.of(lm, 0)
    mean = mean_activation(lm, [site], enc)["0"]
    acts = site_activations(lm, [site], {"input_ids": ids, "attention_mask": mask})["0"]
    assert torch.allclose(mean, acts[mask.bool()].mean(0), atol=1e-5)


def test_bad_input_one_line_errors(small_lm, tmp_path):
    lm = small_lm()
    with pytest.raises(LayerscopeError, match="clean prompt is 6 tokens and the corrupted prompt 5"):
        patch(lm, CLEAN, CORRUPT[:, :5], target=3, foil=4)
    with pytest.raises(LayerscopeError, match="head 4 is out of range: block 1 has 4 heads"):
        Site.of(lm, 1, "head", head=4)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(LayerscopeError, match="has no attention, so no heads"):
        Site.of(net, 0, "head", head=0)
    with pytest.raises(LayerscopeError, match="not a causal language model"):
        patch(net, CLEAN, CORRUPT, target=3)
    with pytest.raises(LayerscopeError, match="layer 7 is out of range"):
        Site.of(lm, 7)
    f = tmp_path / "pairs.tsv"
    f.write_text("clean\tcorrupt\ttarget\nA b\tC d\n")
    with pytest.raises(LayerscopeError, match="line 2 has 2 tab-separated fields"):
        read_pairs(f)
    f.write_text("# comment\nThe Eiffel Tower is in\tThe Colosseum is in\t Paris\t Rome\n")
    assert read_pairs(f)[0].target == " Paris" and read_pairs(f)[0].foil == " Rome"
