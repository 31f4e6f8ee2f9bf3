"""The user namespace of a user who is not root, made once and kept (runtime/userns_keeper.py): as users the
tests make, with a range of ids in /etc/subuid and /etc/subgid and without one."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from leftovers import wait_for
from localusers import LocalUser, local_user

from sandbox_kernel.runtime.errors import UserNamespaceError
from sandbox_kernel.runtime.state import start_time
from sandbox_kernel.runtime.userns_keeper import NAME, run_dir

pytestmark = pytest.mark.root

# As the user: make (or find) the keeper twice, join it in a forked child (single-threaded), change an owner
# there, and report; the keeper is stopped by the test.
_AS_USER = textwrap.dedent("""
    import json, os, sys, tempfile
    from sandbox_kernel.runtime import userns_keeper as k
    first, again = k.ensure(), k.ensure()
    out = {"pid": first.pid, "again": again.pid, "note": first.note, "note again": again.note,
           "uid_map": first.uid_map.split(), "gid_map": first.gid_map.split(), "dir": str(k.run_dir())}
    work = tempfile.mkdtemp(dir=sys.argv[1])
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        k.join(first)
        said = {"ids": [os.getuid(), os.getgid()]}
        with open(os.path.join(work, "f"), "w"):
            pass
        try:
            os.chown(os.path.join(work, "f"), 1000, 1000)
            said["chown"] = "done"
        except OSError as exc:
            said["chown"] = exc.strerror
        os.write(w, json.dumps(said).encode())
        os._exit(0)
    os.close(w)
    out["joined"] = json.loads(os.read(r, 4096))
    os.waitpid(child, 0)
    st = os.stat(os.path.join(work, "f"))
    out["owner on the host"] = [st.st_uid, st.st_gid]
    os.unlink(os.path.join(work, "f")); os.rmdir(work)
    print(json.dumps(out))
""")


def _as(user: LocalUser, scratch: Path, env: dict[str, str] | None = None) -> dict:
    proc = user.popen(_AS_USER, str(scratch), env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def _stop(user: LocalUser, env: dict[str, str] | None = None) -> None:
    proc = user.popen("from sandbox_kernel.runtime import userns_keeper as k; print(k.stop())", env=env)
    out, err = proc.communicate(timeout=60)
    assert out.strip() == "True", err


@pytest.fixture
def scratch():
    """A directory every user may write in (pytest's own are root's alone)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="sk-keeper-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def _wait_gone(pid: int) -> None:
    wait_for(lambda: start_time(pid) is None, what=f"keeper {pid} gone")  # (a zombie counts as gone)


def test_a_user_with_a_range_gets_it_mapped_once_and_joins(scratch):
    with local_user(subids=True) as user:
        start, _ = user.subids
        out = _as(user, scratch)
        try:
            assert out["uid_map"] == ["0", str(user.uid), "1", "1", str(start), "65535"]
            assert out["gid_map"] == ["0", str(user.gid), "1", "1", str(start), "65535"]
            assert out["again"] == out["pid"] and out["note"] is None and out["note again"] is None
            assert out["joined"] == {"ids": [0, 0], "chown": "done"}, "root in there, with ids to give"
            assert out["owner on the host"] == [start + 999, start + 999], "container id 1000 is range id 1000"
            assert Path(f"/proc/{out['pid']}/cmdline").read_bytes().startswith(NAME.encode())
            assert os.stat(f"/proc/{out['pid']}").st_uid == user.uid
            assert out["dir"] == f"/tmp/sandbox-kernel-{user.uid}"
            assert os.stat(out["dir"]).st_mode & 0o777 == 0o700
            # a later call (another process) finds the same keeper: newuidmap runs once per user
            assert _as(user, scratch)["pid"] == out["pid"]
        finally:
            _stop(user)
        _wait_gone(out["pid"])
        Path(out["dir"], "keeper.lock").unlink()
        os.rmdir(out["dir"])


def test_a_user_without_a_range_gets_its_own_id_and_one_sentence(scratch):
    with local_user() as user:
        runtime = scratch / "runtime"
        runtime.mkdir(mode=0o700)
        os.chown(runtime, user.uid, user.gid)
        env = {"XDG_RUNTIME_DIR": str(runtime)}
        out = _as(user, scratch, env)
        try:
            assert out["uid_map"] == ["0", str(user.uid), "1"] and out["gid_map"] == ["0", str(user.gid), "1"]
            assert out["note"].startswith("containers get one id (yours, as root)")
            assert f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user.name}" in out["note"]
            assert out["note again"] is None, "said once, when the namespace is made"
            assert out["joined"] == {"ids": [0, 0], "chown": "Invalid argument"}, "no other id to give"
            assert out["dir"] == str(runtime / "sandbox-kernel")
        finally:
            _stop(user, env)
        _wait_gone(out["pid"])


def test_a_stale_or_foreign_pid_file_is_not_trusted(scratch):
    """keeper.pid naming a process that is not a live keeper of this user (ended, or someone else's: pid 1)
    is ignored: a new keeper is made."""
    with local_user(subids=True) as user:
        directory = Path(f"/tmp/sandbox-kernel-{user.uid}")
        directory.mkdir(mode=0o700)
        os.chown(directory, user.uid, user.gid)
        one = Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19]
        (directory / "keeper.pid").write_text(f"1 {one}\n")
        out = _as(user, scratch)
        try:
            assert out["pid"] != 1 and out["joined"]["ids"] == [0, 0]
        finally:
            _stop(user)
        _wait_gone(out["pid"])
        for name in ("keeper.lock",):
            (directory / name).unlink()
        directory.rmdir()


def test_a_run_directory_not_private_to_the_caller_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sandbox-kernel").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserNamespaceError, match="not a private directory of yours"):
        run_dir()
    (tmp_path / "sandbox-kernel").unlink()
    (tmp_path / "sandbox-kernel").mkdir(mode=0o755)
    (tmp_path / "sandbox-kernel").chmod(0o755)
    with pytest.raises(UserNamespaceError, match="not a private directory of yours"):
        run_dir()
    (tmp_path / "sandbox-kernel").chmod(0o700)
    assert run_dir() == tmp_path / "sandbox-kernel"
