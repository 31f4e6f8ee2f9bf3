"""Disk limits: a container's writable layer on a file system of its own size (runtime/disk.py).

Real containers of the busybox image, each test in a store of its own. A filler
gets ENOSPC at its limit and the store's file system grows by no more; a
container that asks for more room than the host has is refused before anything
is made; the disk survives a lost mount (a reboot) and goes with the container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import busybox_copy
from leftovers import assert_nothing_left, cgroups

from sandbox_kernel.runtime import Containers, ContainerSpec, Limits, UsageError, disk, fsutil, syscalls
from sandbox_kernel.runtime.disk import DiskError

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]
MIB = 1 << 20
BUSYBOX = "localhost/busybox"


def loops_under(root: Path) -> list[str]:
    """Loop devices whose backing file is in ``root``."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(str(root)):
                found.append(backing.parent.parent.name)
        except OSError:
            pass
    return found


@pytest.fixture
def own(base_store, tmp_path):
    """A store of the test's own with busybox; at the end no container, mount or loop device of it is left."""
    store = busybox_copy(base_store, tmp_path / "own")
    before = cgroups()
    containers = Containers(store, warm_slots=False)
    yield store, containers
    for info in containers.list(all=True):
        containers.remove(info.id, force=True)
    assert_nothing_left(store.root, before)
    assert loops_under(store.root) == [], "a loop device of this store is left"


def run(containers: Containers, script: str, **spec) -> tuple[int, str]:
    out: list[bytes] = []
    result = containers.run(ContainerSpec(image=BUSYBOX, command=("sh", "-c", script), **spec),
                            stdin=None, stdout=out.append, stderr=out.append)
    return result.exit_code, b"".join(out).decode()


def test_a_disk_filler_gets_enospc_at_its_limit_and_nothing_else_fills(own):
    store, containers = own
    free_before = os.statvfs(store.root).f_bavail * os.statvfs(store.root).f_frsize
    _code, out = run(containers, "dd if=/dev/zero of=/fill bs=1M count=1000 2>&1; echo dd=$?; df -k / | tail -1",
                     name="filler", limits=Limits(disk=128 * MIB))
    assert "No space left on device" in out and "dd=1" in out, out
    size_kib = int(out.split()[-5])  # df: its / is the disk, a little less than the limit (ext4's own)
    assert 100 * 1024 < size_kib <= 128 * 1024, out
    usage = containers.disk_usage("filler")
    assert usage is not None and usage.full and usage.size <= 128 * MIB
    grew = free_before - os.statvfs(store.root).f_bavail * os.statvfs(store.root).f_frsize
    assert grew < 140 * MIB, f"the store's file system lost {grew >> 20} MiB for a 128 MiB disk"
    assert [c.path for c in containers.diff("filler")] == ["/fill"]
    assert json.loads(json.dumps(containers.get("filler").spec.limits.disk)) == 128 * MIB

    # its disk is unmounted (as a reboot leaves it): the next start mounts it again, the file is there
    cdir = store.root / "containers" / containers.get("filler").id
    disk.detach(cdir)
    assert not disk.mounted(cdir) and containers.disk_usage("filler") is not None  # (mounted again to be read)
    disk.detach(cdir)
    containers.start("filler")
    containers.wait("filler")
    assert "/fill" in [c.path for c in containers.diff("filler")]
    containers.remove("filler")
    assert not (store.root / "containers" / cdir.name).exists()


def test_a_container_without_room_for_its_disk_is_refused_and_nothing_is_made(own):
    store, containers = own
    free = os.statvfs(store.root).f_bavail * os.statvfs(store.root).f_frsize
    with pytest.raises(DiskError, match=r"^no room for a container with a .* GiB disk: .* GiB free where the store "
                                        r"is, .* promised to other containers and 1 GiB kept for the host"):
        containers.create(ContainerSpec(image=BUSYBOX, name="huge", limits=Limits(disk=free)))
    assert containers.list(all=True) == []
    # two that fit one by one but not together: the second is refused while the first exists
    half = (free - disk.RESERVE) // 2 + 64 * MIB
    first = containers.create(ContainerSpec(image=BUSYBOX, name="first", limits=Limits(disk=half)))
    with pytest.raises(DiskError, match="promised to other containers"):
        containers.create(ContainerSpec(image=BUSYBOX, name="second", limits=Limits(disk=half)))
    containers.remove(first)
    containers.remove(containers.create(ContainerSpec(image=BUSYBOX, name="second", limits=Limits(disk=half))))


def test_the_disk_limit_is_fixed_at_create_and_shown(own):
    _store, containers = own
    cid = containers.create(ContainerSpec(image=BUSYBOX, name="fixed", limits=Limits(disk=96 * MIB)))
    with pytest.raises(UsageError, match="the disk limit is fixed when a container is made"):
        containers.update("fixed", Limits(disk=200 * MIB))
    assert containers.update("fixed", Limits(memory=64 * MIB)).disk == 96 * MIB  # (not said: kept)
    assert containers.get(cid).spec.limits == Limits(memory=64 * MIB, disk=96 * MIB)
    with pytest.raises(UsageError, match="invalid --disk: the minimum is 64m"):
        Limits(disk=MIB)


def test_cli_disk_and_docker_storage_opt(own):
    store, _containers = own
    cli = [sys.executable, "-m", "sandbox_kernel", "--root", str(store.root)]

    def sk(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

    done = sk("run", "--rm", "--storage-opt", "size=100m", BUSYBOX, "sh", "-c", "df -k / | tail -1")
    assert done.returncode == 0 and 80 * 1024 < int(done.stdout.split()[1]) <= 100 * 1024, done
    made = sk("create", "--name", "sized", "--disk", "80m", BUSYBOX, "true")
    assert made.returncode == 0, made.stderr
    assert json.loads(sk("inspect", "sized").stdout)[0]["HostConfig"]["StorageOpt"] == {"size": str(80 * MIB)}
    assert sk("rm", "sized").returncode == 0
    for bad, message in ((("--storage-opt", "dm.basesize=1G"), "the only storage option is size=SIZE"),
                         (("--disk", "1m"), "invalid --disk: the minimum is 64m"),
                         (("--disk", "1m", "--storage-opt", "size=2g"), "disagree")):
        done = sk("run", "--rm", *bad, BUSYBOX, "true")
        assert done.returncode != 0 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done


def test_a_warm_slot_makes_the_next_disk_ahead_and_each_container_has_its_own(own):
    store, _ = own
    containers = Containers(store)  # warm slots on: the second run takes a slot that made its disk ahead
    try:
        for n in range(3):
            code, out = run(containers, f"echo {n} > /mine; ls /; df -k / | tail -1", remove=True,
                            limits=Limits(disk=72 * MIB))
            assert code == 0 and "mine" in out and int(out.split()[-5]) <= 72 * 1024, out
    finally:
        from sandbox_kernel.runtime import launcher

        launcher.drop_spare()  # (its speculative directory and disk go with it)


def test_not_root_cannot_have_a_disk_limit_and_the_policy_gives_none(monkeypatch):
    from sandbox_kernel.policy import SandboxPolicy

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="--disk needs root here"):
        disk.check_supported()
    policy = SandboxPolicy(max_disk="8g")
    assert policy.defaults().disk is None  # (nothing to enforce it with: no limit rather than no container)
    policy.check_limits(Limits())


def test_rm_rf_never_enters_another_mount(tmp_path):
    """remove_tree stops at a mount point (a container's disk, a bind mount) instead of emptying it."""
    top = tmp_path / "top"
    (top / "mnt").mkdir(parents=True)
    (top / "file").write_text("x")
    syscalls.mount("tmpfs", str(top / "mnt"), "tmpfs", 0, "size=1m")
    try:
        (top / "mnt" / "precious").write_text("keep me")
        with pytest.raises(OSError):
            fsutil.remove_tree(top)
        assert (top / "mnt" / "precious").read_text() == "keep me"
    finally:
        syscalls.umount2(str(top / "mnt"), syscalls.MNT_DETACH)
    fsutil.remove_tree(top)
    assert not top.exists()


def test_a_store_on_a_machine_without_mkfs_says_so(own, monkeypatch):
    store, containers = own
    monkeypatch.setattr(disk.shutil, "which", lambda name: None)
    monkeypatch.setattr(disk, "_MKFS_FALLBACK", "/nonexistent/mkfs.ext4")
    with pytest.raises(DiskError, match=r"cannot make the container's disk: /nonexistent/mkfs\.ext4"):
        containers.create(ContainerSpec(image=BUSYBOX, name="nomkfs", limits=Limits(disk=80 * MIB)))
    assert containers.list(all=True) == [] and [p.name for p in (store.root / "containers").iterdir()
                                                 if not p.name.startswith((".", "names"))] == []


def test_a_loop_device_still_being_cleared_is_waited_for(tmp_path, monkeypatch):
    """Just after its last unmount, an autoclear loop device still names the image but mounting it fails with EIO
    (it is being cleared): attach waits a moment and tries again, instead of failing the start (1 run in ~10)."""
    import errno

    cdir = tmp_path / "c"
    (cdir / disk.MOUNT).mkdir(parents=True)
    (cdir / disk.IMAGE).write_bytes(b"")
    tries: list[str] = []

    def mount(device: str, where: Path) -> None:
        tries.append(device)
        if len(tries) < 3:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(disk, "_backing_loop", lambda st: "/dev/loop7")
    monkeypatch.setattr(disk, "_mount", mount)
    monkeypatch.setattr(disk, "mounted", lambda c: False)
    disk.attach(cdir)
    assert tries == ["/dev/loop7"] * 3
