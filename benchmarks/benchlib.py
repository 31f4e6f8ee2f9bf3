"""What the benchmarks share: the peer record and its measuring loop, how our CLI is started, and the
host checks (mounts, cgroups, trees) that make sure a run leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
SNAPSHOT_LIMIT = 10000  # entries of a host tree compared at most


@dataclass
class Peer:
    """One way to do the measured thing; ``start`` does it once and returns its wall-clock seconds."""

    name: str
    start: Callable[[], float]
    times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


def measure(peers: list[Peer], runs: int, warmup: int) -> None:
    """Each round runs every peer once, in turn, so drift hits all alike; the first ``warmup`` rounds don't count."""
    for round_ in range(warmup + runs):
        for peer in peers:
            if peer.error is not None:
                continue
            try:
                elapsed = peer.start()
            except Exception as exc:  # a peer that fails is reported and left out, the others go on
                peer.error = f"{type(exc).__name__}: {exc}"
                print(f"{peer.name}: failed in round {round_ + 1}: {peer.error}", file=sys.stderr)
                continue
            if round_ >= warmup:
                peer.times.append(elapsed)


def our_cli() -> list[str]:
    script = Path(sys.executable).parent / "sandbox-kernel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sandbox_kernel"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without proxy settings (nothing may leave 127.0.0.1), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env.update(extra)
    return env


def cache_parent() -> str:
    """Where podman's blob-info cache goes (/var/lib/containers/cache): the tmpfs goes on the deepest existing dir."""
    return "/var/lib/containers" if os.path.isdir("/var/lib/containers") else "/var/lib"


def mounts() -> set[tuple[str, str]]:
    """(mount point, file system type) of every mount this process sees."""
    found = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            found.add((fields[4], fields[fields.index("-") + 1]))
    return found


def remove_tree(path: Path) -> None:
    """Remove ``path``, never through a mount point (a peer's mount left there is unmounted first)."""
    for point in sorted((p for p, _ in mounts() if p == str(path) or p.startswith(f"{path}/")), reverse=True):
        print(f"cleanup: unmounting {point}, left by a peer", file=sys.stderr)
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(path, ignore_errors=True)


def populated(cgroup: Path) -> bool:
    """Whether a process is in ``cgroup`` or below it."""
    for procs in (cgroup / "cgroup.procs", *cgroup.rglob("*/cgroup.procs")):
        with contextlib.suppress(OSError):
            if procs.read_text().strip():
                return True
    return False


def snapshot(tree: str) -> dict[str, tuple[int, int, int]]:
    """path -> (mode, size, mtime) of ``tree`` and what is below it (empty when it does not exist)."""
    found: dict[str, tuple[int, int, int]] = {}
    if not os.path.lexists(tree):
        return found
    st = os.lstat(tree)
    found[tree] = (st.st_mode, st.st_size, st.st_mtime_ns)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            if len(found) >= SNAPSHOT_LIMIT:
                return found
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                found[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found
