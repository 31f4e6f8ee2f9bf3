"""Property-based fuzzing of the layer extractor (``extract_layer`` / ``apply_layer``).

Two generators feed the same properties:

* structured layers: 1-30 tar entries of every type, with hostile names (``..``,
  ``.wh.`` forms, 300-byte components, deep nesting, leading ``/``), link targets
  into an "outside" sibling directory (absolute, relative, ``/proc/self/root``),
  odd modes, owners, times and pax xattrs, as GNU, PAX or ustar tars, plain,
  gzip or zstd (one or two members/frames);
* raw bytes: small valid layers with bits flipped, bytes inserted or deleted,
  header fields overwritten (checksums optionally repaired so the parser goes
  deeper), or the compressed stream mangled or truncated.

Properties, for ``extract_layer`` into a fresh directory and for ``apply_layer``
onto a pre-seeded tree (which holds symlinks pointing outside), each resolving
parents with openat2(RESOLVE_IN_ROOT) or with its fallback for old kernels, and
run under the usual default soft RLIMIT_NOFILE of 1024:

* the call returns or raises ``LayerError``: any other exception is a bug;
* nothing outside the target changes: every sibling "outside" directory (three
  levels of them, seeded with sentinels) and everything else in the per-example
  sandbox keeps its paths, types, modes, owners, sizes, times, link counts,
  content hashes, symlink targets and xattrs, and nothing new appears there;
* no file descriptor leaks;
* ``extract_layer`` leaves no target behind when it raises;
* the target never holds setuid/setgid non-directories, ``security.capability``,
  ``trusted.*`` other than the overlay opaque marker, ``user.overlay.*``, device
  nodes other than 0:0 whiteouts (none at all for ``apply_layer``), or a
  hardlink to an inode outside it.

The regression tests at the end pin down the extractor bugs found while writing
this (their docstrings say what each was); all pass against the fixed extractor.
Tests that need root (chown to any uid, whiteout device nodes, removing a
partly extracted tree with read-only directories) are marked ``root``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import hashlib
import io
import math
import os
import resource
import shutil
import stat
import tarfile
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import zstandard
from fuzzing import fuzz_settings
from hypothesis import HealthCheck, Phase, given, reject
from hypothesis import strategies as st

from sandbox_kernel.runtime import syscalls
from sandbox_kernel.runtime.errors import LayerError
from sandbox_kernel.runtime.image.layers import apply_layer, extract_layer

FUZZ = fuzz_settings(
    300,
    # no explain phase: on Python 3.11 it traces every line with sys.settrace, which makes a
    # failing run (which shrinks, a few minutes at worst) much slower still
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

OPAQUE = ".wh..wh..opq"
CAP = "\x01\x00\x00\x02" + "\x00" * 16  # vfs_cap_data v2 with the effective flag: the kernel takes it
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DEEP = {"{deep1100}": "/".join(["a"] * 1100), "{deep2047}": "/".join(["a"] * 2047)}  # 2047 -> 4093 bytes

# -- the per-example sandbox ---------------------------------------------------------------------------------------
#
#   top/outside/                 sentinels, reached by "../../../outside" from a root
#   top/w/outside/               sentinels, reached by "../../outside"
#   top/w/w/outside/             THE outside sibling: its absolute path is used in link targets
#   top/w/w/new/                 extract_layer target (absent before)
#   top/w/w/existing/            apply_layer target, pre-seeded (with symlinks to the outside)

NEW = "w/w/new"
EXISTING = "w/w/existing"
ANCESTORS = frozenset({"w", "w/w"})  # their mtime/ctime/nlink change when NEW comes and goes


@dataclass(frozen=True)
class Box:
    top: str
    outside: str
    new: str
    existing: str


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def _seed_outside(path: str) -> None:
    os.makedirs(f"{path}/a/b")
    _write(f"{path}/sentinel", b"sentinel " + path.encode())
    _write(f"{path}/x", b"x")
    _write(f"{path}/a/a", b"a/a")
    _write(f"{path}/suid", b"#!/bin/sh\n", 0o4755)
    os.symlink("sentinel", f"{path}/b")
    os.mkfifo(f"{path}/p", 0o600)
    os.mkdir(f"{path}/ro")
    _write(f"{path}/ro/f", b"read-only dir")
    os.chmod(f"{path}/ro", 0o555)
    with contextlib.suppress(OSError):
        os.setxattr(f"{path}/sentinel", "user.sentinel", b"1")


def _seed_existing(path: str, outside: str) -> None:
    os.makedirs(f"{path}/a/b")
    os.mkdir(f"{path}/a/c")
    os.mkdir(f"{path}/e")
    _write(f"{path}/a/a", b"lower a/a")
    _write(f"{path}/a/b/a", b"lower a/b/a")
    _write(f"{path}/x", b"lower x")
    os.symlink(outside, f"{path}/b")  # absolute, straight at the outside dir
    os.symlink("../outside", f"{path}/c")  # relative escape
    os.symlink(f"/proc/self/root{outside}", f"{path}/d")
    os.symlink(f"{outside}/a", f"{path}/e/l")


def _onerror(func, path, _exc_info) -> None:
    """Make ``path`` and its parent writable again, then retry (a layer may leave 0o000 dirs)."""
    for victim in (os.path.dirname(path), path):
        with contextlib.suppress(OSError):
            if not os.path.islink(victim):
                os.chmod(victim, 0o700)
    with contextlib.suppress(OSError):
        func(path)


def _remove_deep(path: str) -> None:
    """``rm -rf`` for trees too deep for shutil.rmtree: iterative, one open fd at a time, back up via "..".

    (shutil.rmtree recurses per level on Python 3.11 and holds an fd per level: a 2000-level tree
    from a layer hits the recursion limit or RLIMIT_NOFILE.)
    """
    fd = os.open(path, DIR_FLAGS)
    names: list[str] = []  # the directories we are in, below ``path``
    try:
        while True:
            sub = None
            for name in os.listdir(fd):
                if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    sub = name
                    break
                os.unlink(name, dir_fd=fd)
            if sub is not None:
                os.chmod(sub, 0o700, dir_fd=fd)
                child = os.open(sub, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                names.append(sub)
                continue
            if not names:
                break
            parent = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _rmtree(path: str | os.PathLike[str]) -> None:
    try:
        shutil.rmtree(path, onerror=_onerror)
    except RecursionError:
        pass
    if os.path.lexists(path):
        _remove_deep(os.fspath(path))


@contextlib.contextmanager
def _fd_limit(soft: int = 1024) -> Iterator[None]:
    """Run with the usual default soft RLIMIT_NOFILE (1024) even where CI raised it."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(soft, old_soft) if hard == resource.RLIM_INFINITY else min(soft, old_soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


@contextlib.contextmanager
def _sandbox() -> Iterator[Box]:
    """A fresh sandbox for one example (hypothesis re-runs the test body, so no pytest tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="layers-fuzz-", ignore_cleanup_errors=True) as top:
        try:
            for sub in ("outside", "w/outside", "w/w/outside"):
                os.makedirs(f"{top}/{sub}")
                _seed_outside(f"{top}/{sub}")
            outside = f"{top}/w/w/outside"
            os.mkdir(f"{top}/{EXISTING}")
            _seed_existing(f"{top}/{EXISTING}", outside)
            yield Box(top, outside, f"{top}/{NEW}", f"{top}/{EXISTING}")
        finally:
            _rmtree(top)


# -- snapshots ------------------------------------------------------------------------------------------------------

KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    inode: tuple[int, int]
    digest: str | None
    link: str | None
    xattrs: tuple[tuple[str, bytes], ...]


def _node(dfd: int, name: str, st: os.stat_result) -> Node:
    kind = KINDS[stat.S_IFMT(st.st_mode)]
    digest = link = None
    if kind == "file":
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        with os.fdopen(fd, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    elif kind == "symlink":
        link = os.readlink(name, dir_fd=dfd)
    proc = f"/proc/self/fd/{dfd}/{name}"  # xattr calls take no dir_fd; deep paths exceed PATH_MAX
    try:
        xattrs = tuple(
            sorted((k, os.getxattr(proc, k, follow_symlinks=False)) for k in os.listxattr(proc, follow_symlinks=False))
        )
    except OSError:
        xattrs = ()
    return Node(
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_nlink,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_rdev,
        (st.st_dev, st.st_ino),
        digest,
        link,
        xattrs,
    )


def _snapshot(top: str, *, skip: frozenset[str] = frozenset(), coarse: frozenset[str] = frozenset()) -> dict[str, Node]:
    """Everything below ``top`` by relative path, without following symlinks (iterative, fd-relative)."""
    out: dict[str, Node] = {}
    top_fd = os.open(top, DIR_FLAGS)
    try:
        stack = [""]
        while stack:
            rel = stack.pop()
            dfd = os.open(rel, DIR_FLAGS, dir_fd=top_fd) if rel else top_fd
            try:
                for name in sorted(os.listdir(dfd)):
                    path = f"{rel}/{name}" if rel else name
                    if path in skip:
                        continue
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    node = _node(dfd, name, st)
                    if path in coarse:
                        node = dataclasses.replace(node, nlink=0, mtime_ns=0, ctime_ns=0)
                    out[path] = node
                    if node.kind == "dir":
                        stack.append(path)
            finally:
                if dfd != top_fd:
                    os.close(dfd)
    finally:
        os.close(top_fd)
    return out


def _assert_unchanged(before: dict[str, Node], after: dict[str, Node], what: str) -> None:
    if before == after:
        return
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = [(k, before[k], after[k]) for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    pytest.fail(f"{what} changed: added {added[:10]}, removed {removed[:10]}, changed {changed[:5]}")


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _assert_root_is_safe(root: str, *, whiteout_devices: bool, outside_inodes: set, opaque_markers: bool) -> None:
    for rel, node in _snapshot(root).items():
        if node.kind != "dir":
            assert node.inode not in outside_inodes, f"{rel!r} is a hardlink to an inode outside the root"
        if node.kind not in ("dir", "symlink"):
            assert not node.mode & (stat.S_ISUID | stat.S_ISGID), f"{rel!r} kept setuid/setgid: {oct(node.mode)}"
        if node.kind in ("chr", "blk"):
            assert whiteout_devices and node.kind == "chr" and node.rdev == 0, f"device node {rel!r} ({node})"
        assert node.kind != "sock", f"socket {rel!r}"
        for key, value in node.xattrs:
            assert key != "security.capability", f"{rel!r} got security.capability although trusted=False"
            assert not key.startswith("user.overlay."), f"{rel!r} got {key}"
            if key.startswith("trusted."):
                assert key == "trusted.overlay.opaque", f"{rel!r} got {key}"
                assert node.kind == "dir" and value == b"y", f"{rel!r}: opaque {value!r} on a {node.kind}"
                assert opaque_markers, f"{rel!r} is opaque but the layer had no {OPAQUE} entry"


_UNEXPECTED: dict[str, type[AssertionError]] = {}


def _call(fn, *args, valid: bool = False):
    """``fn(*args)``, or None if it raised LayerError (a failure if ``valid``); anything else fails the test.

    The failure is raised as a short ``Unexpected<Type>`` (one class per original type, so
    hypothesis reports distinct bugs separately) with the last frames only: pytest takes minutes
    to format the ~2000-frame traceback of a RecursionError. It is raised outside the ``except``
    block so that it has no ``__context__``: a RecursionError from recursing in an ``except``
    block chains ~2000 exceptions, and hypothesis itself overflows walking such a chain.
    """
    try:
        return fn(*args)
    except LayerError as exc:
        if not valid:
            return None
        failure = AssertionError(f"{fn.__name__} refused a valid layer: {_short(exc)}")
    except Exception as exc:
        name = type(exc).__name__
        kind = _UNEXPECTED.setdefault(name, type(f"Unexpected{name}", (AssertionError,), {}))
        frames = "".join(traceback.format_tb(exc.__traceback__, limit=-6))
        failure = kind(f"{fn.__name__} raised {name}, not LayerError: {_short(exc)}\n{frames}")
    raise failure


def _short(exc: BaseException) -> str:
    text = str(exc)  # entry names can be 4 KB long
    return text if len(text) <= 300 else f"{text[:150]}...{text[-120:]}"


@dataclass
class Outcome:
    extracted: object | None  # ExtractResult, or None after LayerError
    applied: object | None


RESOLUTIONS = ["openat2", "walk"]


@contextlib.contextmanager
def _resolution(how: str) -> Iterator[None]:
    """``walk``: make the extractor use its fallback for kernels without openat2 (O_NOFOLLOW walks)."""
    if how == "openat2":
        yield
        return
    with mock.patch.object(syscalls, "have_openat2", lambda: False):
        yield


def _exercise(box: Box, stream: bytes, *, opaque_markers: bool = True) -> Outcome:
    """Run both entry points on ``stream`` and check every containment property."""
    protected = frozenset({NEW, EXISTING})
    sandbox_before = _snapshot(box.top, skip=protected, coarse=ANCESTORS)
    outside_inodes = {n.inode for n in sandbox_before.values() if n.kind != "dir"}

    # extract_layer into a fresh directory
    existing_before = _snapshot(box.existing)
    fds = _open_fds()
    with _fd_limit():
        extracted = _call(extract_layer, io.BytesIO(stream), box.new)
    assert _open_fds() == fds, "extract_layer leaked file descriptors"
    _assert_unchanged(sandbox_before, _snapshot(box.top, skip=protected, coarse=ANCESTORS), "sandbox outside the root")
    _assert_unchanged(existing_before, _snapshot(box.existing), "the other root (apply target)")
    if extracted is None:
        assert not os.path.lexists(box.new), "extract_layer raised but left its target behind"
    else:
        _assert_root_is_safe(
            box.new, whiteout_devices=True, outside_inodes=outside_inodes, opaque_markers=opaque_markers
        )

    # apply_layer onto the pre-seeded tree
    new_before = _snapshot(box.new) if extracted is not None else None
    fds = _open_fds()
    with _fd_limit():
        applied = _call(apply_layer, io.BytesIO(stream), box.existing)
    assert _open_fds() == fds, "apply_layer leaked file descriptors"
    _assert_unchanged(sandbox_before, _snapshot(box.top, skip=protected, coarse=ANCESTORS), "sandbox outside the root")
    if new_before is not None:
        _assert_unchanged(new_before, _snapshot(box.new), "the other root (extract target)")
    else:
        assert not os.path.lexists(box.new)
    # apply cannot roll back, so check what it left either way
    _assert_root_is_safe(box.existing, whiteout_devices=False, outside_inodes=outside_inodes, opaque_markers=False)
    return Outcome(extracted, applied)


# -- building tars ----------------------------------------------------------------------------------------------------


def _expand(text: str, outside: str) -> str:
    for token, value in DEEP.items():
        text = text.replace(token, value)
    return text.replace("{out_rel}", outside.lstrip("/")).replace("{out}", outside)


def _compress(raw: bytes, compression: str) -> bytes:
    half = len(raw) // 2
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "gzip-multi":  # two gzip members back to back
        return gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    if compression == "zstd-multi":  # two frames
        cctx = zstandard.ZstdCompressor()
        return cctx.compress(raw[:half]) + cctx.compress(raw[half:])
    return raw


COMPRESSIONS = ["none", "gzip", "gzip-multi", "zstd", "zstd-multi"]
FORMATS = [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]  # pax: xattrs


@dataclass(frozen=True)
class Entry:
    kind: str  # dir file symlink hardlink fifo chr blk whiteout opaque
    name: str  # may hold {out}, {out_rel}, {deepN} placeholders, expanded per example
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 0
    data: bytes = b""
    xattrs: tuple[tuple[str, str], ...] = ()
    dev: tuple[int, int] = (0, 0)
    wtype: bytes = tarfile.REGTYPE  # the tar type a whiteout/opaque marker is stored as


TYPES = {
    "dir": tarfile.DIRTYPE,
    "file": tarfile.REGTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def _tarinfo(entry: Entry, outside: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(_expand(entry.name, outside))
    info.type = TYPES.get(entry.kind, entry.wtype)
    info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, entry.mtime
    info.uname = info.gname = ""
    info.linkname = _expand(entry.link, outside) if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    info.devmajor, info.devminor = entry.dev
    info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs}
    if not math.isfinite(entry.mtime):  # tarfile cannot write these itself; a pax record can carry them
        info.mtime = 0
        info.pax_headers["mtime"] = str(entry.mtime)
    data = None
    if info.type == tarfile.REGTYPE:
        data = entry.data if entry.kind == "file" else b""
        info.size = len(data)
    return info, data


def _build_tar(entries: list[Entry], outside: str, fmt: int) -> bytes | None:
    """The uncompressed tar, in ``fmt`` or else PAX (GNU/ustar cannot hold every field); None if neither can."""
    for form in dict.fromkeys((fmt, tarfile.PAX_FORMAT)):
        buf = io.BytesIO()
        try:
            with tarfile.open(fileobj=buf, mode="w", format=form) as tf:
                for entry in entries:
                    info, data = _tarinfo(entry, outside)
                    tf.addfile(info, io.BytesIO(data) if data is not None else None)
        except (ValueError, TypeError, OverflowError, tarfile.TarError):
            continue
        return buf.getvalue()
    return None


# -- the structured strategy ------------------------------------------------------------------------------------------

COMPONENTS = [
    "..", ".", "", "a", "b", "c", "x", "outside",
    ".wh.", ".wh..", ".wh...", ".wh.a", ".wh.b", OPAQUE, ".wh..wh.plnk",
    "L" * 300, "M" * 255, "é", "\udcff",  # undecodable byte 0xff, kept by surrogateescape
]  # fmt: skip
# what a well-behaved layer uses: most entries are drawn from these, so that layers get applied far
# enough for their entries to interact (a refused entry ends the layer)
SAFE_COMPONENTS = ["", ".", "a", "b", "c", "x", "e", "outside", ".wh..wh.plnk", "M" * 255, "é", "\udcff"]
PREFIXES = ["", "", "/", "./", "//", "/./"]


@st.composite
def names(draw, hostile: bool = True) -> str:
    parts = draw(st.lists(st.sampled_from(COMPONENTS if hostile else SAFE_COMPONENTS), min_size=1, max_size=4))
    if not hostile and not any(p.strip(".") for p in parts):
        parts.append("a")  # not the root itself
    if draw(st.integers(0, 99)) == 99:  # deep but valid (alone): 1100 or 2047 levels of directories (slow: rare)
        parts.insert(0, draw(st.sampled_from(["{deep1100}", "{deep2047}"])))
    return draw(st.sampled_from(PREFIXES)) + "/".join(parts) + draw(st.sampled_from(["", "", "/"]))


def dir_prefixes(hostile: bool, *, root: bool = True) -> st.SearchStrategy[str]:
    """Directories for whiteouts and opaque markers; ``root=False`` leaves out the layer root itself."""
    fixed = st.sampled_from(["a/", "b/", "c/", "e/", "a/b/", "/x/", "./a/", "c/x/", "d/", "e/l/"])
    below = names(hostile).map(lambda name: name.rstrip("/") + "/")
    return st.one_of(st.just(""), fixed, below) if root else st.one_of(fixed, below)


SAFE_VICTIMS = ["a", "b", "c", "x", "e", "d", ".wh.a", "outside", "sentinel", "N" * 251]
VICTIMS = [*SAFE_VICTIMS, "", ".", "..", "N" * 252]

# link targets besides the layer's own names: the outside dir every way we can think of
TARGETS = [
    "{out}", "{out}/", "{out}/x", "{out}/sentinel", "{out}/a", "{out}/a/a", "{out}/ro/f", "{out}/p",
    "../outside", "../outside/x", "../../outside/x", "../../../outside/sentinel",
    "../" * 12 + "{out_rel}/x", "/../../..{out}", "/proc/self/root", "/proc/self/root{out}/x",
    "/proc/self/cwd", "/proc/self/fd/3", "/", ".", "..", "a", "a/a", "b/x", "b/../..",
]  # fmt: skip
BAD_TARGETS = ["", "T" * 5000]  # symlink(2) refuses them

modes = st.one_of(
    st.sampled_from([0o755, 0o644, 0o4755, 0o2755, 0o6777, 0o1777, 0o7777, 0o000, 0o555, 0o200, 0o170777]),
    st.integers(0, 0o177777),
)
SAFE_IDS = [0, 1, 1000, 65534, 2**31 - 1, 2**32 - 2]
BAD_IDS = [2**32 - 1, 2**32, 2**40, -1]  # out of range: refused
mtimes = st.one_of(
    st.sampled_from([0, 1, -1, -(2**31), 2**31, 2**33, 2**40, 2**62, 2**80, 1.5, -0.5, 1e12, 1e300]),
    st.sampled_from([float("inf"), float("-inf"), float("nan")]),
    st.integers(-(2**34), 2**34),
)
contents = st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"z" * 3000]))
SAFE_XATTR_KEYS = [
    "user.a", "user.b", "user.overlay.opaque", "trusted.overlay.opaque", "trusted.x",
    "security.capability", "security.selinux", "system.posix_acl_access", "",
]  # fmt: skip
XATTR_KEYS = [*SAFE_XATTR_KEYS, "user.", "user." + "k" * 300]
# values that fit any file system's xattr space; the hostile ones add a value too big for an ext4 inode
xattr_values = st.one_of(
    st.sampled_from(["", "y", CAP, "\udcff\udcfe", "v" * 100, "v" * 5000]),
    st.text(max_size=20),
)
safe_values = st.sampled_from(["", "y", CAP, "\udcff\udcfe", "v" * 100])
xattrs = st.one_of(
    st.tuples(st.sampled_from(XATTR_KEYS), xattr_values),
    # too big for an ext4 inode (ENOSPC), name too long (ERANGE), empty name after "user." (EINVAL)
    st.sampled_from([("user.big", "v" * 5000), ("user." + "k" * 300, "v"), ("user.", "v")]),
)
safe_xattrs = st.one_of(
    st.tuples(st.sampled_from(SAFE_XATTR_KEYS), safe_values),
    st.sampled_from([("security.capability", CAP), ("trusted.overlay.opaque", "y"), ("user.a", "1")]),
)
devices = st.tuples(st.sampled_from([0, 1, 8, 255, 4095]), st.sampled_from([0, 1, 3, 255, 2**20 - 1]))
SAFE_KINDS = [*["dir", "file", "symlink"] * 3, *["hardlink", "whiteout"] * 2, "fifo", "opaque"]
KIND_NAMES = [*SAFE_KINDS, "chr", "blk"]


@st.composite
def layer_entries(draw) -> list[Entry]:
    """1-30 entries. Each part of an entry (type, name, link, owner, xattrs) is drawn from the full
    hostile alphabet with a small chance (mostly one in twelve), else from well-behaved values: a
    refused entry ends the layer, so this keeps layers long enough for their entries to interact."""

    def hostile(one_in: int = 12) -> bool:
        return draw(st.integers(0, one_in - 1)) == one_in - 1

    n = draw(st.integers(1, 30))
    kinds = [draw(st.sampled_from(KIND_NAMES if hostile() else SAFE_KINDS)) for _ in range(n)]
    entry_names = []
    for kind in kinds:
        bad = hostile()
        if kind == "whiteout":
            victim = draw(st.sampled_from(VICTIMS if bad else SAFE_VICTIMS))
            entry_names.append(draw(dir_prefixes(bad)) + ".wh." + victim)
        elif kind == "opaque":  # of the root itself only when hostile
            entry_names.append(draw(dir_prefixes(bad, root=bad)) + OPAQUE)
        else:
            entry_names.append(draw(names(bad)))
    any_link = st.one_of(st.sampled_from(entry_names), st.sampled_from(TARGETS), names())
    bad_link = st.one_of(any_link, st.sampled_from(BAD_TARGETS))
    safe_id = st.one_of(st.sampled_from(SAFE_IDS), st.integers(0, 70_000))
    entries = []
    for i, (kind, name) in enumerate(zip(kinds, entry_names, strict=True)):
        earlier = [n for k, n in zip(kinds[:i], entry_names[:i], strict=True) if k not in ("dir", "whiteout", "opaque")]
        # a hardlink must name an earlier file of the layer: well-behaved ones mostly do
        if hostile(6):
            links = bad_link
        else:
            links = st.sampled_from(earlier) if kind == "hardlink" and earlier else any_link
        ids = st.sampled_from(SAFE_IDS + BAD_IDS) if hostile() else safe_id
        entries.append(
            Entry(
                kind=kind,
                name=name,
                link=draw(links) if kind in ("symlink", "hardlink") else "",
                mode=draw(modes),
                uid=draw(ids),
                gid=draw(ids),
                mtime=draw(mtimes),
                data=draw(contents) if kind == "file" else b"",
                xattrs=tuple(draw(st.lists(xattrs if hostile(5) else safe_xattrs, max_size=3))),
                dev=draw(devices) if kind in ("chr", "blk") else (0, 0),
                wtype=draw(st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE]))
                if kind in ("whiteout", "opaque")
                else tarfile.REGTYPE,
            )
        )
    return entries


def _is_opaque_marker(name: str) -> bool:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return bool(parts) and parts[-1] == OPAQUE


@pytest.mark.root  # chown to any uid, whiteout device nodes, and removing read-only dirs on failure
@FUZZ
@given(
    entries=layer_entries(),
    fmt=st.sampled_from(FORMATS),
    compression=st.sampled_from(COMPRESSIONS),
    resolution=st.sampled_from(RESOLUTIONS),
)
def test_structured_layers_stay_inside_the_root(
    entries: list[Entry], fmt: int, compression: str, resolution: str
) -> None:
    with _sandbox() as box, _resolution(resolution):
        raw = _build_tar(entries, box.outside, fmt)
        if raw is None:
            reject()
        markers = any(_is_opaque_marker(_expand(e.name, box.outside)) for e in entries)
        outcome = _exercise(box, _compress(raw, compression), opaque_markers=markers)
        diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        for result in (outcome.extracted, outcome.applied):
            if result is not None:
                assert result.diff_id == diff_id
                assert result.entries == len(entries)


# -- the raw-bytes strategy -------------------------------------------------------------------------------------------


def _seed(entries: list[Entry], fmt: int) -> bytes:
    raw = _build_tar(entries, "/nonexistent-outside", fmt)
    assert raw is not None
    return raw


SEEDS = [
    _seed(
        [
            Entry("dir", "a/", mode=0o755),
            Entry("file", "a/f", data=b"hello\n" * 20, mode=0o4755, uid=2**32 - 2,
                  xattrs=(("user.k", "v"), ("security.capability", CAP))),
            Entry("symlink", "a/s", link="../../outside/x"),
            Entry("hardlink", "a/h", link="a/f"),
            Entry("fifo", "p", mode=0o600),
            Entry("opaque", f"a/{OPAQUE}"),
            Entry("whiteout", "a/.wh.gone"),
            Entry("file", "a/s2", data=b"x"),
        ],
        tarfile.PAX_FORMAT,
    ),
    _seed(
        [
            Entry("file", "L" * 150, data=b"long name"),
            Entry("symlink", "s", link="/proc/self/root/../outside"),
            Entry("dir", "b/"),
            Entry("file", "b/f", data=bytes(range(256)) * 3),
            Entry("hardlink", "b/" + "H" * 120, link="L" * 150),
        ],
        tarfile.GNU_FORMAT,
    ),
    _seed([Entry("file", "./x", data=b"ustar"), Entry("dir", "x/"), Entry("chr", "x/.wh.y")], tarfile.USTAR_FORMAT),
    _seed([Entry("file", "big", data=b"B" * 700, mtime=1.5)], tarfile.PAX_FORMAT),
]  # fmt: skip
VALID_SEEDS = len(SEEDS)
SEEDS += [  # refused as they stand; a flipped byte may turn them into something else
    _seed(
        [
            Entry("dir", "d/"),
            Entry("symlink", "d/l", link="../../outside"),
            Entry("file", "d/l/pwn", data=b"through a symlink"),
            Entry("symlink", "r", link="/"),
            Entry("hardlink", "r/h", link="d/l"),
        ],
        tarfile.GNU_FORMAT,
    ),
    _seed([Entry("file", "../pwn", data=b"dotdot"), Entry("dir", "a/../../p/")], tarfile.PAX_FORMAT),
]

HEADER_FIELDS = [0, 99, 100, 108, 116, 124, 136, 148, 156, 157, 257, 263, 265, 297, 329, 337, 345]  # ustar offsets
OPS = ["flip", "set", "truncate", "insert", "delete", "field", "octal"]


def _mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, at, blob in mutations:
        n = len(buf)
        if not n:
            break
        i = at % n
        if op == "flip":
            buf[i] ^= 1 << (blob[0] % 8)
        elif op == "set":
            buf[i] = blob[0]
        elif op == "truncate":
            del buf[at % (n + 1) :]
        elif op == "insert":
            buf[i:i] = blob
        elif op == "delete":
            del buf[i : i + len(blob)]
        else:  # overwrite a header field of some 512-byte block
            start = (at // len(HEADER_FIELDS)) % max(1, n // 512) * 512 + HEADER_FIELDS[at % len(HEADER_FIELDS)]
            value = blob if op == "field" else b"%o\0" % int.from_bytes(blob, "big")
            buf[start : start + len(value)] = value
    return bytes(buf)


def _fix_checksums(data: bytes) -> bytes:
    """Recompute the checksum of every block that looks like a ustar header, so mutations get past it."""
    buf = bytearray(data)
    for start in range(0, len(buf) - 511, 512):
        block = buf[start : start + 512]
        if block[257:262] == b"ustar":
            block[148:156] = b" " * 8
            buf[start + 148 : start + 156] = b"%06o\0 " % sum(block)
    return bytes(buf)


mutations = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
    min_size=1,
    max_size=6,
)


@pytest.mark.root
@FUZZ
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    compression=st.sampled_from(COMPRESSIONS),
    where=st.sampled_from(["tar", "tar-fixed", "compressed"]),
    muts=mutations,
    resolution=st.sampled_from(RESOLUTIONS),
)
def test_mutated_layer_bytes_stay_inside_the_root(
    seed: int, compression: str, where: str, muts: list[tuple[str, int, bytes]], resolution: str
) -> None:
    raw = SEEDS[seed]
    if where == "compressed":
        stream = _mutate(_compress(raw, compression), muts)
    else:
        tar = _mutate(raw, muts)
        stream = _compress(_fix_checksums(tar) if where == "tar-fixed" else tar, compression)
    with _sandbox() as box, _resolution(resolution):
        _exercise(box, stream)


@pytest.mark.root
def test_seeds_are_valid_layers() -> None:
    """The raw-bytes fuzzing starts from layers the extractor accepts (else it only fuzzes the error path)."""
    with _sandbox() as box:
        for raw in SEEDS[:VALID_SEEDS]:
            for compression in COMPRESSIONS:
                if os.path.lexists(box.new):
                    _rmtree(box.new)
                extract_layer(io.BytesIO(_compress(raw, compression)), box.new)


# -- regression tests for the bugs found while writing this (see each docstring for its state) ----------------------


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied afterwards with :func:`_rmtree` (pytest's own cleanup overflows on deep trees)."""
    yield tmp_path
    for child in list(tmp_path.iterdir()):
        _rmtree(child)


def _layer(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> io.BytesIO:
    return io.BytesIO(_seed(entries, fmt))


def _deep_dirs(root: Path, depth: int) -> None:
    fd = os.open(root, DIR_FLAGS)
    for _ in range(depth):
        os.mkdir("a", dir_fd=fd)
        child = os.open("a", DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


@pytest.mark.parametrize("depth", [1100, 2047])
@pytest.mark.parametrize("entry_point", ["extract", "apply"])
def test_deeply_nested_name_is_extracted(tmp: Path, entry_point: str, depth: int) -> None:
    """A name of 1100 or 2047 components (4093 bytes: within max_path) is a valid entry.

    First version: ``_Extractor.dir_fd`` recursed once per missing parent -> RecursionError (fixed:
    ``_make_dirs`` is iterative). Second version: ``_make_dirs`` kept every level's fd open until
    the entry was done, so under the default soft RLIMIT_NOFILE of 1024 it failed with LayerError
    "cannot apply entry: Too many open files" (fixed: it holds one fd at a time; this test runs under
    that limit).
    """
    name = "/".join(["a"] * depth)
    target = tmp / "root"
    if entry_point == "apply":
        target.mkdir()
    with _fd_limit():
        _call(
            extract_layer if entry_point == "extract" else apply_layer,
            _layer([Entry("file", name, data=b"deep")]),
            target,
            valid=True,
        )
    assert _snapshot(str(target))[name].digest == hashlib.sha256(b"deep").hexdigest()


def test_refused_deep_layer_leaves_no_target(tmp: Path) -> None:
    """extract_layer promises that a rejected layer leaves nothing. First version: with a 1100-level
    directory extracted before the bad entry, the cleanup (``remove_quietly`` -> ``remove_tree``, one
    open fd per level) ran out of fds under the default soft RLIMIT_NOFILE of 1024, swallowed the error
    and left the partial tree behind (fixed: ``remove_tree`` holds two fds at a time)."""
    layer = _layer([Entry("dir", "/".join(["a"] * 1100) + "/"), Entry("hardlink", "x", link="not-in-the-layer")])
    with _fd_limit():
        assert _call(extract_layer, layer, tmp / "root") is None
    assert not os.path.lexists(tmp / "root")


def test_whiteout_of_a_deep_lower_directory(tmp: Path) -> None:
    """A whiteout of a 1500-level lower directory in apply mode.

    First version: ``_Extractor.remove`` used shutil.rmtree, which recurses per level on Python
    3.11 -> RecursionError (fixed: ``fsutil.remove_tree``). Second version: ``remove_tree`` held one
    fd per level, so under the default soft RLIMIT_NOFILE of 1024 it was LayerError "Too many open
    files" and the directory stayed (fixed: two fds at a time, the path reopened from the top).
    """
    root = tmp / "root"
    root.mkdir()
    _deep_dirs(root, 1500)
    with _fd_limit():
        _call(apply_layer, _layer([Entry("whiteout", ".wh.a")]), root, valid=True)
    assert not os.path.lexists(root / "a")


@pytest.mark.root
def test_oversized_user_xattr_is_a_layer_error(tmp: Path) -> None:
    """A 5000-byte user.* pax xattr does not fit an ext4 inode, and setxattr fails with ENOSPC.
    First version: ``set_xattrs`` re-raised it and ``_apply_stream`` passes ENOSPC through as a bare
    OSError (meant for a full disk), so a layer could make the extractor raise something other than
    LayerError (fixed: rule "xattr"). On file systems that take the value (tmpfs) it extracts."""
    (tmp / "probe").mkdir()
    probe = tmp / "probe" / "file"
    probe.write_bytes(b"")
    try:  # what this file system does with such a value, asked directly
        os.setxattr(probe, "user.big", b"v" * 5000)
        fits = True
    except OSError as exc:
        assert exc.errno in (errno.ENOSPC, errno.E2BIG), exc
        fits = False
    layer = _layer([Entry("file", "f", data=b"x", xattrs=(("user.big", "v" * 5000),))])
    if fits:
        _call(extract_layer, layer, tmp / "root", valid=True)
        assert os.getxattr(tmp / "root" / "f", "user.big") == b"v" * 5000
    else:
        with pytest.raises(LayerError) as info:
            extract_layer(layer, tmp / "root")
        assert info.value.rule == "xattr", str(info.value)


DIR_REPLACED = [Entry("dir", "a/"), Entry("dir", "a/b/"), Entry("file", "a/b/c", data=b"c")]


@pytest.mark.root
@pytest.mark.parametrize(
    ("replacement", "kind"),
    [
        (Entry("file", "a/b", data=b"now a file"), "file"),
        (Entry("symlink", "a/b", link="c"), "symlink"),
        (Entry("fifo", "a/b"), "fifo"),
        (Entry("whiteout", "a/.wh.b"), "chr"),
    ],
    ids=["file", "symlink", "fifo", "whiteout"],
)
def test_replacing_a_directory_below_the_root(tmp: Path, replacement: Entry, kind: str) -> None:
    """First version: ``_Extractor.remove`` of a directory called ``_forget_dirs``, which closed every
    cached dir fd, including the ``parent`` fd its caller (``_create``/``make_dir``) used next: EBADF,
    LayerError "cannot apply entry: Bad file descriptor" for a valid layer (fixed: ``retired`` fds)."""
    extract_layer(_layer([*DIR_REPLACED, replacement]), tmp / "root")
    assert _snapshot(str(tmp / "root"))["a/b"].kind == kind


@pytest.mark.root
def test_apply_replaces_a_lower_directory_with_a_symlink(tmp: Path) -> None:
    """The same EBADF when flattening an image whose upper layer turns a lower directory into a symlink."""
    (tmp / "usr/lib/x").mkdir(parents=True)
    (tmp / "usr/lib/x/f").write_bytes(b"lower")
    apply_layer(_layer([Entry("symlink", "usr/lib/x", link="y")]), tmp)
    assert os.readlink(tmp / "usr/lib/x") == "y"


@pytest.mark.root
def test_apply_opaque_directory_with_several_lower_subdirectories(tmp: Path) -> None:
    """The same EBADF: ``opaque`` in apply mode removed the second child through the fd the first
    removal had closed."""
    for sub in ("d/x", "d/y"):
        (tmp / sub).mkdir(parents=True)
    apply_layer(_layer([Entry("opaque", f"d/{OPAQUE}"), Entry("file", "d/z", data=b"z")]), tmp)
    assert sorted(os.listdir(tmp / "d")) == ["z"]
