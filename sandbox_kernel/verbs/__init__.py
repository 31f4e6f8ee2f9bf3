"""The verbs that every frontend offers, each written once: its arguments, its client call, what it shows.

A verb is a function ``call(client, args, front)`` registered with the
argparse arguments it takes. The local CLI, the remote CLI (``-H URL``) and
the line magics (``%container VERB ...``) all parse a verb's arguments with
the same function and call it with their client (a
:class:`~sandbox_kernel.client.LocalClient` or a
:class:`~sandbox_kernel.remote.RemoteClient`: the verbs know nothing else of
the runtime) and their :class:`Frontend`, which says where output goes.

What a verb gives back is rendered by the frontend's medium:

* a :class:`Listing` (rows as JSON values, and the table a user reads): the
  terminal prints the table, ``--json`` or ``-q``; a notebook shows the table
  and keeps the rows;
* an ``int``: an exit status (``run``, ``exec``: the container's); the
  notebook's value;
* a ``str``: one line on stdout (an id, a reference); the notebook's value;
* :class:`Done`: a status for verbs that said what they did line by line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from ..client import Client, Output

PROG = "sandbox-kernel"


# (plain classes, not dataclasses: every CLI call imports this module, and a dataclass costs a millisecond to make)
class Listing(NamedTuple):
    """Rows for ``--json`` (and a notebook's Table), the table's headers and cells, and the ids ``-q`` prints."""

    rows: list[dict[str, Any]]
    headers: list[str]
    cells: list[list[str]]
    ids: Sequence[str] = ()


class Done(NamedTuple):
    """A verb that said what it did as it went; ``code`` is its exit status (1: one of its targets failed)."""

    code: int = 0


Result = Listing | int | str | Done | None


class Renderer(Protocol):
    def __call__(self, state: Any) -> None: ...
    def close(self) -> None: ...


class Frontend:
    """Where a verb's output goes. The defaults are the terminal's; the notebook's frontend overrides them."""

    name = "terminal"
    has_terminal = False  # the caller's stdin is a terminal that a container may use (-t)

    def output(self, tty: bool = False) -> Output:
        """Where a container's output goes (and its stdin comes from, on the CLI)."""
        raise NotImplementedError

    def progress(self, verb: str, quiet: bool = False) -> Renderer:
        raise NotImplementedError

    def say(self, text: str) -> None:
        """A line of the verb's own output (a name it acted on)."""
        print(text, flush=True)

    def note(self, text: str) -> None:
        """A line about the work (progress, a pull before a run), not its result."""
        import sys

        print(text, file=sys.stderr, flush=True)

    def error(self, text: str) -> None:
        """One target of a verb failed; the verb goes on with the others."""
        self.note(f"{PROG}: error: {text}")

    def warning(self, text: str) -> None:
        """A sentence that explains an exit (an OOM kill)."""
        self.note(f"{PROG}: {text}")

    # hooks of the notebook: its sessions, and the cells that made a container's files
    def forget(self, ref: str) -> None:
        """``ref`` is about to stop or go."""

    def created_by(self, ref: str) -> str | None:
        """What a commit of ``ref`` records as the layer's history (the notebook: its cells)."""
        return None

    def committed(self, ref: str) -> None:
        """``ref`` was committed."""


Call = Callable[["Client", argparse.Namespace, Frontend], Result]
Arguments = Callable[[argparse.ArgumentParser], None]


class Verb(NamedTuple):
    name: str
    help: str
    arguments: Arguments
    call: Call
    notebook: bool = True  # offered as %container NAME too


VERBS: dict[str, Verb] = {}


def verb(name: str, help: str, arguments: Arguments, notebook: bool = True) -> Callable[[Call], Call]:
    """Register ``call`` as the verb ``name`` (the help line the CLI shows; the arguments it takes)."""

    def register(call: Call) -> Call:
        VERBS[name] = Verb(name, help, arguments, call, notebook)
        return call

    return register


def each(front: Frontend, names: list[str], action: Callable[[str], Iterable[str] | None]) -> Done:
    """``action`` on every name, saying what it returns (the lines of its result; None: the name, as docker
    says what it stopped or removed); a failure is one line and the others go on (docker's habit); a usage
    error is the same for all of them and stops at once."""
    from ..runtime import SandboxError, UsageError

    code = 0
    for name in names:
        try:
            said = action(name)
        except UsageError:
            raise
        except SandboxError as exc:
            front.error(str(exc))
            code = 1
            continue
        for line in [name] if said is None else said:
            front.say(line)
    return Done(code)


def pull_shown(client: Client, front: Frontend, reference: str, *, quiet: bool = False, platform: str | None = None,
               insecure: bool = False, ca_file: str | None = None, cert_dir: str | None = None) -> str:
    """Pull ``reference`` with the frontend's progress; say its digest and whether it was new (docker's lines)."""
    shown = front.progress("Pull", quiet)
    last: list[Any] = []

    def render(state: Any) -> None:
        last[:] = [state]
        shown(state)

    try:
        digest = client.pull(reference, platform=platform, insecure=insecure, progress=render, ca_file=ca_file,
                             cert_dir=cert_dir)
    finally:
        shown.close()
    if not quiet:
        front.note(f"Digest: {digest}")
        fetched = any(state.ended(d) == "complete" for state in last for d in state.layers)
        front.note(f"Status: {'Downloaded newer image' if fetched else 'Image is up to date'} for "
                   f"{familiar(reference)}")
    return digest


def familiar(reference: str) -> str:
    from ..runtime import parse_reference

    return parse_reference(reference).familiar()


def _load() -> None:
    from . import containers, images  # noqa: F401  (they register their verbs)


_load()
