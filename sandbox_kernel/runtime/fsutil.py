"""File system helpers shared by the store and the extractor."""

from __future__ import annotations

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


def remove_tree(name: str | os.PathLike[str], dir_fd: int | None = None, *, missing_ok: bool = True) -> None:
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
    if not parts:
        return os.dup(top)
    path = "/".join(parts)
    try:
        return syscalls.openat2(top, path, _DIR_FLAGS, syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    fd = os.dup(top)  # old kernels: walk down with O_NOFOLLOW, one fd at a time
    for part in parts:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Best-effort ``remove_tree`` for cleanup paths (errors are not the caller's news)."""
    try:
        remove_tree(path)
    except OSError:
        pass
