"""The seccomp program itself, checked without running it: it is run here by a small classic-BPF interpreter
against every syscall the machine's table knows, and the list it follows against moby's."""

from __future__ import annotations

import errno
import hashlib
import struct

import pytest

from sandbox_kernel.runtime import seccomp_profile as profile
from sandbox_kernel.runtime import security
from sandbox_kernel.runtime.syscall_numbers import AARCH64, X86_64

TABLES = {"x86_64": X86_64, "aarch64": AARCH64}
EPERM = security.RET_ERRNO | errno.EPERM
ENOSYS = security.RET_ERRNO | errno.ENOSYS
ALLOW = security.RET_ALLOW
KILL = security.RET_KILL_PROCESS


def run(prog: list[tuple[int, int, int, int]], machine: str, nr: int, *args: int, arch: int | None = None) -> int:
    """What the kernel would do with syscall ``nr`` (seccomp_data: nr, arch, ip, args as u64)."""
    data = struct.pack("<iIQ6Q", nr, security.ARCHES[machine][0] if arch is None else arch, 0,
                       *(list(args) + [0] * (6 - len(args))))
    acc, pc, steps = 0, 0, 0
    while True:
        steps += 1
        assert steps <= len(prog), "the program loops"
        code, jt, jf, k = prog[pc]
        if code == security.LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == security.RET_K:
            return k
        elif code == security.JA:
            pc += 1 + k
        else:
            taken = {security.JEQ_K: acc == k, security.JGT_K: acc > k, security.JGE_K: acc >= k,
                     security.JSET_K: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_every_syscall_gets_the_profiles_answer(machine):
    prog = security.build_filter(machine)
    assert len(prog) < 4096
    for i, (code, jt, jf, k) in enumerate(prog):
        if code == security.JA:
            assert i + 1 + k < len(prog)
        elif code != security.RET_K and code != security.LD_W_ABS:
            assert i + 1 + max(jt, jf) < len(prog), "every jump lands inside the program"
    assert prog[-1][0] == security.RET_K, "the program cannot fall off its end"
    allowed = security.allowed_syscalls(machine)
    special = {"clone", "clone3", "personality", "socket"}
    last = security.last_known(machine)
    for name, nr in TABLES[machine].items():
        got = run(prog, machine, nr)
        if name in special:
            continue
        if nr > last:
            assert got == ENOSYS, f"{name} ({nr}) is newer than the profile: ENOSYS"
        elif name in allowed:
            assert got == ALLOW, f"{name} ({nr}) is in moby's list"
        else:
            assert got == EPERM, f"{name} ({nr}) is not in moby's list: EPERM, got {got:#x}"
    assert run(prog, machine, last + 1) == ENOSYS and run(prog, machine, 1000) == ENOSYS, "new syscalls add nothing"
    assert run(prog, machine, 5, arch=0x40000003) == KILL, "another architecture's syscalls kill"


def test_what_escapes_use_is_refused_and_ordinary_work_is_not():
    prog = security.build_filter("x86_64")
    for name in ("mount", "umount2", "unshare", "setns", "bpf", "keyctl", "add_key", "kexec_load", "init_module",
                 "reboot", "open_tree", "move_mount", "fsopen", "mount_setattr", "io_uring_setup", "io_uring_enter",
                 "userfaultfd", "perf_event_open", "open_by_handle_at", "pidfd_getfd", "kcmp", "pivot_root",
                 "swapon", "settimeofday", "syslog", "quotactl", "lookup_dcookie", "iopl", "acct", "sethostname"):
        assert run(prog, "x86_64", X86_64[name]) == EPERM, name
    for name in ("read", "write", "openat", "mmap", "execve", "fork", "wait4", "chroot", "ptrace", "futex_waitv",
                 "memfd_create", "landlock_create_ruleset", "arch_prctl", "pidfd_open", "statx", "process_vm_readv"):
        assert run(prog, "x86_64", X86_64[name]) == ALLOW, name
    assert run(prog, "x86_64", 0x40000000 | 1) == KILL, "x32 syscalls kill"


def test_the_argument_rules():
    prog = security.build_filter("x86_64")
    clone, clone3, personality, socket = (X86_64[n] for n in ("clone", "clone3", "personality", "socket"))
    assert run(prog, "x86_64", clone, 0x11 | 0x100 | 0x200 | 0x400 | 0x800 | 0x10000) == ALLOW, "a thread"
    for flag in (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert run(prog, "x86_64", clone, flag | 0x11) == EPERM, f"clone with namespace flag {flag:#x}"
    assert run(prog, "x86_64", clone3, 0) == ENOSYS
    for value in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert run(prog, "x86_64", personality, value) == ALLOW
    assert run(prog, "x86_64", personality, 0x0040000) == EPERM, "ADDR_NO_RANDOMIZE is not allowed"
    for family in (1, 2, 10, 16, 17, 39, 41):  # unix, inet, inet6, netlink, packet, ...
        assert run(prog, "x86_64", socket, family) == ALLOW
    for family in (38, 40):  # AF_ALG, AF_VSOCK
        assert run(prog, "x86_64", socket, family) == EPERM
        assert run(prog, "x86_64", socket, family | (1 << 32)) == EPERM, "the kernel reads only the int"


def test_no_setid_refuses_setuid_and_setgid_bits_only():
    prog = security.build_filter("x86_64", no_setid=True)
    for name, mode_at in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("mknodat", 2), ("creat", 1)):
        args = [0] * 4
        args[mode_at] = 0o4755
        assert run(prog, "x86_64", X86_64[name], *args) == EPERM, f"{name} 4755"
        args[mode_at] = 0o2755
        assert run(prog, "x86_64", X86_64[name], *args) == EPERM, f"{name} 2755"
        args[mode_at] = 0o1777
        assert run(prog, "x86_64", X86_64[name], *args) == ALLOW, f"{name} 1777"
    openat = X86_64["openat"]
    assert run(prog, "x86_64", openat, 0, 0, 0o100, 0o4755) == EPERM, "openat O_CREAT with setuid"
    assert run(prog, "x86_64", openat, 0, 0, 0, 0o4755) == ALLOW, "no O_CREAT: the mode means nothing"
    assert run(prog, "x86_64", openat, 0, 0, 0o100, 0o644) == ALLOW
    assert run(prog, "x86_64", X86_64["openat2"]) == ENOSYS, "openat2's mode is in memory"
    assert run(security.build_filter("x86_64"), "x86_64", X86_64["chmod"], 0, 0o4755) == ALLOW, "only with a volume"


def test_the_list_is_mobys_unconditional_rule():
    """The allowlist with io_uring's names put back hashes to the names of moby's file at MOBY_COMMIT."""
    names = sorted(set(profile.ALLOW) | set(profile.REMOVED_SINCE))
    assert len(names) == len(profile.ALLOW) + len(profile.REMOVED_SINCE), "no name twice, io_uring's removed"
    assert f"sha256:{hashlib.sha256(chr(10).join(names).encode()).hexdigest()}" == profile.MOBY_ALLOW_DIGEST
    assert not set(profile.REMOVED_SINCE) & set(security.allowed_syscalls("x86_64"))


def test_unknown_architecture():
    with pytest.raises(OSError):
        security.build_filter("mips")
