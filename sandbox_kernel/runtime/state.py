"""Container state on disk: the truth about every container, whoever made it.

Each container is a directory ``ROOT/containers/ID/``::

    config.json     what was asked (written once, at create)
    state.json      status, pids, exit code (replaced atomically, under ``lock``);
                    none yet means created, at config.json's time
    lock            flock'ed by whoever changes state.json
    upper/ work/    the overlay's writable layer (upper/ is the container root's: it is the
                    container's /)
    disk.img disk/  instead, with a disk limit: a file system of that size, mounted on
                    disk/, that holds upper/ and work/ (runtime/disk.py)
    rootfs/         the mount point (mounted only inside the container's mount namespace)
    hostname hosts resolv.conf    files bind-mounted into the container's /etc
    container.log   output of a detached container (size-capped, see logs.py)

``ROOT/containers/names/NAME`` is a symlink to the id: creating it is how a
name is claimed, atomically. A process is named by its pid *and* its start
time (``/proc/PID/stat`` field 22), so a recycled pid is never mistaken for a
container's process.

Statuses: ``created`` -> ``starting`` -> ``running`` <-> ``paused`` -> ``exited``
(and ``exited`` -> ``starting`` again for a restart). A container
whose monitor died (the process that started it was killed) is found by
:func:`is_alive` being false while the status says running; the facade's
reconcile step then cleans it up and marks it exited.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import disk
from . import record as record_mod
from .errors import StoreError
from .fsutil import private_dir, remove_quietly, write_private
from .record import ContainerRecord

CREATED, STARTING, RUNNING, PAUSED, EXITED = "created", "starting", "running", "paused", "exited"
ACTIVE = (STARTING, RUNNING, PAUSED)  # a monitor owns the container
WARM_MARK = "warm"  # in the directory of a container-to-be (a create's, a warm slot's): "PID START" of its maker
NEW_PREFIX = ".new-"  # a container-to-be's directory before its maker's mark is in it: .new-PID-START-ID
GONE_PREFIX = ".gone-"  # a removed container's directory, renamed out of sight until it is deleted


@dataclass(frozen=True)
class ProcRef:
    """A process named so that a recycled pid does not match it."""

    pid: int
    start: int  # clock ticks after boot (/proc/PID/stat field 22)

    @classmethod
    def of(cls, pid: int) -> ProcRef | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    @classmethod
    def me(cls) -> ProcRef | None:
        """This process (asked once per process: a forked child asks again)."""
        pid = os.getpid()
        if pid not in _ME:
            _ME.clear()
            _ME[pid] = cls.of(pid)
        return _ME[pid]

    def alive(self) -> bool:
        return self.pid > 0 and start_time(self.pid) == self.start


_ME: dict[int, ProcRef | None] = {}


def start_time(pid: int) -> int | None:
    """The start time of ``pid``, or None when no such process exists (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] == b"Z" or rest[0] == b"X":
        return None
    return int(rest[19])


@dataclass
class State:
    """The mutable part of a container, as stored in state.json."""

    status: str = CREATED
    pid: int = 0  # host pid of the container's PID 1
    pid_start: int = 0
    monitor_pid: int = 0  # the host process that waits for PID 1
    monitor_start: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    pids_limit_hit: bool = False  # a process was refused by its pids limit while it ran
    error: str | None = None  # why it ended abnormally, one line
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def pid1(self) -> ProcRef:
        return ProcRef(self.pid, self.pid_start)

    def monitor(self) -> ProcRef:
        return ProcRef(self.monitor_pid, self.monitor_start)

    def is_alive(self) -> bool:
        """True while the container's PID 1 runs (a running or paused container)."""
        return self.status in (RUNNING, PAUSED) and self.pid1().alive()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class ContainerDir:
    """One container's directory and its state file."""

    def __init__(self, path: Path):
        self.path = path
        self.id = path.name

    def make(self, hostname: str, warm_owner: tuple[int, int] | None = None,
             root_ids: tuple[int, int] | None = None, disk_size: int | None = None) -> None:
        """The directory of a container-to-be: overlay dirs and the /etc files.

        ``warm_owner`` (pid, start time): the process that makes it (a create,
        or a warm slot ahead of its container). Until its config is written the
        directory is garbage once that process is gone (killed half-way).
        ``root_ids``: the host ids of the container's root (its user namespace),
        who owns its / (the upper dir) and its /etc files. The directory itself
        is 0700, its files 0600 (the /etc files 0644 in the container's view).
        ``disk_size``: the writable layer on a file system of that size (disk.py).
        """
        if warm_owner is not None:  # made under a name that says whose it is, marked, then renamed: a directory
            # its maker left at any point (killed) is known as that process's
            new = self.path.with_name(f"{NEW_PREFIX}{warm_owner[0]}-{warm_owner[1]}-{self.id}")
            new.mkdir(mode=0o700)
            try:
                write_private(new / WARM_MARK, f"{warm_owner[0]} {warm_owner[1]}".encode())
                os.rename(new, self.path)
            except BaseException:
                remove_dir(new)
                raise
        else:
            self.path.mkdir(mode=0o700)
        try:
            os.chmod(self.path, 0o700)  # whatever the umask
            (self.path / "rootfs").mkdir(mode=0o700)
            if disk_size is not None:
                disk.make(self.path, disk_size, root_ids)
            else:
                for sub in ("upper", "work"):
                    (self.path / sub).mkdir(mode=0o700)
                os.chmod(self.path / "upper", 0o755)  # the container's /, as an image's root is
                if root_ids is not None:
                    os.chown(self.path / "upper", *root_ids)
            etc = {
                "hostname": f"{hostname}\n",
                "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n",
                "resolv.conf": "# no network: --network none\n",
            }
            for name, text in etc.items():
                write_private(self.path / name, text.encode())
                os.chmod(self.path / name, 0o644)  # (inside a 0700 directory: for the container's users)
                if root_ids is not None:
                    os.chown(self.path / name, *root_ids)
        except BaseException:
            remove_dir(self.path)
            raise

    def layer(self) -> tuple[Path, Path]:
        """The overlay's upper and work dirs (with a disk limit: on its disk, mounted now if it was not)."""
        if (self.path / disk.IMAGE).exists():
            disk.attach(self.path)
            return layer_dirs(self.path, 1)
        return layer_dirs(self.path, None)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def record(self) -> ContainerRecord:
        """What the container was made as (its config.json, record.py)."""
        return record_mod.load(self.config_path)

    def save_record(self, record: ContainerRecord) -> None:
        record_mod.save(self.config_path, record)

    def read_state(self) -> State:
        try:
            return State.from_json(json.loads((self.path / "state.json").read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(f"container {self.id[:12]}: cannot read its state: {exc}") from None
        try:  # nothing has happened to it since create (which writes no state: one file less on the start's time)
            return State(status=CREATED, created_at=self.config_path.stat().st_mtime)
        except FileNotFoundError:
            return State(status=CREATED)

    def write_state(self, state: State) -> None:
        _atomic_write(self.path / "state.json", json.dumps(asdict(state)))

    @contextmanager
    def locked(self) -> Iterator[State]:
        """Hold the container's lock; yields the current state, written back on exit."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read_state()
            before = asdict(state)
            yield state
            if asdict(state) != before:
                self.write_state(state)
        finally:
            os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    try:
        write_private(path, text.encode())
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


class Names:
    """``names/NAME -> ID`` symlinks: a name is claimed by creating its link."""

    def __init__(self, root: Path):
        self.root = root
        private_dir(root)

    def claim(self, name: str, cid: str, exists: Any) -> bool:
        """Claim ``name`` for ``cid``; False when a live container holds it.

        ``exists(id)`` says whether a container id still has a directory; a
        link to a vanished container is stale and is taken over.
        """
        link = self.root / name
        for _ in range(3):
            try:
                os.symlink(cid, link)
                return True
            except FileExistsError:
                owner = self.lookup(name)
                if owner is not None and exists(owner):
                    return False
                self.release(name, owner)
        return False

    def lookup(self, name: str) -> str | None:
        try:
            return os.readlink(self.root / name)
        except OSError:
            return None

    def release(self, name: str, cid: str | None) -> None:
        """Drop the link if it (still) names ``cid``."""
        if cid is None or self.lookup(name) == cid:
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass


def layer_dirs(path: Path, disk_size: int | None) -> tuple[Path, Path]:
    """The upper and work dirs of the container whose directory is ``path``: on its disk if it has one."""
    if disk_size is not None:
        return path / disk.MOUNT / "upper", path / disk.MOUNT / "work"
    return path / "upper", path / "work"


def remove_dir(path: str | os.PathLike[str]) -> None:
    """Remove a container's directory (best effort), its disk unmounted first: never rm -rf into a mount."""
    with contextlib.suppress(OSError, disk.DiskError):
        disk.detach(Path(path))
    remove_quietly(path)
