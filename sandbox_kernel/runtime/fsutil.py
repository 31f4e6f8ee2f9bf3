"""File system helpers shared by the store and the extractor."""

from __future__ import annotations

import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(name: str | os.PathLike[str], dir_fd: int | None = None, *, missing_ok: bool = True) -> None:
    """``rm -rf name`` (relative to ``dir_fd``) that never follows a symlink.

    Iterative, so a 2000-level tree is no RecursionError: one open directory
    fd per level on a stack, each entry removed with ``unlinkat`` relative to
    its own directory's fd. Removes a lone file or symlink too.
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
    # Each frame: (fd of the directory, its name, fd of its parent, names left to visit)
    stack: list[tuple[int, str, int | None, list[str]]] = [(top, os.fspath(name), dir_fd, os.listdir(top))]
    try:
        while stack:
            fd, _, _, names = stack[-1]
            descended = False
            while names:
                child = names.pop()
                try:
                    child_st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(child_st.st_mode):
                    sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                    stack.append((sub, child, fd, os.listdir(sub)))
                    descended = True
                    break
                os.unlink(child, dir_fd=fd)
            if descended:
                continue
            fd, dname, parent, _ = stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=parent)
    finally:
        for fd, *_ in stack:
            os.close(fd)


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Best-effort ``remove_tree`` for cleanup paths (errors are not the caller's news)."""
    try:
        remove_tree(path)
    except OSError:
        pass
