"""The user namespace of a caller who is not root: made once, kept, joined (podman's pause process).

Mapping a range of ids takes ``newuidmap`` and ``newgidmap`` (setuid helpers
of Debian's uidmap, which check /etc/subuid and /etc/subgid): two process
starts that no container start should pay. So the namespace is made once per
user and kept alive by a small process, the *keeper* (``sleep infinity``,
named ``sandbox-kernel: user namespace``); later calls find it through
``keeper.pid`` in the user's run directory and join it with ``setns``.

Inside, the user's own id is root and, when /etc/subuid and /etc/subgid give
the user a range, ids 1..65535 are the first 65535 of that range, so images
with several users and ``apt-get`` work. Without a range only the user's id
is mapped (every file of another owner shows as nobody, and changing owners
fails); the keeper says so once, in one sentence naming the command that adds
a range.

The run directory is ``$XDG_RUNTIME_DIR/sandbox-kernel`` (or, when that is
unset, ``/tmp/sandbox-kernel-UID``), 0700 and the user's own: one made by
anybody else, or a symlink, is refused, never used.

    ensure()      the keeper, made if there is none alive
    join(keeper)  enter its user namespace (the caller must be single-threaded)
    stop()        end the keeper (the next ensure() makes a new one)
    host_uid()    who this process is on the host, also after join() (inside, getuid() says 0)
    rootless()    whether this process's containers are a user's who is not root
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import syscalls as sc
from .errors import UserNamespaceError
from .idmap import SIZE, SUBGID, SUBUID, _ranges
from .state import ProcRef

NAME = "sandbox-kernel: user namespace"
_host_uid: int | None = None  # set by join(): this process's uid on the host
_joined_pid: int | None = None  # and the keeper whose namespace it joined

# The keeper: forks away (so that it is nobody's child: no zombie in a long-lived caller), unshares a user
# namespace, says so with its pid, waits for its maps, makes the user's network namespace (where its networks'
# bridges go: network.py) with loopback up, says so, then becomes `sleep infinity` (a small process to keep
# alive), keeping fd 3: the write end of a pipe whose read end is slirp4netns's --exit-fd. Stdlib only, started
# with -I -S: it needs nothing of ours.
_KEEPER = r"""
import ctypes, fcntl, os, socket, struct, sys
if os.fork():
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    print("error", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
print("ready", os.getpid(), flush=True)
if sys.stdin.readline() != "mapped\n":
    sys.exit(1)
if libc.unshare(0x40000000) != 0:
    print("error", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    flags = struct.unpack("16sH", fcntl.ioctl(sock, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
    fcntl.ioctl(sock, 0x8914, struct.pack("16sH", b"lo", flags | 1))
print("netns", flush=True)
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.set_inheritable(3, True)
os.execv(sys.argv[1], [sys.argv[2], "infinity"])
"""
SLIRP_GATEWAY = "10.0.2.2"  # slirp4netns's address for the host (its 127.0.0.1: walls.py keeps containers off it)


@dataclass(frozen=True)
class Keeper:
    """A live keeper: its pid, the maps its namespace has, and (when it was just made) a note for the user."""

    pid: int
    uid_map: str
    gid_map: str
    note: str | None = None
    outbound: bool = False  # slirp4netns runs for its network namespace (networks with --nat reach out)

    @property
    def single_id(self) -> bool:
        return len(self.uid_map.strip().splitlines()) == 1

    @property
    def netns(self) -> str:
        """The user's network namespace, where its networks' bridges are (network.py)."""
        return f"/proc/{self.pid}/ns/net"


def run_dir() -> Path:
    """The caller's private run directory (made 0700 if missing; refused unless the caller's and 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "sandbox-kernel" if base else Path(f"/tmp/sandbox-kernel-{host_uid()}")
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UserNamespaceError(f"{path} is not a private directory of yours (another user may have made it): "
                                 f"remove it, or set XDG_RUNTIME_DIR")
    return path


def subordinate(kind: str) -> tuple[int, int] | None:
    """(start, count) of the caller's first range in /etc/subuid (kind "uid") or /etc/subgid, at most 65535 ids
    (the container's 1..65535); None without one."""
    uid = os.getuid()
    try:
        names = {pwd.getpwuid(uid).pw_name, str(uid)}
    except KeyError:
        names = {str(uid)}
    for name, start, count in _ranges(SUBUID if kind == "uid" else SUBGID):
        if name in names and count > 0 and start > 0:
            return start, min(count, SIZE - 1)
    return None


def _alive(directory: Path) -> Keeper | None:
    """The keeper ``keeper.pid`` names, if it still runs, is the caller's and has a user namespace and a
    network namespace of its own (one made by an earlier version, without the latter, is not used)."""
    try:
        pid, started = map(int, (directory / "keeper.pid").read_text().split())
        if not ProcRef(pid, started).alive() or os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        for kind in ("user", "net"):
            if os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/self/ns/{kind}"):
                return None
        return _keeper(pid, directory)
    except (OSError, ValueError):
        return None


def _keeper(pid: int, directory: Path) -> Keeper:
    """Keeper ``pid`` as it is: its maps, and whether its slirp4netns runs."""
    with open(f"/proc/{pid}/uid_map") as u, open(f"/proc/{pid}/gid_map") as g:
        return Keeper(pid, u.read(), g.read(), outbound=_slirp_alive(directory, pid))


def _slirp_alive(directory: Path, keeper: int) -> bool:
    """Whether the slirp4netns that ``slirp.pid`` names runs for ``keeper``'s network namespace."""
    try:
        pid, started, target = (directory / "slirp.pid").read_text().split()
        return ProcRef(int(pid), int(started)).alive() and int(target) == keeper
    except (OSError, ValueError):
        return False


def _map(pid: int, note_parts: list[str]) -> None:
    """Write the keeper's maps: through newuidmap/newgidmap with the caller's ranges, or its own id alone."""
    uid, gid = os.getuid(), os.getgid()
    ranges = subordinate("uid"), subordinate("gid")
    helpers = shutil.which("newuidmap"), shutil.which("newgidmap")
    if ranges[0] and ranges[1] and helpers[0] and helpers[1]:
        for helper, own, (start, count) in ((helpers[0], uid, ranges[0]), (helpers[1], gid, ranges[1])):
            done = subprocess.run([helper, str(pid), "0", str(own), "1", "1", str(start), str(count)],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or ["failed"])[-1]
                raise UserNamespaceError(f"{os.path.basename(helper)} refused the range {start}-"
                                         f"{start + count - 1}: {why}")
        return
    # One id: a process may map its own id into a namespace it made, with setgroups denied first.
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/uid_map").write_text(f"0 {uid} 1")
    Path(f"/proc/{pid}/gid_map").write_text(f"0 {gid} 1")
    missing = "newuidmap and newgidmap (Debian's uidmap)" if not all(helpers) else \
        f"range of ids for {_user_name()} in /etc/subuid and /etc/subgid"
    note_parts.append(f"containers get one id (yours, as root) because there is no {missing}: images with other "
                      f"users and apt-get need it (as root: {how_to_add_range()})")


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def how_to_add_range() -> str:
    """What root runs once so that the caller's containers get 65536 ids."""
    return (f"apt-get install uidmap; usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
            f"{_user_name()}")


def _spawn(script: str, args: list[str], fds: dict[int, int]) -> None:
    """Run one of the small stdlib scripts here (``python -I -S -c``, a session of its own, ``fds`` moved to
    the numbers given) and wait for it: each forks what it starts and ends, so nothing is left our child."""
    child = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", script, *args],
                           {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")},
                           file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in fds.items()],
                           setsid=True)
    os.waitpid(child, 0)


def _make(directory: Path) -> Keeper:
    sleep = shutil.which("sleep") or "/bin/sleep"
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    exit_r, exit_w = os.pipe()  # slirp4netns's --exit-fd: the keeper holds the write end, so it ends with it
    try:
        _spawn(_KEEPER, [sleep, NAME], {0: to_child_r, 1: from_child_w, 3: exit_w})  # (it forks the keeper)
    finally:
        os.close(to_child_r)
        os.close(from_child_w)
        os.close(exit_w)
    pid = None
    try:
        with os.fdopen(from_child_r, "r") as said, os.fdopen(to_child_w, "w") as tell:
            line = said.readline().split()
            if len(line) != 2 or line[0] != "ready" or not line[1].isdigit():
                why = " ".join(line[1:]) if line else "the keeper ended"
                raise UserNamespaceError(f"cannot make a user namespace: {why} (are user namespaces allowed to "
                                         f"users here? sysctl user.max_user_namespaces)")
            pid = int(line[1])
            notes: list[str] = []
            _map(pid, notes)
            tell.write("mapped\n")
            tell.flush()
            line = said.readline().split()
            if line != ["netns"]:
                why = " ".join(line[1:]) if line else "the keeper ended"
                raise UserNamespaceError(f"cannot make the network namespace of your containers' networks: {why}")
        keeper = ProcRef.of(pid)
        if keeper is None:
            raise UserNamespaceError("the user namespace's keeper ended as soon as it was made")
        temporary = directory / f".keeper.pid.{os.getpid()}"
        temporary.write_text(f"{keeper.pid} {keeper.start}\n")
        temporary.rename(directory / "keeper.pid")
        _start_slirp(directory, pid, exit_r)
    except BaseException:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(exit_r)
    found = _alive(directory)
    if found is None:
        raise UserNamespaceError("the user namespace's keeper ended as soon as it was made")
    return Keeper(found.pid, found.uid_map, found.gid_map, " ".join(notes) or None, found.outbound)


# slirp4netns, started away from the caller (a grandchild: no zombie), says its pid first. It runs in the
# user's namespace (as podman runs it: its --enable-sandbox makes a mount namespace, which needs that) and in the
# host's network namespace (where its traffic goes out). Argument 1: the keeper's user namespace.
_SLIRP = r"""
import ctypes, os, sys
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
if ctypes.CDLL(None, use_errno=True).setns(os.open(sys.argv[1], os.O_RDONLY), 0x10000000) != 0:
    os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _start_slirp(directory: Path, keeper: int, exit_r: int) -> None:
    """Outbound traffic for the user's networks (those made with --nat): slirp4netns, a userspace TCP/IP stack
    on the host side, with a tap device in the keeper's network namespace (10.0.2.100, gateway 10.0.2.2);
    it ends when the keeper does. Without slirp4netns nothing is started (network.py says what is missing)."""
    slirp = shutil.which("slirp4netns")
    if slirp is None:
        return
    ready_r, ready_w = os.pipe()
    said_r, said_w = os.pipe()
    argv = [slirp, "--configure", "--mtu=65520", "--enable-sandbox", "--enable-seccomp", "--netns-type=path",
            "--exit-fd=3", "--ready-fd=4", f"/proc/{keeper}/ns/net", "tap0"]
    try:
        _spawn(_SLIRP, [f"/proc/{keeper}/ns/user", *argv], {1: said_w, 3: exit_r, 4: ready_w})
    finally:
        for fd in (ready_w, said_w):
            os.close(fd)
    pid = 0
    try:
        import select

        with os.fdopen(said_r, "r") as said:
            pid = int(said.readline().strip() or 0)
        found = ProcRef.of(pid) if pid > 0 else None
        if found is None or not select.select([ready_r], [], [], 10)[0] or os.read(ready_r, 1) != b"1":
            raise OSError("slirp4netns did not come up")
        temporary = directory / f".slirp.pid.{os.getpid()}"
        temporary.write_text(f"{found.pid} {found.start} {keeper}\n")
        temporary.rename(directory / "slirp.pid")
    except (OSError, ValueError):  # no outbound traffic then (Keeper.outbound: network.py says so at --nat)
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        os.close(ready_r)


@contextlib.contextmanager
def _locked(directory: Path):
    fd = os.open(directory / "keeper.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure() -> Keeper:
    """The caller's keeper: the live one, or a new one (``note`` then says what the user should know)."""
    if _joined_pid is not None:  # (inside, the keeper's namespace is our own: _alive would not know it)
        return _keeper(_joined_pid, run_dir())
    if os.geteuid() == 0:
        raise UserNamespaceError("root's containers make their own user namespaces (runtime/idmap.py)")
    directory = run_dir()
    with _locked(directory):
        return _alive(directory) or _make(directory)


def joined_as(uid: int, keeper: int) -> None:
    """Say that this process is in ``keeper``'s namespace already (exec'ed there by one that joined it as
    ``uid``: launcher.serve)."""
    global _host_uid, _joined_pid
    _host_uid, _joined_pid = uid, keeper


def host_uid() -> int:
    """This process's effective uid on the host (inside the keeper's namespace getuid() says 0)."""
    return os.geteuid() if _host_uid is None else _host_uid


def rootless() -> bool:
    """Whether this process works for a user who is not root (also once it joined the keeper)."""
    return host_uid() != 0


def joined() -> bool:
    """Whether this process is in its keeper's namespace (where host files of others show as nobody's)."""
    return _host_uid is not None


def join(keeper: Keeper | int) -> None:
    """Enter the keeper's user namespace: the caller is root there from now on. Single-threaded callers only
    (the kernel refuses a process with other threads). Whatever checks host paths must run before."""
    global _host_uid, _joined_pid
    pid = keeper if isinstance(keeper, int) else keeper.pid
    uid = os.geteuid()
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWUSER)
    except OSError as exc:
        raise UserNamespaceError(f"cannot join the user namespace of keeper {pid}: {exc.strerror}") from None
    finally:
        os.close(fd)
    _host_uid, _joined_pid = uid, pid


def stop() -> bool:
    """End the caller's keeper, if one runs (its slirp4netns ends with it); True if it did."""
    directory = run_dir()
    with _locked(directory):
        found = _alive(directory)
        for name in ("keeper.pid", "slirp.pid"):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
        if found is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(found.pid, signal.SIGTERM)
        return True
