#!/usr/bin/env bash
# Command 1, the main job: set up what is missing, build the local base images (cached under
# ~/.cache/sandbox-kernel), and run notebooks/01-quickstart.ipynb end to end, headless.
# The executed notebook and an HTML copy go to $SANDBOX_KERNEL_OUT (default ./out); the store is
# $SANDBOX_KERNEL_ROOT if set (the default store otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sandbox-kernel image build busybox
.venv/bin/sandbox-kernel image build debian-python
.venv/bin/sandbox-kernel images
out="${SANDBOX_KERNEL_OUT:-$PWD/out}"
.venv/bin/python scripts/run_notebook.py notebooks/01-quickstart.ipynb --out "$out" \
  --report-image localhost/quickstart:1
echo "quickstart: notebook ran end to end; open $out/01-quickstart.html, or the notebooks in JupyterLab:"
echo "  .venv/bin/jupyter lab notebooks/"
