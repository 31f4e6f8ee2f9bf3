"""The teaching notebooks reproduce their stored outputs (nbval), and the README's main job runs the quickstart."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from sandbox_kernel.runtime import Containers, Store, build

pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture
def fresh_store(tmp_path) -> Store:
    store = Store(tmp_path / "store")
    build(store, "busybox")
    build(store, "debian-python")
    return store


def test_the_notebooks_are_there_and_say_what_ran():
    names = [path.name for path in NOTEBOOKS]
    assert names == ["01-quickstart.ipynb", "02-namespaces.ipynb", "03-cgroups.ipynb",
                     "04-layers-and-snapshots.ipynb", "05-networks.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        images = nb.metadata["sandbox_kernel"]["images"]
        assert images and all(digest.startswith("sha256:") for digest in images.values()), path.name
        assert all(cell.outputs or cell.source.startswith(("%load_ext", "%%container cg --memory", "import shutil"))
                   for cell in nb.cells if cell.cell_type == "code"), f"{path.name} has cells without stored output"


@pytest.fixture
def host_netns():
    """A network namespace standing in for the host in 05-networks (its bridges never touch the real host)."""
    from pyroute2 import IPRoute, netns

    name = f"sk-test-nb-{uuid.uuid4().hex[:8]}"
    before = set(os.listdir("/sys/class/net"))
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        netns.remove(name)
    assert set(os.listdir("/sys/class/net")) == before


def test_notebooks_reproduce_their_outputs_with_nbval(fresh_store, host_netns):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", *map(str, NOTEBOOKS), "-q", "-p", "no:cacheprovider"],
        cwd=REPO, env={**os.environ, "SANDBOX_KERNEL_ROOT": str(fresh_store.root), "SANDBOX_KERNEL_NETNS": host_netns},
        capture_output=True, text=True, check=False, timeout=800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    # nbval kills each kernel when its notebook ends (no atexit): the containers died with it, and the
    # next kernel that loads the extension removes them
    assert not [info.name for info in Containers(fresh_store).list(all=True) if info.running]
    from sandbox_kernel.notebook.magics import ContainerMagics

    assert ContainerMagics(None, store=fresh_store).containers.list(all=True) == []


def test_the_main_job_runs_the_quickstart(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SANDBOX_KERNEL_ROOT": str(tmp_path / "store"), "SANDBOX_KERNEL_OUT": str(out)}
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False, timeout=800, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    executed = nbformat.read(out / "01-quickstart.ipynb", as_version=4)
    errors = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert errors == []
    assert (out / "01-quickstart.html").read_text().count("made in a notebook cell") >= 1
    assert "snapshot localhost/quickstart:1: sha256:" in proc.stdout
    assert "localhost/debian-python:latest" in executed.metadata["sandbox_kernel"]["images"]
    assert Containers(Store(tmp_path / "store")).list(all=True) == []
