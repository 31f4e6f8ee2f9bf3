"""containerd's archive breakout corpus (``pkg/archive`` ``TestBreakouts``), ported to our layer extractor.

Every case is built in memory with ``tarfile`` the way Go's ``tartest.TarContext`` writes it: directories
get a trailing "/" appended (so ``tc.Dir("localetc/")`` becomes ``"localetc//"``), and ``Symlink``/``Link``
take ``(target, name)`` like ``ln -s``. Each case states what OUR extractor must do:

* ``("applied", check)``: the layer applies and containerd's validator (ported with a faithful
  ``root_path`` = continuity ``fs.RootPath``) passes;
* ``("rejected", rule)``: ``LayerError`` with that rule. We are stricter than containerd: names and
  hardlink targets with ``..`` are refused ("dotdot"), a non-directory naming the layer root is refused
  ("parent"), and a hardlink must name an earlier non-directory entry of the same layer
  ("hardlink-scope").

Whatever the outcome, nothing outside the root may change: each test runs in its own sandbox whose
"outside" sibling holds sentinel files, and the sandbox (minus the root) is snapshotted before and
after; the host's ``/``, ``/etc`` and ``/etc/passwd`` are watched too.

The cross-layer cases plant a symlink in layer 1 and write through it in layer 2, both flattened with
``apply_layer`` into one dir and (as root) extracted separately and mounted as a read-only overlay.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox_kernel.runtime.errors import LayerError
from sandbox_kernel.runtime.image.layers import apply_layer, extract_layer

NOW = int(time.time())  # tartest: one fixed ModTime for every entry
UID, GID = os.getuid(), os.getgid()  # tartest: WithUIDGID(os.Getuid(), os.Getgid())
OUT = "{outside}"  # placeholder for the absolute path of the sandbox's "outside" dir

Check = Callable[[Path, Path], None]  # (root, outside) -> None, raises on failure
Expect = tuple[str, object]  # ("applied", Check) or ("rejected", rule)


def subst(text: str, outside: Path) -> str:
    return text.replace(OUT, str(outside))


# -- Go path helpers (filepath.Clean / Join / Split) --------------------------------------------------------


def go_clean(path: str) -> str:
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned  # normpath keeps a leading "//"


def go_join(*elems: str) -> str:
    parts = [e for e in elems if e]
    return go_clean("/".join(parts)) if parts else ""


def go_split(path: str) -> tuple[str, str]:
    i = path.rfind("/")
    return path[: i + 1], path[i + 1 :]


# -- continuity fs.RootPath ------------------------------------------------------------------------------


def _walk_link(root: str, path: str, walked: list[int]) -> tuple[str, bool]:
    if walked[0] > 255:
        raise OSError(errno.ELOOP, "too many links")
    path = go_join("/", path)
    if path == "/":
        return path, False
    real = go_join(root, path)
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return path, False  # a path that does not exist yet is not a symlink
    if not stat.S_ISLNK(st.st_mode):
        return path, False
    walked[0] += 1
    return os.readlink(real), True


def _walk_links(root: str, path: str, walked: list[int]) -> str:
    parent, name = go_split(path)
    if parent == "":
        return _walk_link(root, name, walked)[0]
    if name == "":
        if parent == "/":
            return parent
        return _walk_links(root, parent[:-1], walked)
    newdir = _walk_links(root, parent, walked)
    newpath, islink = _walk_link(root, go_join(newdir, name), walked)
    if not islink or newpath.startswith("/"):
        return newpath
    return go_join(newdir, newpath)


def root_path(root: str, path: str) -> str:
    """``path`` resolved as if ``root`` were "/": symlinks re-rooted, ".." clamped at the root."""
    if path == "":
        return root
    walked = [0]
    while True:
        before = walked[0]
        path = _walk_links(root, path, walked)
        if before == walked[0]:
            newpath = go_join("/", path)
            if path == newpath:
                return go_join(root, newpath)
            path = newpath


# -- containerd's validators (root is joined natively, as Go's filepath.Join) -------------------------------


class FileDiff(AssertionError):
    """errFileDiff: both files exist but are different inodes."""


def _same_file(root: Path, f1: str, f2: str) -> None:
    s1 = os.stat(root_path(str(root), f1))
    s2 = os.stat(root_path(str(root), f2))
    if (s1.st_dev, s1.st_ino) != (s2.st_dev, s2.st_ino):
        raise FileDiff(f"{f1!r} and {f2!r} are not the same file")


def same_file(f1: str, f2: str) -> Check:
    return lambda root, outside: _same_file(root, f1, f2)


def not_same_file(f1: str, f2: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        try:
            _same_file(root, f1, f2)
        except FileDiff:
            return  # any other error (ENOENT...) fails the check
        raise AssertionError(f"{f1!r} and {f2!r} are the same file, expected a difference")

    return check


def is_symlink_file(f: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        st = os.lstat(go_join(str(root), f))
        assert stat.S_ISLNK(st.st_mode), f"{f} should be a symlink"

    return check


def same_symlink_file(f1: str, f2: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        is_symlink_file(f1)(root, outside)
        is_symlink_file(f2)(root, outside)
        t1, t2 = os.readlink(go_join(str(root), f1)), os.readlink(go_join(str(root), f2))
        if t1 != t2:
            raise FileDiff(f"{t1!r} and {t2!r} differ")

    return check


def file_value(f: str, content: bytes) -> Check:
    def check(root: Path, outside: Path) -> None:
        with open(go_join(str(root), f), "rb") as fh:
            assert fh.read() == content, f"{f}: content differs"

    return check


def file_not_exists(f: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        try:
            os.lstat(go_join(str(root), f))
        except FileNotFoundError:
            return
        raise AssertionError(f"{f} exists")

    return check


def all_of(*checks: Check) -> Check:
    def check(root: Path, outside: Path) -> None:
        for one in checks:
            one(root, outside)

    return check


def unbroken_check(root: Path, outside: Path) -> None:
    file_value("etc/unbroken", b"unbroken")(root, outside)


def emptied_check(root: Path, outside: Path) -> None:
    with open(go_join(str(root), "etc/emptied"), "rb") as fh:
        assert fh.read() == b"", "/etc/emptied: non-empty"


def outside_perm(name: str, perm: int) -> Check:
    """HardlinkSymlinkChmod: a file outside the root keeps its mode (the root is ignored)."""

    def check(root: Path, outside: Path) -> None:
        got = stat.S_IMODE(os.lstat(outside / name).st_mode)
        assert got == perm, f"{outside / name} perm changed from {perm:04o} to {got:04o}"

    return check


# -- strict checks for the cross-layer cases: every component must be real, no symlink followed -------------


def _real(root: Path, rel: str, outside: Path) -> Path:
    path = root
    for part in subst(rel, outside).strip("/").split("/"):
        assert not path.is_symlink(), f"{path} is a symlink"  # a missing parent is fine: then so is the path
        path = path / part
    return path


def inside_file(rel: str, content: bytes) -> Check:
    def check(root: Path, outside: Path) -> None:
        path = _real(root, rel, outside)
        assert stat.S_ISREG(os.lstat(path).st_mode), f"{rel} is not a regular file"
        assert path.read_bytes() == content, f"{rel}: content differs"

    return check


def inside_dir(rel: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        assert stat.S_ISDIR(os.lstat(_real(root, rel, outside)).st_mode), f"{rel} is not a directory"

    return check


def inside_symlink(rel: str, target: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        path = _real(root, rel, outside)
        assert os.readlink(path) == subst(target, outside), f"{rel} is not a symlink to {target}"

    return check


def absent(rel: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        path = _real(root, rel, outside)
        assert not os.path.lexists(path), f"{rel} exists"

    return check


def same_inode(rel1: str, rel2: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        s1, s2 = os.lstat(_real(root, rel1, outside)), os.lstat(_real(root, rel2, outside))
        assert (s1.st_dev, s1.st_ino) == (s2.st_dev, s2.st_ino), f"{rel1} and {rel2} are not hardlinked"

    return check


# -- tar entries (tartest.TarContext) and base trees (fstest) --------------------------------------------------


@dataclass(frozen=True)
class Entry:
    type: bytes
    name: str
    linkname: str = ""
    mode: int = 0o777
    content: bytes = b""


def D(name: str, mode: int) -> Entry:
    return Entry(tarfile.DIRTYPE, name + "/", mode=mode)  # tar.FileInfoHeader always appends "/"


def F(name: str, content: bytes, mode: int) -> Entry:
    return Entry(tarfile.REGTYPE, name, mode=mode, content=content)


def S(oldname: str, newname: str) -> Entry:
    return Entry(tarfile.SYMTYPE, newname, linkname=oldname)


def H(oldname: str, newname: str) -> Entry:
    return Entry(tarfile.LNKTYPE, newname, linkname=oldname)


def tar_stream(entries: tuple[Entry, ...], outside: Path) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in entries:
            info = tarfile.TarInfo(subst(entry.name, outside))
            info.type = entry.type
            info.linkname = subst(entry.linkname, outside)
            info.mode = entry.mode
            info.uid, info.gid, info.mtime = UID, GID, NOW
            info.size = len(entry.content)
            tf.addfile(info, io.BytesIO(entry.content))
    buf.seek(0)
    return buf


BaseOp = Callable[[Path], None]


def CreateDir(name: str, perm: int) -> BaseOp:
    def op(root: Path) -> None:
        path = go_join(str(root), name)
        os.makedirs(path, perm, exist_ok=True)
        os.chmod(path, perm)

    return op


def CreateFile(name: str, content: bytes, perm: int) -> BaseOp:
    def op(root: Path) -> None:
        path = go_join(str(root), name)
        with open(path, "wb") as fh:
            fh.write(content)
        os.chmod(path, perm)

    return op


def Symlink(oldname: str, newname: str) -> BaseOp:
    return lambda root: os.symlink(oldname, go_join(str(root), newname))  # literal, even "/etc"


def Link(oldname: str, newname: str) -> BaseOp:
    return lambda root: os.link(go_join(str(root), oldname), go_join(str(root), newname), follow_symlinks=False)


# -- the corpus ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    entries: tuple[Entry, ...]
    expect: Expect
    base: tuple[BaseOp, ...] = ()
    survives: Check | None = None  # checked inside the root after a rejected apply_layer


ETC_PASSWD = (D("etc", 0o770), F("/etc/passwd", b"inside", 0o644))
BASE_INSIDE = (CreateDir("/etc/", 0o755), CreateFile("/etc/passwd", b"inside", 0o644))
BASE_ALL_USERS = (CreateDir("/etc/", 0o755), CreateFile("/etc/passwd", b"all users", 0o644))
WHITEOUT_KEEPS_PASSWD = file_value("etc/passwd", b"inside")

CASES = [
    Case(
        "SymlinkAbsolute",
        (D("etc", 0o755), S("/etc", "localetc"), F("/localetc/unbroken", b"unbroken", 0o644)),
        ("applied", unbroken_check),
    ),
    Case(
        "SymlinkUpAndOut",
        (D("etc", 0o755), D("dummy", 0o755), S("/dummy/../etc", "localetc"),
         F("/localetc/unbroken", b"unbroken", 0o644)),
        ("applied", unbroken_check),  # ".." in a symlink *target* is fine: openat2 clamps it
    ),
    Case(
        "SymlinkMultipleAbsolute",
        (D("etc", 0o755), D("dummy", 0o755), S("/etc", "/dummy/etc"), S("/dummy/etc", "localetc"),
         F("/dummy/etc/unbroken", b"unbroken", 0o644)),
        ("applied", unbroken_check),
    ),
    Case(
        "SymlinkMultipleRelative",
        (D("etc", 0o755), D("dummy", 0o755), S("/etc", "/dummy/etc"), S("./dummy/etc", "localetc"),
         F("/dummy/etc/unbroken", b"unbroken", 0o644)),
        ("applied", unbroken_check),
    ),
    Case(
        "SymlinkEmptyFile",
        (D("etc", 0o755), F("etc/emptied", b"notempty", 0o644), S("/etc", "localetc"),
         F("/localetc/emptied", b"", 0o644)),
        ("applied", emptied_check),
    ),
    # containerd resolves the linkname through the planted symlink; we only link to entries by their own name
    Case(
        "HardlinkRelative",
        (*ETC_PASSWD, D("breakouts", 0o755), S("../../etc", "breakouts/d1"),
         H("/breakouts/d1/passwd", "breakouts/mypasswd")),
        ("rejected", "hardlink-scope"),
    ),
    Case(
        "HardlinkDownAndOut",
        (*ETC_PASSWD, D("breakouts", 0o755), D("downandout", 0o755),
         S("../downandout/../../etc", "breakouts/d1"), H("/breakouts/d1/passwd", "breakouts/mypasswd")),
        ("rejected", "hardlink-scope"),
    ),
    Case(
        "HardlinkAbsolute",
        (*ETC_PASSWD, S("/etc", "localetc"), H("/localetc/passwd", "localpasswd")),
        ("rejected", "hardlink-scope"),
    ),
    Case(
        "HardlinkRelativeLong",
        (*ETC_PASSWD, S("../../../../../../../etc", "localetc"), H("/localetc/passwd", "localpasswd")),
        ("rejected", "hardlink-scope"),
    ),
    Case(
        "HardlinkRelativeUpAndOut",
        (*ETC_PASSWD, S("upandout/../../../etc", "localetc"), H("/localetc/passwd", "localpasswd")),
        ("rejected", "hardlink-scope"),
    ),
    Case(
        "HardlinkDirectRelative",
        (*ETC_PASSWD, H("../../../../../etc/passwd", "localpasswd")),
        ("rejected", "dotdot"),
    ),
    Case(
        "HardlinkDirectAbsolute",
        (*ETC_PASSWD, H("/etc/passwd", "localpasswd")),
        ("applied", same_file("localpasswd", "/etc/passwd")),
    ),
    Case(
        "SymlinkParentDirectory",
        (*ETC_PASSWD, S("/etc/", ".."), H("/etc/passwd", "localpasswd")),
        ("rejected", "dotdot"),  # containerd skips the entry
    ),
    Case(
        "SymlinkEmptyFilename",
        (*ETC_PASSWD, S("/etc/", ""), H("/etc/passwd", "localpasswd")),
        ("rejected", "parent"),  # a non-directory naming the layer root; containerd skips it
    ),
    Case(
        "SymlinkParentRelative",
        (*ETC_PASSWD, S("/etc/", "localetc/sub/.."), H("/etc/passwd", "/localetc/localpasswd")),
        ("rejected", "dotdot"),
    ),
    Case(
        "SymlinkSlashEnded",
        (*ETC_PASSWD, D("localetc/", 0o770), H("/etc/passwd", "/localetc/localpasswd")),
        ("applied", same_file("/localetc/localpasswd", "/etc/passwd")),
    ),
    # base cases: applied onto a prepared tree; /etc/passwd there is not an entry of the layer
    Case(
        "SymlinkOverrideDirectory",
        (S("/etc", "localetc"), H("/etc/passwd", "/localetc/localpasswd")),
        ("rejected", "hardlink-scope"),
        base=(*BASE_INSIDE, CreateDir("/localetc/", 0o755)),
    ),
    Case(
        "SymlinkOverrideDirectoryRelative",
        (S("../../etc", "localetc"), H("/etc/passwd", "/localetc/localpasswd")),
        ("rejected", "hardlink-scope"),
        base=(*BASE_INSIDE, CreateDir("/localetc/", 0o755)),
    ),
    Case(
        "DirectoryOverrideSymlink",
        (D("/localetc/", 0o755), H("/etc/passwd", "/localetc/localpasswd")),
        ("rejected", "hardlink-scope"),
        base=(*BASE_INSIDE, Symlink("/etc", "localetc")),
    ),
    Case(
        "DirectoryOverrideSymlinkAndHardlink",
        (D("/localetc/", 0o755), F("/localetc/localpasswd", b"different", 0o644)),
        # containerd's validator, plus what containerd leaves behind: etc/passwd not overwritten via the old link
        ("applied", all_of(not_same_file("/localetc/localpasswd", "/etc/passwd"),
                           file_value("etc/passwd", b"inside"), same_file("/etc/localpasswd", "/etc/passwd"))),
        base=(*BASE_INSIDE, Symlink("etc", "localetc"), Link("/etc/passwd", "/localetc/localpasswd")),
    ),
    Case(
        "WhiteoutRootParent",
        (F(".wh...", b"", 0o644),),
        ("rejected", "whiteout"),
        base=BASE_INSIDE,
        survives=WHITEOUT_KEEPS_PASSWD,
    ),
    Case(
        "WhiteoutParent",
        (F("etc/.wh...", b"", 0o644),),
        ("rejected", "whiteout"),
        base=BASE_INSIDE,
        survives=WHITEOUT_KEEPS_PASSWD,
    ),
    Case(
        "WhiteoutRoot",
        (F(".wh..", b"", 0o644),),
        ("rejected", "whiteout"),
        base=BASE_INSIDE,
        survives=WHITEOUT_KEEPS_PASSWD,
    ),
    Case(
        "WhiteoutCurrentDirectory",
        (F("etc/.wh..", b"", 0o644),),
        ("rejected", "whiteout"),
        base=BASE_INSIDE,
        survives=WHITEOUT_KEEPS_PASSWD,
    ),
    Case(
        "WhiteoutSymlink",
        (F(".wh.localetc", b"", 0o644),),
        ("applied", all_of(file_value("etc/passwd", b"all users"), file_not_exists("localetc"))),
        base=(*BASE_ALL_USERS, Symlink("/etc", "localetc")),
    ),
    Case(
        "WhiteoutSymlinkPath",
        (F("localetc/.wh.whitedout", b"", 0o644),),
        ("applied", all_of(file_value("etc/passwd", b"all users"), file_not_exists("etc/whitedout"))),
        base=(*BASE_ALL_USERS, CreateFile("/etc/whitedout", b"ahhhh whiteout", 0o644), Symlink("/etc", "localetc")),
    ),
    Case(
        "WhiteoutDirectoryName",
        (F(".wh.etc/somefile", b"non-empty", 0o644),),
        ("applied", all_of(file_value("etc/passwd", b"all users"), file_value(".wh.etc/somefile", b"non-empty"))),
        base=(*BASE_ALL_USERS, CreateFile("/etc/whitedout", b"ahhhh whiteout", 0o644), Symlink("/etc", "localetc")),
    ),
    Case(
        "WhiteoutDeadSymlinkParent",
        (F("localetc/.wh.etc", b"", 0o644),),
        ("applied", file_value("etc/passwd", b"all users")),
        base=(*BASE_ALL_USERS, Symlink("/dne", "localetc")),
    ),
    Case(
        "WhiteoutRelativePath",
        (F("dne/../.wh.etc", b"", 0o644),),
        ("rejected", "dotdot"),  # containerd cleans the name and removes etc
        base=(*BASE_ALL_USERS, Symlink("/dne", "localetc")),
    ),
    # the four cases containerd skips on darwin (link(2) must not follow a symlink)
    Case(
        "HardlinkSymlinkBeforeCreateTarget",
        (D("etc", 0o770), S("/etc/passwd", "localpasswd"), H("localpasswd", "localpasswd-dup"),
         F("/etc/passwd", b"after", 0o644)),
        ("applied", same_file("localpasswd-dup", "/etc/passwd")),
    ),
    Case(
        "HardlinkSymlinkRelative",
        (*ETC_PASSWD, S("../../../../../etc/passwd", "passwdlink"), H("/passwdlink", "localpasswd")),
        ("applied", all_of(same_symlink_file("/localpasswd", "/passwdlink"),
                           same_file("/localpasswd", "/etc/passwd"))),
    ),
    Case(
        "HardlinkSymlinkAbsolute",
        (*ETC_PASSWD, S("/etc/passwd", "passwdlink"), H("/passwdlink", "localpasswd")),
        ("applied", all_of(same_symlink_file("/localpasswd", "/passwdlink"),
                           same_file("/localpasswd", "/etc/passwd"))),
    ),
    Case(
        "HardlinkSymlinkChmod",
        (S(f"{OUT}/perm400", f"{OUT}/also-exists-outside-root"), H(f"{OUT}/also-exists-outside-root", "sketchylink")),
        ("applied", outside_perm("perm400", 0o400)),
    ),
]

GO_NAMES = """
SymlinkAbsolute SymlinkUpAndOut SymlinkMultipleAbsolute SymlinkMultipleRelative SymlinkEmptyFile HardlinkRelative
HardlinkDownAndOut HardlinkAbsolute HardlinkRelativeLong HardlinkRelativeUpAndOut HardlinkDirectRelative
HardlinkDirectAbsolute SymlinkParentDirectory SymlinkEmptyFilename SymlinkParentRelative SymlinkSlashEnded
SymlinkOverrideDirectory SymlinkOverrideDirectoryRelative DirectoryOverrideSymlink DirectoryOverrideSymlinkAndHardlink
WhiteoutRootParent WhiteoutParent WhiteoutRoot WhiteoutCurrentDirectory WhiteoutSymlink WhiteoutSymlinkPath
WhiteoutDirectoryName WhiteoutDeadSymlinkParent WhiteoutRelativePath HardlinkSymlinkBeforeCreateTarget
HardlinkSymlinkRelative HardlinkSymlinkAbsolute HardlinkSymlinkChmod
""".split()


def _case_params():
    for case in CASES:
        for mode in ("apply",) if case.base else ("extract", "apply"):
            yield pytest.param(case, mode, id=f"{case.name}-{mode}")


# -- sandbox and host guards ---------------------------------------------------------------------------------


@dataclass
class Sandbox:
    top: Path
    outside: Path

    def snapshot(self, *skip: str) -> dict[str, tuple]:
        """Everything below ``top`` except the ``skip`` entries: type, mode, size, inode, times, xattrs, content."""
        state: dict[str, tuple] = {}

        def visit(path: Path, rel: str) -> None:
            for name in sorted(os.listdir(path)):
                if not rel and name in skip:
                    continue
                child, key = path / name, f"{rel}/{name}" if rel else name
                st = os.lstat(child)
                extra: object = None
                if stat.S_ISREG(st.st_mode):
                    extra = hashlib.sha256(child.read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    extra = os.readlink(child)
                xattrs = sorted(
                    (k, os.getxattr(child, k, follow_symlinks=False))
                    for k in os.listxattr(child, follow_symlinks=False)
                )
                state[key] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_ino, st.st_nlink,
                              st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, tuple(xattrs), extra)
                if stat.S_ISDIR(st.st_mode):
                    visit(child, key)

        visit(self.top, "")
        return state


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, content, mode in (
        ("sentinel", b"sentinel", 0o644),
        ("perm400", b"...", 0o400),  # HardlinkSymlinkChmod's P
        ("also-exists-outside-root", b"...", 0o640),  # HardlinkSymlinkChmod's E
    ):
        (outside / name).write_bytes(content)
        os.chmod(outside / name, mode)
    (outside / "dir").mkdir()
    (outside / "dir" / "inner").write_bytes(b"inner")
    os.symlink("sentinel", outside / "link")
    return Sandbox(tmp_path, outside)


def host_state() -> tuple:
    """What a breakout through "/etc" or "/dne" would change on the real host."""
    st = os.lstat("/etc/passwd")
    passwd = (st.st_ino, st.st_size, st.st_mode, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns)
    return passwd, sorted(os.listdir("/etc")), sorted(os.listdir("/"))


@pytest.fixture
def host() -> Callable[[], None]:
    before = host_state()

    def check() -> None:
        assert host_state() == before, "the host's /, /etc or /etc/passwd changed"

    return check


# -- the ported TestBreakouts --------------------------------------------------------------------------------


def test_corpus_is_complete():
    assert [case.name for case in CASES] == GO_NAMES
    assert len(CASES) == 33


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", ""),
        ("/localetc/unbroken", "etc/unbroken"),
        ("/breakouts/d1/passwd", "etc/passwd"),
        ("../../../x", "x"),
        ("/dummy/up/../../../etc/", "etc"),
        ("loop", None),
    ],
)
def test_root_path_port(tmp_path: Path, path: str, expected: str | None):
    """The validator's RootPath port: symlinks re-rooted, ".." clamped, missing components kept."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "breakouts").mkdir()
    os.symlink("/etc", root / "localetc")
    os.symlink("../../etc", root / "breakouts" / "d1")
    os.symlink("loop", root / "loop")
    if expected is None:
        with pytest.raises(OSError, match="too many links"):
            root_path(str(root), path)
    else:
        assert root_path(str(root), path) == go_join(str(root), expected)


@pytest.mark.parametrize(("case", "mode"), list(_case_params()))
def test_breakout(case: Case, mode: str, sandbox: Sandbox, host):
    root = sandbox.top / "root"
    if mode == "apply":
        root.mkdir()
        for op in case.base:
            op(root)
    before = sandbox.snapshot("root")
    run = extract_layer if mode == "extract" else apply_layer
    stream = tar_stream(case.entries, sandbox.outside)

    outcome, arg = case.expect
    if outcome == "rejected":
        with pytest.raises(LayerError) as info:
            run(stream, root)
        assert info.value.rule == arg, f"expected rule {arg!r}, got: {info.value}"
        if mode == "extract":
            assert not os.path.lexists(root), "a rejected layer left its target behind"
        elif case.survives is not None:
            case.survives(root, sandbox.outside)
    else:
        assert outcome == "applied"
        run(stream, root)
        arg(root, sandbox.outside)  # type: ignore[operator]

    assert sandbox.snapshot("root") == before, "something outside the root changed"
    host()


# -- cross-layer: layer 1 plants a symlink, layer 2 writes through it ---------------------------------------------


@dataclass(frozen=True)
class CrossCase:
    name: str
    layer1: tuple[Entry, ...]
    layer2: tuple[Entry, ...]
    flatten: Expect  # apply_layer(layer1) then apply_layer(layer2) on one dir: the root
    overlay: Expect  # extract_layer each; the check runs on the read-only overlay lowerdir=L2:L1


UPDIR = (D("a", 0o755), D("a/b", 0o755), S("../../..", "a/b/up"))  # natively a/b/up is the sandbox itself
LINKDIR = (D("etc", 0o755), F("etc/passwd", b"inside", 0o644), S("/etc", "linkdir"))
DATA = (D("data", 0o755), F("data/keep", b"keep", 0o644), S("/data", "link"))

CROSS_CASES = [
    CrossCase(
        "abs-symlink-to-outside/file",
        (S(OUT, "evil"),),
        (F("evil/sentinel", b"pwned", 0o644),),
        ("rejected", "parent"),  # "evil" resolves to root/<outside path>, which does not exist
        ("applied", all_of(inside_dir("evil"), inside_file("evil/sentinel", b"pwned"))),
    ),
    CrossCase(
        "abs-symlink-to-outside/clamped-into-root",
        (D(OUT, 0o755), S(OUT, "evil")),
        (F("evil/sentinel", b"pwned", 0o644),),
        ("applied", all_of(inside_symlink("evil", OUT), inside_file(f"{OUT}/sentinel", b"pwned"))),
        ("applied", all_of(inside_file("evil/sentinel", b"pwned"), inside_dir(OUT), absent(f"{OUT}/sentinel"))),
    ),
    CrossCase(
        "relative-dotdot-symlink/file",
        UPDIR,
        (F("a/b/up/outside/sentinel", b"pwned", 0o644),),
        ("applied", all_of(inside_symlink("a/b/up", "../../.."), inside_file("outside/sentinel", b"pwned"))),
        ("applied", inside_file("a/b/up/outside/sentinel", b"pwned")),
    ),
    CrossCase(
        "relative-dotdot-symlink/dir-and-hardlink",
        UPDIR,
        (D("a/b/up/newdir", 0o755), F("a/b/up/newdir/f", b"data", 0o644), H("a/b/up/newdir/f", "a/b/up/newdir/g")),
        ("applied", all_of(inside_file("newdir/f", b"data"), same_inode("newdir/f", "newdir/g"))),
        ("applied", all_of(inside_file("a/b/up/newdir/f", b"data"), inside_file("a/b/up/newdir/g", b"data"))),
    ),
    CrossCase(
        "relative-dotdot-symlink/whiteout",
        UPDIR,
        (F("a/b/up/.wh.outside", b"", 0o644),),  # natively: delete the sandbox's "outside" dir
        ("applied", all_of(inside_symlink("a/b/up", "../../.."), absent("outside"))),
        ("applied", all_of(inside_dir("a/b/up"), absent("a/b/up/outside"))),
    ),
    CrossCase(
        "symlink-to-dir/hardlink-to-lower-file",
        LINKDIR,
        (H("linkdir/passwd", "stolen"),),
        ("rejected", "hardlink-scope"),
        ("rejected", "hardlink-scope"),
    ),
    CrossCase(
        "symlink-to-dir/file-and-hardlink",
        LINKDIR,
        (F("linkdir/file", b"data", 0o644), H("linkdir/file", "linkdir/hl")),
        ("applied", all_of(inside_file("etc/file", b"data"), same_inode("etc/file", "etc/hl"),
                           inside_file("etc/passwd", b"inside"), same_file("linkdir/hl", "/etc/file"))),
        ("applied", all_of(inside_file("linkdir/file", b"data"), inside_file("linkdir/hl", b"data"),
                           absent("etc/file"))),
    ),
    CrossCase(
        "symlink-to-outside-file/overwrite",
        (S(f"{OUT}/sentinel", "sneaky"),),
        (F("sneaky", b"pwned", 0o644),),
        ("applied", inside_file("sneaky", b"pwned")),
        ("applied", inside_file("sneaky", b"pwned")),
    ),
    CrossCase(
        "symlink-to-outside-file/hardlink",
        (S(f"{OUT}/sentinel", "sneaky"),),
        (H("sneaky", "hl"),),
        ("rejected", "hardlink-scope"),
        ("rejected", "hardlink-scope"),
    ),
    CrossCase(
        "dangling-symlink/dir",
        (S("/dne", "dangle"),),
        (D("dangle/sub", 0o755), F("dangle/sub/f", b"data", 0o644)),
        ("rejected", "parent"),
        ("applied", inside_file("dangle/sub/f", b"data")),
    ),
    CrossCase(
        "symlink-to-dir/whiteout",
        (*DATA, F("data/victim", b"victim", 0o644)),
        (F("link/.wh.victim", b"", 0o644),),
        ("applied", all_of(absent("data/victim"), inside_file("data/keep", b"keep"), inside_symlink("link", "/data"))),
        # overlayfs never follows a lower layer's symlink: L2's "link" is a new dir, data/victim stays
        ("applied", all_of(inside_dir("link"), inside_file("data/victim", b"victim"))),
    ),
    CrossCase(
        "symlink-to-dir/opaque",
        DATA,
        (F("link/.wh..wh..opq", b"", 0o644), F("link/new", b"new", 0o644)),
        ("applied", all_of(absent("data/keep"), inside_file("data/new", b"new"))),
        ("applied", all_of(inside_file("link/new", b"new"), inside_file("data/keep", b"keep"))),
    ),
]


def _expect_layer(run: Callable[[], object], expect: Expect) -> bool:
    """Run one layer; True when it applied (and was expected to)."""
    outcome, arg = expect
    if outcome == "rejected":
        with pytest.raises(LayerError) as info:
            run()
        assert info.value.rule == arg, f"expected rule {arg!r}, got: {info.value}"
        return False
    assert outcome == "applied"
    run()
    return True


@pytest.mark.parametrize("case", CROSS_CASES, ids=lambda c: c.name)
def test_cross_layer_flatten(case: CrossCase, sandbox: Sandbox, host):
    root = sandbox.top / "root"
    root.mkdir()
    before = sandbox.snapshot("root")
    apply_layer(tar_stream(case.layer1, sandbox.outside), root)
    if _expect_layer(lambda: apply_layer(tar_stream(case.layer2, sandbox.outside), root), case.flatten):
        case.flatten[1](root, sandbox.outside)  # type: ignore[operator]
    assert sandbox.snapshot("root") == before, "something outside the root changed"
    host()


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == str(path) for line in fh)


@pytest.mark.root
@pytest.mark.parametrize("case", CROSS_CASES, ids=lambda c: c.name)
def test_cross_layer_overlay(case: CrossCase, sandbox: Sandbox, host):
    lower1, lower2, merged = (sandbox.top / name for name in ("l1", "l2", "merged"))
    merged.mkdir()
    before = sandbox.snapshot("l1", "l2", "merged")
    extract_layer(tar_stream(case.layer1, sandbox.outside), lower1)
    if not _expect_layer(lambda: extract_layer(tar_stream(case.layer2, sandbox.outside), lower2), case.overlay):
        assert not os.path.lexists(lower2), "a rejected layer left its target behind"
    else:
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower2}:{lower1}", str(merged)],
            check=True,
            capture_output=True,
        )
        try:
            case.overlay[1](merged, sandbox.outside)  # type: ignore[operator]
        finally:
            subprocess.run(["umount", str(merged)], check=True, capture_output=True)
        assert not _mounted(merged), "the overlay is still mounted"
    assert sandbox.snapshot("l1", "l2", "merged") == before, "something outside the layers changed"
    host()


# -- found while porting: a directory cache that outlives the symlink it was resolved through ------------------------


@pytest.mark.parametrize("mode", ["extract", "apply"])
def test_directory_replacing_symlink_in_same_layer(mode: str, sandbox: Sandbox, host):
    """DirectoryOverrideSymlink within one layer, after a write through the symlink.

    "l" is a symlink to /etc (clamped: root/etc) and "l/x" is written through it; then the layer replaces
    "l" by a real directory and writes "l/y". That file belongs in the new directory root/l, as in
    containerd (whose DirectoryOverrideSymlinkAndHardlink case checks the same thing across layers).
    """
    root = sandbox.top / "root"
    if mode == "apply":
        root.mkdir()
    before = sandbox.snapshot("root")
    entries = (D("etc", 0o755), S("/etc", "l"), F("l/x", b"x", 0o644), D("l", 0o755), F("l/y", b"y", 0o644))
    (extract_layer if mode == "extract" else apply_layer)(tar_stream(entries, sandbox.outside), root)
    all_of(inside_file("etc/x", b"x"), inside_dir("l"), inside_file("l/y", b"y"), absent("etc/y"))(
        root, sandbox.outside
    )
    assert sandbox.snapshot("root") == before, "something outside the root changed"
    host()
