#!/usr/bin/env bash
# The lock, requirements.txt: every package that pyproject.toml's dependencies and extras need, pinned, each with
# the `# via` lines that say why it is there. Written by pip-compile (pip-tools, in the `dev` extra).
#   scripts/lock.sh            after a change to pyproject.toml: rewrite the lock, keeping the pins that still fit
#   scripts/lock.sh --upgrade  move every pin to the newest release the ranges allow
#   scripts/lock.sh --check    exit 1 if the lock is not what pip-compile writes from pyproject.toml (CI)
# torch is left out of the lock (listed as "unsafe"): its release is pinned in constraints-cpu.txt, and its build
# (CPU or CUDA) depends on the indexes the installing machine's pip sees, not on the lock. pip is left out too.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=requirements.txt
if [ ! -x .venv/bin/pip-compile ]; then
  echo "error: pip-compile (pip-tools) is not installed: it comes with the dev extra (scripts/install.sh --all)" >&2
  exit 2
fi
compile() {  # $1: output file; the rest: more pip-compile options
  local out=$1; shift
  CUSTOM_COMPILE_COMMAND="scripts/lock.sh" .venv/bin/pip-compile --quiet --all-extras --strip-extras \
    --no-emit-index-url --no-emit-find-links --unsafe-package torch --unsafe-package pip \
    --constraint constraints-cpu.txt --output-file "$out" "$@" pyproject.toml
}
case "${1:-}" in
  "") compile "$lock" ;;
  --upgrade) compile "$lock" --upgrade ;;
  --check)
    # pip-compile keeps the pins of the file it writes over: a copy of the lock stays the same unless
    # pyproject.toml asks for something the lock does not hold (or holds something no longer asked for).
    copy=$(mktemp -d)
    trap 'rm -rf "$copy"' EXIT
    cp "$lock" "$copy/$lock"
    compile "$copy/$lock"
    if ! diff -u "$lock" "$copy/$lock"; then
      echo "error: $lock is not what pip-compile writes from pyproject.toml; run scripts/lock.sh and commit it" >&2
      exit 1
    fi
    echo "$lock matches pyproject.toml" ;;
  *) echo "usage: scripts/lock.sh [--upgrade|--check]" >&2; exit 2 ;;
esac
