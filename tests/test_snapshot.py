"""Snapshots (runtime/snapshot.py): diff and commit of real containers; umoci reads what we write (root)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import need_tool
from leftovers import assert_nothing_left, cgroups

from sandbox_kernel.runtime import Containers, ContainerSpec, Store, launcher, save

pytestmark = pytest.mark.root
pytest_plugins = ["registry_infra"]  # the busybox_archive fixture
BUSYBOX = "localhost/busybox:latest"
# add a file and a directory, change a file, delete a file and a directory, replace a directory with a
# file, delete a directory and make it again (overlay marks it opaque)
CHANGES = ("echo new > /added.txt; mkdir -p /added-dir/sub; echo x > /added-dir/sub/f;"
           " echo changed >> /etc/passwd; rm /bin/vi; rm -rf /usr/sbin;"
           " rm -rf /home; echo a-file > /home; rm -rf /root; mkdir /root; echo again > /root/r")
LIST = "find / -xdev ! -path '/proc*' ! -path '/sys*' ! -path '/dev*' | sort"


@pytest.fixture
def containers(root):
    before = cgroups()
    store = Store(root)
    tags = set(store.tags())
    yield Containers(store)
    launcher.drop_spare()  # the warm slot an in-process run leaves for the next one
    store.remove_tags(set(store.tags()) - tags)  # the session's store stays as the other tests expect it
    assert_nothing_left(root, before)


def run(containers: Containers, image: str, script: str, *, name: str | None = None, keep: bool = False) -> str:
    out: list[bytes] = []
    result = containers.run(ContainerSpec(image=image, command=("sh", "-c", script), name=name, remove=not keep),
                            stdin=None, stdout=out.append)
    assert result.exit_code == 0, result
    return b"".join(out).decode()


def test_commit_gives_exactly_the_changed_tree_and_umoci_agrees(containers, tmp_path):
    base_tree = set(run(containers, BUSYBOX, LIST).split())
    assert {"/usr/sbin", "/home", "/root", "/bin/vi"} <= base_tree, "the base image has what the test changes"
    run(containers, BUSYBOX, CHANGES, name="changed", keep=True)
    try:
        changes = [str(c) for c in containers.diff("changed")]
        assert {"A /added.txt", "A /added-dir", "A /added-dir/sub/f", "C /etc/passwd", "D /bin/vi",
                "D /usr/sbin", "C /home", "C /root", "A /root/r"} <= set(changes)
        assert not any(c.endswith(("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")) for c in changes), \
            "the runtime's own mount points are not the container's changes"
        image = containers.commit("changed", "localhost/snapshot:test", message="the test's changes")
    finally:
        containers.remove("changed", force=True)
    assert image.config["history"][-1]["comment"] == "the test's changes"
    assert len(image.layers) == len(containers.store.resolve(BUSYBOX).layers) + 1

    new_tree = set(run(containers, "localhost/snapshot:test", LIST).split())
    removed = {p for p in base_tree if p in ("/bin/vi", "/usr/sbin") or p.startswith(("/usr/sbin/", "/home/",
                                                                                        "/root/"))}
    expected = (base_tree - removed) | {"/added.txt", "/added-dir", "/added-dir/sub", "/added-dir/sub/f", "/root/r"}
    assert new_tree == expected
    shown = run(containers, "localhost/snapshot:test",
                "cat /added.txt /root/r /home; tail -1 /etc/passwd; [ -d /home ] && echo dir || echo not-dir")
    assert shown.split() == ["new", "again", "a-file", "changed", "not-dir"]

    archive = tmp_path / "snap.tar"
    save(containers.store, ["localhost/snapshot:test"], archive)
    layout = tmp_path / "layout"
    with tarfile.open(archive) as tf:
        tf.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    unpacked = subprocess.run(["umoci", "unpack", "--image", f"{layout}:test", str(bundle)], capture_output=True,
                              text=True)
    assert unpacked.returncode == 0, unpacked.stderr
    rootfs = bundle / "rootfs"
    umoci_tree = {"/" + str(p.relative_to(rootfs)) for p in rootfs.rglob("*")} | {"/"}
    runtime = {"/proc", "/sys", "/dev", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf"}  # mounted at run time
    assert umoci_tree - runtime == new_tree - runtime
    assert (rootfs / "root" / "r").read_text() == "again\n" and (rootfs / "home").is_file()
    shutil.rmtree(bundle)


def test_the_same_steps_give_the_same_digests(containers, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    digests = []
    for name in ("first", "second"):
        run(containers, BUSYBOX, "echo same > /same.txt; mkdir /d; echo x > /d/x; rm /bin/vi", name=name, keep=True)
        try:
            image = containers.commit(name, f"localhost/repro:{name}", created_by="the same steps")
        finally:
            containers.remove(name, force=True)
        digests.append((image.layers[-1]["digest"], image.config_digest, image.manifest_digest))
    assert digests[0] == digests[1], "same changes, same base, same time: same layer, config and manifest"
    assert containers.store.resolve("localhost/repro:first").config["created"] == "2023-11-14T22:13:20Z"


@pytest.mark.cgroups
def test_a_running_container_is_committed_and_goes_on(containers):
    # (the counter is replaced by rename: with `echo $i > /counter`, a commit between the truncation and the write
    # holds an empty file, a true picture of that moment; the cgroup v2 VM's slow emulation showed it)
    script = ("echo before > /state; i=0; while true; do i=$((i+1)); echo $i > /counter.new; "
              "mv /counter.new /counter; sleep 0.01; done")
    cid = containers.run_detached(ContainerSpec(image=BUSYBOX, command=("sh", "-c", script), name="busy"))
    try:
        deadline = time.monotonic() + 30
        while {"A /state", "A /counter"} - {str(c) for c in containers.diff("busy")}:  # it has begun writing
            assert time.monotonic() < deadline, "the container never wrote"
            time.sleep(0.02)
        base_layers = len(containers.store.resolve(BUSYBOX).layers)
        image = containers.commit("busy", "localhost/busy:1")
        assert len(image.layers) == base_layers + 1, "one new layer"
        assert containers.get(cid).state.status == "running", "thawed after the commit"
        shown = run(containers, "localhost/busy:1", "cat /state; cat /counter")
        state, counter = shown.split()
        committed = int(counter)
        assert state == "before" and committed >= 1, "the snapshot holds what it had written"

        def now() -> int:
            out: list[bytes] = []
            assert containers.exec(cid, ["cat", "/counter"], stdin=None, stdout=out.append, stderr=None) == 0
            return int(b"".join(out) or b"0")

        deadline = time.monotonic() + 30  # (a bound on "at all": a frozen container would never count on)
        while now() <= committed:
            assert time.monotonic() < deadline, "the container did not go on counting after the commit"
            time.sleep(0.05)
    finally:
        containers.remove("busy", force=True)


def test_cli_diff_commit_and_history(root):
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(root), *args],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    before = cgroups()
    made = cli("run", "--name", "cli-snap", BUSYBOX, "sh", "-c", "echo hi > /hello; rm /bin/vi")
    assert made.returncode == 0, made.stderr
    try:
        assert cli("diff", "cli-snap").stdout.splitlines() == ["C /bin", "D /bin/vi", "A /hello"]
        committed = cli("commit", "cli-snap", "localhost/cli-snap:1", "-m", "said hello")
        assert committed.returncode == 0 and committed.stdout.startswith("sha256:")
        zstd = cli("commit", "--compression", "zstd", "cli-snap", "localhost/cli-snap:zstd")
        assert zstd.returncode == 0, zstd.stderr
        assert Store(root).resolve("localhost/cli-snap:zstd").layers[-1]["mediaType"].endswith("+zstd")
        assert cli("run", "--rm", "localhost/cli-snap:zstd", "cat", "/hello").stdout == "hi\n"
        history = cli("history", "localhost/cli-snap:1").stdout.splitlines()
        assert "said hello" in history[1] and "echo hi > /hello" in history[1]
        assert cli("run", "--rm", "localhost/cli-snap:1", "cat", "/hello").stdout == "hi\n"
        missing = cli("commit", "no-such-container", "localhost/x:1")
        assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    finally:
        cli("rm", "-f", "cli-snap")
        cli("rmi", "localhost/cli-snap:1", "localhost/cli-snap:zstd")
    assert_nothing_left(root, before)


def test_a_full_disk_fails_the_commit_cleanly(tmp_path, busybox_archive):
    """A store on a small tmpfs: the commit cannot write its layer. One clear error, no half image, the
    container untouched; with room again, the same commit works."""
    from sandbox_kernel.runtime import StoreError, load

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "sk-test-small", str(small)], check=True)
    try:
        store = Store(small / "store")
        load(store, busybox_archive)
        containers = Containers(store, warm_slots=False)
        run(containers, BUSYBOX, "head -c 6000000 /dev/urandom > /big", name="full", keep=True)
        filler = small / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
        tags = set(store.tags())
        with pytest.raises(StoreError, match="No space left on device"):
            containers.commit("full", "localhost/full:1")
        assert set(store.tags()) == tags and list((store.root / "tmp").iterdir()) == []
        assert [str(c) for c in containers.diff("full")] == ["A /big"], "the container's changes are untouched"
        filler.unlink()
        assert containers.commit("full", "localhost/full:1").layers[-1]["size"] > 6_000_000
        containers.remove("full", force=True)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_snapshot_goes_through_a_registry_and_keeps_its_digests(containers, plain_registry, tmp_path):
    """Share it: push the snapshot, pull it into a fresh store, run it there: the change is in it."""
    from sandbox_kernel.runtime import RegistryOptions, pull, push

    run(containers, BUSYBOX, "echo shared > /lesson.txt", name="share", keep=True)
    try:
        image = containers.commit("share", "localhost/lesson:1", message="lesson 1")
    finally:
        containers.remove("share", force=True)
    ref = plain_registry.ref("teach/lesson:1")
    options = RegistryOptions(insecure=True)
    assert push(containers.store, "localhost/lesson:1", ref, options=options).digest == image.manifest_digest
    fresh = Store(tmp_path / "student")
    pulled = pull(fresh, ref, options=options).image
    assert (pulled.manifest_digest, pulled.config["history"][-1]["comment"]) == (image.manifest_digest, "lesson 1")
    student = Containers(fresh, warm_slots=False)
    out: list[bytes] = []
    assert student.run(ContainerSpec(image=ref, command=("cat", "/lesson.txt"), remove=True), stdin=None,
                       stdout=out.append).exit_code == 0
    assert b"".join(out) == b"shared\n"


def test_120_stacked_snapshots_still_run(tmp_path, busybox_archive):
    """overlay's options must fit in a page: the store's layer paths allow about 40; short links, 200+."""
    from sandbox_kernel.runtime import load

    store = Store(tmp_path / "store")
    load(store, busybox_archive)
    chain = Containers(store, warm_slots=False)
    image = BUSYBOX
    for i in range(1, 121):
        assert chain.run(ContainerSpec(image=image, command=("sh", "-c", f"echo {i} > /f{i}"), name="link"),
                         stdin=None, stdout=None).exit_code == 0
        chain.commit("link", f"localhost/chain:{i}")
        chain.remove("link", force=True)
        image = f"localhost/chain:{i}"
    assert len(store.resolve(image).layers) == 121
    out: list[bytes] = []
    assert chain.run(ContainerSpec(image=image, command=("cat", "/f1", "/f60", "/f120"), remove=True), stdin=None,
                     stdout=out.append).exit_code == 0
    assert b"".join(out).split() == [b"1", b"60", b"120"]
    store.remove_tags([f"localhost/chain:{i}" for i in range(1, 121)])
    store.prune()
    assert list((store.root / "l").iterdir()) == [p for p in (store.root / "l").iterdir() if p.exists()], \
        "prune leaves no dangling layer link"


def _libpod_cgroups() -> set[Path]:
    root = Path("/sys/fs/cgroup")
    found: set[Path] = set()
    for top in [*root.glob("*/libpod_parent"), *root.glob("libpod_parent")]:
        found.add(top)
        found.update(p for p in top.rglob("*") if p.is_dir())
    return found


@pytest.mark.slow
def test_podman_runs_a_snapshot(containers, tmp_path):
    """Interop: our saved snapshot, loaded and run by podman (runc), shows the change.

    podman runs in a mount namespace of its own with tmpfs over /var/lib/containers (or /var/lib), /run and
    /dev/shm, where it writes whatever its options say; the cgroups it makes under libpod_parent (cgroupfs
    is not behind a mount namespace) are removed after, when they were not there before.
    """
    need_tool("podman")
    need_tool("runc")
    run(containers, BUSYBOX, "echo from-a-snapshot > /proof; rm /bin/vi", name="interop", keep=True)
    try:
        containers.commit("interop", "localhost/interop:1")
    finally:
        containers.remove("interop", force=True)
    archive = tmp_path / "interop.tar"
    save(containers.store, ["localhost/interop:1"], archive)
    hide = "/var/lib/containers" if Path("/var/lib/containers").is_dir() else "/var/lib"
    podman = (f"podman --root {tmp_path}/podman --runroot /run/sk-podman --tmpdir /run/sk-podman-tmp"
              " --storage-driver vfs --cgroup-manager cgroupfs --runtime runc --events-backend file")
    limits = "--ulimit nofile=20000:20000 --ulimit nproc=4096:4096"  # podman's defaults are above this machine's
    script = (f"mount -t tmpfs none {hide} && mount -t tmpfs none /run && mount -t tmpfs none /dev/shm && "
              f"{podman} load -q -i {archive} >/dev/null && "
              f"{podman} run --rm --network none {limits} localhost/interop:1"
              " sh -c 'cat /proof; ls /bin/vi 2>&1 || true'")
    before = _libpod_cgroups()
    try:
        # (a pid namespace too: conmon and podman's cleanup processes end with it)
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
                              "sh", "-c", script], capture_output=True, text=True, timeout=300)
    finally:
        deadline = time.monotonic() + 30
        while (left := sorted(_libpod_cgroups() - before, key=lambda p: len(p.parts), reverse=True)):
            for cgroup in left:
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "from-a-snapshot"
    assert "No such file" in out.stdout, "the deletion (a whiteout) is in the layer podman applied"
    assert _libpod_cgroups() == before
