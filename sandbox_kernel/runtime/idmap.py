"""Container ids on the host: the user namespace every container runs in.

A container's ids 0..65535 are the host ids BASE..BASE+65535 (docker's
``userns-remap``): its root is an unprivileged host user, so what it does to
the files it owns (setuid bits, file capabilities) gives nothing on the host,
and its processes are nobody the host trusts.

As root the range is the one ``/etc/subuid`` and ``/etc/subgid`` give the
user ``sandbox-kernel``, which ``python -m sandbox_kernel.runtime.idmap
reserve`` (run by scripts/setup.sh) makes, as docker makes ``dockremap``: a
system user that never logs in, with a range of 65536 ids that no other user's
range and no existing account shares. A range that is missing, too small, or
shared is refused with one sentence saying how to fix it, never used.

``--userns=host`` (for trusted tools only) runs without a user namespace:
container ids are host ids, as before.

    python -m sandbox_kernel.runtime.idmap reserve   # make the user and its range if missing (as root)
    python -m sandbox_kernel.runtime.idmap show      # the range containers get
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import syscalls as sc
from .errors import UserNamespaceError

USER = "sandbox-kernel"
SIZE = 65536  # container ids 0..65535, as docker and podman give
FIRST = 100000  # where subordinate ranges start on Debian and Fedora
SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")
PASSWD, GROUP = Path("/etc/passwd"), Path("/etc/group")


@dataclass(frozen=True)
class IdMap:
    """Container uid N is host uid ``uid + N`` and gid N host gid ``gid + N``, for N below ``size``."""

    uid: int
    gid: int
    size: int = SIZE

    @property
    def root(self) -> tuple[int, int]:
        """The host (uid, gid) of the container's root."""
        return self.uid, self.gid

    @property
    def suffix(self) -> str:
        """What names this map in the store (layers unpacked for it)."""
        return f"-m{self.uid}-{self.gid}"

    def uid_map(self) -> str:
        return f"0 {self.uid} {self.size}\n"

    def gid_map(self) -> str:
        return f"0 {self.gid} {self.size}\n"

    def to_host(self, uid: int, gid: int) -> tuple[int, int]:
        """Host ids of container ids; ValueError for ids the container does not have."""
        if not (0 <= uid < self.size and 0 <= gid < self.size):
            raise ValueError(f"owner {uid}:{gid} is outside the {self.size} ids a container has (0-{self.size - 1})")
        return self.uid + uid, self.gid + gid

    def to_container(self, uid: int, gid: int) -> tuple[int, int]:
        """Container ids of host ids; ValueError for host ids outside the map."""
        cuid, cgid = uid - self.uid, gid - self.gid
        if not (0 <= cuid < self.size and 0 <= cgid < self.size):
            raise ValueError(f"host owner {uid}:{gid} is outside the container's ids "
                             f"({self.uid}-{self.uid + self.size - 1}:{self.gid}-{self.gid + self.size - 1})")
        return cuid, cgid

    def to_json(self) -> dict[str, int]:
        return {"uid": self.uid, "gid": self.gid, "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> IdMap | None:
        if data is None:
            return None
        return cls(int(data["uid"]), int(data["gid"]), int(data.get("size", SIZE)))


# -- the range of root's containers --------------------------------------------------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise UserNamespaceError(f"cannot read {path}: {exc.strerror}") from None


def _ranges(path: Path) -> list[tuple[str, int, int]]:
    """``name:start:count`` lines (name may be a uid), in file order; malformed lines are skipped, as shadow does."""
    out = []
    for line in _read(path).splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _accounts(path: Path) -> dict[int, str]:
    """id -> name of /etc/passwd or /etc/group."""
    out: dict[int, str] = {}
    for line in _read(path).splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(int(parts[2]), parts[0])
    return out


def _fix(user: str) -> str:
    return (f"run `python -m sandbox_kernel.runtime.idmap reserve` as root (scripts/setup.sh does) "
            f"to give {user} a range")


def _own_start(kind: str, path: Path, user: str, uid: int | None) -> int:
    names = {user} | ({str(uid)} if uid is not None else set())
    mine = [(start, count) for name, start, count in _ranges(path) if name in names]
    usable = [start for start, count in mine if count >= SIZE and start > 0]
    if not usable:
        have = f" (it has {', '.join(f'{s}-{s + c - 1}' for s, c in mine)})" if mine else ""
        raise UserNamespaceError(f"no {SIZE}-{kind} range for containers: {path} gives user {user} none{have}; "
                                 f"{_fix(user)}")
    return usable[0]


def _check_alone(kind: str, path: Path, accounts: Path, user: str, uid: int | None, start: int) -> None:
    """The range must be the containers' only: shared with another user's range or an account, a container
    process could act as that user."""
    names = {user} | ({str(uid)} if uid is not None else set())
    end = start + SIZE
    for name, other, count in _ranges(path):
        if name not in names and other < end and start < other + count:
            raise UserNamespaceError(
                f"the {kind} range for containers ({start}-{end - 1}, user {user} in {path}) overlaps user "
                f"{name}'s ({other}-{other + count - 1}): give {user} a range of its own")
    for ident, name in sorted(_accounts(accounts).items()):
        if start <= ident < end and name != user:
            what = "user" if kind == "uid" else "group"
            raise UserNamespaceError(
                f"{what} {name} ({kind} {ident}) is inside the {kind} range for containers ({start}-{end - 1}, "
                f"user {user} in {path}): a container could act as {name}; give {user} another range")


_cache: dict[tuple[Any, ...], IdMap] = {}


def _stamp(*paths: Path) -> tuple[Any, ...]:
    out: list[Any] = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def remap_range(user: str = USER) -> IdMap:
    """The map of root's containers: ``user``'s ranges in /etc/subuid and /etc/subgid, checked to be theirs alone.

    Read again only when one of the four files changed.
    """
    key = (user, _stamp(SUBUID, SUBGID, PASSWD, GROUP))
    found = _cache.get(key)
    if found is None:
        uid = next((i for i, name in _accounts(PASSWD).items() if name == user), None)
        start_uid = _own_start("uid", SUBUID, user, uid)
        start_gid = _own_start("gid", SUBGID, user, uid)
        _check_alone("uid", SUBUID, PASSWD, user, uid, start_uid)
        _check_alone("gid", SUBGID, GROUP, user, uid, start_gid)
        found = IdMap(start_uid, start_gid)
        _cache.clear()
        _cache[key] = found
    return found


def default() -> IdMap | None:
    """The map a container of this caller gets unless it asks for ``--userns=host``.

    Root: :func:`remap_range` (raises when there is none). Other users: None
    (their containers run in their own namespace, userns_keeper.py, whose ids
    are the layers' own).
    """
    return remap_range() if os.geteuid() == 0 else None


def root_ids() -> tuple[int, int]:
    """The host (uid, gid) that a new container's root is (without --userns=host): the first of the range for
    root, the caller itself for other users. A directory of theirs is the container's to write in as a plain
    bind (the sandboxed kernel's sockets)."""
    found = default()
    return found.root if found is not None else (os.getuid(), os.getgid())


def _free_start() -> int:
    """The lowest start, from 100000 in steps of 65536, that no subordinate range and no account touches."""
    taken = [(s, s + c) for path in (SUBUID, SUBGID) for _, s, c in _ranges(path)]
    ids = set(_accounts(PASSWD)) | set(_accounts(GROUP))
    start = FIRST
    while start + SIZE < (1 << 32) - 1:
        end = start + SIZE
        if not any(a < end and start < b for a, b in taken) and not any(start <= i < end for i in ids):
            return start
        start += SIZE
    raise UserNamespaceError("no free id range of 65536 left below 2^32 for containers")


def reserve(user: str = USER) -> IdMap:
    """Make ``user`` (a system user that never logs in) and give it a free range, unless it has a sound one.

    Idempotent. A range that exists but overlaps another is an error to fix by
    hand: it is never changed behind the admin's back.
    """
    import subprocess

    try:
        return remap_range(user)
    except UserNamespaceError as exc:
        if "no 65536-" not in str(exc):
            raise
    if os.geteuid() != 0:
        raise UserNamespaceError(f"only root can reserve the id range for containers ({_fix(user)})")
    accounts = _accounts(PASSWD)
    try:
        if user not in accounts.values():
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", "--user-group", "--comment",
                            "ids of sandbox-kernel containers", user],
                           check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        uid = next((i for i, name in _accounts(PASSWD).items() if name == user), None)
        have_uid = have_gid = True
        try:
            _own_start("uid", SUBUID, user, uid)
        except UserNamespaceError:
            have_uid = False
        try:
            _own_start("gid", SUBGID, user, uid)
        except UserNamespaceError:
            have_gid = False
        start = _free_start()
        span = f"{start}-{start + SIZE - 1}"
        args = (["--add-subuids", span] if not have_uid else []) + (["--add-subgids", span] if not have_gid else [])
        subprocess.run(["usermod", *args, user], check=True, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise UserNamespaceError(f"cannot reserve the id range for containers: {exc.filename} is missing "
                                 "(Debian's passwd package has useradd and usermod)") from None
    except subprocess.CalledProcessError as exc:
        first = (exc.stderr or "").strip().splitlines()[:1] or [f"exit {exc.returncode}"]
        raise UserNamespaceError(f"cannot reserve the id range for containers: {exc.cmd[0]}: {first[0]}") from None
    return remap_range(user)


# -- user namespaces -----------------------------------------------------------------------------------------

def write_maps(pid: int, uid_map: str, gid_map: str) -> None:
    """Give process ``pid``'s new user namespace its maps (we must be privileged over the parent namespace)."""
    for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def userns_fd(uid_map: str, gid_map: str) -> int:
    """An fd of a new user namespace with these maps, for an idmapped mount (only its maps matter).

    A forked child makes the namespace and waits while we write its maps and
    open it; then it exits. Call from a single-threaded process.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise UserNamespaceError("cannot make a user namespace for an idmapped mount")
        write_maps(pid, uid_map, gid_map)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


# -- file capabilities ---------------------------------------------------------------------------------------

_REVISION_MASK = 0xFF000000
_V2, _V3 = 0x02000000, 0x03000000


def caps_to_container(raw: bytes, idmap: IdMap) -> bytes:
    """A ``security.capability`` value as written in the container's namespace, as the host root would write it.

    Inside a user namespace the kernel stores version 3 with the namespace's
    root as ``rootid``; the same ``setcap`` as host root stores version 2. A
    layer carries version 2, so that a snapshot does not depend on the map.
    """
    if len(raw) == 24 and struct.unpack_from("<I", raw)[0] & _REVISION_MASK == _V3:
        (rootid,) = struct.unpack_from("<I", raw, 20)
        if rootid != idmap.uid:
            raise ValueError(f"file capabilities for root id {rootid}, not the container's root ({idmap.uid})")
        magic = (struct.unpack_from("<I", raw)[0] & ~_REVISION_MASK) | _V2
        return struct.pack("<I", magic) + raw[4:20]
    return raw


def caps_to_host(raw: bytes, idmap: IdMap) -> bytes:
    """The inverse of :func:`caps_to_container`: a version 2 value stored for the container's root, so that the
    kernel honours it inside the container's namespace (and nowhere else)."""
    if len(raw) == 20 and struct.unpack_from("<I", raw)[0] & _REVISION_MASK == _V2:
        magic = (struct.unpack_from("<I", raw)[0] & ~_REVISION_MASK) | _V3
        return struct.pack("<I", magic) + raw[4:20] + struct.pack("<I", idmap.uid)
    return raw


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args == ["reserve"]:
            found = reserve()
        elif args in ([], ["show"]):
            found = remap_range()
        else:
            print("usage: python -m sandbox_kernel.runtime.idmap [show|reserve]", file=sys.stderr)
            return 2
    except UserNamespaceError as exc:
        print(f"sandbox-kernel: error: {exc}", file=sys.stderr)
        return 1
    print(f"container ids 0-{found.size - 1} are host uids {found.uid}-{found.uid + found.size - 1} "
          f"and gids {found.gid}-{found.gid + found.size - 1} (user {USER})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
