"""One API for the frontends that show state and act on it: the panel, the REST server, remote magics.

:class:`LocalClient` runs it on this machine's runtime; the server extension
serves the same calls over HTTP (``sandbox_kernel/server``), and
:class:`~sandbox_kernel.remote.RemoteClient` makes them against such a server, so
the panel and the line magics have one code path whichever is behind them
(docker's client/daemon split, without the daemon). Everything a call returns is
a plain dataclass of JSON values, so that the server can send it as it is.

Errors are the runtime's (:class:`~sandbox_kernel.runtime.SandboxError` and
below): one line each, for a panel's error line or the server's JSON reply.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .runtime import UNLIMITED_SWAP, ContainerNotFound, ContainerSpec, Limits, Store, UsageError

if TYPE_CHECKING:  # (the engine is imported when a call needs it: `images` does not start one)
    from .policy import SandboxPolicy
    from .progress import Progress
    from .runtime import ContainerInfo, Containers, HostCapacity


@dataclass(frozen=True)
class ImageRow:
    ref: str  # repository:tag, docker's short form
    id: str  # sha256:... of the config
    digest: str  # the manifest's
    size: int  # bytes, compressed layers
    created: str | None  # RFC 3339, from the image config


@dataclass(frozen=True)
class ImageRemoval:
    untagged: list[str]  # the tags removed
    deleted: str | None  # the image's id once it is gone (None: another tag or a container still keeps it)


@dataclass(frozen=True)
class ContainerRow:
    id: str
    name: str
    image: str
    status: str  # created, running, paused, exited
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    cpu_percent: float | None  # of one CPU, since the previous listing (None: first look, or not running)
    memory: int | None  # bytes used now
    memory_limit: int | None
    cpus: float | None
    pids: int | None
    pids_limit: int | None
    command: str = ""  # as docker ps shows it: the argv joined by spaces
    error: str | None = None  # why it ended when that was not its own doing (its monitor died, ...)

    @property
    def uptime(self) -> float | None:
        return time.time() - self.started_at if self.status in ("running", "paused") and self.started_at else None


@dataclass(frozen=True)
class StatsRow:
    """What a running container uses now, against its limits (``docker stats``, one snapshot)."""

    id: str
    name: str
    memory: int | None  # bytes
    memory_peak: int | None  # since it started (v1: or since the last cell's reset)
    memory_limit: int | None
    cpu_seconds: float | None  # CPU time used so far
    cpus: float | None
    pids: int | None
    pids_limit: int | None
    oom_kills: int
    pids_limit_hits: int


@dataclass(frozen=True)
class LimitsRow:
    memory: int | None
    cpus: float | None
    pids: int | None
    disk: int | None = None  # the writable layer's size; fixed when the container is made (None: not said)

    def with_options(self, memory: str | None = None, cpus: str | None = None, pids: int | None = None
                     ) -> LimitsRow:
        """These limits with the options a user typed (``256m``, ``0.5``, ``50``; None keeps one), parsed and
        checked by the runtime's rules: the one step from a frontend's options to a row it sends."""
        changed = Limits(memory=self.memory, cpus=self.cpus, pids=self.pids).with_options(memory, cpus, pids)
        return LimitsRow(changed.memory, changed.cpus, changed.pids, self.disk)


ProgressCallback = Callable[["Progress"], None]  # (Progress: progress.py)


@dataclass(frozen=True)
class Stdio:
    """The caller's own file descriptors, passed on as bytes (the local CLI): a container's output is not
    decoded, its stdin is the caller's, and with ``tty`` it runs on a pseudo-terminal of its own."""

    stdin: int | None = 0
    stdout: int = 1
    stderr: int = 2
    tty: bool = False

    def text(self) -> Callable[[str, str], None]:
        """Output as ``(stream, text)`` calls (what a server sends), written to these fds."""

        return lambda stream, text: _write(self.stderr if stream == "stderr" else self.stdout, text.encode())


Output = Callable[[str, str], None] | Stdio  # a container's output: text to a callback, or bytes to the caller's fds


@dataclass(frozen=True)
class RunOptions:
    """What ``run`` and ``create`` say about a new container, as typed (docker's flags); the client parses it."""

    image: str
    command: tuple[str, ...] = ()
    name: str | None = None
    limits: LimitsRow | None = None  # None: the defaults (the admin's, in a notebook with a policy)
    memory_swap: str | None = None
    entrypoint: str | None = None
    env: tuple[str, ...] = ()  # KEY=VALUE
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    volumes: tuple[str, ...] = ()  # SRC:DST[:ro]
    publish: tuple[str, ...] = ()  # [IP:]HOST:CONTAINER
    network: str = "none"
    ulimits: tuple[str, ...] = ()  # NAME=SOFT[:HARD]
    log_size: str | None = None
    userns: str = ""
    remove: bool = False

    def local_only(self) -> list[str]:
        """The flags given that only this machine's runtime can honour (its files, ports and networks)."""
        return [flag for flag, used in (("-v", self.volumes), ("-p", self.publish), ("-e", self.env),
                                        ("--network", self.network != "none"), ("--memory-swap", self.memory_swap),
                                        ("--entrypoint", self.entrypoint is not None), ("-w", self.workdir),
                                        ("-u", self.user), ("--hostname", self.hostname), ("--ulimit", self.ulimits),
                                        ("--log-size", self.log_size), ("--userns", self.userns)) if used]


@dataclass(frozen=True)
class RunOutcome:
    """A run's end: the container's id, and for a foreground run its exit code and the sentence that explains
    it (an OOM kill; None when there is nothing to say)."""

    id: str
    exit_code: int | None = None
    message: str | None = None


class Client(Protocol):
    """What the panel, the server and the magics' line commands may ask."""

    def host(self) -> HostCapacity: ...
    def images(self) -> list[ImageRow]: ...
    def pull(self, reference: str, *, platform: str | None = None, insecure: bool = False,
             progress: ProgressCallback | None = None, ca_file: str | None = None,
             cert_dir: str | None = None) -> str: ...
    def remove_image(self, reference: str, force: bool = False) -> ImageRemoval: ...
    def history(self, reference: str) -> list[dict[str, Any]]: ...
    def containers(self, all: bool = True) -> list[ContainerRow]: ...
    def container(self, ref: str) -> ContainerRow: ...
    def create(self, image: str, *, name: str | None = None, command: tuple[str, ...] = (),
               limits: LimitsRow | None = None, start: bool = True) -> str: ...
    def start(self, ref: str) -> None: ...
    def stop(self, ref: str, timeout: float = 10.0) -> None: ...
    def remove(self, ref: str, force: bool = False) -> str: ...
    def commit(self, ref: str, target: str | None = None, message: str | None = None,
               created_by: str | None = None, compression: str = "gzip") -> str: ...
    def stats(self, ref: str) -> StatsRow: ...
    def limits(self, ref: str) -> LimitsRow: ...
    def set_limits(self, ref: str, limits: LimitsRow, memory_swap: str | None = None) -> LimitsRow: ...
    def exec(self, ref: str, argv: list[str], output: Output, cancelled: Callable[[], bool] | None = None, *,
             env: tuple[str, ...] = (), user: str | None = None, workdir: str | None = None) -> int: ...
    def run(self, options: RunOptions, output: Output | None = None, *, detach: bool = False,
            start: bool = True) -> RunOutcome: ...
    def logs(self, ref: str, output: Output, follow: bool = False,
             cancelled: Callable[[], bool] | None = None) -> int | None: ...


def limits_row(limits: Limits) -> LimitsRow:
    return LimitsRow(memory=limits.memory, cpus=limits.cpus, pids=limits.pids, disk=limits.disk)


def to_limits(row: LimitsRow, base: Limits | None = None) -> Limits:
    """A runtime Limits from a row (memory_swap kept from ``base`` while it still fits)."""
    swap = base.memory_swap if base is not None else None
    if swap is not None and (row.memory is None or (swap < row.memory and swap != UNLIMITED_SWAP)):
        swap = None
    disk = row.disk if row.disk is not None else base.disk if base is not None else None
    return Limits(memory=row.memory, memory_swap=swap, cpus=row.cpus, pids=row.pids, disk=disk)


class LocalClient:
    """The client API on this machine's runtime (the store at ``store``'s root)."""

    def __init__(self, store: Store | None = None, containers: Containers | None = None,
                 policy: SandboxPolicy | None = None, warm_slots: bool = True):
        """``policy``: what the admin allows (images, limits, volumes; policy.py); default: anything.
        ``warm_slots``: prepare the next container's start ahead (a caller that runs one and exits does not)."""
        self.store = store or Store()
        self._containers: Containers | None = containers
        self._warm_slots = warm_slots
        self.policy = policy
        self._cpu: dict[str, tuple[float, int]] = {}  # container id -> (when, cpu ns) of the last listing
        self._lock = threading.Lock()

    @property
    def runtime(self) -> Containers:
        if self._containers is None:
            from .runtime import Containers

            self._containers = Containers(self.store, warm_slots=self._warm_slots)
        return self._containers

    def host(self) -> HostCapacity:
        from .runtime import capacity

        return capacity()

    # -- images ---------------------------------------------------------------------------------------------------

    def images(self) -> list[ImageRow]:
        from . import format as fmt

        return [ImageRow(ref=f"{r['Repository']}:{r['Tag']}" if r["Tag"] else r["Repository"], id=r["Id"],
                         digest=r["Digest"], size=r["Size"], created=r["Created"])
                for r in fmt.image_rows(self.store)]

    def pull(self, reference: str, *, platform: str | None = None, insecure: bool = False,
             progress: ProgressCallback | None = None, ca_file: str | None = None,
             cert_dir: str | None = None) -> str:
        from .progress import Follow
        from .runtime import RegistryOptions, pull

        if self.policy is not None:
            self.policy.check_image(reference)
        events = Follow(reference, progress)
        result = pull(self.store, reference, platform=platform, progress=events,
                      options=RegistryOptions(insecure=insecure, ca_file=ca_file, cert_dir=cert_dir))
        events.finish()
        return result.digest

    def remove_image(self, reference: str, force: bool = False) -> ImageRemoval:
        tags, image = self.store.remove_image(reference, force=force)
        deleted = None
        if image.manifest_digest not in self.store.tags().values():
            self.store.prune()
            if not self.store.has_blob(image.manifest_digest):  # (a container may still keep it)
                deleted = image.id
        return ImageRemoval(tags, deleted)

    def history(self, reference: str) -> list[dict[str, Any]]:
        from . import format as fmt

        return fmt.history_rows(self.store.resolve(reference))

    # -- containers -----------------------------------------------------------------------------------------------

    def containers(self, all: bool = True) -> list[ContainerRow]:
        sampled: set[str] = set()
        rows = [self._row(info, sampled) for info in self.runtime.list(all=all)]
        with self._lock:  # forget the CPU samples of containers not sampled now (gone, or not running)
            for gone in set(self._cpu) - sampled:
                del self._cpu[gone]
        return rows

    def container(self, ref: str) -> ContainerRow:
        """One container (a name, an id or a unique prefix of one) as :meth:`containers` shows it."""
        return self._row(self.runtime.get(ref))

    def _row(self, info: ContainerInfo, sampled: set[str] | None = None) -> ContainerRow:
        """``info`` with its usage now; ``sampled`` gets its id if its CPU time was read."""
        from .runtime import SandboxError

        limits = info.spec.limits
        usage = None
        if info.state.status in ("running", "paused"):
            with contextlib.suppress(SandboxError):  # (it stopped meanwhile)
                usage = self.runtime.stats(info.id).usage
        cpu_percent = None
        if usage is not None and usage.cpu_ns is not None:
            now = time.monotonic()
            if sampled is not None:
                sampled.add(info.id)
            with self._lock:
                before = self._cpu.get(info.id)
                self._cpu[info.id] = (now, usage.cpu_ns)
            if before is not None and now > before[0]:
                cpu_percent = max(0.0, (usage.cpu_ns - before[1]) / 1e9 / (now - before[0]) * 100)
        return ContainerRow(
            id=info.id, name=info.name, image=info.image, status=info.state.status,
            created_at=info.state.created_at, started_at=info.state.started_at,
            finished_at=info.state.finished_at, exit_code=info.state.exit_code,
            cpu_percent=cpu_percent, memory=usage.memory_current if usage else None,
            memory_limit=limits.memory, cpus=limits.cpus, pids=usage.pids if usage else None,
            pids_limit=limits.pids, command=" ".join(info.command), error=info.state.error)

    def create(self, image: str, *, name: str | None = None, command: tuple[str, ...] = (),
               limits: LimitsRow | None = None, start: bool = True) -> str:
        """The REST API's create: :meth:`run` detached, with what that API says of a container."""
        if self.policy is not None:
            self.policy.check_image(image)
        self.store.resolve(image)  # a clear error for an image that is not here, before anything is made
        return self.run(RunOptions(image=image, name=name, command=tuple(command), limits=limits), detach=True,
                        start=start).id

    def start(self, ref: str) -> None:
        self.runtime.start(ref)

    def stop(self, ref: str, timeout: float = 10.0) -> None:
        self.runtime.stop(ref, timeout=timeout)

    def remove(self, ref: str, force: bool = False) -> str:
        return self.runtime.remove(ref, force=force)

    def commit(self, ref: str, target: str | None = None, message: str | None = None,
               created_by: str | None = None, compression: str = "gzip") -> str:
        if compression not in ("gzip", "zstd"):
            raise UsageError(f"invalid compression {compression!r}: gzip or zstd")
        return self.runtime.commit(ref, target, message=message, created_by=created_by,
                                   compression=compression).id  # type: ignore[arg-type]

    def stats(self, ref: str) -> StatsRow:
        s = self.runtime.stats(ref)
        u = s.usage
        return StatsRow(id=s.id, name=s.name, memory=u.memory_current, memory_peak=u.memory_peak,
                        memory_limit=s.limits.memory, cpu_seconds=None if u.cpu_ns is None else u.cpu_ns / 1e9,
                        cpus=s.limits.cpus, pids=u.pids, pids_limit=s.limits.pids, oom_kills=u.oom_kills,
                        pids_limit_hits=u.pids_limit_hits)

    def limits(self, ref: str) -> LimitsRow:
        return limits_row(self.runtime.get(ref).spec.limits)

    def set_limits(self, ref: str, limits: LimitsRow, memory_swap: str | None = None) -> LimitsRow:
        """``memory_swap``: ``update --memory-swap`` as typed (``-1``: unlimited swap)."""
        current = self.runtime.get(ref).spec.limits
        chosen = to_limits(limits, current)
        if memory_swap is not None:
            chosen = chosen.with_options(memory_swap=memory_swap)
        if self.policy is not None:
            self.policy.check_limits(chosen)
        return limits_row(self.runtime.update(ref, chosen))

    def run(self, options: RunOptions, output: Output | None = None, *, detach: bool = False,
            start: bool = True) -> RunOutcome:
        """A new container from ``options``: with ``detach``, made (and started unless ``start`` is False) and
        left running; else in the foreground, its output to ``output`` (as :meth:`exec`'s) until it exits
        (Ctrl-C, SIGTERM and SIGHUP are passed on to it)."""
        spec = self._spec(options)
        if detach:
            return RunOutcome(self.runtime.run_detached(spec) if start else self.runtime.create(spec))
        stdin, stdout, stderr, tty = _stdio(output)
        if tty and not any(key == "TERM" for key, _ in spec.env):  # (as docker -t)
            spec = replace(spec, env=(*spec.env, ("TERM", "xterm")))
        result = self.runtime.run(spec, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
        return RunOutcome(result.container_id or "", result.exit_code, result.message())

    def _spec(self, options: RunOptions) -> ContainerSpec:
        """The runtime's spec for ``options``, within the policy (a disk not said is the admin's default, as with
        no limits at all)."""
        from .runtime import DEFAULT_ULIMITS, Mount, NetSpec, parse_env, parse_publish, parse_size, parse_ulimit

        if self.policy is not None:
            self.policy.check_image(options.image)
        base = self.policy.defaults() if self.policy is not None else Limits()
        if options.limits is not None:
            base = to_limits(options.limits, Limits(disk=base.disk))
        limits = base.with_options(memory_swap=options.memory_swap) if options.memory_swap else base
        spec = ContainerSpec(
            image=options.image, command=tuple(options.command), name=options.name, limits=limits,
            entrypoint=(options.entrypoint,) if options.entrypoint is not None else None,
            env=parse_env(list(options.env)), workdir=options.workdir, user=options.user,
            hostname=options.hostname, mounts=tuple(Mount.parse(v) for v in options.volumes),
            network=NetSpec(options.network), ports=tuple(parse_publish(p) for p in options.publish),
            remove=options.remove, ulimits=DEFAULT_ULIMITS + tuple(parse_ulimit(u) for u in options.ulimits),
            log_size=parse_size(options.log_size, "--log-size") if options.log_size else ContainerSpec.log_size,
            userns=options.userns)
        if self.policy is not None:
            self.policy.check(spec)
        return spec

    def exec(self, ref: str, argv: list[str], output: Output, cancelled: Callable[[], bool] | None = None, *,
             env: tuple[str, ...] = (), user: str | None = None, workdir: str | None = None) -> int:
        """Run ``argv`` in the container, its output to ``output`` (``output(stream, text)``, or the caller's
        own fds: :class:`Stdio`); its exit status. Once ``cancelled()`` says so (or ``output`` raises), the
        command is ended."""
        from .runtime import parse_env

        stdin, stdout, stderr, tty = _stdio(output)
        if tty and not any(item.startswith("TERM=") for item in env):
            env = (*env, "TERM=xterm")
        return self.runtime.exec(ref, argv, env=parse_env(list(env)), user=user, workdir=workdir, stdin=stdin,
                                 stdout=stdout, stderr=stderr, cancelled=cancelled, tty=tty)

    def logs(self, ref: str, output: Output, follow: bool = False,
             cancelled: Callable[[], bool] | None = None) -> int | None:
        """A detached container's output so far (with ``follow``: then as it comes, until it stops, or until
        ``cancelled()``), to ``output`` (as :meth:`exec`'s); its exit code if it has exited, else None."""
        _, stdout, stderr, _ = _stdio(output)
        for stream, data in self.runtime.logs(ref, follow=follow, cancelled=cancelled):
            _write(stderr if stream == 2 else stdout, data)
        try:
            return self.runtime.get(ref).state.exit_code
        except ContainerNotFound:  # (a --rm container is gone once it stops)
            return None


def _stdio(output: Output | None) -> tuple[int | None, Any, Any, bool]:
    """The runtime's stdin, stdout, stderr and tty for an :data:`Output` (None: no stdin, the output dropped)."""
    if isinstance(output, Stdio):
        return output.stdin, output.stdout, output.stderr, output.tty
    if output is None:
        return None, None, None, False
    text = output
    return (None, lambda d: text("stdout", d.decode(errors="replace")),
            lambda d: text("stderr", d.decode(errors="replace")), False)


def _write(target: Any, data: bytes) -> None:
    """``data`` to an fd (all of it) or a callback; None drops it."""
    if target is None:
        return
    if callable(target):
        target(data)
        return
    view = memoryview(data)
    while view:
        view = view[os.write(target, view):]


def as_json(value: Any) -> Any:
    """A client result as JSON values (dataclasses become dicts)."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
