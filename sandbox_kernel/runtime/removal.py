"""Removing a container: its cgroup, network endpoint, name and directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from .cgroups import open_cgroup
from .errors import (
    CgroupError,
    ContainerError,
)
from .image.store import Store
from .info import ContainerInfo
from .state import (
    PAUSED,
    RUNNING,
    ContainerDir,
    Names,
    State,
    remove_dir,
)


class _Removal:
    """rm (mixed into Containers)."""

    # (the attributes and finders of Containers, container.py)
    store: Store
    root: Path
    names: Names
    warm_slots: bool
    if TYPE_CHECKING:
        def _find(self, ref: str) -> ContainerDir: ...
        def _reconcile(self, cdir: ContainerDir) -> State | None: ...
        def _disconnect(self, cdir: ContainerDir, network: str) -> None: ...
        def get(self, ref: str) -> ContainerInfo: ...
        def _running(self, ref: str) -> tuple[ContainerDir, State]: ...
        def _delete(self, cdir: ContainerDir, name: str) -> None: ...
        def stop(self, ref: str, timeout: float = 10.0) -> State: ...
        def pause(self, ref: str) -> None: ...
        def resume(self, ref: str) -> None: ...

    def remove(self, ref: str, force: bool = False) -> str:
        """``rm``: a running container needs ``force`` (it is killed first). Returns the id."""
        cdir = self._find(ref)
        state = self._reconcile(cdir)
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
