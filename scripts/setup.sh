#!/usr/bin/env bash
# Set up everything fedpress needs on a fresh Debian machine: the Fashion-MNIST
# Debian package (for the demo and tests) and a virtual environment under .venv
# with fedpress, its back ends and the dev tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    echo ">> installing Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
      || echo "!! could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"
  else
    echo "!! no apt-get: install Fashion-MNIST IDX files under /usr/share/datasets/fashion-mnist"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.fedpress-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo ">> installing fedpress and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch pinned to the CPU build: a bare 'torch' would pull a multi-GB CUDA build
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[all,dev]"
  # APPFL for the adapter's tests, without its heavy dependencies (Ray, Globus, wandb,
  # a CUDA torch): only what its compressor and agents import
  "$VENV/bin/python" -m pip install -q --no-deps "appfl==1.12.0"
  "$VENV/bin/python" -m pip install -q omegaconf zstd blosc
  touch "$stamp"
fi
