"""Exact resume after real signals: SIGINT and SIGKILL delivered to a training process at chosen
steps (between steps, in the middle of a forward pass, inside the optimizer step), then
``resume=True``; the final weights must be bit-identical to an uninterrupted run's, and the
history, the per-layer metrics file and the flags identical too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerscope.errors import LayerscopeError
from layerscope.train import train

TINY_CNN = "cnn:channels=4x8,hidden=16,image_size=8,dropout=0.2"   # BatchNorm + dropout

# A training process that sends itself `sig` while step `at` (0-based) is running, at `where`:
# "forward" (inside the model's forward pass) or "optimizer" (inside optimizer.step()).
DRIVER = r'''
import os, signal, sys
import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook
from layerscope.train import train

out, sig, at, where, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
g = torch.Generator().manual_seed(0)
x = torch.randn(96, 1, 8, 8, generator=g)
y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
done = [0]

def fire():
    if sig != "none" and done[0] == at:
        done[0] = -1
        os.kill(os.getpid(), getattr(signal, sig))

def on_forward(module, args):
    if where == "forward" and module.training:
        fire()

def on_optimizer(opt, args, kwargs):
    if where == "optimizer":
        fire()

def after_step(step, epoch, loss):
    if done[0] >= 0:
        done[0] = step

register_module_forward_pre_hook(on_forward)
register_optimizer_step_pre_hook(on_optimizer)
r = train("%s", (x, y), out_dir=out, epochs=3, batch_size=16, lr=3e-3, seed=5, monitor_every=2,
          save_every=3, resume=resume, progress=False, plots=False, callbacks=[after_step])
print("STOPPED", r.stopped, r.steps)
''' % TINY_CNN


def _run(tmp_path, out, sig="none", at=-1, where="forward", resume=False):
    script = tmp_path / "driver.py"
    if not script.exists():
        script.write_text(DRIVER)
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, str(script), str(out), sig, str(at), where,
                           "1" if resume else "0"], capture_output=True, text=True, env=env,
                          timeout=300)


def _final(out: Path):
    weights = load_file(str(out / "last" / "model.safetensors"))
    result = json.loads((out / "result.json").read_text())
    metrics = (out / "metrics.jsonl").read_text()
    return weights, result, metrics


def _assert_same_run(a: Path, b: Path):
    wa, ra, ma = _final(a)
    wb, rb, mb = _final(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ra["history"] == rb["history"]
    assert ra["flags"] == rb["flags"] and ra["steps"] == rb["steps"]
    assert ma == mb                         # every monitored row, written once, in order


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    proc = _run(tmp, tmp / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STOPPED finished 15" in proc.stdout
    return tmp / "run"


@pytest.mark.parametrize("sig,at,where", [
    ("SIGINT", 3, "forward"),       # mid-epoch, in the middle of a forward pass
    ("SIGINT", 7, "optimizer"),     # mid-epoch, weights half-way through an update
    ("SIGINT", 5, "forward"),       # first step of the second epoch
    ("SIGKILL", 8, "forward"),      # hard kill mid-epoch: back to the save at step 6
    ("SIGKILL", 4, "optimizer"),    # hard kill at an epoch's last step: back to step 3
    ("SIGKILL", 1, "forward"),      # before any periodic save: back to the start
])
def test_killed_then_resumed_run_is_bit_identical_to_the_straight_run(tmp_path, straight, sig,
                                                                      at, where):
    out = tmp_path / "run"
    cut = _run(tmp_path, out, sig, at, where)
    if sig == "SIGKILL":
        assert cut.returncode == -signal.SIGKILL
    else:
        assert cut.returncode == 0, cut.stderr[-2000:]
        assert f"STOPPED interrupted {at + 1}" in cut.stdout    # the running step finished
        assert f"SIGINT received at step {at + 1}" in cut.stderr
    resumed = _run(tmp_path, out, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "STOPPED finished 15" in resumed.stdout
    _assert_same_run(straight, out)


def test_cli_interrupted_from_outside_resumes_to_the_same_result(tmp_path):
    """The user's way: Ctrl-C (SIGINT from another process) whenever it lands, then --resume."""
    cmd = [sys.executable, "-m", "layerscope", "train", TINY_CNN, "digits", "--limit", "400",
           "--epochs", "3", "--batch-size", "16", "--monitor-every", "2", "--save-every", "4",
           "--no-plots", "--no-progress", "--seed", "2"]
    env = dict(os.environ, PYTHONHASHSEED="0")
    straight = subprocess.run(cmd + ["-o", str(tmp_path / "a")], capture_output=True, text=True,
                              env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(cmd + ["-o", str(tmp_path / "b")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            metrics.is_file() and metrics.stat().st_size > 2000):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    resumed = subprocess.run(cmd + ["-o", str(tmp_path / "b"), "--resume"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(tmp_path / "a", tmp_path / "b")


# -- the state file itself --------------------------------------------------------------------------
def _images(n=48):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, (x.mean(dim=(1, 2, 3)) > 0).long()


FAST = dict(progress=False, plots=False, batch_size=16)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_a_corrupt_state_file_is_a_one_line_error(tmp_path, damage):
    data = _images()
    train(TINY_CNN, data, out_dir=tmp_path, epochs=1, **FAST)
    state = tmp_path / "train_state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:300])
    elif damage == "garbage":
        state.write_bytes(b"not a torch file at all\n" * 10)
    else:
        torch.save({"weights": torch.zeros(2)}, state)
    with pytest.raises(LayerscopeError, match="train_state.pt") as info:
        train(TINY_CNN, data, out_dir=tmp_path, epochs=2, resume=True, **FAST)
    assert "\n" not in str(info.value) and "without --resume" in str(info.value)


def test_state_is_written_atomically_and_holds_every_rng(tmp_path):
    train(TINY_CNN, _images(), out_dir=tmp_path, epochs=1, **FAST)
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert state["identity"]["seed"] == 0 and state["monitor"]["metrics_bytes"] > 0
