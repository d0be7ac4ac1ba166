"""Read-only analyses never change the model, even one left in train() mode with BatchNorm and
dropout: every flag, parameter and buffer (running statistics, num_batches_tracked) is as before,
and the numbers are those of eval mode (dropout off)."""

from __future__ import annotations

import pytest
import torch

from layerscope import zoo
from layerscope.data import Dataset


def _snapshot(module):
    return ({k: v.detach().clone() for k, v in module.state_dict().items()},
            {name: m.training for name, m in module.named_modules()})


def _assert_same(module, snap):
    state, flags = snap
    now = module.state_dict()
    assert set(now) == set(state)
    changed = [k for k, v in now.items() if not torch.equal(v, state[k])]
    assert not changed, f"changed by a read-only analysis: {changed[:5]}"
    assert {name: m.training for name, m in module.named_modules()} == flags


@pytest.fixture
def cnn_train():
    torch.manual_seed(0)
    net = zoo.build("cnn").train()
    net.features[1].eval() if hasattr(net, "features") else None   # mixed modes must come back too
    return net


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 28, 28, generator=g)
    return Dataset("toy-images", x, torch.arange(40) % 3, "image", "classification")


def _run(kind, net, data, tmp_path):
    if kind == "sweep":
        from layerscope.reducers import Moments
        from layerscope.sweep import sweep

        return sweep(net, data, reducers=[Moments()], batch_size=16, progress=False)
    if kind == "probe":
        from layerscope.analyses.probe import probe

        return probe(net, data, batch_size=16)
    if kind == "similarity":
        from layerscope.analyses.similarity import similarity

        return similarity(net, data, batch_size=16)
    if kind == "embed":
        from layerscope.analyses.pictures import embed

        return embed(net, data, batch_size=16)
    if kind == "feature maps":
        from layerscope.analyses.pictures import feature_maps

        return feature_maps(net, data.items[0], "features.0" if hasattr(net, "features") else 0)
    if kind == "early exit":
        from layerscope.surgery.early_exit import early_exit

        return early_exit(net, data, batch_size=16)
    if kind == "prune sensitivity":
        from layerscope.surgery.sensitivity import prune_sensitivity

        return prune_sensitivity(net, data, sparsities=[0.5], batch_size=16)
    if kind == "record":
        from layerscope.store import record

        return record(net, data, tmp_path / "rec", batch_size=16, progress=False)
    if kind == "importance":
        from layerscope.analyses.importance import layer_importance

        return layer_importance(net, data, batch_size=16)
    if kind == "importance (resnet)":
        from layerscope.analyses.importance import layer_importance

        torch.manual_seed(0)
        resnet = zoo.build("resnet").train()
        snap = _snapshot(resnet)
        layer_importance(resnet, data, batch_size=16)
        _assert_same(resnet, snap)
        return None
    if kind == "measure":
        import copy

        from layerscope.surgery.measure import measure

        return measure(net, copy.deepcopy(net), data, operation="copy", repeats=1)
    raise AssertionError(kind)


KINDS = ["sweep", "probe", "similarity", "embed", "feature maps", "early exit",
         "prune sensitivity", "record", "importance", "importance (resnet)", "measure"]


@pytest.mark.parametrize("kind", KINDS)
def test_read_only_analysis_leaves_a_training_model_as_it_was(kind, cnn_train, images, tmp_path):
    snap = _snapshot(cnn_train)
    _run(kind, cnn_train, images, tmp_path)
    _assert_same(cnn_train, snap)


def test_sweep_numbers_are_eval_mode_numbers(cnn_train, images):
    from layerscope.reducers import Moments
    from layerscope.sweep import sweep

    a = sweep(cnn_train, images, reducers=[Moments()], batch_size=16, progress=False).reducers[0]
    ref = zoo.build("cnn")
    ref.load_state_dict(cnn_train.state_dict())
    b = sweep(ref.eval(), images, reducers=[Moments()], batch_size=16, progress=False).reducers[0]
    assert a.result().layers == b.result().layers
    assert a.result().mean == b.result().mean and a.result().std == b.result().std


def test_lens_and_tuned_lens_leave_a_training_lm_as_it_was():
    from layerscope.analyses.lens import logit_lens
    from layerscope.analyses.tuned_lens import train_tuned_lens
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.5)
    lm = LlamaForCausalLM(cfg).train()
    ids = torch.randint(0, 50, (10, 6))
    snap = _snapshot(lm)
    res = logit_lens(lm, ids, batch_size=4)
    assert res.kl[-1] < 1e-6          # the last layer is the model's own (eval-mode) logits
    train_tuned_lens(lm, ids, steps=2, batch_size=4)
    _assert_same(lm, snap)
