"""What this host has, and whether a running container's new limits fit between its usage and that.

A live limit change (``update``, the panel's sliders, ``%container limits``) is
refused, with nothing changed, when it would go below what the container uses
now (memory under its usage makes the kernel reclaim or OOM-kill at once; a pids
limit under its count is meaningless) or above what the host has (a promise the
host cannot keep).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UsageError
from .spec import Limits, format_size


@dataclass(frozen=True)
class HostCapacity:
    memory: int  # bytes of RAM (MemTotal)
    cpus: int  # CPUs this process may run on
    pids: int  # kernel.pid_max


def capacity() -> HostCapacity:
    memory = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            pids = int(f.read())
    except (OSError, ValueError):
        pids = 4194304
    return HostCapacity(memory=memory or 1 << 62, cpus=cpus, pids=pids)


def check_limits(limits: Limits, memory_used: int | None = None, pids_used: int | None = None,
                 host: HostCapacity | None = None) -> None:
    """A UsageError naming the first limit that cannot be applied; nothing when all can."""
    host = host or capacity()
    if limits.memory is not None:
        if limits.memory > host.memory:
            raise UsageError(f"memory limit {format_size(limits.memory)} is more than this host has "
                             f"({format_size(host.memory)})")
        if memory_used is not None and limits.memory < memory_used:
            raise UsageError(f"memory limit {format_size(limits.memory)} is below what the container uses now "
                             f"({format_size(memory_used)})")
    if limits.cpus is not None and limits.cpus > host.cpus:
        raise UsageError(f"cpus limit {limits.cpus:g} is more than this host has ({host.cpus})")
    if limits.pids is not None:
        if limits.pids > host.pids:
            raise UsageError(f"pids limit {limits.pids} is more than this host allows (pid_max {host.pids})")
        if pids_used is not None and limits.pids < pids_used:
            raise UsageError(f"pids limit {limits.pids} is below the container's processes now ({pids_used})")


def check_ulimits(ulimits: tuple[tuple[str, int, int], ...]) -> None:
    """A UsageError naming the first ``--ulimit`` this host cannot give; nothing when all fit.

    ``nofile`` can never go above ``fs.nr_open`` (nor be unlimited); without CAP_SYS_RESOURCE (not
    root) no hard limit can go above the caller's own. Found here, it is one line before anything
    starts, instead of "Operation not permitted" from the command process.
    """
    import resource

    for name, soft, hard in ulimits:
        shown = f"--ulimit {name}={_rlim(soft)}:{_rlim(hard)}"
        if name == "nofile":
            try:
                with open("/proc/sys/fs/nr_open") as f:
                    nr_open = int(f.read())
            except (OSError, ValueError):
                nr_open = 1 << 20
            if -1 in (soft, hard) or max(soft, hard) > nr_open:
                raise UsageError(f"{shown} is more than this host allows (fs.nr_open {nr_open})")
        if os.geteuid() != 0:
            own = resource.getrlimit(getattr(resource, f"RLIMIT_{name.upper()}"))[1]
            if own != resource.RLIM_INFINITY and (hard == -1 or hard > own):
                raise UsageError(f"{shown} is more than this process may give (its own hard limit is {own})")


def _rlim(value: int) -> str:
    return "unlimited" if value == -1 else str(value)
