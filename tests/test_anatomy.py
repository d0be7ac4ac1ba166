"""Anatomy (shapes, parameters, FLOPs) and the summary/layers commands, against hand counts,
torch's own FlopCounterMode on the whole model, and golden files for the printed tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from layerscope.anatomy import anatomy, unique_params
from layerscope.cli import main
from layerscope.errors import LayerscopeError

GOLDEN = Path(__file__).parent / "golden"
NETS = "tests/golden/nets.py"


def plain_flops(model, *args, **kwargs) -> int:
    """torch's FlopCounterMode on the whole model, no attribution, no extra formulas."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops()


def check_sums(a) -> None:
    assert sum(a.params) + a.rest_params == a.total_params
    assert sum(a.flops) + a.rest_flops == a.total_flops


# --- hand counts --------------------------------------------------------------------------------


def test_mlp_hand_count():
    sizes = [(6, 10), (10, 10), (10, 3)]
    mlp = nn.Sequential(nn.Linear(*sizes[0]), nn.ReLU(), nn.Linear(*sizes[1]), nn.Tanh(),
                        nn.Linear(*sizes[2]))
    x = torch.randn(7, 6)
    a = anatomy(mlp, example=x)
    assert a.layers == ["0", "2", "4"] and a.depth == 3 and a.width == 10
    assert a.params == [i * o + o for i, o in sizes]
    assert a.flops == [2 * 7 * i * o for i, o in sizes]
    assert a.input_shapes == [[7, 6], [7, 10], [7, 10]]
    assert a.output_shapes == [[7, 10], [7, 10], [7, 3]]
    assert a.total_flops == plain_flops(mlp, x) and a.total_params == unique_params(mlp)
    assert a.rest_params == 0 and a.rest_flops == 0
    assert a.counts == {"blocks": 3, "sublayers": 5, "modules": 3}
    assert f"{a.total_params:,} parameters" in a.summary()


class Functional(nn.Module):
    """Functional ops both inside a listed layer (the blocks' matmuls) and at the top level."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Mix(5), Mix(5)])
        self.w_out = nn.Parameter(torch.randn(5, 2))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x @ self.w_out


class Mix(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, d))

    def forward(self, x):
        return torch.relu(x @ self.w) + x


def test_functional_ops_are_counted_and_attributed():
    net = Functional()
    x = torch.randn(3, 4, 5)
    a = anatomy(net, example=x)
    assert a.layers == ["blocks.0", "blocks.1"]
    assert a.flops == [2 * 12 * 5 * 5] * 2  # x @ w inside each block, no leaf module involved
    assert a.rest_flops == 2 * 12 * 5 * 2 and a.rest_params == 10  # the top-level x @ w_out
    assert a.total_flops == plain_flops(net, x)
    check_sums(a)


def test_nested_modules_count_their_own_flops_only():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4, 4))
            self.inner = nn.Linear(4, 4)

        def forward(self, x):
            return self.inner(x) @ self.scale

    net = nn.Sequential(Outer(), nn.Linear(4, 1))
    a = anatomy(net, granularity="modules", example=torch.randn(2, 4))
    rows = dict(zip(a.layers, zip(a.params, a.flops)))
    assert rows == {"0": (16, 2 * 2 * 16), "0.inner": (20, 2 * 2 * 16), "1": (5, 2 * 2 * 4)}
    check_sums(a)


def test_lstm_three_layers_by_hand():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, num_layers=3, batch_first=True)
    x = torch.randn(2, 4, 5)
    a = anatomy(lstm, example=x)
    assert a.layers == ["l0", "l1", "l2"] and a.depth == 3 and a.counts["blocks"] == 3
    ins = [5, 7, 7]
    assert a.params == [4 * 7 * (i + 7) + 2 * 4 * 7 for i in ins]
    assert a.flops == [2 * 2 * 4 * 4 * 7 * (i + 7) for i in ins]  # the two matmuls per step
    assert a.output_shapes == [[2, 4, 7]] * 3
    check_sums(a)
    assert a.rest_flops == 0 and a.total_params == unique_params(lstm)


def test_gru_split_layers_sum_to_torch_total():
    torch.manual_seed(0)
    gru = nn.GRU(3, 6, num_layers=2)
    x = torch.randn(5, 2, 3)
    a = anatomy(gru, example=x)
    assert a.total_flops == plain_flops(gru, x) and a.rest_flops == 0
    assert a.flops == [2 * 10 * 3 * 6 * (i + 6) for i in (3, 6)]


# --- real architectures ---------------------------------------------------------------------------


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Basic(8, 8, 1), Basic(8, 8, 1))
        self.layer2 = nn.Sequential(Basic(8, 16, 2), Basic(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def conv_flops(cin, cout, k, hw_out, batch):
    return 2 * batch * cout * hw_out * hw_out * cin * k * k


def test_resnet_like_by_hand_and_untouched_in_training_mode():
    torch.manual_seed(0)
    net = SmallResNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    a = anatomy(net, example=x)
    assert a.layers == ["stem", "bn", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "fc"]
    assert a.index == [None, None, 0, 1, 2, 3, None] and a.depth == 4 and a.width == 16
    rows = dict(zip(a.layers, a.flops))
    assert rows["stem"] == conv_flops(3, 8, 3, 16, 2)
    assert rows["layer1.0"] == 2 * conv_flops(8, 8, 3, 16, 2)
    assert rows["layer2.0"] == (conv_flops(8, 16, 3, 8, 2) + conv_flops(16, 16, 3, 8, 2)
                                + conv_flops(8, 16, 1, 8, 2))
    assert rows["fc"] == 2 * 2 * 16 * 10
    assert a.output_shapes[a.layers.index("layer2.1")] == [2, 16, 8, 8]
    check_sums(a)
    assert a.total_params == unique_params(net) and a.rest_params == 0
    # BatchNorm statistics are put back after the training-mode forward; nothing else changes
    assert net.training and all(m.training for m in net.modules())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(x)
    assert a.total_flops == counter.get_total_flops()


def test_minilm_total_params_and_block_flops(minilm, minilm_tokenizer):
    enc = minilm_tokenizer(["how many layers does this model have"], return_tensors="pt")
    a = anatomy(minilm, example=dict(enc))
    assert a.counts["blocks"] == 6 and a.depth == 6 and a.width == 384
    assert a.total_params == 22_713_216 == unique_params(minilm)
    assert a.layers[0] == "embeddings" and a.layers[-1] == "pooler"
    check_sums(a)
    assert a.rest_params == 0
    t, d, ff, heads = enc["input_ids"].shape[1], 384, 1536, 12
    # q, k, v, output projection; up and down projection; scores and weighted values per head
    block = 2 * t * (4 * d * d + 2 * d * ff) + heads * 2 * (2 * t * t * (d // heads))
    assert a.flops[1:7] == [block] * 6
    # torch counts the same matmuls except the CPU attention kernel, which it has no formula for
    assert a.total_flops == plain_flops(minilm, **enc) + 6 * 4 * t * t * d


def test_gpt2_tied_embeddings_counted_once(tiny_gpt2):
    ids = torch.randint(0, 101, (2, 5), generator=torch.Generator().manual_seed(0))
    a = anatomy(tiny_gpt2, example=ids)
    naive = sum(p.numel() for _, p in tiny_gpt2.named_parameters(remove_duplicate=False))
    unique = sum(p.numel() for p in {id(p): p for p in tiny_gpt2.parameters()}.values())
    assert a.total_params == unique < naive  # the tie is real: counting it twice is larger
    assert a.layers == ["transformer.wte", "transformer.wpe", "transformer.h.0",
                        "transformer.h.1", "transformer.h.2", "transformer.ln_f", "lm_head"]
    head = a.layers.index("lm_head")
    assert a.params[head] == 0 and a.tied[head] == "transformer.wte"
    assert a.flops[head] == 2 * 10 * 32 * 101
    check_sums(a)
    assert a.rest_params == 0
    for granularity in ("sublayers", "modules"):
        b = anatomy(tiny_gpt2, granularity=granularity, example=ids)
        check_sums(b)
        assert b.total_params == unique and b.rest_params == 0


def test_llama_block_flops_by_hand(tiny_llama):
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(0))
    a = anatomy(tiny_llama, example=ids)
    assert a.counts["blocks"] == 2 and a.layers[1:3] == ["model.layers.0", "model.layers.1"]
    t, d, inter, heads, kv, hd = 6, 32, 64, 4, 2, 8
    proj = 2 * t * (d * d + 2 * d * kv * hd + d * d)  # q, k, v (grouped), o
    mlp = 3 * 2 * t * d * inter                        # gate, up, down
    attn = 2 * (2 * heads * t * t * hd)                # scores and weighted values, per query head
    assert a.flops[1:3] == [proj + mlp + attn] * 2
    assert a.total_params == unique_params(tiny_llama) and a.rest_params == 0
    check_sums(a)


def test_unknown_layout_is_one_clear_line():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Module(), nn.Module()
            self.a.p, self.b.p = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.b.p(self.a.p(x))

    with pytest.raises(LayerscopeError, match=r"Odd.*--blocks") as err:
        anatomy(Odd(), example=torch.zeros(1, 2))
    assert "\n" not in str(err.value)
    a = anatomy(Odd(), blocks="a,b", example=torch.zeros(1, 2))
    assert a.layers == ["a", "b"] and a.flops == [2 * 2 * 2] * 2


def test_wrong_input_shape_is_one_clear_line():
    with pytest.raises(LayerscopeError, match=r"Sequential failed on input \(1, 5\).*--input-shape"):
        anatomy(nn.Sequential(nn.Linear(4, 2), nn.ReLU()), example=torch.zeros(1, 5))


def test_result_plots_and_serialises():
    a = anatomy(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), example=torch.zeros(2, 3))
    fig = a.plot()
    assert len(fig.axes) == 2
    data = json.loads(a.to_json())
    assert data["kind"] == "AnatomyResult" and data["params"] == [16, 5]


# --- the commands and their golden tables ----------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch):
    """A fixed 110-column plain terminal for rich, run from the repository root."""
    monkeypatch.setenv("COLUMNS", "110")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.chdir(Path(__file__).parent.parent)


def table_rows(text: str) -> tuple[list[list[str]], list[str]]:
    """The body rows and the total row of a printed summary table, split into cells."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("┡")) + 1
    end = next(i for i, l in enumerate(lines) if l.startswith("├"))
    split = [[c.strip() for c in l.strip("│").split("│")] for l in lines[start:end + 2]]
    return split[:end - start], split[-1]


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LAYERSCOPE_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; rerun with LAYERSCOPE_UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("ref, extra, golden", [
    (f"{NETS}:mlp", ["--input-shape", "4"], "summary_mlp.txt"),
    (f"{NETS}:tagger", [], "summary_tagger.txt"),
    (f"{NETS}:tagger", ["-g", "modules"], "summary_tagger_modules.txt"),
])
def test_summary_table_golden_and_sums(terminal, capsys, ref, extra, golden):
    assert main(["summary", ref, *extra]) == 0
    out = capsys.readouterr().out
    check_golden(golden, out)
    rows, total = table_rows(out)
    as_int = lambda s: int(s.replace(",", ""))  # noqa: E731
    assert total[1] == "total"
    assert sum(as_int(r[4]) for r in rows) == as_int(total[4])
    assert sum(as_int(r[5]) for r in rows) == as_int(total[5])
    assert "How many layers does this model have?" in out


def test_summary_json(terminal, capsys):
    assert main(["summary", f"{NETS}:tagger", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"blocks": 3, "sublayers": 5, "modules": 5}
    assert isinstance(data["total_params"], int) and data["total_params"] == 4017
    assert [(l["index"], l["name"], l["role"]) for l in data["layers"]] == [
        (None, "embed", "embedding"), (0, "lstm.l0", "recurrent"), (1, "lstm.l1", "recurrent"),
        (2, "lstm.l2", "recurrent"), (None, "head", "head")]
    assert sum(l["params"] for l in data["layers"]) == data["total_params"]


def test_summary_minilm_json(terminal, capsys):
    assert main(["summary", "minilm", "--json", "-g", "sublayers"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == 22_713_216 and data["counts"]["blocks"] == 6
    assert data["granularity"] == "sublayers" and len(data["layers"]) == data["counts"]["sublayers"]
    assert sum(l["params"] for l in data["layers"]) + data["rest"]["params"] == 22_713_216


def test_layers_command_golden_and_json(terminal, capsys):
    assert main(["layers", f"{NETS}:mlp", "-g", "sublayers"]) == 0
    check_golden("layers_mlp_sublayers.txt", capsys.readouterr().out)
    assert main(["layers", f"{NETS}:tagger", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["count"] == 3 and [l["name"] for l in data["layers"]] == ["lstm.l0", "lstm.l1", "lstm.l2"]
    assert "num_layers=3" in data["rule"]


@pytest.mark.parametrize("args, message", [
    (["summary", "no-such-model"], "unknown model 'no-such-model'"),
    (["summary", f"{NETS}:mlp", "--input-shape", "5"], "failed on input (1, 5)"),
    (["summary", f"{NETS}:mlp", "--input-shape", "4", "-g", "layers"], "unknown granularity 'layers'"),
    (["layers", f"{NETS}:mlp", "--blocks", "nowhere"], "blocks='nowhere'"),
])
def test_bad_input_is_one_line_exit_2(terminal, capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_sequential_block_spans_its_trailing_parameter_free_modules():
    class Gram(nn.Module):
        """Parameter-free but with FLOPs of its own (a functional matmul)."""

        def forward(self, x):
            return x @ x.T @ x

    net = nn.Sequential(nn.Linear(3, 4), Gram(), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    a = anatomy(net, example=x)
    assert a.layers == ["0", "3"] and a.output_shapes == [[5, 4], [5, 2]]
    gram = 2 * 5 * 4 * 5 + 2 * 5 * 5 * 4
    assert a.flops == [2 * 5 * 3 * 4 + gram, 2 * 5 * 4 * 2] and a.rest_flops == 0
    assert a.total_flops == plain_flops(net, x)
