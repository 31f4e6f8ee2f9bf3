"""What a container test must leave behind (nothing), what the kernel's own counters say of a container, and
waiting for an event. Shared by the container tests."""

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


def assert_nothing_left(store_root: Path, before: set[Path], wait: float = 30.0) -> None:
    """No overlay mount, no new cgroup, no container directory or name of this store.

    Cgroups are host-wide: one that another test process creates meanwhile
    goes away with its container, so new ones get ``wait`` seconds to vanish (a bound on "at all", not a
    time measured: a pass returns as soon as they are gone).
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


def mounts_under(path: Path) -> list[str]:
    """Lines of the host's mount table that name ``path`` (as a mount point or in their options)."""
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


def wait_for_gone(containers: Path, deadline: float) -> None:
    """A --rm container's directory (``.gone-ID``) and name may still be on their way out: the monitor
    removes them after it has told the caller the exit status."""
    while [p for p in containers.iterdir() if p.name.startswith(".gone-")] and time.monotonic() < deadline:
        time.sleep(0.05)


def cgroup_limits(cgroup: str) -> dict[str, int | None]:
    """A container's limits as its cgroup files say (not its config): memory and swap in bytes, pids, and the
    CPU quota in microseconds per 100 ms period; None for no limit. Works on v1 (this machine) and v2."""
    v2 = CGROUP_ROOT / "sandbox-kernel" / cgroup
    if (v2 / "memory.max").exists():
        def value(name: str) -> int | None:
            text = (v2 / name).read_text().split()[0]
            return None if text == "max" else int(text)
        return {"memory": value("memory.max"), "pids": value("pids.max"), "cpu_quota_us": value("cpu.max")}

    def v1(controller: str, name: str) -> int | None:
        text = (CGROUP_ROOT / controller / "sandbox-kernel" / cgroup / name).read_text().strip()
        number = int(text) if text != "max" else None
        return None if number is None or number < 0 or number >= 1 << 62 else number
    return {"memory": v1("memory", "memory.limit_in_bytes"), "pids": v1("pids", "pids.max"),
            "cpu_quota_us": v1("cpu", "cpu.cfs_quota_us")}


def swap_total() -> int:
    """Bytes of swap this host has (/proc/meminfo's SwapTotal)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("SwapTotal:"))


def cgroup_pids(cgroup: str) -> list[int]:
    """The host PIDs in a container's cgroup (v2, else v1's pids controller)."""
    for path in (CGROUP_ROOT / "sandbox-kernel" / cgroup / "cgroup.procs",
                 CGROUP_ROOT / "pids" / "sandbox-kernel" / cgroup / "cgroup.procs"):
        if path.exists():
            return [int(pid) for pid in path.read_text().split()]
    return []


def cpu_throttled(cgroup: str) -> tuple[int, int]:
    """(periods, throttled periods) from the cgroup's cpu.stat: the kernel's own count of --cpus at work."""
    for path in (CGROUP_ROOT / "sandbox-kernel" / cgroup / "cpu.stat", CGROUP_ROOT / "cpu" / "sandbox-kernel" /
                 cgroup / "cpu.stat"):
        if path.exists():
            stat = dict(line.split() for line in path.read_text().splitlines())
            return int(stat["nr_periods"]), int(stat["nr_throttled"])
    raise FileNotFoundError(f"no cpu.stat for cgroup {cgroup}")


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Until ``predicate()`` (an event); ``timeout`` bounds "at all", it measures nothing."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
