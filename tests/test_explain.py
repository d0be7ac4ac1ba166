"""Explain: the seed 002 walk-through against numpy, transformer blocks against transformers'
own outputs (MiniLM, random-config Llama with GQA, GPT-2), zoo MLP/CNN layers, bad input, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerscope.cli.app import main
from layerscope.errors import LayerscopeError
from layerscope.explain import explain, explain_ffn, load_ffn
from layerscope.explain.ffn import example_path

SEED002 = example_path("seed002")


def seed002_arrays():
    data = json.loads(SEED002.read_text())
    return {k: np.array(data[k], dtype=np.float64) for k in ("W1", "b1", "W2", "b2", "x")}


# --- the feed-forward walk-through ------------------------------------------------------------


def test_seed002_file_holds_the_matrices_of_the_seed():
    a = seed002_arrays()
    assert a["W1"].shape == (4, 6) and a["W2"].shape == (6, 4) and a["x"].shape == (3, 4)
    # the seed writes W1 row i as 0.1 + 0.6·i + 0.1·j and W2 as its transpose
    expected_w1 = np.array([[0.1 + 0.6 * i + 0.1 * j for j in range(6)] for i in range(4)])
    np.testing.assert_allclose(a["W1"], expected_w1, atol=1e-12)
    np.testing.assert_allclose(a["W2"], expected_w1.T, atol=1e-12)
    np.testing.assert_allclose(a["x"][1], [-0.97825977, 0.09190721, 1.59246789, -0.70611533])


def test_seed002_numbers_match_numpy():
    a = seed002_arrays()
    z = a["x"] @ a["W1"] + a["b1"]
    h = np.maximum(z, 0)
    y = h @ a["W2"] + a["b2"]
    r = explain_ffn("seed002")
    names = [s.name for s in r.steps]
    assert names == ["x", "x·W1", "x·W1 + b1", "relu", "·W2", "·W2 + b2"]
    for name, want in [("x·W1", a["x"] @ a["W1"]), ("x·W1 + b1", z), ("relu", h),
                       ("·W2", h @ a["W2"]), ("·W2 + b2", y)]:
        got = np.array(r.step(name).values)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        assert r.step(name).shape == list(want.shape)
    assert r.params == 4 * 6 + 6 + 6 * 4 + 4 == 58
    assert "hidden layer" in r.layers_note and "width 6" in r.layers_note
    assert "output layer" in r.layers_note and "width 4" in r.layers_note
    assert "58" in r.summary()


def test_gelu_variant_matches_torch():
    a = seed002_arrays()
    a["x"] = a["x"] - 1.0  # make some pre-activations negative so GELU differs from ReLU
    r = explain_ffn({k: v.tolist() for k, v in a.items()}, activation="gelu")
    z = torch.tensor(a["x"] @ a["W1"] + a["b1"])
    h = F.gelu(z)
    y = h @ torch.tensor(a["W2"]) + torch.tensor(a["b2"])
    assert (z < 0).any()
    np.testing.assert_allclose(np.array(r.step("gelu").values), h.numpy(), atol=1e-12)
    np.testing.assert_allclose(np.array(r.steps[-1].values), y.numpy(), atol=1e-12)


def _write(tmp_path: Path, **changes) -> Path:
    data = {k: v.tolist() for k, v in seed002_arrays().items()}
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "ffn.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"W2": [[0.1] * 4] * 5}, "W2 has 5 rows but W1 has 6 columns (hidden width); W2 must be 6×k"),
    ({"W1": [[0.1] * 6] * 3}, "W1 has 3 rows but x has 4 columns (input width)"),
    ({"b1": [0.0] * 5}, "b1 has 5 entries but W1 has 6 columns"),
    ({"b2": [0.0] * 3}, "b2 has 3 entries but W2 has 4 columns"),
    ({"b2": None}, "is missing b2"),
    ({"x": [[1, 2, "a", 4]]}, "x row 1 column 3 is \"a\", not a number"),
    ({"x": [[1, 2, 3, 4], [1, 2, 3]]}, "x row 2 has 3 entries but row 1 has 4"),
    ({"W1": "weights"}, "W1 must be a non-empty list of rows"),
])
def test_malformed_files_name_the_matrix_and_dimensions(tmp_path, changes, message):
    with pytest.raises(LayerscopeError) as info:
        explain_ffn(_write(tmp_path, **changes))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_not_json_and_column_vectors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LayerscopeError, match="not valid JSON"):
        load_ffn(bad)
    # a bias written as a column, as in the seed's LaTeX, is the same vector
    path = _write(tmp_path, b1=[[v] for v in seed002_arrays()["b1"]])
    arrays, _ = load_ffn(path)
    np.testing.assert_allclose(arrays["b1"], seed002_arrays()["b1"])


# --- transformer blocks -------------------------------------------------------------------------


def _eager_attentions(module: nn.Module, **inputs):
    """transformers' own attention weights, from an eager-attention copy of the model."""
    eager = copy.deepcopy(module)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(**inputs, output_attentions=True).attentions


def test_minilm_block_matches_its_own_output_and_attention():
    from layerscope.models import load_model

    loaded = load_model("minilm")
    text = "The quick brown fox jumps over the lazy dog."
    r = explain(loaded, 3, text, head=5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks  # every hook came off
               for m in loaded.module.modules())
    assert r.check is not None and r.check <= 1e-5
    assert [s.name for s in r.steps][:4] == ["input", "Q", "K", "V"]
    assert r.steps[-1].name == "norm 2" and "post-norm" in r.steps[-1].formula
    enc = loaded.encode([text])
    with torch.no_grad():
        out = loaded.module(**enc.kwargs, output_hidden_states=True)
    # the block's input and output are the model's hidden states 3 and 4
    torch.testing.assert_close(r.tensors["input"], out.hidden_states[3], atol=1e-6, rtol=0)
    torch.testing.assert_close(r.tensors["step-by-step output"], out.hidden_states[4],
                               atol=1e-5, rtol=0)
    T = enc.kwargs["input_ids"].shape[1]
    assert r.tokens == loaded.tokenizer.convert_ids_to_tokens(enc.kwargs["input_ids"][0])
    assert r.tokens[0] == "[CLS]" and len(r.tokens) == T
    assert r.step("attention weights (head 5)").shape == [T, T]
    attentions = _eager_attentions(loaded.module, **enc.kwargs)
    torch.testing.assert_close(r.tensors["attention weights (head 5)"][0], attentions[3][0, 5],
                               atol=1e-6, rtol=0)
    assert loaded.module.config._attn_implementation == "sdpa"  # the user's model is untouched
    assert r.params == sum(p.numel() for p in loaded.module.encoder.layer[3].parameters())


def test_llama_gqa_block(tiny_llama):
    ids = torch.tensor([[3, 17, 42, 8, 61, 5, 29]])
    att = tiny_llama.model.layers[1].self_attn
    n_kv = tiny_llama.config.num_key_value_heads
    assert n_kv < tiny_llama.config.num_attention_heads
    r = explain(tiny_llama, 1, ids, head=2)
    assert r.check <= 1e-5
    names = [s.name for s in r.steps]
    assert names.index("norm 1") < names.index("Q") < names.index("Q rotated") \
        < names.index("attention weights (head 2)") < names.index("residual add 1") \
        < names.index("ffn gate") < names.index("residual add 2")
    assert r.step("K").shape == [7, n_kv * att.head_dim]
    attentions = _eager_attentions(tiny_llama, input_ids=ids)
    torch.testing.assert_close(r.tensors["attention weights (head 2)"][0], attentions[1][0, 2],
                               atol=1e-6, rtol=0)
    weights = np.array(r.step("attention weights (head 2)").values)
    assert np.allclose(np.triu(weights, 1), 0)  # causal: no looking ahead
    with torch.no_grad():
        hidden = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states
        # the last hidden state of a Llama model has the final norm applied
        final = tiny_llama.model.norm(r.tensors["step-by-step output"])
    torch.testing.assert_close(final, hidden[2], atol=1e-5, rtol=0)


def test_gpt2_block(tiny_gpt2):
    ids = torch.tensor([[1, 9, 33, 70, 2]])
    r = explain(tiny_gpt2, -1, ids, head=1)
    assert r.layer == "transformer.h.2" and r.check <= 1e-5
    attentions = _eager_attentions(tiny_gpt2, input_ids=ids)
    torch.testing.assert_close(r.tensors["attention weights (head 1)"][0], attentions[2][0, 1],
                               atol=1e-6, rtol=0)
    assert r.step("ffn up").shape == [5, 4 * 32]


def test_head_out_of_range(tiny_gpt2):
    with pytest.raises(LayerscopeError, match=r"head 2 is out of range: .* 2 attention heads \(0-1\)"):
        explain(tiny_gpt2, 0, torch.tensor([[1, 2, 3]]), head=2)


# --- zoo MLP and CNN layers ---------------------------------------------------------------------


def test_zoo_cnn_layer_steps_match_torch():
    from layerscope.models import load_model

    loaded = load_model("cnn-dw")
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    r = explain(loaded, 0, x)
    assert [s.name for s in r.steps] == ["input", "depthwise conv", "pointwise conv", "norm",
                                         "activation", "pool"]
    assert r.check <= 1e-5
    block = loaded.module.blocks[0]
    with torch.no_grad():
        depth = F.conv2d(x, block.conv.depthwise.weight, block.conv.depthwise.bias, padding=1,
                         groups=block.conv.depthwise.groups)
    np.testing.assert_allclose(np.array(r.step("depthwise conv").numbers),
                               depth[0, 0, 0, :6].numpy(), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(r.tensors["step-by-step output"], block(x), atol=1e-5)
    assert r.step("pool").shape == [block.conv.pointwise.out_channels, 14, 14]


def test_zoo_mlp_layer_with_batch_norm():
    from layerscope.models import load_model

    loaded = load_model("mlp:norm=batch,width=16,depth=2")
    bn = loaded.module.blocks[1].norm
    with torch.no_grad():  # give the running statistics values that matter
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    r = explain(loaded, 1, x)
    assert [s.name for s in r.steps] == ["input", "linear", "norm", "activation"]
    assert r.check <= 1e-5
    with torch.no_grad():
        h = loaded.module.blocks[0](x)
        lin = loaded.module.blocks[1].linear
        z = h.numpy() @ lin.weight.T.numpy() + lin.bias.numpy()
        want = np.maximum((z - bn.running_mean.numpy()) / np.sqrt(bn.running_var.numpy() + bn.eps)
                          * bn.weight.numpy() + bn.bias.numpy(), 0)
    np.testing.assert_allclose(np.array(r.steps[-1].values), want[0], atol=1e-5)
    assert "hidden layer of width 16" in r.layers_note


@pytest.mark.parametrize("spec", ["gpt:width=32,depth=2,heads=4",
                                  "transformer:norm_position=post,width=32,heads=2,depth=2"])
def test_zoo_transformer_block(spec):
    from layerscope.models import load_model

    loaded = load_model(spec)
    r = explain(loaded, 1, head=1)
    assert r.check <= 1e-5
    block = loaded.module.blocks[1]
    names = [s.name for s in r.steps]
    post = not block.pre
    assert (names.index("norm 1") > names.index("residual add 1")) == post
    x = r.tensors["input"][0].double()
    q, k, _ = (x @ block.attn.qkv.weight.T.double() + block.attn.qkv.bias.double()).split(32, -1)
    d = 32 // block.attn.heads
    qh, kh = q[:, d:2 * d], k[:, d:2 * d]   # head 1 of the post-norm block sees x itself
    if post:
        scores = (qh @ kh.T / np.sqrt(d)).softmax(-1)
        torch.testing.assert_close(r.tensors["attention weights (head 1)"][0].double(), scores,
                                   atol=1e-6, rtol=0)
    else:
        weights = r.tensors["attention weights (head 1)"][0]
        assert torch.all(weights.triu(1) == 0)  # the GPT is causal
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]))


def test_resnet_block_with_projection_shortcut():
    from layerscope.models import load_model

    loaded = load_model("resnet:width=8,depth=2")
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    r = explain(loaded, 1, x)
    block = loaded.module.blocks[1]
    assert not isinstance(block.shortcut, nn.Identity) and r.check <= 1e-5
    assert [s.name for s in r.steps][-2:] == ["residual add", "activation 2"]
    with torch.no_grad():
        h = loaded.module.blocks[0](loaded.module.stem(x))
        conv1 = F.conv2d(h, block.conv1.weight, None, stride=2, padding=1)
    assert r.step("conv 1").shape == list(conv1.shape[1:])
    np.testing.assert_allclose(r.step("conv 1").numbers, conv1[0, 0, 0, :6].numpy(), atol=1e-5)


def test_lstm_layers_of_a_multi_layer_lstm_match_lstm_cell():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, num_layers=3).eval()   # time-first, as nn.LSTM is by default
    x = torch.randn(7, 2, 3)
    r = explain(lstm, 1, x)
    assert r.layer == "l1" and r.check <= 1e-5
    assert r.step("hidden state, all steps").shape == [7, 5]
    cell = nn.LSTMCell(5, 5)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(lstm, f"{name}_l1"))
        layer0 = nn.LSTM(3, 5)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer0, f"{name}_l0").copy_(getattr(lstm, f"{name}_l0"))
        h0, c0 = cell(layer0(x)[0][0])   # layer 1 at t = 0, from a zero state
    np.testing.assert_allclose(r.step("hidden t=0").values, h0[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(r.step("cell t=0").values, c0[0].numpy(), atol=1e-6)
    assert r.params == 4 * 5 * (5 + 5 + 2)


def test_zoo_gru_layer_matches_gru_cell():
    from layerscope.models import load_model

    loaded = load_model("gru:width=8,depth=2")
    x = torch.randn(1, 32, 1, generator=torch.Generator().manual_seed(4))
    r = explain(loaded, 0, x)
    assert r.check <= 1e-5
    rnn = loaded.module.blocks[0].rnn
    cell = nn.GRUCell(1, 8)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l0"))
        h = torch.zeros(1, 8)
        for t in range(32):
            h = cell(x[:, t], h)
    np.testing.assert_allclose(r.step("hidden t=31").values, h[0].numpy(), atol=1e-6)
    with pytest.raises(LayerscopeError, match="bidirectional"):
        explain(nn.LSTM(2, 3, bidirectional=True, batch_first=True).eval(), 0, torch.randn(1, 4, 2))


def test_training_mode_is_refused_and_left_alone():
    from layerscope.zoo import build

    net = build("cnn").train()
    with pytest.raises(LayerscopeError, match="training mode"):
        explain(net, 0)
    assert net.training


def test_input_file_and_unknown_layer_kind(tmp_path):
    from layerscope.models import load_model

    loaded = load_model("cnn")
    x = torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / "x.npy", x.numpy())
    torch.save(x, tmp_path / "x.pt")
    from safetensors.torch import save_file

    save_file({"input": x.contiguous(), "other": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    a = explain(loaded, 1, tmp_path / "x.npy")
    b = explain(loaded, 1, str(tmp_path / "x.pt"))
    c = explain(loaded, 1, tmp_path / "x.safetensors")
    assert a.check <= 1e-5 and a.steps[-1].numbers == b.steps[-1].numbers == c.steps[-1].numbers
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(LayerscopeError, match="unknown type '.txt'"):
        explain(loaded, 1, tmp_path / "x.txt")
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Tanh(), nn.Conv1d(4, 4, 3))
    with pytest.raises(LayerscopeError, match="Conv1d, which explain cannot walk; it walks "
                                              "BERT-like.*CNN layer"):
        explain(net, 0, torch.randn(1, 2, 9))
    with pytest.raises(LayerscopeError, match="out of range"):
        explain(loaded, 7)


def test_result_serialises_and_plots():
    r = explain_ffn("seed002")
    data = json.loads(r.to_json())
    assert data["kind"] == "ExplainResult" and data["layer_kind"] == "ffn"
    assert data["params"] == 58
    assert "tensors" not in data and len(data["steps"]) == 6
    fig = r.plot()
    assert len(fig.axes[0].patches) == 6


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_example_json_matches_numpy(capsys):
    assert main(["explain", "--example", "seed002", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    a = seed002_arrays()
    y = np.maximum(a["x"] @ a["W1"] + a["b1"], 0) @ a["W2"] + a["b2"]
    np.testing.assert_allclose(np.array(data["steps"][-1]["values"]), y, atol=1e-6)
    assert data["params"] == 58


def test_cli_tables(capsys):
    assert main(["explain", "--ffn", str(SEED002), "--activation", "gelu"]) == 0
    out = capsys.readouterr().out
    assert "gelu" in out and "parameters: 58" in out and "width 6" in out
    assert main(["explain", "mlp", "--layer", "-1"]) == 0
    out = capsys.readouterr().out
    assert "max |step-by-step" in out and "matches to 1e-05" in out


def test_seed002_prints_the_matrices_and_why_the_hidden_units_coincide(capsys):
    a = seed002_arrays()
    # the fact the note states, computed independently: x·W1 is the same in every column
    z = a["x"] @ a["W1"]
    assert np.ptp(z, axis=1).max() < 1e-12
    r = explain_ffn("seed002")
    assert r.parameters["W1"] == a["W1"].tolist() and r.parameters["b2"] == a["b2"].tolist()
    text = " ".join(r.notes)
    assert "same x·W1" in text and "sums to zero" in text and "differ by a constant" in text
    # the comparison: the same weights on rows that do not sum to zero set the units apart
    other = r.compare
    assert other is not None and other.parameters == r.parameters
    zc = other.tensors["z1"]
    np.testing.assert_allclose(zc, (a["x"] + 1.0) @ a["W1"] + a["b1"])
    assert np.ptp(zc - a["b1"], axis=1).min() > 1.0
    assert main(["explain", "--example", "seed002"]) == 0
    out = capsys.readouterr().out
    for name in ("W1 (4×6)", "b1 (6)", "W2 (6×4)", "b2 (4)"):
        assert name in out
    assert "2.400000" in out and "sums to zero" in out and "compare: the same network" in out


def test_no_coincidence_note_on_an_ordinary_network():
    rng = np.random.default_rng(0)
    r = explain_ffn({"W1": rng.normal(size=(4, 6)).tolist(), "b1": [0.0] * 6,
                     "W2": rng.normal(size=(6, 2)).tolist(), "b2": [0.0, 0.0],
                     "x": rng.normal(size=(3, 4)).tolist()})
    assert r.notes == [] and r.compare is None


@pytest.mark.parametrize("args, message", [
    (["explain", "--ffn", "BAD"], "W2 has 5 rows but W1 has 6 columns"),
    (["explain", "--ffn", "/nonexistent/ffn.json"], "does not exist"),
    (["explain"], "nothing to explain"),
    (["explain", "cnn", "--layer", "5"], "layer 5 is out of range"),
    (["explain", "--example", "seed002", "--activation", "tanh"], "unknown activation 'tanh'"),
])
def test_cli_errors_exit_2_without_traceback(tmp_path, capsys, args, message):
    args = [str(_write(tmp_path, W2=[[0.1] * 4] * 5)) if a == "BAD" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_docstring_examples_run():
    import doctest

    import layerscope.cli.cmd_explain as cmd
    import layerscope.explain as pkg
    from layerscope.explain import block, capture, ffn, recurrent, simple, steps

    for module in (pkg, block, capture, ffn, recurrent, simple, steps, cmd):
        failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failed == 0, module.__name__


@pytest.mark.parametrize("build,form", [
    ("opt", "pre-norm"), ("gptj", "parallel"), ("t5", "pre-norm"), ("xlm", "post-norm")])
def test_generic_walk_of_undeclared_blocks_rebuilds_their_output(build, form):
    """Blocks of no declared layout are walked through the role finder; each part's output is
    the real one and the residual form found rebuilds the block's output."""
    from transformers import (GPTJConfig, GPTJModel, OPTConfig, OPTModel, T5Config, T5EncoderModel,
                              XLMConfig, XLMModel)

    torch.manual_seed(0)
    model = {
        "opt": lambda: OPTModel(OPTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                          ffn_dim=64, vocab_size=60, word_embed_proj_dim=32)),
        "gptj": lambda: GPTJModel(GPTJConfig(n_embd=32, n_layer=3, n_head=4, rotary_dim=4,
                                             vocab_size=60)),
        "t5": lambda: T5EncoderModel(T5Config(d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                              num_layers=3, vocab_size=60)),
        "xlm": lambda: XLMModel(XLMConfig(emb_dim=64, n_layers=3, n_heads=4, vocab_size=20,
                                          max_position_embeddings=16)),
    }[build]().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])  # no padding id (XLM masks its pad index 2)
    r = explain(model, layer=1, inputs=ids)
    assert r.layer_kind == "transformer-block" and r.check < 1e-5
    assert r.notes[0].startswith(f"residual form: {form}")
    with torch.no_grad():
        want = model(ids, output_hidden_states=True).hidden_states[2]
    assert torch.allclose(r.tensors["step-by-step output"], want, atol=1e-5)
    assert any(s.name == "attention" or s.name.startswith("attention") for s in r.steps)


def test_declared_walk_that_does_not_fit_falls_back_to_the_roles_and_says_so():
    from transformers import OpenAIGPTConfig, OpenAIGPTModel

    torch.manual_seed(0)
    model = OpenAIGPTModel(OpenAIGPTConfig(n_embd=16, n_layer=2, n_head=2, vocab_size=40)).eval()
    r = explain(model, layer=1, inputs=torch.tensor([[1, 2, 3]]))
    assert "walked through its roles instead" in r.notes[0] and r.check < 1e-5
