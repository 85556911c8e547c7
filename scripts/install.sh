#!/usr/bin/env bash
# Installs pandemonium into ./.venv (created if missing).
#   bash scripts/install.sh          # the package, for running modes
#   bash scripts/install.sh --dev    # plus test tools and headless Chromium for the report test
# A torch that is already importable is kept (GPU users bring their own); otherwise the pinned
# CPU build goes in first, so no dependency can pull the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "install.sh: unknown argument '$arg' (known: --dev)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "torch==2.13.0"
fi
if [ "$DEV" = 1 ]; then
  "$VPY" -m pip install -q -e ".[dev]" -e examples/pandemonium_example_plugin
  # Headless Chromium renders the HTML report in tests; Debian's package, installed once.
  if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "install.sh: could not install chromium; the report rendering test will fail" >&2
    else
      echo "install.sh: chromium not found and apt-get unavailable (need root); install it for the report test" >&2
    fi
  fi
else
  "$VPY" -m pip install -q -e .
fi
# MLflow's empty schema for this MLflow version, built once here (about 1.5 s) instead of by the first
# run in a new results folder (pandemonium.tracking.mlflow_schema); a failure only costs that time later.
"$VPY" -c "from pandemonium.tracking.mlflow_schema import schema_template; schema_template()" 2>/dev/null \
  || echo "install.sh: could not prebuild the MLflow schema template; the first run builds it" >&2
