"""The zoo: specs parse to typed configs, every network builds, runs, fits the Layers view, learns."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from layerscope import zoo
from layerscope.errors import LayerscopeError


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run far faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: small configs of every zoo name, and the output shape for a batch of 3
SMALL = {
    "mlp": ("mlp:width=16,depth=3", (3, 10)),
    "cnn": ("cnn:width=4,depth=2,hidden=8", (3, 10)),
    "cnn-dw": ("cnn-dw:width=4,depth=3,hidden=8", (3, 10)),
    "lstm": ("lstm:width=8,depth=3,seq_len=12", (3, 1)),
    "gru": ("gru:width=8,depth=2,seq_len=12", (3, 1)),
    "transformer": ("transformer:width=16,depth=2,heads=2,seq_len=10,n_classes=5", (3, 5)),
    "gpt": ("gpt:width=16,depth=3,heads=2,seq_len=10,vocab_size=40", (3, 10, 40)),
    "resnet": ("resnet:width=4,depth=2,blocks=2", (3, 10)),
    "autoencoder": ("autoencoder:width=16,depth=2,bottleneck=4", (3, 64)),
    "gan": ("gan:width=16,depth=2,noise_dim=6", (3, 1)),
}
#: how many blocks the Layers view should find in each SMALL network
BLOCKS = {"mlp": 3, "cnn": 2, "cnn-dw": 3, "lstm": 3, "gru": 2, "transformer": 2, "gpt": 3,
          "resnet": 4, "autoencoder": 5, "gan": 5}


# -- spec parsing ----------------------------------------------------------------------------------
def test_spec_values_take_the_field_types():
    config = zoo.build_config("mlp:depth=8, width=64,dropout=0.25,residual=true,activation=gelu")
    assert (config.depth, config.width, config.dropout, config.residual, config.activation) == \
        (8, 64, 0.25, True, "gelu")
    assert isinstance(config.dropout, float) and isinstance(config.depth, int)
    assert zoo.build_config("mlp:residual=false").residual is False
    assert zoo.build_config("cnn:channels=16x32x64").channels == [16, 32, 64]
    assert zoo.build_config("cnn:channels=16-32").channels == [16, 32]
    assert zoo.build_config("cnn:channels=8").channels == [8]


def test_width_and_depth_or_a_list_set_the_layer_sizes():
    assert zoo.build_config("cnn:width=8,depth=3").channels == [8, 16, 32]
    config = zoo.build_config("cnn:channels=16x16x8")
    assert (config.width, config.depth) == (16, 3)       # the list sets width and depth
    assert zoo.build_config("resnet:width=4,depth=3").channels == [4, 8, 16]
    assert zoo.build_config("autoencoder:width=40,depth=3").hidden == [40, 20, 10]
    assert zoo.build_config("cnn:channels=8x16,depth=2,width=8").depth == 2  # agreeing is fine
    with pytest.raises(LayerscopeError, match="contradict.*depth=2"):
        zoo.build_config("cnn:channels=8x16,depth=3")


def test_overrides_win_and_accept_json_values():
    config = zoo.build_config("mlp:depth=8", depth=3, dropout=0)
    assert config.depth == 3 and config.dropout == 0.0
    assert zoo.build_config("cnn", channels=(4, 8)).channels == [4, 8]
    assert zoo.build_config("cnn-dw").separable is True and zoo.build_config("cnn").separable is False


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(LayerscopeError) as info:
        zoo.build("mlp:depht=3")
    message = str(info.value)
    assert "'depht'" in message
    for field in dataclasses.fields(zoo.config_class("mlp")):
        assert field.name in message
    with pytest.raises(LayerscopeError, match="valid keys: .*width"):
        zoo.build("mlp", colour="red")


@pytest.mark.parametrize("spec, fragment", [
    ("mlp:depth=0", "depth=0"), ("mlp:width=-4", "width=-4"), ("cnn:channels=8x0", "channels"),
    ("mlp:width=abc", "whole number"), ("mlp:residual=maybe", "true or false"),
    ("mlp:dropout=lots", "number"), ("mlp:activation=elu", "relu, gelu, tanh, silu"),
    ("mlp:norm=group", "none, batch, layer"), ("mlp:depth", "key=value"),
    ("mlp:depth=2,depth=3", "twice"), ("resnet-9000", "known ones: mlp, cnn"),
    ("cnn:kernel_size=4", "odd"), ("cnn:depth=6", "depth=4 or less"),
    ("mlp:dropout=1.0", "below 1"), ("gpt:width=30,heads=4", "heads=4 must divide width=30"),
    ("gpt:tie_weights=2", "true or false"), ("gpt:norm_position=middle", "pre, post"),
    ("lstm:cell=rnn", "lstm, gru"), ("gan:noise_dim=1.5", "whole number"),
    ("transformer:task=lm", "classification, regression"), ("", "a zoo spec is a name"),
])
def test_bad_specs_raise_one_line_errors(spec, fragment):
    with pytest.raises(LayerscopeError) as info:
        zoo.build(spec)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_names_cover_the_contract():
    assert set(zoo.names()) == {"mlp", "cnn", "cnn-dw", "lstm", "gru", "transformer", "gpt",
                                "resnet", "autoencoder", "gan"}


# -- MLP and CNN: shapes and parameter counts by hand -------------------------------------------
def test_mlp_parameter_count_and_shapes():
    net = zoo.build("mlp:width=32,depth=3")
    linear = [(64, 32), (32, 32), (32, 32), (32, 10)]
    assert net.num_parameters() == _n(net) == sum(i * o + o for i, o in linear)
    assert len(net.blocks) == 3 and isinstance(net.head, nn.Linear)
    assert net(net.example_input(4)).shape == (4, 10)
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)  # images are flattened
    normed = zoo.build("mlp:width=32,depth=3,norm=layer")
    assert _n(normed) == _n(net) + 3 * 2 * 32
    regressor = zoo.build("mlp:task=regression,in_features=5")
    assert regressor.task == "regression" and regressor(torch.randn(7, 5)).shape == (7, 1)
    with pytest.raises(LayerscopeError, match="64 features.*in_features=5"):
        net(torch.randn(2, 5))


@pytest.mark.parametrize("norm, per_channel", [("batch", 2), ("layer", 2), ("none", 0)])
def test_cnn_parameter_count(norm, per_channel):
    net = zoo.build(f"cnn:channels=8x16,kernel_size=5,hidden=20,norm={norm}")
    convs = 5 * 5 * 1 * 8 + 8 + 5 * 5 * 8 * 16 + 16
    norms = per_channel * (8 + 16)
    fc = 16 * 7 * 7 * 20 + 20
    head = 20 * 10 + 10
    assert _n(net) == convs + norms + fc + head
    assert net(net.example_input(3)).shape == (3, 10) and net.input_shape == (1, 28, 28)


def test_cnn_dw_is_depthwise_separable():
    net = zoo.build("cnn-dw:channels=8x16,hidden=20")
    depthwise = 3 * 3 * 1 + 1 + 3 * 3 * 8 + 8   # one k x k filter per input channel
    pointwise = 1 * 8 + 8 + 8 * 16 + 16
    norms = 2 * (8 + 16)
    assert _n(net) == depthwise + pointwise + norms + 16 * 7 * 7 * 20 + 20 + 20 * 10 + 10
    assert net.blocks[1].conv.depthwise.groups == 8
    assert net(net.example_input(2)).shape == (2, 10)
    with pytest.raises(LayerscopeError, match=r"\(batch, 1, 28, 28\).*\(2, 1, 8, 8\)"):
        net(torch.randn(2, 1, 8, 8))


def test_predict_proba_is_the_softmax_of_the_logits():
    net = zoo.build("mlp:width=8,depth=1").eval()
    x = torch.randn(6, 64)
    probs = net.predict_proba(x).detach().numpy()
    logits = net(x).detach().numpy().astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(LayerscopeError, match="classifier"):
        zoo.build("mlp:task=regression").predict_proba(x)


def test_config_is_json_data_that_rebuilds_the_same_network():
    torch.manual_seed(3)
    net = zoo.build("cnn-dw:channels=4x8,residual=true,norm=layer")
    config = json.loads(json.dumps(dataclasses.asdict(net.config)))
    assert config == dataclasses.asdict(net.config)
    again = zoo.build("cnn-dw", **config)
    again.load_state_dict(net.state_dict())  # strict: same structure
    assert again.config == net.config


# -- learning --------------------------------------------------------------------------------------
def test_mlp_learns_sklearn_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(0))
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)[order]
    y = torch.tensor(digits.target)[order]
    x_train, x_test, y_train, y_test = x[450:], x[:450], y[450:], y[:450]
    torch.manual_seed(0)
    net = zoo.build("mlp")
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = torch.randint(0, len(x_train), (64,), generator=generator)
        loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("key", ["width", "depth"])
@pytest.mark.parametrize("value", [0, -1])
def test_width_and_depth_must_be_positive_everywhere(name, key, value):
    with pytest.raises(LayerscopeError) as info:
        zoo.build(f"{name}:{key}={value}")
    assert f"{key}={value} must be a positive whole number" in str(info.value)


def test_unknown_network_lists_every_name():
    with pytest.raises(LayerscopeError) as info:
        zoo.build("vgg:depth=3")
    assert "'vgg'" in str(info.value)
    for name in zoo.names():
        assert name in str(info.value)


# -- every network: shapes, task, Layers view, load_model ----------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_on_the_example_input_has_the_task_shape(name):
    spec, shape = SMALL[name]
    net = zoo.build(spec)
    x = net.example_input(batch_size=3)
    assert tuple(x.shape) == (3, *net.input_shape)
    assert net(x).shape == shape
    assert net.task in ("classification", "regression", "causal-lm", "autoencoder", "gan")
    assert dataclasses.is_dataclass(net.config)
    assert net.example_input().shape[0] == 2  # default batch size


def test_default_configs_fit_the_reference_data():
    shapes = {name: zoo.build(name).input_shape for name in zoo.names()}
    assert shapes["mlp"] == (64,) and shapes["autoencoder"] == (64,)          # sklearn digits
    assert shapes["cnn"] == shapes["cnn-dw"] == shapes["resnet"] == (1, 28, 28)  # MNIST
    assert shapes["lstm"][1] == shapes["gru"][1] == 1                        # univariate window
    assert len(shapes["transformer"]) == len(shapes["gpt"]) == 1             # token ids
    tasks = {name: zoo.build(name).task for name in zoo.names()}
    assert tasks == {"mlp": "classification", "cnn": "classification",
                     "cnn-dw": "classification", "lstm": "regression", "gru": "regression",
                     "transformer": "classification", "gpt": "causal-lm",
                     "resnet": "classification", "autoencoder": "autoencoder", "gan": "gan"}
    assert zoo.build("gan").generator(torch.randn(2, 16)).shape == (2, 64)
    digits = torch.randn(2, 64)
    assert zoo.build("mlp")(digits).shape == (2, 10)
    assert zoo.build("gpt").example_input().dtype == torch.long


@pytest.mark.parametrize("name", sorted(SMALL))
def test_layers_view_finds_the_blocks_and_every_block_runs(name):
    from layerscope.layers import Layers

    net = zoo.build(SMALL[name][0]).eval()
    lay = Layers(net, "blocks")
    assert len(lay) == BLOCKS[name], lay.names()
    assert all(layer.role in ("block", "recurrent") for layer in lay)
    with torch.no_grad(), lay.capture() as cap:
        cap.call(net, net.example_input(batch_size=3))
    assert sorted(cap.outputs) == sorted(lay.names())   # no block is skipped by forward
    assert all(out.shape[0] == 3 for out in cap.outputs.values())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert len(Layers(net, "sublayers")) > len(lay)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_layerscope_blocks_names_the_stack_also_at_depth_one(name):
    from layerscope.layers import Layers

    net = zoo.build(SMALL[name][0], depth=1)   # overrides win over the spec
    expected = {"autoencoder": 3, "gan": 3, "resnet": 2}.get(name, 1)
    lay = Layers(net, "blocks", blocks=net.layerscope_blocks)
    assert len(lay) == expected, lay.names()
    deep = zoo.build(SMALL[name][0])
    assert Layers(deep, "blocks", blocks=deep.layerscope_blocks).names() == \
        Layers(deep, "blocks").names()       # the same blocks the generic rule finds


def test_block_names_follow_the_network():
    from layerscope.layers import Layers

    assert Layers(zoo.build("gpt:depth=4,width=16,heads=2"), "blocks").names() == \
        [f"blocks.{i}" for i in range(4)]
    gan = Layers(zoo.build("gan:depth=2,width=8"), "blocks").names()
    assert gan == ["generator.blocks.0", "generator.blocks.1", "generator.blocks.2",
                   "discriminator.blocks.0", "discriminator.blocks.1"]
    roles = {layer.name: layer.role for layer in Layers(zoo.build("gpt:depth=2,width=16,heads=2"),
                                                          "sublayers")}
    assert roles["blocks.0.attn"] == "attention" and roles["blocks.0.ff"] == "feed-forward"
    assert roles["tok_emb"] == "embedding" and roles["head"] == "head"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_load_model_builds_zoo_specs(name):
    from layerscope.layers import Layers
    from layerscope.models import load_model

    loaded = load_model(SMALL[name][0])
    assert loaded.family == f"zoo:{name}" and loaded.task == loaded.module.task
    assert loaded.input_shape == loaded.module.input_shape and not loaded.module.training
    with torch.no_grad():
        out = loaded(loaded.example(batch_size=3))
    assert out.shape == SMALL[name][1]
    assert len(Layers(loaded, "blocks")) == BLOCKS[name]


def test_load_model_takes_depth():
    from layerscope.layers import Layers
    from layerscope.models import load_model

    assert len(Layers(load_model("cnn:depth=3"), "blocks")) == 3
    assert len(Layers(load_model("lstm:depth=3"), "blocks")) == 3


@pytest.mark.parametrize("name", sorted(SMALL))
def test_config_rebuilds_the_same_network(name):
    torch.manual_seed(1)
    net = zoo.build(SMALL[name][0])
    config = json.loads(json.dumps(dataclasses.asdict(net.config)))
    again = zoo.build(name, **config)
    again.load_state_dict(net.state_dict())  # strict: the same structure
    assert again.config == net.config


# -- residual connections ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "lstm", "gru", "transformer", "gpt", "gan"])
def test_residual_switch_changes_the_function_not_the_weights(name):
    torch.manual_seed(0)
    spec = SMALL[name][0]
    plain, skip = zoo.build(spec + ",residual=false"), zoo.build(spec + ",residual=true")
    skip.load_state_dict(plain.state_dict())  # same parameters...
    plain.eval(), skip.eval()
    x = plain.example_input(batch_size=3)
    with torch.no_grad():
        assert not torch.allclose(plain(x), skip(x), atol=1e-5)  # ...a different graph


def test_residual_blocks_add_their_input():
    torch.manual_seed(0)
    lstm = zoo.build("lstm:width=8,depth=2,residual=true").eval()
    x = torch.randn(3, 5, 8)
    block = lstm.blocks[1]
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.rnn(x)[0])
    assert [b.residual for b in lstm.blocks] == [False, True]   # 1 -> 8 features cannot skip
    gpt = zoo.build("gpt:width=16,depth=1,heads=2,residual=false").eval()
    block, h = gpt.blocks[0], torch.randn(2, 4, 16)
    with torch.no_grad():
        assert torch.allclose(block(h), block.ff(block.norm2(block.attn(block.norm1(h)))))


def test_resnet_shortcuts():
    skip, plain = zoo.build("resnet:width=4,depth=2"), zoo.build("resnet:width=4,depth=2,residual=false")
    assert isinstance(skip.blocks[0].shortcut, nn.Identity) and plain.blocks[0].shortcut is None
    projection = 4 * 8 + 2 * 8   # 1x1 conv 4 -> 8 channels without bias, then a batch norm
    assert _n(skip) == _n(plain) + projection
    torch.manual_seed(0)
    plain.load_state_dict(skip.state_dict(), strict=False)
    skip.eval(), plain.eval()
    x = skip.example_input(3)
    with torch.no_grad():
        assert not torch.allclose(skip(x), plain(x))


def test_mlp_residual_changes_structure_and_function():
    torch.manual_seed(0)
    plain, skip = zoo.build("mlp:width=16,depth=3"), zoo.build("mlp:width=16,depth=3,residual=true")
    skip.load_state_dict(plain.state_dict())
    x = torch.randn(5, 64)
    assert not torch.allclose(plain(x), skip(x))
    block = skip.blocks[1]
    assert torch.allclose(block(x[:, :16]), x[:, :16] + torch.relu(block.linear(x[:, :16])))
    assert [b.residual for b in skip.blocks] == [False, True, True]  # 64 -> 16 cannot skip
    cnn_plain = zoo.build("cnn:channels=4x8")
    cnn_skip = zoo.build("cnn:channels=4x8,residual=true")
    assert cnn_plain.blocks[0].shortcut is None
    assert isinstance(cnn_skip.blocks[0].shortcut, nn.Conv2d)  # 1 -> 4 channels: a 1x1 projection
    assert _n(cnn_skip) == _n(cnn_plain) + (1 * 4 + 4) + (4 * 8 + 8)


# -- sequence models -------------------------------------------------------------------------------
def test_lstm_and_gru_parameter_counts():
    def recurrent(gates, n_in, h):
        return gates * (h * n_in + h * h + 2 * h)   # input and hidden weights, two biases

    lstm = zoo.build("lstm:width=8,depth=3")
    assert _n(lstm) == recurrent(4, 1, 8) + 2 * recurrent(4, 8, 8) + (8 + 1)
    gru = zoo.build("gru:width=8,depth=2,task=classification,n_classes=3")
    assert _n(gru) == recurrent(3, 1, 8) + recurrent(3, 8, 8) + (8 * 3 + 3)
    assert gru(torch.randn(4, 7, 1)).shape == (4, 3)   # any sequence length runs
    assert lstm(torch.randn(4, 7)).shape == (4, 1)      # (B, T) univariate windows too
    with pytest.raises(LayerscopeError, match=r"\(batch, time, 1\).*\(4, 7, 2\)"):
        lstm(torch.randn(4, 7, 2))


def test_gpt_parameter_count_and_tied_head():
    V, T, C, depth = 40, 10, 16, 3
    block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    tied = zoo.build(f"gpt:width={C},depth={depth},heads=2,seq_len={T},vocab_size={V}")
    assert _n(tied) == V * C + T * C + depth * block + 2 * C
    assert tied.head.weight is tied.tok_emb.weight
    untied = zoo.build(f"gpt:width={C},depth={depth},heads=2,seq_len={T},vocab_size={V},"
                       "tie_weights=false")
    assert _n(untied) == _n(tied) + V * C and untied.head.weight is not untied.tok_emb.weight


def test_gpt_is_causal_and_the_encoder_is_not():
    torch.manual_seed(0)
    gpt = zoo.build(SMALL["gpt"][0]).eval()
    idx = gpt.example_input(batch_size=2)
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % gpt.config.vocab_size
    with torch.no_grad():
        a, b = gpt(idx), gpt(changed)
    assert torch.equal(a[:, :6], b[:, :6])                  # the past never sees the future
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    encoder = zoo.build(SMALL["transformer"][0]).eval()
    idx = encoder.example_input(batch_size=2)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % encoder.config.vocab_size
    encoder.head.weight.data.normal_()   # make the small-init head visibly sensitive
    with torch.no_grad():
        assert not torch.allclose(encoder(idx), encoder(changed))


def test_gpt_pre_and_post_norm():
    pre = zoo.build("gpt:width=16,depth=2,heads=2,norm_position=pre")
    post = zoo.build("gpt:width=16,depth=2,heads=2,norm_position=post")
    assert isinstance(pre.norm, nn.LayerNorm) and isinstance(post.norm, nn.Identity)
    assert _n(pre) == _n(post) + 2 * 16                    # only the final norm differs
    block, x = post.blocks[0].eval(), torch.randn(2, 5, 16)
    with torch.no_grad():
        h = block.norm1(x + block.attn(x))                   # post: sublayer, add, norm
        assert torch.allclose(block(x), block.norm2(h + block.ff(h)), atol=1e-6)
        block = pre.blocks[0].eval()
        h = x + block.attn(block.norm1(x))                   # pre: norm, sublayer, add
        assert torch.allclose(block(x), h + block.ff(block.norm2(h)), atol=1e-6)


def test_gpt_refuses_bad_tokens_and_generates():
    gpt = zoo.build(SMALL["gpt"][0]).eval()
    with pytest.raises(LayerscopeError, match="0..39"):
        gpt(torch.tensor([[1, 40]]))
    with pytest.raises(LayerscopeError, match="at most seq_len=10"):
        gpt(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(LayerscopeError, match="integer token ids"):
        gpt(torch.randn(1, 4))
    out = gpt.generate(torch.zeros(2, 3, dtype=torch.long), n_new=12, temperature=0)
    assert out.shape == (2, 15)
    with torch.no_grad():
        assert out[0, 3].item() == gpt(out[:, :3])[0, -1].argmax().item()   # greedy


# -- autoencoder and GAN -------------------------------------------------------------------------
def test_autoencoder_scores_reconstruction_error():
    torch.manual_seed(0)
    ae = zoo.build(SMALL["autoencoder"][0]).eval()
    x = torch.randn(6, 64)
    with torch.no_grad():
        recon = ae(x).numpy().astype(np.float64)
    expected = ((recon - x.numpy()) ** 2).mean(axis=1)
    np.testing.assert_allclose(ae.anomaly_score(x).numpy(), expected, rtol=1e-5)
    assert ae.encode(x).shape == (6, 4)
    assert ae(torch.randn(2, 1, 8, 8)).shape == (2, 1, 8, 8)        # images come back as images
    assert [b.linear.out_features for b in ae.blocks] == [16, 8, 4, 8, 16]
    assert isinstance(ae.blocks[2].act, nn.Identity)                # the code stays linear
    with pytest.raises(LayerscopeError, match="64 features"):
        ae(torch.randn(2, 10))


def test_gan_forward_is_discriminator_of_generator():
    torch.manual_seed(0)
    gan = zoo.build(SMALL["gan"][0]).eval()
    z = gan.example_input(batch_size=4)
    with torch.no_grad():
        fake = gan.generator(z)
        assert torch.equal(gan(z), gan.discriminator(fake))
    assert fake.shape == (4, 64) and 0 <= fake.min() and fake.max() <= 1   # digits' range
    tanh = zoo.build(SMALL["gan"][0] + ",output=tanh").eval()
    tanh.load_state_dict(gan.state_dict())
    with torch.no_grad():   # the same pre-activation, read through tanh instead of sigmoid
        assert torch.allclose(tanh.generator(z), 2 * torch.sigmoid(2 * torch.logit(fake)) - 1,
                              atol=1e-4)
    assert gan.sample(5).shape == (5, 64)
    W = 16
    assert _n(gan.discriminator) == (64 * W + W) + (W * W + W) + (W + 1)
    assert _n(gan.generator) == (6 * W + W + 2 * W) + (W * W + W + 2 * W) + (W * 64 + 64)
    with pytest.raises(LayerscopeError, match=r"noise of shape \(batch, 6\).*discriminator"):
        gan(torch.randn(2, 64))
    with pytest.raises(LayerscopeError, match="64 features"):
        gan.discriminator(torch.randn(2, 10))


# -- options and the `layerscope zoo` command ----------------------------------------------------
def test_every_option_is_described():
    for name in zoo.names():
        opts = zoo.options(name)
        assert [o.name for o in opts] == [f.name for f in dataclasses.fields(zoo.config_class(name))]
        assert all(o.help for o in opts), [o.name for o in opts if not o.help]
        built = dataclasses.asdict(zoo.build_config(name))
        assert {o.name: o.default for o in opts} == built
    sep = next(o for o in zoo.options("cnn-dw") if o.name == "separable")
    assert sep.default is True and "preset by 'cnn-dw'" in sep.help
    assert next(o for o in zoo.options("cnn") if o.name == "channels").type.startswith("list")


def test_cli_lists_the_zoo_with_defaults(capsys):
    from layerscope.cli import main

    assert main(["zoo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(zoo.names())
    gpt = next(r for r in rows if r["name"] == "gpt")["options"]
    assert gpt["depth"] == zoo.build_config("gpt").depth and gpt["tie_weights"] is True
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in zoo.names()) and "depth=2" in out


def test_cli_shows_one_network(capsys):
    from layerscope.cli import main

    assert main(["zoo", "gpt:depth=2,width=32,heads=2,vocab_size=50", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    net = zoo.build("gpt:depth=2,width=32,heads=2,vocab_size=50")
    assert info["task"] == "causal-lm" and info["parameters"] == _n(net)
    assert info["output_shape"] == [2, 64, 50] and info["input_dtype"] == "int64"
    assert info["blocks"] == ["blocks.0", "blocks.1"]
    depth = next(o for o in info["options"] if o["name"] == "depth")
    assert depth["value"] == 2 and depth["default"] == 3
    assert info["example"]["cli"] == "layerscope summary gpt:depth=2,width=32"
    namespace: dict = {}
    exec(info["example"]["python"], namespace)          # the shown Python runs as printed
    assert namespace["out"].shape == (2, 64, 128)
    assert main(["zoo", "resnet"]) == 0
    out = capsys.readouterr().out
    assert "options of resnet" in out and "blocks: 3" in out


@pytest.mark.parametrize("args, fragment", [
    (["zoo", "vgg"], "unknown zoo model 'vgg'; known ones: mlp"),
    (["zoo", "mlp:depth=0"], "depth=0 must be a positive whole number"),
    (["zoo", "gpt:colour=red"], "valid keys: vocab_size"),
])
def test_cli_bad_names_exit_2_with_one_line(capsys, args, fragment):
    from layerscope.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_gpt_learns_below_the_unigram_entropy():
    text = "the cat sat on the mat. the dog sat on the log. " * 8
    ids = torch.tensor([ord(c) for c in text])
    counts = np.bincount(ids.numpy(), minlength=128)[np.unique(ids.numpy())]
    p = counts / counts.sum()
    unigram = float(-(p * np.log(p)).sum())                  # nats per character
    torch.manual_seed(0)
    gpt = zoo.build("gpt:width=32,depth=2,heads=2,seq_len=24")
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-2)
    windows = ids.unfold(0, 25, 1)                           # (N, 25): inputs and next tokens
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):
        batch = windows[torch.randint(0, len(windows), (16,), generator=generator)]
        logits = gpt(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 128), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gpt.eval()
    with torch.no_grad():
        logits = gpt(windows[:, :-1])
        final = nn.functional.cross_entropy(logits.reshape(-1, 128), windows[:, 1:].reshape(-1))
    assert final.item() < 0.5 * unigram, (final.item(), unigram)   # about 0.44 vs 2.33
