"""Escape attempts from inside real containers: every one must fail and leave the host as it was (root).

What tests/test_run.py already checks is not repeated here (the raw-syscall seccomp batch, sysrq and
/proc/sys/kernel/hostname writes, ``touch /sys/x``, ``mount -t tmpfs``, the fd count, /proc/1/environ).
Shell-level attempts run in busybox, syscall-level ones in python3 of the debian-python image with ctypes,
each printing the errno it got so that an assertion names exactly what escaped.

Nothing hostile may touch a real host file: stdin is always a pipe (never the host's /dev/null), and
every host-side target is a sacrificial file or directory under ``tmp_path``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from leftovers import wait_for_gone

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"
PYTHON = "localhost/debian-python:latest"
STUDENT = (4343, 4343)  # the owner of a writable volume (a host user's folder; root's are refused)
_STORES_USED: set[Path] = set()  # every store a test ran a container from: checked by nothing_left_behind


def run(store_root: Path, *args: str, stdin: object = None, input: str | None = "") -> subprocess.CompletedProcess:
    """``sandbox-kernel run --rm ARGS``; stdin is a pipe unless a file object is given."""
    _STORES_USED.add(store_root)
    return subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(store_root), "run", "--rm", *args],
                          capture_output=True, text=True, timeout=120, stdin=stdin,
                          input=None if stdin is not None else input)


def sh(store_root: Path, script: str, *opts: str) -> subprocess.CompletedProcess:
    return run(store_root, *opts, BUSYBOX, "sh", "-c", script)


def py(store_root: Path, code: str, *opts: str) -> subprocess.CompletedProcess:
    return run(store_root, *opts, PYTHON, "python3", "-c", code)


def results(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """``NAME RESULT`` lines (the script's own protocol) as a dict; the run itself must have succeeded."""
    assert proc.returncode == 0, f"the probe itself failed ({proc.returncode}): {proc.stderr}"
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def snapshot(path: Path) -> dict[str, tuple]:
    """Everything about a host tree that an escape could change: type, mode, owner, size, mtime, content, link."""
    out = {}
    for p in [path, *sorted(path.rglob("*"))]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            extra: object = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            extra = p.read_bytes()
        else:
            extra = None
        out[str(p.relative_to(path))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                         st.st_size, st.st_mtime_ns, st.st_rdev, extra)
    return out


def _sandbox_cgroups() -> set[Path]:
    found = {p for p in Path("/sys/fs/cgroup").glob("*/sandbox-kernel/*") if p.is_dir()}
    return found | {p for p in Path("/sys/fs/cgroup").glob("sandbox-kernel/*") if p.is_dir()}


def _ours(pid: str) -> bool:
    """Is this process the CLI (or one of its forks: stage 1, PID 1) running a container of one of our stores?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return int(pid) != os.getpid() and any(str(root) in cmdline for root in _STORES_USED)


def _pid_ns_init(pid: str) -> str | None:
    """The host pid of PID 1 of ``pid``'s pid namespace."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "ns/pid") == ns:
                nspid = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("NSpid"))
                if nspid.split()[-1] == "1":
                    return entry.name
        except (OSError, StopIteration):
            continue
    return None


def _leftovers(cgroups_before: set[Path]) -> list[str]:
    """Our processes, processes in a pid namespace of ours, and cgroups made during the test that outlived it.

    Another session may run containers on this machine at the same time: a new cgroup that still holds
    processes counts only if they are ours; a new empty one only if it stays for a few seconds (a
    concurrent run empties and removes its own within milliseconds).
    """
    deadline = time.monotonic() + 30  # (a bound on "at all": nothing left returns at once)
    while True:
        # (a --rm container's monitor, a fork of the CLI, finishes its cleanup after the CLI has returned)
        left = [f"process {entry.name}" for entry in Path("/proc").iterdir()
                if entry.name.isdigit() and _ours(entry.name)]
        suspicious = []
        for cgroup in sorted(_sandbox_cgroups() - cgroups_before):
            try:
                procs = (cgroup / "cgroup.procs").read_text().split()
            except OSError:
                continue  # removed meanwhile
            if not procs or any(_ours(p) or _ours(_pid_ns_init(p) or "0") for p in procs):
                suspicious.append(f"cgroup {cgroup} with processes {procs}")
        if not (left or suspicious) or time.monotonic() > deadline:
            return left + suspicious
        time.sleep(0.1)


@pytest.fixture(scope="module")
def bb(base_store) -> Path:
    return base_store.root


@pytest.fixture(scope="module")
def pyroot(debian_store) -> Path:
    return debian_store.root


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Every run leaves no mount, cgroup, netns, process or container directory on the host."""
    cgroups = _sandbox_cgroups()
    netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    nsfs = Path("/proc/self/mountinfo").read_text().count(" - nsfs ")
    yield
    mounts = Path("/proc/self/mountinfo").read_text()
    for root in _STORES_USED:
        assert str(root) not in mounts, f"a mount of {root} is left on the host"
        containers = root / "containers"
        if containers.exists():
            wait_for_gone(containers, time.monotonic() + 30)
            assert [p.name for p in containers.iterdir() if p.name != "names"] == [], "a container directory is left"
            names = containers / "names"
            assert not names.exists() or list(names.iterdir()) == [], "a container name is left"
    assert mounts.count(" - nsfs ") == nsfs, "a namespace is left bind-mounted on the host"
    assert (sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []) == netns, "a netns is left"
    assert _leftovers(cgroups) == [], "a process or cgroup of a container is left"


# -- syscalls, from python3 in the debian image: one run, several tests -----------------------------------------

_SYSCALLS = r"""
import ctypes, errno, os, stat, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {
    "x86_64": dict(clone=56, unshare=272, setns=308, ptrace=101, process_vm_readv=310, finit_module=313,
                   delete_module=176, kexec_file_load=320, add_key=248, request_key=249, name_to_handle_at=303,
                   open_by_handle_at=304),
    "aarch64": dict(clone=220, unshare=97, setns=268, ptrace=117, process_vm_readv=270, finit_module=273,
                    delete_module=106, kexec_file_load=294, add_key=217, request_key=218, name_to_handle_at=264,
                    open_by_handle_at=265),
}[os.uname().machine]
L = ctypes.c_long


def name(err):
    return errno.errorcode.get(err, str(err))


def call(label, nr, *args):
    ctypes.set_errno(0)
    res = libc.syscall(L(NR[nr]), *args)
    if nr == "clone" and res == 0:  # the clone happened: this is the child
        os._exit(0)
    if nr == "clone" and res > 0:
        os.waitpid(res, 0)
    print(label, "ok" if res >= 0 else name(ctypes.get_errno()), flush=True)


def attempt(label, fn):
    try:
        fn()
        print(label, "ok", flush=True)
    except OSError as exc:
        print(label, name(exc.errno), flush=True)


NS = ("mnt", "pid", "net", "user", "uts", "ipc", "cgroup")
before = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in NS}
# unshare(2) with each namespace flag (test_run covers CLONE_NEWUSER), clone(2) with new ones
for flag, value in dict(NEWNS=0x20000, NEWUTS=0x4000000, NEWIPC=0x8000000, NEWNET=0x40000000,
                        NEWPID=0x20000000, NEWCGROUP=0x2000000, NEWTIME=0x80).items():
    call(f"unshare-{flag}", "unshare", L(value))
for flag, value in dict(NEWUSER=0x10000000, NEWNET=0x40000000, NEWPID=0x20000000).items():
    call(f"clone-{flag}", "clone", L(value | 17), L(0), L(0), L(0), L(0))  # | SIGCHLD
print("namespaces-unchanged", all(os.readlink(f"/proc/self/ns/{ns}") == before[ns] for ns in NS))
# setns: PID 1's namespaces cannot be opened; setns with our own fds is refused anyway
for ns in NS:
    attempt(f"open-pid1-ns-{ns}", lambda ns=ns: os.close(os.open(f"/proc/1/ns/{ns}", os.O_RDONLY)))
for ns in ("mnt", "net", "pid"):
    fd = os.open(f"/proc/self/ns/{ns}", os.O_RDONLY)
    call(f"setns-{ns}", "setns", L(fd), L(0))
    os.close(fd)
# ptrace and its relatives against PID 1 and against our own child
call("ptrace-seize-pid1", "ptrace", L(0x4206), L(1), L(0), L(0))
call("ptrace-traceme", "ptrace", L(0), L(0), L(0), L(0))
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
call("ptrace-attach-own-child", "ptrace", L(16), L(child), L(0), L(0))
os.kill(child, 9)
os.waitpid(child, 0)
buf = ctypes.create_string_buffer(8)
iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
call("process_vm_readv-pid1", "process_vm_readv", L(1), iov, L(1), iov, L(1), L(0))
attempt("open-pid1-mem", lambda: os.close(os.open("/proc/1/mem", os.O_RDWR)))
# kernel modules (init_module is covered by test_run), kexec_file_load, keys
fd = os.open("/etc/passwd", os.O_RDONLY)
call("finit_module", "finit_module", L(fd), ctypes.c_char_p(b""), L(0))
os.close(fd)
call("delete_module", "delete_module", ctypes.c_char_p(b"ext4"), L(0x800))  # O_NONBLOCK
call("kexec_file_load", "kexec_file_load", L(-1), L(-1), L(1), ctypes.c_char_p(b""), L(4))  # KEXEC_FILE_NO_INITRAMFS
call("add_key", "add_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"escape"), ctypes.c_char_p(b"x"), L(1),
     L(-2 & 0xFFFFFFFF))  # KEY_SPEC_PROCESS_KEYRING
call("request_key", "request_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"escape"), None, L(0))
# the shocker: name a file by handle, then open an inode (2: an ext4 root) by handle
handle = ctypes.create_string_buffer(8 + 128)
ctypes.memmove(handle, (128).to_bytes(4, "little"), 4)
mount_id = ctypes.c_int()
call("name_to_handle_at", "name_to_handle_at", L(-100), ctypes.c_char_p(b"/"), handle, ctypes.byref(mount_id), L(0))
ctypes.memmove(handle, (8).to_bytes(4, "little") + (1).to_bytes(4, "little") + (2).to_bytes(4, "little")
               + (0).to_bytes(4, "little"), 16)  # 8 bytes, FILEID_INO32_GEN, inode 2, generation 0
root = os.open("/", os.O_RDONLY)
call("open_by_handle_at", "open_by_handle_at", L(root), handle, L(os.O_RDONLY))
# device nodes: no CAP_MKNOD
attempt("mknod-block-8:0", lambda: os.mknod("/tmp/sda", 0o600 | stat.S_IFBLK, os.makedev(8, 0)))
attempt("mknod-char-1:1", lambda: os.mknod("/tmp/mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1)))
print("mknod-left", sorted(n for n in os.listdir("/tmp") if n in ("sda", "mem")))
"""


@pytest.fixture(scope="module")
def syscalls(pyroot) -> dict[str, str]:
    """One run of _SYSCALLS for the tests below (module scope: it checks its own leftovers)."""
    cgroups = _sandbox_cgroups()
    proc = py(pyroot, _SYSCALLS)
    assert _leftovers(cgroups) == [], "the syscall probe left a process or cgroup behind"
    return results(proc)


def test_no_namespace_can_be_created(syscalls):
    for flag in ("NEWNS", "NEWUTS", "NEWIPC", "NEWNET", "NEWPID", "NEWCGROUP", "NEWTIME"):
        assert syscalls[f"unshare-{flag}"] == "EPERM", f"unshare(CLONE_{flag}) gave {syscalls[f'unshare-{flag}']}"
    for flag in ("NEWUSER", "NEWNET", "NEWPID"):
        assert syscalls[f"clone-{flag}"] == "EPERM", f"clone(CLONE_{flag}) gave {syscalls[f'clone-{flag}']}"
    assert syscalls["namespaces-unchanged"] == "True", "the process ended up in another namespace"


def test_setns_cannot_join_pid1_or_any_namespace(syscalls):
    for ns in ("mnt", "pid", "net", "user", "uts", "ipc", "cgroup"):
        got = syscalls[f"open-pid1-ns-{ns}"]
        assert got == "EACCES", f"/proc/1/ns/{ns} of the non-dumpable PID 1 could be opened ({got})"
    for ns in ("mnt", "net", "pid"):
        assert syscalls[f"setns-{ns}"] == "EPERM", f"setns on a {ns} namespace fd gave {syscalls[f'setns-{ns}']}"


def test_pid1_cannot_be_traced_or_read(syscalls):
    """ptrace is allowed, as in moby's profile (since Linux 4.8 a traced process's syscalls still go through
    seccomp): a container may trace its own processes (strace, gdb), never PID 1, which is not dumpable
    and is the host's process."""
    for what in ("ptrace-seize-pid1", "process_vm_readv-pid1"):
        assert syscalls[what] == "EPERM", f"{what} gave {syscalls[what]}: PID 1 could be traced or read"
    assert syscalls["open-pid1-mem"] == "EACCES", f"PID 1's memory could be opened ({syscalls['open-pid1-mem']})"
    assert syscalls["ptrace-attach-own-child"] == "ok", "the container's own child can be traced, as under docker"


def test_kernel_code_and_keys_cannot_be_loaded(syscalls):
    for what in ("finit_module", "delete_module", "kexec_file_load", "add_key", "request_key"):
        assert syscalls[what] == "EPERM", f"{what} gave {syscalls[what]}"


def test_open_by_handle_at_is_refused(syscalls):
    """The shocker escape (2014): open_by_handle_at reaches any inode of the host file system. Making a handle
    (name_to_handle_at) is allowed, as in moby's profile: only opening one is the escape."""
    assert syscalls["name_to_handle_at"] != "EPERM", f"name_to_handle_at gave {syscalls['name_to_handle_at']}"
    assert syscalls["open_by_handle_at"] == "EPERM", f"open_by_handle_at gave {syscalls['open_by_handle_at']}"


@pytest.mark.cgroups
def test_device_nodes_cannot_be_made(syscalls, bb):
    assert syscalls["mknod-block-8:0"] == "EPERM", f"a block device was made ({syscalls['mknod-block-8:0']})"
    assert syscalls["mknod-char-1:1"] == "EPERM", f"/dev/mem's node was made ({syscalls['mknod-char-1:1']})"
    assert syscalls["mknod-left"] == "[]"
    proc = sh(bb, "mknod /tmp/sda b 8 0; echo rc $?; [ -e /tmp/sda ] && echo exists yes || echo exists no")
    assert results(proc) == {"rc": "1", "exists": "no"}, "busybox mknod made a block device"
    assert "Operation not permitted" in proc.stderr


# -- shell-level attempts, from busybox ------------------------------------------------------------------------


@pytest.mark.cgroups
def test_mount_and_umount_fail_and_the_mount_table_is_unchanged(bb):
    attempts = {
        "bind-root": "mount --bind / /mnt",
        "rbind-proc": "mount --rbind /proc /mnt",
        "proc": "mount -t proc proc /mnt",
        "sysfs": "mount -t sysfs sysfs /mnt",
        "cgroup": "mount -t cgroup -o memory cgroup /mnt",  # CVE-2022-0492's release_agent needs this
        "devpts": "mount -t devpts devpts /mnt",
        "remount-sys-rw": "mount -o remount,rw /sys",
        "remount-proc-sys-rw": "mount -o remount,rw /proc/sys",
        "remount-root-ro": "mount -o remount,ro /",
        "umount-proc-sys": "umount /proc/sys",
        "umount-lazy-masked": "umount -l /proc/keys",
        "umount-lazy-etc-hosts": "umount -l /etc/hosts",
        "umount-lazy-root": "umount -l /",
    }
    script = "cat /proc/self/mountinfo > /tmp/before;"
    script += "".join(f"{cmd} 2>/dev/null; echo {label} $?;" for label, cmd in attempts.items())
    script += "cmp -s /tmp/before /proc/self/mountinfo && echo unchanged yes || echo unchanged no; ls /mnt | wc -l"
    proc = sh(bb, script)
    out = results(proc)
    for label, cmd in attempts.items():
        assert out[label] != "0", f"`{cmd}` succeeded inside the container"
    assert out["unchanged"] == "yes", "the container's mount table changed"
    assert proc.stdout.splitlines()[-1] == "0", "something appeared under /mnt"


def test_busybox_unshare_and_nsenter_fail(bb):
    script = ("for o in -U -r -m -n -pf -i -u; do unshare $o true 2>/dev/null; echo \"unshare$o\" $?; done;"
              "nsenter -t 1 -m -u -n -p true 2>/dev/null; echo nsenter $?")
    out = results(sh(bb, script))
    for opt in ("-U", "-r", "-m", "-n", "-pf", "-i", "-u"):
        assert out[f"unshare{opt}"] == "1", f"`unshare {opt} true` succeeded: a new namespace was made"
    assert out["nsenter"] != "0", "nsenter reached PID 1's namespaces"


def test_insmod_and_rmmod_fail(bb):
    host_modules = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else None
    script = ("printf '\\177ELF-not-really' > /tmp/escape.ko; insmod /tmp/escape.ko 2>&1; echo insmod $?;"
              "rmmod ext4 2>&1; echo rmmod $?")
    proc = sh(bb, script)
    out = results(proc)
    assert out["insmod"] != "0", "insmod loaded a module"
    assert out["rmmod"] != "0", "rmmod removed a module"
    assert "Operation not permitted" in proc.stdout, "insmod should fail at init_module/finit_module (EPERM)"
    if host_modules is not None:
        assert Path("/proc/modules").read_text() == host_modules, "the host's module list changed"


@pytest.mark.cgroups
def test_host_files_are_unreachable_through_proc_roots(bb, tmp_path):
    marker = tmp_path / "host-marker-7f3a"
    marker.write_text("host secret\n")
    paths = [str(marker), f"/proc/self/root{marker}", f"/proc/1/root{marker}", f"/proc/1/cwd{marker}",
             f"/proc/$PPID/root{marker}", f"/proc/$$/root{marker}", f"/proc/$$/cwd{marker}", str(tmp_path)]
    script = "".join(f"cat {p} 2>/dev/null && echo REACHED {p}; [ -e {p} ] && echo REACHED {p};" for p in paths)
    script += (
        f"for d in /proc/[0-9]*; do for w in root cwd; do cat $d/$w{marker} 2>/dev/null && echo REACHED $d/$w; done;"
        " done;"
        f"find / -path /proc -prune -o -path /sys -prune -o -name {marker.name} -print;"
        "echo ppid $PPID; readlink /proc/1/root >/dev/null 2>&1 && echo REACHED /proc/1/root-link;"
        "[ \"$(ls -a /proc/self/root | tr '\\n' ' ')\" = \"$(ls -a / | tr '\\n' ' ')\" ] && echo self-root same;"
        "[ \"$(ls -a /proc/$$/root/ | tr '\\n' ' ')\" = \"$(ls -a / | tr '\\n' ' ')\" ] && echo shell-root same"
    )
    proc = sh(bb, script)
    assert proc.returncode == 0, proc.stderr
    assert "host secret" not in proc.stdout and "REACHED" not in proc.stdout, f"host file reached: {proc.stdout}"
    assert marker.name not in proc.stdout, f"the host marker was found: {proc.stdout}"
    out = results(proc)
    assert out["ppid"] == "1", "the shell's parent is the container's PID 1, nothing outside"
    assert out["self-root"] == "same" and out["shell-root"] == "same", "/proc/*/root is not the container's root"
    assert marker.read_text() == "host secret\n"


def test_no_fd_or_cwd_leads_out_of_the_container(bb, tmp_path):
    marker = tmp_path / "cwd-marker-19c2"
    marker.write_text("host\n")
    script = (
        "echo cwd $(readlink /proc/self/cwd) $(readlink /proc/$$/cwd);"
        "ls /proc/$$/fd > /tmp/fds;"  # the shell's own fds, listed while it holds no pipe or directory of its own
        "for n in $(cat /tmp/fds); do [ -d /proc/$$/fd/$n ] && echo DIRFD $n;"
        " echo fd$n $(readlink /proc/$$/fd/$n); done;"
        "for n in $(seq 3 20); do (cd /proc/self/fd/$n 2>/dev/null && echo CD $n $(pwd -P) $(ls -a | tr '\\n' ' '));"
        " (cd /proc/$$/fd/$n 2>/dev/null && echo CD $$ $n $(pwd -P)); done;"
        f"cat ../../../../../../../..{marker} 2>/dev/null && echo REACHED; cd /; cd ../../..; echo top $(pwd -P)"
    )
    proc = sh(bb, script)
    out = results(proc)
    assert out["cwd"] == "/ /", f"the working directory is not the container's / ({out['cwd']})"
    assert "DIRFD" not in proc.stdout, f"a directory fd reached the container: {proc.stdout}"
    assert sorted(k for k in out if k.startswith("fd")) == ["fd0", "fd1", "fd2"], f"extra fds: {proc.stdout}"
    assert all(out[f"fd{n}"].startswith("pipe:") for n in range(3)), f"stdio is not the caller's pipes: {out}"
    assert "CD " not in proc.stdout, f"cd /proc/self/fd/N entered a leaked directory: {proc.stdout}"
    assert "REACHED" not in proc.stdout and out["top"] == "/", "`..` from / left the container"


def test_workdir_through_a_leaked_fd_is_refused(bb):
    """runc CVE-2024-21626: ``-w /proc/self/fd/N`` with a host directory fd still open at chdir time."""
    for n in range(3, 21):
        proc = sh(bb, "echo cwd $(pwd -P); ls -a | tr '\\n' ' '", "-w", f"/proc/self/fd/{n}")
        assert proc.stdout == "", f"-w /proc/self/fd/{n} started the command in a leaked directory: {proc.stdout}"
        assert proc.returncode != 0 and proc.stderr.startswith("sandbox-kernel: error: "), proc.stderr


def test_symlinks_in_a_volume_do_not_reach_host_files(bb, tmp_path):
    """chown/chmod/write through symlinks (made inside, or planted by the host) to sacrificial host files."""
    victim = tmp_path / "victim"
    victim.write_text("sacrificial\n")
    os.chown(victim, 4242, 4242)
    victim.chmod(0o640)
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir(mode=0o750)
    (victim_dir / "inner").write_text("inner\n")
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chown(vol, *STUDENT)  # a user's folder: the container's root writes there as that user
    (vol / "planted").symlink_to(victim)  # a host user left this in the shared directory
    before = {p: snapshot(p) for p in (victim, victim_dir)}
    links = {"abs": str(victim), "rel": "../victim", "dir": str(victim_dir), "reldir": "../victim-dir", "root": "/"}
    script = "".join(f"ln -s {target} /data/{name};" for name, target in links.items())
    for name in ("abs", "rel", "planted"):
        script += (f"chown 0:0 /data/{name} 2>/dev/null && echo CHOWNED {name}; chmod 777 /data/{name} 2>/dev/null"
                   f" && echo CHMODDED {name}; echo pwned >> /data/{name} 2>/dev/null && echo WROTE {name};")
    for name in ("dir", "reldir"):
        script += (f"chown -R 0:0 /data/{name}/ 2>/dev/null && echo CHOWNED {name}; chmod 777 /data/{name}/ 2>/dev/null"
                   f" && echo CHMODDED {name}; touch /data/{name}/new 2>/dev/null && echo WROTE {name};")
    script += (f"chmod 777 /data/root{victim} 2>/dev/null && echo CHMODDED root; cat /data/root{victim} 2>/dev/null"
               " && echo READ root; echo done")
    proc = sh(bb, script, "-v", f"{vol}:/data")
    assert proc.stdout.splitlines()[-1] == "done", proc.stderr
    for p, snap in before.items():
        assert snapshot(p) == snap, f"{p} on the host was changed through a symlink in the volume: {proc.stdout}"
    assert {p.name for p in tmp_path.iterdir()} == {"victim", "victim-dir", "vol"}, "a host file was created"
    assert {p.name: os.readlink(p) for p in vol.iterdir()} == {**links, "planted": str(victim)}, \
        "the links were not made as the test expects"


def test_volume_target_through_a_symlink_is_refused(bb, tmp_path):
    """A mount target that resolves through a symlink to a host path must not mount (or mkdir) there."""
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    os.chown(first, *STUDENT)
    os.chown(second, *STUDENT)
    (second / "payload").write_text("payload\n")
    (first / "abs").symlink_to(victim_dir)  # followed on the host, /data/abs is the host's victim-dir
    (first / "rel").symlink_to("../victim-dir")  # and so is this one
    before = snapshot(tmp_path)
    for target in ("/data/abs", "/data/abs/sub", "/data/rel", "/data/rel/sub"):
        proc = sh(bb, "echo started", "-v", f"{first}:/data", "-v", f"{second}:{target}")
        assert proc.stdout == "", f"-v ...:{target} through a symlink to a host directory was mounted"
        assert proc.returncode == 1 and proc.stderr.startswith("sandbox-kernel: error: container setup failed: ")
        assert proc.stderr.rstrip().endswith("refusing to mount"), proc.stderr
    proc = sh(bb, "echo started", "-v", f"{second}:/linuxrc")  # a symlink to /bin/busybox in the image
    assert proc.returncode == 1 and "refusing to mount" in proc.stderr, "a volume was mounted on an image symlink"
    assert snapshot(tmp_path) == before, "the host changed under a symlinked mount target"


def test_volume_target_with_dotdot_stays_inside(bb, tmp_path):
    """``..`` in a target clamps at the container's /: a naive join(rootfs, target) would reach the host."""
    src = tmp_path / "src"
    src.mkdir()
    os.chown(src, *STUDENT)
    (src / "payload").write_text("payload\n")
    before = snapshot(tmp_path)
    escape = tmp_path / "escape"
    proc = sh(bb, f"cat {escape}/payload {escape}2/payload",
              "-v", f"{src}:{'/..' * 12}{escape}", "-v", f"{src}:/etc/../../../..{escape}2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "payload\n" * 2, "the volumes are not where `..` clamps them, inside the container"
    assert snapshot(tmp_path) == before, "a mount target was made on the host"


@pytest.mark.cgroups
def test_masked_proc_and_sys_paths_stay_masked(bb):
    masked = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
              "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/firmware",
              "/sys/devices/virtual/powercap")
    script = "".join(f"if [ -d {p} ]; then echo {p} dir $(ls -A {p} | wc -l); elif [ -e {p} ];"
                     f" then echo {p} file $(cat {p} 2>/dev/null | wc -c); else echo {p} absent; fi;" for p in masked)
    script += "echo /dev/core $(cat /dev/core 2>/dev/null | wc -c)"
    out = results(sh(bb, script))
    for path in masked:
        host = Path(path)
        if not host.exists():
            expected = "absent"
        else:
            expected = "dir 0" if host.is_dir() else "file 0"
        assert out[path] == expected, f"{path} is not masked ({out[path]}; the host has {host.exists()})"
    assert out["/dev/core"] == "0", "/dev/core -> /proc/kcore reads the kernel's memory"


_PROC_SYS = r"""
import errno, os
for rel in ("kernel/core_pattern", "kernel/modprobe", "kernel/shmmax", "kernel/panic", "vm/overcommit_memory",
            "net/ipv4/ip_forward", "fs/suid_dumpable", "kernel/randomize_va_space"):
    path = "/proc/sys/" + rel
    try:
        value = open(path).read()
    except FileNotFoundError:
        print(rel, "absent")
        continue
    try:
        with open(path, "w") as fh:  # the same value back: harmless even if it got through
            fh.write(value)
        print(rel, "ok")
    except OSError as exc:
        print(rel, errno.errorcode[exc.errno])
for label, fn in {"create": lambda: open("/proc/sys/kernel/escape", "w"), "chmod": lambda: os.chmod(
        "/proc/sys/kernel/core_pattern", 0o666), "mkdir": lambda: os.mkdir("/proc/sys/escape")}.items():
    try:
        fn()
        print(label, "ok")
    except OSError as exc:
        print(label, errno.errorcode[exc.errno])
"""


def test_proc_sys_is_read_only_and_the_host_values_stay(pyroot):
    files = ("kernel/core_pattern", "kernel/modprobe", "kernel/shmmax", "kernel/panic", "vm/overcommit_memory",
             "net/ipv4/ip_forward", "fs/suid_dumpable", "kernel/randomize_va_space")
    host = {rel: Path("/proc/sys", rel).read_text() for rel in files if Path("/proc/sys", rel).exists()}
    out = results(py(pyroot, _PROC_SYS))
    for rel in files:
        assert out[rel] == ("EROFS" if rel in host else "absent"), f"/proc/sys/{rel} was written ({out[rel]})"
    assert out["create"] in ("EROFS", "EACCES", "ENOENT"), f"a file was created in /proc/sys ({out['create']})"
    assert out["chmod"] == "EROFS", f"/proc/sys/kernel/core_pattern was chmodded ({out['chmod']})"
    assert out["mkdir"] in ("EROFS", "EACCES", "ENOENT"), f"a directory was made in /proc/sys ({out['mkdir']})"
    assert {rel: Path("/proc/sys", rel).read_text() for rel in host} == host, "a host sysctl changed"


def test_sys_attributes_are_read_only(bb):
    attrs = ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys/class/net/lo/mtu", "/sys/kernel/uevent_helper",
             "/sys/kernel/rcu_expedited", "/sys/module/printk/parameters/time")
    # Each write puts back the value it read (the [selected] word of a choice file): harmless if it got through.
    script = "".join(
        f"if [ -e {a} ]; then v=$(sed -n 's/.*\\[\\(.*\\)\\].*/\\1/p;t;p' {a}); echo \"$v\" > {a} 2>/dev/null"
        f" && echo {a} WRITTEN || echo {a} refused; else echo {a} absent; fi;" for a in attrs)
    script += "chmod 777 /sys/kernel 2>/dev/null && echo chmod WRITTEN || echo chmod refused;"
    script += "mkdir /sys/fs/escape 2>/dev/null && echo mkdir WRITTEN || echo mkdir refused"
    host = {a: Path(a).read_text() for a in attrs if os.path.exists(a)}
    out = results(sh(bb, script))
    for attr in attrs:
        assert out[attr] == ("refused" if attr in host else "absent"), f"{attr} in /sys was written ({out[attr]})"
    assert out["chmod"] == "refused" and out["mkdir"] == "refused", "/sys was changed"
    assert {a: Path(a).read_text() for a in host} == host, "a host /sys attribute changed"


_CHROOT = r"""
import os, sys
marker = sys.argv[1]
def where():
    st = os.stat("/")
    return (st.st_dev, st.st_ino, tuple(sorted(os.listdir("/"))))
start = where()
os.makedirs("/tmp/jail/inner", exist_ok=True)
# classic 1: chroot into a subdirectory without chdir, then climb with ..
os.chroot("/tmp/jail/inner")
for _ in range(64):
    os.chdir("..")
os.chroot(".")
print("classic-same-root", where() == start)
print("classic-marker", os.path.exists(marker))
# classic 2: keep a directory fd from before the chroot, fchdir to it, climb, chroot
fd = os.open("/", os.O_RDONLY)
os.chroot("/tmp/jail")
os.fchdir(fd)
for _ in range(64):
    os.chdir("..")
os.chroot(".")
print("fd-same-root", where() == start)
print("fd-marker", os.path.exists(marker))
print("proc-self-root", os.readlink("/proc/self/root"))
"""


def test_chroot_breakout_stays_in_the_container(pyroot, tmp_path):
    marker = tmp_path / "chroot-marker"
    marker.write_text("host\n")
    out = results(run(pyroot, PYTHON, "python3", "-c", _CHROOT, str(marker)))
    assert out == {"classic-same-root": "True", "classic-marker": "False", "fd-same-root": "True",
                   "fd-marker": "False", "proc-self-root": "/"}, f"chroot + chdir .. left the container: {out}"


@pytest.mark.cgroups
def test_no_device_outside_the_allowlist_can_be_made_or_opened_even_by_host_root(bb, tmp_path):
    """Why cgroup v2 needs no device program here (runc attaches a BPF_PROG_TYPE_CGROUP_DEVICE one; v1 has
    the devices controller, set too): a container's command cannot make a device node (no CAP_MKNOD, also
    as host root with --userns=host, and seccomp), a layer that holds one is refused, and every file system
    it can write is nodev, so a node put in a volume from outside cannot be opened. Its /dev is the
    allowlisted host nodes, bound in one by one. Run on this host and on a cgroup v2 kernel (the VM)."""
    (tmp_path / "vol").mkdir()
    os.mknod(tmp_path / "vol" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # (opens anywhere without nodev)
    for opts in ((), ("--userns=host",)):
        proc = sh(bb, "mknod /tmp/mem c 1 1 2>/dev/null; echo made $?; mknod /dev/shm/sda b 8 0 2>/dev/null;"
                      " echo made-in-shm $?; (exec 3< /vol/null) 2>/dev/null; echo opened $?",
                  "-v", f"{tmp_path / 'vol'}:/vol:ro", *opts)
        assert results(proc) == {"made": "1", "made-in-shm": "1", "opened": "1"}, (opts, proc.stdout)


@pytest.mark.cgroups
def test_dev_holds_exactly_the_allowlisted_devices(bb):
    proc = sh(bb, "find /dev | sort | while read f; do stat -c '%n %F %t:%T' $f; done;"
                  "readlink /dev/ptmx; readlink /dev/fd")
    lines = proc.stdout.splitlines()
    entries = dict(line.split(" ", 1) for line in lines[:-2])
    char = "character special file"
    assert entries == {
        "/dev": "directory 0:0", "/dev/core": "symbolic link 0:0", "/dev/fd": "symbolic link 0:0",
        "/dev/full": f"{char} 1:7", "/dev/mqueue": "directory 0:0", "/dev/null": f"{char} 1:3",
        "/dev/ptmx": "symbolic link 0:0", "/dev/pts": "directory 0:0", "/dev/pts/ptmx": f"{char} 5:2",
        "/dev/random": f"{char} 1:8", "/dev/shm": "directory 0:0", "/dev/stderr": "symbolic link 0:0",
        "/dev/stdin": "symbolic link 0:0", "/dev/stdout": "symbolic link 0:0", "/dev/tty": f"{char} 5:0",
        "/dev/urandom": f"{char} 1:9", "/dev/zero": f"{char} 1:5",
    }, f"/dev holds more (or other) than the allowlist: {proc.stdout}"
    assert lines[-2:] == ["pts/ptmx", "/proc/self/fd"]


def _host_can_open(where: Path, major: int, minor: int, kind: int) -> bool:
    """Is there such a device on this host that root can open read-only? (Some VMs refuse even root.)"""
    if not Path(f"/sys/dev/{'block' if kind == stat.S_IFBLK else 'char'}/{major}:{minor}").exists():
        return False
    probe = where / f"probe-{major}-{minor}"
    os.mknod(probe, 0o600 | kind, os.makedev(major, minor))
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.mark.cgroups
def test_a_device_node_in_a_volume_cannot_be_opened(bb, tmp_path):
    """A device node in a volume opens nothing: volumes are nodev, and the device cgroup (v1) denies the rest."""
    devs = tmp_path / "devs"
    devs.mkdir()
    os.chown(devs, *STUDENT)
    root_dev = os.stat("/").st_dev
    candidates = {  # name: (kind, major, minor); opening any of them read-only changes nothing
        "disk": (stat.S_IFBLK, os.major(root_dev), os.minor(root_dev)),  # the host's root file system
        "loop0": (stat.S_IFBLK, 7, 0),
        "fuse": (stat.S_IFCHR, 10, 229),
    }
    # (a host without these probes still checks /dev/null in a volume below, which needs none)
    usable = [name for name, (kind, major, minor) in candidates.items() if _host_can_open(tmp_path, major, minor, kind)]
    for name in usable:
        kind, major, minor = candidates[name]
        os.mknod(devs / name, 0o600 | kind, os.makedev(major, minor))
    os.mknod(devs / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # allowlisted, yet in a nodev volume
    script = ("for d in /devs/* /dev/null; do (exec 3< $d) 2>/dev/null && echo ${d##*/}${d%/*} opened"
              " || echo ${d##*/}${d%/*} refused; done")
    out = results(sh(bb, script, "-v", f"{devs}:/devs"))
    assert out["null/dev"] == "opened", "the control: the container's own /dev/null opens"
    assert out["null/devs"] == "refused", "a volume is nodev: even an allowed device node in it does not open"
    opened = [f"{name} {candidates[name][1]}:{candidates[name][2]}" for name in usable
              if out[f"{name}/devs"] != "refused"]
    assert opened == [], f"host devices opened through nodes in a volume (no device cgroup): {opened}"


def test_host_files_passed_as_stdio_cannot_be_changed(bb, tmp_path):
    """stdio that the caller hands over (a file, or the host's /dev/null) is a host fd inside the container."""
    victim_in = tmp_path / "stdin-file"
    victim_in.write_text("input\n")
    victim_in.chmod(0o600)
    victim_out = tmp_path / "stdout-file"
    victim_out.write_text("")
    victim_out.chmod(0o600)
    before = snapshot(tmp_path)
    script = ("chmod 777 /proc/self/fd/0 2>/dev/null && echo chmod-stdin; chown 4321:4321 /proc/self/fd/0 2>/dev/null"
              " && echo chown-stdin; echo pwned 2>/dev/null > /proc/self/fd/0 && echo wrote-stdin;"
              "chmod 777 /proc/self/fd/1 2>/dev/null && echo chmod-stdout; echo done")
    with victim_in.open("rb") as stdin, victim_out.open("wb") as stdout:
        _STORES_USED.add(bb)
        proc = subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(bb), "run", "--rm", BUSYBOX,
                               "sh", "-c", script], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=120)
    said = victim_out.read_text()
    assert said.splitlines()[-1:] == ["done"], proc.stderr
    after = snapshot(tmp_path)
    after["stdout-file"] = (*after["stdout-file"][:4], *before["stdout-file"][4:])  # its content is the output
    assert after == before, f"host files behind the container's stdio were changed: {said.split()}"


def test_rm_does_not_follow_symlinks_left_in_the_rootfs(bb, tmp_path):
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_text("keep\n")
    before = snapshot(tmp_path)
    script = (f"ln -s {victim_dir} /evil; mkdir -p /deep/er; ln -s {victim_dir} /deep/er/evil;"
              f"ln -s {victim_dir}/keep /tmp/keep; ln -s /proc/1/root /tmp/pid1root; echo made")
    proc = sh(bb, script)
    assert proc.stdout == "made\n", proc.stderr
    assert snapshot(tmp_path) == before, "removing the container followed a symlink it left onto the host"
