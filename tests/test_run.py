"""`sandbox-kernel run`: real containers from the project's busybox and debian-python images (root)."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from leftovers import assert_nothing_left, cgroups, swap_total, wait_for

from sandbox_kernel.runtime import exec_helper

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"


def run(store_root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(store_root), "run", "--rm", *args],
                          capture_output=True, text=True, timeout=120, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def sh(store_root: Path, script: str, *opts: str) -> subprocess.CompletedProcess:
    return run(store_root, *opts, BUSYBOX, "sh", "-c", script)


@pytest.fixture(autouse=True, params=["sk-exec", "python"])
def exec_path(request, monkeypatch):
    """Every test runs with both command processes: the compiled one, and the Python fallback."""
    if request.param == "python":
        monkeypatch.setenv(exec_helper.ENV_SWITCH, "0")
    else:
        monkeypatch.delenv(exec_helper.ENV_SWITCH, raising=False)
        assert exec_helper.path() is not None, "scripts/setup.sh installs a C compiler and builds sk-exec"
    return request.param


@pytest.fixture(autouse=True)
def nothing_left_behind(root):
    """Every run leaves no mount, cgroup or container directory on the host."""
    before = cgroups()
    yield
    assert_nothing_left(root, before)


def test_output_and_exit_status(root):
    proc = sh(root, "echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")


def test_stdin_is_passed(root):
    proc = run(root, BUSYBOX, "sh", "-c", "tr a-z A-Z", stdin="hello\n")
    assert proc.stdout == "HELLO\n"


# What a busybox container's mount table holds, and nothing else (masked and read-only /proc and /sys paths
# only where the host has them).
EXPECTED_MOUNTS = {"/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/etc/hostname", "/etc/hosts",
                   "/etc/resolv.conf", *(f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom",
                                                                     "tty"))}
PROC_SYS_MOUNTS = {"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                   "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
                   "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/bus", "/proc/fs", "/proc/irq",
                   "/proc/sys", "/proc/sysrq-trigger"}


def test_isolation_seen_from_inside(root):
    script = (
        "echo pid1=$(cat /proc/1/comm); hostname; ls /sys/class/net; cut -d' ' -f2 /proc/mounts | tr '\\n' ' ';"
        "echo; ps -o comm > /tmp/ps; tail -n +2 /tmp/ps | tr '\\n' ','; echo; [ -e /work ] && echo host-visible || "
        "echo host-hidden"
    )
    proc = sh(root, script, "--hostname", "sandbox")
    lines = proc.stdout.splitlines()
    assert lines[0] == "pid1=sandbox-init", "PID 1 is our init"
    assert lines[1] == "sandbox"
    assert lines[2] == "lo", "only loopback"
    mounts = set(lines[3].split())
    assert EXPECTED_MOUNTS <= mounts and mounts - EXPECTED_MOUNTS <= PROC_SYS_MOUNTS, \
        f"no mount of the host's: {sorted(mounts - EXPECTED_MOUNTS - PROC_SYS_MOUNTS)}"
    assert {"/proc/sys", "/sys/firmware", "/proc/keys"} <= mounts, "masks and read-only paths are there"
    processes = lines[4].strip(",").split(",")
    assert processes == ["sandbox-init", "sh", "ps"], f"only the container's processes: {processes}"
    assert lines[5] == "host-hidden"


def test_security_settings_of_the_process(root):
    proc = sh(root, "grep -E '^(CapBnd|CapEff|CapAmb|NoNewPrivs)' /proc/self/status; ls /proc/self/fd | wc -l")
    fields = dict(line.split(":\t") for line in proc.stdout.splitlines()[:4])
    assert fields["CapBnd"] == fields["CapEff"] == "00000000800405fb", "podman's 11 capabilities"
    assert fields["CapAmb"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"
    assert int(proc.stdout.splitlines()[4]) == 4, "stdin, stdout, stderr and ls's own directory fd"


def test_proc_and_sys_are_protected(root):
    script = (
        "echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq-written;"
        "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo sysctl-written;"
        "touch /sys/x 2>/dev/null && echo sys-written;"
        "cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l; mknod /dev/sda b 8 0 2>/dev/null && echo mknod-ok;"
        "mount -t tmpfs x /mnt 2>/dev/null && echo mounted; echo done"
    )
    proc = sh(root, script)
    out = proc.stdout.split()
    assert out == ["0", "0", "done"], "masked /proc files read empty, /sys/firmware lists nothing, nothing written"
    # the control: the host has what is masked, so the zeros above are the masks' work
    assert os.listdir("/sys/firmware") and len(Path("/proc/timer_list").read_bytes()) > 0


@pytest.mark.cgroups
def test_device_node_limits(root):
    proc = sh(root, "ls /dev | tr '\\n' ' '; head -c 4 /dev/zero | wc -c")
    devices = set(proc.stdout.split()[:-1])
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"} <= devices
    assert not {"sda", "vda", "kmsg", "mem", "kvm"} & devices


def test_env_workdir_user(root):
    proc = sh(root, "echo $GREETING $HOME; pwd; id -u; id -g", "-e", "GREETING=hi", "-w", "/tmp", "--user", "1000:1000")
    assert proc.stdout.splitlines() == ["hi /", "/tmp", "1000", "1000"], "HOME is / for a uid without a passwd entry"


def test_volumes_read_only_and_read_write(root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.chown(out_dir, 4343, 4343)  # a user's folder: root's are refused for writing (test_userns.py)
    proc = sh(root, "cat /data/in.txt; echo x > /data/new 2>/dev/null || echo ro-refused;"
                    "mount -o remount,rw /data 2>/dev/null && echo remounted; echo result > /out/file",
              "-v", f"{data}:/data:ro", "-v", f"{out_dir}:/out")
    assert proc.stdout.splitlines() == ["from host", "ro-refused"]
    assert (out_dir / "file").read_text() == "result\n"
    assert os.stat(out_dir / "file")[4:6] == (4343, 4343), "what the container's root wrote is the folder owner's"
    assert sorted(p.name for p in data.iterdir()) == ["in.txt"]


def _limits(text: str) -> dict[str, tuple[str, str]]:
    """/proc/self/limits as {name: (soft, hard)}."""
    out = {}
    for line in text.splitlines()[1:]:
        words = line[:26].strip(), line[26:].split()
        out[words[0]] = (words[1][0], words[1][1])
    return out


def test_default_rlimits_and_ulimit(root):
    """As docker: nofile 1024:4096 and no core files unless --ulimit says otherwise, which the container cannot
    raise; a value the host cannot give is one line before anything starts."""
    default = _limits(sh(root, "cat /proc/self/limits").stdout)
    assert default["Max open files"] == ("1024", "4096") and default["Max core file size"] == ("0", "0")
    proc = sh(root, "cat /proc/self/limits; ulimit -n 300 2>/dev/null && echo raised || echo not-raised",
              "--ulimit", "nofile=100:200", "--ulimit", "nproc=50:60", "--ulimit", "core=1024")
    given = _limits(proc.stdout.rsplit("\n", 2)[0])
    assert given["Max open files"] == ("100", "200") and given["Max processes"] == ("50", "60")
    assert given["Max core file size"] == ("1024", "1024")
    assert proc.stdout.splitlines()[-1] == "not-raised", "above its hard limit: refused inside"
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    refused = sh(root, "true", "--ulimit", f"nofile={nr_open + 1}")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"sandbox-kernel: error: --ulimit nofile={nr_open + 1}:{nr_open + 1} is more than this host allows "
        f"(fs.nr_open {nr_open})")
    assert sh(root, "true", "--ulimit", "nofile=5:4").stderr.startswith("sandbox-kernel: error: invalid --ulimit")


def test_volumes_and_their_submounts_are_nosuid_and_nodev(root, tmp_path):
    """A folder with a file system mounted inside it (a tmpfs here, a USB stick on a desktop): the volume and
    that submount are nosuid and nodev, and a :ro volume's submount is read-only too: for a user's folder
    (an idmapped mount) and for one of root's (bound as it is)."""
    folders = {"ro": 4343, "rw": 4343, "rootro": 0}
    mounted = []
    try:
        for name, owner in folders.items():
            (tmp_path / name / "sub").mkdir(parents=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0755,uid={owner},gid={owner}", "tmpfs",
                            str(tmp_path / name / "sub")], check=True)
            mounted.append(tmp_path / name / "sub")
            os.chown(tmp_path / name, owner, owner)
            (tmp_path / name).chmod(0o755)
        proc = sh(root, "awk '$5 ~ /^\\/(ro|rw|rootro)/ {print $5, $6}' /proc/self/mountinfo;"
                        " touch /ro/sub/new /rootro/sub/new 2>/dev/null && echo ro-sub-written;"
                        " touch /rw/sub/new && echo rw-sub-ok",
                  "-v", f"{tmp_path / 'ro'}:/ro:ro", "-v", f"{tmp_path / 'rw'}:/rw",
                  "-v", f"{tmp_path / 'rootro'}:/rootro:ro")
        options = dict(line.split() for line in proc.stdout.splitlines() if line.startswith("/"))
        assert sorted(options) == ["/ro", "/ro/sub", "/rootro", "/rootro/sub", "/rw", "/rw/sub"], proc.stdout
        for point, flags in options.items():
            assert {"nosuid", "nodev"} <= set(flags.split(",")), (point, flags)
            assert flags.startswith("rw," if point.startswith("/rw") else "ro,"), (point, flags)
        assert proc.stdout.splitlines()[-1] == "rw-sub-ok" and "ro-sub-written" not in proc.stdout
    finally:
        for point in mounted:
            subprocess.run(["umount", str(point)], check=True)


def test_missing_command_is_127(root):
    proc = run(root, BUSYBOX, "no-such-command")
    assert proc.returncode == 127
    assert proc.stderr == "sandbox-kernel: error: exec no-such-command: executable file not found in $PATH\n"


@pytest.mark.cgroups
def test_oom_kill_is_reported(root, debian_store):
    proc = run(debian_store.root, "--memory", "64m", "localhost/debian-python",
               "python3", "-c", "x = bytearray(200 << 20); print('survived')")
    assert proc.returncode == 137
    assert "survived" not in proc.stdout
    assert proc.stderr == "sandbox-kernel: out of memory (limit 64 MiB): the container was killed\n"


@pytest.mark.cgroups
def test_memory_swap_lets_a_container_go_past_its_memory_into_swap(root, debian_store, exec_path):
    """--memory 64m --memory-swap 256m: 150 MiB fit (the rest is swapped out); without --memory-swap they do
    not (test_oom_kill_is_reported, as docker), nor above the total (test_cgroups, with -1 too)."""
    if swap_total() < 512 << 20:
        pytest.skip("this host has no swap to go into (the cgroup v2 VM of scripts/test-vm.sh has)")
    if exec_path == "python":
        pytest.skip("the cgroup is the same whichever command process runs: the sk-exec run shows it")
    fits = run(debian_store.root, "--memory", "64m", "--memory-swap", "256m", "localhost/debian-python",
               "python3", "-c", "x = bytearray(150 << 20); print('survived')")
    assert (fits.returncode, fits.stdout) == (0, "survived\n"), fits.stderr


@pytest.mark.cgroups
def test_fork_bomb_stops_at_the_pids_limit(root):
    proc = sh(root, "while :; do sleep 3 & done", "--pids-limit", "20")
    assert proc.returncode == 2 and "can't fork" in proc.stderr, "the shell runs out of processes and gives up"


def test_pid1_reaps_orphans(root):
    """An orphan (a child whose shell exited) becomes PID 1's, and once it exits PID 1 reaps it: its /proc entry
    goes. A PID 1 that did not reap would leave it there as a zombie for good (the loop gives up after 10 s).
    (Counting zombies instead raced: a count taken before the orphan had exited was 0, and one just after it
    exited saw it before PID 1 had reaped it.)"""
    proc = sh(root, "sh -c 'sleep 2 & echo $! > /tmp/orphan'; p=$(cat /tmp/orphan);"
                    " echo parent $(cut -d' ' -f4 /proc/$p/stat);"
                    " n=0; while [ -e /proc/$p ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done;"
                    " [ -e /proc/$p ] && echo left $(cut -d' ' -f3 /proc/$p/stat) || echo reaped")
    assert proc.stdout.splitlines() == ["parent 1", "reaped"], "orphans are PID 1's, and reaped by it"


def test_pid1_forwards_signals_to_the_command(root):
    """kill -s TERM reaches PID 1, which passes it to the command: its trap runs and sets the exit status."""
    cli = [sys.executable, "-m", "sandbox_kernel", "--root", str(root)]
    name = "forwarded"
    started = subprocess.run([*cli, "run", "-d", "--name", name, BUSYBOX, "sh", "-c",
                              "trap 'echo got-TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done"],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    logs = subprocess.Popen([*cli, "logs", "-f", name], stdout=subprocess.PIPE, text=True)
    try:
        assert logs.stdout.readline() == "ready\n"  # the trap is set: the signal comes after it
        killed = subprocess.run([*cli, "kill", "-s", "TERM", name], capture_output=True, text=True, timeout=60)
        assert killed.returncode == 0, killed.stderr
        # (30 s: a bound on "at all", not a speed: without forwarding the line never comes)
        assert select.select([logs.stdout], [], [], 30)[0] and logs.stdout.readline() == "got-TERM\n"
        logs.wait(timeout=60)
        waited = subprocess.run([*cli, "wait", name], capture_output=True, text=True, timeout=60)
        assert waited.stdout.strip() == "42", "the command's own exit status, set by its trap"
    finally:
        subprocess.run([*cli, "rm", "-f", name], capture_output=True, timeout=60)
        if logs.poll() is None:
            logs.kill()
            logs.wait()


def test_pid1_keeps_only_cap_kill(root):
    proc = sh(root, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/1/status")
    caps = dict(line.split(":\t") for line in proc.stdout.splitlines())
    assert caps == {"CapInh": "0000000000000000", "CapPrm": "0000000000000020", "CapEff": "0000000000000020",
                    "CapBnd": "0000000000000020", "CapAmb": "0000000000000000"}, "CAP_KILL (bit 5) alone"


def test_image_must_exist(root):
    """As docker: a missing image is pulled first (here from a registry that is not there), or with
    --pull never refused; one line of error either way."""
    proc = run(root, "--pull", "never", "localhost/none:1", "true")
    assert proc.returncode == 1 and proc.stderr == "sandbox-kernel: error: no such image: localhost/none:1\n"
    proc = run(root, "localhost:9/none:1", "true")
    assert proc.returncode == 1 and proc.stderr.splitlines()[0] == "Unable to find image 'localhost:9/none:1' locally"
    assert proc.stderr.splitlines()[1].startswith("sandbox-kernel: error: cannot reach registry localhost:9")


def test_our_pid1_is_not_dumpable(root):
    """Container root cannot read PID 1's environment or follow its exe link (it is not dumpable), while it
    can read its own processes' (the control: the probes work)."""
    probe = ("for p in 1 self $child; do cat /proc/$p/environ >/dev/null 2>&1 && echo $p-environ-read || "
             "echo $p-environ-denied; readlink /proc/$p/exe >/dev/null 2>&1 && echo $p-exe-read || "
             "echo $p-exe-denied; done")
    proc = sh(root, f"sleep 30 & child=$!; {probe}; kill $child")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[:2] == ["1-environ-denied", "1-exe-denied"], "PID 1 is not dumpable"
    assert lines[2:4] == ["self-environ-read", "self-exe-read"], "the control: a process's own are readable"
    assert lines[4].endswith("-environ-read") and lines[5].endswith("-exe-read"), "and its children's"


_ESCAPES = r"""
import ctypes, errno, os, threading, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *args):
    res = libc.syscall(nr, *args)
    print(name, 0 if res >= 0 else ctypes.get_errno())
call("unshare", 272, 0x10000000)                     # CLONE_NEWUSER
call("setns", 308, 0, 0)
call("mount", 165, b"none", b"/mnt", b"tmpfs", 0, None)
call("ptrace", 101, 16, 1, 0, 0)                     # PTRACE_ATTACH to PID 1
call("bpf", 321, 0, 0, 0)
call("keyctl", 250, 0, 0, 0, 0, 0)
call("clone-newns", 56, 0x20000 | 17, 0, 0, 0, 0)   # CLONE_NEWNS|SIGCHLD
call("clone3", 435, 0, 0)
call("io_uring_setup", 425, 1, 0)
call("init_module", 175, 0, 0, 0)
call("kexec_load", 246, 0, 0, 0, 0)
call("userfaultfd", 323, 0)
call("perf_event_open", 298, 0, 0, -1, -1, 0)
call("socket-vsock", 41, 40, 1, 0)                  # AF_VSOCK: the host's VMs
call("socket-alg", 41, 38, 5, 0)                    # AF_ALG (CVE-2026-31431)
call("socket-inet", 41, 2, 1, 0)                    # an ordinary one
call("unknown-1000", 1000)                          # a syscall newer than the profile
call("fchmodat2", 452, -100, b"/tmp", 0o755, 0)      # (Linux 6.6): newer than the profile too
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("thread ok")
print(subprocess.run(["true"]).returncode == 0 and "subprocess ok")
try:
    print(sorted(os.listdir("/proc/1/root")) == sorted(os.listdir("/")) and "proc1-root is the container")
except PermissionError:
    print("proc1-root denied")                          # PID 1 is not dumpable
"""


def test_seccomp_refuses_escape_syscalls_but_not_ordinary_work(debian_store):
    proc = run(debian_store.root, "localhost/debian-python", "python3", "-c", _ESCAPES)
    assert proc.returncode == 0, proc.stderr
    results = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    for name in ("unshare", "setns", "mount", "ptrace", "bpf", "keyctl", "clone-newns", "io_uring_setup",
                 "init_module", "kexec_load", "userfaultfd", "perf_event_open"):
        assert results[name] == str(1), f"{name} should fail with EPERM, got {results[name]}"
    assert results["clone3"] == "38", "clone3 is ENOSYS so libc falls back to clone"
    assert results["socket-vsock"] == "1" and results["socket-alg"] == "1", "AF_VSOCK and AF_ALG are refused"
    assert results["socket-inet"] == "0"
    assert results["unknown-1000"] == "38" and results["fchmodat2"] == "38", "newer syscalls are ENOSYS, not open"
    assert results["thread"] == "ok" and results["subprocess"] == "ok"
    assert results["proc1-root"] in ("is the container", "denied")


class UserAtATerminal:
    """The CLI started on a terminal of the test's own (a pty whose master end is the user's keyboard and
    screen): what it prints is read as it comes, keys are typed into it."""

    def __init__(self, argv: list[str], rows: int = 33, cols: int = 101):
        import fcntl
        import struct
        import termios

        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.mode = termios.tcgetattr(slave)
        self.slave = slave

        def controlling_terminal() -> None:  # (in the child: a session of its own, this terminal its terminal)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=controlling_terminal)
        self.screen = b""
        self.seen = 0  # how far expect() has matched

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal window does: the kernel sends SIGWINCH to the program in the foreground."""
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, text: bytes, timeout: float = 30.0) -> bytes:
        """Read until ``text`` shows past what was matched before; the screen so far (an event, with a bound
        for 'never')."""
        import time

        deadline = time.monotonic() + timeout
        while text not in self.screen[self.seen:]:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r} on the screen: {self.screen[-600:]!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # every slave end is closed: the CLI has exited
                    break
        assert text in self.screen[self.seen:], f"{text!r} not on the screen: {self.screen[-600:]!r}"
        self.seen = self.screen.index(text, self.seen) + len(text)
        return self.screen

    def command(self, line: bytes) -> None:
        """Type ``line`` once the shell's next prompt is on the screen (typed ahead, a terminal echoes it
        before the shell reads it, which a test cannot tell from the shell's own output)."""
        self.expect(b"/ # ")
        self.type(line + b"\r")

    @staticmethod
    def wait_for_process(*argv: str) -> None:
        """Until a process runs ``argv``: its exec has happened, in the terminal's foreground (a shell with
        job control puts it there before the exec)."""
        wanted = "\0".join(argv).encode() + b"\0"

        def running() -> bool:
            for proc in Path("/proc").iterdir():
                with contextlib.suppress(OSError):
                    if proc.name.isdigit() and (proc / "cmdline").read_bytes() == wanted:
                        return True
            return False

        wait_for(running, what=" ".join(argv))

    def close(self) -> int:
        """The CLI's exit status, once it has exited; ``mode_after``: its terminal's mode then."""
        import termios

        try:
            code = self.proc.wait(60)
            self.mode_after = termios.tcgetattr(self.slave)
            return code
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)
            os.close(self.slave)


def test_run_it_is_a_terminal_with_ctrl_c_ctrl_d_and_the_window_size(root):
    """run -it on a terminal: the container's shell gets a terminal of its own with the caller's size (and its
    changes), Ctrl-C interrupts the command in the foreground there (not the CLI), Ctrl-D ends the shell, and
    the caller's terminal is as it was afterwards."""
    user = UserAtATerminal([sys.executable, "-m", "sandbox_kernel", "--root", str(root), "run", "--rm", "-it",
                            BUSYBOX, "sh"])
    try:
        user.command(b"stty size; echo TERM=$TERM; [ -t 0 ] && echo on-a-$((1+1))")
        user.expect(b"\r\n33 101\r\nTERM=xterm\r\non-a-2")
        user.resize(40, 120)
        user.command(b"stty size")
        user.expect(b"\r\n40 120\r\n")
        user.command(b"sleep 62")
        user.wait_for_process("sleep", "62")
        user.type(b"\x03")  # Ctrl-C
        user.command(b"echo slept-$?")
        user.expect(b"slept-130")
        user.command(b"echo still-$((2+2))")
        user.expect(b"still-4")
        user.expect(b"/ # ")
        user.type(b"\x04")  # Ctrl-D
        assert user.close() == 0
        assert user.mode_after == user.mode, "the caller's terminal mode is restored"
    finally:
        if user.proc.poll() is None:
            user.proc.kill()
            user.proc.wait()


def test_exec_it_is_a_terminal_and_ctrl_c_reaches_it(root):
    name = f"tty-{os.getpid()}"
    cli = [sys.executable, "-m", "sandbox_kernel", "--root", str(root)]
    started = subprocess.run([*cli, "run", "-d", "--name", name, BUSYBOX, "sleep", "600"], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert started.returncode == 0, started.stderr
    try:
        user = UserAtATerminal([*cli, "exec", "-it", name, "sh"], rows=20, cols=70)
        try:
            user.command(b"stty size; cat /proc/1/comm")
            user.expect(b"\r\n20 70\r\nsandbox-init")
            user.command(b"sleep 63")
            user.wait_for_process("sleep", "63")
            user.type(b"\x03")
            user.command(b"echo slept-$?")
            user.expect(b"slept-130")
            user.expect(b"/ # ")
            user.type(b"exit 3\r")
            assert user.close() == 3
        finally:
            if user.proc.poll() is None:
                user.proc.kill()
                user.proc.wait()
        piped = subprocess.run([*cli, "exec", "-t", name, "sh", "-c", "[ -t 1 ] && echo tty; echo err >&2"],
                               capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert (piped.returncode, piped.stdout, piped.stderr) == (0, b"tty\r\nerr\r\n", b""), \
            "-t without a terminal here: one stream, as docker -t"
    finally:
        subprocess.run([*cli, "rm", "-f", name], capture_output=True, timeout=60)


def test_t_is_refused_where_there_is_no_terminal(root):
    detached = subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(root), "run", "-d", "-t",
                               BUSYBOX, "true"], capture_output=True, text=True, timeout=60)
    assert detached.returncode == 2 and "-t with -d" in detached.stderr
