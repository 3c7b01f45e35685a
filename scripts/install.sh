#!/usr/bin/env bash
# Create .venv and install the pinned requirements.
#   scripts/install.sh          torch 2.13.0 pinned by constraints-cpu.txt (the CPU build where one is provided)
#   scripts/install.sh --gpu    the same pins without the constraint: PyPI's Linux torch 2.13.0 is a CUDA build
set -euo pipefail
cd "$(dirname "$0")/.."
constraint=(-c constraints-cpu.txt)
[ "${1:-}" = "--gpu" ] && constraint=()
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --disable-pip-version-check -q "${constraint[@]}" torch==2.13.0 -r requirements.txt
.venv/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
.venv/bin/python -m musetalk.avatar demo
echo "installed: $(.venv/bin/python -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])')"
