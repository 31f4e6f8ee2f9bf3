"""Cgroups for containers: v1, v2 and hybrid hosts behind one interface.

    discover()            which hierarchy this host has (from /proc/self/mountinfo)
    open_cgroup(name)     a Cgroup for container ``name`` under ``sandbox-kernel/``
    Cgroup.create/apply/add/stats/oom_kills/freeze/thaw/kill/remove

Hybrid hosts (v1 controllers plus an empty cgroup2 mount, like this project's
CI machine) are driven through v1, where the controllers are. File names
follow runc's ``libcontainer/cgroups/fs`` (v1) and ``fs2`` (v2).

A caller who is not root puts its containers under the subtree delegated to
it. On v2, as the kernel's cgroup-v2 documentation describes delegation: the
highest cgroup above its own whose directory, ``cgroup.procs``,
``cgroup.subtree_control`` and ``cgroup.threads`` belong to it (systemd's
``user@UID.service`` with ``Delegate=yes``, or one an admin made and gave to
the user). On v1, ``sandbox-kernel-users/UID`` in each controller, which
root makes once with ``sandbox-kernel system delegate USER``
(runtime/delegation.py). Without one, making a cgroup fails with one
sentence saying how to get one.

Every file access goes through a :class:`CgroupFS`, so that the v2 paths can be
tested against a fake kernel on hosts that only have v1 (tests/test_cgroups.py).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import userns_keeper
from .errors import CgroupError
from .spec import CPU_PERIOD_US, Limits

PARENT = "sandbox-kernel"
USERS = "sandbox-kernel-users"  # v1: the subtrees `system delegate` gives to users who are not root, by uid
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "devices")
V2_CONTROLLERS = ("memory", "cpu", "pids")


@dataclass(frozen=True)
class Hierarchy:
    """Where the cgroup file systems are mounted."""

    version: str  # "v1", "v2" or "hybrid"
    v1: dict[str, Path]  # controller -> mount point
    v2: Path | None  # the cgroup2 mount
    base: str = ""  # where sandbox-kernel/ goes, relative to each mount: "" for root, else the delegated subtree
    refusal: str | None = None  # why this caller (not root) has no cgroup to make containers' cgroups in

    @property
    def v2_base(self) -> Path | None:
        """The v2 cgroup that sandbox-kernel/ goes in."""
        return None if self.v2 is None or self.refusal else self.v2 / self.base

    def parents(self) -> list[Path]:
        """The sandbox-kernel/ directories the containers' cgroups go in (one per mount the driver uses)."""
        if self.refusal:
            return []
        if self.driver == "v2":
            assert self.v2 is not None
            return [self.v2 / self.base / PARENT]
        used = V1_USER_CONTROLLERS if self.base else V1_CONTROLLERS
        return [mount / self.base / PARENT for mount in v1_mounts(self.v1, used)]

    @property
    def driver(self) -> str:
        return "v2" if self.version == "v2" else "v1"


def discover(mountinfo: str = "/proc/self/mountinfo", own_cgroup: str = "/proc/self/cgroup",
             uid: int | None = None) -> Hierarchy:
    """Read which controllers are mounted where (and on v2, for a caller who is not root, which subtree is
    delegated to it); raise CgroupError if none are usable."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    try:
        with open(mountinfo) as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise CgroupError(f"cannot read {mountinfo}: {exc.strerror}") from None
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        post_fields = post.split()
        if len(fields) < 5 or len(post_fields) < 3:
            continue
        mount_point = Path(fields[4].replace("\\040", " "))
        fstype, options = post_fields[0], post_fields[2].split(",")
        if fstype == "cgroup2":
            v2 = v2 or mount_point
        elif fstype == "cgroup":
            for opt in options:
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = mount_point
    uid = userns_keeper.host_uid() if uid is None else uid
    if "memory" in v1:
        version = "hybrid" if v2 is not None else "v1"
        if uid == 0:
            return Hierarchy(version, v1, v2)
        return Hierarchy(version, v1, v2, f"{USERS}/{uid}", _v1_refusal(v1, uid))
    if v2 is not None:
        if uid == 0:
            return Hierarchy("v2", {}, v2)
        base, refusal = delegated_subtree(v2, own_cgroup, uid)
        return Hierarchy("v2", {}, v2, "" if base is None else str(base.relative_to(v2)), refusal)
    raise CgroupError("no cgroup file system is mounted (need cgroup v1 controllers or cgroup2)")


DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
V1_DELEGATED_FILES = ("cgroup.procs", "tasks")
V1_USER_CONTROLLERS = tuple(c for c in V1_CONTROLLERS if c != "devices")  # (only root may write device rules)


def v1_mounts(v1: dict[str, Path], controllers: tuple[str, ...]) -> list[Path]:
    """The mounts of these v1 controllers, each once (cpu and cpuacct often share one)."""
    return list(dict.fromkeys(mount for controller, mount in v1.items() if controller in controllers))


def _owned(cgroup: Path, files: tuple[str, ...], uid: int) -> bool:
    """Whether ``cgroup`` and these files of it belong to ``uid`` (OSError when one is not there)."""
    return all(os.stat(cgroup / name).st_uid == uid for name in ("", *files))


def _v1_refusal(v1: dict[str, Path], uid: int) -> str | None:
    """None when every controller a user's containers use has ``sandbox-kernel-users/UID`` given to ``uid``
    (directory, cgroup.procs and tasks); else the sentence that says how to get it."""
    for mount in v1_mounts(v1, V1_USER_CONTROLLERS):
        try:
            if _owned(mount / USERS / str(uid), V1_DELEGATED_FILES, uid):
                continue
        except OSError:
            pass
        return ("memory, CPU and pids limits need a cgroup subtree of your own, which root makes once on this "
                "host (cgroup v1): sudo sandbox-kernel system delegate $USER")
    return None


def delegated_subtree(mount: Path, own_cgroup: str, uid: int) -> tuple[Path | None, str | None]:
    """The v2 subtree delegated to ``uid`` that holds the caller's own cgroup (the highest cgroup on the way
    up whose directory and DELEGATED_FILES are the user's: the leaf the caller is in may be the admin's), or
    None and the sentence that says why not."""
    how = ("memory, CPU and pids limits need a cgroup v2 subtree delegated to you: systemd's user@UID.service "
           "with Delegate=yes (a login session or `loginctl enable-linger`), or a cgroup an admin made and gave "
           "you (chown of the directory and its cgroup.procs, cgroup.subtree_control and cgroup.threads)")
    try:
        with open(own_cgroup) as fh:
            relative = next((line.split(":", 2)[2].strip() for line in fh if line.startswith("0::")), None)
    except OSError:
        relative = None
    if not relative:
        return None, f"{how}; this process is in no cgroup v2"
    own = mount / relative.lstrip("/")
    base = None
    for candidate in (own, *own.parents):
        if candidate == mount or mount not in candidate.parents:
            break
        try:
            if _owned(candidate, DELEGATED_FILES, uid):
                base = candidate  # (and on up: the highest one)
        except OSError:
            break
    if base is None:
        return None, f"{how}; your cgroup {own} is not yours"
    if base == own:
        return None, (f"the cgroup delegated to you ({base}) holds your processes itself, so it cannot also hold "
                      f"containers' cgroups (cgroup v2 keeps processes in leaves): start Jupyter in a child cgroup "
                      f"of it (e.g. systemd-run --user --scope)")
    return base, None


class CgroupFS:
    """The real cgroup file systems. Tests substitute a fake with the same methods."""

    def mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def read(self, path: Path) -> str:
        with open(path) as fh:
            return fh.read()

    def write(self, path: Path, value: str) -> None:
        # One write(2) per value: cgroup files act on each write call.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


@dataclass(frozen=True)
class CgroupStats:
    memory_current: int | None  # bytes
    memory_peak: int | None  # bytes, since creation (or the last reset)
    cpu_ns: int | None  # CPU time used
    pids: int | None
    oom_kills: int
    pids_limit_hits: int


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.events, cpu.stat, pids.events, memory.oom_control) as a dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


class Cgroup:
    """One container's cgroup. Use :func:`open_cgroup` to get the right kind."""

    def __init__(self, name: str, hierarchy: Hierarchy, fs: CgroupFS | None = None):
        if not name or "/" in name or name in (".", ".."):
            raise CgroupError(f"invalid cgroup name {name!r}")
        self.name = name
        self.hierarchy = hierarchy
        self.fs = fs or CgroupFS()

    # -- helpers ------------------------------------------------------------------

    def _write(self, path: Path, value: str) -> None:
        try:
            self.fs.write(path, value)
        except OSError as exc:
            raise CgroupError(f"cannot set {path.name} to {value!r} for {self.name}: {exc.strerror}") from None

    def _read(self, path: Path) -> str | None:
        try:
            return self.fs.read(path)
        except OSError:
            return None

    def _read_int(self, path: Path) -> int | None:
        text = self._read(path)
        if text is None:
            return None
        text = text.strip()
        return int(text) if text.lstrip("-").isdigit() else None

    # -- interface, implemented per version -----------------------------------------

    def paths(self) -> list[Path]:
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def apply(self, limits: Limits) -> None:
        raise NotImplementedError

    def add(self, pid: int) -> None:
        raise NotImplementedError

    def procs(self) -> list[int]:
        raise NotImplementedError

    def stats(self) -> CgroupStats:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def restrict_devices(self, allow: list[str]) -> None:
        """Deny every device but ``allow`` (``c 1:3 rwm`` rules).

        Only cgroup v1 has a devices controller with files. On v2 the same
        effect needs a BPF program; there the container relies on what makes
        a device unreachable anyway: no CAP_MKNOD, layers without device
        nodes, a /dev with only the allowed ones, and nodev on every volume.
        """

    def exists(self) -> bool:
        return any(self.fs.exists(p) for p in self.paths())

    def oom_kills(self) -> int:
        return self.stats().oom_kills

    def reset_peak(self) -> bool:
        """Start the memory peak over (cgroup v1); False where it cannot be (v2's memory.peak resets per open file)."""
        return False

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup, frozen first so none can fork away."""
        self.freeze()
        try:
            for pid in self.procs():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            self.thaw()
        self._wait_empty(timeout)

    def _wait_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.procs():
            if time.monotonic() > deadline:
                raise CgroupError(f"processes of {self.name} did not exit after SIGKILL")
            time.sleep(0.005)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the cgroup; nothing is left behind."""
        if not self.exists():
            return
        if self.procs():
            self.kill(timeout)
        deadline = time.monotonic() + timeout
        for path in reversed(self.paths()):
            while True:
                try:
                    self.fs.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove cgroup {path}: {exc.strerror}") from None
                    time.sleep(0.005)
            try:  # the shared sandbox-kernel/ parent goes with the last container
                self.fs.rmdir(path.parent)
            except OSError:
                pass


class CgroupV1(Cgroup):
    """Controllers in separate hierarchies (v1 and hybrid hosts)."""

    def _dir(self, controller: str) -> Path | None:
        mount = self.hierarchy.v1.get(controller)
        if mount is None or (self.hierarchy.base and controller not in V1_USER_CONTROLLERS):
            return None
        return mount / self.hierarchy.base / PARENT / self.name

    def paths(self) -> list[Path]:
        return [p for c in V1_CONTROLLERS if (p := self._dir(c)) is not None]

    def create(self) -> None:
        for path in self.paths():
            try:
                self.fs.mkdir(path)
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from None

    def apply(self, limits: Limits) -> None:
        memory = self._dir("memory")
        if memory is not None:
            self._set_memory(memory, limits)
        cpu = self._dir("cpu")
        if cpu is not None:
            self._write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            quota = limits.cpu_quota_us()
            self._write(cpu / "cpu.cfs_quota_us", str(quota if quota is not None else -1))
        pids = self._dir("pids")
        if pids is not None:
            self._write(pids / "pids.max", str(limits.pids) if limits.pids is not None else "max")

    def _set_memory(self, memory: Path, limits: Limits) -> None:
        mem = str(limits.memory) if limits.memory is not None else "-1"
        swap = limits.swap_beyond_memory()  # no swap beyond the memory limit by default
        memsw = memory / "memory.memsw.limit_in_bytes"
        has_swap_accounting = self.fs.exists(memsw)
        steps = [(memory / "memory.limit_in_bytes", mem)]
        if has_swap_accounting:
            steps.append((memsw, str(limits.memory + swap) if swap is not None and limits.memory else "-1"))
        # memsw must stay >= memory: raising limits goes memsw first, lowering memory first.
        try:
            for path, value in steps:
                self.fs.write(path, value)
        except OSError:
            for path, value in reversed(steps):
                self._write(path, value)

    def add(self, pid: int) -> None:
        for path in self.paths():
            self._write(path / "cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        path = self._dir("freezer") or self._dir("pids") or self._dir("memory")
        text = self._read(path / "cgroup.procs") if path is not None else None
        return [int(p) for p in (text or "").split()]

    def stats(self) -> CgroupStats:
        memory, cpuacct, pids = self._dir("memory"), self._dir("cpuacct"), self._dir("pids")
        oom = _keyed(self._read(memory / "memory.oom_control") or "") if memory else {}
        pid_events = _keyed(self._read(pids / "pids.events") or "") if pids else {}
        return CgroupStats(
            memory_current=self._read_int(memory / "memory.usage_in_bytes") if memory else None,
            memory_peak=self._read_int(memory / "memory.max_usage_in_bytes") if memory else None,
            cpu_ns=self._read_int(cpuacct / "cpuacct.usage") if cpuacct else None,
            pids=self._read_int(pids / "pids.current") if pids else None,
            oom_kills=oom.get("oom_kill", 0),
            pids_limit_hits=pid_events.get("max", 0),
        )

    def reset_peak(self) -> bool:
        memory = self._dir("memory")
        if memory is None:
            return False
        self._write(memory / "memory.max_usage_in_bytes", "0")
        return True

    def oom_kills(self) -> int:
        memory = self._dir("memory")
        return _keyed(self._read(memory / "memory.oom_control") or "").get("oom_kill", 0) if memory else 0

    def restrict_devices(self, allow: list[str]) -> None:
        """Deny every device, then allow ``allow`` rules (``c 1:3 rwm``)."""
        devices = self._dir("devices")
        if devices is None:
            return
        self._write(devices / "devices.deny", "a")
        for rule in allow:
            self._write(devices / "devices.allow", rule)

    def freeze(self) -> None:
        self._set_freezer("FROZEN")

    def thaw(self) -> None:
        self._set_freezer("THAWED")

    def _set_freezer(self, state: str) -> None:
        freezer = self._dir("freezer")
        if freezer is None:
            return
        self._write(freezer / "freezer.state", state)
        deadline = time.monotonic() + 5
        while (self._read(freezer / "freezer.state") or state).strip() != state:
            if time.monotonic() > deadline:
                raise CgroupError(f"{self.name} did not reach freezer state {state}")
            time.sleep(0.001)


class CgroupV2(Cgroup):
    """One unified hierarchy (cgroup v2 hosts)."""

    @property
    def _parent(self) -> Path:
        assert self.hierarchy.v2 is not None
        return self.hierarchy.v2 / self.hierarchy.base / PARENT

    @property
    def path(self) -> Path:
        return self._parent / self.name

    def paths(self) -> list[Path]:
        return [self.path]

    def create(self) -> None:
        # Top down: a controller must be enabled in a parent's subtree_control
        # before its files appear in the children.
        try:
            self._enable_controllers(self._parent.parent)
            self.fs.mkdir(self._parent)
            self._enable_controllers(self._parent)
            self.fs.mkdir(self.path)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {self.path}: {exc.strerror}") from None

    def _enable_controllers(self, path: Path) -> None:
        available = (self._read(path / "cgroup.controllers") or "").split()
        enabled = (self._read(path / "cgroup.subtree_control") or "").split()
        missing = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
        if missing:
            self._write(path / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

    def apply(self, limits: Limits) -> None:
        self._write(self.path / "memory.max", str(limits.memory) if limits.memory is not None else "max")
        swap_path = self.path / "memory.swap.max"
        if self.fs.exists(swap_path):
            swap = limits.swap_beyond_memory()
            self._write(swap_path, str(swap) if swap is not None else "max")
        quota = limits.cpu_quota_us()
        self._write(self.path / "cpu.max", f"{quota if quota is not None else 'max'} {CPU_PERIOD_US}")
        self._write(self.path / "pids.max", str(limits.pids) if limits.pids is not None else "max")

    def add(self, pid: int) -> None:
        self._write(self.path / "cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        return [int(p) for p in (self._read(self.path / "cgroup.procs") or "").split()]

    def stats(self) -> CgroupStats:
        cpu = _keyed(self._read(self.path / "cpu.stat") or "")
        # The container's own memory.events (not .local): oom_kill, as containerd reads it.
        events = _keyed(self._read(self.path / "memory.events") or "")
        pid_events = _keyed(self._read(self.path / "pids.events") or "")
        return CgroupStats(
            memory_current=self._read_int(self.path / "memory.current"),
            memory_peak=self._read_int(self.path / "memory.peak"),
            cpu_ns=cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None,
            pids=self._read_int(self.path / "pids.current"),
            oom_kills=events.get("oom_kill", 0),
            pids_limit_hits=pid_events.get("max", 0),
        )

    def oom_kills(self) -> int:
        return _keyed(self._read(self.path / "memory.events") or "").get("oom_kill", 0)

    def kill(self, timeout: float = 5.0) -> None:
        kill_file = self.path / "cgroup.kill"
        if self.fs.exists(kill_file):  # Linux 5.14+: the kernel kills them all at once
            self._write(kill_file, "1")
            self._wait_empty(timeout)
            return
        super().kill(timeout)

    def freeze(self) -> None:
        self._set_frozen(1)

    def thaw(self) -> None:
        self._set_frozen(0)

    def _set_frozen(self, value: int) -> None:
        self._write(self.path / "cgroup.freeze", str(value))
        deadline = time.monotonic() + 5
        while _keyed(self._read(self.path / "cgroup.events") or "").get("frozen", value) != value:
            if time.monotonic() > deadline:
                raise CgroupError(f"{self.name} did not {'freeze' if value else 'thaw'}")
            time.sleep(0.001)


class Unlimited(Cgroup):
    """The "cgroup" of a container of a user with no delegated subtree (``hierarchy.refusal``): none.

    Such a container runs without limits, in its caller's cgroup; asking for a
    limit, pausing or freezing it is refused with the sentence that says how
    to get delegation. Its processes die with its PID 1 (its pid namespace).
    """

    def _refuse(self) -> CgroupError:
        return CgroupError(self.hierarchy.refusal or "no cgroup")

    def paths(self) -> list[Path]:
        return []

    def create(self) -> None:
        pass

    def apply(self, limits: Limits) -> None:
        if replace(limits, disk=None) != Limits():
            raise self._refuse()

    def add(self, pid: int) -> None:
        pass

    def procs(self) -> list[int]:
        return []

    def stats(self) -> CgroupStats:
        return CgroupStats(None, None, None, None, 0, 0)

    def freeze(self) -> None:
        raise self._refuse()

    def thaw(self) -> None:
        raise self._refuse()

    def remove(self, timeout: float = 5.0) -> None:
        pass


_pinned: Hierarchy | None = None


def pin(hierarchy: Hierarchy) -> None:
    """Use ``hierarchy`` from now on in this process (a monitor that is about to join its user's namespace,
    where every cgroup of the user shows as root's and discovery could no longer tell what is delegated)."""
    global _pinned
    _pinned = hierarchy


def _hierarchy() -> Hierarchy:
    """This process's hierarchy: the pinned one, else what discovery finds now."""
    return _pinned or discover()


def limit_refusal() -> str | None:
    """Why this caller's containers can have no memory, CPU or pids limit (nothing delegated), or None."""
    if not userns_keeper.rootless():
        return None
    return _hierarchy().refusal


def open_cgroup(name: str, hierarchy: Hierarchy | None = None, fs: CgroupFS | None = None) -> Cgroup:
    """The cgroup of container ``name`` on this host (not created yet)."""
    hierarchy = hierarchy or _hierarchy()
    cls = Unlimited if hierarchy.refusal else CgroupV2 if hierarchy.driver == "v2" else CgroupV1
    return cls(name, hierarchy, fs)


def remove_empty_parents(hierarchy: Hierarchy | None = None, fs: CgroupFS | None = None) -> None:
    """Remove the shared ``sandbox-kernel/`` parents that no container uses any more.

    A container's removal tries this too, but the kernel may still hold a
    just-removed child for a moment (EBUSY); calls that list containers sweep
    again.
    """
    hierarchy = hierarchy or _hierarchy()
    fs = fs or CgroupFS()
    for parent in hierarchy.parents():
        try:
            fs.rmdir(parent)
        except OSError:
            pass
