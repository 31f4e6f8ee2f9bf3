"""What the container operations return: how a container ended, one container as ps shows it, its stats."""

from __future__ import annotations

from dataclasses import dataclass

from .cgroups import CgroupStats
from .spec import UNLIMITED_SWAP, ContainerSpec, Limits, format_size
from .state import (
    PAUSED,
    RUNNING,
    State,
)


@dataclass(frozen=True)
class ContainerResult:
    """How a container (or an exec) ended."""

    exit_code: int
    oom_killed: bool = False
    memory_limit: int | None = None
    container_id: str | None = None
    memory_swap: int | None = None  # memory and swap together, when --memory-swap gave more than --memory

    def message(self) -> str | None:
        """The one plain sentence a user needs when a limit ended the container."""
        if self.oom_killed:
            swap = (f", {format_size(self.memory_swap)} with swap"
                    if self.memory_swap and self.memory_limit and self.memory_swap > self.memory_limit
                    else ", with swap" if self.memory_swap == UNLIMITED_SWAP else "")
            limit = f" (limit {format_size(self.memory_limit)}{swap})" if self.memory_limit else ""
            return f"out of memory{limit}: the container was killed"
        return None


@dataclass(frozen=True)
class ContainerInfo:
    """One container as ``ps`` and ``inspect`` show it."""

    id: str
    name: str
    image: str  # the reference the user gave
    image_id: str
    command: tuple[str, ...]
    state: State
    spec: ContainerSpec

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        return self.state.status in (RUNNING, PAUSED)


@dataclass(frozen=True)
class ContainerStats:
    """A snapshot of what a running container uses, against its limits."""

    id: str
    name: str
    usage: CgroupStats
    limits: Limits
