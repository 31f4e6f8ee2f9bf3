"""Starting a container's processes: three stages, each one linear.

    parent   creates the cgroup, forks stage 1, puts it in the cgroup, lets it go
    stage 1  unshares the namespaces and forks stage 2 (PID 1 of the new pid
             namespace), reports its pid, exits; stage 2 is reparented to the
             parent, which is a child subreaper
    stage 2  (PID 1) builds the rootfs and pivots into it, brings up loopback,
             forks stage 3, then only reaps zombies and forwards signals
    stage 3  drops privileges in the order the kernel requires and execs the
             container's command

Errors before exec travel back over a close-on-exec pipe as one line of text;
the pipe closing empty means the exec happened. Stages 1-3 never return into
the caller's code: they end in ``execve`` or ``os._exit``.

The parent must be single-threaded when it forks (the CLI is; an IPython
kernel is not and will go through a helper process; see DESIGN.md section 6).
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import socket
import struct
import sys
from dataclasses import dataclass

from . import rootfs as rootfs_mod
from . import security
from . import syscalls as sc
from .cgroups import Cgroup
from .errors import ContainerError, ExecError

NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP

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
    nofile: int = 1024


def _cap_mask(names: tuple[str, ...]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


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


def _stage3_exec(proc: ProcessPlan, err_w: int) -> None:
    """Drop privileges in the kernel's order, then exec. Never returns."""
    try:
        for sig in (*FORWARDED_SIGNALS, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_NOFILE, (proc.nofile, proc.nofile))
        env = dict(proc.env)
        os.chdir(proc.cwd)
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
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        code = 126 if isinstance(exc, PermissionError) else 127
        _report(err_w, f"{EXEC_PREFIX}{code} exec {proc.argv[0]}: {detail}")
    os._exit(127)


def _stage2_init(plan: rootfs_mod.RootfsPlan, hostname: str, proc: ProcessPlan, err_w: int) -> None:
    """PID 1: set up the rootfs, start the command, then reap and forward signals."""
    try:
        rootfs_mod.setup(plan, hostname)
        _loopback_up()
        child = os.fork()
        if child == 0:
            _stage3_exec(proc, err_w)
    except BaseException as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        _report(err_w, f"container setup failed: {detail}{where}")
        os._exit(125)
    os.close(err_w)
    # From here on this process only waits. It is not dumpable, so nothing in
    # the container can open /proc/1/exe or /proc/1/mem (CVE-2019-5736).
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
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


def _stage1_unshare(plan: rootfs_mod.RootfsPlan, hostname: str, proc: ProcessPlan, go_r: int, pid_w: int,
                    err_w: int) -> None:
    try:
        if os.read(go_r, 1) != b"g":  # the parent has put us in the cgroup
            os._exit(1)
        os.setsid()
        sc.unshare(NAMESPACES)
        child = os.fork()  # the first child in the new pid namespace: PID 1
        if child == 0:
            os.close(pid_w)
            _stage2_init(plan, hostname, proc, err_w)
        os.write(pid_w, str(child).encode())
    except BaseException as exc:
        _report(err_w, f"cannot create namespaces: {exc}")
        os._exit(1)
    os._exit(0)


def start(plan: rootfs_mod.RootfsPlan, hostname: str, proc: ProcessPlan, cgroup: Cgroup) -> int:
    """Start the container; return the host pid of its PID 1 (a child of this process)."""
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    stage1 = os.fork()
    if stage1 == 0:
        os.close(go_w)
        os.close(pid_r)
        os.close(err_r)
        _stage1_unshare(plan, hostname, proc, go_r, pid_w, err_w)
    for fd in (go_r, pid_w, err_w):
        os.close(fd)
    try:
        cgroup.add(stage1)
        os.write(go_w, b"g")
    finally:
        os.close(go_w)
    _, status = os.waitpid(stage1, 0)
    pid_text = os.read(pid_r, 32)
    os.close(pid_r)
    error = b""
    while chunk := os.read(err_r, 4096):  # EOF: exec happened, or everyone holding the pipe died
        error += chunk
    os.close(err_r)
    pid1 = int(pid_text) if pid_text else 0
    if error or not pid1 or os.waitstatus_to_exitcode(status) != 0:
        if pid1:
            try:
                os.waitpid(pid1, 0)
            except ChildProcessError:
                pass
        message = error.decode(errors="replace").strip() or "container failed to start"
        if message.startswith(EXEC_PREFIX):
            code, _, text = message[len(EXEC_PREFIX):].partition(" ")
            raise ExecError(text, int(code))
        raise ContainerError(message)
    return pid1


def wait(pid1: int) -> int:
    """Wait for PID 1 and return docker's exit status (128+N for a signal)."""
    while True:
        try:
            _, status = os.waitpid(pid1, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)
