#!/usr/bin/env bash
# Set up (if needed) and run the lint, the type check (mypy: src/) and the
# whole test suite: the README's test command.
# Then build the wheel and sdist, check them and run the quick start from the installed wheel
# (scripts/check_wheel.sh; ECLEARN_SKIP_WHEEL=1 skips that step outside CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ -z "${ECLEARN_DATA:-}" ] && [ -d ../shared/data ]; then
  export ECLEARN_DATA="$(cd ../shared/data && pwd)"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
bash scripts/check_wheel.sh
