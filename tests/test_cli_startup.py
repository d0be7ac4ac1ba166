"""Starting the command line stays light: listing the commands and refusing a bad output path
import neither torch nor transformers (they load inside a command, after its path checks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "matplotlib", "sklearn")

SCRIPT = """
import sys
from layerscope.cli import main
code = main(sys.argv[1:])
print("CODE", code)
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _run(args: list[str], cwd) -> tuple[int, list[str], str]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    code = int(next(s for s in lines if s.startswith("CODE ")).split()[1])
    heavy = eval(next(s for s in lines if s.startswith("HEAVY "))[len("HEAVY "):])
    return code, heavy, proc.stderr


def test_help_imports_no_heavy_library(tmp_path):
    code, heavy, err = _run(["--help"], tmp_path)
    assert code == 0 and heavy == [], (heavy, err)


@pytest.mark.parametrize("argv", [
    "importance mlp digits --plot {d}/x.png",
    "embed mlp digits --plot {d}/x.png",
    "similarity mlp digits --plot {d}/x.png",
    "lens gpt text --plot {d}/x.png",
])
def test_a_bad_plot_path_is_refused_before_torch_loads(argv, tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    code, heavy, err = _run(argv.format(d=missing).split(), tmp_path)
    assert code == 2 and "does not exist" in err and heavy == [], (heavy, err)
    assert not (tmp_path / "no").exists()
