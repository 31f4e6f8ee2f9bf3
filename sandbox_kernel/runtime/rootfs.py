"""The container's root file system, set up inside its new mount namespace.

Order follows runc's ``prepareRoot``/``setupRootfs``: make ``/`` a slave tree
so nothing propagates to the host; overlay the image layers; mount ``/proc``,
``/sys`` (read-only), a ``/dev`` tmpfs with only the allowlisted devices,
``devpts`` and ``/dev/shm``; bind ``/etc/hostname|hosts|resolv.conf`` and the
volumes; mask and read-only paths; then ``pivot_root`` and detach the old root.

Every mount target is resolved inside the rootfs with ``openat2(RESOLVE_IN_ROOT)``
and mounted through ``/proc/self/fd/N`` of that resolved fd, so a symlink in
the image (``/proc -> /``, CVE-2019-19921) or a swapped target
(CVE-2021-30465) cannot move a mount outside the container.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass

from . import syscalls as sc
from .errors import ContainerError
from .spec import Mount

MASKED = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEVICES = (  # name, major, minor, mode
    ("null", 1, 3, 0o666), ("zero", 1, 5, 0o666), ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666), ("urandom", 1, 9, 0o666), ("tty", 5, 0, 0o666),
)
# The device cgroup's allowlist (v1): the devices above, /dev/ptmx and the pty slaves.
DEVICE_RULES = (*(f"c {major}:{minor} rwm" for _, major, minor, _ in DEVICES), "c 5:2 rwm", "c 136:* rwm")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))


MAX_MOUNT_OPTIONS = 4096  # mount(2) copies one page of options
MAX_LAYERS = 500  # overlay's own limit on lower layers

@dataclass(frozen=True)
class RootfsPlan:
    """What to mount where; made by the parent, carried out by the child."""

    rootfs: str  # the empty mount point
    lowerdirs: tuple[str, ...]  # image layers, top first (overlay's order)
    upperdir: str
    workdir: str
    etc_files: tuple[tuple[str, str], ...]  # (host file, path in the container): hostname, hosts, resolv.conf
    mounts: tuple[Mount, ...] = ()
    cwd: str = "/"  # the working directory: made if the image lacks it, as docker does
    lower_root: str | None = None  # when set: the layers are named by lower_links, relative to this directory
    lower_links: tuple[str, ...] = ()


def _resolve(root_fd: int, path: str, *, kind: str = "dir", create: bool = True) -> int:
    """An O_PATH fd for ``path`` inside the rootfs, never resolved outside it.

    Missing targets are created (a directory, or an empty file for ``kind="file"``).
    The result must not be a symlink and must be of the wanted kind.
    """
    rel = path.strip("/")
    how = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
    try:
        fd = sc.openat2(root_fd, rel, os.O_PATH | os.O_NOFOLLOW, how)
    except FileNotFoundError:
        if not create:
            raise
        parent_rel, _, name = rel.rpartition("/")
        parent = _resolve(root_fd, parent_rel, kind="dir") if parent_rel else os.dup(root_fd)
        try:
            if kind == "dir":
                os.mkdir(name, 0o755, dir_fd=parent)
            else:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=parent))
        except FileExistsError:
            pass
        finally:
            os.close(parent)
        fd = sc.openat2(root_fd, rel, os.O_PATH | os.O_NOFOLLOW, how)
    st = os.fstat(fd)
    wanted_dir = kind == "dir"
    if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) != wanted_dir:
        os.close(fd)
        raise ContainerError(f"{path} in the image is not a {'directory' if wanted_dir else 'file'}: refusing to mount")
    return fd


def _mount_at(root_fd: int, path: str, source: str | None, fstype: str | None, flags: int = 0,
              data: str | None = None, kind: str = "dir") -> None:
    fd = _resolve(root_fd, path, kind=kind)
    try:
        sc.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _open_in_root(root_fd: int, path: str) -> int | None:
    try:
        return sc.openat2(root_fd, path.strip("/"), os.O_PATH | os.O_NOFOLLOW,
                          sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
    except FileNotFoundError:
        return None


def _remount_readonly(root_fd: int, path: str) -> None:
    """Bind ``path`` on itself and make that mount read-only (runc's readonlyPath)."""
    fd = _open_in_root(root_fd, path)
    if fd is None:
        return
    try:
        sc.mount(f"/proc/self/fd/{fd}", f"/proc/self/fd/{fd}", None, sc.MS_BIND | sc.MS_REC)
    finally:
        os.close(fd)
    # The old fd names the directory under the new mount: open the mount itself.
    fd = _open_in_root(root_fd, path)
    if fd is None:
        return
    try:
        sc.mount(None, f"/proc/self/fd/{fd}", None,
                 sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)
    finally:
        os.close(fd)


def _mask(root_fd: int, path: str, dev_null: str) -> None:
    fd = _open_in_root(root_fd, path)
    if fd is None:
        return
    try:
        target = f"/proc/self/fd/{fd}"
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "size=0")
        else:
            sc.mount(dev_null, target, None, sc.MS_BIND)
    finally:
        os.close(fd)


def _bind_volume(root_fd: int, volume: Mount) -> None:
    """Bind a host path, then remount it nosuid and nodev (read-only for ``:ro``).

    nodev: a device node in a volume must not open a host device. noexec is
    kept if the host's mount has it.
    """
    kind = "dir" if os.path.isdir(volume.source) else "file"
    _mount_at(root_fd, volume.target, volume.source, None, sc.MS_BIND | sc.MS_REC, kind=kind)
    flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_NOSUID | sc.MS_NODEV
    if volume.readonly:
        flags |= sc.MS_RDONLY
    if os.statvfs(volume.source).f_flag & os.ST_NOEXEC:
        flags |= sc.MS_NOEXEC
    fd = _resolve(root_fd, volume.target, kind=kind, create=False)
    try:
        sc.mount(None, f"/proc/self/fd/{fd}", None, flags)
    finally:
        os.close(fd)


def setup(plan: RootfsPlan, hostname: str) -> None:
    """Build the rootfs and enter it. Runs in the container's first process, as root."""
    # 1. Nothing we mount may propagate back to the host.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
    # 2. The image: overlay of the layers and the container's own upper dir. The options must fit in a
    #    page: many layers are named by short links, relative to their directory (docker's overlay2 way).
    lower = ":".join(plan.lower_links if plan.lower_root else plan.lowerdirs)
    options = f"lowerdir={lower},upperdir={plan.upperdir},workdir={plan.workdir},index=off,redirect_dir=off"
    if len(options) >= MAX_MOUNT_OPTIONS or len(plan.lowerdirs) > MAX_LAYERS:
        raise ContainerError(f"the image has too many layers ({len(plan.lowerdirs)}) for overlay; "
                             "commit fewer snapshots on top of each other, or flatten the image")
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if plan.lower_root:
            os.chdir(plan.lower_root)
        sc.mount("overlay", plan.rootfs, "overlay", 0, options)
    finally:
        os.fchdir(here)  # (the caller's working directory matters to pivot_root)
        os.close(here)
    root_fd = os.open(plan.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # 3. Kernel file systems. /proc belongs to the new pid namespace we are in.
        _mount_at(root_fd, "/proc", "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        _mount_at(root_fd, "/sys", "sysfs", "sysfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY)
        _mount_at(root_fd, "/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
        dev_fd = _resolve(root_fd, "/dev")
        try:
            dev_dir = os.open(f"/proc/self/fd/{dev_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            os.close(dev_fd)
        try:
            # 4. Only the allowlisted devices; nothing else exists to be opened.
            for name, major, minor, mode in DEVICES:
                os.mknod(name, stat.S_IFCHR | mode, os.makedev(major, minor), dir_fd=dev_dir)
                os.chmod(name, mode, dir_fd=dev_dir)
            for name, target in DEV_LINKS:
                os.symlink(target, name, dir_fd=dev_dir)
            for sub in ("pts", "shm", "mqueue"):
                os.mkdir(sub, 0o755, dir_fd=dev_dir)
            null_st = os.stat("null", dir_fd=dev_dir)
            if not stat.S_ISCHR(null_st.st_mode) or null_st.st_rdev != os.makedev(1, 3):
                raise ContainerError("/dev/null in the container is not the null device")
        finally:
            os.close(dev_dir)
        _mount_at(root_fd, "/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620,gid=5")
        _mount_at(root_fd, "/dev/shm", "shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                  "mode=1777,size=65536k")
        _mount_at(root_fd, "/dev/mqueue", "mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        # 5. Files the runtime writes for the container, and the user's volumes.
        for host_file, path in plan.etc_files:
            _mount_at(root_fd, path, host_file, None, sc.MS_BIND, kind="file")
        for volume in plan.mounts:
            _bind_volume(root_fd, volume)
        if plan.cwd.strip("/"):
            os.close(_resolve(root_fd, plan.cwd))
        # 6. Masked and read-only paths (the masks use the container's own /dev/null).
        dev_null = os.path.join(plan.rootfs, "dev/null")
        for path in MASKED:
            _mask(root_fd, path, dev_null)
        for path in READONLY:
            _remount_readonly(root_fd, path)
    finally:
        os.close(root_fd)
    # 7. Enter the rootfs; the old root is detached, unreachable from inside.
    os.chdir(plan.rootfs)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if os.getcwd() != "/":
        raise ContainerError("working directory escaped the container after pivot_root")
    socket.sethostname(hostname)  # our own uts namespace
