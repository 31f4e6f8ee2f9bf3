"""``cp``: files between the host and a container, both ways, as ``docker cp`` copies them.

A running container's side is reached through its PID 1's root
(``/proc/PID/root``, the pid checked against its start time); a stopped one's
(created or exited) through its overlay mounted nowhere (fsopen/fsmount: an fd
is the only way to it, and it goes with the fd), under the container's lock so
that no start mounts the same upper dir meanwhile (its volumes are not there:
a path in one is refused). Every path there is resolved with
``openat2(RESOLVE_IN_ROOT)``: a symlink the container planted resolves inside
the container, never to the host's files. Below the path given, a walk opens
each entry relative to its directory without following any symlink (a symlink
is copied as a symlink), stays on the file system it started on (``/proc``,
``/sys`` and ``/dev`` are the runtime's, not the container's files; a volume is
copied when asked for by its own path), and opens a file only after checking
it is one (a FIFO swapped in would block).

Out of a container: no device node is made on the host, and setuid and setgid
bits are dropped (a container's root must not hand the host's root a setuid
program); the copies belong to whoever runs ``cp``. Into a container: files
belong to the container's root (``-a``: keep their owners, as seen inside), and
no device node is copied in.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import inside, syscalls, userns_keeper
from .errors import ContainerError, UsageError
from .fsutil import open_beneath
from .room import Room
from .rootfs import overlay_flags
from .state import PAUSED, RUNNING, STARTING, ProcRef

if TYPE_CHECKING:
    from .record import ContainerRecord

CHUNK = 1 << 20


@dataclass
class Copied:
    """What a copy did: files, bytes, and what it left out (with why), for the CLI to say."""

    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


class _Root:
    """The container's root directory (as its PID 1 sees it, or its overlay when it is stopped), held open for
    one copy."""

    def __init__(self, fd: int, record: ContainerRecord, running: bool = True):
        self.fd = fd
        self.running = running
        self.volumes = [m.target for m in record.spec.mounts]
        self.name = record.name
        self.owner = record.idmap.root if record.idmap is not None else (0, 0)
        self.base = record.idmap.uid if record.idmap is not None else 0
        self.gbase = record.idmap.gid if record.idmap is not None else 0
        # the container's own file systems: its root and its volumes (not the runtime's /proc, /sys, /dev)
        self.devices = {os.fstat(self.fd).st_dev}
        for mount in record.spec.mounts:
            try:
                fd = self.open(mount.target, os.O_PATH)
            except OSError:
                continue
            self.devices.add(os.fstat(fd).st_dev)
            os.close(fd)

    def open(self, path: str, flags: int, follow: bool = False) -> int:
        """``path`` in the container, resolved inside its root (a symlink there resolves there too); its last
        component is not followed unless ``follow``."""
        return syscalls.openat2(self.fd, path or "/", flags | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW),
                                syscalls.RESOLVE_IN_ROOT)

    @classmethod
    def of_running(cls, pid1: ProcRef, record: ContainerRecord) -> _Root:
        try:
            fd = os.open(f"/proc/{pid1.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise ContainerError(f"container {record.name} is not running") from None
        if not pid1.alive():  # (the pid was reused between reading the state and opening its root)
            os.close(fd)
            raise ContainerError(f"container {record.name} is not running")
        return cls(fd, record)

    @classmethod
    def of_stopped(cls, links: Path, names: tuple[str, ...], upper: Path, work: Path, record: ContainerRecord,
                   rootless: bool = False) -> _Root:
        """The overlay of a container that is not running: its layers (``names``: short links in ``links``,
        store.short_links) under its upper dir, mounted nowhere, nosuid and nodev (``rootless``: in the user's
        namespace, with the options its containers' overlays have there: rootfs.py)."""
        lower = ":".join(names)
        options: list[tuple[str, str | None]] = [("lowerdir", lower)] \
            if len(lower) <= syscalls.FSCONFIG_STRING_MAX else [("lowerdir+", name) for name in names]  # (6.5+)
        options += [("upperdir", str(upper)), ("workdir", str(work)), *overlay_flags(rootless)]
        if any(len(value or "") > syscalls.FSCONFIG_STRING_MAX for _, value in options):
            raise ContainerError(f"cp: the store's path is too long to mount {record.name}'s files while it is "
                                 "stopped: start it, then cp")
        result: list[int | BaseException] = []

        def mount() -> None:  # a thread with a working directory of its own: the layers' names are relative
            try:
                syscalls.unshare(syscalls.CLONE_FS)
                os.chdir(links)
                result.append(syscalls.detached_mount("overlay", options,
                                                      syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV))
            except BaseException as exc:  # (reported in the caller's thread)
                result.append(exc)

        worker = threading.Thread(target=mount, name="cp-overlay")
        worker.start()
        worker.join()
        if isinstance(result[0], BaseException):
            exc = result[0]
            raise ContainerError(f"cp: cannot mount {record.name}'s files while it is stopped: "
                                 f"{_why(exc) if isinstance(exc, OSError) else exc}") from None
        return cls(result[0], record, running=False)

    def check_path(self, path: str) -> None:
        """A stopped container's volumes are not mounted: a path in one would land in its own layer."""
        if self.running:
            return
        clean = os.path.normpath("/" + path.lstrip("/"))  # (not "//": normpath keeps a leading pair)
        for target in self.volumes:
            if clean == target or clean.startswith(target.rstrip("/") + "/"):
                raise ContainerError(f"cp: {self.name}:{path} is in a volume ({target}), which is mounted only "
                                     "while the container runs: start it, or copy to the volume's source")

    def close(self) -> None:
        os.close(self.fd)


def _why(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def split_location(text: str) -> tuple[str | None, str]:
    """docker cp's ``CONTAINER:PATH`` or a local path: (container or None, path). A local path with a colon is
    written with a slash before it (``./a:b``)."""
    head, sep, rest = text.partition(":")
    if sep and head and "/" not in head and not text.startswith("."):
        if not rest:
            raise UsageError(f"invalid cp location {text!r}: CONTAINER:PATH needs a path")
        return head, rest
    return None, text


def copy_out(root: _Root, path: str, dest: Path, follow: bool = False) -> Copied:
    """``cp CONTAINER:PATH DEST``: into DEST if it is a directory, else as DEST. ``follow``: -L."""
    done = Copied()
    root.check_path(path)
    try:
        src = root.open(path, os.O_PATH, follow=follow)
    except OSError as exc:
        raise ContainerError(f"cp: {root.name}:{path}: {_why(exc)}") from None
    try:
        st = os.fstat(src)
        if st.st_dev not in root.devices and not stat.S_ISLNK(st.st_mode):
            raise ContainerError(f"cp: {root.name}:{path} is not the container's file (the runtime's /proc, /sys "
                                 "or /dev)")
        name = os.path.basename(path.rstrip("/")) or "root"
        target = dest / name if dest.is_dir() and not path.endswith("/.") else dest
        if path.endswith("/.") and stat.S_ISDIR(st.st_mode):  # docker's SRC/. : the contents
            target.mkdir(parents=False, exist_ok=True)
            _out_contents(root, src, target, st.st_dev, path, done)
        else:
            _out_entry(root, src, None, target, st, path, done)
    finally:
        os.close(src)
    return done


def _out_entry(root: _Root, fd: int, parent: int | None, target: Path, st: os.stat_result, shown: str,
               done: Copied) -> None:
    """One entry (``fd``: an O_PATH fd of it) to ``target`` on the host."""
    mode = stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink("", dir_fd=fd)  # (fd: an O_PATH fd of the symlink itself)
        _clear(target)
        os.symlink(link, target)
        done.files += 1
    elif stat.S_ISDIR(st.st_mode):
        if target.exists() and not target.is_dir():
            raise ContainerError(f"cp: cannot copy the directory {root.name}:{shown} over the file {target}")
        target.mkdir(mode=0o700, exist_ok=True)
        _out_contents(root, fd, target, st.st_dev, shown, done)
        os.chmod(target, mode)
    elif stat.S_ISREG(st.st_mode):
        _out_file(fd, target, mode, shown, done)
    else:
        done.skipped.append(f"{shown}: a device node, FIFO or socket is not copied")


def _out_contents(root: _Root, fd: int, target: Path, device: int, shown: str, done: Copied) -> None:
    # (fd may be O_PATH: the same directory, reopened through its fd's magic link, to be read)
    listing = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in sorted(os.listdir(listing)):
            child = open_beneath(listing, name, os.O_PATH)
            try:
                st = os.fstat(child)
                if st.st_dev != device and not stat.S_ISLNK(st.st_mode):
                    done.skipped.append(f"{shown.rstrip('/')}/{name}: another file system (a mount), not copied")
                    continue
                _out_entry(root, child, listing, target / name, st, f"{shown.rstrip('/')}/{name}", done)
            finally:
                os.close(child)
    finally:
        os.close(listing)


def _out_file(fd: int, target: Path, mode: int, shown: str, done: Copied) -> None:
    src = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # (that very inode)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):  # swapped for something else since it was looked at
            done.skipped.append(f"{shown}: changed while copied, not copied")
            return
        _clear(target)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(src, CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
                done.bytes += len(chunk)
            os.fchmod(out, mode)
        finally:
            os.close(out)
        done.files += 1
    finally:
        os.close(src)


def _clear(target: Path) -> None:
    """A file or symlink at ``target`` goes first (a copy replaces it, as docker's does); a directory stays."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()


def copy_in(root: _Root, src: Path, path: str, keep_owners: bool = False) -> Copied:
    """``cp SRC CONTAINER:PATH``: into PATH if it is a directory there, else as PATH (its parent must exist)."""
    done = Copied()
    root.check_path(path)
    try:
        st = os.lstat(src)
    except OSError as exc:
        raise ContainerError(f"cp: {src}: {_why(exc)}") from None
    contents = str(src).endswith("/.")
    try:
        into = root.open(path, os.O_RDONLY | os.O_DIRECTORY, follow=True)
        parent, name = into, (None if contents else src.name)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise ContainerError(f"cp: {root.name}:{path}: {_why(exc)}") from None
        head, _, name = path.rstrip("/").rpartition("/")
        try:
            parent = root.open(head or "/", os.O_RDONLY | os.O_DIRECTORY, follow=True)
        except OSError as exc2:
            raise ContainerError(f"cp: {root.name}:{head or '/'}: {_why(exc2)}") from None
    try:
        if name is None:  # SRC/. into an existing directory: the contents
            _in_contents(root, src, parent, keep_owners, done)
        else:
            _in_entry(root, src, st, parent, name, keep_owners, done)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ContainerError(f"cp: the container {root.name}'s disk is full") from None
        raise ContainerError(f"cp: {root.name}:{path}: {_why(exc)}") from None
    finally:
        os.close(parent)
    return done


def _owner(root: _Root, st: os.stat_result, keep: bool) -> tuple[int, int]:
    if not keep:
        return root.owner
    uid, gid = (st.st_uid if st.st_uid < 65536 else 65534), (st.st_gid if st.st_gid < 65536 else 65534)
    return root.base + uid, root.gbase + gid  # (an id past the container's range: nobody)


def _in_entry(root: _Root, src: Path, st: os.stat_result, parent: int, name: str, keep: bool, done: Copied) -> None:
    uid, gid = _owner(root, st, keep)
    if stat.S_ISLNK(st.st_mode):
        _unlink_non_dir(parent, name)
        os.symlink(os.readlink(src), name, dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        done.files += 1
    elif stat.S_ISDIR(st.st_mode):
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        sub = open_beneath(parent, name, os.O_RDONLY | os.O_DIRECTORY)  # (a symlink there: ELOOP, not followed)
        try:
            os.fchown(sub, uid, gid)
            _in_contents(root, src, sub, keep, done)
            os.fchmod(sub, stat.S_IMODE(st.st_mode))
        finally:
            os.close(sub)
    elif stat.S_ISREG(st.st_mode):
        _unlink_non_dir(parent, name)
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=parent)
        try:
            with open(src, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view):]
                    done.bytes += len(chunk)
            os.fchown(out, uid, gid)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
        finally:
            os.close(out)
        done.files += 1
    else:
        done.skipped.append(f"{src}: a device node, FIFO or socket is not copied into a container")


def _in_contents(root: _Root, src: Path, into: int, keep: bool, done: Copied) -> None:
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        _in_entry(root, Path(entry.path), entry.stat(follow_symlinks=False), into, entry.name, keep, done)


def _unlink_non_dir(parent: int, name: str) -> None:
    """A file or symlink in the way goes (a copy replaces it); a directory in the way is an error."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way", name)
    os.unlink(name, dir_fd=parent)


class _Copying(Room):
    """``cp`` (mixed into Containers)."""

    def copy_from(self, ref: str, path: str, dest: str | os.PathLike[str], *, follow: bool = False) -> Copied:
        """``cp CONTAINER:PATH DEST``, of a running container or a stopped one."""
        return self._copy(ref, "out", path, str(dest), follow)

    def copy_to(self, ref: str, src: str | os.PathLike[str], path: str, *, keep_owners: bool = False) -> Copied:
        """``cp SRC CONTAINER:PATH`` into a running or a stopped container; the copies are its root's
        (``keep_owners``: the files' own ids, as the container sees them)."""
        return self._copy(ref, "in", str(src), path, keep_owners)

    def _copy(self, ref: str, direction: str, *args: object) -> Copied:
        """One copy, with the container's root: a running one's (through its PID 1), or a stopped one's overlay
        while its lock is held (a start waits until the copy is done). A user who is not root copies in its
        namespace (inside.py): the container's files are ids of its range, and its overlay mounts there only."""
        cdir = self._find(ref)
        state = self._reconcile(cdir)
        if state is not None and state.status in (RUNNING, PAUSED, STARTING):
            return inside.run(_copy_at, ("running", state.pid1(), cdir.record()), direction, args)
        with cdir.locked() as locked:
            if locked.status in (RUNNING, PAUSED, STARTING):  # (started meanwhile)
                raise ContainerError(f"cp: container {ref} started while cp looked at it: try again")
            record = cdir.record()
            links, names = self.store.short_links(record.lowerdirs)
            upper, work = cdir.layer()  # (its disk attached, if it has one)
            stopped = (links, names, upper, work, record, userns_keeper.rootless())
            return inside.run(_copy_at, ("stopped", stopped), direction, args)


def _copy_at(where: tuple[object, ...], direction: str, args: tuple[object, ...]) -> Copied:
    """Open the container's root as ``where`` says, copy (``copy_out`` or ``copy_in`` with ``args``), close."""
    if where[0] == "running":
        root = _Root.of_running(where[1], where[2])  # type: ignore[arg-type]
    else:
        links, names, upper, work, record, rootless = where[1]  # type: ignore[misc]
        if rootless:  # (a mount namespace of the user's own: overlay may be mounted there)
            syscalls.unshare(syscalls.CLONE_NEWNS)
        root = _Root.of_stopped(links, names, upper, work, record, rootless)
    try:
        if direction == "out":
            path, dest, follow = args
            return copy_out(root, str(path), Path(str(dest)), bool(follow))
        src, path, keep = args
        return copy_in(root, Path(str(src)), str(path), bool(keep))
    finally:
        root.close()
