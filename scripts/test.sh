#!/usr/bin/env bash
# Set up (if needed) and run the lint and the whole test suite: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ -z "${ECLEARN_DATA:-}" ] && [ -d ../shared/data ]; then
  export ECLEARN_DATA="$(cd ../shared/data && pwd)"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
