"""The container commands of ``sandbox-kernel`` that work on this machine only: kill, pause, unpause, wait,
diff, cp (run, ps, exec, ... are shared verbs: sandbox_kernel/verbs).

Same contract as cli/__init__.py: one-line errors, docker's flags and exit statuses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..runtime import Store, UsageError

if TYPE_CHECKING:  # the engine is imported by the commands that use it
    from ..runtime import Containers

PROG = "sandbox-kernel"
Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def _containers(args: argparse.Namespace) -> Containers:
    from ..runtime import Containers

    return Containers(Store(args.root), warm_slots=False)  # a CLI call runs one container and exits


def _each(args: argparse.Namespace, action: Callable[[Containers, str], Any]) -> int:
    """Apply ``action`` to every named container; print each name done, errors as one line each."""
    from ..verbs import each
    from .verbs import Terminal

    containers = _containers(args)

    def act(name: str) -> None:
        action(containers, name)

    return each(Terminal(), args.containers, act).code


def cmd_kill(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.kill(n, args.signal))


def cmd_pause(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.pause(n))


def cmd_unpause(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.resume(n))


def cmd_wait(args: argparse.Namespace) -> int:
    containers = _containers(args)
    for name in args.containers:
        print(containers.wait(name).exit_code)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    for change in _containers(args).diff(args.container):
        print(change)
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    """``cp CONTAINER:PATH DEST`` or ``cp SRC CONTAINER:PATH`` (runtime/copying.py says what is safe and how)."""
    from ..runtime import split_location

    (src_in, src), (dest_in, dest) = split_location(args.source), split_location(args.destination)
    if (src_in is None) == (dest_in is None):
        raise UsageError("cp copies between the host and a container: exactly one of SRC and DEST is CONTAINER:PATH")
    containers = _containers(args)
    if src_in is not None:
        done = containers.copy_from(src_in, src, dest, follow=args.follow_link)
    else:
        assert dest_in is not None
        done = containers.copy_to(dest_in, src, dest, keep_owners=args.archive)
    for line in done.skipped:
        print(f"{PROG}: cp: skipped {line}", file=sys.stderr)
    return 0


def inspect_container(args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    """The container's inspect object, or None when no container has that name or id."""
    from .. import format as fmt
    from ..runtime import ContainerNotFound

    try:
        return fmt.inspect_container(_containers(args).get(name))
    except ContainerNotFound:
        return None


def add_commands(add: Add) -> None:
    p = add("cp", cmd_cp, "copy files between a container and the host (CONTAINER:PATH on one side)")
    p.add_argument("-a", "--archive", action="store_true", help="keep the files' owners (as the container sees them)")
    p.add_argument("-L", "--follow-link", action="store_true", help="copy what a source symlink points to")
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DEST")
    p = add("kill", cmd_kill, "send a signal to containers (default SIGKILL)")
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("pause", cmd_pause, "freeze every process of containers")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("unpause", cmd_unpause, "thaw paused containers")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("wait", cmd_wait, "wait for containers to exit; print their exit codes")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("diff", cmd_diff, "files a container added (A), changed (C) or deleted (D)")
    p.add_argument("container", metavar="NAME")


__all__ = ["add_commands", "inspect_container"]
