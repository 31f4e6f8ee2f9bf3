"""The seccomp filter every container process runs under: moby's default profile, as an allowlist.

The syscalls and argument rules are those of seccomp_profile.py (moby's list,
with the changes moby made since, and none of the rules that need a
capability a container does not have). Anything else fails with EPERM; a
syscall newer than every one the profile names fails with ENOSYS, so that a
newer kernel's syscalls are closed and programs fall back as on an older
kernel (runc does the same). clone with any namespace flag fails with EPERM,
clone3 with ENOSYS (its flags are in memory: libcs fall back to clone),
personality keeps the values moby allows, socket refuses AF_ALG and
AF_VSOCK. A foreign architecture (i386's int 0x80, x32 syscalls on x86_64)
kills the process. Arguments are compared in their low 32 bits, which is
all the kernel reads of those int-sized arguments.

A container with a writable volume gets one rule more (``no_setid``): no
file may be given a setuid or setgid bit (chmod, fchmod, fchmodat, mknod,
mknodat, creat, and open/openat that create), and openat2, whose mode a
filter cannot read, is ENOSYS (libcs then use openat). A volume is a host
folder: a setuid file the container made there would run as its owner for
any user who can reach it. Inside the container the bits mean nothing anyway
(no_new_privs).

The program is classic BPF, built here, no libseccomp needed: a few checks
with handlers of their own, then the allowed numbers as ranges, each range
four instructions that end in their own return (no jump is ever far).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import platform
import struct

from . import seccomp_profile as profile
from . import syscall_numbers
from . import syscalls as sc

ARCHES = {
    # machine: (AUDIT_ARCH_*, syscall table)
    "x86_64": (0xC000003E, syscall_numbers.X86_64),
    "aarch64": (0xC00000B7, syscall_numbers.AARCH64),
}
# The capabilities a container's processes have (process.CAPABILITIES): the profile's rules for others are out.
CONTAINER_CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
                          "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_SETFCAP")
X32_SYSCALL_BIT = 0x40000000
# no_setid: syscall name -> (index of its mode argument, index of its flags argument when it creates only with
# O_CREAT or O_TMPFILE, else None)
SETID_CALLS = {"chmod": (1, None), "fchmod": (1, None), "fchmodat": (2, None), "mknod": (1, None),
               "mknodat": (2, None), "creat": (1, None), "open": (2, 1), "openat": (3, 2)}
SETID_BITS = 0o6000
CREATING = 0o100 | 0o20000000  # O_CREAT | __O_TMPFILE

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# classic BPF opcodes
LD_W_ABS = 0x20
JA = 0x05
JEQ_K = 0x15
JGT_K = 0x25
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

Instruction = tuple[int, int, int, int]


def _table(machine: str) -> dict[str, int]:
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, f"no seccomp filter for architecture {machine}")
    return ARCHES[machine][1]


def allowed_syscalls(machine: str | None = None) -> dict[str, int]:
    """Name -> number of every syscall allowed outright (without a look at its arguments) on this machine."""
    machine = machine or platform.machine()
    table = _table(machine)
    names = set(profile.ALLOW) | set(profile.ALLOW_SINCE_4_8) | set(profile.ALLOW_BY_MACHINE.get(machine, ()))
    for capability in CONTAINER_CAPABILITIES:
        names |= set(profile.ALLOW_BY_CAPABILITY.get(capability, ()))
    return {name: table[name] for name in sorted(names) if name in table}


def last_known(machine: str | None = None) -> int:
    """The highest syscall number the profile names on this machine: anything above it is ENOSYS."""
    table = _table(machine or platform.machine())
    return max(table[name] for name in profile.profile_names() if name in table)


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for number in sorted(numbers):
        if out and number == out[-1][1] + 1:
            out[-1] = (out[-1][0], number)
        else:
            out.append((number, number))
    return out


def _ret(value: int) -> Instruction:
    return (RET_K, 0, 0, value)


def _arg(index: int) -> Instruction:
    return (LD_W_ABS, 0, 0, OFFSET_ARG0 + 8 * index)  # the low 32 bits (little-endian machines)


def build_filter(machine: str | None = None, no_setid: bool = False) -> list[Instruction]:
    """The filter as (code, jt, jf, k) instructions; ``no_setid``: with the rule of containers with a writable
    volume (see the module's docstring)."""
    machine = machine or platform.machine()
    table = _table(machine)
    audit_arch = ARCHES[machine][0]
    eperm, enosys = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    allowed = allowed_syscalls(machine)
    # Syscalls with a handler of their own: name -> its instructions (each ends in a return).
    handlers: dict[str, list[Instruction]] = {
        "clone3": [_ret(RET_ERRNO | profile.CLONE3_ERRNO)],
        "clone": [_arg(0), (JSET_K, 0, 1, profile.CLONE_NAMESPACE_FLAGS), _ret(eperm), _ret(RET_ALLOW)],
        "personality": [_arg(0)] + [(JEQ_K, len(profile.PERSONALITY_ALLOWED) - i, 0, value)
                                    for i, value in enumerate(profile.PERSONALITY_ALLOWED)]
                       + [_ret(eperm), _ret(RET_ALLOW)],
        "socket": [_arg(0)] + [(JEQ_K, len(profile.SOCKET_REFUSED_FAMILIES) - i, 0, family)
                               for i, family in enumerate(profile.SOCKET_REFUSED_FAMILIES)]
                  + [_ret(RET_ALLOW), _ret(eperm)],
    }
    if no_setid:
        handlers["openat2"] = [_ret(enosys)]
        for name, (mode, flags) in SETID_CALLS.items():
            if name in table and name in allowed:
                code = [_arg(flags), (JSET_K, 1, 0, CREATING), _ret(RET_ALLOW)] if flags is not None else []
                handlers[name] = [*code, _arg(mode), (JSET_K, 0, 1, SETID_BITS), _ret(eperm), _ret(RET_ALLOW)]
    handlers = {name: code for name, code in handlers.items() if name in table}

    prog: list[Instruction] = [
        (LD_W_ABS, 0, 0, OFFSET_ARCH),
        (JEQ_K, 1, 0, audit_arch),
        _ret(RET_KILL_PROCESS),
        (LD_W_ABS, 0, 0, OFFSET_NR),
    ]
    if machine == "x86_64":
        prog += [(JGE_K, 0, 1, X32_SYSCALL_BIT), _ret(RET_KILL_PROCESS)]
    prog += [(JGT_K, 0, 1, last_known(machine)), _ret(enosys)]
    # The handlers' dispatch, then a jump over their code to the ranges.
    names = sorted(handlers, key=lambda name: table[name])
    dispatch_at = len(prog)
    prog += [(JEQ_K, 0, 0, table[name]) for name in names]  # targets filled in below
    skip_at = len(prog)
    prog.append((JA, 0, 0, 0))
    for number, name in enumerate(names):
        here = len(prog)
        distance = here - (dispatch_at + number) - 1
        if distance > 255:
            raise ValueError(f"seccomp handler of {name} too far ({distance})")
        code, _, _, k = prog[dispatch_at + number]
        prog[dispatch_at + number] = (code, distance, 0, k)
        prog += handlers[name]
    prog[skip_at] = (JA, 0, 0, len(prog) - skip_at - 1)
    # The allowed numbers as ranges: below a range's start nothing later matches (EPERM); inside it, allow.
    for low, high in _ranges([number for name, number in allowed.items() if name not in handlers]):
        prog += [(JGE_K, 1, 0, low), _ret(eperm), (JGT_K, 1, 0, high), _ret(RET_ALLOW)]
    prog.append(_ret(eperm))
    return prog


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
