"""Containers: the facade the CLI, the magics and the server use, and how it finds and reconciles containers.

The operations live in a room each, mixed into one class: create, start, run,
wait and exec in starting.py; stop, kill, pause, resume and update in
control.py; stats, logs, disk, diff and commit in observing.py; rm in
removal.py. Each acts on any container, whoever started it, through its state
on disk (state.py) and its record (record.py).

Every call that looks at a container first *reconciles* it (here): a container
whose monitor died (the process that ran it was killed) is marked exited, and its
cgroup (and, for ``--rm``, its directory) removed. Mounts need no cleaning:
they exist only in the container's own mount namespace and vanish with it.
"""

from __future__ import annotations

import contextlib
import time

from .cgroups import open_cgroup, remove_empty_parents
from .control import _Control
from .copying import _Copying
from .errors import (
    CgroupError,
    ContainerError,
    ContainerNotFound,
    SandboxError,
)
from .fsutil import private_dir
from .image.store import Store
from .info import ContainerInfo, ContainerResult, ContainerStats
from .observing import _Observing
from .removal import _Removal
from .starting import _Starting
from .state import (
    ACTIVE,
    CREATED,
    EXITED,
    GONE_PREFIX,
    NEW_PREFIX,
    PAUSED,
    RUNNING,
    STARTING,
    WARM_MARK,
    ContainerDir,
    Names,
    ProcRef,
    State,
    remove_dir,
)

__all__ = ["ContainerInfo", "ContainerResult", "ContainerStats", "Containers"]


class Containers(_Starting, _Control, _Observing, _Copying, _Removal):
    """The containers of one store (``ROOT/containers``): finding and reconciling them here; creating and
    starting (starting.py), stopping and limits (control.py), looking (observing.py), cp (copying.py),
    removing (removal.py)."""

    def __init__(self, store: Store, *, warm_slots: bool = True):
        """``warm_slots``: after each foreground ``run``, prepare the next container's processes (and,
        for the same image without volumes, its rootfs and cgroup) ahead of time. Worth it in a
        long-lived process (a kernel); a one-shot process (the CLI) should say False."""
        self.store = store
        self.warm_slots = warm_slots
        self.root = store.root / "containers"
        private_dir(self.root)
        self.names = Names(self.root / "names")

    def _dirs(self) -> list[ContainerDir]:
        return [ContainerDir(p) for p in self.root.iterdir() if len(p.name) == 64 and p.is_dir()]

    def _find(self, ref: str) -> ContainerDir:
        """By name, full id or unique id prefix, as docker finds them."""
        if not ref or "/" in ref or ref in (".", ".."):
            raise ContainerNotFound(f"no such container: {ref!r}")
        cid = self.names.lookup(ref)
        if cid and (self.root / cid / "config.json").exists():
            return ContainerDir(self.root / cid)
        if len(ref) == 64 and (self.root / ref / "config.json").exists():  # a full id: no listing needed
            return ContainerDir(self.root / ref)
        matches = [d for d in self._dirs() if d.id.startswith(ref.lower()) and d.config_path.exists()]
        if len(matches) > 1:
            raise ContainerNotFound(f"container id prefix {ref!r} is ambiguous: {len(matches)} containers match")
        if not matches or not matches[0].config_path.exists():
            raise ContainerNotFound(f"no such container: {ref}")
        return matches[0]

    def _info(self, cdir: ContainerDir, state: State | None = None) -> ContainerInfo:
        record = cdir.record()
        return ContainerInfo(cdir.id, record.name, record.spec.image, record.image_id, record.process.argv,
                             state or cdir.read_state(), record.spec)

    def get(self, ref: str) -> ContainerInfo:
        """One container, its state reconciled."""
        cdir = self._find(ref)
        state = self._reconcile(cdir)
        if state is None:
            raise ContainerNotFound(f"no such container: {ref}")
        return self._info(cdir, state)

    def running(self, ref: str) -> bool:
        """Whether container ``ref`` exists and is running (or starting, or paused); reconciled first."""
        try:
            return self.get(ref).state.status in ACTIVE
        except (ContainerNotFound, OSError):
            return False

    def list(self, all: bool = False) -> list[ContainerInfo]:
        """Running containers (every container with ``all``), newest first, each reconciled."""
        out = []
        self._sweep_gone()
        for cdir in self._dirs():
            if not cdir.config_path.exists():
                self._drop_unfinished(cdir)
                continue
            try:
                state = self._reconcile(cdir)
                if state is not None and (all or state.status in (RUNNING, PAUSED)):
                    out.append(self._info(cdir, state))
            except (ContainerError, OSError):
                continue  # removed under our feet
        if not out and all:
            remove_empty_parents()
        return sorted(out, key=lambda info: info.state.created_at, reverse=True)

    def _sweep_gone(self) -> None:
        """Finish removals whose monitor died half-way (``.gone-ID`` older than a minute), and drop the
        directories of creates killed before they were marked (``.new-PID-START-ID`` of a process that is gone)."""
        for path in self.root.glob(NEW_PREFIX + "*"):
            with contextlib.suppress(ValueError, IndexError):
                pid, start = path.name[len(NEW_PREFIX):].split("-")[:2]
                if not ProcRef(int(pid), int(start)).alive():
                    remove_dir(path)
        for path in self.root.glob(GONE_PREFIX + "*"):
            try:
                if time.time() - path.stat().st_mtime < 60:
                    continue
                cgroup = ContainerDir(path).record().cgroup
                with contextlib.suppress(CgroupError):
                    open_cgroup(cgroup).remove()
            except (OSError, ContainerError):
                pass
            remove_dir(path)

    def _drop_unfinished(self, cdir: ContainerDir) -> None:
        """A directory whose create never finished (its creator died) is garbage after a minute;
        one a warm slot prepared is garbage as soon as the process that made it is gone."""
        try:
            mark = (cdir.path / WARM_MARK).read_text().split()
        except OSError:
            mark = None
        try:
            if mark is not None:
                if ProcRef(int(mark[0]), int(mark[1])).alive():
                    return
                with contextlib.suppress(CgroupError):
                    open_cgroup(cdir.id[:32]).remove()
            elif time.time() - cdir.path.stat().st_mtime <= 60:
                return
            remove_dir(cdir.path)
        except (OSError, ValueError, IndexError):
            pass

    def _settled(self, cdir: ContainerDir, timeout: float = 30.0) -> State | None:
        """The state once no start is in progress: a container that is starting (its monitor alive, making
        its cgroup and PID 1) is waited for until its monitor says running or exited, so that a stop or an
        rm never pulls its directory or cgroup out from under it. None: it was removed (--rm)."""
        deadline = time.monotonic() + timeout
        state = self._reconcile(cdir)
        while state is not None and state.status == STARTING:
            if time.monotonic() > deadline:
                raise ContainerError(f"container {cdir.id[:12]} is still starting after {timeout:.0f} s; "
                                     "try again")
            time.sleep(0.005)
            state = self._reconcile(cdir)
        return state

    def _reconcile(self, cdir: ContainerDir) -> State | None:
        """Make the state true: a container whose monitor is gone has exited. None: it was removed (--rm)."""
        state = cdir.read_state()
        if state.status == CREATED:
            self._drop_stray_cgroup(cdir)
        if state.status not in ACTIVE or state.monitor().alive():
            return state
        with cdir.locked() as state:
            if state.status not in ACTIVE or state.monitor().alive():
                return state
            # The monitor died. PID 1 died with it (PDEATHSIG); make sure of the rest and clean up.
            record = cdir.record()
            cgroup = open_cgroup(record.cgroup)
            try:
                cgroup.thaw()
                cgroup.kill()
                cgroup.remove()
            except CgroupError as exc:
                state.error = str(exc)
            state.status = EXITED
            state.exit_code = 137
            state.error = state.error or "its monitor process died (killed?); the container was stopped"
            state.pid = state.pid_start = state.monitor_pid = state.monitor_start = 0
            state.finished_at = time.time()
        if record.spec.network.network is not None:  # its address and veth, which its monitor did not free
            self._disconnect(cdir, record.spec.network.network)
        if record.spec.remove:
            self._delete(cdir, record.name)
            return None
        return state

    def _disconnect(self, cdir: ContainerDir, network: str) -> None:
        from .network import Networks

        networks = Networks(self.store.root)
        with contextlib.suppress(SandboxError, OSError):
            networks.disconnect(network, cdir.id)
            networks.write_hosts(network, self.root)

    def _drop_stray_cgroup(self, cdir: ContainerDir) -> None:
        """A created container has no cgroup, but one whose warm-slot monitor died as it started may
        have an empty one left; a cgroup with processes in it is a start in progress and stays.

        The state is read again under the container's lock: a monitor writes STARTING under it before it
        makes the cgroup, so a state read a moment earlier (CREATED) may be stale by now, and the empty
        cgroup the start is about to fill is not a stray (a shell cell's start polls ``get`` meanwhile)."""
        cgroup = open_cgroup(cdir.id[:32])
        with contextlib.suppress(CgroupError, OSError):
            if not cgroup.exists():
                return
            with cdir.locked() as state:
                if state.status == CREATED and not cgroup.procs():
                    cgroup.remove()
