"""The Layers view against transformers' own hidden states and hand-built reference networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from layerscope.errors import LayerscopeError
from layerscope.layers import Layers, count_layers, primary_tensor


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _hooks(model):
    """Every forward (pre-)hook on the model (transformers installs some of its own)."""
    return {(id(m), k) for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks)
            for k in d}


# --- transformers models -----------------------------------------------------------------------


def test_minilm_blocks_match_hidden_states(minilm, minilm_tokenizer):
    lay = Layers(minilm)
    assert len(lay) == 6 and lay.family == "bert"
    assert lay.names() == [f"encoder.layer.{i}" for i in range(6)]
    assert "encoder.layer" in lay.rule
    enc = minilm_tokenizer(["a layer at a time", "hooks are removed"], padding=True,
                           return_tensors="pt")
    with torch.no_grad():
        ref = minilm(**enc, output_hidden_states=True).hidden_states
        hooks = _hooks(minilm)
        with lay.capture(inputs=True) as cap:
            cap.call(minilm, **enc)
    for i in range(6):
        torch.testing.assert_close(cap.outputs[f"encoder.layer.{i}"], ref[i + 1])
        torch.testing.assert_close(cap.inputs[f"encoder.layer.{i}"], ref[i])
    assert _hooks(minilm) == hooks


def test_minilm_counts_by_hand(minilm):
    # embeddings: word, position, token type, LayerNorm; per block: q, k, v, attention dense,
    # attention LayerNorm, intermediate dense, output dense, output LayerNorm; pooler dense
    assert count_layers(minilm) == {"blocks": 6, "sublayers": 1 + 6 * 3 + 1, "modules": 4 + 6 * 8 + 1}
    sub = Layers(minilm, "sublayers")
    assert sub[0].role == "embedding" and sub[-1].name == "pooler"
    assert [l.role for l in sub[1:4]] == ["attention", "feed-forward", "feed-forward"]


def test_gpt2_layout_and_roles(tiny_gpt2):
    lay = Layers(tiny_gpt2)
    assert lay.family == "gpt2" and lay.names() == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    sub = Layers(tiny_gpt2, "sublayers")
    roles = {l.name: l.role for l in sub}
    assert roles["transformer.wte"] == "embedding" and roles["transformer.ln_f"] == "norm"
    assert roles["lm_head"] == "head"
    assert [roles[f"transformer.h.0.{p}"] for p in ("ln_1", "attn", "ln_2", "mlp")] == [
        "norm", "attention", "norm", "feed-forward"]
    ids = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hs = tiny_gpt2(ids, output_hidden_states=True).hidden_states
        with lay.capture() as cap:
            cap.call(tiny_gpt2, ids)
    # the last hidden state transformers reports has ln_f applied; the others are block outputs
    for i in range(2):
        torch.testing.assert_close(cap.outputs[f"transformer.h.{i}"], hs[i + 1])
    torch.testing.assert_close(tiny_gpt2.transformer.ln_f(cap.outputs["transformer.h.2"]), hs[3])


def test_llama_blocks_and_kwargs(tiny_llama):
    lay = Layers(tiny_llama)
    assert lay.family == "llama" and lay.names() == ["model.layers.0", "model.layers.1"]
    assert [n for n, _ in lay.found.before] == ["model.embed_tokens"]
    assert [n for n, _ in lay.found.after] == ["model.norm", "lm_head"]
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hs = tiny_llama(ids, output_hidden_states=True).hidden_states
        hooks = _hooks(tiny_llama)
        with lay.capture("0", kwargs=True, stop_early=True) as cap:
            out = cap.call(tiny_llama, ids)
    assert out is None  # stopped after block 0
    torch.testing.assert_close(cap.outputs["model.layers.0"], hs[1])
    assert "position_embeddings" in cap.kwargs["model.layers.0"]
    assert _hooks(tiny_llama) == hooks


def test_encoder_decoder_two_stacks(tiny_t5):
    lay = Layers(tiny_t5)
    assert lay.family == "encoder-decoder"
    assert lay.names() == ["encoder.block.0", "encoder.block.1", "decoder.block.0",
                           "decoder.block.1", "decoder.block.2"]


# --- reference networks -----------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + skip)


class TinyResNet(nn.Module):
    """A ResNet-like net: stem, stages layer1..layer3 of 2 residual blocks each, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.layer3 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def test_resnet_like_stages():
    net = TinyResNet().eval()
    lay = Layers(net)
    assert lay.family == "resnet"
    assert lay.names() == [f"layer{s}.{b}" for s in (1, 2, 3) for b in (0, 1)]
    assert [n for n, _ in lay.found.before] == ["conv1", "bn1"]
    assert [n for n, _ in lay.found.after] == ["fc"]
    sub = Layers(net, "sublayers")
    roles = {l.name: l.role for l in sub}
    assert roles["conv1"] == "stem" and roles["layer1.0.conv1"] == "conv"
    assert roles["layer1.0.bn1"] == "norm" and roles["layer1.0.relu"] == "activation"
    assert roles["fc"] == "head"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), lay.capture() as cap:
        cap.call(net, x)
        manual = net.layer1[0](net.relu(net.bn1(net.conv1(x))))
    torch.testing.assert_close(cap.outputs["layer1.0"], manual)
    assert tuple(cap.outputs["layer3.1"].shape) == (2, 32, 4, 4)


def _single_lstms(lstm: nn.LSTM) -> list[nn.LSTM]:
    singles = []
    for k in range(lstm.num_layers):
        dirs = 2 if lstm.bidirectional else 1
        size = lstm.input_size if k == 0 else lstm.hidden_size * dirs
        one = nn.LSTM(size, lstm.hidden_size, batch_first=lstm.batch_first,
                      bidirectional=lstm.bidirectional)
        with torch.no_grad():
            for name, p in one.named_parameters():
                p.copy_(getattr(lstm, name.replace("_l0", f"_l{k}")))
        singles.append(one)
    return singles


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_three_layers_against_separate_lstms(bidirectional):
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, num_layers=3, batch_first=True, bidirectional=bidirectional)
    lay = Layers(lstm)
    assert lay.names() == ["l0", "l1", "l2"] and [l.part for l in lay] == [0, 1, 2]
    assert count_layers(lstm)["blocks"] == 3
    x = torch.randn(4, 6, 5)
    with torch.no_grad():
        with lay.capture(inputs=True) as cap:
            full = cap.call(lstm, x)[0]
        h = x
        for k, single in enumerate(_single_lstms(lstm)):
            h_in, h = h, single(h)[0]
            torch.testing.assert_close(cap.outputs[f"l{k}"], h)
            torch.testing.assert_close(cap.inputs[f"l{k}"], h_in)
    torch.testing.assert_close(cap.outputs["l2"], full)
    assert _hooks(lstm) == set()


def test_lstm_inside_a_model_with_initial_state():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 6)
            self.rnn = nn.GRU(6, 8, num_layers=3)
            self.out = nn.Linear(8, 3)

        def forward(self, ids, h0):
            return self.out(self.rnn(self.embed(ids), h0)[0])

    torch.manual_seed(0)
    net = Tagger()
    lay = Layers(net)
    assert lay.names() == ["rnn.l0", "rnn.l1", "rnn.l2"]
    ids, h0 = torch.randint(0, 20, (5, 2)), torch.randn(3, 2, 8)
    with torch.no_grad(), lay.capture("rnn.l1") as cap:
        cap.call(net, ids, h0)
        h = net.embed(ids)
        for k in range(2):
            one = nn.GRU(6 if k == 0 else 8, 8)
            for name, p in one.named_parameters():
                p.copy_(getattr(net.rnn, name.replace("_l0", f"_l{k}")))
            h = one(h, h0[k:k + 1])[0]
    torch.testing.assert_close(cap.outputs["rnn.l1"], h)
    sub = Layers(net, "sublayers")
    assert [(l.name, l.role) for l in sub] == [("embed", "embedding"), ("rnn.l0", "recurrent"),
                                             ("rnn.l1", "recurrent"), ("rnn.l2", "recurrent"),
                                             ("out", "head")]


def test_sequential_mlp():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    lay = Layers(mlp)
    assert lay.family == "sequential" and lay.names() == ["0", "3", "5"]
    assert [l.role for l in lay] == ["linear", "linear", "head"]
    assert [l.name for l in Layers(mlp, "sublayers")] == ["0", "1", "3", "4", "5"]
    assert count_layers(mlp) == {"blocks": 3, "sublayers": 5, "modules": 3}
    assert "parameter-free children after it" in Layers(mlp).rule
    x = torch.randn(3, 4)
    mlp.eval()
    with torch.no_grad(), Layers(mlp).capture(inputs=True) as cap:
        y = cap.call(mlp, x)
        h0 = torch.relu(x @ mlp[0].weight.T + mlp[0].bias)
        h1 = torch.relu(h0 @ mlp[3].weight.T + mlp[3].bias)
    # a block of an MLP ends after its activation: outputs are post-activation hidden states
    torch.testing.assert_close(cap.outputs["0"], h0)
    torch.testing.assert_close(cap.inputs["3"], h0)
    torch.testing.assert_close(cap.outputs["3"], h1)
    torch.testing.assert_close(cap.outputs["5"], y)
    assert Layers(mlp)[0].module is mlp[0] and Layers(mlp)[0].observed is mlp[2]


def test_sequential_with_a_shared_activation_and_inside_a_wrapper():
    act = nn.Tanh()
    seq = nn.Sequential(nn.Linear(2, 3), act, nn.Linear(3, 3), act, nn.Linear(3, 1))
    lay = Layers(seq)
    # one Tanh object used twice would fire its hook twice: those blocks end at their Linear
    assert lay.names() == ["0", "2", "4"] and [l.output_module for l in lay] == [None] * 3

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1))

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    w = Wrapper()
    lay = Layers(w)
    assert lay.names() == ["net.0", "net.2"] and "in net" in lay.rule
    assert [l.name for l in Layers(w, "sublayers")] == ["net.0", "net.1", "net.2"]
    x = torch.randn(4, 2)
    with torch.no_grad(), lay.capture("0", stop_early=True) as cap:
        assert cap.call(w, x) is None
    torch.testing.assert_close(cap.outputs["net.0"], torch.tanh(w.net[0](x)))


# --- unknown layouts, overrides, errors ---------------------------------------------------------


class Odd(nn.Module):
    """Two nested custom parts and no stack: nothing says which are the blocks."""

    def __init__(self):
        super().__init__()
        self.left = nn.Module()
        self.left.proj = nn.Linear(3, 3)
        self.right = nn.Module()
        self.right.proj = nn.Linear(3, 3)

    def forward(self, x):
        return self.right.proj(self.left.proj(x))


def test_unknown_layout_is_a_clear_error_and_blocks_override_works():
    with pytest.raises(LayerscopeError, match=r"Odd.*blocks=\"encoder.layer\".*--blocks"):
        Layers(Odd())
    lay = Layers(Odd(), blocks="left,right")
    assert lay.names() == ["left", "right"] and lay.family == "explicit"
    with pytest.raises(LayerscopeError, match="no module at that path"):
        Layers(Odd(), blocks="middle")


def test_flat_custom_module_counts_its_parameterised_children():
    class ThreeLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    lay = Layers(ThreeLayer())
    assert lay.names() == ["fc1", "fc2", "fc3"] and "3 parameterised children" in lay.rule


def test_blocks_override_with_a_list_path(minilm):
    lay = Layers(minilm, blocks="encoder.layer")
    assert len(lay) == 6 and "blocks=" in lay.rule


def test_select_and_indexing(minilm):
    lay = Layers(minilm)
    assert lay[-1].name == "encoder.layer.5" and lay["encoder.layer.2"].index == 2
    assert [l.index for l in lay.select("0,3,5")] == [0, 3, 5]
    assert [l.index for l in lay.select("2-4")] == [2, 3, 4]
    assert [l.index for l in lay.select(["-1", "encoder.layer.0"])] == [0, 5]
    assert lay[1:3].names() == ["encoder.layer.1", "encoder.layer.2"]
    with pytest.raises(LayerscopeError, match=r"layer 9 is out of range: BertModel has 6 blocks \(0-5\)"):
        lay[9]
    with pytest.raises(LayerscopeError, match="no layer 'fc'"):
        lay.select("fc")
    with pytest.raises(LayerscopeError, match="unknown granularity 'layers'"):
        Layers(minilm, "layers")


def test_hooks_removed_when_forward_raises(tiny_bert):
    lay = Layers(tiny_bert, "sublayers")
    hooks = _hooks(tiny_bert)
    with pytest.raises(IndexError):
        with lay.capture(inputs=True, kwargs=True) as cap:
            cap.call(tiny_bert, torch.tensor([[1000, 2000]]))  # ids beyond the vocabulary
        assert len(_hooks(tiny_bert)) > len(hooks)
    assert _hooks(tiny_bert) == hooks


@pytest.mark.parametrize("training", [False, True])
def test_model_not_moved_mutated_or_switched(tiny_bert, training):
    tiny_bert.train(training)
    tiny_bert.embeddings.word_embeddings.weight.requires_grad_(False)
    before = _state(tiny_bert)
    flags = [m.training for m in tiny_bert.modules()]
    hooks = _hooks(tiny_bert)
    for granularity in ("blocks", "sublayers", "modules"):
        lay = Layers(tiny_bert, granularity)
        with torch.no_grad(), lay.capture(inputs=True, stop_early=True) as cap:
            cap.call(tiny_bert, torch.tensor([[1, 2, 3]]))
    assert [m.training for m in tiny_bert.modules()] == flags
    assert not tiny_bert.embeddings.word_embeddings.weight.requires_grad
    assert all(p.device.type == "cpu" for p in tiny_bert.parameters())
    after = tiny_bert.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _hooks(tiny_bert) == hooks


def test_stop_early_skips_the_rest():
    calls = []
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    net[2].register_forward_hook(lambda *a: calls.append("last"))
    with Layers(net).capture("0", stop_early=True) as cap:
        assert cap.call(net, torch.ones(1, 2)) is None
        assert cap.call(net, torch.ones(1, 2)) is None
        net(torch.ones(1, 2))  # a bare forward inside the block is stopped too, and silenced
    assert calls == [] and set(cap.outputs) == {"0"}
    assert len(net[2]._forward_hooks) == 1  # only the test's own hook is left


def test_primary_tensor_of_model_outputs(tiny_bert):
    out = tiny_bert(torch.tensor([[1, 2]]))
    assert primary_tensor(out) is out.last_hidden_state
    with pytest.raises(LayerscopeError, match="no tensor"):
        primary_tensor((None, "x"))


def test_efficientnet_like_blocks():
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0").eval()  # the architecture, random weights
    lay = Layers(net)
    assert lay.family == "efficientnet" and len(lay) == 16
    assert [n for n, _ in lay.found.before] == ["_conv_stem", "_bn0"]
    assert [n for n, _ in lay.found.after] == ["_conv_head", "_bn1", "_fc"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), lay.capture(inputs=True) as cap:
        logits = cap.call(net, x)
        # the head applied by hand to the last block's output gives the model's logits
        h = net._swish(net._bn1(net._conv_head(cap.outputs["_blocks.15"])))
        manual = net._fc(h.mean((2, 3)))
    torch.testing.assert_close(manual, logits)
    for k in range(15):  # each block reads the previous block's output
        assert cap.inputs[f"_blocks.{k + 1}"] is cap.outputs[f"_blocks.{k}"]
