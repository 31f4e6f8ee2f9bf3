#!/usr/bin/env bash
# Command 2: set up what is missing, lint, and run the whole test suite: the host part (every test), then the
# cgroup v2 part in a VM with Debian's kernel (scripts/test-vm.sh: the tests marked `cgroups` once more, on a
# kernel with cgroup2 alone). Either failing fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check sandbox_kernel tests benchmarks scripts
status=0
start=$SECONDS
.venv/bin/python -m pytest "$@" || status=$?
host=$((SECONDS - start))
echo "== the cgroup v2 part, in a VM (scripts/test-vm.sh)"
vm=0
start=$SECONDS
bash scripts/test-vm.sh || vm=$?
echo "== host part: $host s (exit $status); VM part: $((SECONDS - start)) s (exit $vm)"
if [ "$status" -eq 0 ]; then status=$vm; fi
exit "$status"
