#!/usr/bin/env bash
# Builds a side environment in which benchmarks/pipeline_step.py can time electricmayhem (MIT licence,
# not on the package index) next to pandemonium. Never the project's .venv, never a dependency.
#   bash benchmarks/install_electricmayhem.sh SOURCE_DIR [VENV_DIR]   (VENV_DIR default /tmp/emvenv)
#   VENV_DIR/bin/python benchmarks/pipeline_step.py --quick
# SOURCE_DIR is an electricmayhem checkout (v1.0.7 was measured). Its import of electricmayhem.whitebox
# needs Ax < 1.0 (it imports ax.modelbridge), scikit-learn and dill besides what pandemonium brings.
set -euo pipefail
SRC=${1:?usage: install_electricmayhem.sh SOURCE_DIR [VENV_DIR]}
VENV=${2:-/tmp/emvenv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# the pinned CPU torch first, so nothing below can pull the CUDA wheels
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -e "$ROOT" dill scikit-learn "ax-platform==0.5.0"
"$VENV/bin/pip" install -q --no-deps "$SRC"
"$VENV/bin/python" -c "import electricmayhem, electricmayhem.whitebox; print('electricmayhem', electricmayhem.__version__)"
