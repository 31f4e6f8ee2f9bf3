"""What a container is asked to be: plain frozen dataclasses, and their parsers.

The parsers take what a docker user types (``256m``, ``0.5``, ``SRC:DST:ro``,
``K=V``) and raise :class:`UsageError` with a one-line message otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UsageError

DEFAULT_PIDS_LIMIT = 2048  # podman's default: a fork bomb stops, real work does not
DEFAULT_LOG_SIZE = 8 << 20  # a detached container keeps at most this much output
# (name, soft, hard): enough open files for real work, no core files written by the host's core_pattern
DEFAULT_ULIMITS = (("nofile", 1024, 4096), ("core", 0, 0))
ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "memlock", "nofile", "nproc", "stack", "as", "locks", "msgqueue",
                "nice", "rtprio", "sigpending")
CPU_PERIOD_US = 100_000

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int, what: str = "size") -> int:
    """``256m`` -> 268435456 (docker's units are binary: k=1024)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(text.strip())
        if not match:
            raise UsageError(f"invalid {what} {text!r}: expected a number with an optional unit b, k, m, g")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be positive")
    return value


def format_size(n: float | None, *, docker: bool = False, none: str = "no limit") -> str:
    """Bytes as people read them, the one formatter every frontend and message uses.

    Limits, usage and messages: binary units, three significant digits (``64 MiB``,
    ``1.5 GiB``), as docker writes memory limits. ``docker=True``: docker's tables
    (images, history, stats), decimal units without a space (``4.26MB``). ``none`` for
    no value (no limit)."""
    if n is None:
        return none
    units = (("B", 1), ("kB", 1000), ("MB", 1000**2), ("GB", 1000**3), ("TB", 1000**4)) if docker else \
        (("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40))
    space = "" if docker else " "
    at = max([i for i, (_, scale) in enumerate(units) if n >= scale] or [0])
    if at + 1 < len(units) and n / units[at][1] >= 999.5:  # never four digits: 1000 MiB is 0.977 GiB
        at += 1
    unit, scale = units[at]
    if scale == 1:
        return f"{int(n)}{space}B"
    value = n / scale
    return f"{value:.3g}{space}{unit}" if value < 999.5 else f"{value:.0f}{space}{unit}"  # (past the last unit)


def parse_cpus(text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"invalid --cpus {text!r}: expected a number such as 0.5") from None
    if not 0.01 <= value <= 1024:
        raise UsageError(f"invalid --cpus {text!r}: must be between 0.01 and 1024")
    return value


MIN_DISK = 64 << 20  # (an ext4 journal and its metadata take a few MiB)
UNLIMITED_SWAP = -1  # Limits.memory_swap for docker's --memory-swap -1: --memory of RAM, and swap without limit


@dataclass(frozen=True)
class Limits:
    """Resource limits; ``None`` means unlimited (pids is limited by default)."""

    memory: int | None = None  # bytes
    memory_swap: int | None = None  # memory + swap, bytes (docker's --memory-swap); None: same as memory (no swap);
    # UNLIMITED_SWAP: as much swap as the host has
    cpus: float | None = None  # cores, as a CFS quota
    pids: int | None = DEFAULT_PIDS_LIMIT
    disk: int | None = None  # bytes of its writable layer (runtime/disk.py); fixed when the container is made

    def cpu_quota_us(self) -> int | None:
        return None if self.cpus is None else max(1000, round(self.cpus * CPU_PERIOD_US))

    def with_options(self, memory: str | None = None, cpus: str | None = None, pids: int | None = None,
                     memory_swap: str | None = None, disk: str | None = None) -> Limits:
        """These limits changed by what ``--memory``, ``--cpus``, ``--pids-limit``, ``--memory-swap`` and
        ``--disk`` say (None: keep this one; ``--memory-swap -1``: unlimited swap), parsed and checked as
        every frontend (CLI, magics, remote CLI) does."""
        swap = self.memory_swap
        if memory_swap is not None:
            swap = UNLIMITED_SWAP if memory_swap.strip() == "-1" else parse_size(memory_swap, "--memory-swap")
        return Limits(memory=self.memory if memory is None else parse_size(memory, "--memory"), memory_swap=swap,
                      cpus=self.cpus if cpus is None else parse_cpus(cpus), pids=self.pids if pids is None else pids,
                      disk=self.disk if disk is None else parse_size(disk, "--disk"))

    def __post_init__(self) -> None:
        """The rules of every limit, for every frontend (the CLI, the magics, the panel and the REST API)."""
        if self.cpus is not None and not 0.01 <= self.cpus <= 1024:
            raise UsageError(f"invalid --cpus {self.cpus:g}: must be between 0.01 and 1024")
        if self.memory is not None and self.memory < 4 << 20:
            raise UsageError("invalid --memory: the minimum is 4m")
        if self.memory_swap is not None and (self.memory is None or (self.memory_swap < self.memory
                                                                     and self.memory_swap != UNLIMITED_SWAP)):
            raise UsageError("invalid --memory-swap: needs --memory and must be at least as large (or -1)")
        if self.pids is not None and self.pids < 1:
            raise UsageError("invalid --pids-limit: must be at least 1")
        if self.disk is not None and self.disk < MIN_DISK:
            raise UsageError(f"invalid --disk: the minimum is {MIN_DISK >> 20}m")

    def swap_beyond_memory(self) -> int | None:
        """How much swap the container may use on top of --memory: 0 by default, None without limit."""
        if self.memory is None or self.memory_swap == UNLIMITED_SWAP:
            return None
        return (self.memory_swap or self.memory) - self.memory


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path into the container (``-v SRC:DST[:ro]``)."""

    source: str
    target: str
    readonly: bool = False

    @classmethod
    def parse(cls, text: str) -> Mount:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise UsageError(f"invalid volume {text!r}: expected SRC:DST[:ro]")
        if not parts[0].startswith("/"):
            raise UsageError(f"invalid volume {text!r}: the source must be an absolute host path")
        if not parts[1].startswith("/"):
            raise UsageError(f"invalid volume {text!r}: the target must be an absolute path in the container")
        options = parts[2].split(",") if len(parts) == 3 else []
        unknown = [o for o in options if o not in ("ro", "rw")]
        if unknown:
            raise UsageError(f"invalid volume {text!r}: unknown option {unknown[0]!r} (ro or rw)")
        return cls(parts[0], parts[1], "ro" in options)


@dataclass(frozen=True)
class NetSpec:
    """``none`` (loopback only, the default), ``bridge`` (the network called default), a network's name, or ``host``."""

    mode: str = "none"

    def __post_init__(self) -> None:
        name_ok = bool(self.mode) and self.mode[0].isalnum() and all(c.isalnum() or c in "_.-" for c in self.mode)
        if self.mode not in ("none", "bridge", "host") and not name_ok:
            raise UsageError(f"invalid --network {self.mode!r}: none, bridge, host or a network's name")

    @property
    def network(self) -> str | None:
        """The user-defined network to join (``bridge`` is the one called ``default``); None for none/host."""
        if self.mode in ("none", "host"):
            return None
        return "default" if self.mode == "bridge" else self.mode


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """``nofile=1024:4096`` or ``core=0`` (docker's --ulimit)."""
    name, sep, values = text.partition("=")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = -1 if soft_text == "unlimited" else int(soft_text)
        hard = -1 if (hard_text or soft_text) == "unlimited" else int(hard_text or soft_text)
    except ValueError:
        soft = hard = -2
    if not sep or name not in ULIMIT_NAMES or soft < -1 or hard < -1 or (hard != -1 and (soft == -1 or soft > hard)):
        raise UsageError(f"invalid --ulimit {text!r}: expected NAME=SOFT[:HARD] with SOFT <= HARD, "
                         f"NAME one of {', '.join(ULIMIT_NAMES)}")
    return name, soft, hard


def parse_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not key or "\0" in item:
            raise UsageError(f"invalid environment variable {item!r}: expected KEY=VALUE")
        out.append((key, value if sep else ""))
    return tuple(out)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create a container, after the image is resolved."""

    image: str  # the reference the user gave
    command: tuple[str, ...] = ()  # overrides the image's Cmd
    entrypoint: tuple[str, ...] | None = None  # overrides the image's Entrypoint
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    name: str | None = None
    limits: Limits = field(default_factory=Limits)
    mounts: tuple[Mount, ...] = ()
    network: NetSpec = field(default_factory=NetSpec)
    tty: bool = False
    remove: bool = False  # --rm
    ulimits: tuple[tuple[str, int, int], ...] = DEFAULT_ULIMITS  # later entries win over earlier ones
    log_size: int = DEFAULT_LOG_SIZE
    labels: tuple[tuple[str, str], ...] = ()  # docker's --label KEY=VALUE: the runtime only keeps them
    ports: tuple[tuple[int, int], ...] = ()  # -p HOST:CONTAINER, published on 127.0.0.1 (needs a network)
    # "" (the default): a user namespace, container ids mapped to an unprivileged host range (idmap.py);
    # "host": container ids are host ids, container root is host root (docker's --userns=host; trusted tools only)
    userns: str = ""

    def __post_init__(self) -> None:
        if self.ports and self.network.network is None:
            raise UsageError("-p needs a network: add --network bridge (or a network's name)")
        if self.userns not in ("", "host"):
            raise UsageError(f"invalid --userns {self.userns!r}: 'host' (no user namespace, for trusted tools only) "
                             "or nothing (the default: a user namespace of its own)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerSpec:
        """The inverse of ``dataclasses.asdict`` (as stored in a container's config.json)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["limits"] = Limits(**data.get("limits", {}))
        values["mounts"] = tuple(Mount(**m) for m in data.get("mounts", ()))
        values["network"] = NetSpec(**data.get("network", {}))
        for key in ("command", "env", "ulimits", "labels", "ports"):
            if key in values:
                values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
        if values.get("entrypoint") is not None:
            values["entrypoint"] = tuple(values["entrypoint"])
        return cls(**values)
