"""The extension loads into IPython and its line magic reads the store."""

from __future__ import annotations

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython


@pytest.fixture(scope="module")
def shell():
    return start_ipython() or get_ipython()


@pytest.fixture
def ip(shell, base_store, monkeypatch):
    monkeypatch.setenv("SANDBOX_KERNEL_ROOT", str(base_store.root))
    shell.run_line_magic("load_ext", "sandbox_kernel")
    magics = shell.magics_manager.registry["ContainerMagics"]
    magics._store = None  # pick up this test's store
    return shell


def test_container_images(ip):
    table = ip.run_line_magic("container", "images")
    assert "localhost/busybox" in repr(table) and "REPOSITORY" in repr(table)
    assert "<td>localhost/busybox</td>" in table._repr_html_()


def test_container_inspect_and_errors(ip):
    assert "Cmd" in ip.run_line_magic("container", "inspect localhost/busybox")["Config"]
    with pytest.raises(UsageError, match="no such image"):
        ip.run_line_magic("container", "inspect nothere")
    with pytest.raises(UsageError, match="unknown subcommand"):
        ip.run_line_magic("container", "frob")


def test_network_create_allow_host_is_refused_when_the_admin_turned_host_networking_off(ip, monkeypatch):
    magics = ip.magics_manager.registry["ContainerMagics"]
    monkeypatch.setattr(magics.policy, "allow_host_network", False)
    with pytest.raises(UsageError, match=r"--allow-host is off here \(c.SandboxPolicy.allow_host_network\)"):
        ip.run_line_magic("container", "network create wide --allow-host")
    assert "wide" not in repr(ip.run_line_magic("container", "network ls"))


def test_a_kernel_out_of_file_descriptors_is_told_in_one_sentence(ip, monkeypatch):
    """A kernel holding many containers can run out of fds anywhere in a start (a pipe, a socket, a file of
    the store): the cell says so in one sentence with the limit, never a traceback of an OSError."""
    import errno

    magics = ip.magics_manager.registry["ContainerMagics"]

    def out_of_fds(args):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(magics, "_session", out_of_fds)
    with pytest.raises(UsageError, match=r"^this process has too many files open to start one more container "
                                         r"\(\d+ allowed to this process, `ulimit -n`"):
        ip.run_cell_magic("container", "localhost/busybox", "print(1)")
