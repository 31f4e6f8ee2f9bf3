"""Measuring for a user who is not root: a user made for the run, and workers that time one start or one cell
per request, one working as that user and one as root, with the same Python (tests/localusers.py's: the
system's Python with the package's dependencies, and a copy of the package: the checkout's .venv may be where
another user cannot go), so that the difference between them is the rootless path's and not the interpreter's.

The user is made as the tests make theirs (tests/localusers.py: useradd, a 65536-id range, removed at the end
with every process of it). ``--rootless`` of bench_start.py and bench_cell.py use this.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from localusers import PYTHON, LocalUser, local_user

# One request per line on stdin: "start" (a foreground `run --rm` of `true`, warm slots on as in a kernel; the
# slot the last start left is awaited untimed first, as between two cells), "native" (a `pass` cell), "cell" (a
# `%%container bench` `pass` cell). The answer: seconds, one line.
WORKER = r"""
import os, sys, time
from pathlib import Path
from sandbox_kernel.runtime import Containers, ContainerSpec, Store, launcher, load
store = Store(Path(os.environ["XDG_DATA_HOME"]) / "sandbox-kernel")
for archive in sys.argv[1:]:
    load(store, archive)
containers = Containers(store)
spec = ContainerSpec(image="localhost/busybox:latest", command=("true",), remove=True)
shell = magics = None

def cells():
    global shell, magics
    from IPython.core.interactiveshell import InteractiveShell
    from sandbox_kernel.notebook.magics import ContainerMagics

    class Silent:
        def __init__(self, trusted):
            pass
        def stream(self, name, text):
            pass
        def display(self, data, metadata):
            pass

    shell = InteractiveShell.instance()
    magics = ContainerMagics(shell, store=store)
    magics.sink_factory = Silent
    shell.register_magics(magics)
    shell.run_cell("%%container bench\npass", store_history=False)

def timed(call):
    begin = time.perf_counter()
    call()
    return time.perf_counter() - begin

def start():
    launcher.wait_warm()
    result = containers.run(spec, stdin=None, stdout=None, stderr=None)
    if result.exit_code:
        raise SystemExit(f"true exited {result.exit_code}")

print("ready", flush=True)
for line in sys.stdin:
    request = line.strip()
    if request in ("native", "cell") and shell is None:
        cells()
    if request == "start":
        print(timed(start), flush=True)
    elif request == "native":
        print(timed(lambda: shell.run_cell("pass", store_history=False)), flush=True)
    elif request == "cell":
        print(timed(lambda: shell.run_cell("%%container bench\npass", store_history=False)), flush=True)
    else:
        break
if magics is not None:
    magics.shutdown()
launcher.drop_spare()
"""


class Worker:
    """A worker as ``user`` (None: root) with its own store under ``data``, the images of ``archives`` loaded."""

    def __init__(self, user: LocalUser | None, readable: Path, data: Path, archives: list[Path]):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(readable), "XDG_DATA_HOME": str(data),
               "HOME": str(data)}
        argv = [PYTHON, "-B", "-c", WORKER, *map(str, archives)]
        ids = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                                     env=env, **ids)  # type: ignore[call-overload]
        if self.proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise RuntimeError("the worker did not start (its stderr says why)")

    def ask(self, request: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the worker died on {request!r}")
        return float(answer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def user_and_root_workers(archives: list[Path]) -> Iterator[tuple[Worker, Worker, LocalUser, Path]]:
    """A new user with an id range, a worker as it and one as root (same Python, each its own store), and a
    directory both may read (the archives are copied there); everything goes at the end."""
    top = Path(tempfile.mkdtemp(prefix="sk-bench-users-", dir="/var/tmp"))
    top.chmod(0o755)
    workers: list[Worker] = []
    try:
        shared = []
        for archive in archives:
            shutil.copy(archive, top / archive.name)
            (top / archive.name).chmod(0o644)
            shared.append(top / archive.name)
        with local_user(subids=True) as user:
            data = top / user.name
            data.mkdir(mode=0o700)
            os.chown(data, user.uid, user.gid)
            try:
                workers.append(Worker(user, user.readable, data, shared))
                workers.append(Worker(None, user.readable, top / "root", shared))
                yield workers[0], workers[1], user, top
            finally:
                for worker in workers:
                    worker.close()
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)


class RootlessPodman:
    """``podman run --rm`` as ``user`` (rootless podman: its own storage and run directory under ``top``)."""

    def __init__(self, exe: str, user: LocalUser, top: Path, archive: Path):
        self.user = user
        home, run = top / "podman-home", top / "podman-run"
        for path in (home, run):
            path.mkdir(mode=0o700)
            os.chown(path, user.uid, user.gid)
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_RUNTIME_DIR": str(run)}
        # (runc: crun refuses this machine's hybrid cgroups; rootless on cgroup v1 has no cgroups anyway)
        self.argv = [exe, "--root", str(home / "storage"), "--runroot", str(run / "state"),
                     "--cgroup-manager=cgroupfs", "--runtime=runc", "--events-backend=none"]
        self._call("load", "-i", str(archive))

    def _call(self, *args: str) -> None:
        subprocess.run([*self.argv, *args], user=self.user.uid, group=self.user.gid, extra_groups=[],
                       env=self.env, cwd=self.env["HOME"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run_true(self) -> float:
        begin = time.perf_counter()
        self._call("run", "--rm", "--network=none", "localhost/busybox:latest", "true")
        return time.perf_counter() - begin


def our_cli_as(user: LocalUser, data: Path) -> float:
    """``sandbox-kernel run --rm`` of `true` as ``user`` (the users' Python and the package copy)."""
    code = "import runpy, sys; sys.argv[0] = 'sandbox-kernel'; runpy.run_module('sandbox_kernel', run_name='__main__')"
    begin = time.perf_counter()
    subprocess.run([PYTHON, "-B", "-c", code, "run", "--rm", "localhost/busybox:latest", "true"],
                   user=user.uid, group=user.gid, extra_groups=[], cwd="/", check=True, stdin=subprocess.DEVNULL,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(user.readable), "XDG_DATA_HOME": str(data)})
    return time.perf_counter() - begin
