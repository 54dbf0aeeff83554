#!/usr/bin/env bash
# A separate virtual environment for testing fedpress.appfl against APPFL's agents
# (appfl.agent imports wandb, opacus, seaborn, ... which fedpress's own .venv lacks),
# then tests/test_appfl.py in it. fedpress's .venv is not touched.
#
#   scripts/appfl_env.sh [VENV]      (default /tmp/appfl-venv)
#
# appfl goes in without its declared dependencies (Globus, Ray, proxystore, ...): only
# what its compressor module and its agents import is installed. torch stays the CPU
# build 2.13.0 (a constraint, so that no package upgrades it to a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/appfl-venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"

pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q --no-deps "appfl==1.12.0"
# appfl.compressor's imports
pip install -q -c "$constraints" omegaconf zstd blosc numpy pyyaml packaging
# fedpress (editable, from this checkout) and its core dependencies, and the tests'
pip install -q --no-deps -e .
pip install -q -c "$constraints" "ml-dtypes>=0.4" "zstandard>=0.22" "numba>=0.60" \
  "typer>=0.12" "rich>=13" blosc2 lz4 pytest pytest-timeout hypothesis
# appfl.agent's imports (piq without its torchvision: see docs/appfl.md)
pip install -q -c "$constraints" wandb opacus colorama matplotlib seaborn scikit-learn
pip install -q --no-deps piq

"$VENV/bin/python" -m pytest -q tests/test_appfl.py -p no:cacheprovider
