"""Forking safely: containers' monitors and exec helpers are forked here.

Forking a multi-threaded process and running Python in the child can deadlock
on a lock another thread held at fork time. So:

* a single-threaded caller (the CLI, a script, a benchmark) forks directly,
  except for warm slots (below);
* a multi-threaded caller (an IPython kernel, the Jupyter server) starts, once,
  a small single-threaded *fork server*: ``python -m
  sandbox_kernel.runtime.launcher`` with the runtime already imported, talked
  to over a SOCK_SEQPACKET socket pair. Each request (a pickled tuple: only
  our own processes are on either end) carries its fds with SCM_RIGHTS; the
  server forks, the child runs the same function a direct fork would, and the
  server answers with the child's pid. The server exits when the caller's
  end closes (the caller died); containers tied to the caller die with it.

Either way the child reports over pipes, never through its parent, so the
caller needs the same code whoever forked. Warm slots (the next foreground
container's processes, made ahead) always come from the fork server: the
caller does not wait for that fork, and processes forked from a small
process are quicker to fork and to run than copies of a big caller.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cgroups, exec_helper, process, userns_keeper
from . import syscalls as sc
from .cgroups import open_cgroup
from .errors import ContainerError, SandboxError, from_os_error
from .monitor import Job, Speculation, monitor_main
from .state import WARM_MARK, ProcRef, remove_dir

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # where this sandbox_kernel package is
SERVER_MAIN = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "from sandbox_kernel.runtime.launcher import serve; serve(int(sys.argv[2]), *sys.argv[3:])")
_direct_children: list[int] = []
# One warm slot for the next foreground start (SANDBOX_KERNEL_WARM_SLOTS=0: none).
WARM_SLOTS = os.environ.get("SANDBOX_KERNEL_WARM_SLOTS", "1") != "0"
_spare: Slot | None = None
_server: _ForkServer | None = None
_server_lock = threading.Lock()


def single_threaded() -> bool:
    """True when this process has one thread (counting threads Python did not start)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


# -- what the forked child runs ---------------------------------------------------------------------------------

def _child_monitor(tied: bool, speculation: Speculation | None, fds: list[int], parent: int,
                   share_net: bool = False) -> None:
    # e.g. the caller's end of a stdin pipe: held here, a container never sees EOF (the exec helper's
    # sealed copy stays: PID 1 spawns it)
    sc.close_all_but([*fds, *exec_helper.kept_fds()])
    null = os.open("/dev/null", os.O_RDWR)  # nor the caller's stdio: a container's comes with its job
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)
    if not tied and os.fork() != 0:
        os._exit(0)  # the monitor is a grandchild: nobody has to reap it, it outlives its caller
    monitor_main(fds[0], tied, parent, speculation, share_net)


def _child_exec(plan: process.ProcessPlan, fds: list[int]) -> None:
    pidfd, go_r, err_w, status_w, *stdio = fds
    try:
        sc.close_all_but(fds)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        sc.close_all_but([pidfd, go_r, err_w, status_w])
    except BaseException:
        os._exit(125)
    process.join_and_exec(pidfd, plan, go_r, err_w, status_w)


def _run_child(kind: str, args: tuple[Any, ...], fds: list[int], parent: int) -> None:
    try:
        if kind == "monitor":
            _child_monitor(bool(args[0]), args[1], fds, parent, bool(args[2]) if len(args) > 2 else False)
        elif kind == "proxy":
            from .proxy import run_proxy

            run_proxy(args, fds)  # type: ignore[arg-type]
        elif kind == "inside":
            from .inside import child_main

            sc.close_all_but(fds)
            child_main(args, fds)
        else:
            _child_exec(args[0], fds)
    finally:
        os._exit(1)


# -- the caller's side ----------------------------------------------------------------------------------------------

def _fork(kind: str, args: tuple[Any, ...], fds: list[int], *, reap_now: bool) -> int:
    """Run ``kind`` in a forked child with ``fds``; its pid (not a child of ours through the server).

    A monitor or a proxy of a user who is not root always comes from the fork server, which runs in the
    user's namespace (see :func:`serve`)."""
    if single_threaded() and not (kind in ("monitor", "proxy") and userns_keeper.rootless()):
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _run_child(kind, args, fds, parent)
        if reap_now:
            os.waitpid(pid, 0)
        else:
            _direct_children.append(pid)
        return pid
    return _get_server().request(kind, args, fds)


@dataclass
class Slot:
    """A monitor forked ahead of its job, with PID 1 and the command's process waiting (process.warm_up)."""

    sock: socket.socket
    pid: int  # the monitor, or for an untied slot the short-lived parent of it
    tied: bool
    speculation: Speculation | None = None
    ready: bool = False  # its monitor said so (see wait_warm)
    pid1: ProcRef | None = None  # the container's PID 1, which its monitor names when it is ready


def _new_slot(tied: bool, speculation: Speculation | None = None, *, ahead: bool = False,
              share_net: bool = False) -> Slot:
    """A monitor waiting for its job. ``ahead``: made before it is needed, so the fork server
    forks it (a small process, and not this caller's time) and this caller does not wait.
    ``share_net``: the container keeps the caller's network namespace (``--network host``)."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError as exc:
        raise from_os_error(exc) or exc from None
    try:
        if ahead:
            pid = _get_server().request("monitor", (tied, speculation, share_net), [theirs.fileno()], wait=False)
        else:
            pid = _fork("monitor", (tied, speculation, share_net), [theirs.fileno()], reap_now=not tied)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Slot(ours, pid, tied, speculation)


def take_spare(key: tuple[str, ...] | None) -> Slot | None:
    """The warm slot for a foreground start whose rootfs is ``key`` (None: no rootfs built ahead).

    A slot that built another rootfs is dropped (its monitor cleans up), and
    a plain one is taken. None when no live slot waits.
    """
    slot = _take_spare()
    if slot is None:
        return None
    if slot.speculation is not None and slot.speculation.key != key:
        _drop(slot)
        return None
    # Wait for the slot to be ready (it started warming after the previous start; waiting is
    # quicker than starting cold). Its "ready" must be read: a speculation's directory must exist
    # before a container takes it, and a slot whose "ready" is still unread when the job is sent and
    # the socket closed gets ECONNRESET instead of the job (AF_UNIX resets on close with unread data).
    if not _wait_ready(slot, 2.0):
        _drop(slot)
        return None
    return slot


def _take_spare() -> Slot | None:
    """The warm slot made after the last start, if its monitor still waits."""
    global _spare
    slot, _spare = _spare, None
    if slot is None:
        return None
    if not _alive(slot):  # its monitor died (killed): what it had made is ours to remove
        slot.sock.close()
        if slot.pid in _direct_children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(slot.pid, 0)
            _direct_children.remove(slot.pid)
        if slot.speculation is not None:
            _remove_speculation(slot.speculation)
        return None
    if slot.pid in _direct_children:
        try:
            done, _ = os.waitpid(slot.pid, os.WNOHANG)
        except ChildProcessError:
            done = slot.pid
        if done:  # its monitor died (killed): what it had made is ours to remove
            _direct_children.remove(slot.pid)
            slot.sock.close()
            if slot.speculation is not None:
                _remove_speculation(slot.speculation)
            return None
    return slot


def _alive(slot: Slot) -> bool:
    """Whether the slot's monitor still holds its end (a closed end reads as EOF at once)."""
    try:
        return slot.sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _remove_speculation(speculation: Speculation) -> None:
    with contextlib.suppress(SandboxError):
        open_cgroup(speculation.cgroup).remove()
    if os.path.exists(os.path.join(speculation.cdir, WARM_MARK)):
        remove_dir(speculation.cdir)


def start_monitor(job: Job, stdio: tuple[int, int, int] | None, slot: Slot | None = None, *,
                  use_server: bool = False) -> int:
    """Give the job to a monitor; returns the read end of its status pipe.

    A foreground container (tied to the caller) runs in ``slot`` if it got
    one (:func:`take_spare`); a detached container gets a monitor of its own
    that outlives the caller. ``use_server``: a new monitor is forked by the
    fork server even for a single-threaded caller (worth it in a long-lived
    process: copies of the small server are quicker to make and to run).
    """
    tied = not job.detached
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        for candidate in (slot, None):
            candidate = candidate or _new_slot(tied, ahead=use_server, share_net=job.host_network)
            try:
                socket.send_fds(candidate.sock, [pickle.dumps(job)], [status_w, *(stdio or ())])
                # Closing with the monitor's "ready" unread would reset the connection, and the
                # monitor would get ECONNRESET instead of the job queued for it: read it first (it
                # comes before the monitor reads the job; EOF at once if the monitor died).
                _wait_ready(candidate, None)
                break
            except OSError as exc:  # the slot's monitor died: a cold one does the same job
                if candidate is not slot:
                    raise ContainerError(f"the container's monitor is gone: {exc}") from None
            finally:
                candidate.sock.close()
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    return status_r


def warm_next(speculation: Speculation | None = None) -> None:
    """Make the warm slot for the next foreground start (building ``speculation``'s rootfs ahead).

    It warms at a low priority (the monitor raises it when the job comes),
    so that it does not slow the container that is starting.
    """
    global _spare
    if not WARM_SLOTS:
        return
    if _spare is not None:
        _drop(_spare)
        _spare = None
    try:
        _spare = _new_slot(True, speculation, ahead=True)
    except (OSError, ContainerError):
        _spare = None


def wait_warm(timeout: float = 5.0) -> bool:
    """Wait until the warm slot is ready (its processes forked, its rootfs built); False if it is not.

    A benchmark uses this so that a slot's warming does not run during a
    peer's turn; ``run`` waits for it anyway when it takes the slot.
    """
    return _spare is not None and _wait_ready(_spare, timeout)


def _wait_ready(slot: Slot, timeout: float | None) -> bool:
    if not slot.ready:
        slot.sock.settimeout(timeout)
        try:
            reply = slot.sock.recv(64).split()
            slot.ready = reply[:1] == [b"ready"]
            if slot.ready and len(reply) == 3 and int(reply[2]):
                slot.pid1 = ProcRef(int(reply[1]), int(reply[2]))
        except OSError:
            slot.ready = False
        finally:
            slot.sock.settimeout(None)
    return slot.ready


def drop(slot: Slot) -> None:
    """Let a slot go unused: its monitor removes what it made and exits."""
    _drop(slot)


def _drop(slot: Slot, wait: float = 5.0) -> None:
    """The monitor sees nothing come: it removes what it made and exits; wait for that."""
    with contextlib.suppress(OSError):
        slot.sock.shutdown(socket.SHUT_WR)
        slot.sock.settimeout(wait)
        while slot.sock.recv(16):  # "ready", if unread; then EOF once the monitor has cleaned up
            pass
    slot.sock.close()
    if slot.pid in _direct_children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(slot.pid, 0)
        _direct_children.remove(slot.pid)


def drop_spare() -> None:
    """Let the warm slot go (its monitor exits, its PID 1 dies with it)."""
    global _spare
    slot, _spare = _spare, None
    if slot is not None:
        _drop(slot)


atexit.register(drop_spare)


@contextlib.contextmanager
def without_warm_slots() -> Iterator[None]:
    """Inside the block, starts are cold: no slot is taken or made (a waiting one is kept for after)."""
    global WARM_SLOTS, _spare
    saved, _spare = _spare, None
    was, WARM_SLOTS = WARM_SLOTS, False
    try:
        yield
    finally:
        WARM_SLOTS = was
        if _spare is None:
            _spare = saved
        elif saved is not None:
            _drop(saved)


def start_exec(pidfd: int, plan: process.ProcessPlan, stdio: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Fork ``exec``'s helper; returns (pid, go_w, err_r, status_r). Write "g" on go_w once it is in the cgroup."""
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = _fork("exec", (plan,), [pidfd, go_r, err_w, status_w, *stdio], reap_now=False)
    except BaseException:
        for fd in (go_w, err_r, status_r):
            os.close(fd)
        raise
    finally:
        for fd in (go_r, err_w, status_w):
            os.close(fd)
    return pid, go_w, err_r, status_r


def start_proxy(args: tuple[Any, ...], listener: int, pidfd: int) -> None:
    """A ``-p`` proxy for a running container (see :mod:`.proxy`); it outlives the caller, not the container."""
    _fork("proxy", args, [listener, pidfd], reap_now=True)


def fork_inside(args: tuple[Any, ...], fds: list[int]) -> int:
    """Fork a child for inside.call (it joins the caller's user namespace); its pid, to reap_wait."""
    return _fork("inside", args, fds, reap_now=False)


def reap() -> None:
    """Collect directly forked children that have exited (the server reaps its own)."""
    for pid in list(_direct_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _direct_children.remove(pid)


def reap_wait(pid: int) -> None:
    """Wait for a direct child that is known to be exiting."""
    if pid in _direct_children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        _direct_children.remove(pid)


class _ForkServer:
    def __init__(self) -> None:
        import subprocess  # only a threaded caller needs it

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Isolated (-I: no PYTHON* variables, no user site, no working directory on sys.path) and run
        # from /, with only the directory this package was imported from put first on sys.path: `-m`
        # from the caller's directory would import a sandbox_kernel/ that another user planted in a
        # notebook folder (or on PYTHONPATH), as root.
        argv = [sys.executable, "-I", "-c", SERVER_MAIN, PACKAGE_PARENT, str(theirs.fileno())]
        kept = [theirs.fileno()]
        if userns_keeper.rootless():  # (see serve)
            prefix, state = _users_namespace()
            argv = [*prefix, *argv, state]
            kept += exec_helper.kept_fds()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            argv, pass_fds=kept, stdin=subprocess.DEVNULL, close_fds=True, cwd="/",
            start_new_session=True,  # not killed with the caller's process group: it cleans up after it
        )
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()
        self.unread = 0  # replies of requests that did not wait for theirs

    def request(self, kind: str, args: tuple[Any, ...], fds: list[int], *, wait: bool = True) -> int:
        """Have the server fork ``kind``; its pid, or 0 without ``wait`` (the reply is read later)."""
        with self.lock:
            try:
                while self.unread:
                    self.sock.recv(64)
                    self.unread -= 1
                socket.send_fds(self.sock, [pickle.dumps((kind, args))], fds)
                if not wait:
                    self.unread += 1
                    return 0
                reply = self.sock.recv(64)
            except OSError as exc:
                raise ContainerError(f"the fork server is gone: {exc}") from None
        if not reply:
            raise ContainerError("the fork server is gone (it exited)")
        return int(reply)


def _get_server() -> _ForkServer:
    global _server
    with _server_lock:
        if _server is None or _server.proc.poll() is not None:
            _server = _ForkServer()
        return _server


def serve(fd: int, inside: str = "") -> None:
    """The fork server's loop (single-threaded): fork one child per request until the caller goes.

    For a user who is not root the server runs in the user's namespace (userns_keeper.py), so that its
    monitors and the containers' PID 1 are made there. It must have been *exec'ed* there, not only have
    joined it: the kernel lets a process join a container through PID 1's pidfd (exec) only when it may
    ptrace PID 1, and PID 1 is not dumpable, so that takes CAP_SYS_PTRACE in the namespace its memory
    belongs to, which is the one its program was exec'ed in (the host's would need the host's root). So
    the caller does what needs the host's view (the exec helper checked and sealed, the cgroups delegated
    to the user: :func:`_users_namespace`) and starts the server through ``nsenter --user``, with that
    (``inside``) and the sealed helper's fd.
    """
    if inside:
        uid, keeper, sealed, hierarchy = pickle.loads(bytes.fromhex(inside))
        userns_keeper.joined_as(uid, keeper)
        exec_helper.adopt_sealed(sealed)
        cgroups.pin(hierarchy)
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt of the kernel is not for us
    signal.signal(signal.SIGCHLD, lambda *_: _reap_all())
    process.preload()  # made once here, inherited by every monitor
    me = os.getpid()
    while True:
        try:
            # close-on-exec, as the caller's own pipes are: an fd that must cross an exec is dup2'ed
            # (stdio); any other would leak into the container's command (exec's err_w did).
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 16, socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            continue
        except OSError:  # ECONNRESET: the caller went with replies unread
            return
        if not data:
            return
        kind, args = pickle.loads(data)
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _run_child(kind, args, fds, me)
        for received in fds:
            os.close(received)
        try:
            sock.send(str(pid).encode())
        except OSError:
            return


def _users_namespace() -> tuple[list[str], str]:
    """For a user who is not root: the command that starts the fork server in the user's namespace, and what
    it must know from the host's view (its uid, the keeper, the sealed exec helper, the delegated cgroups)."""
    process.preload()  # the exec helper: checked and copied while host paths still look as they are
    keeper = userns_keeper.ensure()
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise ContainerError("containers of users who are not root need nsenter (util-linux)")
    state = (os.geteuid(), keeper.pid, exec_helper.sealed_state(), cgroups.discover())
    return [nsenter, f"--user=/proc/{keeper.pid}/ns/user", "--preserve-credentials", "--"], pickle.dumps(state).hex()


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    serve(int(sys.argv[1]))
