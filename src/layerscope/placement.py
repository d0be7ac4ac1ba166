"""Where a model layerscope loads runs: one device (``cpu``, ``cuda``, ``cuda:1``, ``auto``), one
dtype, or a device map over several devices, the CPU and disk (Hugging Face's accelerate).

Only models layerscope loads from a reference are placed (``load_model(ref, device=...,
device_map=...)``, ``--device``/``--device-map`` on the command line); a module you pass in is
never moved. With a device map, accelerate's hooks move each block's inputs to the block's
device and bring offloaded weights in for the forward pass; the sweep hands every reducer its
activations on the device of the model's inputs, so reducers never mix devices.

Example:
    >>> from layerscope.placement import resolve_device
    >>> str(resolve_device("cpu"))
    'cpu'
    >>> resolve_device("tpu9")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerscope.errors.LayerscopeError: unknown device 'tpu9'; use cpu, cuda, cuda:N or auto
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from layerscope.errors import LayerscopeError, first_line


def resolve_device(device) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; others checked to exist."""
    if isinstance(device, torch.device):
        want = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            want = torch.device(text)
        except RuntimeError:
            raise LayerscopeError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if want.type == "cpu":
        return want
    if want.type == "cuda":
        if not torch.cuda.is_available():
            raise LayerscopeError(f"device {str(want)!r} was asked but this machine has no usable "
                                  f"CUDA device; use --device cpu (or auto)")
        if want.index is not None and want.index >= torch.cuda.device_count():
            raise LayerscopeError(f"device {str(want)!r} does not exist: this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                                  f"cuda:{torch.cuda.device_count() - 1}")
        return want
    if want.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return want
    raise LayerscopeError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


def check_dtype(device: torch.device, dtype: torch.dtype | None) -> None:
    """Refuse, in one line, a dtype the device cannot run (tried on a tiny linear layer and norm)."""
    if dtype is None or dtype == torch.float32:
        return
    name = str(dtype).replace("torch.", "")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise LayerscopeError(f"{name} cannot run on {device} ({torch.cuda.get_device_name(device)} "
                              f"has no bfloat16 support); use --dtype float16 or float32")
    try:
        x = torch.randn(2, 8, device=device, dtype=dtype)
        lin = nn.Linear(8, 8).to(device=device, dtype=dtype)
        torch.softmax(nn.functional.layer_norm(lin(x), (8,)), -1).sum().item()
    except (RuntimeError, TypeError) as exc:
        raise LayerscopeError(f"{name} cannot run on {device} ({first_line(exc)}); "
                              f"use --dtype float32") from exc


def _offload_folder() -> str:
    folder = tempfile.mkdtemp(prefix="layerscope-offload-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def read_device_map(device_map) -> dict | str:
    """``auto``, a dict ``{module path: device}`` or a JSON file of one; devices are checked."""
    if isinstance(device_map, str) and device_map.strip().lower() == "auto":
        return "auto"
    if isinstance(device_map, (str, Path)):
        path = Path(device_map)
        if not path.is_file():
            raise LayerscopeError(f"--device-map {str(device_map)!r} is neither 'auto' nor a JSON "
                                  f"file; pass auto or a file mapping module paths to devices")
        try:
            device_map = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LayerscopeError(f"cannot read the device map {path}: {exc}; pass a JSON object "
                                  f"such as {{\"model.embed_tokens\": \"cpu\", \"model.layers\": \"disk\"}}") from exc
    if not isinstance(device_map, dict) or not device_map:
        raise LayerscopeError("a device map must be 'auto' or a non-empty {module path: device} mapping")
    for where in set(device_map.values()):
        if where != "disk" and not isinstance(where, int):
            resolve_device(where)
    return dict(device_map)


def rank_share() -> dict | None:
    """Under a launcher with several processes per machine, the GPUs of this process for
    ``device_map="auto"``: ranks split the machine's GPUs in contiguous, equal shares (local rank
    ``r`` of ``n`` takes GPUs ``r*g/n`` to ``(r+1)*g/n - 1``), so 2 ranks x 4 GPUs hold two
    copies of a model too big for one GPU. None when there is nothing to split."""
    import os

    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_world <= 1 or count == 0:
        return None
    if count % local_world:
        raise LayerscopeError(f"{local_world} processes per machine cannot share {count} GPUs "
                              f"equally for --device-map auto; use a divisor of {count}")
    per = count // local_world
    mine = range(local_rank * per, (local_rank + 1) * per)
    memory: dict = {i: (torch.cuda.get_device_properties(i).total_memory if i in mine else 0)
                    for i in range(count)}
    import psutil

    memory["cpu"] = psutil.virtual_memory().available // local_world
    return memory


def place(module: nn.Module, *, device=None, device_map=None, dtype: torch.dtype | None = None,
          max_memory: dict | None = None) -> dict | None:
    """Move a module layerscope loaded itself to ``device``, or dispatch it over ``device_map``.

    Returns the device map used (None for one device). ``device_map="auto"`` fills the GPUs in
    order, then the CPU, then disk (accelerate's ``infer_auto_device_map``; ``max_memory`` caps
    each device; under a launcher, by default, this rank's share of the GPUs: :func:`rank_share`);
    a dict places each named submodule, ``"disk"`` offloading its weights to a
    temporary folder removed at exit.
    """
    if device is not None and device_map is not None:
        raise LayerscopeError("pass either a device or a device map, not both")
    if device_map is None:
        if device is None:
            return None
        dev = resolve_device(device)
        check_dtype(dev, dtype)
        module.to(dev)
        return None
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError:
        raise LayerscopeError("a device map needs Hugging Face's accelerate: pip install "
                              "accelerate (or layerscope[scale])") from None
    device_map = read_device_map(device_map)
    if device_map == "auto":
        max_memory = max_memory if max_memory is not None else rank_share()
        no_split = getattr(module, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(module, max_memory=max_memory,
                                           no_split_module_classes=list(no_split))
    for where in set(device_map.values()):
        if where != "disk":
            check_dtype(resolve_device(f"cuda:{where}" if isinstance(where, int) else where), dtype)
    names = {name for name, _ in module.named_modules()}
    unknown = [k for k in device_map if k and k not in names]
    if unknown:
        raise LayerscopeError(f"the device map names {unknown[0]!r}, which is no submodule of "
                              f"this model; use paths from `layerscope layers MODEL -g modules`")
    offload = _offload_folder() if "disk" in device_map.values() else None
    try:
        dispatch_model(module, device_map=device_map, offload_dir=offload)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise LayerscopeError(f"cannot place the model by this device map: {first_line(exc)}") from exc
    return device_map
