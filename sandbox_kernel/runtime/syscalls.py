"""The only module that talks to libc through ctypes.

Every call raises :class:`OSError` with the real errno on failure, so callers
handle it like any ``os`` function. Tests replace single functions here (or
the module-level ``libc``) to fake what this machine cannot show.
"""

from __future__ import annotations

import ctypes
import os
import platform

libc = ctypes.CDLL(None, use_errno=True)  # the C library this Python runs on (ctypes.util costs ~10 ms)

_SYSCALL_NUMBERS = {
    # Syscalls from 424 on have the same number on every architecture (one table since Linux 5.1).
    "openat2": {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437},
}
_UNIFIED = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
            "mount_setattr": 442}

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


# -- namespaces, mounts, process attributes ------------------------------------------------------------------

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24

MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_MM = 35
PR_SET_MM_ARG_START = 8
PR_SET_MM_ARG_END = 9
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _b(value: str | bytes | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


OPEN_TREE_CLONE = 0x1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def open_tree(path: str, flags: int, dirfd: int = -100) -> int:
    """open_tree(2) (Linux 5.2): with OPEN_TREE_CLONE, a detached copy of the mount tree at ``path``, as an fd."""
    return _check(libc.syscall(ctypes.c_long(_UNIFIED["open_tree"]), ctypes.c_int(dirfd), _b(path),
                               ctypes.c_uint(flags | os.O_CLOEXEC)), "open_tree", path)


def mount_setattr(fd: int, attr_set: int, userns_fd: int = 0, flags: int = AT_EMPTY_PATH | AT_RECURSIVE) -> None:
    """mount_setattr(2) (Linux 5.12) on the mount tree of ``fd``: set flags, and an id map (MOUNT_ATTR_IDMAP)."""
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    _check(libc.syscall(ctypes.c_long(_UNIFIED["mount_setattr"]), ctypes.c_int(fd), b"", ctypes.c_uint(flags),
                        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


def move_mount(fd: int, target_fd: int) -> None:
    """move_mount(2) (Linux 5.2): attach the detached mount ``fd`` where ``target_fd`` (an O_PATH fd) is."""
    _check(libc.syscall(ctypes.c_long(_UNIFIED["move_mount"]), ctypes.c_int(fd), b"", ctypes.c_int(target_fd), b"",
                        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)), "move_mount")


FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_STRING_MAX = 255  # (the kernel copies at most 256 bytes of a value, its NUL included)


def detached_mount(fstype: str, options: list[tuple[str, str | None]], attrs: int = 0) -> int:
    """A new file system mounted nowhere (fsopen, fsconfig, fsmount; Linux 5.2): an fd of its root, the only
    way to reach it, and it goes with the fd's last user. ``options``: (key, value) strings in order; a value
    of None sets a flag (``userxattr``)."""
    fs = _check(libc.syscall(ctypes.c_long(_UNIFIED["fsopen"]), _b(fstype), ctypes.c_uint(1)), "fsopen", fstype)
    try:
        for key, value in options:
            kind = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
            _check(libc.syscall(ctypes.c_long(_UNIFIED["fsconfig"]), ctypes.c_int(fs),
                                ctypes.c_uint(kind), _b(key), _b(value), ctypes.c_int(0)),
                   f"{fstype} option {key}", value or "")
        _check(libc.syscall(ctypes.c_long(_UNIFIED["fsconfig"]), ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                            None, None, ctypes.c_int(0)), f"make the {fstype} file system")
        return _check(libc.syscall(ctypes.c_long(_UNIFIED["fsmount"]), ctypes.c_int(fs),
                                   ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs)), "fsmount")
    finally:
        os.close(fs)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    what = f"mount {fstype}" if fstype else f"bind mount {source or ''} (flags {flags:#x}) on"
    _check(libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), what, target)


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(_b(target), flags), "umount", target)


def unshare(flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}.get(platform.machine())
    if nr is None:
        raise OSError(38, "pivot_root: unknown syscall number on this architecture")
    _check(libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(libc.capset(ctypes.byref(header), data), "capset")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """close_range(2) (Linux 5.9+); falls back to closing /proc/self/fd entries one by one."""
    nr = {"x86_64": 436, "aarch64": 436, "riscv64": 436, "ppc64le": 436, "s390x": 436}.get(platform.machine())
    if nr is not None and libc.syscall(ctypes.c_long(nr), ctypes.c_uint(first), ctypes.c_uint(last),
                                       ctypes.c_uint(flags)) == 0:
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if first <= fd <= last:
            try:
                os.close(fd)
            except OSError:
                pass


def close_all_but(keep: set[int] | list[int]) -> None:
    """Close every fd above 2 except ``keep`` (a forked child drops what it inherited by accident)."""
    previous = 2
    for fd in sorted(fd for fd in set(keep) if fd > 2):
        if fd > previous + 1:
            close_range(previous + 1, fd - 1)
        previous = fd
    close_range(previous + 1)
