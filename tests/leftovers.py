"""What a container test must leave behind: nothing. Shared by the container tests."""

from __future__ import annotations

import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroups() -> set[Path]:
    """The containers' cgroups now (a parent removed while we list it is listed again)."""
    while True:
        try:
            found = {p for p in CGROUP_ROOT.glob("*/sandbox-kernel/*") if p.is_dir()}
            return found | {p for p in CGROUP_ROOT.glob("sandbox-kernel/*") if p.is_dir()}
        except FileNotFoundError:
            continue


def assert_nothing_left(store_root: Path, before: set[Path], wait: float = 3.0) -> None:
    """No overlay mount, no new cgroup, no container directory or name of this store.

    Cgroups are host-wide: one that another test process creates meanwhile
    goes away with its container, so new ones get ``wait`` seconds to vanish.
    """
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(store_root) not in mounts, "a mount of this store is left on the host"
    deadline = time.monotonic() + wait
    while (new := cgroups() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not new, f"cgroups left behind: {sorted(map(str, new))}"
    containers = store_root / "containers"
    if containers.exists():
        wait_for_gone(containers, deadline)
        assert [p.name for p in containers.iterdir() if p.name != "names"] == [], "container directories left"
        names = containers / "names"
        assert not names.exists() or list(names.iterdir()) == [], "container names left"


def wait_for_gone(containers: Path, deadline: float) -> None:
    """A --rm container's directory (``.gone-ID``) and name may still be on their way out: the monitor
    removes them after it has told the caller the exit status."""
    while [p for p in containers.iterdir() if p.name.startswith(".gone-")] and time.monotonic() < deadline:
        time.sleep(0.05)
