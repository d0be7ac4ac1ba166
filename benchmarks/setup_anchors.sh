#!/usr/bin/env bash
# A separate virtualenv with the anchors (nnsight, TransformerLens) for benchmarks/bench_sweep.py.
# Kept apart from .venv so that whatever transformers version TransformerLens wants stays here.
# Usage: bash benchmarks/setup_anchors.sh   (creates .venv-bench in the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-bench
python=${PYTHON:-$(sed -n 's/^home = //p' .venv/pyvenv.cfg)/python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "torch==2.13.0" > "$venv/torch-constraint.txt"
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -c "$venv/torch-constraint.txt" transformers nnsight
"$venv/bin/python" -m pip install -q -c "$venv/torch-constraint.txt" transformer-lens
"$venv/bin/python" -c "import torch, transformers, nnsight, transformer_lens; print('anchors ready: torch', torch.__version__, 'transformers', transformers.__version__, 'nnsight', nnsight.__version__)"
