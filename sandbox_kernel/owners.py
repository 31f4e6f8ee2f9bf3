"""Which process made a container: the label that lets the next caller remove what a dead one left.

A kernel's ``%%container`` containers and the sandboxed kernels' own containers
carry ``sandbox-kernel.owner=PID:START`` (START: the process's start time in
clock ticks, /proc/PID/stat field 22, so that a recycled pid is another owner).
A container whose owner is gone, and that was not kept, is removed by the next
kernel or provisioner that looks.
"""

from __future__ import annotations

import os

from .runtime import start_time

OWNER_LABEL = "sandbox-kernel.owner"
KEEP_LABEL = "sandbox-kernel.keep"


def owner_id() -> str:
    """This process, as ``PID:START``."""
    return f"{os.getpid()}:{start_time(os.getpid())}"


def owner_alive(owner: str) -> bool:
    """Whether the process ``owner`` names still runs (a zombie does not)."""
    pid, _, start = owner.partition(":")
    try:
        return start_time(int(pid)) == int(start)
    except (OSError, ValueError):
        return False


def orphaned(labels: dict[str, str]) -> bool:
    """Whether a container with these labels was made by an owner now gone, and not kept."""
    owner = labels.get(OWNER_LABEL)
    return owner is not None and labels.get(KEEP_LABEL) != "1" and not owner_alive(owner)
