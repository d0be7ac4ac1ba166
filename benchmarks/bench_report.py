"""Time the default report (`layerscope report`: MiniLM-L6 on 2,000 sentences) stage by stage.

Each round runs the CLI in a fresh process (as a user would), in a fresh folder, and reads the
stage timings the report writes to results.json. Prints a markdown table; the target is <= 180 s
wall time on the 2-core CPU machine.

    .venv/bin/python benchmarks/bench_report.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERSCOPE = Path(sys.executable).with_name("layerscope")


def one_round(extra: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        t0 = time.perf_counter()
        subprocess.run([str(LAYERSCOPE), "report", *extra, "-o", str(out)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        return wall, json.loads((out / "results.json").read_text())["stages"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("args", nargs="*", help="extra arguments for `layerscope report`")
    a = ap.parse_args()
    walls, stages = [], []
    for _ in range(a.rounds):
        w, s = one_round(a.args)
        walls.append(w)
        stages.append(s)
        print(f"round: {w:.1f} s", file=sys.stderr)
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    print(f"| stage | median s |\n|---|---|")
    for name in stages[0]:
        print(f"| {name} | {statistics.median(s.get(name, 0.0) for s in stages):.1f} |")
    print(f"| **wall, whole command** | **{statistics.median(walls):.1f}** (min {min(walls):.1f}, max {max(walls):.1f}) |")


if __name__ == "__main__":
    main()
