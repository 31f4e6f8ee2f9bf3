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
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .runtime import (
    ContainerInfo,
    ContainerNotFound,
    Containers,
    ContainerSpec,
    HostCapacity,
    Limits,
    Store,
    capacity,
)

if TYPE_CHECKING:
    from .policy import SandboxPolicy


@dataclass(frozen=True)
class ImageRow:
    ref: str  # repository:tag, docker's short form
    id: str  # sha256:... of the config
    digest: str  # the manifest's
    size: int  # bytes, compressed layers
    created: str | None  # RFC 3339, from the image config


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


@dataclass
class Progress:
    """A pull as it goes: bytes per layer and in all; ``fraction`` is what a bar shows."""

    reference: str
    layers: dict[str, list[int]] = field(default_factory=dict)  # digest -> [done, total]
    finished: bool = False
    started: float = field(default_factory=time.monotonic)
    ends: dict[str, str] = field(default_factory=dict)  # digest -> complete | exists | mounted

    @property
    def done(self) -> int:
        return sum(d for d, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        return self.done / self.total if self.total else 0.0

    @property
    def speed(self) -> float:
        """Bytes per second so far."""
        return self.done / max(time.monotonic() - self.started, 1e-6)

    def update(self, status: str, digest: str, done: int, total: int) -> None:
        """One event of the runtime's pull or push (ProgressEvent's status, digest, done, total)."""
        if status in ("waiting", "downloading", "uploading"):
            self.layers[digest] = [done, total]
        elif status in ("complete", "exists", "mounted"):
            size = max(total, self.layers.get(digest, [0, 0])[1])
            self.layers[digest] = [size, size]
            self.ends[digest] = status

    def ended(self, digest: str) -> str | None:
        """How a layer ended: complete, exists or mounted; None while it goes. (A state that came from a
        server says bytes only: a layer with all of its bytes is complete.)"""
        done, total = self.layers.get(digest, [0, 0])
        return self.ends.get(digest) or ("complete" if total and done >= total else None)


ProgressCallback = Callable[[Progress], None]


class Client(Protocol):
    """What the panel, the server and the magics' line commands may ask."""

    def host(self) -> HostCapacity: ...
    def images(self) -> list[ImageRow]: ...
    def pull(self, reference: str, *, platform: str | None = None, insecure: bool = False,
             progress: ProgressCallback | None = None) -> str: ...
    def remove_image(self, reference: str, force: bool = False) -> list[str]: ...
    def history(self, reference: str) -> list[dict[str, Any]]: ...
    def containers(self, all: bool = True) -> list[ContainerRow]: ...
    def container(self, ref: str) -> ContainerRow: ...
    def create(self, image: str, *, name: str | None = None, command: tuple[str, ...] = (),
               limits: LimitsRow | None = None, start: bool = True) -> str: ...
    def start(self, ref: str) -> None: ...
    def stop(self, ref: str, timeout: float = 10.0) -> None: ...
    def remove(self, ref: str, force: bool = False) -> str: ...
    def commit(self, ref: str, target: str | None = None, message: str | None = None,
               created_by: str | None = None) -> str: ...
    def stats(self, ref: str) -> StatsRow: ...
    def limits(self, ref: str) -> LimitsRow: ...
    def set_limits(self, ref: str, limits: LimitsRow) -> LimitsRow: ...
    def exec(self, ref: str, argv: list[str], output: Callable[[str, str], None],
             cancelled: Callable[[], bool] | None = None) -> int: ...
    def logs(self, ref: str, output: Callable[[str, str], None], follow: bool = False,
             cancelled: Callable[[], bool] | None = None) -> int | None: ...


def limits_row(limits: Limits) -> LimitsRow:
    return LimitsRow(memory=limits.memory, cpus=limits.cpus, pids=limits.pids, disk=limits.disk)


def to_limits(row: LimitsRow, base: Limits | None = None) -> Limits:
    """A runtime Limits from a row (memory_swap kept from ``base`` while it still fits)."""
    swap = base.memory_swap if base is not None else None
    if swap is not None and (row.memory is None or swap < row.memory):
        swap = None
    disk = row.disk if row.disk is not None else base.disk if base is not None else None
    return Limits(memory=row.memory, memory_swap=swap, cpus=row.cpus, pids=row.pids, disk=disk)


class LocalClient:
    """The client API on this machine's runtime (the store at ``store``'s root)."""

    def __init__(self, store: Store | None = None, containers: Containers | None = None,
                 policy: SandboxPolicy | None = None):
        """``policy``: what the admin allows (images, limits, volumes; policy.py); default: anything."""
        self.store = store or Store()
        self._containers: Containers | None = containers
        self.policy = policy
        self._cpu: dict[str, tuple[float, int]] = {}  # container id -> (when, cpu ns) of the last listing
        self._lock = threading.Lock()

    @property
    def runtime(self) -> Containers:
        if self._containers is None:
            self._containers = Containers(self.store)
        return self._containers

    def host(self) -> HostCapacity:
        return capacity()

    # -- images ---------------------------------------------------------------------------------------------------

    def images(self) -> list[ImageRow]:
        from . import format as fmt

        return [ImageRow(ref=f"{r['Repository']}:{r['Tag']}" if r["Tag"] else r["Repository"], id=r["Id"],
                         digest=r["Digest"], size=r["Size"], created=r["Created"])
                for r in fmt.image_rows(self.store)]

    def pull(self, reference: str, *, platform: str | None = None, insecure: bool = False,
             progress: ProgressCallback | None = None) -> str:
        from .runtime import RegistryOptions, pull

        if self.policy is not None:
            self.policy.check_image(reference)
        state = Progress(reference)

        def on_event(event: Any) -> None:
            state.update(event.status, event.digest, event.done, event.total)
            if progress is not None and event.status != "resolved":
                progress(state)

        result = pull(self.store, reference, platform=platform, options=RegistryOptions(insecure=insecure),
                      progress=on_event)
        state.finished = True
        if progress is not None:
            progress(state)
        return result.digest

    def remove_image(self, reference: str, force: bool = False) -> list[str]:
        tags, image = self.store.remove_image(reference, force=force)
        if image.manifest_digest not in self.store.tags().values():
            self.store.prune()
        return tags

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
            pids_limit=limits.pids)

    def create(self, image: str, *, name: str | None = None, command: tuple[str, ...] = (),
               limits: LimitsRow | None = None, start: bool = True) -> str:
        if self.policy is not None:
            self.policy.check_image(image)
        self.store.resolve(image)  # a clear error for an image that is not here, before anything is made
        if limits is not None:  # (a disk not said is the admin's default, as with no limits at all)
            chosen = to_limits(limits, Limits(disk=self.policy.defaults().disk) if self.policy is not None else None)
        else:
            chosen = self.policy.defaults() if self.policy is not None else Limits()
        spec = ContainerSpec(image=image, name=name, command=tuple(command), limits=chosen)
        if self.policy is not None:
            self.policy.check(spec)
        if start:
            return self.runtime.run_detached(spec)
        return self.runtime.create(spec)

    def start(self, ref: str) -> None:
        self.runtime.start(ref)

    def stop(self, ref: str, timeout: float = 10.0) -> None:
        self.runtime.stop(ref, timeout=timeout)

    def remove(self, ref: str, force: bool = False) -> str:
        return self.runtime.remove(ref, force=force)

    def commit(self, ref: str, target: str | None = None, message: str | None = None,
               created_by: str | None = None) -> str:
        return self.runtime.commit(ref, target, message=message, created_by=created_by).id

    def stats(self, ref: str) -> StatsRow:
        s = self.runtime.stats(ref)
        u = s.usage
        return StatsRow(id=s.id, name=s.name, memory=u.memory_current, memory_peak=u.memory_peak,
                        memory_limit=s.limits.memory, cpu_seconds=None if u.cpu_ns is None else u.cpu_ns / 1e9,
                        cpus=s.limits.cpus, pids=u.pids, pids_limit=s.limits.pids, oom_kills=u.oom_kills,
                        pids_limit_hits=u.pids_limit_hits)

    def limits(self, ref: str) -> LimitsRow:
        return limits_row(self.runtime.get(ref).spec.limits)

    def set_limits(self, ref: str, limits: LimitsRow) -> LimitsRow:
        current = self.runtime.get(ref).spec.limits
        chosen = to_limits(limits, current)
        if self.policy is not None:
            self.policy.check_limits(chosen)
        return limits_row(self.runtime.update(ref, chosen))

    def exec(self, ref: str, argv: list[str], output: Callable[[str, str], None],
             cancelled: Callable[[], bool] | None = None) -> int:
        """Run ``argv`` in the container, its output to ``output(stream, text)``; its exit status. Once
        ``cancelled()`` says so (or ``output`` raises), the command is ended."""
        return self.runtime.exec(ref, argv, stdin=None,
                                 stdout=lambda d: output("stdout", d.decode(errors="replace")),
                                 stderr=lambda d: output("stderr", d.decode(errors="replace")), cancelled=cancelled)


    def logs(self, ref: str, output: Callable[[str, str], None], follow: bool = False,
             cancelled: Callable[[], bool] | None = None) -> int | None:
        """A detached container's output so far (with ``follow``: then as it comes, until it stops, or until
        ``cancelled()``), to ``output(stream, text)``; its exit code if it has exited, else None."""
        names = {1: "stdout", 2: "stderr"}
        for stream, data in self.runtime.logs(ref, follow=follow, cancelled=cancelled):
            output(names.get(stream, "stdout"), data.decode(errors="replace"))
        try:
            return self.runtime.get(ref).state.exit_code
        except ContainerNotFound:  # (a --rm container is gone once it stops)
            return None


def as_json(value: Any) -> Any:
    """A client result as JSON values (dataclasses become dicts)."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
