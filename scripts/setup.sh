#!/usr/bin/env bash
# Create .venv (if needed) and install eclearn with the given extras.
# torch==2.13.0 is installed first: it is the CPU build this machine's pip finds locally;
# the package itself only asks for torch>=2.2.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
