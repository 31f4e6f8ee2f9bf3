"""The container's root file system, set up inside its new mount namespace.

Order follows runc's ``prepareRoot``/``setupRootfs``: make ``/`` a slave tree
so nothing propagates to the host; overlay the image layers; mount ``/proc``,
``/sys`` (read-only), a ``/dev`` tmpfs with only the allowlisted devices
(bound from the host's ``/dev``, as rootless engines do: nothing is made with
mknod), ``devpts`` and ``/dev/shm``; bind ``/etc/hostname|hosts|resolv.conf``
and the volumes; mask and read-only paths; then ``pivot_root`` and detach the
old root.

It all runs as host root, in namespaces the host's root owns; only then does
PID 1 enter the container's user namespace (process.py). So the container's
root owns none of its namespaces: it cannot undo a mount, a mask or a
read-only flag. What the runtime makes in the rootfs (mount points, the
/dev tmpfs) belongs to the container's root (``plan.idmap``). A volume whose
owner is a host user is an idmapped mount (Linux 5.12): what the container's
root writes there is that user's on the host (``plan.volume_owners``).

Every mount target is resolved inside the rootfs with ``openat2(RESOLVE_IN_ROOT)``
and mounted through ``/proc/self/fd/N`` of that resolved fd, so a symlink in
the image (``/proc -> /``, CVE-2019-19921) or a swapped target
(CVE-2021-30465) cannot move a mount outside the container.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from . import disk
from . import syscalls as sc
from .errors import ContainerError
from .idmap import IdMap
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
    idmap: IdMap | None = None  # the container's user namespace (None: host ids, --userns=host)
    # per mount: the host (uid, gid) the container's root writes as there (an idmapped mount), or None (a plain bind)
    volume_owners: tuple[tuple[int, int] | None, ...] = ()
    disk_dir: str | None = None  # with a disk limit: the container's directory, whose disk holds upper and work
    rootless: bool = False  # built in the namespace of a user who is not root: overlay with userxattr

    @property
    def root_ids(self) -> tuple[int, int] | None:
        """Host ids of the container's root, for what the runtime makes in the rootfs (None: host root)."""
        return self.idmap.root if self.idmap is not None else None


def _resolve(root_fd: int, path: str, *, kind: str = "dir", create: bool = True,
             owner: tuple[int, int] | None = None) -> int:
    """An O_PATH fd for ``path`` inside the rootfs, never resolved outside it.

    Missing targets are created (a directory, or an empty file for ``kind="file"``),
    owned by ``owner`` (host ids of the container's root) when given.
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
        parent = _resolve(root_fd, parent_rel, kind="dir", owner=owner) if parent_rel else os.dup(root_fd)
        try:
            if kind == "dir":
                os.mkdir(name, 0o755, dir_fd=parent)
            else:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=parent))
            if owner is not None:
                os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
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
              data: str | None = None, kind: str = "dir", owner: tuple[int, int] | None = None) -> None:
    fd = _resolve(root_fd, path, kind=kind, owner=owner)
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


def _bind_device(dev_dir: int, name: str, major: int, minor: int) -> None:
    """Bind the host's /dev/NAME over an empty file in the container's /dev, once it is sure to be that device."""
    host = os.open(f"/dev/{name}", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(host)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(major, minor):
            raise ContainerError(f"/dev/{name} on the host is not the {major}:{minor} character device: "
                                 "refusing to give it to a container")
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dev_dir))
        target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev_dir)
        try:
            sc.mount(f"/proc/self/fd/{host}", f"/proc/self/fd/{target}", None, sc.MS_BIND)
        finally:
            os.close(target)
    finally:
        os.close(host)


def _idmapped_tree(volume: Mount, userns: int) -> int | None:
    """A detached copy of the volume's mount tree whose ids go through ``userns`` (None: the file system
    cannot be idmapped), read-only for ``:ro``, never setuid or device-opening."""
    flags = sc.MOUNT_ATTR_IDMAP | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
    if volume.readonly:
        flags |= sc.MOUNT_ATTR_RDONLY
    if os.statvfs(volume.source).f_flag & os.ST_NOEXEC:
        flags |= sc.MOUNT_ATTR_NOEXEC
    tree = -1
    try:
        tree = sc.open_tree(volume.source, sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE)
        sc.mount_setattr(tree, flags, userns)
    except OSError as exc:
        if tree >= 0:
            os.close(tree)
        if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):  # (ENOSYS: before 5.12)
            return None
        raise
    return tree


def _bind_volume(root_fd: int, volume: Mount, userns: int | None = None,
                 owner: tuple[int, int] | None = None) -> None:
    """Bind a host path, nosuid and nodev (read-only for ``:ro``); through an id map when ``userns`` is given.

    nodev: a device node in a volume must not open a host device. noexec is
    kept if the host's mount has it. ``userns`` maps the container's root to
    the host user the volume belongs to (an idmapped mount): what the root
    writes there is that user's. A file system that cannot be idmapped is an
    error for a writable volume (the container's root would write as an
    unprivileged id of the range); a read-only one is bound as it is.
    ``owner``: who owns mount points the runtime makes.
    """
    kind = "dir" if os.path.isdir(volume.source) else "file"
    if userns is not None:
        tree = _idmapped_tree(volume, userns)
        if tree is not None:
            try:
                fd = _resolve(root_fd, volume.target, kind=kind, owner=owner)
                try:
                    sc.move_mount(tree, fd)
                finally:
                    os.close(fd)
            finally:
                os.close(tree)
            return
        if not volume.readonly:
            raise ContainerError(f"volume {volume.source}: its file system cannot map the container's ids to its "
                                 "owner's (idmapped mounts: Linux 5.12, tmpfs 6.3); mount it read-only (:ro) "
                                 "or run with --userns=host")
    _mount_at(root_fd, volume.target, volume.source, None, sc.MS_BIND | sc.MS_REC, kind=kind, owner=owner)
    fd = _resolve(root_fd, volume.target, kind=kind, create=False)
    try:
        _restrict_tree(fd, volume.readonly)
    finally:
        os.close(fd)


def _restrict_tree(fd: int, readonly: bool) -> None:
    """nosuid, nodev (and read-only for ``:ro``) on the bound volume at ``fd`` and on every mount below it:
    a submount of the host's folder (a tmpfs, a USB stick) must not be the way around the volume's flags."""
    attrs = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | (sc.MOUNT_ATTR_RDONLY if readonly else 0)
    try:
        sc.mount_setattr(fd, attrs)  # the whole tree at once, each mount keeping its other flags
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
    top = os.readlink(f"/proc/self/fd/{fd}")  # before Linux 5.12: each mount of the tree, remounted
    with open("/proc/self/mountinfo") as f:
        points = [top] + [p for p in (_unescape(line.split()[4]) for line in f) if p.startswith(top.rstrip("/") + "/")]
    for point in points:
        flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_NOSUID | sc.MS_NODEV
        have = os.statvfs(point).f_flag
        if readonly or have & os.ST_RDONLY:
            flags |= sc.MS_RDONLY
        if have & os.ST_NOEXEC:
            flags |= sc.MS_NOEXEC
        sc.mount(None, point, None, flags)


def _unescape(field: str) -> str:
    """A mount point as /proc/self/mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def overlay_flags(rootless: bool) -> list[tuple[str, str | None]]:
    """The overlay options besides the directories, for a container's rootfs and for cp's mount of a stopped
    one: no index, no redirects. In the namespace of a user who is not root (``rootless``), overlay keeps its
    own xattrs in user.* (trusted.* are the host root's: ``userxattr``) and then follows no redirect, as the
    kernel requires (``off`` would follow them in lower layers). None: a flag without a value."""
    if rootless:
        return [("index", "off"), ("redirect_dir", "nofollow"), ("userxattr", None)]
    return [("index", "off"), ("redirect_dir", "off")]


def setup(plan: RootfsPlan, hostname: str, volume_userns: dict[tuple[int, int], int] | None = None) -> None:
    """Build the rootfs and enter it. Runs in the container's first process, as host root.

    ``volume_userns``: for each volume owner of ``plan.volume_owners``, a user
    namespace that maps the container's root to that owner (idmap.userns_fd).
    """
    owner = plan.root_ids
    # 1. Nothing we mount may propagate back to the host.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
    # 1b. Its disk, if it has one: mounted in this namespace too (made before the disk was, it has not got it).
    if plan.disk_dir is not None:
        disk.attach(Path(plan.disk_dir))
    # 2. The image: overlay of the layers and the container's own upper dir. The options must fit in a
    #    page: many layers are named by short links, relative to their directory (docker's overlay2 way).
    lower = ":".join(plan.lower_links if plan.lower_root else plan.lowerdirs)
    options = ",".join([f"lowerdir={lower}", f"upperdir={plan.upperdir}", f"workdir={plan.workdir}",
                        *(key if value is None else f"{key}={value}" for key, value in overlay_flags(plan.rootless))])
    if len(options) >= MAX_MOUNT_OPTIONS or len(plan.lowerdirs) > MAX_LAYERS:
        raise ContainerError(f"the image has too many layers ({len(plan.lowerdirs)}) for overlay; "
                             "commit fewer snapshots on top of each other, or flatten the image")
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if plan.lower_root:
            os.chdir(plan.lower_root)
        try:
            sc.mount("overlay", plan.rootfs, "overlay", 0, options)
        except OSError as exc:
            if plan.rootless and exc.errno in (errno.EINVAL, errno.EPERM):
                raise ContainerError(f"cannot mount the image's overlay in your user namespace "
                                     f"({exc.strerror}): containers of users who are not root need Linux 5.11 "
                                     f"or later (this is {os.uname().release})") from None
            raise
    finally:
        os.fchdir(here)  # (the caller's working directory matters to pivot_root)
        os.close(here)
    root_fd = os.open(plan.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # 3. Kernel file systems. /proc belongs to the new pid namespace we are in. The tmpfs file systems
        #    belong to the container's root.
        ids = f",uid={owner[0]},gid={owner[1]}" if owner is not None else ""
        _mount_at(root_fd, "/proc", "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, owner=owner)
        _mount_at(root_fd, "/sys", "sysfs", "sysfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY,
                  owner=owner)
        _mount_at(root_fd, "/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, f"mode=755,size=65536k{ids}",
                  owner=owner)
        dev_fd = _resolve(root_fd, "/dev")
        try:
            dev_dir = os.open(f"/proc/self/fd/{dev_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            os.close(dev_fd)
        try:
            # 4. Only the allowlisted devices; nothing else exists to be opened.
            for name, major, minor, _mode in DEVICES:
                _bind_device(dev_dir, name, major, minor)
            for name, target in DEV_LINKS:
                os.symlink(target, name, dir_fd=dev_dir)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=dev_dir, follow_symlinks=False)
            for sub in ("pts", "shm", "mqueue"):
                os.mkdir(sub, 0o755, dir_fd=dev_dir)
                if owner is not None:
                    os.chown(sub, *owner, dir_fd=dev_dir)
            null_st = os.stat("null", dir_fd=dev_dir)
            if not stat.S_ISCHR(null_st.st_mode) or null_st.st_rdev != os.makedev(1, 3):
                raise ContainerError("/dev/null in the container is not the null device")
        finally:
            os.close(dev_dir)
        tty_gid = 5 + (owner[1] if owner is not None else 0)  # the container's tty group
        pts = "newinstance,ptmxmode=0666,mode=0620"
        try:
            _mount_at(root_fd, "/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, f"{pts},gid={tty_gid}")
        except OSError as exc:  # a user's namespace with its own id alone has no group 5
            if not plan.rootless or exc.errno != errno.EINVAL:
                raise
            _mount_at(root_fd, "/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, pts)
        _mount_at(root_fd, "/dev/shm", "shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                  f"mode=1777,size=65536k{ids}")
        _mount_at(root_fd, "/dev/mqueue", "mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        # 5. Files the runtime writes for the container, and the user's volumes.
        for host_file, path in plan.etc_files:
            _mount_at(root_fd, path, host_file, None, sc.MS_BIND, kind="file", owner=owner)
        owners = plan.volume_owners or (None,) * len(plan.mounts)
        for volume, volume_owner in zip(plan.mounts, owners, strict=True):
            userns = (volume_userns or {}).get(volume_owner) if volume_owner is not None else None
            if volume_owner is not None and userns is None:
                raise ContainerError(f"volume {volume.source}: no id map was made for its owner")
            _bind_volume(root_fd, volume, userns, owner)
        if plan.cwd.strip("/"):
            os.close(_resolve(root_fd, plan.cwd, owner=owner))
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
