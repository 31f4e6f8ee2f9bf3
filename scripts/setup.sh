#!/usr/bin/env bash
# Install what is missing, idempotently: Debian packages, then a virtualenv in
# .venv with the package and its test dependencies. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and libc6-dev: the runtime compiles its small exec helper (sandbox_kernel/runtime/sk_exec.c).
# chromium: the panel's browser test drives Debian's chromium with Playwright (no browser download).
# python3-ipykernel: benchmarks/bench_kernel.py's plain kernel, the same ipykernel as the sandboxed kernel's image.
DEB_PACKAGES=(busybox-static mmdebstrap skopeo umoci zstd podman runc bubblewrap gcc libc6-dev docker-registry chromium uidmap
  slirp4netns python3-venv python3-ipykernel)
# The cgroup v2 part of the suite boots Debian's kernel in a VM (scripts/test-vm.sh, with virtme-ng from PyPI): qemu
# and the kernel, without what they merely recommend (firmware for other machines, a GUI).
VM_PACKAGES=(qemu-system-x86 linux-image-amd64)

# install_missing [APT OPTION...] -- PACKAGE...: the packages not installed yet, in one apt-get call
install_missing() {
  local options=() missing=() pkg
  while [ "$1" != "--" ]; do options+=("$1"); shift; done
  shift
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ${options[@]+"${options[@]}"} "${missing[@]}" \
    </dev/null >/dev/null
}
install_missing -- "${DEB_PACKAGES[@]}"
install_missing --no-install-recommends -- "${VM_PACKAGES[@]}"

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sandbox-kernel-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip </dev/null
  .venv/bin/python -m pip install -q -e '.[test]' </dev/null
  touch "$stamp"
fi
# The server extension's jupyter config: a wheel installs it (pyproject's data-files), an editable
# install does not, so it is put in place here (in the venv only).
install -D -m 644 jupyter-config/jupyter_server_config.d/sandbox_kernel.json \
  .venv/etc/jupyter/jupyter_server_config.d/sandbox_kernel.json
# Bytecode for the package even where PYTHONDONTWRITEBYTECODE is set: every `sandbox-kernel`
# command would otherwise compile its modules again (tens of milliseconds). Only changed files
# are recompiled.
.venv/bin/python -m compileall -q sandbox_kernel >/dev/null
# Containers run in user namespaces: root's get the id range of the system user sandbox-kernel
# (/etc/subuid, /etc/subgid), made here once, as docker makes dockremap for userns-remap.
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo .venv/bin/python -m sandbox_kernel.runtime.idmap reserve
# The users the rootless tests (and benchmarks --rootless) make cannot run .venv, whose Python may be under a
# directory only root enters: they get a venv of the system's Python (python3-venv) with the package's
# dependencies (not the package: they are given a copy of it), readable by everyone, made again when the
# dependencies change.
USERS_VENV=/var/cache/sandbox-kernel/users-venv
wanted=$(.venv/bin/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")
if [ ! -x "$USERS_VENV/bin/python" ] || [ "$(cat "$USERS_VENV/.dependencies" 2>/dev/null)" != "$wanted" ]; then
  echo "setup: making $USERS_VENV (the Python of the users the rootless tests make)"
  $sudo rm -rf "$USERS_VENV"
  $sudo mkdir -p "$(dirname "$USERS_VENV")"
  $sudo /usr/bin/python3 -m venv "$USERS_VENV"
  # shellcheck disable=SC2086  # (one argument per requirement)
  $sudo "$USERS_VENV/bin/python" -m pip install -q $wanted </dev/null
  echo "$wanted" | $sudo tee "$USERS_VENV/.dependencies" >/dev/null
  $sudo chmod -R a+rX "$USERS_VENV"
fi
# The compiled command process of a container (runtime/exec_helper.py): built once per source
# version into ~/.cache/sandbox-kernel/bin; without it containers start through a slower Python path.
.venv/bin/python -m sandbox_kernel.runtime.exec_helper >/dev/null
