"""Work that a user who is not root can only do inside its own user namespace (podman's ``unshare``).

A rootless container's files belong to ids of the user's range (its
/etc/subuid lines): on the host the user cannot read a 0600 file of id
100032 nor empty a directory of it, while inside the keeper's namespace
(userns_keeper.py) those ids are the container's own and the user is root.
So unpacking a layer (its owners set), reading an upper dir for ``commit``
and ``diff``, and removing what a container wrote happen in a forked child
that joined that namespace, through :func:`call`.

Inside, every host file of another owner shows as uid 65534: whatever checks
whether a host path is safe (the store's ancestors, the exec helper) runs in
the caller before, and the child gets paths and fds it only uses.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

from . import userns_keeper
from .errors import SandboxError


def needed() -> bool:
    """Whether this process acts in its user's namespace only through :func:`call` (a user who is not root,
    not in that namespace already: a monitor or a fork server's child is)."""
    return userns_keeper.rootless() and not userns_keeper.joined()


def run(func: Callable[..., Any], *args: Any, fds: tuple[int, ...] = ()) -> Any:
    """``func(*args, *fds)`` where it has to run: here, or through :func:`call` when :func:`needed`."""
    return call(func, *args, fds=fds) if needed() else func(*args, *fds)


def call(func: Callable[..., Any], *args: Any, fds: tuple[int, ...] = ()) -> Any:
    """``func(*args, *fds)`` in a child inside the caller's user namespace; its result, or its error raised
    here. ``func`` must be a module-level function (it is named, not copied, to a fork server's child)."""
    from . import launcher

    keeper = userns_keeper.ensure()
    result_r, result_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = launcher.fork_inside((keeper.pid, func, args), [result_w, *fds])
    except BaseException:
        os.close(result_r)
        raise
    finally:
        os.close(result_w)
    chunks = []
    try:
        while chunk := os.read(result_r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(result_r)
        launcher.reap_wait(pid)
    if not chunks:
        raise SandboxError(f"the helper in your user namespace died ({getattr(func, '__name__', func)})")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise value
    return value


def child_main(args: tuple[Any, ...], fds: list[int]) -> None:
    """In the forked child: join, run, send back ("ok", result) or ("error", exception). Never returns."""
    keeper_pid, func, fargs = args
    result_w, *given = fds
    try:
        if not userns_keeper.joined():  # (a fork server's child is in it already)
            userns_keeper.join(keeper_pid)
        reply = pickle.dumps(("ok", func(*fargs, *given)))
    except BaseException as exc:  # sent as it is when it pickles, else as one line
        try:
            reply = pickle.dumps(("error", exc))
            pickle.loads(reply)
        except Exception:
            reply = pickle.dumps(("error", SandboxError(str(exc) or type(exc).__name__)))
    view = memoryview(reply)
    try:
        while view:
            view = view[os.write(result_w, view):]
    except OSError:
        os._exit(1)
    os._exit(0)
