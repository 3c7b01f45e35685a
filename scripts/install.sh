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

# --- Chromium for the real-browser test (tests/browser, driven by the playwright package; never
# `playwright install`: the test uses Debian's /usr/bin/chromium). Only as root and only when missing.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the browser test: apt-get update && apt-get install -y chromium"
    apt-get update && apt-get install -y chromium
  else
    echo "note: /usr/bin/chromium is missing; the browser test will be skipped (as root: apt-get install chromium)"
  fi
fi
# --- end Chromium
echo "installed: $(.venv/bin/python -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])')"
