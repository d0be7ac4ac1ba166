"""Tests for layerscope.train: determinism, resume, checks, freezing, monitors, NaN, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from layerscope import zoo
from layerscope.errors import LayerscopeError
from layerscope.train import NonFiniteLossError, train
from layerscope.train.freezing import param_groups
from layerscope.train.monitors import read_metrics

TINY_CNN = "cnn:channels=4x8,hidden=16,image_size=8,dropout=0.2"
FAST = dict(progress=False, plots=False)


def _images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return x, y


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- determinism and resume ---------------------------------------------------------------------------
def test_two_runs_with_one_seed_give_identical_weights(tmp_path):
    data = _images()
    kw = dict(epochs=2, batch_size=16, lr=3e-3, seed=7, monitor_every=3, **FAST)
    r1 = train(TINY_CNN, data, out_dir=tmp_path / "a", **kw)
    r2 = train(TINY_CNN, data, out_dir=tmp_path / "b", **kw)
    assert _same(_weights(tmp_path / "a" / "last"), _weights(tmp_path / "b" / "last"))
    assert r1.history == r2.history
    r3 = train(TINY_CNN, data, out_dir=tmp_path / "c", **{**kw, "seed": 8})
    assert not _same(_weights(tmp_path / "a" / "last"), _weights(tmp_path / "c" / "last"))
    assert r3.history != r1.history


def test_interrupt_then_resume_reaches_the_uninterrupted_weights(tmp_path):
    data = _images()
    kw = dict(epochs=2, batch_size=16, lr=3e-3, seed=3, monitor_every=4, **FAST)
    straight = train(TINY_CNN, data, out_dir=tmp_path / "straight", **kw)

    def interrupt(step, epoch, loss):
        if step == 3:               # in the middle of the first epoch (5 steps per epoch)
            raise KeyboardInterrupt

    cut = train(TINY_CNN, data, out_dir=tmp_path / "cut", callbacks=[interrupt], **kw)
    assert cut.stopped == "interrupted" and cut.steps == 3
    assert (tmp_path / "cut" / "last" / "model.safetensors").is_file()
    resumed = train(TINY_CNN, data, out_dir=tmp_path / "cut", resume=True, **kw)
    assert resumed.stopped == "finished" and resumed.steps == straight.steps
    assert _same(_weights(tmp_path / "straight" / "last"), _weights(tmp_path / "cut" / "last"))
    assert resumed.history == straight.history


def test_resume_without_state_or_with_other_settings_is_refused(tmp_path):
    data = _images(48)
    with pytest.raises(LayerscopeError, match="nothing to resume"):
        train(TINY_CNN, data, out_dir=tmp_path, epochs=1, resume=True, **FAST)
    train(TINY_CNN, data, out_dir=tmp_path, epochs=1, batch_size=16, **FAST)
    with pytest.raises(LayerscopeError, match="batch_size=16"):
        train(TINY_CNN, data, out_dir=tmp_path, epochs=2, batch_size=8, resume=True, **FAST)


# -- loss / output checks and bad input ---------------------------------------------------------------------
def _xy(n=40, classes=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_softmax_output_with_cross_entropy_is_refused(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=-1))
    with pytest.raises(LayerscopeError, match="softmax.*cross-entropy"):
        train(net, _xy(), out_dir=tmp_path, epochs=1, task="classification", **FAST)


def test_logits_with_nll_are_refused_and_log_softmax_with_nll_trains(tmp_path):
    with pytest.raises(LayerscopeError, match="'nll' takes log-probabilities.*logits"):
        train(nn.Linear(4, 3), _xy(), out_dir=tmp_path / "a", epochs=1, loss="nll",
              task="classification", **FAST)
    net = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=-1))
    r = train(net, _xy(), out_dir=tmp_path / "b", epochs=1, loss="nll", task="classification",
              **FAST)
    assert 0.0 <= r.history[0]["accuracy"] <= 1.0


def test_regression_head_with_classification_loss_is_refused(tmp_path):
    net = zoo.build("mlp:in_features=4,task=regression,width=8,depth=1")
    with pytest.raises(LayerscopeError, match=r"regression head \(1 output unit\).*'cross-entropy'"):
        train(net, _xy(), out_dir=tmp_path, epochs=1, task="classification", **FAST)


def test_classification_head_with_mse_on_class_labels_is_refused(tmp_path):
    net = zoo.build("mlp:in_features=4,n_classes=3,width=8,depth=1")
    with pytest.raises(LayerscopeError, match="'mse' is a regression loss.*3 units"):
        train(net, _xy(), out_dir=tmp_path, epochs=1, loss="mse", **FAST)


def test_labels_beyond_the_head_are_refused(tmp_path):
    net = zoo.build("mlp:in_features=4,n_classes=2,width=8,depth=1")
    with pytest.raises(LayerscopeError, match="class 4 but the output layer has 2 units"):
        train(net, _xy(classes=5), out_dir=tmp_path, epochs=1, **FAST)


def test_data_of_the_wrong_shape_names_both_shapes(tmp_path):
    x = torch.randn(30, 5, 5)
    with pytest.raises(LayerscopeError, match=r"\(5, 5\).*\(1, 8, 8\)"):
        train(TINY_CNN, (x, torch.zeros(30).long()), out_dir=tmp_path, epochs=1, **FAST)


def test_unknown_model_and_bad_settings_are_refused(tmp_path):
    with pytest.raises(LayerscopeError, match="unknown model 'nosuch'.*cnn"):
        train("nosuch", _xy(), out_dir=tmp_path, **FAST)
    with pytest.raises(LayerscopeError, match="width=0"):
        train("mlp:width=0", _xy(), out_dir=tmp_path, **FAST)
    with pytest.raises(LayerscopeError, match="epochs=0"):
        train("mlp", _xy(), out_dir=tmp_path, epochs=0, **FAST)
    with pytest.raises(LayerscopeError, match="freeze_bn='x'"):
        train(TINY_CNN, _images(32), out_dir=tmp_path, freeze_bn="x", **FAST)


# -- NaN / inf -------------------------------------------------------------------------------------------
class Blowup(nn.Module):
    """Passes its input through for two training calls, then multiplies it by inf."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.calls += 1
        return x * math.inf if self.calls > 2 else x


def test_non_finite_loss_stops_names_the_layer_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Blowup(), nn.Linear(8, 3))
    x, y = _xy(40)
    with pytest.raises(NonFiniteLossError) as err:
        train(net, (x, y), eval_data=(x[:8], y[:8]), out_dir=tmp_path, epochs=3, batch_size=20,
              task="classification", **FAST)
    assert err.value.layer == "2" and err.value.step == 2
    assert "layer '2'" in str(err.value) and "step 2" in str(err.value)
    good = _weights(tmp_path / "last")        # written after epoch 1 (steps 0 and 1)
    assert all(torch.isfinite(t).all() for t in good.values())
    assert err.value.result.stopped == "non-finite" and len(err.value.result.history) == 1


# -- freezing, BatchNorm policy and per-layer learning rates ----------------------------------------------------
def _bn_state(net, prefix):
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith(prefix)}


@pytest.mark.parametrize("policy", ["none", "stats", "affine", "both"])
def test_frozen_blocks_stay_fixed_and_the_batchnorm_policy_holds(tmp_path, policy):
    torch.manual_seed(0)
    net = zoo.build(TINY_CNN)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    train(net, _images(64), out_dir=tmp_path, epochs=1, batch_size=16, lr=1e-2,
          freeze="blocks:0", freeze_bn=policy, monitor_every=0, **FAST)
    after = net.state_dict()
    for k in before:
        if k.startswith("blocks.0."):        # frozen block: weights and running stats fixed
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["blocks.1.conv.weight"], after["blocks.1.conv.weight"])
    stats_fixed = torch.equal(before["blocks.1.norm.running_mean"], after["blocks.1.norm.running_mean"])
    affine_fixed = torch.equal(before["blocks.1.norm.weight"], after["blocks.1.norm.weight"])
    assert stats_fixed == (policy in ("stats", "both"))
    assert affine_fixed == (policy in ("affine", "both"))
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert net.training and net.blocks[1].norm.training


def test_layer_learning_rates_become_param_groups_and_rate_zero_keeps_weights(tmp_path):
    torch.manual_seed(0)
    net = zoo.build("mlp:in_features=4,n_classes=3,width=8,depth=2")
    groups = param_groups(net, 0.1, layer_lr={"blocks.0": 0.01, "1": 0.0})
    by_name = {g["name"]: g for g in groups}
    assert by_name["blocks.0"]["lr"] == 0.01 and by_name["blocks.1"]["lr"] == 0.0
    assert by_name["rest"]["lr"] == 0.1
    assert {id(p) for p in by_name["blocks.0"]["params"]} == {id(p) for p in net.blocks[0].parameters()}
    assert {id(p) for p in by_name["rest"]["params"]} == {id(p) for p in net.head.parameters()}
    decayed = {g["name"]: g["lr"] for g in param_groups(net, 0.1, lr_decay=0.5)}
    assert decayed["blocks.1"] == pytest.approx(0.1) and decayed["blocks.0"] == pytest.approx(0.05)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train(net, _xy(), out_dir=tmp_path, epochs=1, batch_size=8, layer_lr={"1": 0.0},
          monitor_every=0, **FAST)
    after = net.state_dict()
    assert torch.equal(before["blocks.1.linear.weight"], after["blocks.1.linear.weight"])
    assert not torch.equal(before["blocks.0.linear.weight"], after["blocks.0.linear.weight"])


# -- monitors --------------------------------------------------------------------------------------------
def test_monitored_gradient_norms_and_updates_match_an_independent_step(tmp_path):
    spec = "mlp:in_features=4,n_classes=3,width=8,depth=2"
    x, y = _xy(32)
    train(spec, (x, y), eval_data=(x[:4], y[:4]), out_dir=tmp_path, epochs=1, batch_size=32,
          lr=0.01, seed=5, monitor_every=1, **FAST)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 0]
    torch.manual_seed(5)
    net = zoo.build(spec)
    net.train()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    opt.step()
    modules = {r["layer"]: r for r in rows if r["kind"] == "module"}
    assert set(modules) == {"blocks.0.linear", "blocks.1.linear", "head"}
    for name, row in modules.items():
        mod = net.get_submodule(name)
        grad = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in mod.parameters()))
        w0 = math.sqrt(sum(float(start[f"{name}.{k}"].norm()) ** 2 for k, _ in mod.named_parameters()))
        step = math.sqrt(sum(float((p.detach() - start[f"{name}.{k}"]).norm()) ** 2
                             for k, p in mod.named_parameters()))
        assert row["grad_norm"] == pytest.approx(grad, rel=1e-5)
        assert row["weight_norm"] == pytest.approx(w0, rel=1e-6)
        assert row["update_ratio"] == pytest.approx(step / w0, rel=1e-4)
    blocks = {r["layer"]: r for r in rows if r["kind"] == "block"}
    assert blocks["blocks.1"]["grad_norm"] == pytest.approx(modules["blocks.1.linear"]["grad_norm"])
    loss_row = next(r for r in rows if r["kind"] == "loss")
    assert loss_row["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_dead_relu_fraction_matches_a_hand_count(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        net[0].bias[:3] = -50.0          # three units can never fire
        net[0].bias[3:5] = -1.5          # two that fire only for some inputs
    x, y = _xy(24)
    w, b = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    h = np.maximum(x.numpy() @ w.T + b, 0.0)
    dead = float((h == 0).all(axis=0).mean())
    h_mean, h_std = float(h.mean()), float(h.std(ddof=1))
    train(net, (x, y), eval_data=(x[:4], y[:4]), out_dir=tmp_path, epochs=1, batch_size=24,
          monitor_every=1, task="classification", **FAST)
    row = next(r for r in read_metrics(tmp_path / "metrics.jsonl")
               if r["step"] == 0 and r["kind"] == "relu")
    assert row["layer"] == "1" and dead >= 0.3
    assert row["dead_frac"] == pytest.approx(dead)
    assert row["act_mean"] == pytest.approx(h_mean, rel=1e-5)
    assert row["act_std"] == pytest.approx(h_std, rel=1e-5)


def test_vanishing_gradients_are_flagged_with_layer_and_step(tmp_path, capsys):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)         # every unit dead: no gradient reaches layer 0
    r = train(net, _xy(), out_dir=tmp_path, epochs=1, batch_size=8, monitor_every=2,
              task="classification", progress=False, plots=True)
    flag = next(f for f in r.flags if f["layer"] == "0")
    assert flag["kind"] == "vanishing" and flag["step"] == 0
    assert "vanishing gradient in layer '0' at step 0" in capsys.readouterr().err
    assert any(p.endswith("monitor_grad_norm.png") for p in r.plots)


# -- tasks ------------------------------------------------------------------------------------------------
def test_autoencoder_reports_auroc_checked_by_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    from layerscope.train.tasks import planted_anomalies

    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 16, generator=g)
    x = base[torch.randint(0, 8, (200,), generator=g)] + 0.05 * torch.randn(200, 16, generator=g)
    held = x[:40]
    r = train("autoencoder:in_features=16,hidden=12,bottleneck=6", x[40:], eval_data=held,
              out_dir=tmp_path, epochs=8, batch_size=16, lr=1e-2, **FAST)
    from layerscope.models import load_model

    model = load_model(str(tmp_path / "last")).module
    normal = model.anomaly_score(held)
    odd = model.anomaly_score(planted_anomalies(held, seed=0)[:16])
    odd = torch.cat([odd, model.anomaly_score(planted_anomalies(held[16:32], seed=1)),
                     model.anomaly_score(planted_anomalies(held[32:], seed=2))])
    expect = roc_auc_score([0] * 40 + [1] * 40, torch.cat([normal, odd]).numpy())
    assert r.history[-1]["auroc"] == pytest.approx(expect)
    assert r.history[-1]["auroc"] > 0.9


def test_language_model_loss_is_next_token_cross_entropy(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (60, 17), generator=g)
    ids[:, 1::2] = ids[:, 0::2][:, :8] + 7          # every odd token is predictable
    r = train("gpt:depth=1,width=32,heads=2,seq_len=16,vocab_size=16", ids, out_dir=tmp_path,
              epochs=3, batch_size=16, lr=1e-2, **FAST)
    counts = torch.bincount(ids[:, 1:].reshape(-1), minlength=16).double()
    assert r.settings["unigram_entropy"] <= math.log(14) + 1e-9
    assert r.history[-1]["eval_loss"] < r.history[0]["eval_loss"]
    assert counts.sum() > 0


def test_series_windows_are_split_in_time_with_a_persistence_baseline(tmp_path):
    t = torch.arange(400, dtype=torch.float32)
    series = torch.sin(t * 0.3)
    r = train("lstm:width=8,depth=1,seq_len=12", series, out_dir=tmp_path, epochs=1,
              batch_size=32, **FAST)
    z = (series - series[:320].mean()) / series[:320].std()
    held = z[320 - 12:]
    windows = held.unfold(0, 13, 1)
    persistence = float(((windows[:, -2] - windows[:, -1]) ** 2).mean())
    assert r.history[0]["persistence_mse"] == pytest.approx(persistence, rel=1e-5)
    assert r.settings["n_held_out"] == 80


# -- CLI and real data ---------------------------------------------------------------------------------
def test_cli_trains_and_writes_a_checkpoint_load_model_reads(tmp_path, capsys):
    from layerscope.cli import main
    from layerscope.data import load_dataset
    from layerscope.models import load_model

    out = tmp_path / "run"
    code = main(["train", "mlp:width=32,depth=1", "digits", "-o", str(out), "--epochs", "3",
                 "--lr", "0.01",
                 "--limit", "300", "--no-progress", "--monitor-every", "5", "--csv",
                 "--no-plots"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "best accuracy" in printed and str(out / "best") in printed
    loaded = load_model(str(out / "best"))
    assert loaded.meta["checkpoint"]["trained"]["data"] == "digits"
    data = load_dataset("digits", limit=300, seed=0)
    _, test = data.split(test_fraction=0.2, seed=0)
    with torch.no_grad():
        acc = float((loaded.module(test.items).argmax(1) == test.labels).float().mean())
    best = json.loads((out / "result.json").read_text())["best_metric"]
    assert acc == pytest.approx(best)
    assert (out / "metrics.csv").read_text().startswith("step,epoch,layer,kind")


def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path):
    from layerscope.cli import main

    assert main(["train", "cnn", "nosuchdata", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'nosuchdata'") and "mnist" in err
    assert main(["train", "cnn", "digits", "-o", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "(64,)" in err and "(1, 28, 28)" in err and "Traceback" not in err


def test_minilm_transfer_with_frozen_blocks_and_a_new_head(tmp_path, minilm):
    from layerscope.data import load_dataset

    data = load_dataset("sentences", limit=64, seed=0)
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    r = train("minilm", data, out_dir=tmp_path, epochs=1, batch_size=32, lr=1e-3,
              freeze="blocks:0-3", max_length=24, monitor_every=1, **FAST)
    trained = _weights(tmp_path / "last")
    frozen = [k for k in trained if k.startswith("encoder.encoder.layer.") and
              int(k.split(".")[3]) <= 3]
    assert frozen and all(torch.equal(trained[k], before[k[len("encoder."):]]) for k in frozen)
    assert not torch.equal(trained["encoder.encoder.layer.5.output.dense.weight"],
                           before["encoder.layer.5.output.dense.weight"])
    assert trained["head.weight"].shape == (1, 384)
    assert r.task == "regression" and math.isfinite(r.history[0]["eval_mse"])
    rows = read_metrics(tmp_path / "metrics.jsonl")
    blocks = {x["layer"] for x in rows if x["kind"] == "block"}
    assert {f"encoder.encoder.layer.{i}" for i in range(6)} <= blocks
    assert all(x["grad_norm"] is None for x in rows
               if x["kind"] == "block" and x["layer"] == "encoder.encoder.layer.0")
    from layerscope.models import load_model

    back = load_model(str(tmp_path / "last"))
    assert back.task == "regression" and back.meta["checkpoint"]["zoo"] == "pooled-head"
    state = back.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    texts = data.items[:3]
    enc = back.encode(texts, max_length=24)
    with torch.no_grad():
        base = minilm(**enc.kwargs).last_hidden_state  # the untrained encoder, pooled by hand
    assert back(enc).shape == (3, 1)
    m = enc.kwargs["attention_mask"].unsqueeze(-1).float()
    assert not torch.allclose(back.module.head((base * m).sum(1) / m.sum(1)), back(enc))


def test_gan_alternates_generator_and_discriminator_steps_and_is_judged(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from layerscope.models import load_model

    g = torch.Generator().manual_seed(0)
    real = torch.tanh(torch.randn(120, 8, generator=g) + 0.5)
    spec = "gan:out_features=8,noise_dim=4,width=16,depth=1"
    torch.manual_seed(0)
    start = zoo.build(spec).state_dict()
    r = train(spec, real[:90], eval_data=real[90:], out_dir=tmp_path, epochs=2, batch_size=30,
              lr=1e-3, monitor_every=1, **FAST)
    gan = load_model(str(tmp_path / "last")).module.eval()
    for part in ("generator", "discriminator"):
        key = next(k for k in start if k.startswith(part) and k.endswith("linear.weight"))
        assert not torch.equal(start[key], gan.state_dict()[key]), part
    z = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake = gan.generator(z)
    x = torch.cat([real[90:], fake]).double().numpy()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    acc = cross_val_score(LogisticRegression(max_iter=500), x, [1] * 30 + [0] * 30, cv=folds).mean()
    assert r.history[-1]["c2st_accuracy"] == pytest.approx(acc)
    gap = float((real[90:].mean(0) - fake.mean(0)).abs().mean())
    assert r.history[-1]["mean_gap"] == pytest.approx(gap, rel=1e-5)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    graded = {x["layer"] for x in rows if x["kind"] == "module" and x["grad_norm"]}
    assert any(n.startswith("generator.") for n in graded)
    assert any(n.startswith("discriminator.") for n in graded)


def test_exploding_gradients_are_flagged_and_clipping_bounds_the_step(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g) * 1e4          # huge inputs: huge gradients
    y = torch.randn(32, generator=g)
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    r = train(net, (x, y), eval_data=(x[:4], y[:4]), out_dir=tmp_path, epochs=1, batch_size=32,
              optimizer="sgd", lr=0.1, clip_grad=1.0, monitor_every=1, task="regression", **FAST)
    flag = r.flags[0]
    assert flag["kind"] == "exploding" and flag["layer"] == "Linear" and flag["step"] == 0
    row = next(x for x in read_metrics(tmp_path / "metrics.jsonl") if x["kind"] == "module")
    assert row["grad_norm"] > 1e6                       # recorded before clipping
    moved = row["update_ratio"] * row["weight_norm"]
    assert moved == pytest.approx(0.1 * 1.0, rel=1e-4)  # SGD's first step: lr * clipped norm
