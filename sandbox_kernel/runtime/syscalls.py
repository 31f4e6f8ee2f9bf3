"""The only module that talks to libc through ctypes.

Every call raises :class:`OSError` with the real errno on failure, so callers
handle it like any ``os`` function. Tests replace single functions here (or
the module-level ``libc``) to fake what this machine cannot show.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_SYSCALL_NUMBERS = {
    # openat2 has the same number on every architecture that has the generic table.
    "openat2": {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437},
}

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


_openat2_nr = _SYSCALL_NUMBERS["openat2"].get(platform.machine())
_openat2_works: bool | None = None


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dirfd`` under ``resolve`` rules.

    Raises ``OSError(ENOSYS)`` where the kernel (or architecture table) lacks it.
    """
    if _openat2_nr is None:
        raise OSError(38, "openat2: not supported on this architecture")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = libc.syscall(
        ctypes.c_long(_openat2_nr),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    return _check(fd, "openat2", path)


def have_openat2() -> bool:
    """True when the running kernel implements openat2 (Linux 5.6+)."""
    global _openat2_works
    if _openat2_works is None:
        try:
            fd = openat2(-100, "/", os.O_PATH, 0)  # AT_FDCWD
        except OSError:
            _openat2_works = False
        else:
            os.close(fd)
            _openat2_works = True
    return _openat2_works
