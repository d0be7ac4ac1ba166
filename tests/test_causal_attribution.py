"""Captum layer attributions chosen by the Layers view equal Captum called directly."""

import pytest
import torch
from captum.attr import (LayerConductance, LayerGradCam, LayerGradientXActivation,
                         LayerIntegratedGradients)

from layerscope.analyses.causal.attribution import attribute
from layerscope.errors import LayerscopeError

IDS = torch.tensor([[1, 5, 7, 9, 2]])


def direct(lm, cls, block, **kw):
    def f(ids):
        if ids.is_floating_point():
            return lm(inputs_embeds=ids, use_cache=False).logits[:, -1, 3]
        return lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -1, 3]
    x = IDS
    if cls is LayerConductance:
        emb = lm.get_input_embeddings()
        x, kw = emb(IDS).detach(), {**kw, "baselines": emb(kw["baselines"]).detach()}
    attr = cls(f, block).attribute(x, **kw)
    attr = attr[0] if isinstance(attr, tuple) else attr
    return attr[0].sum(-1)


@pytest.mark.parametrize("build", ["llama", "gpt2"])
@pytest.mark.parametrize("method, cls, kw", [
    ("integrated-gradients", LayerIntegratedGradients, {"baselines": torch.zeros_like(IDS), "n_steps": 16}),
    ("conductance", LayerConductance, {"baselines": torch.zeros_like(IDS), "n_steps": 16}),
    ("activation-x-gradient", LayerGradientXActivation, {}),
])
def test_equals_captum_called_directly(small_lm, build, method, cls, kw):
    lm = small_lm(build)
    before = [p.clone() for p in lm.parameters()]
    res = attribute(lm, IDS, method=method, target=3, n_steps=16)
    blocks = lm.model.layers if hasattr(lm, "model") else lm.transformer.h
    for i, block in enumerate(blocks):
        want = direct(lm, cls, block, **kw)
        assert torch.allclose(torch.tensor(res.per_token[i]), want.float(), atol=1e-5)
    assert res.baseline.startswith("every token replaced by token id 0")
    assert all(p.grad is None for p in lm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, lm.parameters()))
    assert sum(len(m._forward_hooks) for m in lm.modules()) == 0


def test_integrated_gradients_completeness(small_lm):
    res = attribute(small_lm(), IDS, target=3, n_steps=128)
    for total, delta in zip(res.totals, res.delta):
        assert abs(total - res.output_diff) < 1e-2 * max(1.0, abs(res.output_diff))
        assert abs(total - res.output_diff - delta) < 1e-5


def test_token_ids_of_the_zoo_gpt_equal_captum():
    """A causal LM without a tokenizer (token-id tensors): the last position's logit is explained."""
    import layerscope
    from layerscope.layers import Layers

    loaded = layerscope.load_model("gpt")
    torch.manual_seed(0)
    x = torch.randint(0, 100, (1, 64))  # the zoo GPT takes 64 tokens
    res = attribute(loaded, x, target=7, n_steps=16)
    assert res.tokens == [str(int(t)) for t in x[0]] and len(res.per_token[0]) == 64
    assert res.baseline == "every token replaced by token id 0"
    for i, layer in enumerate(Layers(loaded)):
        algo = LayerIntegratedGradients(lambda t: loaded.module(t)[:, -1, 7], layer.observed)
        want = algo.attribute(x, baselines=torch.zeros_like(x), n_steps=16)
        want = (want[0] if isinstance(want, tuple) else want)[0].sum(-1)
        assert torch.allclose(torch.tensor(res.per_token[i]), want.float(), atol=1e-5)
    with pytest.raises(LayerscopeError, match="token 500 is out of range"):
        attribute(loaded, x, target=500)
    with pytest.raises(LayerscopeError, match="conductance interpolates the inputs"):
        attribute(loaded, x, method="conductance")


def test_text_given_to_an_image_model_is_refused():
    import layerscope

    with pytest.raises(LayerscopeError, match="takes image inputs, not text"):
        attribute(layerscope.load_model("cnn"), ["a sentence"])


def test_gradcam_on_the_zoo_cnn_equals_captum():
    import layerscope

    loaded = layerscope.load_model("cnn")
    x = loaded.module.example_input(batch_size=1)
    res = attribute(loaded, x, method="gradcam", target=2)
    assert len(res.maps) == len(res.layers) and len(res.maps[0]) == 28 and len(res.maps[0][0]) == 28
    block = loaded.module.get_submodule(res.layers[0])
    from layerscope.layers import Layers

    mod = Layers(loaded)[0].observed
    want = LayerGradCam(lambda t: loaded.module(t)[:, 2], mod).attribute(x, relu_attributions=True)
    assert res.totals[0] == pytest.approx(float(want.detach().sum()), rel=1e-5, abs=1e-7)
    assert block is not None


def test_bad_input(small_lm):
    with pytest.raises(LayerscopeError, match="gives no gradients"):
        lm = small_lm()

        class NoGrad(torch.nn.Module):  # a wrapper whose forward runs without autograd
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.config = inner.config

            def forward(self, **kw):
                with torch.no_grad():
                    return self.inner(**kw)

        wrapped = NoGrad(lm)
        from layerscope.models import load_model

        loaded = load_model(lm)
        loaded.module = wrapped
        loaded.task = "causal-lm"
        attribute(loaded, IDS, target=3, blocks="inner.model.layers")
    with pytest.raises(LayerscopeError, match="unknown attribution method"):
        attribute(small_lm(), IDS, method="saliency")
    with pytest.raises(LayerscopeError, match="gradcam is for convolutional blocks"):
        attribute(small_lm(), IDS, method="gradcam")


def test_text_result_plot_and_summary(small_lm):
    import matplotlib.pyplot as plt

    res = attribute(small_lm(), IDS, target=3, n_steps=8)
    assert "completeness" in res.summary()
    plt.close(res.plot())
