"""An on-disk activation store: safetensors shards plus a JSON manifest, resumable after a kill.

:func:`record` runs one sweep and writes each chosen layer's rows (in one view, cast to one
dtype) into shards of ``shard_items`` items. Every shard is written to a temporary name, flushed
to disk, renamed, and only then listed in the manifest, which is itself replaced atomically. A
run killed at any point resumes from the last verified shard when the same call is repeated;
batches start on the same item boundaries as in an uninterrupted run, so the result is the
same byte for byte. :class:`Store` reads a finished store lazily and refuses an incomplete,
truncated or corrupted one, naming the shard.

Example:
    >>> import tempfile, torch
    >>> from layerscope.store import record
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> out = tempfile.mkdtemp()
    >>> store = record(net, torch.randn(50, 4), out, dtype="float32", batch_size=8, shard_items=16,
    ...                progress=False)
    >>> len(store), store.layers, tuple(store["2"].shape), len(store.manifest["shards"])
    (50, ['0', '2'], (50, 3), 4)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reducer
from layerscope.views import check_view

FORMAT = "layerscope-store"
VERSION = 1
MANIFEST = "manifest.json"
OFFSETS = "__offsets__"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# --- hashing ----------------------------------------------------------------------------------


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def data_hash(items) -> str:
    """sha256 of the data items: texts as UTF-8 (NUL-separated), tensors as dtype, shape and bytes."""
    h = hashlib.sha256()
    if isinstance(items, Tensor):
        h.update(f"tensor {items.dtype} {tuple(items.shape)}\n".encode())
        h.update(_tensor_bytes(items))
    else:
        for text in items:
            h.update(str(text).encode("utf-8") + b"\0")
    return h.hexdigest()


def model_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- atomic writes ----------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name, flush to disk, rename over ``path``; clear error on failure."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise LayerscopeError(
            f"cannot write {path}: {exc.strerror or exc}; free some space or choose another "
            f"output folder (the store is left incomplete; rerun to resume)"
        ) from exc


def _write_manifest(out: Path, manifest: dict) -> None:
    _atomic_write(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


# --- the writer -------------------------------------------------------------------------------


class StoreWriter(Reducer):
    """A reducer that writes every row it sees to shards of ``shard_items`` items.

    ``on_shard(entry)`` is called after each shard is safely on disk, with its manifest entry
    (file, sha256, bytes, first item, items, rows).
    """

    def __init__(self, out_dir, layers: list[str], view: str, dtype: str, shard_items: int,
                 first_shard: int = 0, first_item: int = 0, on_shard=None):
        self.out = Path(out_dir)
        self.layers = list(layers)
        self.view = check_view(view)
        self.dtype = DTYPES[dtype]
        self.shard_items = shard_items
        self.next_shard, self.next_item = first_shard, first_item
        self.on_shard = on_shard
        self.buffer: list[tuple[int, dict[str, Tensor], Tensor]] = []  # (items, rows, per-item counts)
        self.buffered = 0
        self.shapes: dict[str, list[int]] = {}

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        rows = {name: acts[name].detach().to("cpu", self.dtype) for name in self.layers}
        n_rows = next(iter(rows.values())).shape[0]
        for name, x in rows.items():
            self.shapes.setdefault(name, list(x.shape[1:]))
            if x.shape[0] != n_rows:
                raise LayerscopeError(
                    f"layers give different numbers of rows in view {self.view!r} ({name!r}: "
                    f"{x.shape[0]}, others: {n_rows}); record them separately"
                )
        self.buffer.append((batch.size, rows, self._counts(batch, n_rows)))
        self.buffered += batch.size
        while self.buffered >= self.shard_items:
            self._flush(self.shard_items)

    def finish(self) -> None:
        """Write the last, partial shard."""
        if self.buffered:
            self._flush(self.buffered)

    def _counts(self, batch: BatchInfo, n_rows: int) -> Tensor:
        """Rows per item: 1 for per-item views; real tokens (or positions) for the tokens view."""
        if self.view != "tokens":
            return torch.ones(batch.size, dtype=torch.int64)
        if batch.mask is not None and int(batch.mask.sum()) == n_rows:
            return batch.mask.sum(dim=1).to("cpu", torch.int64)
        if n_rows % batch.size:
            raise LayerscopeError(f"cannot split {n_rows} token rows among {batch.size} items")
        return torch.full((batch.size,), n_rows // batch.size, dtype=torch.int64)

    def _flush(self, n_items: int) -> None:
        parts, counts, taken = {name: [] for name in self.layers}, [], 0
        while taken < n_items:
            size, rows, cnt = self.buffer[0]
            take = min(size, n_items - taken)
            cut = int(cnt[:take].sum())
            for name in self.layers:
                parts[name].append(rows[name][:cut])
            counts.append(cnt[:take])
            if take == size:
                self.buffer.pop(0)
            else:
                self.buffer[0] = (size - take, {k: v[cut:] for k, v in rows.items()}, cnt[take:])
            taken += take
        self.buffered -= n_items
        tensors = {name: torch.cat(p).contiguous() for name, p in parts.items()}
        counts_t = torch.cat(counts)
        if self.view == "tokens":
            tensors[OFFSETS] = torch.cat([torch.zeros(1, dtype=torch.int64), counts_t.cumsum(0)])
        from safetensors.torch import save

        # one metadata key: safetensors writes several in no fixed order, which breaks byte identity
        data = save(tensors, metadata={"layerscope": json.dumps({"first_item": self.next_item,
                                                                  "items": n_items})})
        name = _shard_name(self.next_shard)
        _atomic_write(self.out / name, data)
        entry = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                 "first_item": self.next_item, "items": n_items, "rows": int(counts_t.sum())}
        self.next_shard += 1
        self.next_item += n_items
        if self.on_shard is not None:
            self.on_shard(entry)

    def merge(self, other):
        raise LayerscopeError("store writers do not merge; record each part to its own folder")

    def result(self):
        return self.out


# --- record -----------------------------------------------------------------------------------


def _identity_differences(old: dict, new: dict) -> list[str]:
    keys = ("format", "version", "model", "layers", "view", "dtype", "granularity", "blocks",
            "max_length", "batch_size", "shard_items", "data")
    return [k for k in keys if old.get(k) != new.get(k)]


def _describe_difference(key: str, old: dict, new: dict) -> str:
    if key == "model":
        return f"another model ({old['model'].get('ref')!r}, not {new['model']['ref']!r} with these weights)"
    if key == "data":
        return f"other data ({old['data'].get('items')} items, hash {str(old['data'].get('sha256'))[:12]})"
    return f"another {key} ({old.get(key)!r}, not {new.get(key)!r})"


def _prepare_folder(out: Path, identity: dict, overwrite: bool, verify=None) -> list[dict]:
    """Check/clean the output folder; return the verified shards to resume from
    (``verify(out, listed shards)``, by default the verified prefix)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayerscopeError(f"cannot create output folder {out}: {exc.strerror or exc}; choose another -o folder") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise LayerscopeError(f"no permission to write in {out}; choose another output folder")
    ours = [p for p in out.iterdir() if p.name == MANIFEST or p.name.startswith(("shard-", ".shard-", f".{MANIFEST}"))]
    others = [p for p in out.iterdir() if p not in ours]
    manifest_path = out / MANIFEST
    old = None
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = None
    if old is not None and old.get("format") == FORMAT:
        diff = _identity_differences(old, identity)
        if diff and not overwrite:
            raise LayerscopeError(
                f"{out} holds a store of {_describe_difference(diff[0], old, identity)}; pass "
                f"--overwrite (overwrite=True) to replace it, or choose another output folder"
            )
        keep = [] if diff else (verify or _verified_prefix)(out, old.get("shards", []))
    elif (others or ours) and not overwrite:
        raise LayerscopeError(
            f"{out} is not empty and holds no layerscope store; choose an empty folder or pass --overwrite"
        )
    else:
        keep = []
    kept = {s["file"] for s in keep}
    for p in ours:
        if p.name != MANIFEST and p.name not in kept:
            p.unlink()
    return keep


def _verified_prefix(out: Path, shards: list[dict]) -> list[dict]:
    """The shards, in order, up to the first one missing or not matching its hash."""
    good = []
    for s in shards:
        path = out / s["file"]
        if not path.exists() or path.stat().st_size != s["bytes"] or _file_sha256(path) != s["sha256"]:
            break
        good.append(s)
    return good


def _remove_empty_store(out: Path, created: bool) -> None:
    """Remove the manifest and partial shards of a store that recorded nothing (and the folder,
    when this run created it and nothing else is in it)."""
    for path in out.iterdir():
        if path.name == MANIFEST or path.name.startswith((".shard-", f".{MANIFEST}")):
            path.unlink(missing_ok=True)
    if created and not any(out.iterdir()):
        out.rmdir()


def record(model, data, out_dir, *, layers=None, view: str = "mean", dtype: str = "float16",
           batch_size: int = 32, shard_items: int = 4096, max_length: int | None = 128,
           granularity: str = "blocks", blocks: str | None = None, overwrite: bool = False,
           progress: bool = True) -> "Store":
    """Record the chosen layers' activations over ``data`` into ``out_dir``; resume if interrupted.

    ``shard_items`` is rounded up to a multiple of ``batch_size`` so that a resumed run meets
    the same batches as an uninterrupted one. Returns the finished :class:`Store`.
    """
    from layerscope.layers import Layers
    from layerscope.sweep import as_model, as_source, sweep

    check_view(view)
    if dtype not in DTYPES:
        raise LayerscopeError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LayerscopeError(f"batch_size must be a positive integer; got {batch_size!r}")
    if shard_items < 1:
        raise LayerscopeError(f"shard_items must be a positive integer; got {shard_items!r}")
    loaded = as_model(model)
    source = as_source(data)
    if source.stream is not None:
        raise LayerscopeError(
            "record needs data it can hash and resume (a Dataset, dataset name or file, tensor "
            "or list of texts); a DataLoader cannot be resumed"
        )
    names = [layer.name for layer in Layers(loaded, granularity=granularity, blocks=blocks).select(layers)]
    shard_items = math.ceil(shard_items / batch_size) * batch_size
    identity = {
        "format": FORMAT, "version": VERSION,
        "model": {"ref": loaded.ref, "family": loaded.family,
                  "fingerprint": model_fingerprint(loaded.module)},
        "layers": names, "view": view, "dtype": dtype, "granularity": granularity,
        "blocks": blocks, "max_length": max_length, "batch_size": batch_size,
        "shard_items": shard_items,
        "data": {"name": source.name, "items": len(source), "sha256": data_hash(source.items)},
    }
    out = Path(out_dir)
    from layerscope import distributed

    if distributed.active():  # every rank records its shards of the one store
        from layerscope.store_ranks import record_ranks

        record_ranks(loaded, source, out, identity, names=names, view=view, dtype=dtype,
                     batch_size=batch_size, shard_items=shard_items, max_length=max_length,
                     granularity=granularity, blocks=blocks, overwrite=overwrite, progress=progress)
        return Store(out, verify=distributed.is_writer())  # rank 0 checks every shard's hash
    created = not out.exists()
    shards = _prepare_folder(out, identity, overwrite)
    manifest = {**identity, "n_items": len(source), "shapes": {}, "shards": shards, "complete": False}
    old_path = out / MANIFEST
    if old_path.exists():
        try:
            manifest["shapes"] = json.loads(old_path.read_text()).get("shapes", {}) if shards else {}
        except (OSError, ValueError):
            pass
    _write_manifest(out, manifest)
    start = sum(s["items"] for s in shards)

    writer = StoreWriter(out, names, view, dtype, shard_items, first_shard=len(shards),
                         first_item=start)

    def on_shard(entry):
        manifest["shards"].append(entry)
        manifest["shapes"] = writer.shapes
        _write_manifest(out, manifest)

    writer.on_shard = on_shard
    try:
        if start < len(source):
            sweep(loaded, source, reducers=[writer], layers=names, granularity=granularity,
                  blocks=blocks, batch_size=batch_size, max_length=max_length, progress=progress,
                  start=start)
            writer.finish()
    except BaseException:
        if not manifest["shards"]:  # nothing recorded, nothing to resume: leave no store behind
            _remove_empty_store(out, created)
        raise
    manifest["complete"] = True
    _write_manifest(out, manifest)
    return Store(out)


# --- the reader -------------------------------------------------------------------------------


class Store:
    """A finished activation store, read lazily: ``store[layer]`` loads one layer's rows.

    ``verify=True`` (the default) checks every shard's sha256 against the manifest on opening.

    Example:
        >>> import tempfile, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh())
        >>> out = tempfile.mkdtemp()
        >>> _ = record(net, torch.randn(20, 3), out, dtype="float32", progress=False)
        >>> s = Store(out)
        >>> len(s), s.view, s.dtype, s.layers, tuple(s["0"].shape)
        (20, 'mean', 'float32', ['0'], (20, 5))
    """

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise LayerscopeError(f"{self.path} holds no {MANIFEST}: not a layerscope store (make one with `layerscope record`)")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise LayerscopeError(f"{mpath} is unreadable ({exc}); record the store again") from exc
        m = self.manifest
        if m.get("format") != FORMAT:
            raise LayerscopeError(f"{mpath} is not a layerscope store manifest")
        done = sum(s["items"] for s in m.get("shards", []))
        if not m.get("complete"):
            raise LayerscopeError(
                f"store {self.path} is incomplete ({len(m.get('shards', []))} shards, {done} of "
                f"{m.get('n_items')} items); rerun the same record command to resume"
            )
        if done != m["n_items"]:
            raise LayerscopeError(f"store {self.path} lists {done} items in its shards but {m['n_items']} in total; record it again")
        for s in m["shards"]:
            p = self.path / s["file"]
            if not p.is_file():
                raise LayerscopeError(f"shard {s['file']} of store {self.path} is missing; record the store again")
            size = p.stat().st_size
            if size != s["bytes"]:
                raise LayerscopeError(
                    f"shard {s['file']} of store {self.path} is truncated or altered ({size} of "
                    f"{s['bytes']} bytes); rerun the record command with --overwrite"
                )
            if verify and _file_sha256(p) != s["sha256"]:
                raise LayerscopeError(
                    f"shard {s['file']} of store {self.path} is corrupted (sha256 does not match "
                    f"the manifest); rerun the record command with --overwrite"
                )

    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    @property
    def view(self) -> str:
        return self.manifest["view"]

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def shapes(self) -> dict[str, list[int]]:
        return self.manifest.get("shapes", {})

    def __len__(self) -> int:
        return int(self.manifest["n_items"])

    def __contains__(self, layer: str) -> bool:
        return layer in self.manifest["layers"]

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, items={len(self)}, layers={len(self.layers)}, view={self.view!r})"

    def shard_tensors(self, key: str):
        """Yield one layer's rows shard by shard (memory-mapped reads; one shard at a time)."""
        from safetensors import safe_open

        if key != OFFSETS and key not in self.manifest["layers"]:
            raise LayerscopeError(f"store has no layer {key!r}; it holds: {', '.join(self.layers)}")
        for s in self.manifest["shards"]:
            try:
                with safe_open(str(self.path / s["file"]), framework="pt") as f:
                    yield f.get_tensor(key)
            except LayerscopeError:
                raise
            except Exception as exc:
                raise LayerscopeError(f"shard {s['file']} of store {self.path} is unreadable ({exc}); record it again") from exc

    def __getitem__(self, layer: str) -> Tensor:
        """All rows of one layer, in item order ((N, D), or (N_tokens, D) for the tokens view)."""
        return torch.cat(list(self.shard_tensors(layer)))

    @property
    def offsets(self) -> Tensor | None:
        """For the tokens view: item i's rows are ``offsets[i]:offsets[i+1]``; None otherwise."""
        if self.view != "tokens":
            return None
        parts, base = [torch.zeros(1, dtype=torch.int64)], 0
        for off in self.shard_tensors(OFFSETS):
            parts.append(off[1:] + base)
            base += int(off[-1])
        return torch.cat(parts)

    def numpy(self, layer: str) -> np.ndarray:
        """One layer as a float32 numpy array."""
        return self[layer].float().numpy()
