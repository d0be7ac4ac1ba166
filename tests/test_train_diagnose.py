"""Diagnoses that fire: networks built to have each problem get the flag (layer and step), and a
healthy run gets none. Every flag is checked against the metrics rows or the history by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from layerscope.train import train
from layerscope.train.diagnose import chance_baseline, diagnose
from layerscope.train.monitors import read_metrics

FAST = dict(progress=False, plots=False)


def _kinds(result):
    return {f["kind"] for f in result.flags}


def _grads(rows, step, kind="block"):
    return {r["layer"]: r["grad_norm"] for r in rows
            if r["step"] == step and r["kind"] == kind and r["grad_norm"] is not None}


def test_deep_tanh_mlp_with_sgd_is_flagged_vanishing_and_stuck_at_chance(tmp_path):
    r = train("mlp:depth=20,activation=tanh", "digits", out_dir=tmp_path, optimizer="sgd",
              limit=600, epochs=4, batch_size=32, monitor_every=10, plots=True, progress=False)
    kinds = _kinds(r)
    assert {"vanishing", "stuck-at-chance"} <= kinds and "exploding" not in kinds
    van = next(f for f in r.flags if f["kind"] == "vanishing")
    assert van["rule"] == "relative" and van["step"] == 0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    g = _grads(rows, 0)
    names = [f"blocks.{i}" for i in range(20)]
    depth = np.array([g[n] for n in names])
    assert depth[0] / depth[-1] < 1e-3                      # the problem as built: 1e4 apart
    i = names.index(van["layer"])
    later = depth[i + 1:].max()
    assert depth[i] * 1e3 <= max(later, np.median(depth))    # the flagged layer qualifies...
    assert all(depth[j] * 1e3 > max(depth[j + 1:].max(), np.median(depth))
               for j in range(i + 1, 19))                  # ...and is the deepest that does
    chance = next(f for f in r.flags if f["kind"] == "stuck-at-chance")
    held = r.settings["n_held_out"]
    assert chance["baseline"] >= 0.1 and r.history[-1]["accuracy"] <= chance["bar"]
    assert chance["bar"] == pytest.approx(
        chance["baseline"] + 2 * np.sqrt(chance["baseline"] * (1 - chance["baseline"]) / held))
    saved = json.loads((tmp_path / "result.json").read_text())
    assert [f["kind"] for f in saved["flags"]] == [f["kind"] for f in r.flags]
    assert (tmp_path / "grad_norm_by_depth.png").is_file()
    assert str(tmp_path / "grad_norm_by_depth.png") in r.plots
    fig = r.plot(kind="gradients")
    assert fig.axes[0].get_yscale() == "log"


def test_relus_with_a_large_negative_bias_are_flagged_dead(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                        nn.Linear(12, 2))
    with torch.no_grad():
        net[2].bias[:9] = -30.0                              # 9 of 12 units can never fire
    hidden = torch.relu(net[2](torch.relu(net[0](x)))).detach().numpy()
    assert (hidden[:, :9] == 0).all()                         # by hand: they are dead
    r = train(net, (x, y), out_dir=tmp_path, epochs=3, batch_size=20, monitor_every=1,
              task="classification", lr=1e-3, **FAST)
    dead = [f for f in r.flags if f["kind"] == "dead-units"]
    assert [f["layer"] for f in dead] == ["3"]
    assert dead[0]["step"] == 0 and dead[0]["dead_share"] >= 9 / 12


def test_resnet_with_an_absurd_learning_rate_is_flagged(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    spec = "resnet:image_size=8,width=4,depth=2,n_classes=2"
    r = train(spec, (x, y), out_dir=tmp_path, optimizer="sgd", lr=1e3, epochs=4, batch_size=16,
              monitor_every=2, **FAST)
    boom = next(f for f in r.flags if f["kind"] == "exploding")
    rows = read_metrics(tmp_path / "metrics.jsonl")
    mine = [x for x in rows if x["layer"] == boom["layer"] and x["kind"] == "module"]
    assert boom["rule"] == "update" and boom["step"] == 0
    assert mine[0]["update_ratio"] >= 1                   # the first step dwarfs the weights
    assert max(x["weight_norm"] for x in mine) >= 1e3 * mine[0]["weight_norm"]
    ok = train(spec, (x, y), out_dir=tmp_path / "ok", optimizer="sgd", lr=1e-2, epochs=4,
               batch_size=16, monitor_every=2, **FAST)
    assert not _kinds(ok) & {"exploding", "vanishing", "divergence"}


def test_rising_held_out_loss_is_flagged_overfitting_at_its_best_epoch(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 20, generator=g)
    y = torch.randint(0, 2, (80,), generator=g)              # labels with nothing to learn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 2))
    r = train(net, (x, y), out_dir=tmp_path, epochs=12, batch_size=16, lr=1e-2, held_out=0.5,
              monitor_every=0, task="classification", **FAST)
    over = next(f for f in r.flags if f["kind"] in ("overfitting", "divergence"))
    losses = [row["eval_loss"] for row in r.history]
    best = int(np.argmin(losses))
    assert over["kind"] == "overfitting" and over["step"] == r.history[best]["step"]
    assert losses[-1] > losses[-2] > losses[-3] and losses[-1] >= 1.1 * losses[best]
    assert r.history[-1]["train_loss"] < r.history[best]["train_loss"]


def test_a_healthy_run_raises_no_flag(tmp_path):
    r = train("mlp", "digits", out_dir=tmp_path, limit=600, epochs=4, batch_size=32,
              monitor_every=5, **FAST)
    assert r.history[-1]["accuracy"] > 0.8
    assert r.flags == []


def test_chance_baseline_and_a_flat_history():
    b = chance_baseline(torch.tensor([0] * 70 + [1] * 20 + [2] * 10))
    assert b["accuracy"] == 0.7 and b["classes"] == 3
    history = [{"epoch": e, "step": 30 * e, "accuracy": 0.7, "eval_loss": 1.0,
                "train_loss": 1.0} for e in (1, 2, 3)]
    flags = diagnose([], history, task="classification", baseline=b)
    assert [(f["kind"], f["step"]) for f in flags] == [("stuck-at-chance", 30)]
    assert diagnose([], history[:1], task="classification", baseline=b) == []   # too early


def test_cli_prints_the_flags_and_keeps_them_in_result_json(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "layerscope", "train", "mlp:depth=20,activation=tanh", "digits",
         "--optimizer", "sgd", "--limit", "600", "--epochs", "4", "--batch-size", "32",
         "--monitor-every", "10", "--no-progress", "-o", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "flag: vanishing gradient from layer 'blocks." in proc.stderr
    assert "flag: stuck at chance" in proc.stderr
    assert "flag(s): stuck-at-chance, vanishing" in proc.stdout
    assert (out / "grad_norm_by_depth.png").is_file()
    assert {f["kind"] for f in json.loads((out / "result.json").read_text())["flags"]} == {
        "vanishing", "stuck-at-chance"}
