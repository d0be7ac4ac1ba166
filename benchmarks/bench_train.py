"""Cost of the per-layer training monitors: the same training loop with them on and off.

Runs ``layerscope.train`` on MNIST-shaped data (random pixels with labels from a fixed random
linear map, so the network learns; only the time matters) for the
zoo CNN and MLP, alternating monitors on (every 50 steps, the default) and off, round after
round (A B A B ...), timing every optimizer step with a callback. Each round gives the mean
step time; the ratio is median(on) / median(off). Also reports the cost of one monitored step
against an ordinary one. Writes the "## Training monitors" section of BENCHMARKS.md (other
sections are kept).

Usage: .venv/bin/python benchmarks/bench_train.py [--rounds 7] [--steps 120]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from layerscope.train import train

from sections import write_section  # benchmarks/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
# CPU time of this thread: with one torch thread every op runs here, so other jobs on a shared
# machine do not inflate it the way they inflate wall time
CLOCK = time.thread_time
SECTION = "## Training monitors"
CASES = {
    "cnn (MNIST 1x28x28, batch 64)": ("cnn", (1, 28, 28), 64),
    "mlp (digits 64, batch 64)": ("mlp", (64,), 64),
}


def one_round(spec, shape, batch, steps, monitor_every, seed):
    g = torch.Generator().manual_seed(seed)
    n = steps * batch
    x = torch.randn(n, *shape, generator=g)
    y = (x.flatten(1) @ torch.randn(x[0].numel(), 10, generator=g)).argmax(1)  # learnable
    stamps = []
    with tempfile.TemporaryDirectory() as tmp:
        train(spec, (x, y), eval_data=(x[:batch], y[:batch]), out_dir=tmp, epochs=1,
              batch_size=batch, monitor_every=monitor_every, progress=False, plots=False,
              callbacks=[lambda step, epoch, loss: stamps.append((step, CLOCK()))])
    gaps = [(s, b - a) for (_, a), (s, b) in zip(stamps, stamps[1:])]
    every = monitor_every or 0
    # step s finished at stamp s; the step that ran after stamp s-1 is step index s-1
    monitored = [d for s, d in gaps if every and (s - 1) % every == 0]
    plain = [d for s, d in gaps if not (every and (s - 1) % every == 0)]
    return statistics.mean(d for _, d in gaps), monitored, plain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--only", default=None, help="run only the cases whose label has this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines, results = [], []
    for label, (spec, shape, batch) in CASES.items():
        if args.only and args.only not in label:
            continue
        one_round(spec, shape, batch, 20, args.every, 0)          # warm-up
        on, off, mon_steps, plain_steps = [], [], [], []
        for r in range(args.rounds):
            for every, sink in ((args.every, on), (0, off)):
                mean, monitored, plain = one_round(spec, shape, batch, args.steps, every, r)
                sink.append(mean)
                if every:
                    mon_steps += monitored
                    plain_steps += plain
        ratio = statistics.median(on) / statistics.median(off)
        spread = sorted(a / b for a, b in zip(on, off))
        single = (statistics.median(mon_steps) / statistics.median(plain_steps)
                  if mon_steps and plain_steps else float("nan"))  # needs steps > every
        results.append((label, ratio, single))
        lines.append(f"| {label} | {args.every} | {statistics.median(off) * 1e3:.2f} | "
                     f"{statistics.median(on) * 1e3:.2f} | **{ratio:.3f}** | "
                     f"{spread[0]:.3f}-{spread[-1]:.3f} | {single:.2f} |")
        print(lines[-1], flush=True)
    verdict = " ".join(
        f"{label}: {'meets' if r <= 1.10 else 'misses'} the target (×{r:.3f}); one monitored step "
        f"costs ×{single:.2f} a plain one, i.e. ×{1 + (single - 1) / args.every:.3f} spread over "
        f"every {args.every} steps." for label, r, single in results)
    text = "\n".join([
        SECTION, "",
        f"`benchmarks/bench_train.py` ({datetime.date.today()}, {platform.machine()}, "
        f"{torch.get_num_threads()} thread, torch {torch.__version__}, {args.rounds} rounds "
        f"of {args.steps} steps, A/B interleaved). Mean CPU time (this thread's, so other jobs "
        f"on the machine do not count) per optimizer step, median over rounds; monitors on = per-layer gradient/weight/update norms and activation hooks "
        f"every {args.every} steps. Target: ratio <= 1.10.",
        "",
        "| model | monitor every | step, off (ms) | step, on (ms) | ratio on/off | ratio range "
        "over rounds | one monitored step / plain step |",
        "|---|---|---|---|---|---|---|",
        *lines, "",
        verdict, ""])
    write_section(ROOT / "BENCHMARKS.md", SECTION, text)


if __name__ == "__main__":
    main()
