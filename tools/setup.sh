#!/usr/bin/env bash
# Create .venv (if missing) and install fedhello_nb with what its tests need.
# torch is pinned to the CPU build first so that pip never downloads a CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_q() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pip_q "torch==2.13.0"
pip_q -e ".[dev,flower,flower-simulation,trackers]"
.venv/bin/python -c "import fedhello_nb, torch, transformers, peft; print('fedhello_nb', fedhello_nb.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
