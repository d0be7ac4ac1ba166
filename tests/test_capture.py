"""Capture: reading, editing and replacing layer outputs; hooks always removed."""

import pytest
import torch
from torch import nn

from layerscope.errors import LayerscopeError
from layerscope.layers import Layers, NotCaptured, replace_primary


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


def test_edit_callable_changes_what_follows_and_is_captured():
    net, x = _mlp(), torch.randn(5, 4)
    lay = Layers(net)
    with torch.no_grad(), lay.capture("1", edit=lambda out, name: out * 2) as cap:
        y = cap.call(net, x)
    h = net[3](net[2](net[1](net[0](x))))
    assert torch.allclose(y, net[4](2 * h), atol=1e-6)
    assert torch.allclose(cap["2"], 2 * h, atol=1e-6)     # the output as the model saw it
    assert _hooks(net) == 0


def test_edit_mapping_only_named_layers_and_none_leaves_output():
    net, x = _mlp(), torch.randn(5, 4)
    lay = Layers(net)
    seen = []
    with torch.no_grad(), lay.capture(edit={"0": lambda out, name: seen.append(name)}) as cap:
        y = cap.call(net, x)
    assert seen == ["0"] and torch.equal(y, net(x))
    with pytest.raises(LayerscopeError, match="does not hook"):
        lay.capture("0", edit={"4": lambda o, n: o})
    with pytest.raises(LayerscopeError, match="not callable"):
        lay.capture("0", edit={"0": 3})


class _TupleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, h, scale=1.0):
        return (self.lin(h) * scale, "cache")


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_TupleBlock(), _TupleBlock()])
        self.seen = []

    def forward(self, x):
        for block in self.layers:
            out = block(x, scale=0.5)
            self.seen.append(out[1])
            x = out[0]
        return x


def test_edit_keeps_tuple_structure_and_skip_by_input():
    torch.manual_seed(0)
    net, x = _TupleNet(), torch.randn(2, 3)
    lay = Layers(net, blocks="layers")
    with torch.no_grad(), lay.capture("0", inputs=True, kwargs=True) as cap:
        cap.call(net, x)
    assert cap.args["layers.0"][0] is x and cap.kwargs["layers.0"] == {"scale": 0.5}
    with torch.no_grad(), lay.capture("0", inputs=True,
                                      edit=lambda out, name: cap2.inputs[name]) as cap2:
        y = cap2.call(net, x)
    assert net.seen[-1] == "cache"
    assert torch.allclose(y, net.layers[1].lin(x) * 0.5, atol=1e-6)
    assert _hooks(net) == 0


def test_edit_keeps_model_output_fields():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=16)
    bert = BertModel(cfg).eval()
    ids = torch.randint(0, 30, (2, 5))
    lay = Layers(bert)
    with torch.no_grad(), lay.capture(lay.names()[-1], edit=lambda o, n: torch.zeros_like(o)) as cap:
        out = cap.call(bert, input_ids=ids)
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
    assert out.last_hidden_state.abs().sum() == 0
    assert torch.allclose(out.pooler_output, bert.pooler(out.last_hidden_state), atol=1e-6)
    mo = type(out)(last_hidden_state=torch.ones(1), pooler_output=torch.zeros(1))
    new = replace_primary(mo, torch.full((1,), 7.0))
    assert type(new) is type(mo) and new.last_hidden_state.item() == 7 and new.pooler_output.item() == 0


def test_capture_indexing_and_errors():
    net, x = _mlp(), torch.randn(3, 4)
    lay = Layers(net)
    with torch.no_grad(), lay.capture("0,1") as cap:
        with pytest.raises(NotCaptured, match="no output yet"):
            cap["0"]
        cap.call(net, x)
    assert torch.equal(cap["0"], cap.outputs["0"]) and torch.equal(cap[lay[1]], cap.outputs["2"])
    assert "0" in cap and "4" not in cap and cap.keys() == ["0", "2"]
    with pytest.raises(KeyError, match="not hooked"):
        cap["4"]
    with pytest.raises(LayerscopeError, match="returned int"):
        with torch.no_grad(), lay.capture("0", edit=lambda o, n: 3) as cap:
            cap.call(net, x)
    assert _hooks(net) == 0


def test_hooks_removed_when_forward_raises():
    net = _mlp()
    lay = Layers(net)

    def boom(out, name):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with lay.capture(edit=boom, inputs=True, kwargs=True) as cap:
            cap.call(net, torch.randn(2, 4))
    assert _hooks(net) == 0


def test_edit_refused_inside_multilayer_rnn():
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True)
    with pytest.raises(LayerscopeError, match="multi-layer RNN"):
        Layers(lstm).capture("0", edit=lambda o, n: o)


def test_no_module_outside_layers_registers_a_hook():
    """Every hook goes through Capture: no register_*hook call anywhere else in the package."""
    import re
    from pathlib import Path

    import layerscope

    root = Path(layerscope.__file__).parent
    pattern = re.compile(r"\.register_(forward|forward_pre|full_backward|full_backward_pre)_hook\(")
    found = [str(p.relative_to(root)) for p in root.rglob("*.py")
             if p.name != "layers.py" or p.parent != root
             if pattern.search(p.read_text())]
    assert found == []


def test_replace_primary_edits_the_tensor_primary_tensor_reads():
    from collections import namedtuple

    from layerscope.layers import primary_tensor

    Pair = namedtuple("Pair", "cache hidden")
    a, b, new = torch.zeros(2), torch.ones(3), torch.full((4,), 5.0)
    cases = [
        ("cache", [None, (a, b)]),                         # nested: the list's first tensor
        Pair(cache=None, hidden=a),                        # a namedtuple keeps its type
        {"past": None, "scores": a, "logits": b},          # a preferred key wins over order
        {"past": "x", "extra": [None, a]},                 # else the first field holding one
    ]
    for output in cases:
        old = primary_tensor(output)
        edited = replace_primary(output, new)
        assert type(edited) is type(output) and primary_tensor(edited) is new
        assert old is not new and primary_tensor(output) is old  # the original is untouched
    assert replace_primary(cases[0], new)[1][1][1] is b and replace_primary(cases[1], new).cache is None
    assert replace_primary(cases[2], new)["scores"] is a
    with pytest.raises(LayerscopeError, match="can be edited"):
        replace_primary((None, "x"), new)
