"""The command line on every rank of a ``torchrun`` launch (``python -m layerscope`` calls :func:`main`).

Without a launcher (``WORLD_SIZE`` unset or 1) this is the plain command line. Under
``torchrun --nproc-per-node N -m layerscope COMMAND ...`` every rank starts the process group
(:func:`layerscope.distributed.init_from_env`: gloo on CPUs, NCCL on GPUs) and runs the same
command; each pass takes its shard of the items and the results are combined on every rank.
Rank 0 alone prints and writes: the other ranks' stdout goes nowhere, their bars and notes are
off, and their output files (``--plot``, ``--lens-out``, the report folder) go to a scratch
folder that is removed after. ``record`` writes each rank's shards into the one store.

Commands that are not data passes (training, surgery, the causal tools...) refuse to run
under a launcher with more than one process.

Example:
    >>> from layerscope.launch import scratch_outputs
    >>> scratch_outputs(["probe", "m", "d", "--plot", "a/p.png", "--json"], "/tmp/s")
    ['probe', 'm', 'd', '--plot', '/tmp/s/p.png', '--json']
    >>> scratch_outputs(["report", "m", "d"], "/tmp/s")
    ['report', 'm', 'd', '--out', '/tmp/s/layerscope-report']
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

#: commands that run data-parallel under torchrun
DATA_PARALLEL = ("sweep", "record", "probe", "similarity", "importance", "lens", "report")

#: per command: options whose value is a file or folder only rank 0 writes
_OUTPUTS = {"probe": ("--plot",), "similarity": ("--plot",), "importance": ("--plot",),
            "lens": ("--plot", "--lens-out"), "report": ("--out", "-o")}
_DEFAULT_OUT = {"report": "layerscope-report"}


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def scratch_outputs(argv: list[str], scratch: str) -> list[str]:
    """``argv`` with the command's output paths moved into ``scratch`` (for ranks other than 0)."""
    command = _command(argv)
    names = _OUTPUTS.get(command, ())
    out, i, seen = [], 0, False
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in names and eq:
            out.append(f"{key}={Path(scratch) / Path(value).name}")
            seen = True
        elif arg in names and i + 1 < len(argv):
            out += [arg, str(Path(scratch) / Path(argv[i + 1]).name)]
            seen, i = True, i + 1
        else:
            out.append(arg)
        i += 1
    if command in _DEFAULT_OUT and not seen:
        out += [names[0], str(Path(scratch) / _DEFAULT_OUT[command])]
    return out


def _error(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; under a multi-process launcher, as one rank of a data-parallel run."""
    from layerscope.cli import main as cli_main

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    command = _command(argv)
    if world <= 1 or command is None or "--help" in argv or "-h" in argv:
        return cli_main(argv)
    if command not in DATA_PARALLEL:
        return _error(f"layerscope {command} does not run under torchrun ({world} processes); "
                      f"run it as one process, or use one of: {', '.join(DATA_PARALLEL)}")
    import torch.distributed as dist

    from layerscope import distributed
    from layerscope.errors import LayerscopeError

    try:
        distributed.init_from_env(_device_option(argv))
    except LayerscopeError as exc:
        return _error(str(exc))
    scratch = None
    try:
        if dist.get_rank() != 0:
            scratch = tempfile.mkdtemp(prefix=f"layerscope-rank{dist.get_rank()}-")
            argv = scratch_outputs(argv, scratch)
            os.environ["LAYERSCOPE_PROGRESS"] = "never"
            sys.stdout = open(os.devnull, "w")
        return cli_main(argv)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if dist.is_initialized():
            dist.destroy_process_group()


def _device_option(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--device="):
            return arg.split("=", 1)[1]
    return None
