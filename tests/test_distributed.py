"""Data-parallel passes: 2 CPU processes on gloo give the single-process results.

Each job below is a plain function run twice: once in this process (no process group: the
reference) and once on every rank of a 2-process gloo group started with
``torch.multiprocessing`` (spawn). The ranks' results must equal the reference to 1e-6 and be
the same on every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pickle
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from layerscope.distributed import shard_range
from layerscope.errors import LayerscopeError
from layerscope.reducers import Moments

TIMEOUT_S = 120   # generous for a loaded 2-core machine; failures below end long before it


# --- the harness ------------------------------------------------------------------------------


def _rank_main(rank: int, world: int, folder: str, job, args, timeout_s: float) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        out = {"ok": job(*args)}
    except LayerscopeError as exc:
        out = {"error": str(exc)}
    with open(Path(folder) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(out, f)
    dist.destroy_process_group()


def run_ranks(job, *args, world: int = 2, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """``job(*args)`` on each rank of a ``world``-process gloo group; each rank's {"ok"|"error"}."""
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.start_processes(_rank_main, args=(world, folder, job, args, timeout_s),
                                              nprocs=world, join=True, start_method="spawn")
        outs = []
        for r in range(world):
            with open(Path(folder) / f"rank{r}.pkl", "rb") as f:
                outs.append(pickle.load(f))
    return outs


def _close(a, b, path="") -> None:
    """Equal to 1e-6, recursively; keys starting with "local" hold what one rank saw itself."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if not str(k).startswith("local"):
                _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and a and not isinstance(a[0], (int, float, np.number)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, str) or a is None:
        assert a == b, path
    else:
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                                   rtol=1e-6, atol=1e-6, err_msg=path)


def _same_everywhere(job, *args, world: int = 2):
    ref = job(*args)
    outs = run_ranks(job, *args, world=world)
    for r, out in enumerate(outs):
        assert "ok" in out, f"rank {r}: {out.get('error')}"
        _close(ref, out["ok"])
    return ref, outs


# --- jobs (module level: the spawned ranks import them) ---------------------------------------


@contextlib.contextmanager
def spying(obj, name: str, log: list, note):
    """``obj.name`` wrapped to append ``note(*args)`` to ``log`` on every call, restored after."""
    real = getattr(obj, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        log.append(note(out, *args))
        return out

    with mock.patch.object(obj, name, spy):
        yield log


def bars_opened() -> contextlib.AbstractContextManager:
    """Every progress bar opened inside (``layerscope.progress.bar``), to read its total and the
    count it ended on (:func:`seen`)."""
    from layerscope import progress

    return spying(progress, "bar", [], lambda bar, *args: bar)


def seen(bars: list, prefix: str) -> list[tuple]:
    return [(b.desc, b.total, b.n) for b in bars if b.desc.startswith(prefix)]


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12),
                               torch.nn.ReLU(), torch.nn.Linear(12, 3)).eval()


def _tensor_data(n: int):
    from layerscope.data import Dataset

    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    return Dataset("toy", x, (x[:, 0] + 0.3 * x[:, 1] > 0).long(), "tensor", "classification")


class Spy(Moments):
    """Moments that also note, outside their state, the first item of every batch this process saw."""

    seen: list[int] = []

    def update(self, acts, batch):
        Spy.seen.append(batch.start)
        super().update(acts, batch)


def job_sweep_stats(n: int, batch_size: int) -> dict:
    from layerscope.reducers import Covariance, LabelCollector, NonFinite, Reservoir
    from layerscope.sweep import sweep

    Spy.seen = []
    reds = [Spy(), NonFinite(), Covariance(), Reservoir(capacity=1000), LabelCollector()]
    with bars_opened() as bars:
        run = sweep(_mlp(), _tensor_data(n), reducers=reds, batch_size=batch_size, progress=True)
    m, cov, res = reds[0].result(), reds[2].result(), reds[3].result()
    return {"items": run.n_items, "batches": run.n_batches, "mean": m.mean, "std": m.std,
            "min": m.min, "max": m.max, "nonfinite": reds[1].result().nan,
            "cov": {k: np.asarray(v) for k, v in cov.cov.items()}, "rank": cov.effective_rank,
            "sample_index": res.indices, "sample_rows": {k: v for k, v in res.rows.items()},
            "labels": reds[4].result().tolist(), "local_batches": list(Spy.seen),
            "local_bar": seen(bars, "sweep")}


def job_probe_cka(n: int) -> dict:
    from layerscope.analyses.probe import probe
    from layerscope.analyses.similarity import similarity

    pr = probe(_mlp(), _tensor_data(n), batch_size=16)
    sim = similarity(_mlp(), _tensor_data(n).items, batch_size=16)
    return {"probe": list(pr.score), "cka": np.asarray(sim.cka)}


# --- tests ------------------------------------------------------------------------------------


def test_shards_cover_every_item_once_in_order():
    for n, world, align, start in [(37, 2, 8, 0), (5, 3, 4, 0), (100, 4, 7, 9), (1, 8, 32, 0)]:
        parts = [shard_range(n, world, r, align=align, start=start) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(start, n))
        assert all(p.start % align == start % align or len(p) == 0 for p in parts)


def test_sweep_statistics_equal_single_process_uneven_split():
    ref, outs = _same_everywhere(job_sweep_stats, 37, 8)   # 5 batches: ranks get 16 and 21 items
    assert ref["items"] == 37 and outs[0]["ok"]["items"] == 37 and outs[1]["ok"]["batches"] == 5
    assert [o["ok"]["local_batches"] for o in outs] == [[0, 8], [16, 24, 32]]
    # rank 0's bar (drawn there only) counts all 37 items: its own 16 scaled by its share
    assert [o["ok"]["local_bar"] for o in outs] == [[("sweep", 37, 37)], [("sweep", 37, 37)]]


def test_sweep_with_a_rank_that_gets_no_item():
    ref, outs = _same_everywhere(job_sweep_stats, 5, 8)    # one batch: rank 0 gets nothing
    assert [o["ok"]["local_batches"] for o in outs] == [[], [0]]
    assert outs[0]["ok"]["labels"] == ref["labels"]


def test_three_ranks_one_without_items():
    _, outs = _same_everywhere(job_sweep_stats, 12, 8, world=3)   # two batches: rank 0 gets none
    assert [o["ok"]["local_batches"] for o in outs] == [[], [0], [8]]


def test_probe_scores_and_cka_equal_single_process():
    _same_everywhere(job_probe_cka, 90)


class FailsLate(Moments):
    """Moments that fail on items from 16 on: only the rank holding them fails."""

    def update(self, acts, batch):
        if batch.start >= 16:
            raise LayerscopeError(f"item {batch.start} is bad; fix the data")
        super().update(acts, batch)


def job_fails_on_one_rank() -> str:
    from layerscope.sweep import sweep

    sweep(_mlp(), _tensor_data(37), reducers=[FailsLate()], batch_size=8, progress=False)
    return "finished"


def test_a_failing_rank_stops_every_rank_with_its_error():
    import time

    t0 = time.perf_counter()
    outs = run_ranks(job_fails_on_one_rank)
    assert time.perf_counter() - t0 < 50
    assert [o.get("error") for o in outs] == ["rank 1 of 2: item 16 is bad; fix the data"] * 2


# --- record -----------------------------------------------------------------------------------


class KilledNet(torch.nn.Module):
    """The test MLP; on rank ``kill_rank`` its ``kill_at``-th forward SIGKILLs its own process."""

    def __init__(self, kill_at: int | None = None, kill_rank: int = 1):
        super().__init__()
        self.net, self.kill_at, self.kill_rank, self.calls = _mlp(), kill_at, kill_rank, 0

    def forward(self, x):
        import signal

        import torch.distributed as dist

        self.calls += 1
        if (self.kill_at is not None and dist.is_initialized()
                and dist.get_rank() == self.kill_rank and self.calls == self.kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.net(x)


def job_record(folder: str, n: int, kill_at: int | None = None) -> dict:
    from layerscope.store import Store, record

    with bars_opened() as bars:
        record(KilledNet(kill_at), _tensor_data(n).items, folder, dtype="float16", batch_size=4,
               shard_items=8, progress=True)
    store = Store(folder)
    return {"items": len(store), "shards": [s["file"] for s in store.manifest["shards"]],
            "bars": seen(bars, "record")}


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_record_from_two_ranks_is_the_single_process_store(tmp_path):
    job_record(str(tmp_path / "one"), 37)
    outs = run_ranks(job_record, str(tmp_path / "two"), 37)
    assert all("ok" in o for o in outs), outs
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 6    # 5 shards (the last of 5 items) + manifest
    for name in one:
        if name != "manifest.json":
            assert one[name] == two[name], name
    m1, m2 = (json.loads(one["manifest.json"]), json.loads(two["manifest.json"]))
    assert m1 == m2
    # rank 0's bar (drawn on rank 0 only) counts all 37 items, its own 16 scaled by its share
    assert [o["ok"]["bars"] for o in outs] == [[("record", 37, 37)]] * 2


def test_record_killed_rank_then_rerun_gives_the_same_store(tmp_path):
    job_record(str(tmp_path / "one"), 45)          # 6 shards: rank 0 takes 0-2, rank 1 takes 3-5
    folder = tmp_path / "two"
    with pytest.raises(Exception):                 # rank 1 dies in its 4th batch (its 2nd shard)
        run_ranks(job_record, str(folder), 45, 4)
    left = {p.name for p in folder.iterdir()}
    assert "shard-00003.safetensors" in left and ".manifest.json.rank-1" in left
    assert not json.loads((folder / "manifest.json").read_text())["complete"]
    before = (folder / "shard-00003.safetensors").stat().st_mtime_ns
    outs = run_ranks(job_record, str(folder), 45)
    assert all("ok" in o for o in outs), outs
    left_items = outs[0]["ok"]["bars"][0][1]    # the rerun's bar counts only what is left
    assert 0 < left_items < 45 and outs[0]["ok"]["bars"][0][2] == left_items
    assert (folder / "shard-00003.safetensors").stat().st_mtime_ns == before   # resumed, not redone
    assert _files(tmp_path / "one") == _files(folder)


# --- a tiny Llama: the lens, importance and the command line under torchrun --------------------

TEXTS = [f"the {w} sat on the mat number {i}" for i, w in
         enumerate(["cat", "dog", "bird", "fish", "horse", "cow", "mouse", "fox", "owl", "bee", "ant"])]


def job_lens_importance(folder: str) -> dict:
    from layerscope.analyses.importance import layer_importance
    from layerscope.analyses.lens import logit_lens
    from layerscope.models import load_model

    model = load_model(folder)
    lens = logit_lens(model, TEXTS, batch_size=4)
    imp = layer_importance(model, TEXTS, batch_size=4)
    return {"lens": {k: list(getattr(lens, k)) for k in ("accuracy", "loss", "kl", "top1_agreement")},
            "importance": [list(imp.metric), list(imp.block_influence)]}


def test_lens_and_importance_equal_single_process(llama_folder):
    _same_everywhere(job_lens_importance, str(llama_folder))


def removal_batches(cls_name: str) -> contextlib.AbstractContextManager:
    """The size of every batch a removal objective of class ``cls_name`` begins in this process."""
    from layerscope import objectives

    return spying(getattr(objectives, cls_name), "begin", [],
                  lambda out, obj, enc, reference, labels: int(reference.shape[0]))


def job_importance(folder: str, limit: int, batch_size: int) -> dict:
    from layerscope.analyses.importance import layer_importance, removal_curve
    from layerscope.models import load_model

    model = load_model(folder)
    with bars_opened() as bars, removal_batches("LMObjective") as local:
        imp = layer_importance(model, TEXTS, batch_size=batch_size, limit=limit, progress=True)
    bars = seen(bars, "removal")
    curve = removal_curve(model, TEXTS, max_k=2, importance=imp, batch_size=batch_size, limit=limit)
    return {"metric": imp.metric, "loss": imp.loss, "baseline": imp.baseline,
            "bi": imp.block_influence, "angular": imp.angular, "items": imp.n_items,
            "calls": imp.block_calls, "method": imp.method, "curves": curve.curves,
            "local_batches": local, "local_bars": bars}


def job_importance_ablated(n: int) -> dict:
    from layerscope.analyses.importance import layer_importance

    with removal_batches("OutputObjective") as local:
        imp = layer_importance(_mlp(), _tensor_data(n), batch_size=8)
    return {"metric": imp.metric, "bi": imp.block_influence, "intervention": imp.intervention,
            "items": imp.n_items, "local_batches": local}


def test_importance_removals_are_split_across_ranks(llama_folder):
    # 11 texts in batches of 4: rank 0 runs every removal on batch 0, rank 1 on batches 1-2
    ref, outs = _same_everywhere(job_importance, str(llama_folder), 11, 4)
    assert ref["method"] == "prefix" and ref["items"] == 11
    assert ref["local_batches"] == [4, 4, 3]
    assert [o["ok"]["local_batches"] for o in outs] == [[4], [4, 3]]
    # rank 0's bar counts every rank's removals (3 batches x 2 blocks) and ends on that total
    assert ref["local_bars"] == [("removal (2 per batch)", 6, 6)]
    assert outs[0]["ok"]["local_bars"] == [("removal (2 per batch)", 6, 6)]
    assert outs[1]["ok"]["local_bars"][0][1] == 6


def test_importance_with_a_rank_that_gets_no_item(llama_folder):
    ref, outs = _same_everywhere(job_importance, str(llama_folder), 3, 4)   # one batch of 3
    assert [o["ok"]["local_batches"] for o in outs] == [[], [3]]
    _, outs = _same_everywhere(job_importance, str(llama_folder), 11, 8, world=3)  # 2 batches
    assert [o["ok"]["local_batches"] for o in outs] == [[], [8], [3]]


def test_importance_with_mean_ablation_uneven_split():
    # the MLP's shape-changing layers are mean-ablated: the means come from a sharded pass too
    ref, outs = _same_everywhere(job_importance_ablated, 37)
    assert ref["intervention"] == ["mean-ablate", "skip", "mean-ablate"]
    assert [o["ok"]["local_batches"] for o in outs] == [[8, 8], [8, 8, 5]]


def job_tuned_lens(folder: str) -> dict:
    from layerscope.analyses import tuned_lens
    from layerscope.models import load_model

    # the items each training forward of this process ran
    with spying(tuned_lens, "_states", [], lambda out, stack, enc: enc.size) as sizes:
        res = tuned_lens.train_tuned_lens(load_model(folder), TEXTS * 3, epochs=2, batch_size=5,
                                          lr=1e-2, test_fraction=0.3, seed=3)
    return {"translators": {k: v.numpy() for k, v in res.lens.state_dict().items()},
            "loss": res.train_loss, "tuned_kl": res.tuned_kl, "logit_kl": res.logit_kl,
            "tuned_agreement": res.tuned_agreement, "steps": res.steps,
            "tokens": res.n_test_tokens, "train_items": res.n_train_items,
            "local_items": sum(sizes)}


def test_tuned_lens_training_split_across_ranks_matches_one_process(llama_folder):
    # 33 texts, 21 for training in batches of 5: each batch of 5 is cut 2 + 3, and the last
    # batch of each epoch has 1 item (rank 0 gets none that step); each rank runs its piece padded on its own, so the forward and the
    # summed gradients differ from one process's by float32 rounding: translators within 1e-5
    ref = job_tuned_lens(str(llama_folder))
    outs = run_ranks(job_tuned_lens, str(llama_folder))
    assert ref["steps"] == 10 and max(abs(v).max() for v in ref["translators"].values()) > 1e-3
    for out in outs:
        got = out["ok"]
        assert got["steps"] == ref["steps"] and got["tokens"] == ref["tokens"]
        for name, value in ref["translators"].items():
            np.testing.assert_allclose(got["translators"][name], value, rtol=0, atol=1e-5)
        # the KL per step is ~1e-4 nats, a difference of O(1) float32 log-probabilities
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, atol=2e-7)
        np.testing.assert_allclose(got["tuned_kl"], ref["tuned_kl"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["logit_kl"], ref["logit_kl"], rtol=1e-6, atol=1e-6)
    # each rank ran the model on its pieces only: together, every training batch of 2 epochs once
    assert [o["ok"]["local_items"] for o in outs] == [8 * 2, 13 * 2]
    assert ref["local_items"] == 2 * ref["train_items"] == 2 * 21
    for name in ref["translators"]:   # every rank holds the very same lens
        assert np.array_equal(outs[0]["ok"]["translators"][name], outs[1]["ok"]["translators"][name])


def test_torchrun_sweep_command_equals_one_process(llama_folder, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    args = ["sweep", str(llama_folder), str(data), "--view", "mean", "-b", "4", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERSCOPE_DIST_TIMEOUT": str(TIMEOUT_S)}
    one = subprocess.run([sys.executable, "-m", "layerscope", *args], capture_output=True,
                         text=True, env=env, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "layerscope", *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)   # rank 1 printed nothing
    assert a["items"] == b["items"] == len(TEXTS)
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        assert ra["layer"] == rb["layer"]
        for key in ("mean", "std", "min", "max"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6)


# --- bad input without a process group ---------------------------------------------------------


def test_idle_ranks_are_announced(monkeypatch, capsys):
    from layerscope import distributed

    monkeypatch.setattr(distributed, "world", lambda: (0, 4))
    monkeypatch.setenv("LAYERSCOPE_PROGRESS", "auto")
    rank, size, items = distributed.plan(5, 2, progress=True)   # 3 batches for 4 ranks
    assert (rank, size, items) == (0, 4, range(0, 0))
    assert "1 of 4 ranks get no item (5 items in batches of 2)" in capsys.readouterr().err


def test_launcher_refuses_commands_that_are_not_data_passes(monkeypatch, capsys):
    from layerscope.launch import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "mlp", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: layerscope train does not run under torchrun") and "\n" not in err


def test_bad_timeout_setting_is_one_line(monkeypatch):
    from layerscope.distributed import timeout_seconds

    monkeypatch.setenv("LAYERSCOPE_DIST_TIMEOUT", "soon")
    with pytest.raises(LayerscopeError, match="LAYERSCOPE_DIST_TIMEOUT='soon'"):
        timeout_seconds()
