"""Local users that a test makes (useradd), with a copy of the package they can read: the checkout (and its
.venv) may be under a directory other users cannot enter, so their Python is a venv of the system's Python
with the package's dependencies that scripts/setup.sh makes readable by everyone (USERS_VENV), the copy on
PYTHONPATH. Removed at the end, with their /etc/subuid and /etc/subgid ranges."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from leftovers import wait_for

PACKAGE = Path(__file__).resolve().parents[1] / "sandbox_kernel"
# The users' Python: a venv of the system's Python with the package's dependencies, readable by everyone
# (scripts/setup.sh makes it: the checkout's .venv may be where they cannot go); else the system's Python.
USERS_VENV = Path("/var/cache/sandbox-kernel/users-venv")
PYTHON = str(USERS_VENV / "bin" / "python") if (USERS_VENV / "bin" / "python").exists() else "/usr/bin/python3"


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    readable: Path  # holds sandbox_kernel/ (a copy), readable by the user
    subids: tuple[int, int] | None  # (start, count) in /etc/subuid and /etc/subgid

    def popen(self, code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """``python3 -c code args`` as this user (no other groups), text pipes on stdin, stdout and stderr."""
        return subprocess.Popen([PYTHON, "-B", "-c", code, *args], user=self.uid, group=self.gid,
                                extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/",
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.readable), **(env or {})})


def kill_processes_of(uid: int) -> None:
    """SIGKILL every process whose real uid is ``uid``, and wait until none is left."""
    deadline = time.monotonic() + 30
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    status = (entry / "status").read_text()
                    state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
                    real = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
                    if real == uid and state not in ("Z", "X"):
                        found.append(int(entry.name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert time.monotonic() < deadline, f"processes of uid {uid} left: {found}"
        time.sleep(0.01)


def _dist_info(where: Path) -> None:
    """The copy's metadata, as an install writes it: its entry points (jupyter_client finds the sandboxed
    kernel's provisioner through them), read from pyproject.toml."""
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    info = where / f"sandbox_kernel-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items()) + "\n"
        for group, entries in project.get("entry-points", {}).items()))
    for path in (info, info / "METADATA", info / "entry_points.txt"):
        path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def local_user(subids: bool = False) -> Iterator[LocalUser]:
    """A new system user (no home, no login), with a free 65536-id range when ``subids``."""
    from sandbox_kernel.runtime.idmap import SIZE, _free_start

    name = f"sk-user-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    readable = Path(tempfile.mkdtemp(prefix="sk-user-"))
    entry = pwd.getpwnam(name)
    try:
        ranges = None
        if subids:
            start = _free_start()
            span = f"{start}-{start + SIZE - 1}"
            given = subprocess.run(["usermod", "--add-subuids", span, "--add-subgids", span, name],
                                   capture_output=True, text=True)
            assert given.returncode == 0, given.stderr
            ranges = (start, SIZE)
        readable.chmod(0o755)
        shutil.copytree(PACKAGE, readable / "sandbox_kernel", ignore=shutil.ignore_patterns("__pycache__"))
        _dist_info(readable)
        yield LocalUser(name, entry.pw_uid, entry.pw_gid, readable, ranges)
    finally:
        kill_processes_of(entry.pw_uid)  # (a failed test's: every process of this new user is the test's)
        shutil.rmtree(readable, ignore_errors=True)
        shutil.rmtree(f"/tmp/sandbox-kernel-{entry.pw_uid}", ignore_errors=True)  # its default run directory
        subprocess.run(["userdel", name], check=False, capture_output=True)
        for path in ("/etc/subuid", "/etc/subgid"):  # (userdel removes them; a failed run must not leave one)
            text = Path(path).read_text()
            if f"{name}:" in text:
                Path(path).write_text("".join(line for line in text.splitlines(True)
                                              if not line.startswith(f"{name}:")))


class Delegatee:
    """A local user the test makes (tests/localusers.py). ``delegate()`` gives it a subtree: on v1 with
    ``sandbox-kernel system delegate``, on v2 as the kernel's documentation says an admin does (``sk-user-*``:
    the directory and its cgroup.procs, cgroup.subtree_control and cgroup.threads are the user's, its own limits
    stay root's, and a leaf in it for the user's processes). Everything goes at the end."""

    def __init__(self, hierarchy, user: LocalUser):
        self.hierarchy, self.user, self.name = hierarchy, user, user.name
        self.v2_top = hierarchy.v2 / user.name if hierarchy.driver == "v2" else None

    def delegate(self) -> Path | None:
        """Give the user its subtree; the leaf its processes must start in (v2), or None."""
        if self.v2_top is None:
            done = subprocess.run([sys.executable, "-m", "sandbox_kernel", "system", "delegate", self.name],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            assert done.returncode == 0 and done.stdout.startswith("Made "), done.stderr
            return None
        v2 = self.hierarchy.v2
        enabled = (v2 / "cgroup.subtree_control").read_text().split()
        missing = [c for c in ("memory", "cpu", "pids") if c not in enabled]
        if missing:
            (v2 / "cgroup.subtree_control").write_text(" ".join("+" + c for c in missing))
        top = self.v2_top
        top.mkdir()
        for entry in (top, top / "cgroup.procs", top / "cgroup.subtree_control", top / "cgroup.threads"):
            os.chown(entry, self.user.uid, self.user.gid)
        (top / "home").mkdir()
        return top / "home"

    def subtrees(self) -> list[Path]:
        if self.v2_top is not None:
            return [self.v2_top]
        mounts = dict.fromkeys(m for c, m in self.hierarchy.v1.items() if c != "devices")  # (root's to write)
        return [m / "sandbox-kernel-users" / str(self.user.uid) for m in mounts]

    def clean(self) -> None:
        """Kill what the user left in its subtrees (a failed test), then remove them."""
        from sandbox_kernel.runtime.delegation import delegate

        for top in self.subtrees():
            trees = sorted(top.glob("**/"), key=lambda p: len(p.parts), reverse=True) if top.exists() else []
            for path in trees:
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                wait_for(lambda path=path: not (path / "cgroup.procs").read_text().split(), what=f"{path} empty")
            if self.v2_top is not None:
                for path in trees:
                    path.rmdir()
        if self.v2_top is None:
            delegate(self.name, remove=True, hierarchy=self.hierarchy)
