"""A container's processes, each step one linear function.

Starting (:func:`spawn_init`, called in the container's monitor process)::

    monitor  unshare(CLONE_NEWPID): its next child is PID 1 of a new pid
             namespace; forks it, puts it in the cgroup, lets it go
    init     (PID 1) dies with the monitor (PDEATHSIG); unshares the other
             namespaces once it is in the cgroup, builds the rootfs and pivots
             into it, brings up loopback, forks the command, then only reaps
             zombies and forwards signals
    command  drops privileges in the order the kernel requires and execs

Joining (:func:`join_and_exec`, for ``exec``): a process already placed in the
container's cgroup joins all its namespaces at once through a pidfd of its
PID 1, forks (the child is inside the pid namespace) and the child drops
privileges exactly as the command did and execs.

Errors before exec travel back over a close-on-exec pipe as one line of text;
the pipe closing empty means the exec happened. None of these functions
returns into the caller's code after a fork: they end in ``execve`` or
``os._exit``. Whoever forks must be single-threaded (DESIGN.md section 6;
see launcher.py).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import resource
import select
import signal
import socket
import struct
from dataclasses import dataclass

from . import rootfs as rootfs_mod
from . import security
from . import syscalls as sc
from .cgroups import Cgroup
from .errors import ContainerError, ExecError

# Unshared by PID 1 itself; the pid namespace is made by the monitor (unshare only affects its children).
NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWCGROUP
JOIN = NAMESPACES | sc.CLONE_NEWPID
INIT_NAME = b"sandbox-init"

# podman's default capability set (DESIGN.md section 4)
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
    "SETPCAP": 8, "NET_BIND_SERVICE": 10, "SYS_CHROOT": 18, "SETFCAP": 31,
}
EXEC_PREFIX = "\x00exec:"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGWINCH)


@dataclass(frozen=True)
class ProcessPlan:
    """The container's command and who it runs as."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    capabilities: tuple[str, ...] = tuple(CAPABILITIES)
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (resource.RLIMIT_*, soft, hard)


def _cap_mask(names: tuple[str, ...]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


@functools.cache
def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except OSError:
        return 40


def _report(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode()[:4000])
    except OSError:
        pass


def _loopback_up() -> None:
    """Bring ``lo`` up in the new network namespace (SIOCSIFFLAGS, no extra imports)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def _find_executable(name: str, env: dict[str, str]) -> str:
    if "/" in name:
        return name
    for directory in env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("executable file not found in $PATH")


def exec_command(proc: ProcessPlan, err_w: int) -> None:
    """Drop privileges in the kernel's order, then exec. Never returns."""
    try:
        for sig in (*FORWARDED_SIGNALS, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        for which, soft, hard in proc.rlimits:
            resource.setrlimit(which, (soft, hard))
        env = dict(proc.env)
        os.chdir(proc.cwd)
        if not os.getcwd().startswith("/"):  # "(unreachable)/...": a cwd outside our root (CVE-2024-21626)
            raise PermissionError(1, "working directory is outside the container")
        # Bounding set first: dropping needs CAP_SETPCAP, which the next steps may remove.
        keep = _cap_mask(proc.capabilities)
        for cap in range(_last_cap() + 1):
            if not keep & (1 << cap):
                sc.prctl(sc.PR_CAPBSET_DROP, cap)
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        sc.capset(keep, keep, keep)
        os.setgroups(list(proc.groups))
        os.setgid(proc.gid)
        os.setuid(proc.uid)  # a non-root uid loses the capabilities here
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        executable = _find_executable(proc.argv[0], env)
        security.install()  # as close to exec as possible: only close_range and execve follow
        # No host file descriptor survives into the container: only stdio and err_w (close-on-exec).
        sc.close_range(3, err_w - 1)
        sc.close_range(err_w + 1)
        os.execve(executable, list(proc.argv), env)
    except BaseException as exc:  # reported to the parent as one line
        code = 126 if isinstance(exc, PermissionError) else 127
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _report(err_w, f"{EXEC_PREFIX}{code} exec {proc.argv[0]}: {detail}")
    os._exit(127)


def _error_line(exc: BaseException) -> str:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    return f"{detail}{where}"


_init_name = ctypes.create_string_buffer(INIT_NAME + b"\0")


@functools.cache
def _argv_range() -> tuple[int, int]:
    """Where this process's command line is in memory (the same in a forked child)."""
    with open("/proc/self/stat", "rb") as fh:
        data = fh.read()
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[45]), int(fields[46])


def _rename_self() -> None:
    """Show ``sandbox-init`` as PID 1's name and command line, not the host's Python command line.

    The command line lives in our own memory, between arg_start and arg_end
    (/proc/self/stat fields 48 and 49): overwrite it in place (setproctitle's
    way; PR_SET_MM would need CAP_SYS_RESOURCE).
    """
    sc.prctl(sc.PR_SET_NAME, ctypes.addressof(_init_name))
    start, end = _argv_range()
    if 0 < start < end and end - start > len(INIT_NAME):
        ctypes.memset(start, 0, end - start)
        ctypes.memmove(start, INIT_NAME, len(INIT_NAME))


def _init_main(plan: rootfs_mod.RootfsPlan, hostname: str, proc: ProcessPlan, go_r: int, err_w: int) -> None:
    """PID 1: set up the rootfs, start the command, then reap and forward signals. Never returns."""
    try:
        # Die with the monitor, whatever kills it: nothing outlives the process that owns the state.
        # (getppid() says 0 here: the monitor is outside our pid namespace. If it died before
        # the prctl, its end of go_r is closed and the read below returns nothing.)
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        # Not dumpable from the start: nothing in the container may ever open /proc/1/mem or
        # /proc/1/exe (CVE-2019-5736); the command's execve makes it dumpable again.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        _rename_self()
        os.setsid()
        # The rootfs is built while the monitor moves us into the cgroup (a cgroup v1 move
        # waits for an RCU grace period, milliseconds): the two overlap.
        sc.unshare(NAMESPACES & ~sc.CLONE_NEWCGROUP)
        rootfs_mod.setup(plan, hostname)
        _loopback_up()
        if os.read(go_r, 1) != b"g":  # "g": the monitor put us in the cgroup
            os._exit(1)
        os.close(go_r)
        sc.unshare(sc.CLONE_NEWCGROUP)  # in the cgroup now: the cgroup namespace is rooted there
        child = os.fork()
        if child == 0:
            exec_command(proc, err_w)
    except BaseException as exc:
        _report(err_w, f"container setup failed: {_error_line(exc)}")
        os._exit(125)
    os.close(err_w)
    # From here on this process only waits, with no fd but stdio and only CAP_KILL.
    sc.close_range(3)
    for cap in range(_last_cap() + 1):
        if cap != CAPABILITIES["KILL"]:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.capset(1 << CAPABILITIES["KILL"], 1 << CAPABILITIES["KILL"], 0)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def read_error(err_r: int) -> str:
    error = b""
    while chunk := os.read(err_r, 4096):  # EOF: exec happened, or everyone holding the pipe died
        error += chunk
    os.close(err_r)
    return error.decode(errors="replace").strip()


def _raise_start_error(message: str) -> None:
    if message.startswith(EXEC_PREFIX):
        code, _, text = message[len(EXEC_PREFIX):].partition(" ")
        raise ExecError(text, int(code))
    raise ContainerError(message or "container failed to start")


def spawn_init(plan: rootfs_mod.RootfsPlan, hostname: str, proc: ProcessPlan, cgroup: Cgroup,
               stdio: tuple[int, int, int]) -> int:
    """Start the container from its monitor; return the host pid of its PID 1 (our child).

    Call at most once per process: the new pid namespace is for this process's children.
    ``stdio`` become the container's fds 0, 1 and 2.
    """
    security.compiled()  # built once here, not in every child
    _argv_range()
    _last_cap()
    sc.unshare(sc.CLONE_NEWPID)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid1 = os.fork()
    if pid1 == 0:
        try:
            os.close(go_w)
            os.close(err_r)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)  # dup2 clears close-on-exec on the copy
        except BaseException:
            os._exit(125)
        _init_main(plan, hostname, proc, go_r, err_w)
    os.close(go_r)
    os.close(err_w)
    try:
        cgroup.add(pid1)  # PID 1 builds the rootfs meanwhile
        os.write(go_w, b"g")
    except BaseException as exc:
        os.kill(pid1, signal.SIGKILL)
        os.waitpid(pid1, 0)
        _raise_start_error(read_error(err_r) or str(exc))  # PID 1's own error says more, if it has one
    finally:
        os.close(go_w)
    error = read_error(err_r)
    if error:
        os.waitpid(pid1, 0)
        _raise_start_error(error)
    return pid1


def join_and_exec(pidfd: int, proc: ProcessPlan, go_r: int, err_w: int, status_w: int) -> None:
    """``exec``'s helper process: join the container and run ``proc`` in it.

    The caller has put this process in the container's cgroup before writing
    "g" on ``go_r``. The command's exit status is written on ``status_w`` as
    decimal text (whoever forked us may not be the caller). Never returns.
    """
    try:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        if os.read(go_r, 1) != b"g":
            os._exit(125)
        os.close(go_r)
        # Every namespace at once, atomically, through the pidfd (Linux 5.8): no /proc path races.
        sc.setns(pidfd, JOIN)
        os.close(pidfd)
        child = os.fork()  # in the container's pid namespace
        if child == 0:
            os.close(status_w)
            os.setsid()
            exec_command(proc, err_w)
    except BaseException as exc:
        _report(err_w, f"cannot join the container: {_error_line(exc)}")
        os._exit(125)
    os.close(err_w)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    code = wait(child)
    _report(status_w, str(code))
    os._exit(code)


def wait(pid: int) -> int:
    """Wait for ``pid`` and return docker's exit status (128+N for a signal)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The fds of ``fds`` that are readable (or closed) within ``timeout`` seconds."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [fd for fd, _ in poller.poll(None if timeout is None else int(timeout * 1000))]
