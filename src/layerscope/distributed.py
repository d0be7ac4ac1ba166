"""Data-parallel passes on ``torch.distributed``: shards of items per rank, reducer states combined.

When a process group is initialised (``torchrun --nproc-per-node N -m layerscope ...``, or your
own ``torch.distributed.init_process_group``), :func:`layerscope.sweep.sweep` takes the same path
on every rank:

1. the items are cut into ``world_size`` contiguous, disjoint shards by index
   (:func:`shard_range`), on batch boundaries, so every rank meets exactly the batches a single
   process would meet, and the union of the shards is the whole data set;
2. each rank runs its own pass over its shard (a rank may get no item: it then contributes
   nothing);
3. the reducers' states are merged across ranks (:func:`combine`) with the reducers' own
   ``merge``, pairwise up a fixed tree in rank order, then sent to every rank; because the
   shards are in item order, rank-ordered merging keeps rows (samples, labels, kept rows) in
   the single-process order, and reruns are bit-identical. Each rank holds at most two states
   at a time.

A rank that fails sends its one-line error instead of its state; every rank then raises it. A
rank that dies without a word (killed, out of memory) closes its connections, and the others
stop with a one-line error; a collective that waits longer than the group's timeout
(``LAYERSCOPE_DIST_TIMEOUT`` seconds for groups layerscope starts, default 1800) stops the same
way instead of hanging.

``with local():`` runs sweeps inside it in this process only (no sharding, no collectives).

Example:
    >>> from layerscope.distributed import shard_range
    >>> [shard_range(10, 3, r, align=4) for r in range(3)]
    [range(0, 4), range(4, 8), range(8, 10)]
    >>> [shard_range(5, 3, r, align=4) for r in range(3)]   # two batches, three ranks
    [range(0, 0), range(0, 4), range(4, 5)]
    >>> [shard_range(10, 2, r, align=1) for r in range(2)]
    [range(0, 5), range(5, 10)]
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import threading
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from layerscope.errors import LayerscopeError, first_line

TIMEOUT_ENV = "LAYERSCOPE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0

_local = threading.local()
_groups: dict[str, Any] = {}


# --- who am I ---------------------------------------------------------------------------------


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def active() -> bool:
    """Whether passes run data-parallel here: a process group of 2+ ranks, not inside :func:`local`."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1 and not getattr(_local, "off", 0)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the data-parallel group; ``(0, 1)`` when not distributed."""
    dist = _dist()
    if dist is None or getattr(_local, "off", 0):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_writer() -> bool:
    """Whether this process writes results, plots and reports: rank 0, or the only process."""
    return world()[0] == 0


@contextlib.contextmanager
def local():
    """Run sweeps inside the block in this process only, even when a process group exists.

    Example:
        >>> from layerscope.distributed import local, world
        >>> with local():
        ...     world()
        (0, 1)
    """
    _local.off = getattr(_local, "off", 0) + 1
    try:
        yield
    finally:
        _local.off -= 1


# --- shards -----------------------------------------------------------------------------------


def shard_range(n_items: int, world_size: int, rank: int, *, align: int = 1, start: int = 0) -> range:
    """The items of ``rank``: a contiguous share of ``[start, n_items)`` cut on multiples of ``align``.

    Ranks take whole blocks of ``align`` items (batches), ``floor(blocks * r / world_size)`` up to
    ``floor(blocks * (r + 1) / world_size)``; the shards are disjoint, in rank order, and cover
    every item once. With fewer blocks than ranks, the first ranks get none.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise LayerscopeError(f"rank {rank} is not in a world of {world_size}")
    align = max(int(align), 1)
    n = max(n_items - start, 0)
    blocks = -(-n // align)
    lo = start + (blocks * rank // world_size) * align
    hi = start + (blocks * (rank + 1) // world_size) * align
    return range(min(lo, n_items), min(hi, n_items))


def plan(n_items: int, batch_size: int, start: int = 0, *, progress: bool = True
         ) -> tuple[int, int, range]:
    """``(rank, world_size, this rank's items)`` for a pass over ``[start, n_items)`` in batches.

    When some ranks get no item (fewer batches than ranks), rank 0 says so once (unless
    ``progress`` is off): that is allowed, those ranks only take part in combining.
    """
    rank, size = world()
    items = shard_range(n_items, size, rank, align=batch_size, start=start)
    if size > 1 and rank == 0:
        idle = sum(1 for r in range(size)
                   if not len(shard_range(n_items, size, r, align=batch_size, start=start)))
        if idle:
            from layerscope.progress import announce

            n = max(n_items - start, 0)
            announce(f"note: {idle} of {size} ranks get no item ({n} items in batches of "
                     f"{batch_size}); they only take part in combining the results",
                     progress=progress)
    return rank, size, items


def shard_of(data, *, batch_size: int, limit: int | None = None, progress: bool = True):
    """``(data, this rank's item positions)`` for a pass of ``encoded_batches(..., part=...)``
    over ``data``; the positions are None outside a process group (the whole data).

    The rule is the sweep's (:func:`plan`): contiguous shards on batch boundaries, idle ranks
    announced. A dataset reference is loaded here (with ``limit``), so it is counted and read once.
    """
    if not active():
        return data, None
    from layerscope.sweep import count_items

    if isinstance(data, str):
        from layerscope.data import load_dataset

        data = load_dataset(data, limit=limit)
    n = count_items(data, limit)
    if n is None:
        raise LayerscopeError(f"cannot split {type(data).__name__} data of unknown length across "
                              f"ranks; pass a Dataset, texts or a tensor, or set a limit")
    return data, plan(n, batch_size, progress=progress)[2]


class GlobalBar:
    """Rank 0's progress over every rank's work: this rank's steps scaled by ``total / mine``
    (what the sweep's bar does), so the bar counts the global total and ends on it.

    Example:
        >>> from layerscope.progress import bar
        >>> b = GlobalBar(bar(10, desc="x", enabled=False), total=10, mine=4)
        >>> for _ in range(4):
        ...     b.update(1)
        >>> b.bar.n, b.total
        (10, 10)
    """

    def __init__(self, bar, *, total: int | None, mine: int | None):
        self.bar, self.total = bar, total
        self.scale = total / mine if total and mine else 1.0
        self.mine = self.shown = 0

    def update(self, n: int = 1) -> None:
        self.mine += n
        shown = round(self.mine * self.scale)
        if shown > self.shown:
            self.bar.update(shown - self.shown)
            self.shown = shown

    def finish(self) -> None:
        """Show the whole total: every rank is known to be done."""
        if self.total and self.bar.n < self.total:
            self.bar.update(self.total - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def global_bar(total: int | None, mine: int | None, *, desc: str, unit: str = "item",
               progress: bool = True) -> GlobalBar:
    """A bar for a pass whose ranks share ``total`` steps, ``mine`` of them here: drawn on rank 0
    only, with the global count (one process: a plain bar over ``total``)."""
    from layerscope.progress import bar

    rank, size = world()
    return GlobalBar(bar(total, desc=desc, unit=unit, enabled=progress and rank == 0),
                     total=total, mine=mine if size > 1 else total)


def shard_batches(source, batch_size: int, items: range) -> Iterator[tuple[Any, Tensor | None, int]]:
    """``source.batches(batch_size)`` restricted to the positions in ``items`` (global positions)."""
    if len(items) == 0:
        return
    for batch, labels, first in source.batches(batch_size, items.start):
        if first >= items.stop:
            return
        keep = min(len(batch), items.stop - first)
        if keep < len(batch):
            batch = batch[:keep]
            labels = labels[:keep] if labels is not None else None
        yield batch, labels, first


# --- the process group ------------------------------------------------------------------------


def timeout_seconds() -> float:
    """The collective timeout for groups layerscope starts: ``LAYERSCOPE_DIST_TIMEOUT`` or 1800 s."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise LayerscopeError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; "
                              f"set it to e.g. 600")
    return value


def backend_for(device: str | None = None) -> str:
    """``nccl`` when this process drives a CUDA device (and NCCL is built in), else ``gloo``."""
    import torch.distributed as dist

    wants_cuda = (device or "auto") in ("auto", "cuda") and torch.cuda.is_available()
    if wants_cuda and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def init_from_env(device: str | None = None) -> bool:
    """Start the process group a launcher (``torchrun``) described in the environment.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or a group already exists.
    The backend is chosen by :func:`backend_for`; with NCCL each rank takes the first GPU of
    its share (``LOCAL_RANK`` times GPUs per local rank; see :func:`layerscope.placement.rank_share`). The collective timeout is :func:`timeout_seconds`.
    """
    import torch.distributed as dist

    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise LayerscopeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of "
                              f"processes; start layerscope with torchrun") from None
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise LayerscopeError("this PyTorch build has no torch.distributed; run in one process")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise LayerscopeError(f"WORLD_SIZE is {size} but {key} is not set; start layerscope "
                                  f"with torchrun --nproc-per-node N -m layerscope ...")
    backend = backend_for(device)
    if backend == "nccl":
        count, local = torch.cuda.device_count(), int(os.environ.get("LOCAL_RANK", "0"))
        per = max(count // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1), 1)
        torch.cuda.set_device((local * per) % count)   # the first GPU of this rank's share
    timeout = datetime.timedelta(seconds=timeout_seconds())
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise LayerscopeError(f"cannot start the {backend} process group of {size} ranks: "
                              f"{first_line(exc)}") from exc
    return True


def _control_group():
    """A gloo group for the CPU-side exchanges (states, errors); the default group when it is gloo."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    key = "gloo"
    if key not in _groups:
        _groups[key] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_seconds()))
    return _groups[key]


def _collective(fn, *args, **kwargs):
    """Run one torch.distributed call; a lost or silent rank becomes a one-line error."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # gloo/nccl raise RuntimeError subclasses on timeouts and lost peers
        rank, size = world()
        raise LayerscopeError(
            f"rank {rank} of {size}: another rank stopped or did not answer within "
            f"{timeout_seconds():.0f} s ({first_line(exc)}); its own error is above"
        ) from exc


def all_gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; a lost or silent rank is a one-line error."""
    import torch.distributed as dist

    out: list = [None] * world()[1]
    _collective(dist.all_gather_object, out, obj, group=_control_group())
    return out


def check_all(error: BaseException | None) -> None:
    """Tell every rank whether this one failed; raise the first failing rank's error everywhere.

    Every rank must call this at the same point (a failing rank instead of its next collective).
    """
    raise_first_failure(all_gather(describe_error(error)), error)


def raise_first_failure(messages: list, error: BaseException | None, hint: str = "") -> None:
    """Raise the first rank's error among ``messages`` (one per rank, None where it did not fail,
    as :func:`describe_error` gives them), followed by ``hint``."""
    failures = [(r, msg) for r, msg in enumerate(messages) if msg is not None]
    if failures:
        rank, msg = failures[0]
        raise LayerscopeError(f"rank {rank} of {len(messages)}: {msg}{hint}") from error


def describe_error(error: BaseException | None) -> str | None:
    """The one line a rank sends the others about its error (None when it has none)."""
    if error is None:
        return None
    if isinstance(error, LayerscopeError):
        return first_line(error)
    return f"internal error ({type(error).__name__}: {first_line(error)})"


# --- combining reducers -----------------------------------------------------------------------


def _to_cpu(value):
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_cpu(v) for v in value)
    return value


def _rebuilt(reducer, state: dict):
    out = copy.copy(reducer)   # the same class and settings; load_state_dict replaces the sums
    return out.load_state_dict(state)


def weights_signature(module: torch.nn.Module | None, head: int = 256) -> str | None:
    """A cheap check that two ranks hold the same model: sha256 over every parameter's name,
    shape and first ``head`` values (parameters offloaded to the meta device count by shape)."""
    if module is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(f"{name} {p.dtype} {tuple(p.shape)}\n".encode())
        if p.device.type != "meta" and p.numel():
            h.update(p.detach().reshape(-1)[:head].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _merged_states(reducers: Sequence, mine: list | None, theirs: list | None) -> list | None:
    """The states of ``mine`` (lower ranks) merged with ``theirs`` (the next ranks), either None
    when those ranks saw no item."""
    if mine is None or theirs is None:
        return theirs if mine is None else mine
    out = []
    for reducer, a, b in zip(reducers, mine, theirs):
        out.append(_to_cpu(_rebuilt(reducer, a).merge(_rebuilt(reducer, b)).state_dict()))
    return out


def _tree_combine(reducers: Sequence, states: list | None) -> list | None:
    """Merge the ranks' states pairwise up a fixed binary tree, lower ranks first (rank ``r``
    takes ``r + step`` for step 1, 2, 4...), then broadcast rank 0's total: each rank holds at
    most two states at a time, and the fixed order makes reruns bit-identical."""
    import torch.distributed as dist

    rank, size = world()
    group = _control_group()
    step = 1
    while step < size:
        if rank % (2 * step):
            _collective(dist.send_object_list, [states], dst=rank - step, group=group)
            break
        if rank + step < size:
            box = [None]
            _collective(dist.recv_object_list, box, src=rank + step, group=group)
            states = _merged_states(reducers, states, box[0])
        step *= 2
    box = [states if rank == 0 else None]
    _collective(dist.broadcast_object_list, box, src=0, group=group)
    return box[0]


def combine(reducers: Sequence, n_items: int, n_batches: int,
            error: BaseException | None = None, module: torch.nn.Module | None = None
            ) -> tuple[int, int]:
    """Merge every rank's ``reducers`` (in place, on every rank); return the global item and batch counts.

    First every rank tells the others whether it failed, how many items it saw and which weights
    it ran (a small all-gather); the first failing rank's error is raised on every rank, and
    ranks whose model differs from rank 0's are refused. Then the states (``state_dict()``,
    tensors on the CPU) of ranks that saw items are merged with the reducers' own ``merge`` in
    rank order (:func:`_tree_combine`) and loaded back into ``reducers`` on every rank.
    """
    payload = {"error": describe_error(error), "items": n_items, "batches": n_batches,
               "model": weights_signature(module) if error is None else None}
    gathered = all_gather(payload)
    raise_first_failure([g["error"] for g in gathered], error)
    other = next((r for r, g in enumerate(gathered) if g["model"] != gathered[0]["model"]), None)
    if other is not None:
        raise LayerscopeError(
            f"rank {other} runs other weights than rank 0 (a randomly initialised model not "
            f"seeded alike?); every rank must load the same model: save it and load the file")
    mine = [_to_cpu(r.state_dict()) for r in reducers] if n_items > 0 else None
    total = _tree_combine(reducers, mine)
    if total is not None:
        for reducer, state in zip(reducers, total):
            reducer.load_state_dict(state)
    return sum(g["items"] for g in gathered), sum(g["batches"] for g in gathered)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks, in place (a no-op outside a group): NCCL for CUDA tensors
    when that is the group's backend, gloo otherwise. Every rank gets the same bytes, summed in
    the backend's order."""
    import torch.distributed as dist

    if not active():
        return tensor
    group = None if tensor.is_cuda and dist.get_backend() == "nccl" else _control_group()
    _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def barrier() -> None:
    """Wait for every rank (a no-op outside a group); a lost rank is a one-line error."""
    if active():
        all_gather(None)
