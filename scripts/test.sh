#!/usr/bin/env bash
# Command 2: set up what is missing, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check sandbox_kernel tests benchmarks scripts
exec .venv/bin/python -m pytest "$@"
