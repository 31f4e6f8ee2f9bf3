"""sk-exec, the compiled command process (runtime/exec_helper.py), run directly on host binaries (root).

The container tests (test_run.py and the rest) run every container through it; these check its own
contract: the plan's fields, the privilege drop, its error lines and exit codes, a dropped slot.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from conftest import need_tool

from sandbox_kernel.runtime import exec_helper, process, security
from sandbox_kernel.runtime.process import CAPABILITIES, EXEC_PREFIX

pytestmark = pytest.mark.root
DEFAULT_CAPS = sum(1 << bit for bit in CAPABILITIES.values())


@pytest.fixture(scope="module")
def helper() -> str:
    if os.geteuid() != 0:
        pytest.skip("sk-exec unshares a cgroup namespace: needs root")
    path = exec_helper.path()
    assert path is not None, "scripts/setup.sh installs a C compiler and builds the helper"
    return path


def spawn(helper: str, plan: bytes | None, stdin: bytes = b"") -> tuple[int, str, str, str]:
    """Start sk-exec as PID 1 does, give it ``plan`` (None: drop it); (exit status, stdout, stderr, error line)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = process._spawn_helper(helper, theirs, err_w)
    theirs.close()
    os.close(err_w)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    errout_r, errout_w = os.pipe()
    try:
        assert ours.recv(16) == b"ready"
        if plan is not None:
            socket.send_fds(ours, [plan], [in_r, out_w, errout_w])
        ours.close()
        for fd in (in_r, out_w, errout_w):
            os.close(fd)
        os.write(in_w, stdin)
        os.close(in_w)
        error = process.read_error(err_r)
        with os.fdopen(out_r, "rb") as out, os.fdopen(errout_r, "rb") as err:
            stdout, stderr = out.read().decode(), err.read().decode()
        return process.wait(pid), stdout, stderr, error
    finally:
        ours.close()


def plan(argv: tuple[str, ...], *, env: tuple[tuple[str, str], ...] = (("PATH", "/usr/bin:/bin"),), cwd: str = "/",
         uid: int = 0, gid: int = 0, groups: tuple[int, ...] = (), caps: int = DEFAULT_CAPS,
         rlimits: tuple[tuple[int, int, int], ...] = ()) -> bytes:
    return exec_helper.encode(argv, env, cwd, uid, gid, groups, caps, rlimits, security.compiled())


def test_runs_the_command_with_its_stdio_env_and_cwd(helper):
    code, out, err, error = spawn(helper, plan(("sh", "-c", "read x; echo $x $GREETING; pwd; echo oops >&2; exit 3"),
                                               env=(("PATH", "/usr/bin:/bin"), ("GREETING", "hi")), cwd="/tmp"),
                                  stdin=b"hello\n")
    assert (code, out, err, error) == (3, "hello hi\n/tmp\n", "oops\n", "")


def test_drops_privileges_in_full(helper):
    script = ("grep -E '^(Uid|Gid|Groups|CapBnd|CapEff|CapPrm|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status;"
              " ls /proc/self/fd")
    rlimit = (7, 77, 88)  # RLIMIT_NOFILE
    code, out, _, error = spawn(helper, plan(("sh", "-c", script + "; ulimit -n"), uid=65534, gid=65534,
                                             groups=(65534, 100), rlimits=(rlimit,)))
    assert (code, error) == (0, "")
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {key: value.split() for key, value in fields.items()}
    assert fields["Uid"] == ["65534"] * 4 and fields["Gid"] == ["65534"] * 4
    assert sorted(fields["Groups"]) == ["100", "65534"]
    assert fields["CapBnd"] == [f"{DEFAULT_CAPS:016x}"], "the bounding set is podman's 11"
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapAmb"] == ["0000000000000000"], "a non-root uid has none"
    assert fields["NoNewPrivs"] == ["1"] and fields["Seccomp"] == ["2"]
    lines = out.splitlines()
    assert lines[-1] == "77", "the soft open-files limit"
    fds = [line for line in lines if line.isdigit()][:-1]
    assert sorted(fds, key=int) == ["0", "1", "2", "3"], "stdio and ls's own directory fd: nothing inherited"


def test_root_keeps_exactly_the_default_capabilities(helper):
    code, out, _, _ = spawn(helper, plan(("grep", "^CapEff", "/proc/self/status")))
    assert (code, out.split()) == (0, ["CapEff:", f"{DEFAULT_CAPS:016x}"])


@pytest.mark.parametrize(("argv", "cwd", "code", "reason"), [
    (("no-such-command",), "/", 127, "executable file not found in $PATH"),
    (("/no/such/file",), "/", 127, "No such file or directory"),
    (("/etc/passwd",), "/", 126, "Permission denied"),
    (("true",), "/no/such/dir", 127, "No such file or directory"),
])
def test_exec_errors_are_one_line_with_dockers_codes(helper, argv, cwd, code, reason):
    status, out, _, error = spawn(helper, plan(argv, cwd=cwd))
    assert status == 127 and out == ""
    assert error == f"{EXEC_PREFIX}{code} exec {argv[0]}: {reason}"


def test_a_malformed_plan_is_refused(helper):
    good = plan(("true",))
    for bad in (b"nonsense", good[:40], b"SKX2" + good[4:]):
        status, _, _, error = spawn(helper, bad)
        assert (status, error) == (125, "container setup failed: malformed plan")


def test_a_plan_without_a_seccomp_filter_is_refused(helper):
    header = exec_helper.HEADER.pack(exec_helper.MAGIC, 0, 0, 0, 0, 1, 0, 0, DEFAULT_CAPS)
    status, _, _, error = spawn(helper, header + b"/\0true\0")
    assert (status, error) == (125, "container setup failed: malformed plan")


def test_a_dropped_slot_exits_quietly(helper):
    assert spawn(helper, None) == (0, "", "", "")


def test_encode_refuses_nul_bytes_and_an_empty_command():
    with pytest.raises(ValueError, match="null byte"):
        exec_helper.encode(("echo", "a\0b"), (), "/", 0, 0, (), 0, (), security.compiled())
    with pytest.raises(ValueError, match="empty"):
        exec_helper.encode((), (), "/", 0, 0, (), 0, (), security.compiled())


def test_build_refuses_a_cache_others_can_write(tmp_path):
    need_tool("cc")  # (as root, CI: scripts/setup.sh installs it; a missing one is a failure)
    built = exec_helper.build(tmp_path / "bin")
    assert stat.S_IMODE(built.stat().st_mode) == 0o755 and stat.S_IMODE(built.parent.stat().st_mode) == 0o700
    assert exec_helper.build(tmp_path / "bin") == built, "built once, then found"
    built.parent.chmod(0o777)
    with pytest.raises(exec_helper.HelperError, match="writable by another user"):
        exec_helper.build(Path(built.parent))


def test_build_refuses_a_helper_below_a_directory_others_can_write(tmp_path):
    """Anyone who may write a directory above the helper could swap it (rename its parent) before root runs it."""
    need_tool("cc")  # (as root, CI: scripts/setup.sh installs it; a missing one is a failure)
    shared = tmp_path / "shared"
    shared.mkdir()
    built = exec_helper.build(shared / "bin")
    shared.chmod(0o777)  # not sticky: another user may rename bin/ and put their own in its place
    with pytest.raises(exec_helper.HelperError, match=f"could be replaced by another user .*{shared} is writable"):
        exec_helper.build(shared / "bin")
    shared.chmod(0o1777)  # sticky, and bin/ is ours: nobody else can move it
    assert exec_helper.build(shared / "bin") == built


def test_what_runs_is_a_sealed_copy_not_the_file(helper):
    """The helper runs from a memfd that no one can write, grow or shrink: swapping or changing the file on
    disk afterwards changes nothing that runs, and a container never gets a handle on a host file."""
    import fcntl

    assert helper.startswith("/proc/self/fd/")
    fd = int(helper.rsplit("/", 1)[1])
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & exec_helper.SEALS == exec_helper.SEALS, f"seals {seals:#x}"
    assert os.readlink(helper).startswith("/memfd:sk-exec")
    with pytest.raises(PermissionError):
        os.write(fd, b"x")
    assert fd >= 64, "above the fds the helper is given (3 and 4)"
