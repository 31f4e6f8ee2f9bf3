"""Container root is not host root: user namespaces by default, and a store no other user can enter.

The container tests need root (they run real containers); the id range checks run anywhere, on files
the tests write.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import struct
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import IS_ROOT
from leftovers import assert_nothing_left, cgroups

from sandbox_kernel.runtime import LayerError, Store, StoreError, extract_layer, idmap
from sandbox_kernel.runtime.errors import UserNamespaceError
from sandbox_kernel.runtime.idmap import IdMap

BUSYBOX = "localhost/busybox:latest"
DEBIAN = "localhost/debian-python"
root_only = pytest.mark.root


def cli(store_root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(store_root), *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def host_ids(pid: int) -> tuple[int, int]:
    """A process's real uid and gid as the host sees them."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def clean(root):
    before = cgroups()
    yield
    assert_nothing_left(root, before)


@pytest.fixture
def intruder():
    """A local user the test makes: no sudo, no group of ours (removed at the end)."""
    name = f"sk-intruder-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def as_user(ids: tuple[int, int], script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], user=ids[0], group=ids[1], extra_groups=[], capture_output=True,
                          text=True, timeout=60, cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


# -- the exploit of the issue, as a test --------------------------------------------------------------------

SETCAP = ("import os, struct; open('/tmp/capped', 'wb').write(open('/usr/bin/python3', 'rb').read()); "
          "os.chmod('/tmp/capped', 0o755); "
          # a version 2 capability set: cap_setuid (7) permitted and effective
          "os.setxattr('/tmp/capped', 'security.capability', struct.pack('<IIIII', 0x02000001, 1 << 7, 0, 0, 0))")


@pytest.fixture
def open_parent():
    """A directory every user may enter (as /var/lib is), for a store: its own modes are what keeps users out."""
    import shutil
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="sk-test-open-", dir="/var/tmp"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


@root_only
def test_a_local_user_cannot_reach_or_run_what_a_container_made(open_parent, intruder):
    """A container makes a setuid copy of python3, a world-writable file and a file with file
    capabilities; a local user cannot list the store, run or read any of them, read a container's
    config (its -e secrets) or take a store lock. On the host the files are not root's anyway."""
    from sandbox_kernel.runtime import build

    store = open_parent / "store"
    build(Store(store), "debian-python")  # (from the cache the base images are kept in)
    before = cgroups()
    script = ("cp /usr/bin/python3 /tmp/.p && chmod 4755 /tmp/.p && echo hi > /tmp/ww && chmod 666 /tmp/ww && "
              f"python3 -c \"{SETCAP}\" && echo made && sleep 300")
    cid = cli(store, "run", "-d", "--name", "lpe", "-e", "SECRET=hunter2", DEBIAN, "sh", "-c", script).stdout.strip()
    try:
        upper = store / "containers" / cid / "upper" / "tmp"
        deadline = time.monotonic() + 20
        while b"made" not in b"".join(data for _, data in _logs(store, cid)):
            assert time.monotonic() < deadline, "the container did not make its files"
            time.sleep(0.05)
        made = {name: os.lstat(upper / name) for name in (".p", "ww", "capped")}
        assert made[".p"].st_mode & stat.S_ISUID, "the container did make a setuid file"
        assert made["ww"].st_mode & 0o002, "and a world-writable one"
        base = idmap.remap_range()
        assert {st.st_uid for st in made.values()} == {base.uid}, "on the host they belong to the range, not to root"
        raw = os.getxattr(upper / "capped", "security.capability")
        assert struct.unpack_from("<I", raw)[0] >> 24 == 3 and struct.unpack_from("<I", raw, 20)[0] == base.uid, (
            "the file capabilities hold for the container's root only (version 3, rootid of the range)")
        # the control: the user runs, reads, locks, and reaches the store's parent
        control = as_user(intruder, f"id -u && cat /etc/hostname >/dev/null && flock -n /etc/hostname true && "
                                    f"ls {open_parent} >/dev/null && echo control-ok")
        assert control.stdout.split() == [str(intruder[0]), "control-ok"], control.stderr
        probe = as_user(intruder, f"""
            ls {store} >/dev/null 2>&1 && echo listed-store
            ls {store}/containers >/dev/null 2>&1 && echo listed-containers
            for f in {upper}/.p {upper}/ww {upper}/capped; do
              "$f" -c 'import os; os.setuid(0); print("became root")' 2>/dev/null && echo "ran $f"
              cat "$f" >/dev/null 2>&1 && echo "read $f"
              echo x 2>/dev/null >> "$f" && echo "wrote $f"
            done
            cat {store}/containers/{cid}/config.json >/dev/null 2>&1 && echo read-config
            for lock in gc index; do flock -n {store}/locks/$lock true 2>/dev/null && echo "took lock $lock"; done
            flock -n {store}/containers/{cid}/lock true 2>/dev/null && echo took-container-lock
            ls {store}/blobs/sha256 {store}/layers >/dev/null 2>&1 && echo listed-layers
        """)
        assert probe.stdout == "", f"a local user got in: {probe.stdout}"
    finally:
        cli(store, "rm", "-f", cid, check=False)
    assert_nothing_left(store, before)


def _logs(store: Path, cid: str):
    from sandbox_kernel.runtime import logs

    return logs.read_log(store / "containers" / cid)


# -- ids inside and on the host -----------------------------------------------------------------------------

@root_only
def test_container_ids_are_an_unprivileged_range_on_the_host(root, clean):
    base = idmap.remap_range()
    cid = cli(root, "run", "-d", BUSYBOX, "sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; sleep 300"
              ).stdout.strip()
    try:
        state = json.loads((root / "containers" / cid / "state.json").read_text())
        pid1 = state["pid"]
        assert host_ids(pid1) == (base.uid, base.gid), "PID 1 runs as the range's first id"
        [command] = children(pid1)
        assert host_ids(command) == (base.uid, base.gid), "the command as root of the container, mapped"
        maps = cli(root, "logs", cid).stdout.split()
        assert maps == ["0", str(base.uid), "65536", "0", str(base.gid), "65536"], "not the identity map inside"
        exec_id = cli(root, "exec", "-u", "1000:1000", cid, "sh", "-c", "id -u; cat /proc/self/status").stdout
        uid_line = next(line for line in exec_id.splitlines() if line.startswith("Uid:"))
        assert exec_id.split()[0] == "1000" and uid_line.split()[1] == "1000", "inside: its own ids"
        sleeper = cli(root, "exec", "-u", "1000", cid, "sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!").stdout.strip()
        assert sleeper.isdigit()
        on_host = [p for p in children(pid1) if p != command]
        assert on_host and all(host_ids(p)[0] == base.uid + 1000 for p in on_host), (
            "a process of uid 1000 inside is uid BASE+1000 on the host")
    finally:
        cli(root, "rm", "-f", cid, check=False)


@root_only
def test_userns_host_keeps_host_ids(root, clean):
    proc = cli(root, "run", "--rm", "--userns=host", BUSYBOX, "sh", "-c", "cat /proc/self/uid_map; id -u")
    assert proc.stdout.split() == ["0", "0", "4294967295", "0"], "no user namespace: container root is host root"
    inspect = cli(root, "run", "--rm", "--userns", "nope", BUSYBOX, "true", check=False)
    assert inspect.returncode == 2 and "invalid --userns 'nope'" in inspect.stderr


@root_only
def test_mount_points_and_dev_belong_to_the_containers_root(root, clean):
    """What the runtime makes (a -w directory, /dev) is the container root's; devices are the host's
    nodes bound in (no mknod), so they show as nobody's, as in rootless engines."""
    proc = cli(root, "run", "--rm", "-w", "/new/work", BUSYBOX, "sh", "-c",
               "stat -c '%u:%g %n' /new /new/work /dev /etc/hosts /dev/null;"
               "grep -c ' /dev/null ' /proc/self/mountinfo;"
               "touch /new/work/f /dev/f && echo wrote")
    lines = proc.stdout.splitlines()
    assert lines[:4] == ["0:0 /new", "0:0 /new/work", "0:0 /dev", "0:0 /etc/hosts"], proc.stdout
    assert lines[4] == "65534:65534 /dev/null" and lines[5] == "1", "the host's /dev/null, bound"
    assert lines[6] == "wrote"


# -- snapshots do not change ---------------------------------------------------------------------------------

CHANGES = ("mkdir -p /srv/d && echo data > /srv/d/f && chown 1000:1001 /srv/d/f && chmod 4750 /srv/d/f && "
           "ln -s f /srv/d/link && ln /srv/d/f /srv/d/hard && rm -rf /usr/share/doc /etc/issue && "
           "mkfifo /srv/fifo && chown 65534:65534 /srv/fifo && "
           f"python3 -c \"{SETCAP.replace('/tmp/capped', '/srv/capped')}\"")


@root_only
def test_the_same_change_commits_to_the_same_digest_with_and_without_userns(debian_store, clean):
    store = debian_store.root
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    digests = {}
    for mode in ("", "host"):
        name = f"same-{mode or 'userns'}"
        cli(store, "run", "--name", name, f"--userns={mode}", DEBIAN, "sh", "-c", CHANGES)
        try:
            cli(store, "commit", name, f"localhost/same:{mode or 'userns'}", env=env)
        finally:
            cli(store, "rm", "-f", name)
        image = Store(store).resolve(f"localhost/same:{mode or 'userns'}")
        digests[mode] = (image.layers[-1]["digest"], image.diff_ids[-1])
    assert digests[""] == digests["host"], "a snapshot does not depend on the user namespace"
    layer = Store(store).blob_path(digests[""][0])
    with tarfile.open(layer) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert (members["srv/d/f"].uid, members["srv/d/f"].gid) == (1000, 1001), "owners as seen inside"
    assert members["srv/d/f"].mode & stat.S_ISUID and (members["srv/fifo"].uid, members["srv/fifo"].gid) == (
        65534, 65534)
    caps = members["srv/capped"].pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
    assert len(caps) == 20 and struct.unpack_from("<I", caps)[0] == 0x02000001, "version 2, as host root writes"
    for mode in ("userns", "host"):
        cli(store, "rmi", f"localhost/same:{mode}")


@root_only
def test_a_file_outside_the_map_is_one_error_not_a_wrong_owner(root, clean):
    cli(root, "run", "--name", "outside", BUSYBOX, "sh", "-c", "echo x > /f")
    try:
        cid = cli(root, "inspect", "outside").stdout
        upper = root / "containers" / json.loads(cid)[0]["Id"] / "upper"
        os.chown(upper / "f", 0, 0)  # host root's, which no container id is
        proc = cli(root, "commit", "outside", "localhost/outside:1", check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith("sandbox-kernel: error: cannot commit container outside: layer entry 'f': "
                                      "host owner 0:0 is outside the container's ids"), proc.stderr
        assert proc.stderr.count("\n") == 1
    finally:
        cli(root, "rm", "-f", "outside")


# -- volumes ------------------------------------------------------------------------------------------------

@root_only
def test_what_container_root_writes_in_a_volume_is_its_owners(root, tmp_path, clean):
    """An idmapped volume: the container's root is the folder's owner there. It cannot chown to
    anyone else, nor set a setuid or setgid bit, so the folder never gains root's or setuid files."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    os.chown(folder, 4321, 4322)
    (folder / "mine.txt").write_text("hello\n")
    os.chown(folder / "mine.txt", 4321, 4322)
    (folder / "roots.txt").write_text("root's\n")
    script = ("stat -c '%u:%g' /work /work/mine.txt /work/roots.txt; echo new > /work/new; mkdir /work/dir;"
              "chmod 4755 /work/new 2>/dev/null && echo setuid-set;"
              "chmod 2755 /work/dir 2>/dev/null && echo setgid-set;"
              "chown 0:0 /work/new 2>/dev/null; chown 1000 /work/new 2>/dev/null && echo chowned;"
              "echo x >> /work/roots.txt 2>/dev/null && echo wrote-roots;"
              "touch /tmp/inside && chmod 755 /tmp/inside && echo plain-chmod-ok;"
              "chmod 4755 /tmp/inside 2>/dev/null || echo setuid-refused-everywhere")
    proc = cli(root, "run", "--rm", "-v", f"{folder}:/work", BUSYBOX, "sh", "-c", script)
    assert proc.stdout.splitlines() == ["0:0", "0:0", "65534:65534", "plain-chmod-ok", "setuid-refused-everywhere"], (
        proc.stdout)
    for path in (folder / "new", folder / "dir"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (4321, 4322), f"{path.name} is the folder owner's on the host"
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{path.name} got a setuid/setgid bit"
    assert (folder / "roots.txt").read_text() == "root's\n"


@root_only
def test_a_writable_volume_of_roots_is_refused_a_read_only_one_is_bound(root, tmp_path, clean):
    folder = tmp_path / "roots"
    folder.mkdir()
    (folder / "f").write_text("readable\n")
    proc = cli(root, "run", "--rm", "-v", f"{folder}:/data", BUSYBOX, "true", check=False)
    assert proc.returncode == 2 and proc.stderr == (
        f"sandbox-kernel: error: volume {folder} belongs to root, and a container's root is not the host's: "
        "mount it read-only (:ro), give it to a user (chown), or run with --userns=host (trusted tools only)\n")
    proc = cli(root, "run", "--rm", "-v", f"{folder}:/data:ro", BUSYBOX, "cat", "/data/f")
    assert proc.stdout == "readable\n"
    proc = cli(root, "run", "--rm", "--userns=host", "-v", f"{folder}:/data", BUSYBOX, "sh", "-c",
               "echo x > /data/g && stat -c %u /data/g")
    assert proc.stdout == "0\n", "--userns=host: today's behaviour"


# -- the private store --------------------------------------------------------------------------------------

def test_a_store_left_open_is_tightened_on_first_use(tmp_path):
    store = Store(tmp_path / "store")
    store.put_bytes(b"a blob")
    (store.root / "containers" / ("a" * 64)).mkdir(parents=True)
    (store.root / "containers" / ("a" * 64) / "config.json").write_text("{}")
    for path in [store.root, *store.root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    Store(store.root)
    for path in [store.root, *store.root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def test_store_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        store = Store(tmp_path / "store")
        digest = store.put_bytes(b"secret")
        with store._lock("gc"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    for path in (store.blob_path(digest), store.root / "index.json", store.root / "locks" / "gc"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_store_another_user_could_swap_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone may rename what is in it
    expected = re.escape(f"refusing the store at {shared}/store: {shared} is writable by other")
    with pytest.raises(StoreError, match=expected):
        Store(shared / "store")
    shared.chmod(0o1777)
    Store(shared / "store")  # sticky, and the store is ours: nobody else can replace it


@pytest.mark.skipif(not IS_ROOT, reason="needs root (chown)")
def test_a_store_that_belongs_to_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 4321, 4321)
    with pytest.raises(StoreError, match="belongs to uid 4321"):
        Store(theirs)


# -- layers for a map ---------------------------------------------------------------------------------------

def _layer(tmp_path: Path, entries: list[tuple[str, int, int]]) -> Path:
    path = tmp_path / "layer.tar"
    with tarfile.open(path, "w") as tf:
        for name, uid, gid in entries:
            info = tarfile.TarInfo(name)
            info.uid, info.gid = uid, gid
            info.size = 1
            import io

            tf.addfile(info, io.BytesIO(b"x"))
    return path


@pytest.mark.skipif(not IS_ROOT, reason="needs root (chown)")
def test_layers_are_unpacked_into_the_range(tmp_path):
    layer = _layer(tmp_path, [("usr/bin/tool", 0, 0), ("home/me/notes", 1000, 1000)])
    mapping = IdMap(200000, 300000)
    with open(layer, "rb") as fh:
        extract_layer(fh, tmp_path / "out", idmap=mapping)
    assert os.lstat(tmp_path / "out/usr/bin/tool")[4:6] == (200000, 300000)
    assert os.lstat(tmp_path / "out/home/me/notes")[4:6] == (201000, 301000)
    assert os.lstat(tmp_path / "out/usr")[4:6] == (200000, 300000), "a directory the layer does not name is root's"
    outside = _layer(tmp_path, [("f", 70000, 0)])
    expected = r"owner 70000:0 is outside the 65536 ids .*\[owner\]"
    with open(outside, "rb") as fh, pytest.raises(LayerError, match=expected):
        extract_layer(fh, tmp_path / "out2", idmap=mapping)
    assert not (tmp_path / "out2").exists()


# -- the id range -------------------------------------------------------------------------------------------

@pytest.fixture
def id_files(tmp_path, monkeypatch):
    files = {}
    for name in ("subuid", "subgid", "passwd", "group"):
        files[name] = tmp_path / name
        files[name].write_text("")
        monkeypatch.setattr(idmap, name.upper(), files[name])
    files["passwd"].write_text("root:x:0:0::/root:/bin/sh\nsandbox-kernel:x:999:995::/nonexistent:/usr/sbin/nologin\n")
    files["group"].write_text("root:x:0:\nsandbox-kernel:x:995:\n")
    return files


def test_the_range_is_read_from_subuid_and_subgid(id_files):
    id_files["subuid"].write_text("alice:100000:65536\nsandbox-kernel:165536:65536\n")
    id_files["subgid"].write_text("sandbox-kernel:300000:70000\n")
    assert idmap.remap_range() == IdMap(165536, 300000)


def test_a_missing_range_says_how_to_make_one(id_files):
    id_files["subuid"].write_text("sandbox-kernel:100000:1000\n")
    with pytest.raises(UserNamespaceError, match=r"no 65536-uid range for containers: .* gives user sandbox-kernel "
                       r"none \(it has 100000-100999\); run `python -m sandbox_kernel.runtime.idmap reserve`"):
        idmap.remap_range()


def test_a_range_shared_with_another_user_or_an_account_is_refused(id_files):
    id_files["subuid"].write_text("sandbox-kernel:100000:65536\nbob:160000:65536\n")
    id_files["subgid"].write_text("sandbox-kernel:100000:65536\n")
    with pytest.raises(UserNamespaceError, match="overlaps user bob's"):
        idmap.remap_range()
    id_files["subuid"].write_text("sandbox-kernel:100000:65536\n")
    id_files["passwd"].write_text(id_files["passwd"].read_text() + "carol:x:100500:100500::/home/carol:/bin/sh\n")
    with pytest.raises(UserNamespaceError, match=r"user carol \(uid 100500\) is inside the uid range for containers"):
        idmap.remap_range()


def test_a_free_range_skips_what_is_taken(id_files):
    id_files["subuid"].write_text("alice:100000:65536\n")
    id_files["subgid"].write_text("bob:165536:65536\n")
    id_files["passwd"].write_text(id_files["passwd"].read_text() + "dave:x:240000:240000::/:/bin/sh\n")
    assert idmap._free_start() == 100000 + 3 * 65536


def test_file_capabilities_convert_between_the_two_forms():
    mapping = IdMap(100000, 100000)
    v2 = struct.pack("<IIIII", 0x02000001, 1 << 7, 0, 0, 0)
    v3 = idmap.caps_to_host(v2, mapping)
    assert len(v3) == 24 and struct.unpack("<I", v3[:4])[0] == 0x03000001 and v3[20:] == struct.pack("<I", 100000)
    assert idmap.caps_to_container(v3, mapping) == v2
    with pytest.raises(ValueError, match="not the container's root"):
        idmap.caps_to_container(v3[:20] + struct.pack("<I", 5), mapping)


@root_only
def test_without_a_range_a_container_does_not_start_and_says_how(root, id_files):
    from sandbox_kernel.runtime import Containers, ContainerSpec

    containers = Containers(Store(root))
    with pytest.raises(UserNamespaceError, match=r"no 65536-uid range for containers: .*runtime\.idmap reserve`"):
        containers.run(ContainerSpec(image=BUSYBOX, command=("true",), remove=True), stdin=None)
    assert containers.list(all=True) == [], "nothing was made"


@root_only
def test_reserving_again_changes_nothing():
    before = (idmap.SUBUID.read_text(), idmap.SUBGID.read_text(), idmap.PASSWD.read_text())
    assert idmap.reserve() == idmap.remap_range(), "scripts/setup.sh reserved it; a second call keeps it"
    assert (idmap.SUBUID.read_text(), idmap.SUBGID.read_text(), idmap.PASSWD.read_text()) == before
