"""Removing a container: its cgroup, network endpoint, name and directory."""

from __future__ import annotations

import contextlib

from .cgroups import open_cgroup
from .errors import (
    CgroupError,
    ContainerError,
)
from .room import Room
from .state import (
    PAUSED,
    RUNNING,
    ContainerDir,
    remove_dir,
)


class _Removal(Room):
    """rm (mixed into Containers)."""

    def remove(self, ref: str, force: bool = False) -> str:
        """``rm``: a running container needs ``force`` (it is killed first). Returns the id."""
        cdir = self._find(ref)
        state = self._settled(cdir)  # (a start in progress is let finish: its monitor owns the directory)
        if state is None:
            return cdir.id
        # (read first: a --rm container's monitor removes its directory as soon as it has stopped)
        record = cdir.record()
        if state.status in (RUNNING, PAUSED):
            if not force:
                raise ContainerError(f"container {ref} is {state.status}: stop it first, or use rm -f")
            self.stop(cdir.id, timeout=0)
        network = record.spec.network.network
        if network is not None:  # now, not when its monitor gets to it: a network rm right after must work
            self._disconnect(cdir, network)
        with contextlib.suppress(CgroupError):
            open_cgroup(record.cgroup).remove()
        self._delete(cdir, record.name)
        return cdir.id

    def _delete(self, cdir: ContainerDir, name: str) -> None:
        self.names.release(name, cdir.id)
        remove_dir(cdir.path)
