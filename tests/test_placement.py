"""Device placement: a model spread by a device map (accelerate's CPU and disk offload, which run
without a GPU) gives the unplaced model's numbers; bad devices and dtypes are one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from layerscope.errors import LayerscopeError
from layerscope.models import load_model
from layerscope.placement import check_dtype, resolve_device

TEXTS = [f"the {w} sat on mat {i}" for i, w in enumerate(["cat", "dog", "owl", "fox", "bee", "ant", "cow"])]
DISK_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu",
            "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": "disk"}


def _weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_disk_offloaded_model_gives_the_unplaced_numbers(llama_folder):
    from layerscope.analyses.importance import layer_importance
    from layerscope.analyses.lens import logit_lens
    from layerscope.reducers import Covariance, Moments
    from layerscope.sweep import sweep

    plain = load_model(str(llama_folder))
    before = _weights(plain.module)
    placed = load_model(str(llama_folder), device_map=DISK_MAP)
    assert placed.meta["device_map"] == DISK_MAP
    assert any(p.device.type == "meta" for p in placed.module.parameters())   # really offloaded
    results = []
    for model in (plain, placed):
        reds = [Moments(view="tokens"), Covariance()]
        sweep(model, TEXTS, reducers=reds, batch_size=3, progress=False)
        lens = logit_lens(model, TEXTS, batch_size=3)
        imp = layer_importance(model, TEXTS, batch_size=3)
        results.append([reds[0].result().mean, reds[0].result().std,
                        [reds[1].result().cov[n] for n in reds[1].result().layers],
                        lens.kl, lens.accuracy, imp.metric, imp.block_influence])
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6, atol=1e-7)
    after = _weights(plain.module)
    assert all(torch.equal(before[k], after[k]) for k in before)   # the unplaced model untouched


def test_auto_device_map_on_a_cpu_machine(llama_folder):
    from layerscope.reducers import Moments
    from layerscope.sweep import sweep

    placed = load_model(str(llama_folder), device_map="auto")
    assert set(placed.meta["device_map"].values()) <= {"cpu", 0, "disk"}
    a, b = Moments(), Moments()
    sweep(load_model(str(llama_folder)), TEXTS, reducers=[a], batch_size=4, progress=False)
    sweep(placed, TEXTS, reducers=[b], batch_size=4, progress=False)
    np.testing.assert_allclose(a.result().mean, b.result().mean, rtol=1e-6)


def test_a_module_you_pass_is_never_moved():
    net = torch.nn.Linear(3, 2)
    with pytest.raises(LayerscopeError, match="never moves a model you pass in"):
        load_model(net, device="cpu")
    assert next(net.parameters()).device.type == "cpu"


@pytest.mark.parametrize("device,message", [
    ("tpu9", "unknown device 'tpu9'"),
    ("cuda:99" if torch.cuda.is_available() else "cuda", "cuda"),
])
def test_bad_devices_are_one_line_errors(device, message):
    with pytest.raises(LayerscopeError, match=message) as info:
        resolve_device(device)
    assert "\n" not in str(info.value)


def test_a_dtype_the_device_cannot_run_is_refused():
    check_dtype(torch.device("cpu"), torch.bfloat16)   # the CPU runs bfloat16
    with pytest.raises(LayerscopeError, match="cannot run on cpu") as info:
        check_dtype(torch.device("cpu"), torch.float8_e4m3fn)
    assert "\n" not in str(info.value)


def test_device_map_naming_no_module_is_refused(llama_folder):
    with pytest.raises(LayerscopeError, match="no submodule"):
        load_model(str(llama_folder), device_map={"model.nowhere": "cpu", "": "cpu"})


def test_cli_device_options(llama_folder, tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "layerscope", "sweep", str(llama_folder), str(data), "--json", *extra],
        capture_output=True, text=True, timeout=300)
    bad = run("--device", "tpu9")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: unknown device")
    dmap = tmp_path / "map.json"
    dmap.write_text(json.dumps(DISK_MAP))
    plain, placed = run(), run("--device-map", str(dmap))
    assert plain.returncode == 0 and placed.returncode == 0, placed.stderr
    a, b = json.loads(plain.stdout), json.loads(placed.stdout)
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        assert rb["mean"] == pytest.approx(ra["mean"], rel=1e-6)
