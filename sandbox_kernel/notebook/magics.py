"""IPython magics: ``%%container`` runs a cell in a container, ``%container ...`` mirrors the CLI.

``%%container [NAME] [--image REF] [--memory 256m] ...``: the first cell of a NAME
creates its container (pulling or building the image if needed) with the agent
as its main process; later cells reuse it, so variables, imports and files
persist. Output streams as it comes, rich output is displayed (cleaned, or with
``--trust-output`` run in a sandboxed iframe: sanitize.py), errors show the container's traceback once, Ctrl-C
interrupts the cell (and kills it, and restarts the agent, if it does not stop),
and a limit that ends a cell is said in one sentence. Containers made here are
removed when the kernel exits (``--keep`` keeps them); the next kernel removes
what a dead kernel left.
"""

from __future__ import annotations

import atexit
import contextlib
import html
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Integer
from traitlets.config import Configurable

from .. import format as fmt
from .. import progress
from ..client import Client, LimitsRow, LocalClient, Output, limits_row, to_limits
from ..obtain import obtain
from ..owners import KEEP_LABEL, OWNER_LABEL, orphaned, owner_id
from ..policy import SandboxPolicy
from ..remote import RemoteClient
from ..runtime import (
    ContainerNotFound,
    Containers,
    ContainerSpec,
    Limits,
    Mount,
    NetSpec,
    SandboxError,
    Store,
    format_size,
)
from ..runtime.errors import from_os_error
from ..verbs import VERBS, Done, Frontend, Listing, Verb
from . import sanitize, values
from .session import (
    AGENT_ARGV,
    AGENT_DIR,
    AGENT_MOUNT,
    GRACE,
    SHELL_IDLE,
    CellError,
    CellKilled,
    OutputLimits,
    Session,
    has_python,
    named_error,
)

DEFAULT_IMAGE = "localhost/debian-python:latest"
# the shared verbs (sandbox_kernel/verbs) a cell offers, on this machine or against a server; of the notebook's own
# commands, what works against a server (--remote, $SANDBOX_KERNEL_HOST)
NOTEBOOK_VERBS = frozenset(name for name, verb in VERBS.items() if verb.notebook)
REMOTE_COMMANDS = frozenset({"panel"})
class Table:
    """Rows that render as an HTML table in a notebook and as text elsewhere; ``table[i]`` is row i's values
    (a listing verb's rows are its ``--json`` objects; the cells are what the CLI's table shows)."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str] | None = None,
                 cells: list[list[str]] | None = None):
        self.rows = rows
        self.columns = columns or (list(rows[0]) if rows else [])
        self.cells = cells if cells is not None else [["" if row.get(c) is None else str(row.get(c))
                                                        for c in self.columns] for row in rows]

    @classmethod
    def of(cls, listing: Listing) -> Table:
        return cls(listing.rows, listing.headers, listing.cells)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __repr__(self) -> str:
        if not self.rows:
            return "(none)"
        return fmt.table(self.cells, [c.upper() for c in self.columns])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in self.cells)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Bundle:
    """The last expression of a container cell: IPython displays it as the cell's Out[]."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]):
        self.data, self.metadata = data, metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", ""))


class NotebookSink:
    """A cell's output into the notebook: streams to sys.stdout/err, displays through IPython (cleaned)."""

    def __init__(self, trusted: bool):
        self.trusted = trusted

    def stream(self, name: str, text: str) -> None:
        out = sys.stderr if name == "stderr" else sys.stdout
        out.write(text)
        out.flush()

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        from IPython.display import publish_display_data

        data, metadata = sanitize.sanitize(data, metadata, self.trusted)
        publish_display_data(data, metadata)


class RemoteCellError(CellError):
    """A remote cell's error: the lines the server rendered (the container's traceback, a limit's sentence)."""

    def __init__(self, ename: str, evalue: str, lines: list[str]):
        super().__init__(ename, evalue, [])
        self.lines = lines
        self.args = (lines[-1] if lines else evalue,)


class Cell(Frontend):
    """The shared verbs in a cell (``%container VERB ...``): container output streams into the cell, progress
    is a line per layer, and the magics hear of containers that stop, go or are committed."""

    name = "a notebook cell"

    def __init__(self, magics: ContainerMagics):
        self.magics = magics

    def output(self, tty: bool = False) -> Output:
        return self.magics.sink_factory(False).stream

    def progress(self, verb: str, quiet: bool = False) -> Any:
        return progress.Lines(verb)

    def note(self, text: str) -> None:
        print(text, flush=True)  # (in a cell, stderr is for what went wrong)

    def warning(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def forget(self, ref: str) -> None:
        self.magics._forget(ref)

    def created_by(self, ref: str) -> str | None:
        cells = self.magics.cells.get(self._name(ref), [])
        return "%%container\n" + "\n# ---\n".join(cells) if cells else None

    def committed(self, ref: str) -> None:
        self.magics.cells[self._name(ref)] = []

    def _name(self, ref: str) -> str:
        """The container's name (the magics keep its cells by name), ``ref`` itself against a server."""
        if self.magics.remote is not None:
            return ref
        return self.magics.containers.get(ref).name


@magics_class
class ContainerMagics(Magics):
    output_limit = Integer(OutputLimits.stream, min=4096, config=True,
                           help="Bytes of printed output a %%container cell keeps (and the time between two cells): "
                                "what a container prints past it is dropped, and the cell says how much.")
    display_limit = Integer(OutputLimits.display, min=65536, config=True,
                            help="Bytes of display data and results (images, HTML) a %%container cell keeps.")

    def __init__(self, shell: Any, store: Store | None = None):
        super().__init__(shell)
        self._store = store
        self._containers: Containers | None = None
        self.sessions: dict[str, Session] = {}
        self.keep: set[str] = set()
        self.cells: dict[str, list[str]] = {}  # each container's cell sources since its last commit
        self.owner = owner_id()
        self.default_name = f"notebook-{os.getpid()}"
        self.sink_factory: Callable[[bool], Any] = NotebookSink
        self._closed = False
        self._client: Client | None = None
        # what the admin allows (c.SandboxPolicy in ipython_config.py): images, limits, volumes
        self.policy = SandboxPolicy(parent=shell if isinstance(shell, Configurable) else None)
        self.default_limits = self.policy.defaults()  # of new %%container containers; the panel's Limits tab sets them
        # "host": new containers without a user namespace (container root is host root). For trusted tools
        # (the benchmarks compare both); no magic option sets it.
        self.userns = ""
        self.panel: Any = None  # the last %container panel (one at a time: each has a refresh timer)
        self.remote: RemoteClient | None = RemoteClient.from_environment()  # $SANDBOX_KERNEL_HOST
        atexit.register(self.shutdown)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store()
        return self._store

    @property
    def containers(self) -> Containers:
        if self._containers is None:
            self._containers = Containers(self.store)
            self.reconcile()
        return self._containers

    @property
    def client(self) -> Client:
        """What the line commands talk to: the server of ``--remote`` if one is set, else this machine."""
        if self.remote is not None:
            return self.remote
        if self._client is None:
            self._client = LocalClient(self.store, self.containers, policy=self.policy)
        return self._client

    # -- life cycle ----------------------------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Remove containers that a kernel now gone made without ``--keep``; their names."""
        removed = []
        assert self._containers is not None
        for info in self._containers.list(all=True):
            labels = dict(info.spec.labels)
            if labels.get(OWNER_LABEL) == self.owner or not orphaned(labels):
                continue
            with contextlib.suppress(SandboxError):
                self._containers.remove(info.id, force=True)
                removed.append(info.name)
        return removed

    def shutdown(self) -> None:
        """Stop this kernel's containers; remove those not made with ``--keep``."""
        if self._closed:
            return
        self._closed = True
        if self.panel is not None:
            with contextlib.suppress(Exception):
                self.panel.close()
        for name, session in list(self.sessions.items()):
            with contextlib.suppress(Exception):
                session.close()
            if name not in self.keep and session.cid:
                with contextlib.suppress(Exception):
                    self.containers.remove(session.cid, force=True)
        self.sessions.clear()

    # -- %%container ---------------------------------------------------------------------------------------------

    @magic_arguments()
    @argument("name", nargs="?", help="the container (made on first use; default: this notebook's)")
    @argument("--image", help=f"image of a new container (default {DEFAULT_IMAGE})")
    @argument("--memory", "-m", help="memory limit, e.g. 256m")
    @argument("--cpus", help="CPU limit, e.g. 1.5")
    @argument("--pids-limit", type=int, help="most processes at once")
    @argument("--disk", help="size of a new container's writable layer, e.g. 2g (its files, /tmp included)")
    @argument("--network", default=None, help="network of a new container: none, bridge or a network's name")
    @argument("--hostname", help="hostname of a new container (default: its short id)")
    @argument("-v", "--volume", action="append", default=[], help="SRC:DST[:ro] bind mount (new container)")
    @argument("--timeout", type=float, help="interrupt the cell after this many seconds")
    @argument("--in", dest="inputs", default="", help="notebook variables to copy in, a,b")
    @argument("--out", dest="outputs", default="", help="container variables to copy back, c,d")
    @argument("--shell", action="store_true", help="run the cell with /bin/sh")
    @argument("--stats", action="store_true", help="print wall time, CPU time and peak memory")
    @argument("--keep", action="store_true", help="keep the container when the kernel exits")
    @argument("--trust-output", action="store_true",
              help="run the container's HTML and JavaScript, in a sandboxed iframe of an origin of its own")
    @cell_magic("container")
    def container_cell(self, line: str, cell: str) -> Any:
        """Run the cell in a container."""
        args = parse_argstring(self.container_cell, line)
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        inputs_names = [n.strip() for n in args.inputs.split(",") if n.strip()]
        outputs_names = [n.strip() for n in args.outputs.split(",") if n.strip()]
        for name in inputs_names + outputs_names:
            if not name.isidentifier():
                raise UsageError(f"{name!r} is not a variable name")
        missing = [n for n in inputs_names if n not in self.shell.user_ns]
        if missing:
            raise UsageError(f"--in: no variable named {missing[0]!r} in the notebook")
        try:
            inputs = {n: values.encode(n, self.shell.user_ns[n]) for n in inputs_names}
            if self.remote is not None:
                return self._remote_cell(line, cell, args, inputs)
            session = self._session(args)
            return self._run_cell(session, args, cell, inputs, outputs_names)
        except CellError:
            raise
        except SandboxError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:  # (out of file descriptors, wherever the start ran into it: one sentence)
            said = from_os_error(exc)
            if said is None:
                raise
            raise UsageError(str(said)) from None

    def _remote_cell(self, line: str, cell: str, args: Any, inputs: dict[str, Any]) -> Any:
        """The cell on the server of ``--remote``: its output cleaned here as a local cell's is."""
        assert self.remote is not None
        if args.volume:
            raise UsageError(f"-v is not available against {self.remote.url}: its paths would be the server's")
        sink = self.sink_factory(args.trust_output)
        end = self.remote.cell(line, cell, inputs, sink)
        self.cells.setdefault(args.name or "remote", []).append(cell)
        if end.get("status") != "ok":
            error = end.get("error") or {}
            raise named_error(RemoteCellError, str(error.get("ename", "Error")), str(error.get("evalue", "")),
                              [str(line) for line in error.get("lines") or []])
        sent = end.get("outputs") or {}
        asked = [n.strip() for n in args.outputs.split(",") if n.strip()]
        if not isinstance(sent, dict) or set(sent) - set(asked):
            raise values.ValueRefused(f"{self.remote.url} sent values that --out did not ask for: refused")
        decoded = {name: values.decode(name, item) for name, item in sent.items()}  # all, before any is set
        self.shell.user_ns.update(decoded)
        if end.get("result"):
            data, metadata = end["result"]
            return Bundle(*sanitize.sanitize(dict(data), dict(metadata), args.trust_output))
        return None

    def _limits(self, args: Any, base: Limits | None = None) -> Limits | None:
        disk_size = getattr(args, "disk", None)
        if args.memory is None and args.cpus is None and args.pids_limit is None and disk_size is None:
            return None
        return (base or Limits()).with_options(args.memory, args.cpus, args.pids_limit, disk=disk_size)

    def _image(self, ref: str) -> Any:
        """The image ``ref``: from the store, built from a local recipe, or pulled (progress printed)."""
        self.policy.check_image(ref)
        return obtain(self.store, ref, lambda line: print(line, file=sys.stderr),
                      progress.Follow(ref, progress.Lines("Pull", sys.stderr, "  ")))

    def _session(self, args: Any) -> Session:
        name = args.name or self.default_name
        session = self.sessions.get(name)
        given = args.disk is not None or args.image or args.volume or args.network or args.hostname
        existing = self._existing(name) if given else None
        if existing is not None:
            self._note_ignored(name, args, existing.spec)
            args.disk = None  # (a container keeps the disk it was made with)
        if session is not None and session.alive:
            limits = self._limits(args, (existing or self.containers.get(name)).spec.limits)
            if limits is not None:
                self.containers.update(name, limits)
            return session
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
            del self.sessions[name]
        session = Session(self.containers, name, OutputLimits(self.output_limit, self.display_limit))
        try:
            info = self.containers.get(name)
        except ContainerNotFound:
            info = None
        if info is not None:
            if info.running:
                raise UsageError(f"container {name} is running outside this notebook; stop it first "
                                 f"(%container stop {name})")
            if tuple(info.command) not in (AGENT_ARGV, SHELL_IDLE):
                raise UsageError(f"container {name} was not made by %%container; pick another name")
            limits = self._limits(args, info.spec.limits)
            if limits is not None:
                self.policy.check_limits(limits)
                self.containers.update(name, limits)
            if dict(info.spec.labels).get(KEEP_LABEL) == "1":
                self.keep.add(name)  # made with --keep: it stays kept
            session.start(None, python=tuple(info.command) == AGENT_ARGV)
        else:
            image = self._image(args.image or DEFAULT_IMAGE)
            python = has_python([str(p) for p in reversed(self.store.unpack(image))])
            mounts = (Mount(str(AGENT_DIR), AGENT_MOUNT, True), *(Mount.parse(v) for v in args.volume))
            spec = ContainerSpec(
                image=args.image or DEFAULT_IMAGE,
                command=AGENT_ARGV if python else SHELL_IDLE,
                entrypoint=(),
                name=name,
                limits=self._limits(args, self.default_limits) or self.default_limits,
                mounts=mounts,
                network=NetSpec(args.network or "none"),
                hostname=args.hostname,
                env=(("PYTHONUNBUFFERED", "1"),),
                labels=((OWNER_LABEL, self.owner), (KEEP_LABEL, "1" if args.keep else "0")),
                userns=self.userns,
            )
            self.policy.check(spec, own_mounts=1)  # (the first mount is the agent's)
            session.start(spec, python)
        if args.keep:
            self.keep.add(name)
        self.sessions[name] = session
        return session

    def _run_cell(self, session: Session, args: Any, cell: str, inputs: dict[str, Any], outputs: list[str]) -> Any:
        if (args.shell or inputs or outputs) and not session.python:
            if inputs or outputs:
                raise UsageError(f"container {session.name} has no python3: --in and --out need it")
        cid = session.cid or session.name
        peak_reset = False
        if args.stats:
            with contextlib.suppress(SandboxError, OSError):
                peak_reset = self.containers.reset_peak(cid)
        sink = self.sink_factory(args.trust_output)
        result = session.execute(cell, sink, shell=args.shell, inputs=inputs, outputs=outputs,
                                 timeout=args.timeout)
        self.cells.setdefault(session.name, []).append(cell if not args.shell else f"# shell\n{cell}")
        if args.stats:
            self._print_stats(cid, result, peak_reset)
        problem = self._limit_sentence(session, args, result)
        disk_full = self._disk_sentence(session)
        if disk_full is not None and result.status == "ok":
            print(disk_full, file=sys.stderr)
        elif disk_full is not None:
            problem = f"{problem} {disk_full}" if problem else disk_full
        if result.status == "ok":
            for name, item in result.outputs.items():
                if name in outputs:
                    self.shell.user_ns[name] = values.decode(name, item)
            if result.result is not None:
                return Bundle(*sanitize.sanitize(*result.result, args.trust_output))
            return None
        if problem is not None and result.status in ("killed", "timeout") and result.error is None:
            raise CellKilled(problem)
        error = result.error or CellError("Error", "the cell failed", [])
        if problem is not None:
            error.add_sentence(problem)
        raise error

    def _existing(self, name: str) -> Any:
        """Container ``name`` (ContainerInfo), or None when there is none."""
        try:
            return self.containers.get(name)
        except ContainerNotFound:
            return None

    @staticmethod
    def _note_ignored(name: str, args: Any, spec: ContainerSpec) -> None:
        """A cell's options that would make another container than ``name`` is apply to new containers only:
        say so, naming them, when one differs from what the container was made with (not when it repeats it)."""
        from ..runtime import parse_reference, parse_size

        differ = []
        if args.image and str(parse_reference(args.image)) != str(parse_reference(spec.image)):
            differ.append("--image")
        volumes = tuple(Mount.parse(v) for v in args.volume)
        if volumes and volumes != tuple(m for m in spec.mounts if m.target != AGENT_MOUNT):
            differ.append("-v")
        if args.network and NetSpec(args.network) != spec.network:
            differ.append("--network")
        if args.hostname and args.hostname != spec.hostname:
            differ.append("--hostname")
        if args.disk is not None and parse_size(args.disk, "--disk") != spec.limits.disk:
            differ.append("--disk")
        if differ:
            verb = "applies" if len(differ) == 1 else "apply"
            print(f"(container {name} exists: {', '.join(differ)} {verb} to new containers only)", file=sys.stderr)

    def _disk_sentence(self, session: Session) -> str | None:
        """One plain sentence the first time a cell finds the container's disk full; None otherwise."""
        if session.cid is None:
            return None
        try:  # (every cell: a stat and a statvfs, no more)
            usage = self.containers.disk_usage(session.cid, attach=False)
        except (OSError, SandboxError):
            return None
        full = usage is not None and usage.full
        said, session.disk_full_said = session.disk_full_said, full
        if not full or said:
            return None
        limit = self.containers.get(session.cid or session.name).spec.limits.disk
        return (f"The container's disk is full: its limit is {format_size(limit)} (--disk), so writes fail with "
                "'No space left on device'. Free space in it, or make a container with a larger --disk.")

    def _limit_sentence(self, session: Session, args: Any, result: Any) -> str | None:
        """One plain sentence for a cell that a limit, a timeout or an interrupt ended; None otherwise."""
        if result.status == "ok":
            return None
        lost = "The container's Python process was restarted: variables are lost, files are kept."
        usage = None
        with contextlib.suppress(Exception):
            stats = self.containers.stats(session.cid or session.name)
            usage, limits = stats.usage, stats.limits
        if result.died is not None:
            if usage is not None and usage.oom_kills > session.oom_seen:
                session.oom_seen = usage.oom_kills
                return (f"The cell ran out of memory: the container's limit is {format_size(limits.memory)} "
                        f"and the kernel's OOM killer ended it. {lost}")
            if result.status == "timeout":
                return f"The cell ran past --timeout {args.timeout:g} s and did not stop when interrupted. {lost}"
            if result.died.get("reason") == "killed":
                return f"The cell did not stop within {GRACE:g} s of the interrupt and was killed. {lost}"
            if result.died.get("reason") == "channel":
                return f"The cell wrote something that is no message into the agent's channel, and was ended. {lost}"
            sig = result.died.get("signal")
            how = f"killed by signal {sig}" if sig else f"exited with status {result.died.get('code')}"
            return f"The cell's Python process was {how}. {lost}"
        if result.status == "timeout":
            return f"The cell ran past --timeout {args.timeout:g} s and was interrupted."
        if usage is not None and usage.oom_kills > session.oom_seen:  # (a child of the cell, not its Python)
            session.oom_seen = usage.oom_kills
            return (f"A process of the cell ran out of memory: the container's limit is {format_size(limits.memory)} "
                    "and the kernel's OOM killer ended it.")
        if usage is not None and usage.pids_limit_hits > session.pids_seen:
            session.pids_seen = usage.pids_limit_hits
            return (f"The container reached its process limit (--pids-limit {limits.pids}): "
                    "new processes were refused.")
        return None

    def _print_stats(self, cid: str, result: Any, peak_reset: bool) -> None:
        """One line: the cell's wall and CPU time (the agent's), the container's memory peak (its cgroup)."""
        peak = None
        with contextlib.suppress(SandboxError, OSError):
            peak = self.containers.stats(cid).usage.memory_peak
        since = "" if peak_reset else " (since the container started: this cgroup cannot reset it)"
        print(f"wall {result.wall * 1000:.1f} ms, CPU {result.cpu * 1000:.1f} ms, "
              f"peak memory {format_size(peak) if peak is not None else 'unknown'}{since}")

    # -- %container ----------------------------------------------------------------------------------------------

    @line_magic("container")
    def container_line(self, line: str) -> Any:
        """``%container pull|images|ps|run|exec|stop|rm|commit|diff|history|limits|stats|push|network|panel ...``"""
        words = shlex.split(line)
        if not words:
            raise UsageError("usage: %container pull|images|ps|run|exec|stop|rm|commit|diff|history|limits|"
                             "stats|push|network|panel ... (see %container? )")
        if words[0] in ("--remote", "--local"):
            return self._use_remote(words)
        command, rest = words[0], words[1:]
        verb = VERBS.get(command) if command in NOTEBOOK_VERBS else None
        handler = getattr(self, f"_cmd_{command}", None)
        if verb is None and handler is None:
            raise UsageError(f"%container: unknown subcommand {command!r}")
        if self.remote is not None and verb is None and command not in REMOTE_COMMANDS:
            raise UsageError(f"%container {command} works on this kernel's machine only, not against "
                             f"{self.remote.url} (%container --local to come back)")
        try:
            if verb is not None:
                return self._verb(verb, rest)
            return handler(rest)
        except SandboxError as exc:
            raise UsageError(str(exc)) from None

    def _verb(self, verb: Verb, argv: list[str]) -> Any:
        """A shared verb (sandbox_kernel/verbs) in this cell: a listing is a Table, a status is the value."""
        parser = self._parser(verb.name)
        verb.arguments(parser)
        result = verb.call(self.client, parser.parse_args(argv), Cell(self))
        if isinstance(result, Listing):
            return Table.of(result)
        return None if isinstance(result, Done) else result

    def _use_remote(self, words: list[str]) -> str:
        """``%container --remote URL [--token T]``: line commands go to that server; ``--local``: back here."""
        if words == ["--local"]:
            self.remote = None
            return "local runtime"
        parser = self._parser("--remote")
        parser.add_argument("--remote", required=True, metavar="URL")
        parser.add_argument("--token")
        args = parser.parse_args(words)
        remote = RemoteClient(args.remote, args.token)
        try:
            remote.host()  # reachable, and the token works
        except SandboxError as exc:
            raise UsageError(str(exc)) from None
        self.remote = remote
        return f"remote: {remote.url}"

    @staticmethod
    def _parser(prog: str) -> Any:
        import argparse

        class Parser(argparse.ArgumentParser):
            def error(self, message: str) -> Any:
                raise UsageError(f"%container {prog}: {message}")

            def exit(self, status: int = 0, message: str | None = None) -> Any:
                raise UsageError(message or f"%container {prog}")

        return Parser(prog=f"%container {prog}", add_help=False)

    def _cmd_panel(self, argv: list[str]) -> Any:
        """``%container panel [--refresh SECONDS]``: the widget panel on this kernel's store."""
        parser = self._parser("panel")
        parser.add_argument("--refresh", type=float, default=2.0)
        args = parser.parse_args(argv)
        from .widgets import Panel

        def use_defaults(row: LimitsRow) -> None:
            chosen = to_limits(row, self.default_limits)
            self.policy.check_limits(chosen)  # (above the admin's maximum: the panel says so, nothing changes)
            self.default_limits = chosen

        if self.panel is not None:  # the cell ran again: the old panel's timer would poll forever
            self.panel.close()
        self.panel = Panel(self.client, refresh=args.refresh, on_defaults=use_defaults,
                           defaults=limits_row(self.default_limits))
        return self.panel

    def _cmd_inspect(self, argv: list[str]) -> Any:
        if len(argv) != 1:
            raise UsageError("usage: %container inspect REF")
        return fmt.inspect_image(self.store.resolve(argv[0]))

    def _cmd_push(self, argv: list[str]) -> str:
        parser = self._parser("push")
        parser.add_argument("source")
        parser.add_argument("destination", nargs="?")
        parser.add_argument("--insecure", action="store_true")
        args = parser.parse_args(argv)
        from ..runtime import RegistryOptions, push

        result = push(self.store, args.source, args.destination, options=RegistryOptions(insecure=args.insecure))
        return f"{result.reference}@{result.digest}"

    def _forget(self, ref: str) -> None:
        if self.remote is not None:
            return
        with contextlib.suppress(SandboxError):
            info = self.containers.get(ref)
            session = self.sessions.pop(info.name, None)
            if session is not None:
                session.close()

    def _cmd_diff(self, argv: list[str]) -> Table:
        if len(argv) != 1:
            raise UsageError("usage: %container diff NAME")
        return Table([{"kind": c.kind, "path": c.path} for c in self.containers.diff(argv[0])], ["kind", "path"])

    def _cmd_network(self, argv: list[str]) -> Any:
        """``%container network create NAME [--subnet CIDR] [--nat] [--allow-host] | ls | rm NAME...``"""
        from ..runtime import Networks

        networks = Networks(self.store.root)
        if argv[:1] == ["create"]:
            parser = self._parser("network create")
            parser.add_argument("name")
            parser.add_argument("--subnet")
            parser.add_argument("--nat", action="store_true")
            parser.add_argument("--allow-host", action="store_true")
            args = parser.parse_args(argv[1:])
            if args.allow_host and not self.policy.allow_host_network:
                raise UsageError("network create --allow-host is off here (c.SandboxPolicy.allow_host_network)")
            network = networks.create(args.name, subnet=args.subnet, nat=args.nat, allow_host=args.allow_host)
            return Table([{"name": network.name, "subnet": network.subnet, "gateway": network.gateway,
                           "nat": "yes" if network.nat else "no", "host": "yes" if network.allow_host else "no"}])
        if argv[:1] == ["ls"]:
            return Table([{"name": n.name, "subnet": n.subnet, "gateway": n.gateway, "nat": "yes" if n.nat else "no",
                           "host": "yes" if n.allow_host else "no",
                           "containers": ", ".join(sorted(e.name for e in networks.endpoints(n.name)))}
                          for n in networks.list()], ["name", "subnet", "gateway", "nat", "host", "containers"])
        if argv[:1] == ["rm"] and len(argv) > 1:
            for name in argv[1:]:
                networks.remove(name, running=self.containers.running)
            return None
        raise UsageError("usage: %container network create NAME [--subnet CIDR] [--nat] [--allow-host] | ls | "
                         "rm NAME...")


def register(ipython: Any) -> ContainerMagics:
    magics = ContainerMagics(ipython)
    ipython.register_magics(magics)
    return magics
