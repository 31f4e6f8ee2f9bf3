#!/usr/bin/env bash
# The cgroup v2 part of the suite, on a real cgroup v2 kernel: a VM booted with Debian's kernel.
#
#     bash scripts/test-vm.sh [PYTEST ARGS]
#
# virtme-ng boots the newest /boot/vmlinuz-* (Debian's linux-image-amd64, which scripts/setup.sh
# installs) under qemu's software emulation (TCG: a nested KVM guest hangs on this kind of machine),
# over this machine's own file system, read-only: the checkout, its .venv and the cached test images
# are the host's (/etc takes changes in the guest alone, for the users the tests make). The guest
# comes up with cgroup2 alone. Inside, the stores, pytest's temporary files and 1 GiB of swap are on an
# ext4 disk of the guest's own (overlayfs cannot put its upper dir on the shared file system), and the
# tests marked `cgroups` (the ones that touch cgroups for real) run with pytest; what it prints comes
# here as it goes, and its exit status is this script's. A run takes about ten minutes on a 2-core
# machine (the boot about 35 s; under emulation a Python start takes about 2 s).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$kernel" ] || [ ! -x .venv/bin/vng ] || ! command -v qemu-system-x86_64 >/dev/null; then
  echo "test-vm: missing a kernel in /boot, qemu-system-x86_64 or .venv/bin/vng: run bash scripts/setup.sh" >&2
  exit 2
fi
started=$(date +%s)
# bytecode for what changed since the last set-up (the guest cannot write it: every command would compile anew)
.venv/bin/python -m compileall -q sandbox_kernel >/dev/null
# The cached base images the fixtures load, and the compiled exec helper: made here if they are missing
# (the guest cannot make them: the host's files are read-only there).
.venv/bin/python -c 'import tempfile
from sandbox_kernel.runtime import Store, build, exec_helper
exec_helper.path()
with tempfile.TemporaryDirectory() as d:
    for name in ("busybox", "debian-python"):
        build(Store(d + "/" + name), name)' >/dev/null

scratch=$(mktemp -d /var/tmp/sk-vm.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
printf '%q ' "$@" > "$scratch/args"
# only the files that hold marked tests: collecting the others (Jupyter, schemathesis) takes minutes under TCG
files=$(grep -l "pytest.mark.cgroups" tests/test_*.py | tr '\n' ' ')
cat > "$scratch/inner.sh" <<EOF
set -u
# (not on /tmp: the checkout may be there)
work=/mnt
disk=\$(ls /dev/vd? /dev/sd? 2>/dev/null | head -n 1)
mount -t ext4 "\$disk" \$work && chmod 1777 \$work || { echo "test-vm: no disk for the guest's files" >&2; echo 1 > "$scratch/status"; exit; }
modprobe loop 2>/dev/null  # (--disk: loop devices)
cd "$repo"
# swap for the --memory-swap test (a file on the guest's disk; the host's swap is not touched)
{ fallocate -l 1G \$work/swap && chmod 600 \$work/swap && mkswap -q \$work/swap && swapon \$work/swap; } >/dev/null 2>&1 ||
  echo "test-vm: no swap in the guest: the --memory-swap test will skip" >&2
# An editable install's .pth imports a finder in every Python process (pathlib, re, importlib.util: half of
# an interpreter's start, a second under emulation); in the guest alone a plain path entry stands in for it.
for pth in .venv/lib/python3*/site-packages/__editable__.*.pth; do
  [ -f "\$pth" ] && grep -q "^import" "\$pth" || continue
  echo "$repo" > \$work/editable.pth && mount --bind \$work/editable.pth "\$pth"
done
# useradd replaces these files by rename: a file virtme-ng mounted over one (/etc/shadow) is put back as a
# plain file of the guest's /etc (an overlay: nothing reaches the host)
for file in /etc/passwd /etc/group /etc/shadow /etc/gshadow /etc/subuid /etc/subgid; do
  if mountpoint -q "\$file"; then
    cp "\$file" \$work/copy && umount "\$file" && cat \$work/copy > "\$file"
  fi
done
# the kernel's own warnings, for the case where the guest stops making progress (see below)
{ dmesg --follow --level=emerg,alert,crit,err,warn 2>/dev/null |
  grep --line-buffered -E "stall|lockup|LOCKUP|blocked for more than|BUG:|Oops" > "$scratch/kernel.log"; } &
echo "test-vm: guest up \$(( \$(date +%s) - $started )) s after the start"
export PYTHONDONTWRITEBYTECODE=1 HOME=\$work/home TMPDIR=\$work/tmp SANDBOX_KERNEL_CACHE="${SANDBOX_KERNEL_CACHE:-$HOME/.cache/sandbox-kernel}"
mkdir -p \$HOME \$TMPDIR
# (without the plugins these files do not use: importing them takes two minutes under emulation)
eval ".venv/bin/python -m pytest -m cgroups -p no:cacheprovider -p no:nbval -p no:schemathesis -p no:hypothesispytest \
  -p no:anyio --basetemp=\$work/pytest \$(cat $scratch/args) $files"
echo \$? > "$scratch/status"
echo "test-vm: pytest done \$(( \$(date +%s) - $started )) s after the start"
EOF
# (through a pipe: qemu opens its console output anew, which truncates a log file that stdout is; /etc is
# writable in the guest alone, for the users the delegation tests make)
# A guest under emulation has stopped making progress as a whole once (its clock too, so pytest's per-test
# timeout never fired): scripts/vm_watch.py ends a guest that prints nothing for longer than that timeout, and
# the part runs once more, saying so; a test that hangs twice fails. The guest's kernel warnings (stalls,
# lockups, hung tasks) go to a file that is shown then.
for attempt in 1 2; do
  rm -f "$scratch/status" "$scratch/kernel.log" "$scratch/tmp.img"
  # The guest's files: an ext4 of its own (a sparse file here, a disk there), new for each attempt. Not a
  # tmpfs: idmapped mounts of a tmpfs need Linux 6.3, and the containers' --disk files need room that a tmpfs
  # in 4 GiB of RAM has not.
  truncate -s 40G "$scratch/tmp.img"
  mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$scratch/tmp.img"
  watch=0
  PATH="$repo/.venv/bin:$PATH" .venv/bin/python scripts/vm_watch.py 900 \
    vng --disable-kvm -r "$kernel" --rwdir "$scratch" --memory 4G --cpus "$(nproc)" \
    --overlay-rwdir /etc --disk "$scratch/tmp.img" --exec "bash $scratch/inner.sh" | cat || watch=$?
  [ "$watch" = 124 ] || break
  if [ -s "$scratch/kernel.log" ]; then
    { echo "test-vm: the guest's kernel said:"; tail -n 40 "$scratch/kernel.log"; } >&2
  fi
  if [ "$attempt" = 1 ]; then echo "test-vm: starting the VM part once more" >&2; fi
done
status=$(cat "$scratch/status" 2>/dev/null || echo 1)
exit "$status"
