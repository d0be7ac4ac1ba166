"""Every reducer: state_dict()/load_state_dict() round trips (a sweep checkpointed and resumed
gives the one-run result), and merge returns the merged state leaving both inputs unchanged."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from layerscope.data import Dataset
from layerscope.errors import LayerscopeError
from layerscope.sweep import sweep


def _plain(x):
    """A result or state as nested plain values (tensors and arrays as lists) for comparison."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dtype, tuple(x.shape), x.detach().cpu().double().flatten().tolist())
    if isinstance(x, np.ndarray):
        return ("array", x.dtype.str, x.shape, x.astype(float).flatten().tolist()
                if x.dtype != object else [_plain(v) for v in x.flatten()])
    if isinstance(x, np.random.Generator):
        return ("rng", _plain(x.bit_generator.state))
    if isinstance(x, torch.Generator):
        return ("torch rng", x.get_state().tolist())
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "__dict__") and not callable(x):
        return (type(x).__name__, _plain(vars(x)))
    return x


def _same(a, b) -> bool:
    return repr(_plain(a)) == repr(_plain(b))   # NaN-safe: nan == nan as text


def _close(a, b, rtol=1e-6) -> bool:
    fa, fb = [], []

    def flat(x, out):
        if isinstance(x, (list, tuple)):
            for v in x:
                flat(v, out)
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                flat(x[k], out)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(float(x))
    flat(_plain(a), fa)
    flat(_plain(b), fb)
    return len(fa) == len(fb) and np.allclose(fa, fb, rtol=rtol, atol=1e-9, equal_nan=True)


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(60, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return net, Dataset("toy", x, y, "tensor", "classification")


def _factories(ds):
    from layerscope.analyses import pictures, probe, similarity
    from layerscope.analyses.importance import AngularDistance, BlockInfluence
    from layerscope.analyses.similarity import _Rows
    from layerscope.reducers import (Covariance, CrossCovariance, LabelCollector, Moments,
                                     NonFinite, Reservoir)

    return {
        "Moments": lambda: Moments(),
        "Covariance": lambda: Covariance(),
        "CrossCovariance": lambda: CrossCovariance("0", "2"),
        "Reservoir": lambda: Reservoir(capacity=20, seed=1),
        "NonFinite": lambda: NonFinite(),
        "LabelCollector": lambda: LabelCollector(),
        "BlockInfluence": lambda: BlockInfluence(layers=["2"]),
        "AngularDistance": lambda: AngularDistance(layers=["2"], view="mean"),
        "ProbeStats": lambda: probe.reducers(ds, seed=0)[0],
        "CKAStats": lambda: similarity.reducers(sample=30, seed=0)[0],
        "_Rows": lambda: _Rows("mean"),
        "pictures": lambda: pictures.reducers(sample=30, seed=0)[0],
    }


NAMES = ["Moments", "Covariance", "CrossCovariance", "Reservoir", "NonFinite", "LabelCollector",
         "BlockInfluence", "AngularDistance", "ProbeStats", "CKAStats", "_Rows", "pictures"]


def _result(red):
    if callable(getattr(red, "rows", None)):   # similarity's kept rows
        return red.rows()
    try:
        return red.result()
    except (TypeError, NotImplementedError):   # result needs arguments: compare the state
        return red.state_dict()


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_and_resume_gives_the_one_run_result(name, net_and_data):
    net, ds = net_and_data
    make = _factories(ds)[name]
    whole = sweep(net, ds, reducers=[make()], batch_size=10, progress=False).reducers[0]
    first = sweep(net, ds.subset(range(30)), reducers=[make()], batch_size=10,
                  progress=False).reducers[0]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)          # a checkpoint on disk, read back
    buffer.seek(0)
    resumed = make().load_state_dict(torch.load(buffer, weights_only=False))
    assert _same(resumed.state_dict(), first.state_dict())
    sweep(net, ds, reducers=[resumed], batch_size=10, start=30, progress=False)
    assert _same(_result(resumed), _result(whole))


@pytest.mark.parametrize("name", NAMES)
def test_merge_returns_the_merged_state_and_leaves_both_inputs(name, net_and_data):
    net, ds = net_and_data
    make = _factories(ds)[name]
    a = sweep(net, ds.subset(range(30)), reducers=[make()], batch_size=10, progress=False).reducers[0]
    b = sweep(net, ds, reducers=[make()], batch_size=10, start=30, progress=False).reducers[0]
    whole = sweep(net, ds, reducers=[make()], batch_size=10, progress=False).reducers[0]
    before_a, before_b = a.state_dict(), b.state_dict()
    merged = a.merge(b)
    assert merged is not a and merged is not b
    assert _same(a.state_dict(), before_a) and _same(b.state_dict(), before_b)
    if name not in ("Reservoir", "pictures", "CKAStats"):     # samples: same size, other rows
        assert _close(_result(merged), _result(whole))


def test_load_state_dict_refuses_another_kind():
    from layerscope.reducers import Covariance, Moments

    with pytest.raises(LayerscopeError, match="cannot load a Moments state into Covariance"):
        Covariance().load_state_dict(Moments().state_dict())
    with pytest.raises(LayerscopeError, match="not a reducer state"):
        Moments().load_state_dict({"sums": 1})


def test_lens_reducer_state_and_merge():
    from transformers import LlamaConfig, LlamaForCausalLM

    from layerscope.analyses.lens import LensReducer, lens_stack

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    lm = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(1, 40, (12, 6))
    stack = lens_stack(lm)
    whole = sweep(lm, ids, reducers=[LensReducer(stack)], batch_size=4, progress=False).reducers[0]
    a = sweep(lm, ids[:8], reducers=[LensReducer(stack)], batch_size=4, progress=False).reducers[0]
    b = sweep(lm, ids, reducers=[LensReducer(stack)], batch_size=4, start=8,
              progress=False).reducers[0]
    sa, sb = a.state_dict(), b.state_dict()
    assert "stack" not in sa["state"]                 # the sums only, never the model
    merged = a.merge(b)
    assert _same(a.state_dict(), sa) and _same(b.state_dict(), sb)
    assert _close(merged.result(), whole.result())
    resumed = LensReducer(stack).load_state_dict(sa)
    sweep(lm, ids, reducers=[resumed], batch_size=4, start=8, progress=False)
    assert _same(resumed.result(), whole.result())
