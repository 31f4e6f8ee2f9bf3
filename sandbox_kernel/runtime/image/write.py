"""Deterministic writing of a layer tar from a directory tree (an overlay upper dir, or a built rootfs)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .. import idmap as idmap_mod
from ..errors import LayerError
from ..fsutil import open_beneath, stat_beneath
from .layerformat import (
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    Compression,
)

if TYPE_CHECKING:
    from ..idmap import IdMap
from .compression import _Background, _gzip_writer
from .extract import ExtractLimits


@dataclass(frozen=True)
class WrittenLayer:
    digest: str  # of the bytes written (compressed)
    diff_id: str  # of the uncompressed tar
    size: int  # compressed size
    media_type: str

    def descriptor(self) -> dict[str, object]:
        """The manifest's entry for this layer."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: IO[bytes]):
        self._out = out
        self.sha = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.count += len(data)
        self._out.write(data)
        return len(data)





def iter_tree(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path below ``root`` in a stable order (parents before children), never through a symlink.

    Each directory is opened beneath ``root`` with no symlink on the way
    (fsutil.open_beneath) and its entries are stat'ed relative to it, so a
    directory swapped for a symlink meanwhile (a running container's upper
    dir) fails to open instead of listing what it points to.
    """
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        stack = [""]
        while stack:
            rel = stack.pop()
            fd = open_beneath(top, rel, os.O_RDONLY | os.O_DIRECTORY)
            try:
                with os.scandir(fd) as it:
                    entries = sorted((entry.name, entry.stat(follow_symlinks=False)) for entry in it)
            finally:
                os.close(fd)
            for name, st in reversed(entries):
                child = f"{rel}/{name}" if rel else name
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)
                yield child, st
    finally:
        os.close(top)


class _Beneath:
    """Reads entries of a tree by their relative paths without following a symlink on the way.

    Each entry is reached through its parent directory, opened beneath the
    root (the last parent is kept: entries come sorted by path).
    """

    def __init__(self, root: Path):
        self.top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.head: str | None = None
        self.fd = -1

    def parent(self, rel: str) -> tuple[int, str]:
        head, _, name = rel.rpartition("/")
        if head != self.head:
            if self.fd >= 0:
                os.close(self.fd)
            self.fd, self.head = -1, None
            self.fd = open_beneath(self.top, head, os.O_RDONLY | os.O_DIRECTORY)
            self.head = head
        return self.fd, name

    def path(self, rel: str) -> str:
        """A path to ``rel`` whose every directory is ours already (for the xattr calls: no ``*at`` forms)."""
        fd, name = self.parent(rel)
        return f"/proc/self/fd/{fd}/{name}"

    def open(self, rel: str) -> int:
        fd, name = self.parent(rel)
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)

    def readlink(self, rel: str) -> str:
        fd, name = self.parent(rel)
        return os.readlink(name, dir_fd=fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        os.close(self.top)


def lower_fds(lowers: Sequence[str | os.PathLike[str]]) -> list[int]:
    """O_PATH fds of layer directories (close them with :func:`close_all`)."""
    fds: list[int] = []
    try:
        for lower in lowers:
            fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except BaseException:
        close_all(fds)
        raise
    return fds


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def write_layer(
    source: str | os.PathLike[str],
    out: IO[bytes],
    *,
    compression: Compression = "gzip",
    epoch: int | None = 0,
    skip: Callable[[str, os.stat_result], bool] | None = None,
    clamp: int | None = None,
    overlay_lowers: Sequence[Path] | None = None,
    idmap: IdMap | None = None,
    limits: ExtractLimits = ExtractLimits(),
) -> WrittenLayer:
    """Write ``source`` as a reproducible layer tar into ``out``.

    Entries are sorted, owner names cleared, times set to ``epoch`` (or kept
    when ``epoch`` is None; ``clamp``: kept but never later than it), hardlinks
    kept, device nodes and sockets left out (the engine makes its own
    ``/dev``). The same tree gives the same bytes.

    ``overlay_lowers``: ``source`` is an overlay upper dir over these layer
    dirs (top first), and the layer says what overlay says: a whiteout (a
    0:0 character device) becomes ``.wh.NAME``, an opaque directory gets
    ``.wh..wh..opq`` right after it when a lower layer has that directory.

    ``idmap``: ``source`` holds a container's files as the host sees them;
    the layer gets the container's own owners (and file capabilities), and an
    owner outside the map is a :class:`LayerError` (rule ``owner``).

    Nothing is read through a symlink (a running container could swap a
    directory for one), and a tree past ``limits`` (the entries and bytes a
    layer may hold when it is unpacked: a 16 TB sparse file) is refused,
    rule ``entries`` or ``bytes``, before anything is written.
    """
    root = Path(source)
    sink = _HashingWriter(out)
    if compression == "gzip":
        compressor: IO[bytes] = _gzip_writer(sink)
    elif compression == "zstd":
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False)  # type: ignore[assignment]
    else:
        compressor = sink  # type: ignore[assignment]
    background = _Background(compressor) if compressor is not sink else None
    tar_sink = _HashingWriter(background or compressor)
    try:
        _write_entries(root, tar_sink, epoch, clamp, skip, overlay_lowers, idmap, limits)
    except BaseException:
        if background is not None:
            background.abandon()
        raise
    if background is not None:
        background.finish()
    if compressor is not sink:
        compressor.close()
    media = {
        "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
        "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
        "none": "application/vnd.oci.image.layer.v1.tar",
    }[compression]
    return WrittenLayer(f"sha256:{sink.sha.hexdigest()}", f"sha256:{tar_sink.sha.hexdigest()}", sink.count, media)


def check_size(entries: Sequence[tuple[str, os.stat_result]], limits: ExtractLimits) -> None:
    """Refuse a tree with more entries or file bytes than a layer may hold (hard links counted once)."""
    if len(entries) > limits.max_entries:
        raise LayerError(f"more than {limits.max_entries} entries", rule="entries")
    total, seen = 0, set()
    for rel, st in entries:
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
            if total > limits.max_bytes:
                raise LayerError(f"more than {limits.max_bytes >> 30} GiB of files ({st.st_size} bytes in this one)",
                                 entry=rel, rule="bytes")


def _write_entries(root: Path, tar_sink: IO[bytes], epoch: int | None, clamp: int | None,
                   skip: Callable[[str, os.stat_result], bool] | None, overlay_lowers: Sequence[Path] | None,
                   idmap: IdMap | None = None, limits: ExtractLimits = ExtractLimits()) -> None:
    """The tar stream of ``root`` (see :func:`write_layer`)."""
    inodes: dict[tuple[int, int], str] = {}
    entries = sorted(iter_tree(root), key=lambda item: item[0])
    check_size(entries, limits)
    tree = _Beneath(root)
    lowers = lower_fds(overlay_lowers or ())
    try:
        _write_tar(tree, entries, lowers, tar_sink, epoch, clamp, skip, overlay_lowers is not None, idmap, inodes)
    finally:
        close_all(lowers)
        tree.close()


def _write_tar(tree: _Beneath, entries: list[tuple[str, os.stat_result]], lowers: list[int], tar_sink: IO[bytes],
               epoch: int | None, clamp: int | None, skip: Callable[[str, os.stat_result], bool] | None,
               overlay: bool, idmap: IdMap | None, inodes: dict[tuple[int, int], str]) -> None:
    with tarfile.open(fileobj=tar_sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        for rel, st in entries:
            if skip is not None and skip(rel, st):
                continue
            mtime = epoch if epoch is not None else int(st.st_mtime)
            if clamp is not None:
                mtime = min(mtime, clamp)
            if overlay and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                head, _, name = rel.rpartition("/")
                tf.addfile(_marker(f"{head}/{WHITEOUT_PREFIX}{name}" if head else f"{WHITEOUT_PREFIX}{name}", mtime))
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            if idmap is not None:
                try:
                    info.uid, info.gid = idmap.to_container(st.st_uid, st.st_gid)
                except ValueError as exc:
                    raise LayerError(str(exc), entry=rel, rule="owner") from None
            info.uname = info.gname = ""
            info.mtime = mtime
            full = tree.path(rel)
            xattrs = _read_xattrs(full, st, idmap)
            if isinstance(xattrs, str):
                raise LayerError(xattrs, entry=rel, rule="xattr")
            if xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                if overlay and _opaque(full) and any(_is_dir(stat_beneath(fd, rel)) for fd in lowers):
                    tf.addfile(_marker(f"{rel}/{WHITEOUT_OPAQUE}", mtime))  # before the directory's own entries
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = tree.readlink(rel)
                tf.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tf.addfile(info)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in inodes:
                info.type = tarfile.LNKTYPE
                info.linkname = inodes[(st.st_dev, st.st_ino)]
                tf.addfile(info)
            else:
                if st.st_nlink > 1:
                    inodes[(st.st_dev, st.st_ino)] = rel
                info.size = st.st_size
                with os.fdopen(tree.open(rel), "rb") as fh:
                    tf.addfile(info, fh)


def _is_dir(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISDIR(st.st_mode)


def _marker(name: str, mtime: int) -> tarfile.TarInfo:
    """An empty entry that only means something by its name (a whiteout or the opaque marker)."""
    info = tarfile.TarInfo(name)
    info.mode = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    return info


def _opaque(path: str | Path) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _read_xattrs(path: str | Path, st: os.stat_result, idmap: IdMap | None = None) -> dict[str, str] | str:
    """The xattrs a layer carries (file capabilities as the container's namespace wrote them, see
    idmap.caps_to_container); a string says why one cannot be carried."""
    if stat.S_ISLNK(st.st_mode):
        return {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if (name.startswith("user.") and not name.startswith("user.overlay.")) or name == "security.capability":
            try:
                raw = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
            if name == "security.capability" and idmap is not None:
                try:
                    raw = idmap_mod.caps_to_container(raw, idmap)
                except ValueError as exc:
                    return str(exc)
            out[name] = raw.decode("utf-8", "surrogateescape")
    return out
