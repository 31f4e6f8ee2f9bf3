#!/usr/bin/env bash
# Command 1, the main job: set up what is missing, build the local base images
# (cached under ~/.cache/sandbox-kernel), and run the quickstart notebook end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sandbox-kernel image build all
.venv/bin/sandbox-kernel images
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
.venv/bin/jupyter nbconvert --to notebook --execute notebooks/quickstart.ipynb \
  --ExecutePreprocessor.timeout=600 --output-dir "$out" --output quickstart.ipynb
.venv/bin/jupyter nbconvert --to markdown "$out/quickstart.ipynb" --stdout 2>/dev/null
echo "quickstart: notebook ran end to end"
