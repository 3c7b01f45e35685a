#!/usr/bin/env bash
# The MuseTalk GPU benchmark (BENCHMARKS.md section 9), for a CUDA machine without internet: everything it needs is
# in this working tree or already installed. Prints every row as it is measured; finishes in under 9 minutes.
#
#   scripts/gpu-bench.sh [extra bench.gpu options]
#
# Python: $PYTHON, else .venv/bin/python, else python3; it needs a CUDA build of torch==2.13.0 and this project's
# requirements (scripts/install.sh --gpu). diffusers can be carried as a wheel when it is not installed: on a
# machine with internet `pip download diffusers==<the version in requirements.txt> --no-deps -d wheels/`, copy
# wheels/ into the working tree; this script installs it from there (--no-index --no-deps) before running.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  wheel=$(ls wheels/diffusers-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    echo "diffusers is not installed and there is no wheels/diffusers-*.whl to install it from" \
      "(see this script's header)" >&2
    exit 2
  fi
  "$PY" -m pip install --no-index --no-deps "$wheel"
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: torch ' + torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# Part 1: per batch size 1..32 (UNet / VAE in CUDA events, encoder, peak memory); part 2: 1, 4, 8, 12, 16 real-time
# sessions through the batcher; part 3: 4 and 16 sessions' throughput through the batcher vs the old way (eager, lock).
exec timeout 530 "$PY" -m bench.gpu --repeats 20 --sessions 1,4,8,12,16 --seconds 8 --warmup 3 \
  --compare-lock --lock-sessions 4,16 --rounds 2 "$@"
