"""``cp`` between the host and a container, running or stopped (runtime/copying.py), through the CLI, as root."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from leftovers import assert_nothing_left, cgroups, wait_for

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def box(root):
    """A running busybox container named "box" with a few files made inside; removed after."""
    before = cgroups()
    script = ("mkdir -p /data/sub && echo hello > /data/f && echo deep > /data/sub/g && ln -s f /data/link"
              " && mkfifo /data/pipe && cp /bin/busybox /data/suid && chmod 4755 /data/suid"
              " && echo ready > /tmp/ready && sleep 600")
    started = cli(root, "run", "-d", "--name", "box", BUSYBOX, "sh", "-c", script)
    assert started.returncode == 0, started.stderr
    wait_for(lambda: cli(root, "exec", "box", "cat", "/tmp/ready").stdout == "ready\n", what="the files")
    yield root
    cli(root, "rm", "-f", "box")
    assert_nothing_left(root, before)


def test_a_directory_comes_out_as_the_container_has_it_minus_what_is_unsafe(box, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = cli(box, "cp", "box:/data", str(out))
    assert done.returncode == 0, done.stderr
    data = out / "data"
    assert (data / "f").read_text() == "hello\n" and (data / "sub" / "g").read_text() == "deep\n"
    assert os.readlink(data / "link") == "f", "a symlink comes out as a symlink"
    assert not (data / "pipe").exists() and "skipped /data/pipe: a device node, FIFO or socket" in done.stderr
    assert stat.S_IMODE((data / "suid").stat().st_mode) == 0o755, "no setuid program for the host's root"
    assert (data / "f").stat().st_uid == os.getuid(), "the copies are the caller's"
    single = cli(box, "cp", "box:/data/f", str(tmp_path / "renamed"))
    assert single.returncode == 0 and (tmp_path / "renamed").read_text() == "hello\n"


def test_a_container_symlink_never_reaches_the_hosts_files(box, tmp_path):
    """Symlinks the container makes, to a host path, resolve inside the container, both ways."""
    secret = tmp_path / "secret"
    secret.write_text("the host's secret\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    made = cli(box, "exec", "box", "sh", "-c", f"ln -s {secret} /tmp/to-secret; ln -s {tmp_path} /tmp/to-dir;"
                                                f" ln -s ../../../../../../{secret} /tmp/up")
    assert made.returncode == 0, made.stderr
    for path in ("/tmp/to-secret", "/tmp/up"):
        followed = cli(box, "cp", "-L", f"box:{path}", str(tmp_path / "got"))
        assert followed.returncode == 1 and "No such file or directory" in followed.stderr, followed.stderr
        assert not (tmp_path / "got").exists()
    (tmp_path / "planted").write_text("from the host\n")
    into = cli(box, "cp", str(tmp_path / "planted"), "box:/tmp/to-dir/victim/")
    assert into.returncode == 1, "its target is the container's path, which does not exist there"
    assert list(victim.iterdir()) == [] and secret.read_text() == "the host's secret\n"


def test_files_go_in_as_the_containers_root_or_keep_their_owners(box, tmp_path):
    src = tmp_path / "in"
    (src / "deeper").mkdir(parents=True)
    (src / "a").write_text("alpha\n")
    (src / "deeper" / "b").write_text("beta\n")
    os.symlink("a", src / "alink")
    os.chown(src / "a", 4343, 4343)
    assert cli(box, "cp", str(src), "box:/tmp").returncode == 0
    shown = cli(box, "exec", "box", "sh", "-c", "cat /tmp/in/a /tmp/in/deeper/b; readlink /tmp/in/alink;"
                                                " stat -c '%u:%g' /tmp/in/a /tmp/in/deeper")
    assert shown.stdout.splitlines() == ["alpha", "beta", "a", "0:0", "0:0"], "the container's root owns them"
    assert cli(box, "cp", "-a", str(src / "a"), "box:/tmp/kept").returncode == 0
    assert cli(box, "exec", "box", "stat", "-c", "%u:%g", "/tmp/kept").stdout == "4343:4343\n"
    again = cli(box, "cp", str(tmp_path / "in" / "deeper" / "b"), "box:/tmp/in/a")
    assert again.returncode == 0 and cli(box, "exec", "box", "cat", "/tmp/in/a").stdout == "beta\n", "replaced"


def test_what_cp_refuses_is_one_line(box, root, tmp_path):
    proc = cli(box, "cp", "box:/proc/1/status", str(tmp_path / "x"))
    assert proc.returncode == 1 and "is not the container's file" in proc.stderr
    both = cli(box, "cp", "box:/data/f", "box:/tmp/f")
    assert both.returncode == 2 and "exactly one of SRC and DEST" in both.stderr
    missing = cli(box, "cp", "nobox:/data/f", str(tmp_path / "y"))
    assert missing.returncode == 1 and "no such container: nobox" in missing.stderr
    for refused in (proc, both, missing):
        assert refused.stderr.count("\n") == 1


def test_a_stopped_container_is_copied_into_and_out_of(root, tmp_path):
    """docker's create, cp, start: a file copied into a created container is there when it runs, as its
    root's; after it exits, what it made comes out; its symlinks still resolve inside it; its volumes are not
    there while it is stopped, so a path in one is refused; and nothing stays mounted."""
    before = cgroups()
    secret = tmp_path / "secret"
    secret.write_text("the host's secret\n")
    volume = tmp_path / "vol"
    volume.mkdir()
    script = (f"cat /root/in.txt; stat -c %u:%g /root/in.txt; ln -s {secret} /root/up; echo made > /root/out.txt")
    made = cli(root, "create", "--name", "later", "-v", f"{volume}:/vol:ro", BUSYBOX, "sh", "-c", script)
    assert made.returncode == 0, made.stderr
    try:
        given = tmp_path / "in.txt"
        given.write_text("given before the start\n")
        os.chown(given, 4343, 4343)
        copied = cli(root, "cp", str(given), "later:/root/in.txt")
        assert copied.returncode == 0, copied.stderr
        assert "later" not in Path("/proc/self/mountinfo").read_text() and str(root) not in Path(
            "/proc/self/mountinfo").read_text(), "its overlay was mounted nowhere"
        assert cli(root, "start", "later").returncode == 0
        assert cli(root, "wait", "later").stdout == "0\n"
        assert cli(root, "logs", "later").stdout == "given before the start\n0:0\n", "there, and its root's"
        out = cli(root, "cp", "later:/root/out.txt", str(tmp_path / "out.txt"))
        assert out.returncode == 0 and (tmp_path / "out.txt").read_text() == "made\n"
        followed = cli(root, "cp", "-L", "later:/root/up", str(tmp_path / "got"))
        assert followed.returncode == 1 and "No such file or directory" in followed.stderr, followed.stderr
        assert not (tmp_path / "got").exists()
        into_volume = cli(root, "cp", str(given), "later:/vol/x")
        assert into_volume.returncode == 1 and "is in a volume (/vol)" in into_volume.stderr
        assert list(volume.iterdir()) == []
    finally:
        cli(root, "rm", "-f", "later")
    assert_nothing_left(root, before)
