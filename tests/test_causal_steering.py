"""Steering vectors and sweeps against hand computations on a random-config Llama."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerscope.analyses.causal.steering import probe_vectors, steer, steering_vectors
from layerscope.errors import LayerscopeError

A = torch.randint(0, 20, (8, 6), generator=torch.Generator().manual_seed(1))
B = torch.randint(20, 40, (8, 6), generator=torch.Generator().manual_seed(2))
EVAL = torch.randint(0, 40, (5, 7), generator=torch.Generator().manual_seed(3))


def block_outputs(lm, ids):
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for b in lm.model.layers]
    with torch.no_grad():
        lm(ids)
    for h in hooks:
        h.remove()
    return outs


def test_vectors_are_differences_of_means(small_lm):
    lm = small_lm()
    v = steering_vectors(lm, A, B)
    oa, ob = block_outputs(lm, A), block_outputs(lm, B)
    for i in range(3):
        want = oa[i].reshape(-1, 16).double().mean(0) - ob[i].reshape(-1, 16).double().mean(0)
        assert torch.allclose(v[str(i)].double(), want, atol=1e-5)


def test_probe_vectors_follow_a_hand_fitted_probe(small_lm):
    from sklearn.linear_model import LogisticRegression

    lm = small_lm()
    v = probe_vectors(lm, A, B, seed=0)
    oa, ob = block_outputs(lm, A), block_outputs(lm, B)
    for i in range(3):
        xa = oa[i].double().mean(1).numpy()  # no padding: the mean over all 6 tokens
        xb = ob[i].double().mean(1).numpy()
        x = np.concatenate([xa, xb])
        y = np.r_[np.ones(len(xa)), np.zeros(len(xb))]
        sd = x.std(0) + 1e-6
        w = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit((x - x.mean(0)) / sd, y).coef_[0] / sd
        u = w / np.linalg.norm(w)
        want = u * (u @ (xa.mean(0) - xb.mean(0)))
        assert np.allclose(v[str(i)].double().numpy(), want, atol=1e-4)
        assert float(v[str(i)].double() @ torch.as_tensor(w)) > 0  # points towards group A
    res = steer(lm, A, B, EVAL, alphas=[2.0], vectors=v)
    assert len(res.effect) == 3


def test_steered_perplexity_equals_a_hand_hook_and_prefix_equals_full(small_lm):
    lm = small_lm()
    res = steer(lm, A, B, EVAL, alphas=[0.0, 3.0], batch_size=5)
    full = steer(lm, A, B, EVAL, alphas=[0.0, 3.0], batch_size=5, method="full")
    assert res.method == "prefix" and full.method == "full"
    np.testing.assert_allclose(res.damage, full.damage, rtol=1e-5)
    np.testing.assert_allclose(res.reading, full.reading, atol=1e-5)
    v = steering_vectors(lm, A, B)
    for i, block in enumerate(lm.model.layers):
        h = block.register_forward_hook(lambda m, a, o, i=i: (o[0] + 3.0 * v[str(i)],) + tuple(o[1:])
                                        if isinstance(o, tuple) else o + 3.0 * v[str(i)])
        try:
            with torch.no_grad():
                logits = lm(EVAL).logits
        finally:
            h.remove()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 40).double(), EVAL[:, 1:].reshape(-1))
        assert res.damage[i][1] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    # alpha 0 is the unsteered model
    assert all(row[0] == pytest.approx(res.damage_base, rel=1e-6) for row in res.damage)
    assert all(abs(row[0]) < 1e-9 for row in res.effect)


def test_steering_the_last_block_towards_a_moves_the_probe(small_lm):
    res = steer(small_lm(), A, B, EVAL, layers="-1", alphas=[4.0, -4.0])
    assert res.effect[0][0] > 0 > res.effect[0][1]
    assert res.probe_accuracy == 1.0


def test_bad_input(small_lm):
    lm = small_lm()
    with pytest.raises(LayerscopeError, match="at least 2 items per group"):
        steer(lm, A[:1], B, EVAL)
    with pytest.raises(LayerscopeError, match="no steering vector for block 1"):
        steer(lm, A, B, EVAL, layers="1", vectors={"0": torch.zeros(16)})


def test_result_summary_and_plot(small_lm):
    import matplotlib.pyplot as plt

    res = steer(small_lm(), A, B, EVAL, alphas=[2.0])
    assert res.summary().startswith("steering (mean-difference vectors) 3 blocks x 1 strengths: block ")
    assert res.to_dict()["kind"] == "SteerResult"
    plt.close(res.plot())
