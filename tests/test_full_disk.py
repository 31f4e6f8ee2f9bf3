"""A store on a small tmpfs that fills up: pull and unpack fail with one line, leave no partial image, and work
again once space is freed. (A load that does not fit: tests/test_cli.py; a commit: tests/test_snapshot.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_infra import plain_registry  # noqa: F401  (a fixture)

from sandbox_kernel.runtime import save

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"
NO_SPACE = "no space left on the device"


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(root), *args], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture
def small(tmp_path):
    """A 6 MiB tmpfs, unmounted at the end."""
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "sk-test-full", str(path)], check=True)
    yield path
    subprocess.run(["umount", str(path)], check=True)


def fill(small: Path, leave: int) -> Path:
    """A file that leaves ``leave`` bytes free on the tmpfs."""
    filler = small / "filler"
    vfs = os.statvfs(small)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - leave))
    return filler


def one_error_line(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("sandbox-kernel: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert NO_SPACE in proc.stderr, proc.stderr


def nothing_partial(root: Path, tags: bytes) -> None:
    assert (root / "index.json").read_bytes() == tags, "no new tag"
    assert list((root / "tmp").iterdir()) == [], "no unfinished write"
    assert list((root / "layers").iterdir()) == [], "no partly unpacked layer"


def test_a_pull_that_does_not_fit_fails_in_one_line_and_works_once_there_is_room(small, base_store, tmp_path,
                                                                                   plain_registry):  # noqa: F811
    ref = plain_registry.ref("full/busybox:1")
    archive = tmp_path / "bb.tar"
    save(base_store, [BUSYBOX], archive)
    assert cli(tmp_path / "pusher", "load", str(archive)).returncode == 0
    assert cli(tmp_path / "pusher", "tag", BUSYBOX, ref).returncode == 0
    assert cli(tmp_path / "pusher", "push", "--insecure", ref).returncode == 0
    root = small / "store"
    assert cli(root, "images").returncode == 0
    tags = (root / "index.json").read_bytes()
    filler = fill(small, 300 * 1024)  # less than the layer (a 1 MB blob)
    one_error_line(cli(root, "pull", "--insecure", ref))
    nothing_partial(root, tags)
    filler.unlink()
    assert cli(root, "pull", "--insecure", ref).returncode == 0
    done = cli(root, "run", "--rm", ref, "echo", "pulled")
    assert (done.returncode, done.stdout) == (0, "pulled\n"), done.stderr


def test_an_unpack_that_does_not_fit_fails_in_one_line_and_works_once_there_is_room(small, base_store, tmp_path):
    archive = tmp_path / "bb.tar"
    save(base_store, [BUSYBOX], archive)
    root = small / "store"
    assert cli(root, "load", str(archive)).returncode == 0
    tags = (root / "index.json").read_bytes()
    filler = fill(small, 400 * 1024)  # the blob is stored; its unpacked tree (2 MB) does not fit
    one_error_line(cli(root, "run", "--rm", BUSYBOX, "true"))
    nothing_partial(root, tags)
    assert list((root / "containers").iterdir()) in ([], [root / "containers" / "names"]), "no container made"
    filler.unlink()
    done = cli(root, "run", "--rm", BUSYBOX, "echo", "unpacked")
    assert (done.returncode, done.stdout) == (0, "unpacked\n"), done.stderr
    assert cli(root, "check").returncode == 0
