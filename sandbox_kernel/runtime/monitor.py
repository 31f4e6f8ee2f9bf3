"""The monitor: one small host process per running container (conmon's job).

It is the parent of the container's PID 1, so it is the one that learns the
exit status. In order, it:

1. detaches from the caller if the container is detached (new session, stdio
   on /dev/null, no inherited fd), or else arranges to hear of the caller's death;
2. forks PID 1 and the command's process ahead of the job (process.warm_up),
   and for a warm slot with a speculation also makes the cgroup and has PID 1
   build the rootfs; then waits for the job on the slot's socket;
3. makes the cgroup if not done, lets the command go (process.go), records
   ``running`` in state.json and tells the caller, over the status pipe, as
   one JSON line;
4. copies a detached container's output into its size-capped log, until PID 1
   exits;
5. records the exit (status, OOM kill), removes the cgroup (and the container
   directory for ``--rm``), tells the caller, and exits.

A foreground container's monitor gets SIGTERM when its caller dies (PDEATHSIG):
it kills the container and records the exit. If the monitor itself is killed,
PID 1 dies with it (its own PDEATHSIG) and the next call that looks at the
container reconciles its state (container.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from . import exec_helper, process, userns_keeper
from . import syscalls as sc
from .cgroups import Cgroup, open_cgroup
from .errors import ExecError, SandboxError
from .logs import STDERR, STDOUT, LogWriter
from .rootfs import DEVICE_RULES, RootfsPlan
from .spec import Limits
from .state import EXITED, GONE_PREFIX, PAUSED, RUNNING, STARTING, WARM_MARK, ContainerDir, Names, ProcRef, remove_dir


@dataclass(frozen=True)
class Speculation:
    """What a warm slot builds before its job comes: the next container's cgroup and rootfs.

    Made by the caller from the last foreground start (same image, no
    volumes); a job with another plan does not take the slot.
    """

    key: tuple[str, ...]
    cid: str
    cdir: str
    plan: RootfsPlan
    hostname: str
    cgroup: str
    owner: tuple[int, int]  # (pid, start) of the process that made the slot
    disk_size: int | None = None  # its writable layer's file system (disk.py), made ahead too


@dataclass(frozen=True)
class Job:
    """What the monitor is asked to run."""

    cdir: str
    name: str
    plan: RootfsPlan
    hostname: str
    proc: process.ProcessPlan
    cgroup: str
    limits: Limits
    detached: bool
    remove: bool
    log_max: int
    fresh: bool = False  # created by the caller for this start: no other process can have started it
    announce: bool = True  # send "started"; a foreground caller that had PID 1 with "ready" needs no such event
    network: NetJob | None = None  # a user-defined network to put the container on before its command runs
    host_network: bool = False  # --network host: the caller's network namespace (a slot made for it)


@dataclass(frozen=True)
class NetJob:
    """Where the container goes: network ``name`` of the store at ``root``, bridges in ``host_netns``."""

    root: str
    name: str
    container: str
    container_name: str
    hostname: str
    host_netns: str | None = None

    def networks(self) -> Any:
        from .network import Networks

        return Networks(Path(self.root), host_netns=self.host_netns or "")

    def connect(self, pid1: int) -> None:
        networks = self.networks()
        networks.connect(self.name, self.container, self.container_name, f"/proc/{pid1}/ns/net",
                         hostname=self.hostname)
        networks.write_hosts(self.name, Path(self.root) / "containers")

    def disconnect(self) -> None:
        networks = self.networks()
        networks.disconnect(self.name, self.container)
        networks.write_hosts(self.name, Path(self.root) / "containers")


def _send(fd: int | None, **event: object) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    except OSError:
        pass  # the caller went away; the state file still tells


def _detach(keep: int) -> int:
    """Leave the caller's session and every fd of the caller behind; ``keep`` becomes fd 3."""
    os.setsid()
    os.chdir("/")
    null = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if keep != 3:
        os.dup2(keep, 3)
    sc.close_all_but([3, *exec_helper.kept_fds()])  # (the exec helper's sealed copy stays: PID 1 spawns it)
    return 3


WARM_NICE = 10
QUICK_EXIT = 0.002  # seconds: a foreground command done by then is not written down as running


class _CallerGone(Exception):
    """The process that made this slot died before giving it a job."""


def _caller_gone(_signum: int, _frame: object) -> None:
    raise _CallerGone


_orphaned = False


def _caller_died(pid1: int) -> None:
    global _orphaned
    _orphaned = True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid1, signal.SIGKILL)


def _nice(value: int) -> bool:
    """Lower our priority if it can be raised back (CAP_SYS_NICE); True if it was lowered."""
    if userns_keeper.rootless() or os.getpriority(os.PRIO_PROCESS, 0) != 0:
        return False
    os.setpriority(os.PRIO_PROCESS, 0, value)
    return True


def monitor_main(sock: int, tied: bool, caller: int, speculation: Speculation | None = None,
                 share_net: bool = False) -> NoReturn:
    """Run in a freshly forked process; never returns.

    ``sock`` is the slot's socket: the job comes on it (with the status pipe
    and, for a tied container, its stdio); nothing coming means the slot was
    dropped. A tied monitor dies with ``caller``; an untied one (detached
    containers) leaves the caller's session behind. With ``speculation`` the
    container's cgroup and rootfs are made before the job comes.
    """
    code = 0
    try:
        _monitor(sock, tied, caller, speculation, share_net)
    except BaseException:
        code = 1
    os._exit(code)


def _monitor(sock_fd: int, tied: bool, caller: int, speculation: Speculation | None, share_net: bool = False
             ) -> None:
    """A slot's life: its processes made ahead, the container's cgroup and rootfs too for a warm start
    (:func:`_build_ahead`), the job awaited, then the container run (:func:`_run`)."""
    slot = socket.socket(fileno=_tie_or_detach(sock_fd, tied, caller))
    niced = tied and _nice(WARM_NICE)  # a slot warms at a low priority, not to slow a running start
    warm = process.warm_up(share_net)  # ahead of the job when this is a warm slot
    refs = ProcRef.me(), ProcRef.of(warm.pid1)  # the state names both; asked now, not on the start's time
    cgroup = _build_ahead(warm, speculation) if speculation is not None else None
    try:
        with contextlib.suppress(OSError):
            # For launcher.wait_warm(); with PID 1, so that the caller can signal it from the start.
            slot.send(b"ready %d %d" % (warm.pid1, refs[1].start if refs[1] else 0))
        data, fds, _, _ = socket.recv_fds(slot, 1 << 20, 4)
    except (_CallerGone, OSError):  # OSError: ECONNRESET when the caller closed without reading "ready"
        data, fds = b"", []
    if tied:  # from here on the caller's death kills the container
        signal.signal(signal.SIGTERM, lambda *_: _caller_died(warm.pid1))
    if not data:  # dropped unused: clean up, then close (the caller may wait for that)
        _drop(warm, cgroup, speculation)
        slot.close()
        return
    slot.close()
    if niced:
        for pid in (0, warm.pid1, warm.command):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, 0)
    job: Job = pickle.loads(data)
    status_w = fds[0]
    if speculation is not None and (job.plan != speculation.plan or job.cgroup != speculation.cgroup):
        _drop(warm, cgroup, None)
        _send(status_w, event="error", message="internal error: the job does not match its warm slot",
              exit_code=125)
        return
    _run(job, warm, refs, status_w, tuple(fds[1:4]) if len(fds) == 4 else None, cgroup)


def _tie_or_detach(sock_fd: int, tied: bool, caller: int) -> int:
    """Signals as a monitor needs them; a tied monitor dies with ``caller``, an untied one leaves its session.
    Returns the slot's socket fd (moved when detaching)."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)  # the caller forwards what the user types
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not tied:
        return _detach(sock_fd)
    # Our own session: a signal to the caller's process group (a terminal's Ctrl-C, Jupyter
    # killing a kernel's group) is not for us; the caller passes on what the container must get.
    os.setsid()
    # The caller's death is a SIGTERM: a waiting slot cleans up, a running container is
    # killed and its exit recorded, as if the caller had stopped it.
    signal.signal(signal.SIGTERM, _caller_gone)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != caller:
        os._exit(1)
    return sock_fd


def _build_ahead(warm: process.Warm, speculation: Speculation) -> Cgroup:
    """A warm start: the next container's directory, rootfs (PID 1 builds it meanwhile) and cgroup, made
    before its job comes, so that "ready" means it can start at once. (A cold start makes them in _run.)"""
    cgroup = open_cgroup(speculation.cgroup)
    try:
        ContainerDir(Path(speculation.cdir)).make(speculation.hostname, speculation.owner,
                                                  speculation.plan.root_ids, speculation.disk_size)
        process.prepare(warm, speculation.plan, speculation.hostname)
        cgroup.create()
        cgroup.restrict_devices(list(DEVICE_RULES))
        cgroup.apply(Limits())  # the defaults: a job that keeps them writes nothing more
        cgroup.add(warm.pid1)
        cgroup.add(warm.command)
        process.wait_built(warm)
    except BaseException:
        _drop(warm, cgroup, speculation)
        raise
    return cgroup


def _drop(warm: process.Warm, cgroup: Cgroup | None, speculation: Speculation | None) -> None:
    """An unused slot goes: its processes, its cgroup, and its directory if no container took it."""
    sc.prctl(sc.PR_SET_PDEATHSIG, 0)  # the caller may be exiting: finish the cleanup regardless
    with contextlib.suppress(ProcessLookupError):
        os.kill(warm.pid1, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(warm.pid1, 0)
    warm.close()
    if cgroup is not None:
        with contextlib.suppress(SandboxError):
            cgroup.remove()
    if speculation is not None and os.path.exists(os.path.join(speculation.cdir, WARM_MARK)):
        remove_dir(speculation.cdir)


def _run(job: Job, warm: process.Warm, refs: tuple[ProcRef | None, ProcRef | None], status_w: int | None,
         stdio: tuple[int, ...] | None, ready: Cgroup | None) -> None:
    """Start the job in the warm processes (``ready``: their cgroup exists and holds them); wait; finish.

    ``refs``: this process and PID 1.
    """
    cdir = ContainerDir(Path(job.cdir))
    out_r = err_r = None
    if stdio is None:  # detached: the output goes to the log
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        os.close(in_w)  # stdin at EOF; never a host file, not even /dev/null
        stdio = (in_r, out_w, err_w)
    if ready is None:
        process.prepare(warm, job.plan, job.hostname)  # PID 1 builds the rootfs while we do the rest
    me, ref = refs
    current = None if job.fresh else cdir.read_state()
    if current is not None and current.status in (STARTING, RUNNING, PAUSED) and current.monitor().alive():
        _send(status_w, event="error", message=f"container {job.name} is already {current.status}", exit_code=125)
        _drop(warm, ready, None)
        return
    if ready is None:  # we are about to make its cgroup: say who owns it first, for a crash
        with cdir.locked() as state:
            state.status = STARTING
            state.monitor_pid, state.monitor_start = os.getpid(), me.start if me else 0
            state.exit_code, state.oom_killed, state.pids_limit_hit, state.error = None, False, False, None
    # (a warm slot's cgroup already holds the processes; if we die before "running" is written,
    # reconcile removes it as the empty cgroup of a created container)
    cgroup = ready or open_cgroup(job.cgroup)
    try:
        try:
            if ready is None:
                cgroup.create()
                cgroup.restrict_devices(list(DEVICE_RULES))
            if ready is None or replace(job.limits, disk=None) != Limits():  # (the disk is no cgroup's)
                cgroup.apply(job.limits)
            if ready is None:
                cgroup.add(warm.pid1)
                cgroup.add(warm.command)
            if job.network is not None:  # before the command runs, as docker's CNI does
                job.network.connect(warm.pid1)
        except BaseException as exc:
            if job.network is not None:
                with contextlib.suppress(Exception):
                    job.network.disconnect()
            process.abort(warm, exc)
        process.go(warm, job.proc, (stdio[0], stdio[1], stdio[2]))
    except BaseException as exc:
        exit_code = exc.exit_code if isinstance(exc, ExecError) else 125
        message = str(exc) if isinstance(exc, SandboxError) else f"container failed to start: {exc}"
        exec_error = isinstance(exc, ExecError)
        sc.prctl(sc.PR_SET_PDEATHSIG, 0)
        _finish(job, cdir, cgroup, exit_code, False, message,
                notify=lambda: _send(status_w, event="error", message=message, exit_code=exit_code,
                                     exec_error=exec_error))
        return
    for fd in stdio:
        os.close(fd)
    pid1 = warm.pid1

    def record_running() -> None:
        with cdir.locked() as state:
            state.status = RUNNING
            state.pid, state.pid_start = pid1, ref.start if ref else 0
            state.monitor_pid, state.monitor_start = os.getpid(), me.start if me else 0
            state.exit_code, state.oom_killed, state.pids_limit_hit, state.error = None, False, False, None
            state.started_at = time.time()

    if job.detached:  # the caller returns on "started": by then the state must say so
        record_running()
        _send(status_w, event="started", pid=pid1, pid_start=ref.start if ref else 0)
    else:
        if job.announce:
            _send(status_w, event="started", pid=pid1, pid_start=ref.start if ref else 0)
        # A foreground command over within a moment is never written down as running: its exit is next.
        if not process.wait_readable([warm.exit_r], QUICK_EXIT):
            record_running()
    if job.detached:
        if status_w is not None:
            os.close(status_w)
        status_w = None
        assert out_r is not None and err_r is not None
        _copy_output(job, cdir, pid1, out_r, err_r)
    exit_code = process.wait_exit(warm)
    oom = cgroup.oom_kills() > 0
    pids_hit = _pids_limit_hit(cgroup)
    # The caller may exit as soon as it hears the exit status: finish the cleanup regardless.
    sc.prctl(sc.PR_SET_PDEATHSIG, 0)
    error = "the process that ran it in the foreground died; the container was killed" if _orphaned else None
    _finish(job, cdir, cgroup, exit_code, oom, error, pids_hit=pids_hit, notify=lambda: _send(status_w, event="exited",
                                                                      exit_code=exit_code, oom_killed=oom),
            reap=lambda: process.reap(warm))


def _copy_output(job: Job, cdir: ContainerDir, pid1: int, out_r: int, err_r: int) -> None:
    """Copy both streams into the log until both are closed (PID 1's exit closes them)."""
    log = LogWriter(cdir.path, job.log_max)
    streams = {out_r: STDOUT, err_r: STDERR}
    try:
        while streams:
            for fd in process.wait_readable(list(streams), None):
                data = os.read(fd, 65536)
                if data:
                    log.write(streams[fd], data)
                else:
                    os.close(fd)
                    del streams[fd]
    finally:
        log.close()


def _pids_limit_hit(cgroup: Cgroup) -> bool:
    """Whether the container was ever refused a process by its pids limit (read before its cgroup goes)."""
    try:
        return cgroup.stats().pids_limit_hits > 0
    except (SandboxError, OSError):
        return False


def _finish(job: Job, cdir: ContainerDir, cgroup: Cgroup, exit_code: int, oom: bool, error: str | None,
            notify: Callable[[], None] | None = None, reap: Callable[[], None] | None = None,
            pids_hit: bool = False) -> None:
    """Record the exit, tell the caller (``notify``), then remove the cgroup (and the directory for --rm).

    A container that stays learns its status before the slow part. A --rm
    container's caller learns it once nothing of the container is left (its
    processes, namespaces, cgroup, address and directory), as with docker's
    ``run --rm``: after an OOM kill a v1 memory cgroup can take a second to
    go. Its directory is first renamed out of sight (``.gone-ID``), which a
    later reconcile removes if this process dies before it does.
    """
    if job.remove:
        trash = cdir.path.with_name(GONE_PREFIX + cdir.id)
        try:
            os.rename(cdir.path, trash)
        except OSError:
            trash = cdir.path
    else:
        with cdir.locked() as state:
            state.status = EXITED
            state.pid = state.pid_start = 0
            state.monitor_pid = state.monitor_start = 0
            state.exit_code = exit_code
            state.oom_killed = oom
            state.pids_limit_hit = pids_hit
            state.error = error
            state.finished_at = time.time()
    if notify is not None and not job.remove:
        notify()
    if job.remove:  # (a new claim of the name takes over a link to a container that is gone)
        Names(cdir.path.parent / "names").release(job.name, cdir.id)
    if reap is not None:
        reap()  # PID 1 and its namespaces go (a moment's work for the kernel, after the caller knows)
    if job.network is not None:  # its address is free again, the others' /etc/hosts forget it
        with contextlib.suppress(Exception):
            job.network.disconnect()
    try:
        cgroup.remove()
    except SandboxError as exc:
        if not job.remove:
            with cdir.locked() as state:
                state.error = state.error or str(exc)
    if job.remove:
        remove_dir(trash)
        if notify is not None:
            notify()
