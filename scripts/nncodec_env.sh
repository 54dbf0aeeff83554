#!/usr/bin/env bash
# Build the virtual environment that runs NNCodec 2.1.3 (the reference implementation of
# MPEG NNC, ISO/IEC 15938-17, DeepCABAC) as an optional peer of the engine benchmark
# (benchmarks/bench_engine.py, through benchmarks/nncodec_worker.py).
#
# NNCodec is never a dependency of fedpress: it lives in its own venv outside the
# repository. It is published as source only, so pip compiles its C++ extension
# (about 3 minutes on 2 idle cores, 15 when they are busy). Its declared requirements
# (torch, torchvision, opencv, scikit-learn, pandas, ...) are those of its training
# front end (nncodec.framework); compressing a dict of numpy arrays needs only numpy < 2
# (and pybind11 to build), so it is installed with --no-deps and the worker puts a stub
# nncodec.framework into sys.modules. No torch is installed.
#
# Usage:  bash scripts/nncodec_env.sh [VENV_DIR]       (default /work/nnc-venv)
#         NNCODEC_VENV=/path bash scripts/nncodec_env.sh
#         NNCODEC_SDIST=/path/nncodec-2.1.3.tar.gz bash scripts/nncodec_env.sh   (local sdist)
# Then:   python benchmarks/bench_engine.py --nncodec-python VENV_DIR/bin/python ...
set -euo pipefail

VENV="${1:-${NNCODEC_VENV:-/work/nnc-venv}}"
PY="${PYTHON:-python3}"
NNCODEC_VERSION="2.1.3"
SRC="${NNCODEC_SDIST:-nncodec==$NNCODEC_VERSION}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install "numpy<2" pybind11
"$VENV/bin/python" -m pip install --no-deps --no-build-isolation "$SRC"

# smoke test: the worker's own self-check (framework stub, round trips, bound check)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$VENV/bin/python" "$HERE/benchmarks/nncodec_worker.py" --self-test
echo "NNCodec venv ready: $VENV/bin/python"
