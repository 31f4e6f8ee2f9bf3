"""What each room of :class:`~sandbox_kernel.runtime.container.Containers` may count on from the others.

Containers is one class mixed from rooms (starting.py, control.py, observing.py,
copying.py, removal.py); each room's class derives from :class:`Room`, which names
the attributes the facade sets and the methods other rooms give, for readers and
type checkers. Nothing here runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .image.store import Store
    from .info import ContainerInfo
    from .state import ContainerDir, Names, State


class Room:
    store: Store
    root: Path
    names: Names
    warm_slots: bool

    if TYPE_CHECKING:
        def _find(self, ref: str) -> ContainerDir: ...  # container.py
        def _reconcile(self, cdir: ContainerDir) -> State | None: ...
        def _settled(self, cdir: ContainerDir, timeout: float = 30.0) -> State | None: ...
        def _disconnect(self, cdir: ContainerDir, network: str) -> None: ...
        def get(self, ref: str) -> ContainerInfo: ...
        def _running(self, ref: str) -> tuple[ContainerDir, State]: ...  # control.py
        def stop(self, ref: str, timeout: float = 10.0) -> State: ...
        def pause(self, ref: str) -> None: ...
        def resume(self, ref: str) -> None: ...
        def _delete(self, cdir: ContainerDir, name: str) -> None: ...  # removal.py
