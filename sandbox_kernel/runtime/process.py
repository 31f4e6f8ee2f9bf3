"""A container's processes, each step one linear function.

Starting happens in two halves, so that the first can be done ahead of time
(a *warm slot*, see launcher.py)::

    warm_up (in the monitor)
      monitor  unshare(CLONE_NEWPID): its next child is PID 1 of a new pid
               namespace; forks it
      PID 1    dies with the monitor (PDEATHSIG), not dumpable, new session;
               unshares mount, uts, ipc and net; loopback up, ports below
               1024 open to the container; starts the
               command's process (sk-exec, the compiled one of
               exec_helper.py, or else a fork of itself); both wait
    prepare (with the rootfs plan: with the job, or ahead of it)
      PID 1    builds the rootfs and pivots into it (which moves the waiting
               command's process too); closes what it will not need; then
               (with a user namespace) unshares the user namespace, so that
               every namespace but that one belongs to the host's root, and
               the container's root owns none of them (bubblewrap's order as
               setuid); cuts its bounding set to CAP_KILL, passes signals on
               to the command
      monitor  writes the user namespace's uid and gid maps
    go (with the job, once the monitor has put both processes in the cgroup)
      PID 1    becomes the container's root (setresuid(0) in its namespace,
               no supplementary groups), unshares the cgroup namespace, keeps
               only CAP_KILL, then only reaps zombies and forwards signals
      command  gets its plan, stdio and the user namespace from the monitor,
               unshares its cgroup namespace, sets its rlimits, joins the
               user namespace, drops privileges in the order the kernel
               requires (exec_command, or the same steps in sk_exec.c) and
               execs

So on the host every process of a container runs as an id of its range,
never as root: PID 1 as the range's first id, the command as whoever it is
inside plus the range's start.

Joining (:func:`join_and_exec`, for ``exec``): a process already placed in the
container's cgroup sets its rlimits, joins all its namespaces at once through
a pidfd of its PID 1, forks (the child is inside the pid namespace) and the
child drops privileges exactly as the command did and execs.

Errors before exec travel back over a close-on-exec pipe as one line of text;
the pipe closing empty means the exec happened. None of these functions
returns into the caller's code after a fork: they end in ``execve`` or
``os._exit``. Whoever forks must be single-threaded (see launcher.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import pickle
import resource
import select
import signal
import socket
import struct
import termios
from dataclasses import dataclass, replace
from typing import NoReturn

from . import exec_helper, security, userns_keeper
from . import idmap as idmap_mod
from . import rootfs as rootfs_mod
from . import syscalls as sc
from .errors import ContainerError, ExecError, SandboxError

# Unshared by PID 1 itself; the pid namespace is made by the monitor (unshare only affects its children).
NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWCGROUP
JOIN = NAMESPACES | sc.CLONE_NEWPID
INIT_NAME = b"sandbox-init"

# podman's default capability set (SECURITY.md)
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
    userns: bool = False  # the container has a user namespace of its own (for exec: join it too)
    no_setid: bool = False  # no setuid/setgid bits may be set (a writable volume: security.py)


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


def _allow_low_ports() -> None:
    """Let the container bind ports below 1024 in its own network namespace, as docker does.

    The namespace belongs to the host's root, so the container's root has no
    CAP_NET_BIND_SERVICE there: the namespace's own sysctl opens them instead.
    """
    try:
        fd = os.open("/proc/sys/net/ipv4/ip_unprivileged_port_start", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # Linux before 4.11
        return
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


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


def _forward_signals(child: int, group: bool = False) -> None:
    """Pass the signals a user sends (stop, Ctrl-C, kill -s) on to ``child``.

    ``group`` (exec): to its process group. The exec'd command leads its own session, so the
    group is the command and what it started, as a terminal's Ctrl-C reaches a shell's
    foreground job (``sh -c 'sleep 100'`` stops at once, not after the sleep). PID 1 passes
    signals to the main process only, as docker's ``kill -s`` does.
    """

    def forward(signum: int, _frame: object) -> None:
        try:
            if group:
                os.killpg(child, signum)
            else:
                os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)


def _drop_bounding(keep: int) -> None:
    """Cut the bounding set to ``keep`` (capabilities already dropped are skipped: no syscall each)."""
    for cap in range(_last_cap() + 1):
        if not keep & (1 << cap) and sc.prctl(sc.PR_CAPBSET_READ, cap) == 1:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)


def _set_rlimits(proc: ProcessPlan) -> None:
    for which, soft, hard in proc.rlimits:
        resource.setrlimit(which, (soft, hard))


def exec_command(proc: ProcessPlan, err_w: int, seccomp: security.Prepared | None = None,
                 userns: int | None = None) -> None:
    """Drop privileges in the kernel's order, then exec. Never returns.

    ``userns``: the container's user namespace, joined after the rlimits (raising a
    hard limit needs the host's CAP_SYS_RESOURCE) and before anything else.
    """
    try:
        for sig in (*FORWARDED_SIGNALS, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        if os.isatty(0):  # run/exec -t: a session of our own, with the container's terminal as its terminal
            with contextlib.suppress(PermissionError):  # (already a session leader: exec's child is one)
                os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        _set_rlimits(proc)
        if userns is not None:  # full capabilities in it, none on the host from here on
            sc.setns(userns, sc.CLONE_NEWUSER)
            os.close(userns)
        if seccomp is None or seccomp.no_setid != proc.no_setid:
            seccomp = security.Prepared(no_setid=proc.no_setid)
        env = dict(proc.env)
        os.chdir(proc.cwd)
        if not os.getcwd().startswith("/"):  # "(unreachable)/...": a cwd outside our root (CVE-2024-21626)
            raise PermissionError(1, "working directory is outside the container")
        # Bounding set first: dropping needs CAP_SETPCAP, which the next steps may remove.
        keep = _cap_mask(proc.capabilities)
        _drop_bounding(keep)
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        sc.capset(keep, keep, keep)
        try:
            os.setgroups(list(proc.groups))
        except PermissionError:
            if proc.groups or not _setgroups_denied():
                raise
        os.setgid(proc.gid)
        os.setuid(proc.uid)  # a non-root uid loses the capabilities here
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        executable = _find_executable(proc.argv[0], env)
        seccomp.install()  # as close to exec as possible: close_range, execve follow
        # No host file descriptor survives into the container: only stdio and err_w (close-on-exec,
        # made sure of here: a caller that passed it over a socket may not have said so).
        os.set_inheritable(err_w, False)
        sc.close_range(3, err_w - 1)
        sc.close_range(err_w + 1)
        os.execve(executable, list(proc.argv), env)
    except BaseException as exc:  # reported to the parent as one line
        code = 126 if isinstance(exc, PermissionError) else 127
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _report(err_w, f"{EXEC_PREFIX}{code} exec {proc.argv[0]}: {detail}")
    os._exit(127)


def _setgroups_denied() -> bool:
    """A user namespace that maps one id (a user with no /etc/subgid range) denies setgroups: the groups the
    process has are then all it can have, and an empty list asked for is not an error."""
    try:
        with open("/proc/self/setgroups") as fh:
            return fh.read().strip() == "deny"
    except OSError:
        return False


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


def _spawn_helper(helper: str, cmd_sock: socket.socket, err_w: int) -> int:
    """Start the compiled command process (exec_helper.py): its socket on fd 3, the error pipe on fd 4."""
    # Copies above 4 first, so that moving one to 3 or 4 cannot clobber the other (sk-exec closes them).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_sock.fileno(), err_w)]
    try:
        return os.posix_spawn(helper, ["sk-exec"], {}, setsigmask=(),
                              file_actions=[(os.POSIX_SPAWN_DUP2, high[0], 3), (os.POSIX_SPAWN_DUP2, high[1], 4)])
    finally:
        for fd in high:
            os.close(fd)


def _warm_init(sock: socket.socket, cmd_sock: socket.socket, err_w: int, exit_w: int, helper: str | None,
               share_net: bool = False) -> None:
    """PID 1 of a warm slot. Never returns.

    Before a job comes: dies with the monitor, becomes non-dumpable, leaves
    the session, unshares every namespace but the cgroup one, brings up
    loopback and starts the command's process (which talks to the monitor
    itself, on ``cmd_sock``): ``helper``, the compiled one, if there is one,
    or else a fork running :func:`_warm_command`. Then builds the rootfs when told what to build
    (pivot_root moves the waiting command's process into it too), says
    "built", and on "go" (both are in the cgroup now) unshares the cgroup
    namespace. Then only reaps and forwards signals.
    """
    try:
        # (getppid() says 0 here: the monitor is outside our pid namespace. If it died before
        # the prctl, the socket is closed and the recv below returns nothing.)
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        # Not dumpable from the start: nothing in the container may ever open /proc/1/mem or
        # /proc/1/exe (CVE-2019-5736); the command's execve makes it dumpable again.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        _rename_self()
        os.setsid()
        if share_net:  # --network host: the caller's interfaces, documented as unsafe for untrusted code
            sc.unshare(NAMESPACES & ~sc.CLONE_NEWCGROUP & ~sc.CLONE_NEWNET)
        else:
            sc.unshare(NAMESPACES & ~sc.CLONE_NEWCGROUP)
            _loopback_up()
            _allow_low_ports()
        os.chdir("/")  # the old root: pivot_root moves a cwd that is there, and only that
        if helper is not None:
            child = _spawn_helper(helper, cmd_sock, err_w)
        else:
            child = os.fork()
            if child == 0:
                try:
                    sock.close()
                except BaseException:
                    os._exit(125)
                _warm_command(cmd_sock, err_w)
        cmd_sock.close()
        # What to build: (plan, hostname, volume owners), with a user namespace for each owner; may come
        # long before the job.
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 16)
        if not data:
            os._exit(0)  # the slot was dropped unused
        plan, hostname, owners = pickle.loads(data)
        rootfs_mod.setup(plan, hostname, dict(zip(owners, fds, strict=True)))
        # What waiting needs, made before the job: no fd but stdio, the monitor's socket and the two
        # pipes; the user namespace (the monitor writes its maps once we said "built"); only CAP_KILL
        # in the bounding set (the effective set keeps CAP_SYS_ADMIN for the unshare below); signals
        # passed on to the command.
        sc.close_all_but([sock.fileno(), err_w, exit_w])
        if plan.idmap is not None:
            try:
                sc.unshare(sc.CLONE_NEWUSER)  # (it gives a full bounding set in the new namespace: cut after)
            except OSError as exc:
                raise ContainerError(f"cannot make the container's user namespace ({exc.strerror}): are user "
                                     "namespaces off on this host (sysctl user.max_user_namespaces)?") from None
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # (a change of credentials clears it)
        _drop_bounding(1 << CAPABILITIES["KILL"])
        _forward_signals(child)
        sock.send(b"built")
        if sock.recv(16) != b"go":  # the monitor put us and the command's process in the cgroup
            os._exit(0)
        if plan.idmap is not None:  # the container's root, with no host group left over
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            # The change of credentials cleared the death signal: set it again, and if the monitor
            # died before that, it closed its end of the exit pipe (POLLERR on ours): go with it.
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if _reader_gone(exit_w):
                os._exit(0)
        sc.unshare(sc.CLONE_NEWCGROUP)  # rooted at the container's cgroup, as the command's will be
    except BaseException as exc:
        _report(err_w, f"container setup failed: {_error_line(exc)}")
        os._exit(125)
    os.close(err_w)
    sock.close()
    # From here on this process only waits, with no fd but stdio and the pipe that tells the
    # monitor the command's exit status, and with only CAP_KILL.
    sc.capset(1 << CAPABILITIES["KILL"], 1 << CAPABILITIES["KILL"], 0)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
            # The monitor hears the status now, before the namespaces are torn down with us.
            _report_exit(exit_w, code)
            os._exit(code)


def _reader_gone(fd: int) -> bool:
    """Whether the read end of the pipe whose write end is ``fd`` was closed (its holder died)."""
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR is always reported
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _report_exit(fd: int, code: int) -> None:
    try:
        os.write(fd, code.to_bytes(4, "little", signed=True))
    except OSError:
        pass


def _warm_command(sock: socket.socket, err_w: int) -> None:
    """The command's process in a warm slot: says ready, waits for its plan and stdio, execs. Never returns."""
    try:
        # What does not depend on the job is done before it comes: the filter's memory, and the
        # bounding set cut to the default capabilities (the effective set keeps CAP_SYS_ADMIN for
        # the unshare below; exec_command cuts the rest).
        seccomp = security.Prepared()
        _drop_bounding(_cap_mask(ProcessPlan.capabilities))
        sock.send(b"ready")  # the monitor reads our host pid from the message's credentials
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        if not data or len(fds) not in (3, 4):
            os._exit(0)
        proc = pickle.loads(data)
        userns = fds[3] if len(fds) == 4 else None  # the container's user namespace
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        sock.close()
        sc.unshare(sc.CLONE_NEWCGROUP)  # we are in the container's cgroup now
    except BaseException as exc:
        _report(err_w, f"container setup failed: {_error_line(exc)}")
        os._exit(125)
    exec_command(proc, err_w, seccomp, userns)


def read_error(err_r: int) -> str:
    error = b""
    while chunk := os.read(err_r, 4096):  # EOF: exec happened, or everyone holding the pipe died
        error += chunk
    os.close(err_r)
    return error.decode(errors="replace").strip()


def _raise_start_error(message: str) -> NoReturn:
    if message.startswith(EXEC_PREFIX):
        code, _, text = message[len(EXEC_PREFIX):].partition(" ")
        raise ExecError(text, int(code))
    raise ContainerError(message or "container failed to start")


@dataclass
class Warm:
    """A container's processes, forked ahead of its job (see :func:`warm_up`)."""

    pid1: int
    command: int
    sock: socket.socket  # to PID 1
    cmd_sock: socket.socket  # to the command's process
    err_r: int
    exit_r: int  # PID 1 writes the command's exit status here before it exits
    compiled: bool = False  # the command's process is sk-exec (exec_helper.py), not a fork of Python
    building: bool = False
    built: bool = False
    reaped: bool = False
    idmap: idmap_mod.IdMap | None = None  # the plan's: PID 1 makes a user namespace, we write its maps
    userns: int | None = None  # PID 1's user namespace, once mapped: the command's process joins it

    def close(self) -> None:
        self.sock.close()
        self.cmd_sock.close()
        if self.userns is not None:
            os.close(self.userns)
            self.userns = None


def preload() -> str | None:
    """Make what every container's processes need once, in the process that forks them; the helper's path."""
    security.compiled()
    _argv_range()
    _last_cap()
    return exec_helper.path()


def warm_up(share_net: bool = False) -> Warm:
    """In the monitor: fork PID 1 of a new pid namespace, which forks the command's process.

    Call at most once per process: the new pid namespace is for this
    process's children. Both wait for :func:`prepare` and :func:`go`.
    """
    helper = preload()
    sc.unshare(sc.CLONE_NEWPID)
    to_pid1, pid1_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    to_cmd, cmd_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    to_cmd.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    pid1 = os.fork()
    if pid1 == 0:
        try:
            to_pid1.close()
            to_cmd.close()
            os.close(err_r)
            os.close(exit_r)
        except BaseException:
            os._exit(125)
        _warm_init(pid1_end, cmd_end, err_w, exit_w, helper, share_net)
    pid1_end.close()
    cmd_end.close()
    os.close(err_w)
    os.close(exit_w)
    # The command's process says "ready"; the kernel gives its pid as we see it (SCM_CREDENTIALS).
    reply, ancillary, _, _ = to_cmd.recvmsg(16, socket.CMSG_SPACE(struct.calcsize("3i")))
    command = 0
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            command = struct.unpack("3i", data[:struct.calcsize("3i")])[0]
    warm = Warm(pid1, command, to_pid1, to_cmd, err_r, exit_r, compiled=helper is not None)
    if reply != b"ready" or command <= 0:
        abort(warm, ContainerError("PID 1 died"))
    return warm


def prepare(warm: Warm, plan: rootfs_mod.RootfsPlan, hostname: str) -> None:
    """Have PID 1 build the rootfs now (it needs neither the cgroup nor stdio for that).

    Volumes that belong to a host user get a user namespace each that maps
    the container's root to that user, for their idmapped mounts.
    """
    owners = sorted({o for o in plan.volume_owners if o is not None})
    fds: list[int] = []
    try:
        if owners:
            assert plan.idmap is not None
            for uid, gid in owners:
                fds.append(idmap_mod.userns_fd(f"{uid} {plan.idmap.uid} 1\n", f"{gid} {plan.idmap.gid} 1\n"))
        socket.send_fds(warm.sock, [pickle.dumps((plan, hostname, owners))], fds)
    finally:
        for fd in fds:
            os.close(fd)
    warm.idmap = plan.idmap
    warm.building = True


def wait_built(warm: Warm) -> None:
    """Wait until PID 1 has built the rootfs; raises what went wrong if it could not."""
    if warm.built:
        return
    try:
        reply = warm.sock.recv(16)
    except OSError as exc:
        reply = b""
        reason: BaseException = exc
    else:
        reason = ContainerError("PID 1 died")
    if reply != b"built":
        abort(warm, reason)
    if warm.idmap is not None:
        try:
            idmap_mod.write_maps(warm.pid1, warm.idmap.uid_map(), warm.idmap.gid_map())
            warm.userns = os.open(f"/proc/{warm.pid1}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            abort(warm, ContainerError(f"cannot map the container's user namespace: {_error_line(exc)}"))
    warm.built = True


def go(warm: Warm, proc: ProcessPlan, stdio: tuple[int, int, int]) -> None:
    """Start the command (PID 1 and the command's process must be in the cgroup by now).

    Returns once the command has been executed; raises :class:`ExecError` or
    :class:`ContainerError` when it could not be.
    """
    wait_built(warm)
    try:
        plan = _encode(proc) if warm.compiled else pickle.dumps(proc)
    except ValueError as exc:
        abort(warm, ExecError(f"exec {proc.argv[0] if proc.argv else ''}: {exc}", 127))
    fds = [*stdio, *([warm.userns] if warm.userns is not None else [])]
    try:
        warm.sock.send(b"go")  # PID 1 first: it holds the error pipe open until it has the go
        socket.send_fds(warm.cmd_sock, [plan], fds)
    except OSError:
        pass  # one of them is gone: its error, on the error pipe, says why
    finally:
        warm.close()
    error = read_error(warm.err_r)
    if error:
        os.waitpid(warm.pid1, 0)
        _raise_start_error(error)


def _encode(proc: ProcessPlan) -> bytes:
    return exec_helper.encode(proc.argv, proc.env, proc.cwd, proc.uid, proc.gid, proc.groups,
                              _cap_mask(proc.capabilities), proc.rlimits, security.compiled(no_setid=proc.no_setid))


def wait_exit(warm: Warm) -> int:
    """The command's exit status (docker's: 128+N for a signal), as soon as PID 1 has it.

    PID 1 exits right after and the kernel tears its namespaces down; call
    :func:`reap` once the caller has been told. If PID 1 itself was killed
    (stop, kill), its own status is the container's.
    """
    data = b""
    while len(data) < 4:
        chunk = os.read(warm.exit_r, 4 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) == 4:
        return int.from_bytes(data, "little", signed=True)
    warm.reaped = True
    return wait(warm.pid1)


def reap(warm: Warm) -> None:
    """Collect PID 1 (after :func:`wait_exit`): its namespaces are gone when this returns."""
    if not warm.reaped:
        warm.reaped = True
        wait(warm.pid1)
    os.close(warm.exit_r)


def abort(warm: Warm, reason: BaseException) -> NoReturn:
    """Kill the warm processes and raise what went wrong (PID 1's own error says more, if it has one)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(warm.pid1, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(warm.pid1, 0)
    warm.close()
    message = read_error(warm.err_r)
    if not message and isinstance(reason, SandboxError):
        raise reason
    _raise_start_error(message or str(reason))


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
        _set_rlimits(proc)  # while we are host root (raising a hard limit needs it)
        # Every namespace at once, atomically, through the pidfd (Linux 5.8): no /proc path races.
        # (a user's namespace is the container's own when we were forked in it: launcher.serve)
        sc.setns(pidfd, JOIN | (sc.CLONE_NEWUSER if proc.userns and not userns_keeper.joined() else 0))
        os.close(pidfd)
        child = os.fork()  # in the container's pid namespace
        if child == 0:
            os.close(status_w)
            os.setsid()
            exec_command(replace(proc, rlimits=()), err_w)
    except BaseException as exc:
        _report(err_w, f"cannot join the container: {_error_line(exc)}")
        os._exit(125)
    os.close(err_w)
    _forward_signals(child, group=True)
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
