"""Create, start, run, wait and exec: what a container runs, resolved once at create, and its start.

``create`` writes a container's directory (state.py) and its record (record.py);
``start`` forks its monitor (monitor.py), which starts PID 1 and records what
happens to it; ``run`` is both, then waits in the foreground with the caller's
stdio (or callbacks) attached, taking a warm slot when one is ready
(launcher.py); ``exec`` joins a running container through its PID 1's pidfd.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import disk, userns_keeper
from . import idmap as idmap_mod
from . import users as users_mod
from .cgroups import limit_refusal, open_cgroup
from .control import _alive, _kill_quietly, _pidfd, _send_signal
from .errors import (
    CgroupError,
    ContainerError,
    ExecCancelled,
    ExecError,
    ImageNotFound,
    SandboxError,
    UsageError,
)
from .image.store import Image
from .info import ContainerInfo, ContainerResult
from .record import ETC_FILES, ContainerRecord, ProcessRecord
from .room import Room
from .rootfs import RootfsPlan
from .spec import ContainerSpec, Limits
from .state import (
    ACTIVE,
    CREATED,
    EXITED,
    PAUSED,
    RUNNING,
    WARM_MARK,
    ContainerDir,
    ProcRef,
    State,
    layer_dirs,
    remove_dir,
)
from .stdio import Output, Relay

if TYPE_CHECKING:
    from . import launcher, process
    from .monitor import Job, Speculation
else:
    from .lazy import module

    launcher = module(f"{__package__}.launcher")
    process = module(f"{__package__}.process")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _env(image: Image, spec: ContainerSpec, hostname: str, home: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in (image.config.get("config") or {}).get("Env") or [f"PATH={DEFAULT_PATH}"]:
        key, _, value = item.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOSTNAME"] = hostname
    env.update(dict(spec.env))
    env.setdefault("HOME", home)
    return env


def _argv(image: Image, spec: ContainerSpec) -> list[str]:
    config = image.config.get("config") or {}
    entrypoint = list(spec.entrypoint) if spec.entrypoint is not None else list(config.get("Entrypoint") or [])
    cmd = list(spec.command) if spec.command else (list(config.get("Cmd") or []) if spec.entrypoint is None else [])
    argv = entrypoint + cmd
    if not argv:
        raise UsageError(f"no command given and image {spec.image} has no Cmd or Entrypoint")
    return argv


def _warm_key(image: Image, spec: ContainerSpec) -> tuple[str, ...] | None:
    """What a warm slot's rootfs depends on; None when it must not be built ahead (volumes: host paths)."""
    if spec.mounts:
        return None
    return (image.id, spec.hostname or "", _cwd(image, spec), spec.userns, str(spec.limits.disk))


def _cwd(image: Image, spec: ContainerSpec) -> str:
    return spec.workdir or (image.config.get("config") or {}).get("WorkingDir") or "/"


def _rlimits(ulimits: tuple[tuple[str, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
    merged = {name: (soft, hard) for name, soft, hard in ulimits}
    out = []
    for name, (soft, hard) in merged.items():
        which = getattr(resource, f"RLIMIT_{name.upper()}")
        out.append((which, resource.RLIM_INFINITY if soft == -1 else soft,
                    resource.RLIM_INFINITY if hard == -1 else hard))
    return tuple(out)


def _process_plan(proc: ProcessRecord, record: ContainerRecord) -> process.ProcessPlan:
    spec = record.spec
    # (a user who is not root: the container is in that user's namespace, which exec joins too)
    userns = record.idmap is not None or userns_keeper.rootless()
    return process.ProcessPlan(
        argv=proc.argv,
        env=proc.env,
        cwd=proc.cwd,
        uid=proc.uid,
        gid=proc.gid,
        groups=proc.groups,
        rlimits=_rlimits(spec.ulimits),
        userns=userns,
        # a writable volume is a host folder: no setuid or setgid file may appear in it (security.py)
        no_setid=userns and any(not mount.readonly for mount in spec.mounts),
    )


def _idmap(spec: ContainerSpec) -> idmap_mod.IdMap | None:
    """The user namespace's map of a new container (None: host ids, ``--userns=host``)."""
    return None if spec.userns == "host" else idmap_mod.default()


def _rootless_checks(spec: ContainerSpec) -> userns_keeper.Keeper:
    """What a container of a user who is not root cannot have, refused before anything is made; and
    its user namespace, made now if it is not there (with the one note a user with no id range gets)."""
    if spec.limits.disk is not None:
        raise UsageError("--disk needs root (it mounts a file system of its own); as a user who is not root, "
                         "a container's writable layer is limited by your own disk quota only")
    refusal = limit_refusal()
    if refusal is not None and replace(spec.limits, disk=None) != Limits():  # (no delegated subtree)
        raise CgroupError(refusal)
    keeper = userns_keeper.ensure()
    if keeper.note:
        print(f"sandbox-kernel: {keeper.note}", file=sys.stderr)
    return keeper


def _volume_owners(spec: ContainerSpec, idmap: idmap_mod.IdMap | None) -> tuple[tuple[int, int] | None, ...]:
    """Per volume, the host user (uid, gid) the container's root is there (an idmapped mount), or None.

    A volume is its owner's: the container's root writes there as that user,
    with that user's primary group, and can do nothing that user could not.
    A writable volume that belongs to root is refused: no container may write
    as the host's root. A read-only one of root's is bound as it is (as
    docker's userns-remap does): its files read as any other user may.
    """
    if idmap is None:
        return tuple(None for _ in spec.mounts)
    out: list[tuple[int, int] | None] = []
    for mount in spec.mounts:
        try:
            st = os.stat(mount.source)
        except OSError as exc:
            raise UsageError(f"volume {mount.source}: {exc.strerror.lower() if exc.strerror else exc}") from None
        if st.st_uid == 0:
            if not mount.readonly:
                raise UsageError(f"volume {mount.source} belongs to root, and a container's root is not the "
                                 "host's: mount it read-only (:ro), give it to a user (chown), or run with "
                                 "--userns=host (trusted tools only)")
            out.append(None)
            continue
        import pwd

        try:
            gid = pwd.getpwuid(st.st_uid).pw_gid
        except KeyError:
            gid = st.st_gid
        out.append((st.st_uid, gid or 65534))  # (never the host's root group: nogroup then)
    return tuple(out)


class _Events:
    """JSON lines from the monitor's status pipe."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = b""

    def next(self, stdio: Relay | None = None) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            if stdio is not None:
                stdio.pump_until_ready(self.fd)
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return {"event": "lost"}
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def _raise_for(event: dict[str, Any], cdir: ContainerDir) -> None:
    if event.get("event") == "error":
        if event.get("exec_error"):
            raise ExecError(str(event["message"]), int(event["exit_code"]))
        raise ContainerError(str(event["message"]))
    if event.get("event") == "lost" and not cdir.path.exists():
        return
    if event.get("event") == "lost" and cdir.read_state().status == CREATED:
        raise ContainerError(f"container {cdir.id[:12]}: its monitor died before the container started")


class _Interrupts:
    """While a container (or an exec) runs in the foreground, interrupts are the container's.

    Each Ctrl-C (SIGINT, or a KeyboardInterrupt raised by someone else's
    handler, as in an IPython kernel) is passed on as a harder signal: SIGINT,
    then SIGTERM, then SIGKILL. In the main thread SIGTERM and SIGHUP are
    passed on as they are (docker's sig-proxy). Signals that come before the
    target is known are kept and sent as soon as it is.
    """

    ESCALATION = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)

    def __init__(self) -> None:
        self.count = 0
        self.pending: list[int] = []
        self.send: Callable[[int], object] | None = None
        self.old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.old[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: self.interrupt())
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self.old[sig] = signal.signal(sig, lambda signum, _frame: self.forward(signum))
        return self

    def interrupt(self) -> None:
        self.forward(self.ESCALATION[min(self.count, 2)])
        self.count += 1

    def forward(self, signum: int) -> None:
        if self.send is None:
            self.pending.append(signum)
        else:
            self.send(signum)

    def target(self, send: Callable[[int], object]) -> None:
        self.send = send
        for signum in self.pending:
            send(signum)
        self.pending.clear()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def _next_event(events: _Events, stdio: Relay, interrupts: _Interrupts) -> dict[str, Any]:
    while True:
        try:
            return events.next(stdio)
        except KeyboardInterrupt:
            interrupts.interrupt()


def _end_exec(helper: int, grace: float = 1.0) -> None:
    """End an exec whose caller is gone: SIGHUP to the command's process group (the helper passes it on),
    then SIGKILL to that group and the helper."""
    _kill_quietly(helper, signal.SIGHUP)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(helper):
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{helper}/task/{helper}/children").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(child), signal.SIGKILL)  # the command leads its own session: its group is its pid
    _kill_quietly(helper, signal.SIGKILL)


def _wait_status(stdio: Relay, status_r: int, interrupts: _Interrupts,
                 cancelled: Callable[[], bool] | None = None) -> int:
    """Pump output until the exec helper writes the exit status."""
    def check() -> None:
        if cancelled is not None and cancelled():
            raise ExecCancelled("the exec was stopped: whoever waited for it went away")

    data = b""
    while True:
        try:
            stdio.pump_until_ready(status_r, check)
            chunk = os.read(status_r, 64)
        except KeyboardInterrupt:
            interrupts.interrupt()
            continue
        if not chunk:
            break
        data += chunk
    stdio.drain()
    return int(data) if data.strip().isdigit() else 137  # no status: the helper was killed


class _Starting(Room):
    """Create, start, run, wait, exec (mixed into Containers)."""

    def create(self, spec: ContainerSpec) -> str:
        """Make the container's directory and resolve what it runs; returns its id. Nothing runs yet."""
        return self._create(spec, self.store.resolve(spec.image))[0]

    def _create(self, spec: ContainerSpec, image: Image,
                warm: Speculation | None = None) -> tuple[str, ContainerRecord]:
        """``create``: the id and record; with ``warm``, it takes the id and directory a warm slot prepared."""
        rootless = userns_keeper.rootless()
        keeper = _rootless_checks(spec) if rootless else None
        if spec.name is not None and (not spec.name or not spec.name.isascii()
                                      or not all(c.isalnum() or c in "_.-" for c in spec.name)
                                      or not spec.name[0].isalnum()):
            raise UsageError(f"invalid container name {spec.name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        from .host import check_ulimits

        check_ulimits(spec.ulimits)
        mapping = None if rootless else _idmap(spec)
        lowers = [str(d) for d in reversed(self.store.unpack(image, idmap=mapping))]  # top first
        cid = warm.cid if warm is not None else os.urandom(32).hex()
        name = spec.name or f"sk-{cid[:12]}"
        hostname = spec.hostname or cid[:12]
        user = users_mod.resolve(spec.user or (image.config.get("config") or {}).get("User") or "0", lowers)
        if keeper is not None and keeper.single_id and (user.uid or user.gid or any(user.groups)):
            raise UsageError(f"user {spec.user or user.uid} of the container is not root, and your containers get "
                             f"one id alone (yours, as root); root gives them 65536 with: "
                             f"{userns_keeper.how_to_add_range()}")
        record = ContainerRecord(
            id=cid, name=name, image_id=image.id, image_manifest=image.manifest_digest, idmap=mapping, spec=spec,
            cgroup=cid[:32], hostname=hostname, lowerdirs=tuple(lowers),
            process=ProcessRecord(argv=tuple(_argv(image, spec)),
                                  env=tuple(_env(image, spec, hostname, user.home).items()), cwd=_cwd(image, spec),
                                  uid=user.uid, gid=user.gid, groups=tuple(user.groups)))
        cdir = ContainerDir(self.root / cid)
        if warm is None:
            me = ProcRef.me()  # (marked as its maker's: if this process is killed, the next listing drops it)
            with self._disk_room(spec.limits.disk):
                cdir.make(hostname, warm_owner=(me.pid, me.start) if me is not None else None,
                          root_ids=mapping.root if mapping is not None else None, disk_size=spec.limits.disk)
        try:
            if not self.names.claim(name, cid, lambda other: (self.root / other / "config.json").exists()):
                raise ContainerError(f"the container name {name!r} is already in use by container "
                                     f"{(self.names.lookup(name) or '?')[:12]}: remove it or pick another name")
            cdir.save_record(record)  # a directory with a config is a container
            with contextlib.suppress(FileNotFoundError):
                (cdir.path / WARM_MARK).unlink()
        except BaseException:
            if self.names.lookup(name) == cid:
                self.names.release(name, cid)
            remove_dir(cdir.path)
            raise
        return cid, record

    @contextlib.contextmanager
    def _disk_room(self, size: int | None) -> Iterator[None]:
        """Held while a container's disk is made: refused if the store's file system has no room for it
        beyond what the others may still write (one create at a time, so two cannot both take the last room)."""
        if size is None:
            yield
            return
        disk.check_supported()
        with self.store._lock("disk"):
            disk.check_room(self.root, size)
            yield

    def _warm_next(self, spec: ContainerSpec, key: tuple[str, ...] | None, lowers: tuple[str, ...]) -> None:
        """Leave a warm slot for the next foreground start; one that builds this start's rootfs again if it can."""
        if not self.warm_slots or not launcher.WARM_SLOTS:
            return
        speculation = None
        if key is not None:  # the slot's monitor makes the directory and the cgroup, and builds the rootfs
            cid = os.urandom(32).hex()
            path = self.root / cid
            me = ProcRef.me()
            from .monitor import Speculation

            plan = self._rootfs_plan(path, list(lowers), spec, key[2], _idmap(spec))
            if spec.limits.disk is not None:
                try:  # (ahead of time too: the slot's disk counts as the others' do)
                    disk.check_room(self.root, spec.limits.disk)
                except disk.DiskError:
                    return
            speculation = Speculation(key, cid, str(path), plan, spec.hostname or cid[:12], cid[:32],
                                      (me.pid, me.start) if me else (0, 0), spec.limits.disk)
        launcher.warm_next(speculation)

    def _rootfs_plan(self, path: Path, lowerdirs: list[str], spec: ContainerSpec, cwd: str,
                     idmap: idmap_mod.IdMap | None) -> RootfsPlan:
        links, names = self.store.short_links(lowerdirs)
        upper, work = layer_dirs(path, disk_size=spec.limits.disk)
        return RootfsPlan(
            idmap=idmap,
            volume_owners=_volume_owners(spec, idmap),
            lower_root=str(links),
            lower_links=names,
            rootfs=str(path / "rootfs"),
            lowerdirs=tuple(lowerdirs),
            upperdir=str(upper),
            workdir=str(work),
            etc_files=tuple((str(path / name), f"/etc/{name}") for name in ETC_FILES),
            mounts=spec.mounts,
            cwd=cwd,
            disk_dir=str(path) if spec.limits.disk is not None else None,
            rootless=userns_keeper.rootless(),
        )

    def _job(self, cdir: ContainerDir, detached: bool,
             created: ContainerRecord | None = None) -> tuple[Job, ContainerSpec]:
        """What the monitor needs; ``created``: the record the container was just created with."""
        if created is not None:
            record = created
        else:  # a container made earlier: its layers may have gone since
            record = cdir.record()
            if record.legacy:
                raise ContainerError(f"container {record.name} was made by an earlier version, whose containers "
                                     "ran as the host's root: remove it and make it again")
            for layer in record.lowerdirs:
                if not os.path.isdir(layer):
                    raise ImageNotFound(f"container {record.name}: a layer of its image {record.spec.image} is gone "
                                        f"({os.path.basename(layer)[:12]}): `sandbox-kernel check --repair` unpacks "
                                        "it again, or remove the container")
        spec = record.spec
        if spec.limits.disk is not None:
            cdir.layer()  # its disk mounted (after a reboot, it is not)
        plan = self._rootfs_plan(cdir.path, list(record.lowerdirs), spec, record.process.cwd, record.idmap)
        from .monitor import Job

        job = Job(cdir=str(cdir.path), name=record.name, plan=plan, hostname=record.hostname,
                  proc=_process_plan(record.process, record), cgroup=record.cgroup, limits=spec.limits,
                  detached=detached, remove=spec.remove, log_max=spec.log_size, fresh=created is not None,
                  network=self._net_job(cdir, record), host_network=spec.network.mode == "host")
        return job, spec

    def _listeners(self, spec: ContainerSpec) -> list[tuple[Any, int]]:
        """``-p``: the listening sockets on 127.0.0.1, bound before the container starts (a port in use fails it)."""
        if not spec.ports:
            return []
        from .network import Networks

        networks = Networks(self.store.root)
        out: list[tuple[Any, int]] = []
        try:
            for host_port, container_port in spec.ports:
                out.append((networks.listener(host_port), container_port))
        except BaseException:
            for sock, _port in out:
                sock.close()
            raise
        return out

    def _publish(self, cdir: ContainerDir, spec: ContainerSpec, pid1: ProcRef, listeners: list[tuple[Any, int]]
                 ) -> None:
        """Hand each listener to a proxy process that lives as long as the container's PID 1; ours are closed."""
        from .network import default_netns

        try:
            for sock, container_port in listeners:
                pidfd = _pidfd(pid1)
                if pidfd is None:
                    return  # it is over already
                try:
                    launcher.start_proxy((str(self.store.root), spec.network.network, cdir.id, container_port,
                                          default_netns()), sock.fileno(), pidfd)
                finally:
                    os.close(pidfd)
        finally:
            for sock, _port in listeners:
                sock.close()
            listeners.clear()

    def _net_job(self, cdir: ContainerDir, record: ContainerRecord) -> Any:
        """The network part of a job: None (loopback only), or the network to join (made for ``bridge``)."""
        name = record.spec.network.network
        if name is None:
            return None
        from .monitor import NetJob
        from .network import DEFAULT_NETWORK, NetworkError, Networks

        networks = Networks(self.store.root)
        try:
            networks.get(name)
        except NetworkError:
            if name != DEFAULT_NETWORK:
                raise NetworkError(f"no such network: {name} (sandbox-kernel network create {name})") from None
            with contextlib.suppress(NetworkError):  # another process may make it at the same time
                networks.create(DEFAULT_NETWORK)
        return NetJob(str(self.store.root), name, cdir.id, record.name, record.hostname, networks.host_netns)

    def start(self, ref: str) -> ContainerInfo:
        """Start a created (or exited) container detached: its output goes to its log. Returns once it runs."""
        cdir = self._find(ref)
        state = self._reconcile(cdir)
        if state is not None and state.status == RUNNING:  # as docker's: nothing to do (a start killed late)
            return self.get(cdir.id)
        job, spec = self._job(cdir, detached=True)
        listeners = self._listeners(spec)
        try:
            status_r = launcher.start_monitor(job, None, use_server=self.warm_slots)
            try:
                event = _Events(status_r).next()
            finally:
                os.close(status_r)
            _raise_for(event, cdir)
            if event.get("event") == "started":
                self._publish(cdir, spec, ProcRef(int(event["pid"]), int(event["pid_start"])), listeners)
        finally:
            for sock, _port in listeners:
                sock.close()
        return self.get(cdir.id)

    def run(self, spec: ContainerSpec, *, stdin: int | None = 0, stdout: Output = 1, stderr: Output = 2,
            on_start: Callable[[str], None] | None = None, tty: bool = False) -> ContainerResult:
        """``run`` in the foreground: create, start, stream the output, wait; removed after with ``--rm``.

        ``stdout``/``stderr`` are fds (default: the caller's) or callbacks that
        get each chunk as it comes; with ``tty`` the container runs on a
        terminal of its own, all of its output to ``stdout`` (stdio.py). The
        container dies with the caller.
        Interrupts while waiting are the container's (see :class:`_Interrupts`).
        """
        image = self.store.resolve(spec.image)
        key = _warm_key(image, spec)
        # (a warm slot has a network namespace of its own: a host-network container gets a slot made for it)
        slot = launcher.take_spare(key) if spec.network.mode != "host" else None
        try:
            cid, record = self._create(spec, image, slot.speculation if slot is not None else None)
        except BaseException:
            if slot is not None:
                launcher.drop(slot)
            raise
        return self._foreground(ContainerDir(self.root / cid), record, slot, key, Relay(stdin, stdout, stderr, tty),
                                on_start)

    def start_attached(self, ref: str, *, stdin: int | None = 0, stdout: Output = 1, stderr: Output = 2,
                       on_start: Callable[[str], None] | None = None) -> ContainerResult:
        """``start -a``: start a created or exited container in the foreground, as :meth:`run` does."""
        cdir = self._find(ref)
        state = self._reconcile(cdir)
        if state is not None and state.status in (RUNNING, PAUSED):
            raise ContainerError(f"container {ref} is already running")
        return self._foreground(cdir, None, None, None, Relay(stdin, stdout, stderr), on_start)

    def _foreground(self, cdir: ContainerDir, created: ContainerRecord | None,
                    slot: Any, key: tuple[str, ...] | None, relay: Relay,
                    on_start: Callable[[str], None] | None) -> ContainerResult:
        """Start ``cdir`` (just ``created``, or made earlier) with the caller's stdio and wait for its exit."""
        cid = cdir.id
        remove = created.spec.remove if created is not None else False
        listeners: list[tuple[Any, int]] = []
        with relay as stdio, _Interrupts() as interrupts:
            try:
                if on_start is not None:
                    on_start(cid)
                job, spec = self._job(cdir, detached=False, created=created)
                remove = spec.remove
                listeners = self._listeners(spec)
                known = slot.pid1 if slot is not None else None  # PID 1, named by a ready slot
                if known is not None:
                    job = replace(job, announce=False)
                    interrupts.target(lambda signum: _send_signal(known, signum))
                status_r = launcher.start_monitor(job, stdio.child_fds, slot, use_server=self.warm_slots)
                if known is not None:
                    self._publish(cdir, spec, known, listeners)
            except BaseException:  # the container never ran: as if it had not been made
                for sock, _port in listeners:
                    sock.close()
                if slot is not None:
                    launcher.drop(slot)
                if remove and created is not None:
                    with contextlib.suppress(SandboxError, OSError):  # (the error that stopped it is the news)
                        self.remove(cid, force=True)
                raise
            stdio.close_child_ends()
            events = _Events(status_r)
            try:
                event = _next_event(events, stdio, interrupts)
                if event.get("event") == "started":
                    pid1 = ProcRef(int(event["pid"]), int(event["pid_start"]))
                    interrupts.target(lambda signum: _send_signal(pid1, signum))
                    self._publish(cdir, spec, pid1, listeners)
                    event = _next_event(events, stdio, interrupts)
                stdio.drain()
            finally:
                os.close(status_r)
                launcher.reap()
            if event.get("event") == "exited" and created is not None:
                # the next start's slot (not while this one ran: one CPU less)
                self._warm_next(spec, key, job.plan.lowerdirs)
        _raise_for(event, cdir)
        exit_code = int(event.get("exit_code", 137))
        oom = bool(event.get("oom_killed"))
        if event.get("event") != "exited":  # the monitor died under us
            self._reconcile(cdir)
        return ContainerResult(exit_code, oom, spec.limits.memory, cid, spec.limits.memory_swap)

    def run_detached(self, spec: ContainerSpec) -> str:
        """``run -d``: create and start; returns the id once the container runs."""
        cid = self.create(spec)
        try:
            self.start(cid)
        except BaseException:
            with contextlib.suppress(ContainerError):
                if not spec.remove:
                    self.remove(cid, force=True)
            raise
        return cid

    def wait(self, ref: str, timeout: float | None = None) -> State:
        """Wait until the container is no longer running; returns its final state."""
        cdir = self._find(ref)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not cdir.config_path.exists():  # a --rm container, removed as it exited
                return State(status=EXITED)
            state = self._reconcile(cdir)
            if state is None or state.status not in ACTIVE:
                return state or State(status=EXITED)
            pidfd = _pidfd(state.monitor())
            if pidfd is None:
                continue
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not process.wait_readable([pidfd], left):
                    raise ContainerError(f"container {ref} is still running after {timeout} s")
            finally:
                os.close(pidfd)

    def exec(self, ref: str, argv: list[str] | tuple[str, ...], *, env: tuple[tuple[str, str], ...] = (),
             user: str | None = None, workdir: str | None = None, stdin: int | None = 0, stdout: Output = 1,
             stderr: Output = 2, cancelled: Callable[[], bool] | None = None, tty: bool = False) -> int:
        """Run ``argv`` in a running container, with the same namespaces, cgroup and security; its exit status.

        ``cancelled``, asked a few times a second: once it says so, or once an
        output callback raises, the command is ended (its process group gets
        SIGHUP, as when a terminal goes away, then SIGKILL a second later) and
        the error is raised (:class:`ExecCancelled` for ``cancelled``).
        """
        if not argv:
            raise UsageError("exec needs a command")
        cdir = self._find(ref)
        state = self._reconcile(cdir)
        if state is None or state.status != RUNNING:
            what = "paused: resume it first" if state and state.status == PAUSED else "not running"
            raise ContainerError(f"container {ref} is {what}")
        record = cdir.record()
        proc = replace(record.process, argv=tuple(argv), env=tuple({**dict(record.process.env), **dict(env)}.items()),
                       cwd=workdir or record.process.cwd)
        if user:
            found = users_mod.resolve(user, list(record.lowerdirs))
            proc = replace(proc, uid=found.uid, gid=found.gid, groups=tuple(found.groups))
        plan = _process_plan(proc, record)
        pidfd = _pidfd(state.pid1())
        if pidfd is None:
            raise ContainerError(f"container {ref} is not running")
        try:
            with Relay(stdin, stdout, stderr, tty) as stdio, _Interrupts() as interrupts:
                helper, go_w, err_r, status_r = launcher.start_exec(pidfd, plan, stdio.child_fds)
                stdio.close_child_ends()
                try:
                    try:
                        open_cgroup(record.cgroup).add(helper)
                        os.write(go_w, b"g")
                    finally:
                        os.close(go_w)
                    error = process.read_error(err_r)
                    interrupts.target(lambda signum: _kill_quietly(helper, signum))
                    try:
                        code = _wait_status(stdio, status_r, interrupts, cancelled)
                    except BaseException:
                        _end_exec(helper)
                        raise
                finally:
                    os.close(status_r)
                    launcher.reap_wait(helper)
        finally:
            os.close(pidfd)
        if error:
            if error.startswith(process.EXEC_PREFIX):
                code_text, _, text = error[len(process.EXEC_PREFIX):].partition(" ")
                raise ExecError(text, int(code_text))
            raise ContainerError(error)
        return code
