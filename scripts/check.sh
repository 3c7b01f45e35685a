#!/usr/bin/env bash
# Static checks, run by .ci/run before the tests: ruff's lint rules and format, and mypy's types (strict on core/ and
# pipeline/), both configured in pyproject.toml over the whole project. Exits non-zero on any finding; both run
# even when the first finds something, so one run reports everything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
  echo "error: ruff and mypy are not installed: they come with the dev extra (scripts/install.sh --dev)" >&2
  exit 2
fi
status=0
.venv/bin/ruff check || status=1
# One formatting style: ruff's formatter (line length 120), checked, not applied: run `ruff format` to fix.
.venv/bin/ruff format --check || status=1
# mypy reads its file list (the whole project) from pyproject.toml.
.venv/bin/mypy || status=1
exit $status
