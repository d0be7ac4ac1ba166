"""Recording one activation store from every rank of a process group, resumable per rank.

:func:`layerscope.store.record` comes here when a process group is active. The store's shards
(``shard_items`` items each, a multiple of the batch size) are dealt to the ranks in contiguous
runs by index (:func:`layerscope.distributed.shard_range` over shard numbers); each rank writes
its shards under the same names, with the same batches and bytes as a single process would, and
lists each finished shard in its own part file ``.manifest.json.rank-R`` (written atomically).
Rank 0 alone prepares the folder and, once every rank is done, writes the one manifest and
removes the part files.

A rerun after any kill (one rank or all) resumes: rank 0 folds the part files into the verified
shards, every shard file is checked against its hash, and each rank records only its missing
shards. The finished store is byte-identical, shard for shard, to a single-process record.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from layerscope import distributed
from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reducer
from layerscope.store import (
    MANIFEST,
    StoreWriter,
    _atomic_write,
    _file_sha256,
    _prepare_folder,
    _write_manifest,
)
from layerscope.sweep import RAW

PART = f".{MANIFEST}.rank-"


def _part_path(out: Path, rank: int) -> Path:
    return out / f"{PART}{rank}"


def _read_parts(out: Path, identity: dict) -> tuple[list[dict], dict]:
    """Shard entries and shapes from the part files of an earlier run with the same identity."""
    entries, shapes = [], {}
    for path in sorted(out.glob(f"{PART}*")):
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError):
            continue   # a part file cut short: its shards are recorded again
        if part.get("identity") == identity:
            entries += part.get("shards", [])
            shapes.update(part.get("shapes", {}))
    return entries, shapes


def _verified_each(out: Path, shards: list[dict]) -> list[dict]:
    """Every listed shard whose file is present with its size and sha256, in item order, once."""
    good, seen = [], set()
    for s in sorted(shards, key=lambda s: s["first_item"]):
        path = out / s["file"]
        if s["file"] in seen or not path.exists() or path.stat().st_size != s["bytes"]:
            continue
        if _file_sha256(path) == s["sha256"]:
            good.append(s)
            seen.add(s["file"])
    return good


def _prepare(out: Path, identity: dict, overwrite: bool, n_items: int) -> dict:
    """Rank 0: check and clean the folder, write the incomplete manifest; return it."""
    parts, part_shapes = (_read_parts(out, identity) if out.is_dir() else ([], {}))
    shards = _prepare_folder(out, identity, overwrite,
                             verify=lambda folder, listed: _verified_each(folder, listed + parts))
    shapes = {}
    if shards:
        try:
            shapes = json.loads((out / MANIFEST).read_text()).get("shapes", {})
        except (OSError, ValueError):
            pass
        shapes.update(part_shapes)
    manifest = {**identity, "n_items": n_items, "shapes": shapes, "shards": shards,
                "complete": False}
    _write_manifest(out, manifest)
    return manifest


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """``[2, 3, 4, 7]`` -> ``[(2, 5), (7, 8)]``."""
    runs: list[tuple[int, int]] = []
    for k in indices:
        if runs and runs[-1][1] == k:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs


class _Ticks(Reducer):
    """Advances a progress bar by each batch's items; reads no layer (``layers=[]``)."""

    view = RAW

    def __init__(self, bar):
        self.layers, self.bar = [], bar

    def update(self, acts, batch: BatchInfo) -> None:
        self.bar.update(batch.size)

    def merge(self, other):
        return self

    def result(self):
        return None


def _items_of(shards: list[int], shard_items: int, n: int) -> int:
    return sum(min((k + 1) * shard_items, n) - k * shard_items for k in shards)


def record_ranks(loaded, source, out: Path, identity: dict, *, names: list[str], view: str,
                 dtype: str, batch_size: int, shard_items: int, max_length, granularity: str,
                 blocks, overwrite: bool, progress: bool) -> None:
    """Record this rank's shards of the store; returns when every rank is done and the manifest is whole."""
    from layerscope.sweep import Source, sweep

    rank, size = distributed.world()
    n = len(source)
    manifest, error = None, None
    if rank == 0:
        try:
            manifest = _prepare(out, identity, overwrite, n)
        except Exception as exc:
            error = exc
    first = distributed.all_gather({"error": distributed.describe_error(error), "manifest": manifest})[0]
    if first["error"] is not None:
        if error is not None:
            raise error
        raise LayerscopeError(first["error"])
    manifest = first["manifest"]
    done = {s["first_item"] // shard_items for s in manifest["shards"]}
    n_shards = math.ceil(n / shard_items)
    missing = [k for k in distributed.shard_range(n_shards, size, rank) if k not in done]
    if rank == 0 and size > n_shards:
        from layerscope.progress import announce

        announce(f"note: {size - n_shards} of {size} ranks get no shard of "
                 f"{shard_items} items; they only wait for the others", progress=progress)
    if rank == 0 and not missing and len(done) < n_shards:
        from layerscope.progress import announce

        announce("note: rank 0 has no shard left to record; it waits for the other ranks",
                 progress=progress)
    # rank 0's bar counts the items every rank still records (as the sweep's bar does)
    to_record = _items_of([k for k in range(n_shards) if k not in done], shard_items, n)
    bar = distributed.global_bar(to_record, _items_of(missing, shard_items, n), desc="record",
                                 progress=progress)
    written: list[dict] = []
    shapes: dict = {}
    try:
        for k0, k1 in _runs(missing):
            a, b = k0 * shard_items, min(k1 * shard_items, n)
            part = Source(source.items[a:b],
                          source.labels[a:b] if source.labels is not None else None,
                          source.modality, source.name)
            writer = StoreWriter(out, names, view, dtype, shard_items, first_shard=k0, first_item=a)

            def on_shard(entry, writer=writer):
                written.append(entry)
                shapes.update(writer.shapes)
                _atomic_write(_part_path(out, rank), json.dumps(
                    {"identity": identity, "shards": written, "shapes": shapes}).encode())

            writer.on_shard = on_shard
            with distributed.local():
                sweep(loaded, part, reducers=[writer, _Ticks(bar)], layers=names,
                      granularity=granularity, blocks=blocks, batch_size=batch_size,
                      max_length=max_length, progress=False)
            writer.finish()
    except Exception as exc:
        error = exc
    else:
        error = None
    try:
        gathered = distributed.all_gather({"error": distributed.describe_error(error),
                                           "shards": written, "shapes": shapes})
        distributed.raise_first_failure([g["error"] for g in gathered], error,
                                        " (rerun the same command to resume)")
        bar.finish()   # every rank is done (rank 0 may have had less to do than the others)
    finally:
        bar.close()
    if rank == 0:
        for g in gathered:
            manifest["shards"] += g["shards"]
            manifest["shapes"].update(g["shapes"])
        manifest["shards"].sort(key=lambda s: s["first_item"])
        manifest["complete"] = True
        _write_manifest(out, manifest)
        for path in out.glob(f"{PART}*"):
            path.unlink(missing_ok=True)
    distributed.barrier()
