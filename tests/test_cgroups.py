"""Cgroups: discovery, v2 against a fake kernel, v1 against a fake and the real one."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from leftovers import cpu_throttled, swap_total, wait_for
from localusers import Delegatee, local_user

from sandbox_kernel.runtime.cgroups import (
    PARENT,
    CgroupFS,
    CgroupV1,
    CgroupV2,
    Hierarchy,
    discover,
    open_cgroup,
    remove_empty_parents,
)
from sandbox_kernel.runtime.errors import CgroupError
from sandbox_kernel.runtime.spec import UNLIMITED_SWAP, Limits, UsageError, parse_size

HYBRID = """\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
37 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
"""
V1_COMBINED = """\
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""
V2_ONLY = """\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""


def _mountinfo(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return str(path)


def test_discover_hybrid_v1_and_v2(tmp_path):
    hybrid = discover(_mountinfo(tmp_path, HYBRID))
    assert hybrid.version == "hybrid" and hybrid.driver == "v1"
    assert hybrid.v1["memory"] == Path("/sys/fs/cgroup/memory")
    assert hybrid.v2 == Path("/sys/fs/cgroup/unified")
    combined = discover(_mountinfo(tmp_path, V1_COMBINED))
    assert combined.version == "v1" and combined.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    v2 = discover(_mountinfo(tmp_path, V2_ONLY))
    assert v2.version == "v2" and v2.driver == "v2" and v2.v2 == Path("/sys/fs/cgroup")
    with pytest.raises(CgroupError, match="no cgroup file system"):
        discover(_mountinfo(tmp_path, "24 1 254:0 / / rw - ext4 /dev/vda rw\n"))


def _cgroup_tree(top: Path, owned: dict[str, int]) -> None:
    """Directories under ``top`` as a cgroup2 mount has them, each with the delegation files, owned as ``owned``
    says (relative path -> uid; the rest root's)."""
    for relative, uid in owned.items():
        path = top / relative
        path.mkdir(parents=True, exist_ok=True)
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            if name:
                (path / name).touch()
            os.chown(path / name, uid, uid)


@pytest.mark.root
def test_a_user_finds_the_subtree_delegated_to_it(tmp_path):
    """systemd's layout: user@1234.service and below are the user's, user-1234.slice is not; the containers'
    cgroups go under the highest of the user's own (not under its own leaf, where its processes are)."""
    top, me = tmp_path / "cgroup", 1234
    service = "user.slice/user-1234.slice/user@1234.service"
    _cgroup_tree(top, {"user.slice/user-1234.slice": 0, service: me, f"{service}/app.slice": me,
                       f"{service}/app.slice/jupyter.scope": me})
    mountinfo = _mountinfo(tmp_path, V2_ONLY.replace("/sys/fs/cgroup", str(top)))
    own = tmp_path / "self-cgroup"
    own.write_text(f"0::/{service}/app.slice/jupyter.scope\n")
    found = discover(mountinfo, str(own), uid=me)
    assert (found.v2_base, found.refusal) == (top / service, None)
    fake = FakeV2Kernel(top)
    cg = open_cgroup("c1", found, fake)
    assert cg.path == top / service / "sandbox-kernel" / "c1"
    # a delegation file left to root: that cgroup is not delegated
    os.chown(top / service / "cgroup.threads", 0, 0)
    assert discover(mountinfo, str(own), uid=me).v2_base == top / service / "app.slice"
    # the caller in the delegated cgroup itself: it cannot hold children with controllers too
    own.write_text(f"0::/{service}\n")
    os.chown(top / service / "cgroup.threads", me, me)
    assert "holds your processes itself" in discover(mountinfo, str(own), uid=me).refusal
    # nothing of the user's: the sentence on how to get delegation, and nothing is made
    own.write_text("0::/user.slice/user-1234.slice\n")
    refused = discover(mountinfo, str(own), uid=me)
    assert refused.v2_base is None and "Delegate=yes" in refused.refusal
    cg = open_cgroup("c2", refused, fake)
    before = list(fake.writes)
    cg.create()  # (a run without limits runs: in no cgroup of ours)
    cg.apply(Limits())
    cg.add(1234)
    assert not cg.exists() and cg.paths() == [] and fake.writes == before
    with pytest.raises(CgroupError, match="need a cgroup v2 subtree delegated to you"):
        cg.apply(Limits(memory=64 << 20))
    with pytest.raises(CgroupError, match="need a cgroup v2 subtree delegated to you"):
        cg.freeze()
    cg.remove()  # nothing to remove: no error
    own.write_text("12:pids:/\n")
    assert "in no cgroup v2" in discover(mountinfo, str(own), uid=me).refusal


def test_this_host_is_discovered():
    hierarchy = discover()
    assert hierarchy.version in ("v1", "v2", "hybrid")


@pytest.mark.parametrize(
    ("text", "value"), [("256m", 256 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("1.5g", 3 << 29), ("4096", 4096),
                        ("64MiB", 64 << 20), ("64mb", 64 << 20)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1m", "12x", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)


def test_limits_validate():
    with pytest.raises(UsageError, match="minimum"):
        Limits(memory=1024)
    with pytest.raises(UsageError, match="memory-swap"):
        Limits(memory=64 << 20, memory_swap=32 << 20)
    with pytest.raises(UsageError, match="needs --memory"):
        Limits().with_options(memory_swap="-1")
    assert Limits(memory=64 << 20).with_options(memory_swap="-1").swap_beyond_memory() is None, "-1: no limit"
    assert Limits(memory=64 << 20).swap_beyond_memory() == 0, "no --memory-swap: no swap, as docker"
    assert Limits(cpus=0.5).cpu_quota_us() == 50_000
    assert Limits().pids == 2048


# -- a fake cgroup2 kernel ------------------------------------------------------------------


class FakeV2Kernel(CgroupFS):
    """Enough of cgroup2's behaviour to test CgroupV2 where the host has only v1.

    Directories get their interface files on mkdir, controllers must be enabled
    in the parent's subtree_control before they show up, rmdir of a populated
    cgroup is EBUSY, cgroup.kill and cgroup.freeze act on the fake processes.
    """

    ROOT_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"

    def __init__(self, root: Path, with_kill: bool = True):
        self.root = root
        self.with_kill = with_kill
        self.files: dict[Path, str] = {}
        self.dirs: set[Path] = {root}
        self.writes: list[tuple[str, str]] = []
        self.files[root / "cgroup.controllers"] = self.ROOT_CONTROLLERS
        self.files[root / "cgroup.subtree_control"] = ""
        self.files[root / "cgroup.procs"] = "1\n"

    def mkdir(self, path: Path) -> None:
        if path in self.dirs:
            return
        if path.parent not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        self.dirs.add(path)
        enabled = self.files[path.parent / "cgroup.subtree_control"].split()
        files = {
            "cgroup.controllers": " ".join(enabled),
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.freeze": "0",
        }
        if self.with_kill:
            files["cgroup.kill"] = ""
        if "memory" in enabled:
            files.update({"memory.max": "max", "memory.swap.max": "max", "memory.current": "0", "memory.peak": "0",
                          "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"})
        if "cpu" in enabled:
            files.update({"cpu.max": "max 100000", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"})
        if "pids" in enabled:
            files.update({"pids.max": "max", "pids.current": "0", "pids.events": "max 0\n"})
        for name, value in files.items():
            self.files[path / name] = value

    def rmdir(self, path: Path) -> None:
        if path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if self.files.get(path / "cgroup.procs", "").split() or any(d.parent == path for d in self.dirs):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        self.dirs.remove(path)
        for name in [f for f in self.files if f.parent == path]:
            del self.files[name]

    def exists(self, path: Path) -> bool:
        return path in self.dirs or path in self.files

    def read(self, path: Path) -> str:
        if path.name == "cgroup.controllers" and path.parent != self.root and path.parent in self.dirs:
            return self.files[path.parent.parent / "cgroup.subtree_control"]  # what the parent enabled
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return self.files[path]

    def write(self, path: Path, value: str) -> None:
        if path not in self.files:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        self.writes.append((str(path.relative_to(self.root)), value))
        if path.name == "cgroup.subtree_control":
            available = self.read(path.parent / "cgroup.controllers").split()
            current = self.files[path].split()
            for word in value.split():
                if word[1:] not in available:
                    raise OSError(errno.EINVAL, "Invalid argument", str(path))
                if word[0] == "+" and word[1:] not in current:
                    current.append(word[1:])
            self.files[path] = " ".join(current)
        elif path.name == "cgroup.kill":
            assert path.parent != self.root
            self.files[path.parent / "cgroup.procs"] = ""
        elif path.name == "cgroup.freeze":
            self.files[path] = value
            self.files[path.parent / "cgroup.events"] = f"populated 0\nfrozen {value}\n"
        elif path.name == "cgroup.procs":
            self.files[path] = self.files[path] + value + "\n"
        else:
            self.files[path] = value


def _v2(tmp_path: Path, **kw) -> tuple[CgroupV2, FakeV2Kernel]:
    root = tmp_path / "cgroup"
    fake = FakeV2Kernel(root, **kw)
    cg = open_cgroup("c1", Hierarchy("v2", {}, root), fake)
    assert isinstance(cg, CgroupV2)
    return cg, fake


def test_v2_create_enables_controllers_top_down(tmp_path):
    cg, fake = _v2(tmp_path)
    cg.create()
    assert fake.writes[:2] == [("cgroup.subtree_control", "+memory +cpu +pids"),
                               (f"{PARENT}/cgroup.subtree_control", "+memory +cpu +pids")]
    assert fake.exists(cg.path / "memory.max") and fake.exists(cg.path / "pids.max")


def test_v2_limits_and_update(tmp_path):
    cg, fake = _v2(tmp_path)
    cg.create()
    cg.apply(Limits(memory=256 << 20, cpus=0.5, pids=64))
    assert fake.read(cg.path / "memory.max") == str(256 << 20)
    assert fake.read(cg.path / "memory.swap.max") == "0", "no swap beyond --memory unless --memory-swap says so"
    assert fake.read(cg.path / "cpu.max") == "50000 100000"
    assert fake.read(cg.path / "pids.max") == "64"
    cg.apply(Limits(memory=512 << 20, memory_swap=1 << 30, cpus=None, pids=None))
    assert fake.read(cg.path / "memory.swap.max") == str((1 << 30) - (512 << 20))
    assert fake.read(cg.path / "cpu.max") == "max 100000"
    assert fake.read(cg.path / "pids.max") == "max"
    cg.apply(Limits(memory=512 << 20).with_options(memory_swap="-1"))  # docker's -1: swap without limit
    assert (fake.read(cg.path / "memory.max"), fake.read(cg.path / "memory.swap.max")) == (str(512 << 20), "max")


def test_v2_stats_and_oom(tmp_path):
    cg, fake = _v2(tmp_path)
    cg.create()
    fake.files[cg.path / "memory.current"] = "1048576\n"
    fake.files[cg.path / "memory.peak"] = "67108864\n"
    fake.files[cg.path / "cpu.stat"] = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
    fake.files[cg.path / "pids.current"] = "3\n"
    fake.files[cg.path / "pids.events"] = "max 7\n"
    fake.files[cg.path / "memory.events"] = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"
    stats = cg.stats()
    assert (stats.memory_current, stats.memory_peak, stats.cpu_ns, stats.pids) == (1 << 20, 64 << 20, 1_500_000, 3)
    assert stats.oom_kills == 1 and stats.pids_limit_hits == 7
    assert cg.oom_kills() == 1
    # v2's memory.peak resets only for the open file that wrote to it: no reset, and nothing written
    before = dict(fake.files)
    assert cg.reset_peak() is False and fake.files == before


def test_v2_kill_and_remove_with_cgroup_kill(tmp_path):
    cg, fake = _v2(tmp_path)
    cg.create()
    fake.files[cg.path / "cgroup.procs"] = "4242\n"
    cg.remove()
    assert ("sandbox-kernel/c1/cgroup.kill", "1") in fake.writes
    assert not cg.exists()


def test_v2_kill_without_cgroup_kill_freezes_then_kills(tmp_path):
    cg, fake = _v2(tmp_path, with_kill=False)
    cg.create()
    victim = subprocess.Popen(["sleep", "60"])
    try:
        fake.files[cg.path / "cgroup.procs"] = f"{victim.pid}\n"

        def reap():
            victim.wait(timeout=30)
            fake.files[cg.path / "cgroup.procs"] = ""

        original_read = fake.read

        def read(path):
            if path.name == "cgroup.procs" and victim.poll() is not None:
                reap()
            return original_read(path)

        fake.read = read
        cg.kill()
        assert victim.wait(timeout=30) == -9
        freezes = [v for p, v in fake.writes if p.endswith("cgroup.freeze")]
        assert freezes == ["1", "0"]
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_v2_remove_is_idempotent_and_reports_failures(tmp_path):
    cg, fake = _v2(tmp_path)
    cg.remove()  # never created: nothing to do
    cg.create()
    fake.files[cg.path / "cgroup.procs"] = "99999999\n"
    fake.files.pop(cg.path / "cgroup.kill")
    fake.files[cg.path / "cgroup.events"] = "populated 1\nfrozen 0\n"
    with pytest.raises(CgroupError):
        cg.remove(timeout=0.05)


def test_v2_device_rules_are_left_to_nodev_and_the_shared_parent_goes_last(tmp_path):
    root = tmp_path / "cgroup"
    fake = FakeV2Kernel(root)
    hierarchy = Hierarchy("v2", {}, root)
    first, second = open_cgroup("c1", hierarchy, fake), open_cgroup("c2", hierarchy, fake)
    for cg in (first, second):
        cg.create()
        cg.restrict_devices(["c 1:3 rwm"])  # v2 has no devices files: nothing is written
    assert not [w for w in fake.writes if "devices" in w[0]]
    first.remove()
    remove_empty_parents(hierarchy, fake)
    assert fake.exists(root / "sandbox-kernel"), "the other container still needs the parent"
    second.remove()
    remove_empty_parents(hierarchy, fake)
    assert not fake.exists(root / "sandbox-kernel")


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(CgroupError):
        open_cgroup("../escape", Hierarchy("v2", {}, tmp_path))


class FakeV1Memory(CgroupFS):
    """v1 refuses memory.limit_in_bytes above memory.memsw.limit_in_bytes (EINVAL)."""

    def __init__(self):
        self.values = {"memory.limit_in_bytes": "-1", "memory.memsw.limit_in_bytes": "-1"}
        self.order: list[str] = []

    def exists(self, path: Path) -> bool:
        return path.name in self.values

    def write(self, path: Path, value: str) -> None:
        new = dict(self.values, **{path.name: value})
        norm = {k: (1 << 62) if v == "-1" else int(v) for k, v in new.items()}
        if norm["memory.limit_in_bytes"] > norm["memory.memsw.limit_in_bytes"]:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.values = new
        self.order.append(path.name)


def test_v1_memory_and_swap_are_set_in_a_valid_order():
    fake = FakeV1Memory()
    cg = CgroupV1("c", Hierarchy("v1", {"memory": Path("/fake")}, None), fake)
    cg.apply(Limits(memory=32 << 20, pids=None))  # lowering: memory first
    assert fake.values == {"memory.limit_in_bytes": str(32 << 20), "memory.memsw.limit_in_bytes": str(32 << 20)}
    cg.apply(Limits(memory=256 << 20, pids=None))  # raising: memory first fails, then memsw first
    assert fake.values == {"memory.limit_in_bytes": str(256 << 20), "memory.memsw.limit_in_bytes": str(256 << 20)}
    assert fake.order[-2:] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    cg.apply(Limits(memory=None, pids=None))  # unlimited again
    assert fake.values == {"memory.limit_in_bytes": "-1", "memory.memsw.limit_in_bytes": "-1"}
    cg.apply(Limits(memory=64 << 20, memory_swap=UNLIMITED_SWAP, pids=None))  # --memory-swap -1
    assert fake.values == {"memory.limit_in_bytes": str(64 << 20), "memory.memsw.limit_in_bytes": "-1"}
    cg.apply(Limits(memory=64 << 20, memory_swap=96 << 20, pids=None))
    assert fake.values == {"memory.limit_in_bytes": str(64 << 20), "memory.memsw.limit_in_bytes": str(96 << 20)}


# -- the real cgroups of this host (root) -------------------------------------------------------------


_HOG = textwrap.dedent("""
    import sys
    sys.stdin.readline()                       # wait until we are in the cgroup
    mode = sys.argv[1]
    if mode == "memory":
        chunks = [bytearray(1 << 20) for _ in range(200)]   # 200 MiB, touched
        print("survived", flush=True)
    elif mode == "fork":
        import os, time
        made = 0
        for _ in range(40):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            made += 1
        print(made, flush=True)
        time.sleep(30)
    elif mode == "spin":
        while True:
            pass
    elif mode == "64m":
        b = b"x" * (64 << 20)
""")


def _spawn_in(cg, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOG, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    cg.add(proc.pid)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc


@pytest.fixture
def real_cgroup():
    cg = open_cgroup(f"test-{os.getpid()}-{time.monotonic_ns()}")
    cg.create()
    try:
        yield cg
    finally:
        cg.remove()
        assert not cg.exists()


@pytest.mark.cgroups
@pytest.mark.root
def test_real_memory_limit_oom_kill_is_detected(real_cgroup):
    real_cgroup.apply(Limits(memory=64 << 20, pids=100))
    proc = _spawn_in(real_cgroup, "memory")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -9 and "survived" not in out
    stats = real_cgroup.stats()
    assert stats.oom_kills >= 1
    assert stats.memory_peak is not None and stats.memory_peak >= 60 << 20


@pytest.mark.cgroups
@pytest.mark.root
def test_real_memory_and_swap(real_cgroup):
    """200 MiB touched under --memory 64m: past --memory-swap 128m the kernel kills; with -1 (no swap limit)
    the rest goes to swap."""
    if swap_total() < 512 << 20:
        pytest.skip("this host has no swap to go into (the cgroup v2 VM of scripts/test-vm.sh has)")
    real_cgroup.apply(Limits(memory=64 << 20, memory_swap=128 << 20))
    proc = _spawn_in(real_cgroup, "memory")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -9 and "survived" not in out and real_cgroup.stats().oom_kills >= 1
    real_cgroup.apply(Limits(memory=64 << 20, memory_swap=UNLIMITED_SWAP))
    proc = _spawn_in(real_cgroup, "memory")
    out, _ = proc.communicate(timeout=120)
    assert (proc.returncode, out) == (0, "survived\n")


@pytest.mark.cgroups
@pytest.mark.root
def test_real_pids_limit_stops_a_fork_loop(real_cgroup):
    real_cgroup.apply(Limits(pids=10))
    proc = _spawn_in(real_cgroup, "fork")
    made = int(proc.stdout.readline())
    assert made == 9, "10 tasks: the parent and 9 children"
    assert real_cgroup.stats().pids == 10
    assert real_cgroup.stats().pids_limit_hits >= 1
    real_cgroup.kill()
    assert proc.wait(timeout=30) == -9
    assert real_cgroup.procs() == []


@pytest.mark.cgroups
@pytest.mark.root
def test_real_stats_and_freeze(real_cgroup):
    """--cpus 0.5 as the kernel counts it: a spinning task is throttled period after period, and the CPU time
    it got is at most half of the periods it ran in (cpu.stat and the usage counter, no clock read here)."""
    real_cgroup.apply(Limits(cpus=0.5))
    proc = _spawn_in(real_cgroup, "spin")
    try:
        wait_for(lambda: cpu_throttled(real_cgroup.name)[1] >= 20, what="twenty throttled periods")
        used = real_cgroup.stats().cpu_ns
        periods, throttled = cpu_throttled(real_cgroup.name)
        assert used is not None and used <= (periods + 2) * 100_000_000 * 0.5 * 1.1, \
            f"{used / 1e9:.2f} s of CPU in {periods} periods of 100 ms at --cpus 0.5"
        assert throttled >= periods // 2, "a task that always runs is throttled in most periods"
        real_cgroup.freeze()
        frozen_at = real_cgroup.stats().cpu_ns
        time.sleep(0.3)  # a window for a frozen task to run in if it could (nothing timed)
        assert real_cgroup.stats().cpu_ns == frozen_at
        real_cgroup.thaw()
        assert real_cgroup.procs() == [proc.pid]
    finally:
        real_cgroup.kill()
        proc.wait(timeout=30)


@pytest.mark.cgroups
def test_real_memory_peak_resets_on_v1(real_cgroup):
    if not isinstance(real_cgroup, CgroupV1):
        pytest.skip("the memory peak can be reset on cgroup v1 only")
    proc = _spawn_in(real_cgroup, "64m")
    try:
        proc.wait(timeout=30)
        assert (real_cgroup.stats().memory_peak or 0) >= 64 << 20
        assert real_cgroup.reset_peak() is True
        assert (real_cgroup.stats().memory_peak or 0) < 32 << 20
    finally:
        real_cgroup.kill()


# -- a user who is not root, in a subtree delegated to it (cgroup v1 here; v2 in the VM of scripts/test-vm.sh) --

_DELEGATEE = textwrap.dedent("""
    import json, os, subprocess, sys
    sys.stdin.readline()                       # wait until root has put us in our cgroup
    from sandbox_kernel.runtime.cgroups import discover, open_cgroup
    from sandbox_kernel.runtime.errors import CgroupError
    from sandbox_kernel.runtime.spec import Limits
    hog = sys.argv[1]
    found = discover()
    out = {"uid": os.getuid(), "parents": [str(p) for p in found.parents()], "refusal": found.refusal}
    if found.refusal:
        cg = open_cgroup("mine")
        cg.create(); cg.apply(Limits()); cg.add(os.getpid())  # a run without limits runs (in no cgroup)
        try:
            cg.apply(Limits(memory=64 << 20))
        except CgroupError as exc:
            out["create"] = str(exc)
        print(json.dumps(out)); sys.exit()

    def spawn(cg, mode):
        proc = subprocess.Popen([sys.executable, "-c", hog, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        cg.add(proc.pid)
        proc.stdin.write("go\\n"); proc.stdin.flush()
        return proc

    v2 = found.driver == "v2"
    cg = open_cgroup("mine")
    cg.create()
    out["paths"] = [str(p) for p in cg.paths()]
    cg.apply(Limits(memory=64 << 20, pids=10, cpus=0.5))
    proc = spawn(cg, "memory")
    text, _ = proc.communicate(timeout=60)
    out["oom"] = [proc.returncode, "survived" in text, cg.stats().oom_kills]
    proc = spawn(cg, "fork")
    out["forked"] = int(proc.stdout.readline())
    stats = cg.stats()
    out["pids"] = [stats.pids, stats.pids_limit_hits]
    cg.freeze(); cg.thaw()
    cg.apply(Limits(memory=128 << 20, pids=20))   # a live update
    memory = cg.path / "memory.max" if v2 else cg._dir("memory") / "memory.limit_in_bytes"
    out["memory limit"] = int(open(memory).read())
    base = {c: (found.v2 if v2 else found.v1[c]) / found.base for c in ("memory", "pids")}
    for name in (base["memory"] / ("memory.max" if v2 else "memory.limit_in_bytes"), base["pids"] / "pids.max"):
        try:                                     # the delegated cgroup's own limits stay the admin's
            with open(name, "w") as fh:
                fh.write("max" if name.name != "memory.limit_in_bytes" else "-1")
            out[name.name + " of the base"] = "written"
        except PermissionError:
            out[name.name + " of the base"] = "refused"
    cg.kill()
    out["killed"] = proc.wait(timeout=30)
    cg.remove()
    out["left"] = sorted(x for p in found.parents() if p.exists() for x in os.listdir(p) if (p / x).is_dir())
    print(json.dumps(out))
""")


def run_delegatee(delegatee: Delegatee, leaf: Path | None) -> dict:
    """_DELEGATEE as the user (in ``leaf`` if given); what it printed."""
    import json

    proc = delegatee.user.popen(_DELEGATEE, _HOG)
    if leaf is not None:
        (leaf / "cgroup.procs").write_text(str(proc.pid))
    out, err = proc.communicate("go\n", timeout=180)
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.fixture
def delegatee():
    with local_user() as user:
        delegatee = Delegatee(discover(), user)
        try:
            yield delegatee
        finally:
            delegatee.clean()


@pytest.mark.cgroups
@pytest.mark.root
def test_a_user_without_root_limits_its_processes_in_its_delegated_subtree(delegatee):
    """The user makes its cgroups under the subtree given to it, moves its own processes there, sets memory,
    pids and CPU limits, reads OOM kills and the pids-limit hits, freezes, updates live, kills and removes;
    the subtree's own limits stay the admin's. v1: `system delegate`; v2 (the VM): an admin-made subtree."""
    leaf = delegatee.delegate()
    out = run_delegatee(delegatee, leaf)
    uid = delegatee.user.uid
    assert (out["uid"], out["refusal"]) == (uid, None)
    assert out["parents"] == [str(top / "sandbox-kernel") for top in delegatee.subtrees()]
    assert out["paths"] and all(p.endswith("/sandbox-kernel/mine") and "devices" not in p for p in out["paths"])
    returncode, survived, oom_kills = out["oom"]
    assert (returncode, survived) == (-9, False) and oom_kills >= 1
    assert out["forked"] == 9 and out["pids"][0] == 10 and out["pids"][1] >= 1
    assert out["memory limit"] == 128 << 20
    assert [v for k, v in out.items() if k.endswith(" of the base")] == ["refused", "refused"]
    assert out["killed"] == -9 and out["left"] == []


@pytest.mark.cgroups
@pytest.mark.root
def test_a_user_with_nothing_delegated_is_told_how_to_get_it(delegatee):
    out = run_delegatee(delegatee, None)  # nothing given (v2: left in root's cgroup)
    assert out["parents"] == [] and out["refusal"]
    assert ("Delegate=yes" if delegatee.v2_top else "sudo sandbox-kernel system delegate $USER") in out["refusal"]
    assert out["create"] == out["refusal"], "a limit is refused with that sentence"


@pytest.mark.root
def test_delegate_is_idempotent_and_remove_refuses_a_used_subtree(delegatee):
    from sandbox_kernel.runtime.delegation import delegate

    if delegatee.v2_top is not None:
        with pytest.raises(UsageError, match="systemd"):
            delegate(delegatee.name)
        return
    made = delegate(delegatee.name)
    assert made == delegatee.subtrees() and delegate(delegatee.name) == [], "a second time changes nothing"
    uid = delegatee.user.uid
    for top in made:
        assert all(os.stat(top / n).st_uid == uid for n in ("", "cgroup.procs", "tasks"))
        assert os.stat(top / "pids.max" if (top / "pids.max").exists() else top / "notify_on_release").st_uid == 0
    held = subprocess.Popen(["sleep", "60"])
    try:
        (made[-1] / "cgroup.procs").write_text(str(held.pid))
        with pytest.raises(UsageError, match="still holds processes"):
            delegate(delegatee.name, remove=True)
        assert all(top.exists() for top in made), "a refusal takes nothing away"
    finally:
        held.kill()
        held.wait()
    wait_for(lambda: not (made[-1] / "cgroup.procs").read_text().split(), what="the subtree empty")
    assert delegate(delegatee.name, remove=True) == made
    assert not any(top.exists() for top in made)
    with pytest.raises(UsageError, match="no such user"):
        delegate("sk-no-such-user")
