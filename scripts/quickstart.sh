#!/usr/bin/env bash
# Set up (if needed) and run the main job: the equality-constrained convection solver
# against the penalty-weighted PINN, printing the result table (about a minute on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/eclearn run convection-quick --out runs/quickstart "$@"
