"""The extension loads into IPython and its line magic reads the store."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython


@pytest.fixture(scope="module")
def shell():
    return start_ipython()


@pytest.fixture
def ip(shell, base_store, monkeypatch):
    monkeypatch.setenv("SANDBOX_KERNEL_ROOT", str(base_store.root))
    shell.run_line_magic("load_ext", "sandbox_kernel")
    magics = shell.magics_manager.registry["ContainerMagics"]
    magics._store = None  # pick up this test's store
    return shell


def test_container_images(ip, capsys):
    ip.run_line_magic("container", "images")
    out = capsys.readouterr().out
    assert "localhost/busybox" in out and "REPOSITORY" in out


def test_container_inspect_and_errors(ip, capsys):
    ip.run_line_magic("container", "inspect localhost/busybox")
    assert '"Cmd"' in capsys.readouterr().out
    with pytest.raises(UsageError, match="no such image"):
        ip.run_line_magic("container", "inspect nothere")
    with pytest.raises(UsageError, match="unknown subcommand"):
        ip.run_line_magic("container", "frob")
