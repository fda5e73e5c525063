#!/usr/bin/env bash
# Create .venv and install the package. `scripts/setup.sh dev` adds the test dependencies.
# torch is installed first, pinned, because on a machine without torch a bare requirement pulls a
# multi-GB CUDA build; the package itself only asks for torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
fi
.venv/bin/python -m pip install -q -e ".${extras}" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import animatediff, torch; print(f'animatediff ready (torch {torch.__version__})')"
