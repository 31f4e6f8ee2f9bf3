"""Two users who are not root on one machine: each has a private store; neither can list, read, remove or run
the other's images through the CLI (their containers: tests/test_rootless.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from localusers import LocalUser, local_user

from sandbox_kernel.runtime import save

pytestmark = pytest.mark.root

CLI = "import runpy, sys; sys.argv[0] = 'sandbox-kernel'; runpy.run_module('sandbox_kernel', run_name='__main__')"


def sk(user: LocalUser, data: Path, *args: str) -> tuple[int, str, str]:
    proc = user.popen(CLI, *args, env={"XDG_DATA_HOME": str(data)})
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.fixture
def homes(base_store):
    """A root-owned 0755 directory with a data directory for each of two users (theirs, 0700), and an archive
    of localhost/busybox every user may read."""
    top = Path(tempfile.mkdtemp(prefix="sk-two-"))
    top.chmod(0o755)
    try:
        save(base_store, ["localhost/busybox:latest"], top / "busybox.tar")
        (top / "busybox.tar").chmod(0o644)
        with local_user() as a, local_user() as b:
            for user in (a, b):
                (top / user.name).mkdir(mode=0o700)
                os.chown(top / user.name, user.uid, user.gid)
            yield top, a, b
    finally:
        shutil.rmtree(top)


def test_a_user_cannot_see_read_or_remove_another_users_images(homes):
    top, a, b = homes
    data_a, data_b = top / a.name, top / b.name
    assert sk(a, data_a, "load", str(top / "busybox.tar")) == (0, "Loaded image: localhost/busybox:latest\n", "")
    assert "localhost/busybox" in sk(a, data_a, "images")[1]
    store_a = data_a / "sandbox-kernel"
    assert os.stat(store_a).st_mode & 0o777 == 0o700 and os.stat(store_a).st_uid == a.uid
    # B's own store has nothing of A's
    code, out, _ = sk(b, data_b, "images")
    assert code == 0 and "busybox" not in out
    # A's store named outright: refused in one line, nothing changed
    for args in (("images",), ("rmi", "localhost/busybox"), ("save", "localhost/busybox", "-o", "/tmp/x.tar"),
                 ("tag", "localhost/busybox", "mine/busybox")):
        code, out, err = sk(b, data_b, "--root", str(store_a), *args)
        assert code != 0 and out == "" and err.startswith("sandbox-kernel: error: ") and err.count("\n") == 1, err
    assert sk(a, data_a, "images", "-q")[1].strip(), "A's image is still there"
    # nor through the files
    blob = next((store_a / "blobs" / "sha256").iterdir())
    reader = b.popen("import sys; open(sys.argv[1], 'rb').read()", str(blob))
    assert reader.wait(timeout=60) != 0 and "PermissionError" in reader.stderr.read()
