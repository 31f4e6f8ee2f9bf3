"""Shared fixtures: throwaway stores, the project's own base images, root checks."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from sandbox_kernel.runtime import Store, build

IS_ROOT = os.geteuid() == 0

# IPython's profile (history database), Jupyter's runtime files (kernel connection files): in a
# directory of the run, not under ~, which a test run leaves as it found it. (Set before any test
# imports IPython; kernels and servers the tests start inherit them.)
_RUN_HOME = tempfile.mkdtemp(prefix="sk-test-home-")
atexit.register(shutil.rmtree, _RUN_HOME, ignore_errors=True)
os.environ.setdefault("IPYTHONDIR", os.path.join(_RUN_HOME, "ipython"))
os.environ.setdefault("JUPYTER_RUNTIME_DIR", os.path.join(_RUN_HOME, "jupyter-runtime"))


# A run started in the background of a non-interactive shell (`nohup ... &`, a CI step's `&`) inherits SIGINT
# ignored, and Python then leaves it ignored: Ctrl-C in the interrupt tests would do nothing, in this process and in
# every CLI, kernel and server it starts. As in a terminal: SIGINT raises KeyboardInterrupt (and children get SIG_DFL).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--fuzz", type=int, default=0, metavar="N",
                     help="run the fuzz targets with N fresh random examples each, not their fixed set (fuzzing.py)")
    parser.addoption("--load", action="store_true", default=False,
                     help="run the load tests (test_load.py) at the issue's full sizes, not their small ones")


def pytest_configure(config):
    if config.getoption("--fuzz"):
        from fuzzing import ENV

        os.environ[ENV] = str(config.getoption("--fuzz"))


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root (mounts, device nodes, chown)")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)


def need_tool(name: str) -> str:
    """The path of a peer tool; as root (CI) a missing tool is a failed set-up, not a skip."""
    path = shutil.which(name)
    if path is None:
        if IS_ROOT:
            pytest.fail(f"{name} is missing: scripts/setup.sh should have installed it")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture(scope="session")
def base_store(tmp_path_factory) -> Store:
    """A store holding localhost/busybox (built once, cached under ~/.cache/sandbox-kernel)."""
    store = Store(tmp_path_factory.mktemp("base") / "store")
    build(store, "busybox")
    return store


@pytest.fixture(scope="session")
def debian_store(tmp_path_factory) -> Store:
    """A store holding localhost/debian-python (mmdebstrap on first use, then cached)."""
    if not IS_ROOT and shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed")
    store = Store(tmp_path_factory.mktemp("debian") / "store")
    build(store, "debian-python")
    return store


@pytest.fixture(scope="session")
def science_store(tmp_path_factory) -> Store:
    """localhost/debian-science: python3 with ipykernel, numpy and matplotlib (mmdebstrap, about a minute and a
    half the first time, then cached)."""
    store = Store(tmp_path_factory.mktemp("science") / "store")
    build(store, "debian-science")
    return store


@pytest.fixture(scope="session")
def kernel_store(tmp_path_factory) -> Store:
    """localhost/debian-kernel: python3 and Debian's ipykernel (mmdebstrap once, then cached)."""
    store = Store(tmp_path_factory.mktemp("kernel") / "store")
    build(store, "debian-kernel")
    return store


def busybox_copy(base_store: Store, dest: Path) -> Store:
    """A store of its own at ``dest`` holding localhost/busybox (saved from the session's store, loaded)."""
    from sandbox_kernel.runtime import load, save

    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "busybox.tar"
    save(base_store, ["localhost/busybox:latest"], archive)
    store = Store(dest / "store")
    load(store, archive)
    archive.unlink()
    return store


@pytest.fixture(scope="session")
def root(base_store) -> Path:
    """The store of the container tests (the session's busybox store)."""
    return base_store.root


@pytest.fixture(scope="session", autouse=True)
def no_cgroup_parent_left():
    """The shared sandbox-kernel/ cgroup parents go when the last test container has gone."""
    yield
    if os.geteuid() == 0:
        from sandbox_kernel.runtime.cgroups import remove_empty_parents

        time.sleep(0.2)  # the kernel releases a removed cgroup a moment later
        remove_empty_parents()


@pytest.fixture(scope="session", autouse=True)
def no_container_disk_left(tmp_path_factory):
    """A container disk (runtime/disk.py) that a failed test left mounted under the run's temp dir is
    unmounted at the end, so the run leaves no mount behind (the test that left it has failed already)."""
    yield
    if os.geteuid() != 0:
        return
    from sandbox_kernel.runtime import syscalls

    base = str(tmp_path_factory.getbasetemp())
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        target = line.split()[4].replace("\\040", " ")
        if target.startswith(base + "/") and target.endswith("/disk"):
            try:
                syscalls.umount2(target, syscalls.MNT_DETACH)
            except OSError:
                pass
