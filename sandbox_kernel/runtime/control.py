"""Stop, kill, pause, resume and update: acting on a container that runs, whoever started it."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import replace
from typing import TYPE_CHECKING

from .cgroups import open_cgroup
from .errors import (
    ContainerError,
    ContainerNotFound,
    UsageError,
)
from .room import Room
from .spec import Limits
from .state import (
    EXITED,
    PAUSED,
    RUNNING,
    ContainerDir,
    ProcRef,
    State,
)

if TYPE_CHECKING:
    from . import process
else:
    from .lazy import module

    process = module(f"{__package__}.process")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _pidfd(ref: ProcRef) -> int | None:
    """A pidfd for the process, checked to be the same process (not a recycled pid)."""
    if ref.pid <= 0:
        return None
    try:
        fd = os.pidfd_open(ref.pid)
    except ProcessLookupError:
        return None
    if not ref.alive():
        os.close(fd)
        return None
    return fd


def _kill_quietly(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _send_signal(ref: ProcRef, signum: int) -> bool:
    fd = _pidfd(ref)
    if fd is None:
        return False
    try:
        signal.pidfd_send_signal(fd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def _signal_number(sig: int | str) -> int:
    if isinstance(sig, int):
        return sig
    name = sig.upper()
    if name.isdigit():
        return int(name)
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(getattr(signal.Signals, name))
    except AttributeError:
        raise UsageError(f"invalid signal {sig!r}") from None


class _Control(Room):
    """Signals, the freezer and live limits (mixed into Containers)."""

    def _running(self, ref: str) -> tuple[ContainerDir, State]:
        cdir = self._find(ref)
        state = self._reconcile(cdir)
        if state is None or state.status not in (RUNNING, PAUSED):
            raise ContainerError(f"container {ref} is not running")
        return cdir, state

    def kill(self, ref: str, sig: int | str = signal.SIGKILL) -> None:
        """Send a signal to the container's PID 1 (which passes TERM, INT, HUP, QUIT, USR1/2 on)."""
        signum = _signal_number(sig)
        _cdir, state = self._running(ref)
        if not _send_signal(state.pid1(), signum):
            raise ContainerError(f"container {ref} is not running")

    def stop(self, ref: str, timeout: float = 10.0) -> State:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the final state."""
        cdir = self._find(ref)
        state = self._settled(cdir)
        if state is None or state.status not in (RUNNING, PAUSED):
            return state or State(status=EXITED)
        cgroup = cdir.record().cgroup
        if state.status == PAUSED:  # a frozen process cannot act on SIGTERM
            _send_signal(state.pid1(), signal.SIGKILL)
            open_cgroup(cgroup).thaw()
        else:
            _send_signal(state.pid1(), signal.SIGTERM)
        pidfd = _pidfd(state.pid1())
        if pidfd is not None:
            try:
                if not process.wait_readable([pidfd], timeout):
                    _send_signal(state.pid1(), signal.SIGKILL)
            finally:
                os.close(pidfd)
        try:
            return self.wait(cdir.id, timeout=30)
        except ContainerNotFound:  # --rm: gone with its exit
            return State(status=EXITED)

    def pause(self, ref: str) -> None:
        cdir, state = self._running(ref)
        if state.status == PAUSED:
            raise ContainerError(f"container {ref} is already paused")
        open_cgroup(cdir.record().cgroup).freeze()
        with cdir.locked() as state:
            if state.status == RUNNING:
                state.status = PAUSED

    def resume(self, ref: str) -> None:
        cdir, state = self._running(ref)
        if state.status != PAUSED:
            raise ContainerError(f"container {ref} is not paused")
        open_cgroup(cdir.record().cgroup).thaw()
        with cdir.locked() as state:
            if state.status == PAUSED:
                state.status = RUNNING

    def update(self, ref: str, limits: Limits) -> Limits:
        """Change the limits of a container (applied at once if it runs, kept for its next start).

        Refused (UsageError, nothing changed) above what the host has, or, for a
        running container, below what it uses now (runtime/host.py).
        """
        from .host import check_limits

        cdir = self._find(ref)
        state = self._reconcile(cdir)
        if state is None:
            raise ContainerNotFound(f"no such container: {ref}")
        record = cdir.record()
        if limits.disk is not None and limits.disk != record.spec.limits.disk:
            raise UsageError("the disk limit is fixed when a container is made: commit it and make a new one")
        limits = replace(limits, disk=record.spec.limits.disk)
        if state.status in (RUNNING, PAUSED):
            cgroup = open_cgroup(record.cgroup)
            usage = cgroup.stats()
            check_limits(limits, usage.memory_current, usage.pids)
            cgroup.apply(limits)
        else:
            check_limits(limits)
        cdir.save_record(record.with_limits(limits))
        return limits
