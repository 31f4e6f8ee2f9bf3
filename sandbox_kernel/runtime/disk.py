"""A container's disk limit: its writable layer on a file system of its own, of that size.

``--disk SIZE`` (docker's ``--storage-opt size=SIZE``) gives the container a sparse
file ``disk.img`` of SIZE in its directory, an ext4 file system made in it (mkfs,
6-9 ms: the file's blocks are given out as they are written), attached to a
loop device that goes when it is unmounted (autoclear) and mounted on ``disk/``,
where the overlay's ``upper/`` and ``work/`` live. A process that fills it gets
ENOSPC and nothing else is touched: not the store, not the host's disk. It stays
mounted (in the host's mount namespace, inside the private store) while the
container exists, so ``diff``, ``commit`` and ``cp`` read it as any upper dir; it
is mounted again on first use after a reboot, and unmounted before the
container's directory is removed.

The host's disk never fills with containers' layers either: a container with a
disk limit is made only if the file system that holds the store has room for it
*and* for what every other disk-limited container may still write (their sizes
less what they use), plus :data:`RESERVE`. Only root can attach loop devices; a
caller that is not root gets a clear error for ``--disk``, and the admin's default
disk is not applied there (rootless containers need another backend).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import syscalls as sc
from .errors import ContainerError, UsageError
from .spec import format_size

IMAGE = "disk.img"
MOUNT = "disk"
RESERVE = 1 << 30  # what the store's file system keeps free beyond every container's limit
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
_LOOP_INFO64 = 232  # sizeof(struct loop_info64); lo_flags at offset 52
_MKFS_FALLBACK = "/sbin/mkfs.ext4"  # (e2fsprogs, on every Debian)
_MKFS = ("-q", "-F", "-t", "ext4", "-m", "0", "-L", "sk-disk", "-O", "^resize_inode",  # (its size never changes)
         "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")


class DiskError(ContainerError):
    """A container's disk could not be made, attached or mounted (or there is no room for it)."""


@dataclass(frozen=True)
class Usage:
    used: int  # bytes its files take
    size: int  # bytes the file system has for files (a little less than the limit: its own metadata)
    available: int  # bytes a write may still take (ext4 keeps some back for its own allocations)

    @property
    def full(self) -> bool:
        """Less than 1% or 1 MiB left for writes: they fail, or are about to."""
        return self.available < max(1 << 20, self.size // 100)


def check_supported() -> None:
    """UsageError where a disk limit cannot be had (not root: no loop devices)."""
    if os.geteuid() != 0:
        raise UsageError("--disk needs root here: a disk limit is a loop-mounted file system (not for rootless yet)")


def reserved(containers: Path) -> int:
    """What containers' disks on the store's file system may still write (their sizes less what they use):
    this store's, and those of any other store there whose disks are attached (found by their loop devices)."""
    device = os.stat(containers).st_dev
    images: dict[tuple[int, int], os.stat_result] = {}
    candidates = [str(p) for p in containers.glob(f"*/{IMAGE}")]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            name = backing.read_text().rstrip("\n")
            if os.path.basename(name) == IMAGE:
                candidates.append(name)
    for name in candidates:
        with contextlib.suppress(OSError):
            st = os.stat(name)
            if st.st_dev == device:
                images[(st.st_dev, st.st_ino)] = st
    return sum(max(0, st.st_size - st.st_blocks * 512) for st in images.values())


def check_room(containers: Path, size: int) -> None:
    """DiskError unless the store's file system has ``size`` for one more container, beyond the others."""
    st = os.statvfs(containers)
    free = st.f_bavail * st.f_frsize
    others = reserved(containers)
    if free - others - RESERVE < size:
        raise DiskError(f"no room for a container with a {format_size(size)} disk: {format_size(free)} free where "
                        f"the store is, {format_size(others)} of it promised to other containers and "
                        f"{format_size(RESERVE)} kept for the host "
                        "(remove containers, or ask for less with --disk)")


def make(cdir: Path, size: int, root_ids: tuple[int, int] | None) -> None:
    """``disk.img`` of ``size`` with an ext4 file system, mounted on ``disk/`` with ``upper/`` and ``work/``."""
    image = cdir / IMAGE
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    mkfs = shutil.which("mkfs.ext4") or _MKFS_FALLBACK
    try:
        done = subprocess.run([mkfs, *_MKFS, str(image)], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError(f"cannot make the container's disk: {mkfs}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise DiskError(f"cannot make the container's disk: mkfs.ext4: {last}")
    mountpoint = cdir / MOUNT
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    attach(cdir)
    for sub in ("upper", "work"):
        (mountpoint / sub).mkdir(mode=0o700)
    os.chmod(mountpoint / "upper", 0o755)  # the container's /, as an image's root is
    if root_ids is not None:
        os.chown(mountpoint / "upper", *root_ids)
    with contextlib.suppress(OSError):
        (mountpoint / "lost+found").rmdir()  # (nothing for it to keep: the disk is fsck'd by nobody)


def mounted(cdir: Path) -> bool:
    """Whether ``disk/`` is a mount point (its file system's device differs from the directory's)."""
    try:
        return os.stat(cdir / MOUNT).st_dev != os.stat(cdir).st_dev
    except FileNotFoundError:
        return False


def attach(cdir: Path) -> None:
    """Mount ``disk.img`` on ``disk/`` if it is not mounted in this mount namespace.

    Through the loop device that already backs it if there is one (the host's
    mount and a container's, made in a namespace of its own, must share one file
    system: two loop devices on one file would be two file systems writing it),
    else through a free one. One attach of an image at a time (a lock on it).
    """
    if mounted(cdir):
        return
    image = cdir / IMAGE
    try:  # (the lock on an open file of its own: the loop device keeps the one it is given open)
        lock = os.open(image, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise DiskError(f"container {cdir.name[:12]}: its disk ({IMAGE}) is gone") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        backing = os.open(image, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except BaseException:
        os.close(lock)
        raise
    try:
        for _ in range(20):  # (a device may go, or be taken by another process, between finding and using it)
            device = _backing_loop(os.fstat(backing))
            if device is not None:
                try:
                    _mount(device, cdir)
                    return
                except OSError as exc:
                    if exc.errno == errno.EIO:  # a device being cleared (its last user just unmounted it): it
                        time.sleep(0.05)       # goes in a moment, and the next round attaches a fresh one
                        continue
                    if exc.errno not in (errno.ENXIO, errno.ENODEV, errno.ENOENT):
                        raise DiskError(f"cannot mount the container's disk: {exc.strerror}") from None
                    continue
            device, loop = _free_loop()
            try:
                config = bytearray(8 + _LOOP_INFO64 + 64)
                struct.pack_into("=II", config, 0, backing, 0)
                struct.pack_into("=I", config, 8 + 52, LO_FLAGS_AUTOCLEAR)
                fcntl.ioctl(loop, LOOP_CONFIGURE, bytes(config))
            except OSError as exc:
                os.close(loop)
                if exc.errno == errno.EBUSY:
                    continue
                raise DiskError(f"cannot attach the container's disk to {device}: {exc.strerror}") from None
            try:  # (autoclear: the device goes when this fd is closed and no mount is left)
                _mount(device, cdir)
            except OSError as exc:
                raise DiskError(f"cannot mount the container's disk: {exc.strerror}") from None
            finally:
                os.close(loop)
            return
        raise DiskError("cannot attach the container's disk: no free loop device")
    finally:
        os.close(backing)
        os.close(lock)


def _mount(device: str, cdir: Path) -> None:
    sc.mount(device, str(cdir / MOUNT), "ext4", sc.MS_NOSUID | sc.MS_NODEV, "errors=remount-ro")


def _backing_loop(image: os.stat_result) -> str | None:
    """The loop device whose backing file is ``image`` (by device and inode), if one is attached."""
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            st = os.stat(backing.read_text().rstrip("\n"))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (image.st_dev, image.st_ino):
            return f"/dev/{backing.parent.parent.name}"
    return None


def _free_loop() -> tuple[str, int]:
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(f"no loop devices here (/dev/loop-control: {exc.strerror}): --disk needs them") from None
    try:
        number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
    except OSError as exc:
        raise DiskError(f"no free loop device: {exc.strerror}") from None
    finally:
        os.close(control)
    device = f"/dev/loop{number}"
    try:
        return device, os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(f"cannot open {device}: {exc.strerror}") from None


def detach(cdir: Path) -> None:
    """Unmount ``disk/`` (its loop device goes with the last user: a container still running keeps it)."""
    while mounted(cdir):
        try:
            sc.umount2(str(cdir / MOUNT), sc.MNT_DETACH)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise DiskError(f"cannot unmount the container's disk: {exc.strerror}") from None


def usage(cdir: Path) -> Usage | None:
    """What the container's disk holds and its size (None: no disk limit, or not mounted)."""
    if not mounted(cdir):
        return None
    st = os.statvfs(cdir / MOUNT)
    return Usage(used=(st.f_blocks - st.f_bfree) * st.f_frsize, size=st.f_blocks * st.f_frsize,
                 available=st.f_bavail * st.f_frsize)
