"""The seccomp filter every container process runs under.

Equal in effect to moby's default profile for what matters to an escape:
the syscalls that mount, create or join namespaces, trace, load kernel code
or keys, change the clock, or reach io_uring, bpf, userfaultfd or
perf_event_open fail with EPERM; clone with any namespace flag fails with
EPERM; clone3 fails with ENOSYS (so libcs fall back to clone, whose
flags a classic BPF filter can read); personality keeps only the values
moby allows. A foreign architecture (or x32 syscalls on x86_64) kills the
process. The program is built here as classic BPF, no libseccomp needed.

A container with a writable volume gets one rule more (``no_setid``): no
file may be given a setuid or setgid bit (chmod, fchmod, fchmodat,
fchmodat2, mknod, mknodat, creat, and open/openat that create), and openat2,
whose mode a filter cannot read, is ENOSYS (libcs then use openat). A
volume is a host folder: a setuid file the container made there would run
as its owner for any user who can reach it. Inside the container the bits
mean nothing anyway (no_new_privs).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import platform
import struct

from . import syscalls as sc

# Syscall numbers, taken from the kernel headers (asm/unistd_64.h, asm-generic/unistd.h).
X86_64 = {
    "mount": 165,
    "umount2": 166,
    "unshare": 272,
    "setns": 308,
    "ptrace": 101,
    "bpf": 321,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "reboot": 169,
    "swapon": 167,
    "swapoff": 168,
    "pivot_root": 155,
    "acct": 163,
    "settimeofday": 164,
    "clock_settime": 227,
    "clock_adjtime": 305,
    "adjtimex": 159,
    "syslog": 103,
    "quotactl": 179,
    "quotactl_fd": 443,
    "lookup_dcookie": 212,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "userfaultfd": 323,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "get_kernel_syms": 177,
    "query_module": 178,
    "uselib": 134,
    "nfsservctl": 180,
    "kcmp": 312,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "mount_setattr": 442,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "vhangup": 153,
    "_sysctl": 156,
    "ustat": 136,
    "sysfs": 139,
    "afs_syscall": 183,
    "tuxcall": 184,
    "security": 185,
    "vserver": 236,
    "set_mempolicy": 238,
    "mbind": 237,
    "move_pages": 279,
    "migrate_pages": 256,
    "get_mempolicy": 239,
    "pidfd_getfd": 438,
    "clone3": 435,
    "personality": 135,
}
AARCH64 = {
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "mount": 40,
    "umount2": 39,
    "unshare": 97,
    "setns": 268,
    "ptrace": 117,
    "bpf": 280,
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "reboot": 142,
    "swapon": 224,
    "swapoff": 225,
    "pivot_root": 41,
    "acct": 89,
    "settimeofday": 170,
    "clock_settime": 112,
    "clock_adjtime": 266,
    "adjtimex": 171,
    "syslog": 116,
    "quotactl": 60,
    "quotactl_fd": 443,
    "lookup_dcookie": 18,
    "perf_event_open": 241,
    "fanotify_init": 262,
    "userfaultfd": 282,
    "nfsservctl": 42,
    "kcmp": 272,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "mount_setattr": 442,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "vhangup": 58,
    "set_mempolicy": 237,
    "mbind": 235,
    "move_pages": 239,
    "migrate_pages": 238,
    "get_mempolicy": 236,
    "pidfd_getfd": 438,
    "clone3": 435,
    "personality": 92,
}
ARCHES = {
    # machine: (AUDIT_ARCH_*, syscall table, clone, clone3, personality)
    "x86_64": (0xC000003E, X86_64, 56, 435, 135),
    "aarch64": (0xC00000B7, AARCH64, 220, 435, 92),
}
# no_setid: syscall -> (index of its mode argument, index of its flags argument when it creates only with
# O_CREAT or O_TMPFILE, else None). x86_64: chmod fchmod fchmodat fchmodat2 mknod mknodat creat open openat;
# aarch64: fchmod fchmodat fchmodat2 mknodat openat
SETID_CALLS = {
    "x86_64": {90: (1, None), 91: (1, None), 268: (2, None), 452: (2, None), 133: (1, None), 259: (2, None),
               85: (1, None), 2: (2, 1), 257: (3, 2)},
    "aarch64": {52: (1, None), 53: (2, None), 452: (2, None), 33: (2, None), 56: (3, 2)},
}
OPENAT2 = 437
SETID_BITS = 0o6000
CREATING = 0o100 | 0o20000000  # O_CREAT | __O_TMPFILE
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
X32_SYSCALL_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# classic BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def denied_syscalls(machine: str | None = None) -> dict[str, int]:
    """Name -> number of every syscall the filter refuses outright on this machine."""
    table = ARCHES[machine or platform.machine()][1]
    return {name: nr for name, nr in table.items() if name not in ("clone3", "personality")}


def build_filter(machine: str | None = None, no_setid: bool = False) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions; ``no_setid``: with the rule of containers with a writable
    volume (see the module's docstring)."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, f"no seccomp filter for architecture {machine}")
    audit_arch, _table, clone_nr, clone3_nr, personality_nr = ARCHES[machine]
    deny = sorted(set(denied_syscalls(machine).values()))
    # Labels resolved at the end: each jump is written as a target name.
    prog: list[tuple[int, object, object, int]] = [
        (LD_W_ABS, 0, 0, OFFSET_ARCH),
        (JEQ_K, 0, "kill", audit_arch),
        (LD_W_ABS, 0, 0, OFFSET_NR),
    ]
    if machine == "x86_64":
        prog.append((JGE_K, "kill", 0, X32_SYSCALL_BIT))
    prog += [(JEQ_K, "eperm", 0, nr) for nr in deny]
    prog += [
        (JEQ_K, "enosys", 0, clone3_nr),
        (JEQ_K, "clone", 0, clone_nr),
        (JEQ_K, "personality", 0, personality_nr),
    ]
    setid = SETID_CALLS[machine] if no_setid else {}
    if no_setid:
        prog.append((JEQ_K, "enosys", 0, OPENAT2))
    prog += [(JEQ_K, f"mode{mode}-{flags}", 0, nr) for nr, (mode, flags) in sorted(setid.items())]
    prog.append((RET_K, 0, 0, RET_ALLOW))
    labels: dict[str, int] = {}
    for mode, flags in sorted(set(setid.values()), key=str):
        labels[f"mode{mode}-{flags}"] = len(prog)
        if flags is not None:  # opens that do not create have no mode (and may pass garbage there)
            prog += [(LD_W_ABS, 0, 0, OFFSET_ARG0 + 8 * flags), (JSET_K, 0, "allow", CREATING)]
        prog += [(LD_W_ABS, 0, 0, OFFSET_ARG0 + 8 * mode), (JSET_K, "eperm", 0, SETID_BITS), (RET_K, 0, 0, RET_ALLOW)]
    labels["clone"] = len(prog)
    prog += [(LD_W_ABS, 0, 0, OFFSET_ARG0), (JSET_K, "eperm", 0, NAMESPACE_FLAGS), (RET_K, 0, 0, RET_ALLOW)]
    labels["personality"] = len(prog)
    prog.append((LD_W_ABS, 0, 0, OFFSET_ARG0))
    prog += [(JEQ_K, "allow", 0, value) for value in PERSONALITY_ALLOWED]
    labels["eperm"] = len(prog)
    prog.append((RET_K, 0, 0, RET_ERRNO | errno.EPERM))
    labels["enosys"] = len(prog)
    prog.append((RET_K, 0, 0, RET_ERRNO | errno.ENOSYS))
    labels["kill"] = len(prog)
    prog.append((RET_K, 0, 0, RET_KILL_PROCESS))
    labels["allow"] = len(prog)
    prog.append((RET_K, 0, 0, RET_ALLOW))

    def offset(here: int, target: object) -> int:
        if isinstance(target, int):
            return target
        distance = labels[str(target)] - here - 1
        if not 0 <= distance <= 255:
            raise ValueError(f"seccomp jump to {target} too far ({distance})")
        return distance

    return [(code, offset(i, jt), offset(i, jf), k) for i, (code, jt, jf, k) in enumerate(prog)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@functools.cache
def compiled(machine: str | None = None, no_setid: bool = False) -> bytes:
    """The filter as the kernel reads it; built once per process (forked children inherit it)."""
    return b"".join(struct.pack("HBBI", *ins) for ins in build_filter(machine, no_setid))


class Prepared:
    """The filter in memory, ready for the kernel: made ahead, installed with one prctl."""

    def __init__(self, machine: str | None = None, no_setid: bool = False):
        self.no_setid = no_setid
        raw = compiled(machine, no_setid)
        self._buf = ctypes.create_string_buffer(raw, len(raw))
        self._prog = _SockFprog(len(raw) // 8, ctypes.cast(self._buf, ctypes.c_void_p))

    def install(self) -> None:
        """Load the filter into this thread (needs no_new_privs or CAP_SYS_ADMIN)."""
        sc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._prog))
