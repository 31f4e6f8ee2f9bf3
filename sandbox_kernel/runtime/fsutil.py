"""File system helpers shared by the store and the extractor."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from . import syscalls

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def cache_dir() -> Path:
    """Where built things are kept between runs: ``$SANDBOX_KERNEL_CACHE``, else ``~/.cache/sandbox-kernel``."""
    env = os.environ.get("SANDBOX_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sandbox-kernel"


def unsafe_ancestor(path: str | os.PathLike[str], *, writable_self: bool = False) -> str | None:
    """Why another user could replace what ``path`` names, or None when only root or we could.

    Every directory on the way (of the path as given and of the path its
    symlinks lead to) must belong to root or to us and be writable by nobody
    else; a sticky directory (``/tmp``) may be, when what we find in it is
    root's or ours. ``path`` itself must belong to root or us and (unless
    ``writable_self``: the caller is about to tighten it) be writable by
    nobody else.
    """
    me = os.geteuid()
    absolute = os.path.abspath(path)

    def others_may_write(st: os.stat_result) -> bool:
        return bool(st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0))

    for chain in dict.fromkeys((absolute, os.path.realpath(absolute))):
        parts = [p for p in chain.split("/") if p]
        current = "/"
        st = os.lstat(current)
        for part in [*parts, None]:
            if st.st_uid not in (0, me):
                return f"{current} belongs to uid {st.st_uid}"
            if part is None:
                if not writable_self and others_may_write(st):
                    return f"{current} is writable by other users"
                break
            child = os.path.join(current, part)
            try:
                child_st = os.lstat(child)
            except FileNotFoundError:
                child_st = None  # we make it, below: nobody else may be able to make or replace it first
            if stat.S_ISDIR(st.st_mode) and others_may_write(st):
                sticky_and_ours = st.st_mode & stat.S_ISVTX and (child_st is None or child_st.st_uid in (0, me))
                if not sticky_and_ours:
                    return f"{current} is writable by other users"
            if child_st is None:
                break
            current, st = child, child_st
    return None


def private_dir(path: str | os.PathLike[str]) -> None:
    """Make ``path`` (and missing parents) a directory only its owner can enter, whatever the umask."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def write_private(path: str | os.PathLike[str], data: bytes, *, sync: bool = False) -> None:
    """Write a new file that only its owner may read (0600 whatever the umask), replacing ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # (a file left by a killed writer may have had another mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_tree(name: str | os.PathLike[str], dir_fd: int | None = None, *, missing_ok: bool = True) -> None:
    """``rm -rf name`` (relative to ``dir_fd``) that never follows a symlink (see :func:`_remove_tree`).

    For a user who is not root, what its containers made belongs to ids of its range, which only its
    user namespace may remove: refused here, it is removed there (inside.py).
    """
    try:
        _remove_tree(name, dir_fd, missing_ok)
    except PermissionError:
        from . import inside

        if dir_fd is not None or not inside.needed():
            raise
        inside.call(_remove_tree, os.path.abspath(name), None, missing_ok)


def _remove_tree(name: str | os.PathLike[str], dir_fd: int | None, missing_ok: bool) -> None:
    """``rm -rf name`` (relative to ``dir_fd``) that never follows a symlink.

    Iterative, so a 2000-level tree is no RecursionError, and it holds only
    two directory fds at a time (RLIMIT_NOFILE is often 1024): the directory
    being emptied is reopened from the top with ``openat2(RESOLVE_BENEATH |
    RESOLVE_NO_SYMLINKS)``, so no component can be a symlink. Entries are
    removed with ``*at`` calls relative to their own directory's fd. Removes
    a lone file or symlink too.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    top = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    stack: list[str] = []  # path of the directory being emptied, relative to ``top``
    try:
        while True:
            fd = _open_beneath(top, stack)
            try:
                descended = False
                for child in os.listdir(fd):
                    try:
                        child_st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(child_st.st_mode):
                        stack.append(child)
                        descended = True
                        break
                    os.unlink(child, dir_fd=fd)
            finally:
                os.close(fd)
            if descended:
                continue
            if not stack:
                break
            done = stack.pop()
            parent = _open_beneath(top, stack)
            try:
                os.rmdir(done, dir_fd=parent)
            finally:
                os.close(parent)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=dir_fd)


def _open_beneath(top: int, parts: list[str]) -> int:
    return open_beneath(top, "/".join(parts), _DIR_FLAGS, same_mount=True)  # (rm -rf never enters a mount)


def open_beneath(top: int, rel: str, flags: int, *, same_mount: bool = False) -> int:
    """Open ``rel``, a path below the directory ``top``, following no symlink on the way or at its end.

    ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``; on kernels without it,
    one component at a time with ``O_NOFOLLOW``. A symlink anywhere is ELOOP
    (or ENOTDIR); an empty ``rel`` opens ``top`` itself again. With
    ``same_mount``, crossing into another mount is EXDEV (``RESOLVE_NO_XDEV``).
    """
    parts = [part for part in rel.split("/") if part and part != "."]
    if not parts:
        return os.dup(top)
    resolve = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | (syscalls.RESOLVE_NO_XDEV if same_mount else 0)
    try:
        return syscalls.openat2(top, "/".join(parts), flags | os.O_NOFOLLOW | os.O_CLOEXEC, resolve)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    fd = os.dup(top)  # old kernels: walk down with O_NOFOLLOW, one fd at a time
    for number, part in enumerate(parts):
        if part == "..":
            os.close(fd)
            raise OSError(errno.EXDEV, "'..' in a path that must stay beneath its directory", rel)
        last = number == len(parts) - 1
        try:
            nxt = os.open(part, (flags if last else _DIR_FLAGS) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def stat_beneath(top: int, rel: str) -> os.stat_result | None:
    """``lstat`` of ``rel`` below the directory ``top``, None when it is not there (or only through a symlink)."""
    head, _, name = rel.strip("/").rpartition("/")
    try:
        parent = open_beneath(top, head, os.O_PATH | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            return None
        raise
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(parent)


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Best-effort ``remove_tree`` for cleanup paths (errors are not the caller's news)."""
    try:
        remove_tree(path)
    except OSError:
        pass
