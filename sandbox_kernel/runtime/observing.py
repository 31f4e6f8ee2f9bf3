"""Looking at a container: its stats, logs and disk, and its changes (diff, commit)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from . import disk, logs
from .cgroups import Unlimited, open_cgroup
from .errors import (
    ContainerError,
)
from .image.store import Image
from .info import ContainerStats
from .room import Room
from .state import (
    ACTIVE,
    RUNNING,
)

if TYPE_CHECKING:
    from .image.layers import Compression
    from .snapshot import Change


class _Observing(Room):
    """Stats, logs, disk usage, diff and commit (mixed into Containers)."""

    def diff(self, ref: str) -> list[Change]:
        """What the container changed over its image (``docker diff``), read while it is frozen."""
        from .snapshot import diff_container

        cdir = self._find(ref)
        return diff_container(cdir, cdir.record(), self._held_still(ref))

    def commit(self, ref: str, target: str | None = None, *, message: str | None = None,
               created_by: str | None = None, compression: Compression = "gzip") -> Image:
        """The container's changes as a new image (one layer over its image), tagged ``target``."""
        from .snapshot import commit

        cdir = self._find(ref)
        record = cdir.record()
        return commit(self.store, cdir, record, self._held_still(ref), self.get(ref).command, target,
                      message=message, created_by=created_by, compression=compression)

    @contextlib.contextmanager
    def _held_still(self, ref: str) -> Iterator[None]:
        """A running container is paused while its files are read, then resumed (a paused one stays so).
        One with no cgroup (a user with nothing delegated: cgroups.Unlimited) cannot be: its files are read
        as they are, as ``docker commit --pause=false`` does."""
        if self.get(ref).state.status != RUNNING or isinstance(open_cgroup(self._find(ref).record().cgroup),
                                                                Unlimited):
            yield
            return
        self.pause(ref)
        try:
            yield
        finally:
            with contextlib.suppress(ContainerError):
                self.resume(ref)

    def disk_usage(self, ref: str, attach: bool = True) -> disk.Usage | None:
        """What a container with a disk limit holds in its writable layer, and its size (None: no limit).
        ``attach=False``: only if its disk is mounted now (a stat and a statvfs: cheap enough for every cell)."""
        cdir = self._find(ref)
        if not attach:
            return disk.usage(cdir.path)
        if not (cdir.path / disk.IMAGE).exists():
            return None
        cdir.layer()
        return disk.usage(cdir.path)

    def stats(self, ref: str) -> ContainerStats:
        cdir, _state = self._running(ref)
        record = cdir.record()
        return ContainerStats(cdir.id, record.name, open_cgroup(record.cgroup).stats(), record.spec.limits)

    def reset_peak(self, ref: str) -> bool:
        """Start the container's memory peak over (for a cell's peak); False where the cgroup cannot."""
        cdir, _state = self._running(ref)
        return open_cgroup(cdir.record().cgroup).reset_peak()

    def logs(self, ref: str, follow: bool = False,
             cancelled: Callable[[], bool] | None = None) -> Iterator[tuple[int, bytes]]:
        """(stream, data) records of a detached container's output; stream 1 is stdout, 2 stderr.

        ``follow``: then the new output as it comes, until the container stops
        (or until ``cancelled()`` says so: a follower that went away).
        """
        cdir = self._find(ref)
        if not follow:
            return logs.read_log(cdir.path)

        def running() -> bool:
            if cancelled is not None and cancelled():
                return False
            state = self._reconcile(cdir) if cdir.path.exists() else None
            return state is not None and state.status in ACTIVE

        return logs.follow_log(cdir.path, running)
