"""Container lifecycle with real containers (root): detach, logs, exec, stop, kill, pause, rm, update, crash."""

from __future__ import annotations

import json
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from leftovers import assert_nothing_left, cgroup_limits, cgroups, cpu_throttled, wait_for

from sandbox_kernel.runtime import Containers, ContainerSpec, ExecError, Limits, Mount, Store, UsageError, launcher
from sandbox_kernel.runtime.monitor import Job

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"


@pytest.fixture(autouse=True)
def nothing_left_behind(root):
    before = cgroups()
    yield
    launcher.drop_spare()  # the warm slot an in-process run leaves for the next one
    # whatever a test left running is removed first (a failing test must not leak either); in this process:
    # a CLI start is seconds under the cgroup v2 VM's emulation
    containers = Containers(Store(root))
    for left in containers.list(all=True):
        containers.remove(left.id, force=True)
    assert_nothing_left(root, before)


def cli(root: Path, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def detached(root: Path, script: str, *opts: str) -> str:
    proc = cli(root, "run", "-d", *opts, BUSYBOX, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def ps(root: Path, *opts: str) -> list[dict]:
    proc = cli(root, "ps", "--json", *opts)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- detached containers and their logs ----------------------------------------------------------------------------

def test_detached_run_ps_logs_and_exit(root):
    cid = detached(root, "echo out; echo err >&2; sleep 0.3; exit 3", "--name", "job")
    assert len(cid) == 64
    rows = ps(root)
    assert [(r["Names"], r["State"]) for r in rows] == [(["job"], "running")]
    wait_for(lambda: ps(root, "-a")[0]["State"] == "exited", what="exit")
    row = ps(root, "-a")[0]
    assert (row["ExitCode"], row["Status"].startswith("Exited (3)")) == (3, True)
    logs = cli(root, "logs", "job")
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
    assert cli(root, "wait", "job").stdout.strip() == "3"
    assert cli(root, "rm", "job").returncode == 0
    assert ps(root, "-a") == []


def test_log_is_size_capped_and_keeps_the_newest(root):
    script = "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    detached(root, script, "--name", "chatty", "--log-size", "64k")
    assert cli(root, "wait", "chatty").stdout.strip() == "0"
    kept = sum(p.stat().st_size for p in (root / "containers").glob("*/container.log*"))
    assert kept <= 64 * 1024
    lines = cli(root, "logs", "chatty").stdout.splitlines()
    assert lines[-1].startswith("line-2999-") and 200 < len(lines) < 3000
    numbers = [int(line.split("-")[1]) for line in lines[1:]]  # the oldest kept line may be cut
    assert numbers == list(range(numbers[0], 3000)), "a contiguous tail of the output"
    assert lines[0].endswith("x" * 20)


def armed(root: Path, name: str) -> None:
    """Until the container's log says "armed" (its trap is set, its loop runs)."""
    wait_for(lambda: "armed" in cli(root, "logs", name).stdout, what=f"{name} to be armed")


def test_logs_follow_streams_until_the_container_stops(root):
    """logs -f shows tick-1 while the container still waits; the test then lets it go on, and the follow
    shows what came after and ends with the container."""
    detached(root, "echo tick-1; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo tick-2; echo bye >&2",
             "--name", "ticker")
    follow = subprocess.Popen([sys.executable, "-m", "sandbox_kernel", "--root", str(root), "logs", "-f", "ticker"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([follow.stdout], [], [], 30)[0] and follow.stdout.readline() == "tick-1\n"
        assert cli(root, "exec", "ticker", "touch", "/tmp/go").returncode == 0
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert (out, err) == ("tick-2\n", "bye\n"), "what came after, then the end"


def test_logs_follow_keeps_every_line_across_rotations(root):
    # batches of 9 kB every 0.2 s into a log of two 16 kB files: it rotates often, a follower keeps up
    script = ("sleep 0.5; i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx;"
              " i=$((i+1)); [ $((i % 200)) = 0 ] && sleep 0.2; done; true")
    detached(root, script, "--name", "rotating", "--log-size", "32k")
    lines = cli(root, "logs", "-f", "rotating").stdout.splitlines()
    numbers = [int(line.split("-")[1]) for line in lines]
    assert numbers == list(range(3000)), "followed from the start: nothing lost when the log rotated"


def test_names_are_unique_and_found_by_id_prefix(root):
    cid = detached(root, "sleep 600", "--name", "twin")
    again = cli(root, "run", "-d", "--name", "twin", BUSYBOX, "true")
    assert again.returncode == 1 and "already in use" in again.stderr
    assert cli(root, "inspect", cid[:6]).returncode == 0
    assert json.loads(cli(root, "inspect", "twin").stdout)[0]["Id"] == cid
    missing = cli(root, "stop", "nope")
    assert missing.returncode == 1 and missing.stderr.strip() == "sandbox-kernel: error: no such container: nope"
    bad = cli(root, "run", "--name", "bad/name", BUSYBOX, "true")
    assert bad.returncode == 2 and "invalid container name" in bad.stderr


# -- exec ----------------------------------------------------------------------------------------------------------

@pytest.mark.cgroups
def test_exec_joins_namespaces_cgroup_and_security(root):
    detached(root, "sleep 600", "--name", "host1", "--hostname", "inside", "--pids-limit", "50")
    proc = cli(root, "exec", "-e", "X=1", "host1", "sh", "-c",
               "hostname; echo $X; cat /proc/1/comm; ls /sys/class/net; grep -m1 -E ':pids:|^0::' /proc/self/cgroup;"
               "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; ls /proc/self/fd | wc -l; exit 4")
    assert proc.returncode == 4, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:4] == ["inside", "1", "sandbox-init", "lo"]
    assert lines[4] == "0::/" or lines[4].endswith(":pids:/"), "the cgroup namespace is the container's (v2, v1)"
    assert lines[5:8] == ["CapEff:\t00000000800405fb", "NoNewPrivs:\t1", "Seccomp:\t2"]
    assert lines[8] == "4"
    pids = cli(root, "stats", "--json", "host1")
    assert json.loads(pids.stdout)[0]["PidsLimit"] == 50


def test_device_cgroup_allows_only_the_container_devices(root):
    cid = detached(root, "sleep 600", "--name", "devs")
    listing = Path(f"/sys/fs/cgroup/devices/sandbox-kernel/{cid[:32]}/devices.list")
    if not listing.exists():
        pytest.skip("no cgroup v1 devices controller on this host")
    assert sorted(listing.read_text().split("\n")[:-1]) == sorted(
        ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"])


def test_exec_errors(root):
    detached(root, "sleep 600", "--name", "ex")
    missing = cli(root, "exec", "ex", "no-such-binary")
    assert missing.returncode == 127 and "no-such-binary" in missing.stderr
    assert cli(root, "exec", "ex").returncode == 2
    cli(root, "stop", "-t", "0", "ex")
    stopped = cli(root, "exec", "ex", "true")
    assert stopped.returncode == 1 and "not running" in stopped.stderr


# -- stop, kill, pause, update -------------------------------------------------------------------------------------

def test_stop_sends_term_then_kill_after_the_grace_period(root):
    detached(root, "trap 'echo got-term' TERM; echo armed; while true; do sleep 0.1; done", "--name", "stubborn")
    armed(root, "stubborn")
    assert cli(root, "stop", "-t", "1", "stubborn").returncode == 0
    row = ps(root, "-a")[0]  # TERM came (its trap said so) and did not end it: the KILL after the grace did
    assert (row["State"], row["ExitCode"]) == ("exited", 137)
    assert "got-term" in cli(root, "logs", "stubborn").stdout


def test_stop_of_a_polite_container_takes_sigterm(root):
    detached(root, "sleep 600", "--name", "polite")
    assert cli(root, "stop", "polite").returncode == 0
    assert ps(root, "-a")[0]["ExitCode"] == 143, "ended by SIGTERM, not by the SIGKILL after the grace period"


def test_kill_with_a_signal(root):
    detached(root, "trap 'echo usr1; exit 9' USR1; echo armed; while true; do sleep 0.1; done", "--name", "k")
    armed(root, "k")
    assert cli(root, "kill", "-s", "USR1", "k").returncode == 0
    assert cli(root, "wait", "k").stdout.strip() == "9"
    assert cli(root, "kill", "k").returncode == 1, "not running any more"
    assert cli(root, "kill", "-s", "NOPE", "k").returncode == 2


@pytest.mark.cgroups
def test_pause_freezes_and_unpause_thaws(root):
    cid = detached(root, "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done", "--name", "ice")
    rootfs_n = root / "containers" / cid / "upper" / "tmp" / "n"
    wait_for(lambda: rootfs_n.exists() and rootfs_n.read_text().strip() not in ("", "1"), what="the counter")
    containers = Containers(Store(root))
    assert cli(root, "pause", "ice").returncode == 0
    assert containers.get("ice").state.status == "paused"
    freezer = Path(f"/sys/fs/cgroup/freezer/sandbox-kernel/{cid[:32]}/freezer.state")
    v2 = Path(f"/sys/fs/cgroup/sandbox-kernel/{cid[:32]}/cgroup.freeze")
    assert (freezer.read_text().strip() == "FROZEN") if freezer.exists() else v2.read_text().strip() == "1", \
        "the kernel's freezer holds it"
    frozen = rootfs_n.read_text()
    time.sleep(0.3)  # (a window to see nothing move in, not a time measured)
    assert rootfs_n.read_text() == frozen, "nothing runs while paused"
    assert cli(root, "exec", "ice", "true").returncode == 1
    assert cli(root, "unpause", "ice").returncode == 0
    wait_for(lambda: rootfs_n.read_text() != frozen, what="the counter to move again")
    # a paused container can still be stopped
    assert cli(root, "pause", "ice").returncode == 0
    assert cli(root, "stop", "ice").returncode == 0
    assert containers.get("ice").state.status == "exited"


@pytest.mark.cgroups
def test_update_limits_of_a_running_container(root):
    """update changes the cgroup's own files live; below what the container uses (24 MiB of /dev/shm, three
    processes) it is one line, exit 2 (a usage error), and nothing changed: on v2 the kernel would OOM-kill
    the container instead of refusing the lower memory.max, so the runtime checks first."""
    detached(root, "dd if=/dev/zero of=/dev/shm/held bs=1M count=24 2>/dev/null; sleep 600 & sleep 600",
             "--name", "grow", "--memory", "64m")
    containers = Containers(Store(root))
    wait_for(lambda: (containers.stats("grow").usage.memory_current or 0) >= 24 << 20, what="24 MiB in use")
    cgroup = containers.get("grow").id[:32]
    for option, value, sentence in [("--memory", "16m", "memory limit 16 MiB is below what the container uses now"),
                                    ("--pids-limit", "2", "pids limit 2 is below the container's processes now")]:
        refused = cli(root, "update", option, value, "grow")
        assert (refused.returncode, refused.stderr.count("\n")) == (2, 1), refused.stderr
        assert sentence in refused.stderr
        assert cgroup_limits(cgroup) == {"memory": 64 << 20, "pids": 2048, "cpu_quota_us": None}, "nothing changed"
        assert containers.running("grow")
    assert cli(root, "update", "--memory", "128m", "--pids-limit", "77", "grow").returncode == 0
    stats = json.loads(cli(root, "stats", "--json", "grow").stdout)[0]
    assert stats["MemoryLimit"] == 128 << 20 and stats["PidsLimit"] == 77
    assert stats["Pids"] >= 1 and stats["Memory"] > 0
    assert cgroup_limits(cgroup) == {"memory": 128 << 20, "pids": 77, "cpu_quota_us": None}, "the cgroup's own files"
    assert cli(root, "update", "--cpus", "0.25", "grow").returncode == 0
    assert cgroup_limits(cgroup) == {"memory": 128 << 20, "pids": 77, "cpu_quota_us": 25_000}
    table = cli(root, "stats", "grow").stdout
    assert "grow" in table and "134MB" in table


@pytest.mark.cgroups
def test_cpus_is_enforced_by_the_kernel(root):
    """--cpus 0.5 on a container that spins: the kernel throttles it period after period (cpu.stat), and the CPU
    time it got is at most half of the 100 ms periods it ran in; updated to 0.25, a quarter from then on."""
    cid = detached(root, "while true; do :; done", "--name", "spin", "--cpus", "0.5")
    containers = Containers(Store(root))

    def counts() -> tuple[int, int, int]:
        periods, throttled = cpu_throttled(cid[:32])
        return periods, throttled, containers.stats("spin").usage.cpu_ns or 0

    def within(before: tuple[int, int, int], quota_ns: int) -> None:
        """Twenty throttled periods from ``before`` on; the CPU time used in them is at most the quota's share."""
        wait_for(lambda: counts()[1] >= before[1] + 20, what="twenty throttled periods")
        after = counts()
        periods, used = after[0] - before[0], after[2] - before[2]
        assert used <= (periods + 2) * quota_ns * 1.1, f"{used / 1e6:.0f} ms of CPU in {periods} periods of 100 ms"
        assert after[1] - before[1] >= periods // 2, "a command that always runs is throttled in most periods"

    within(counts(), 50_000_000)
    assert cli(root, "update", "--cpus", "0.25", "spin").returncode == 0
    within(counts(), 25_000_000)


def test_rm_refuses_a_running_container_without_force(root):
    detached(root, "sleep 600", "--name", "busy")
    refused = cli(root, "rm", "busy")
    assert refused.returncode == 1 and "rm -f" in refused.stderr
    assert cli(root, "rm", "-f", "busy").returncode == 0
    assert ps(root, "-a") == []


def test_create_start_and_restart(root):
    created = cli(root, "create", "--name", "later", BUSYBOX, "sh", "-c", "echo run >> /count; cat /count | wc -l")
    assert created.returncode == 0
    assert ps(root, "-a")[0]["State"] == "created"
    for expected in ("1", "2"):
        assert cli(root, "start", "later").returncode == 0
        assert cli(root, "wait", "later").stdout.strip() == "0"
        assert cli(root, "logs", "later").stdout.split()[-1] == expected, "the upper dir persists across starts"


def test_a_start_in_progress_keeps_its_empty_cgroup_from_a_reconcile_that_read_the_state_before(root, monkeypatch):
    """The race of a shell cell's first start (seen on a fresh machine): its caller polls ``get`` while the
    monitor writes STARTING and makes the container's (still empty) cgroup; a reconcile that read CREATED a
    moment before took that cgroup for a dead slot's stray and removed it, and the start failed with "cannot set
    cgroup.procs ... No such file or directory". The state is read again under the lock now."""
    from sandbox_kernel.runtime.cgroups import open_cgroup
    from sandbox_kernel.runtime.state import CREATED, STARTING, ContainerDir, State

    containers = Containers(Store(root))
    cid = containers.create(ContainerSpec(image=BUSYBOX, command=("true",)))
    cdir = ContainerDir(containers.root / cid)
    cgroup = open_cgroup(cid[:32])
    with cdir.locked() as state:  # what the monitor does before it makes the cgroup
        state.status = STARTING
    cgroup.create()
    try:
        real, reads = ContainerDir.read_state, []

        def stale_first(self: ContainerDir) -> State:  # the reconcile's first read, made a moment before
            reads.append(1)
            return State(status=CREATED) if len(reads) == 1 else real(self)

        monkeypatch.setattr(ContainerDir, "read_state", stale_first)
        containers._reconcile(cdir)
        monkeypatch.undo()
        assert cgroup.exists(), "the starting container's cgroup is still there"
        with cdir.locked() as state:  # a created container's empty cgroup is a stray, and goes
            state.status = CREATED
        containers._reconcile(cdir)
        assert not cgroup.exists()
    finally:
        monkeypatch.undo()
        cgroup.remove()
        containers.remove(cid, force=True)


# -- crashes -------------------------------------------------------------------------------------------------------

def _overlays(root: Path) -> int:
    """Overlay mounts of this store's containers (a VM's own file system may be made of overlays too)."""
    return sum(1 for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if " - overlay " in line and str(root) in line)


@pytest.mark.cgroups
def test_killed_monitors_and_callers_are_reconciled(root):
    """kill -9 the processes that own containers; the next call cleans up and nothing is left."""
    keep = detached(root, "sleep 60", "--name", "kept")
    gone = detached(root, "sleep 60", "--name", "doomed", "--rm")
    foreground = subprocess.Popen([sys.executable, "-m", "sandbox_kernel", "--root", str(root), "run", "--name",
                                   "fg", BUSYBOX, "sleep", "60"], stdin=subprocess.DEVNULL)
    wait_for(lambda: len(ps(root)) == 3, what="three running containers")
    infos = {r["Names"][0]: r for r in ps(root)}
    states = {name: json.loads(next((root / "containers").glob(f"{infos[name]['Id']}/state.json")).read_text())
              for name in infos}
    for name in ("kept", "doomed"):
        os.kill(states[name]["monitor_pid"], signal.SIGKILL)
    foreground.kill()  # the CLI is the caller; its monitor and container die with it
    foreground.wait()
    for name in infos:
        wait_for(lambda n=name: not Path(f"/proc/{states[n]['pid']}").exists(), what=f"{name}'s PID 1 to die")
    rows = {r["Names"][0]: r for r in ps(root, "-a")}
    assert set(rows) == {"kept", "fg"}, "--rm containers are removed when reconciled"
    for name in ("kept", "fg"):
        assert rows[name]["State"] == "exited" and rows[name]["ExitCode"] == 137
    assert "monitor" in rows["kept"]["Error"], "reconciled by this call"
    assert "foreground" in rows["fg"]["Error"], "recorded by its monitor, which heard of its caller's death"
    assert not any(infos[name]["Id"][:32] in str(p) for p in cgroups() for name in infos), "their cgroups went"
    containers = root / "containers"
    assert (containers / keep).is_dir() and not (containers / gone).exists(), "kept stays, --rm's directory goes"
    assert _overlays(root) == 0


# -- the Python API ------------------------------------------------------------------------------------------------

def test_api_streams_output_as_it_comes(root):
    """The container waits for a line the caller sends only once it has seen "first": had the output been held
    back until the end, the container's read would time out and say "second timed-out"."""
    containers = Containers(Store(root))
    seen: list[bytes] = []
    read_end, write_end = os.pipe()

    def out(chunk: bytes) -> None:
        seen.append(chunk)
        if chunk == b"first\n":
            os.write(write_end, b"go\n")

    try:
        result = containers.run(
            ContainerSpec(image=BUSYBOX, command=("sh", "-c", "echo first; read -t 60 line || line=timed-out;"
                                                              " echo second $line >&2; exit 2"), remove=True),
            stdin=read_end, stdout=out, stderr=seen.append)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.exit_code == 2
    assert seen == [b"first\n", b"second go\n"], "the first chunk reached the caller while the container ran"


def test_api_from_a_multithreaded_caller_uses_the_fork_server(root):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not launcher.single_threaded()
        out: list[bytes] = []
        containers = Containers(Store(root))
        result = containers.run(ContainerSpec(image=BUSYBOX, command=("sh", "-c", "echo from-server"), remove=True),
                                stdin=None, stdout=out.append, stderr=None)
        assert (result.exit_code, b"".join(out)) == (0, b"from-server\n")
        cid = containers.run_detached(ContainerSpec(image=BUSYBOX, command=("sleep", "30"), remove=True))
        chunks: list[bytes] = []
        assert containers.exec(cid, ["sh", "-c", "echo exec; exit 6"], stdin=None, stdout=chunks.append) == 6
        assert chunks == [b"exec\n"]
        containers.stop(cid, timeout=1)
        assert launcher._server is not None and launcher._server.proc.poll() is None
    finally:
        stop.set()
        thread.join()


def test_api_errors_are_typed(root):
    containers = Containers(Store(root))
    with pytest.raises(ExecError) as info:
        containers.run(ContainerSpec(image=BUSYBOX, command=("/nope",), remove=True), stdin=None, stdout=None,
                       stderr=None)
    assert info.value.exit_code == 127
    with pytest.raises(UsageError):
        Limits(memory=1)
    with pytest.raises(UsageError):
        containers.run(ContainerSpec(image=BUSYBOX, command=("true",), user="nobody-here", remove=True))


def test_interrupting_the_cli_interrupts_the_container(root):
    proc = subprocess.Popen([sys.executable, "-m", "sandbox_kernel", "--root", str(root), "run", "--rm", BUSYBOX,
                             "sh", "-c", "trap 'echo interrupted; exit 130' INT; echo ready; while true; do sleep 0.1;"
                             " done"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)  # bounds "at all"
    assert (proc.returncode, out) == (130, "interrupted\n")


STUBBORN = ("trap 'echo got-int' INT; trap 'echo got-term' TERM; echo armed;"
            " while true; do sleep 0.1; done")


@pytest.mark.parametrize("verb", ["run", "exec"])
def test_ctrl_c_escalates_sigint_then_sigterm_then_sigkill(root, verb):
    """A foreground run or exec whose command traps SIGINT and SIGTERM: the first Ctrl-C reaches it as SIGINT,
    the second as SIGTERM (each seen by its trap before the next is sent), the third as SIGKILL (137)."""
    if verb == "run":
        argv = ["run", "--rm", BUSYBOX, "sh", "-c", STUBBORN]
    else:
        detached(root, "sleep 600", "--name", "host-of-exec")
        argv = ["exec", "host-of-exec", "sh", "-c", STUBBORN]
    proc = subprocess.Popen([sys.executable, "-m", "sandbox_kernel", "--root", str(root), *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        for said in ("armed", "got-int", "got-term"):
            assert select.select([proc.stdout], [], [], 60)[0], f"waiting for {said}"
            assert proc.stdout.readline() == said + "\n"
            proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 137, "the third Ctrl-C is SIGKILL, which no trap sees"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_interrupting_the_api_interrupts_a_container_from_a_warm_slot(root):
    """The caller learns PID 1 from the ready slot (no "started" event): Ctrl-C must still reach the container."""
    script = f"""
import sys
from sandbox_kernel.runtime import Containers, ContainerSpec, Store, launcher
c = Containers(Store({str(root)!r}))
c.run(ContainerSpec(image={BUSYBOX!r}, command=("true",), remove=True), stdin=None)
assert launcher.wait_warm() and launcher._spare.pid1 is not None, "a ready slot names PID 1"
loop = "trap 'echo interrupted; exit 130' INT; echo ready; while true; do sleep 0.1; done"
result = c.run(ContainerSpec(image={BUSYBOX!r}, command=("sh", "-c", loop), remove=True), stdin=None)
print("exit", result.exit_code, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)  # bounds "at all"
    assert (proc.returncode, out) == (0, "interrupted\nexit 130\n")


def test_user_names_come_from_the_image(debian_store):
    containers = Containers(debian_store)
    out: list[bytes] = []
    spec = ContainerSpec(image="localhost/debian-python:latest", command=("sh", "-c", "id; echo $HOME"),
                         user="nobody", remove=True)
    assert containers.run(spec, stdin=None, stdout=out.append).exit_code == 0
    assert b"".join(out).decode().splitlines() == ["uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
                                                   "/nonexistent"]


def _warm_slot(root: Path) -> tuple[Path, int, int]:
    """The warm slot's directory, monitor and PID 1 (found through the cgroup it made)."""
    wait_for(lambda: any((p / "warm").exists() for p in (root / "containers").iterdir()), what="the warm dir")
    [warm_dir] = [p for p in (root / "containers").iterdir() if (p / "warm").exists()]
    procs = next(iter(Path("/sys/fs/cgroup").glob(f"*/sandbox-kernel/{warm_dir.name[:32]}/cgroup.procs")), None)
    wait_for(lambda: procs is not None and procs.exists() and procs.read_text().split(), what="the slot's cgroup")
    assert procs is not None
    [pid1] = [int(p) for p in procs.read_text().split() if Path(f"/proc/{p}/comm").read_text() == "sandbox-init\n"
              and Path(f"/proc/{p}/task/{p}/children").exists()
              and Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    monitor = int(Path(f"/proc/{pid1}/status").read_text().split("PPid:")[1].split()[0])
    return warm_dir, monitor, pid1


def test_warm_slot_runs_the_next_container_and_dies_with_its_caller(root):
    """After a foreground start a warm slot waits for the next one; it never outlives the process that made it."""
    if not Path(f"/proc/self/task/{os.getpid()}/children").exists():
        pytest.skip("this kernel has no /proc/PID/task/TID/children to find the slot's PID 1 by")
    script = f"""
import os, sys, time
from sandbox_kernel.runtime import Containers, ContainerSpec, Store, launcher
c = Containers(Store({str(root)!r}))
for word in ("one", "two"):
    out = []
    c.run(ContainerSpec(image={BUSYBOX!r}, command=("echo", word), remove=True), stdin=None, stdout=out.append)
    sys.stdout.write(b"".join(out).decode())
print(launcher.wait_warm(), flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert [proc.stdout.readline() for _ in range(3)] == ["one\n", "two\n", "True\n"], "the second ran warm"
    warm_dir, monitor, pid1 = _warm_slot(root)
    warm_cgroups = [p for p in cgroups() if p.name == warm_dir.name[:32]]
    assert warm_cgroups, "the slot made the next container's directory, cgroup and rootfs ahead"
    proc.kill()
    proc.wait()
    wait_for(lambda: not Path(f"/proc/{monitor}").exists() and not Path(f"/proc/{pid1}").exists(),
             what="the slot to die with its caller")
    # the slot's monitor heard of its caller's death and removed what it had made (or the next
    # listing sweeps it, if the monitor was killed too)
    wait_for(lambda: ps(root, "-a") == [] and not warm_dir.exists(), what="the warm dir to go")
    wait_for(lambda: not any(p.exists() for p in warm_cgroups), what="the slot's cgroup to go")


def test_a_warm_slot_is_only_used_for_the_same_rootfs(root, debian_store, tmp_path):
    """The slot built busybox's rootfs: a debian run, or one with a volume, runs cold and still right."""
    containers = Containers(Store(root))
    out: list[bytes] = []
    spec = ContainerSpec(image=BUSYBOX, command=("cat", "/etc/hostname"), remove=True)
    containers.run(spec, stdin=None, stdout=out.append)
    first_host = b"".join(out)
    (tmp_path / "f").write_text("from the host\n")
    tmp_path.chmod(0o755)  # a read-only volume of root's is bound as it is: its files read as others may
    out.clear()
    with_volume = ContainerSpec(image=BUSYBOX, command=("cat", "/v/f"), remove=True,
                                mounts=(Mount(str(tmp_path), "/v", readonly=True),))
    assert containers.run(with_volume, stdin=None, stdout=out.append).exit_code == 0
    assert b"".join(out) == b"from the host\n"
    out.clear()
    other = ContainerSpec(image="localhost/busybox:latest", command=("sh", "-c", "cat /etc/hostname; hostname"),
                          hostname="named", remove=True)
    assert containers.run(other, stdin=None, stdout=out.append).exit_code == 0
    assert b"".join(out) == b"named\nnamed\n"
    out.clear()
    assert containers.run(spec, stdin=None, stdout=out.append).exit_code == 0
    assert b"".join(out) != first_host, "a new container, a new hostname"
    launcher.drop_spare()


def test_a_dropped_warm_slot_removes_what_it_made(root):
    """A slot dropped without its "ready" read (the socket resets) still removes its directory and cgroup."""
    containers = Containers(Store(root))
    containers.run(ContainerSpec(image=BUSYBOX, command=("true",), remove=True), stdin=None, stdout=None,
                   stderr=None)
    wait_for(lambda: any((p / "warm").exists() for p in (root / "containers").iterdir()), what="the warm dir")
    time.sleep(0.2)  # let it finish building and say "ready", unread
    launcher.drop_spare()
    assert [p.name for p in (root / "containers").iterdir() if p.name not in ("names",)
            and not p.name.startswith(".gone-")] == []


def test_a_job_reaches_a_monitor_that_said_ready_before_it_came():
    """A monitor says "ready" before it reads its job; closing with that unread resets the socket.

    The monitor then got ECONNRESET instead of the job queued for it and the
    container never started ("its monitor died before the container
    started", one start in ten when twenty started at once).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.send(b"ready 1 0")  # what a monitor says once its processes are forked
    job = Job(cdir="/nonexistent", name="n", plan=None, hostname="h", proc=None,  # type: ignore[arg-type]
              cgroup="", limits=Limits(), detached=True, remove=False, log_max=0)
    status_r = launcher.start_monitor(job, None, launcher.Slot(ours, 0, tied=False))
    try:
        data, fds, _, _ = socket.recv_fds(theirs, 1 << 20, 4)
        assert pickle.loads(data).name == "n" and len(fds) == 1
        for fd in fds:
            os.close(fd)
    finally:
        os.close(status_r)
        theirs.close()


def test_an_image_stays_while_a_container_uses_it(root):
    """rmi refuses an image a container needs; -f untags it, prune keeps its layers until the container goes."""
    store = Store(root)
    base = store.resolve(BUSYBOX)
    config = json.loads(json.dumps(base.config))
    config["config"]["Env"] = [*config["config"].get("Env", []), "VICTIM=1"]  # another image on the same layers
    with store.writing():
        store.put_image(config, base.layers, "localhost/victim:1")
    created = cli(root, "create", "--name", "user", "localhost/victim:1", "sh", "-c", "echo $VICTIM")
    assert created.returncode == 0
    refused = cli(root, "rmi", "localhost/victim:1")
    assert refused.returncode == 1 and "used by container" in refused.stderr
    forced = cli(root, "rmi", "-f", "localhost/victim:1")
    assert forced.returncode == 0 and "Deleted" not in forced.stdout
    assert cli(root, "prune").returncode == 0
    assert cli(root, "start", "user").returncode == 0
    assert cli(root, "wait", "user").stdout.strip() == "0"
    assert cli(root, "logs", "user").stdout == "1\n", "its image survived rmi -f and prune"
    assert cli(root, "rm", "user").returncode == 0
    assert cli(root, "prune").returncode == 0
    assert store.resolve(BUSYBOX).id == base.id, "the shared image was never touched"


def test_a_killed_warm_slot_is_replaced_by_a_cold_start(root):
    containers = Containers(Store(root))
    spec = ContainerSpec(image=BUSYBOX, command=("echo", "ok"), remove=True)
    assert containers.run(spec, stdin=None, stdout=None, stderr=None).exit_code == 0
    assert launcher.wait_warm()
    _warm_dir, monitor, pid1 = _warm_slot(root)
    os.kill(monitor, signal.SIGKILL)  # the slot's monitor; its PID 1 dies with it
    wait_for(lambda: not Path(f"/proc/{pid1}").exists(), what="the slot's PID 1 to be dead")
    out: list[bytes] = []
    assert containers.run(spec, stdin=None, stdout=out.append, stderr=None).exit_code == 0
    assert out == [b"ok\n"]


def test_a_plain_warm_slot_that_has_waited_runs_the_next_container(root, tmp_path):
    """A run with a volume leaves a plain slot (no rootfs built ahead); one that has said "ready"
    long before the next run must still take that run (its "ready" is read, not reset away)."""
    containers = Containers(Store(root))
    spec = ContainerSpec(image="localhost/busybox", command=("cat", "/x/file"), remove=True,
                         mounts=(Mount(str(tmp_path), "/x", True),))
    (tmp_path / "file").write_text("from the volume\n")
    tmp_path.chmod(0o755)  # a read-only volume of root's is bound as it is: its files read as others may
    seen: list[bytes] = []
    for _ in range(3):
        result = containers.run(spec, stdin=None, stdout=seen.append, stderr=None)
        assert result.exit_code == 0
        time.sleep(0.5)  # the slot gets ready meanwhile (not asked: wait_warm would read its "ready")
    assert b"".join(seen) == b"from the volume\n" * 3


def test_exec_from_a_threaded_caller_leaks_no_fd_and_is_interruptible(root):
    """A threaded caller (a kernel) forks exec's helper through the fork server: the fds it sends over
    must not reach the command (the error pipe did, so Ctrl-C waited for the command to end)."""
    containers = Containers(Store(root))
    cid = containers.run_detached(ContainerSpec(image="localhost/busybox", command=("sleep", "1000")))
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # now this process has two threads
    other.start()
    try:
        seen: list[bytes] = []
        assert containers.exec(cid, ["ls", "/proc/self/fd"], stdin=None, stdout=seen.append, stderr=None) == 0
        assert b"".join(seen).split() == [b"0", b"1", b"2", b"3"]  # stdio, and ls's own directory
        seen.clear()

        def output(chunk: bytes) -> None:  # Ctrl-C once the command says it runs (an event, not a delay)
            seen.append(chunk)
            if b"armed" in chunk:
                threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()

        code = containers.exec(cid, ["sh", "-c", "echo armed; sleep 60; echo not reached"], stdin=None,
                               stdout=output, stderr=None)
        assert code == 130 and b"not reached" not in b"".join(seen), "interrupted (else 0 after 60 s)"
    finally:
        stop.set()
        other.join()
        containers.remove(cid, force=True)


@pytest.mark.cgroups
def test_run_rm_returns_once_nothing_of_the_container_is_left(root):
    """docker's run --rm: when it returns, the container's cgroup and directory are gone, also after an OOM kill
    (whose v1 memory cgroup can take a second to go). Checked at once, with no wait."""
    containers = Containers(Store(root))
    for command, limits in ((("true",), Limits()),
                            (("sh", "-c", "head -c 300m /dev/zero | tail > /dev/null"), Limits(memory=32 << 20))):
        before = cgroups()
        result = containers.run(ContainerSpec(image=BUSYBOX, command=command, remove=True, limits=limits),
                                stdin=None, stdout=lambda _: None, stderr=lambda _: None)
        if limits.memory:
            assert result.oom_killed and result.exit_code == 137
        left = [p.name for p in (root / "containers").iterdir() if result.container_id in p.name]
        assert left == [], f"directories of the container left when run --rm returned: {left}"
        assert not {p for p in cgroups() - before if result.container_id in p.name}, "its cgroup was left"
