"""The zoo: specs parse to typed configs, every network builds and runs, and the MLP learns."""

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
    ("cnn:kernel_size=4", "odd"), ("cnn:channels=8x8x8x8x8x8", "at most 4"),
    ("mlp:dropout=1.0", "below 1"),
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


def test_residual_changes_structure_and_function():
    torch.manual_seed(0)
    plain, skip = zoo.build("mlp:width=16,depth=3"), zoo.build("mlp:width=16,depth=3,residual=true")
    skip.load_state_dict(plain.state_dict())  # same weights...
    x = torch.randn(5, 64)
    assert not torch.allclose(plain(x), skip(x))  # ...different function
    block = skip.blocks[1]
    assert torch.allclose(block(x[:, :16]), x[:, :16] + torch.relu(block.linear(x[:, :16])))
    assert [b.residual for b in skip.blocks] == [False, True, True]  # the 64 -> 16 layer cannot skip
    cnn_plain, cnn_skip = zoo.build("cnn:channels=4x8"), zoo.build("cnn:channels=4x8,residual=true")
    assert cnn_plain.blocks[0].shortcut is None
    assert isinstance(cnn_skip.blocks[0].shortcut, nn.Conv2d)  # 1 -> 4 channels: a 1x1 projection
    assert _n(cnn_skip) == _n(cnn_plain) + (1 * 4 + 4) + (4 * 8 + 8)


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
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    x_train, x_test = (torch.tensor(a, dtype=torch.float32) for a in (x_train, x_test))
    y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)
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
