"""The shared verbs (sandbox_kernel/verbs) on a terminal: the CLI's frontend, for this machine and for ``-H``.

Each verb is added to the CLI's parser with its own arguments; when it runs,
the client is a :class:`~sandbox_kernel.client.LocalClient` on the store of
``--root``, or a :class:`~sandbox_kernel.remote.RemoteClient` for ``-H URL``
(or ``$SANDBOX_KERNEL_HOST``), and what it gives back is printed here: a
table, ``--json`` or ``-q`` ids, a line, or an exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..verbs import VERBS, Done, Frontend, Listing, Result, Verb

if TYPE_CHECKING:
    from ..client import Client, Output

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


class Terminal(Frontend):
    """The caller's own terminal (or pipes): container output as bytes to fds 1 and 2, stdin from fd 0."""

    name = "terminal"
    has_terminal = True  # (-t makes the container a terminal of its own, whatever fd 0 is)

    def output(self, tty: bool = False) -> Output:
        from ..client import Stdio

        sys.stdout.flush()
        sys.stderr.flush()
        return Stdio(tty=tty)

    def progress(self, verb: str, quiet: bool = False) -> Any:
        from .. import progress

        return progress.terminal(verb, quiet)


def client_for(args: argparse.Namespace) -> Client:
    """The remote client for ``-H`` (or ``$SANDBOX_KERNEL_HOST``), else the local one on ``--root``'s store."""
    host = getattr(args, "host", None) or os.environ.get("SANDBOX_KERNEL_HOST")
    if host:
        from ..remote import RemoteClient

        return RemoteClient(host)
    from ..client import LocalClient
    from ..runtime import Store

    return LocalClient(Store(args.root), warm_slots=False)  # a CLI call runs one container and exits


def show(result: Result, args: argparse.Namespace) -> int:
    """Print what a verb gave back as the terminal shows it; the exit status."""
    if isinstance(result, Listing):
        if getattr(args, "json", False):
            print(json.dumps(result.rows, indent=2))
        elif getattr(args, "quiet", False):
            print("\n".join(result.ids))
        else:
            from .. import format as fmt

            print(fmt.table(result.cells, result.headers))
        return 0
    if isinstance(result, Done):
        return result.code
    if isinstance(result, str):
        print(result)
        return 0
    return 0 if result is None else int(result)


def run_verb(verb: Verb, args: argparse.Namespace) -> int:
    return show(verb.call(client_for(args), args, Terminal()), args)


def add_verbs(add: Add) -> None:
    """Every shared verb as a CLI command."""
    for verb in VERBS.values():
        verb.arguments(add(verb.name, lambda args, verb=verb: run_verb(verb, args), verb.help))
