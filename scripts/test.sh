#!/usr/bin/env bash
# Run the whole test suite (fast and slow tests) inside a loopback-only network namespace, so that no test,
# WebRTC included, can send a packet anywhere but 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import pytest, playwright" 2>/dev/null; then
  echo "error: the test set-up is not installed: run scripts/install.sh --dev first" >&2
  exit 2
fi
exec unshare -n -- sh -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' sh "$@"
