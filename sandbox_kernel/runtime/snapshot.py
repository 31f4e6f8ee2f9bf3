"""Snapshots: a container's changes as a new image layer (``commit``), and the list of them (``diff``).

A container's changes are its overlay upper dir. ``commit`` writes it as one
layer over the container's image: overlay's whiteouts (0:0 character
devices) become ``.wh.NAME`` entries and its opaque directories a
``.wh..wh..opq`` entry (layers.write_layer). The layer is reproducible:
entries sorted, numeric owners with empty names, a fixed gzip header, and
every time clamped to ``SOURCE_DATE_EPOCH`` when it is set, else to the
image's own creation time; the new config's ``created`` and history entry
take the same time. So the same changes from the same image give the same
layer, config and manifest digests: a notebook's snapshot can be made again.

A running container is frozen (cgroup freezer) while its upper dir is read,
so that the layer is one consistent moment, then thawed; it keeps running on
its own upper dir.

Owners are written as the container sees them: the upper dir of a container
with a user namespace holds host ids of its range, which become its own ids
again (and its file capabilities the form host root would write), so the
same steps give the same layer with and without a user namespace. A file
whose owner is outside the range is an error, never a wrong owner.
"""

from __future__ import annotations

import calendar
import contextlib
import copy
import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import inside
from .errors import ContainerError, LayerError, SandboxError, StoreError
from .fsutil import open_beneath
from .image.layers import Compression, ExtractLimits, WrittenLayer, close_all, iter_tree, lower_fds, write_layer
from .image.ref import parse_reference
from .image.store import Image, Store

if TYPE_CHECKING:
    from .idmap import IdMap
    from .record import ContainerRecord
    from .state import ContainerDir

Frozen = contextlib.AbstractContextManager[Any]  # holds the container still while its files are read


@dataclass(frozen=True)
class Change:
    """One path the container changed, as ``docker diff`` shows it: ``A``dded, ``C``hanged, ``D``eleted."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _in_lowers(rel: str, lowers: list[int]) -> bool:
    """Whether the image (the fds of its layer dirs, top first) has ``rel``: the topmost layer that names it
    (or hides it: a file, a symlink or a whiteout where a parent directory would be) decides. Nothing is
    looked up through a symlink of a layer."""
    head, _, name = rel.rpartition("/")
    for lower in lowers:
        try:
            parent = open_beneath(lower, head, os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                return False  # this layer has something else where the parent would be
            raise
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            return False
        finally:
            os.close(parent)
        return not _whiteout(st)
    return False


def _skipper(lowers: list[int], mount_points: frozenset[str] | set[str]) -> Callable[[str, os.stat_result], bool]:
    """Leave out the mount points the runtime itself made in the upper dir (/etc/hosts and the like, volume
    targets): they are not the container's changes. A path the image has was copied up, and stays."""

    def skip(rel: str, st: os.stat_result) -> bool:
        return rel in mount_points and not _in_lowers(rel, lowers)

    return skip


def diff(upper: Path, lowers: list[Path], mount_points: frozenset[str] | set[str] = frozenset(),
         limits: ExtractLimits = ExtractLimits()) -> list[Change]:
    """The changes an upper dir holds over ``lowers`` (top first), in path order.

    ``mount_points`` (relative paths) are the runtime's, not the container's;
    a directory the image has is listed as changed only when something in it is.
    More entries than a layer may hold is an error (rule ``entries``).
    """
    entries = sorted(iter_tree(upper), key=lambda item: item[0])
    if len(entries) > limits.max_entries:
        raise LayerError(f"more than {limits.max_entries} entries", rule="entries")
    fds = lower_fds(lowers)
    try:
        skip = _skipper(fds, mount_points)
        changes: list[tuple[Change, os.stat_result]] = []
        for rel, st in entries:
            if skip(rel, st):
                continue
            kind = "D" if _whiteout(st) else "C" if _in_lowers(rel, fds) else "A"
            changes.append((Change(kind, "/" + rel), st))
    finally:
        close_all(fds)
    # a directory copied up only to hold a mount point (/etc for /etc/hosts) changed nothing
    parents = {change.path.rsplit("/", depth)[0] for change, _ in changes for depth in range(1, change.path.count("/"))}
    return [change for change, st in changes
            if not (change.kind == "C" and stat.S_ISDIR(st.st_mode) and change.path not in parents)]


def diff_container(cdir: ContainerDir, record: ContainerRecord, frozen: Frozen) -> list[Change]:
    """``docker diff``: the container's changes, read while ``frozen`` holds it still (as commit reads them)."""
    try:
        with frozen:
            # (a user who is not root: its files belong to ids of the user's range, read in its namespace)
            return inside.run(diff, cdir.layer()[0], [Path(p) for p in record.lowerdirs], record.mount_points())
    except LayerError as exc:
        raise ContainerError(f"cannot diff container {record.name}: {exc}") from None


def _write_upper(upper: Path, lowers: list[Path], mount_points: frozenset[str] | set[str], compression: Compression,
                 clamp: int, idmap: IdMap | None, out_fd: int) -> WrittenLayer:
    """The upper dir over ``lowers`` (top first) as a layer, written to ``out_fd`` (left open)."""
    fds = lower_fds(lowers)
    try:
        with os.fdopen(os.dup(out_fd), "wb") as out:
            return write_layer(upper, out, compression=compression, epoch=None, clamp=clamp, overlay_lowers=lowers,
                               skip=_skipper(fds, mount_points), idmap=idmap)
    finally:
        close_all(fds)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


def _epoch(image: Image) -> int:
    """The time every entry and the new image get: SOURCE_DATE_EPOCH, else the image's creation time."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env:
        if not env.isdigit():
            raise SandboxError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {env!r}")
        return int(env)
    created = image.created or "1970-01-01T00:00:00Z"
    try:
        return calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0


def _rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def commit(store: Store, cdir: ContainerDir, record: ContainerRecord, frozen: Frozen, command: tuple[str, ...],
           target: str | None = None, *, message: str | None = None, created_by: str | None = None,
           compression: Compression = "gzip") -> Image:
    """Make an image of the container's changes over its image, tagged ``target`` if given; its upper dir is
    read while ``frozen`` holds the container still. ``command``: its history entry's default."""
    if target is not None:
        parse_reference(target)  # a bad name is refused before anything is written
    base = store.load_image(record.image_manifest)
    lowers = [Path(p) for p in record.lowerdirs]
    upper = cdir.layer()[0]  # (its disk mounted, if it has one)
    epoch = _epoch(base)
    with store.writing():
        tmp = store._tmp_path(".commit")
        try:
            with frozen, open(tmp, "wb", opener=_private) as out:
                # (a user who is not root: its files belong to ids of the user's range, read in its namespace)
                written = inside.run(_write_upper, upper, lowers, record.mount_points(), compression, epoch,
                                     record.idmap, fds=(out.fileno(),))
                os.fsync(out.fileno())
            store.adopt(tmp, written.digest)  # hashed while written: moved in, not copied
        except LayerError as exc:
            raise ContainerError(f"cannot commit container {record.name}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot commit container {record.name}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        new_config: dict[str, Any] = copy.deepcopy(base.config)
        new_config["created"] = _rfc3339(epoch)
        new_config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(written.diff_id)
        entry: dict[str, Any] = {"created": _rfc3339(epoch),
                                 "created_by": created_by or " ".join(command) or "sandbox-kernel commit"}
        if message:
            entry["comment"] = message
        new_config.setdefault("history", []).append(entry)
        desc = store.put_image(new_config, [*base.layers, written.descriptor()], target)
    return store.load_image(desc.digest, [target] if target else [])
