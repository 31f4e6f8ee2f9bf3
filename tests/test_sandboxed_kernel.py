"""The sandboxed kernel: a real jupyter_client KernelManager starts ipykernel in a container of our runtime.

Start, execute, interrupt, restart (new container; or the same with keep_files), shutdown, an OOM kill explained on
the next cell, a manager killed with SIGKILL and the next start's clean-up, no network, the container's own ids and
pid namespace; and `sandbox-kernel kernelspec install|list|remove`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager
from leftovers import wait_for

from sandbox_kernel.cli import main as cli_main
from sandbox_kernel.kernel import kernelspec
from sandbox_kernel.kernel.provisioner import KERNEL_LABEL, SandboxProvisioner
from sandbox_kernel.owners import owner_id
from sandbox_kernel.runtime import Containers, Store

pytestmark = pytest.mark.root

IMAGE = "localhost/debian-kernel:latest"


@pytest.fixture
def kernels(kernel_store, tmp_path, monkeypatch):
    """Install a sandboxed kernelspec (in a prefix of the test's) and make KernelManagers for it; each is shut
    down at the end, and no kernel container is left."""
    monkeypatch.setenv("SANDBOX_KERNEL_ROOT", str(kernel_store.root))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    made: list[KernelManager] = []

    def make(name: str = "sandbox", **settings) -> KernelManager:
        config = kernelspec.settings(IMAGE, **settings)
        kernelspec.install(name, config, prefix=str(tmp_path))
        km = KernelManager(kernel_name=name)
        made.append(km)
        return km

    yield make
    for km in made:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    left = [c.id for c in Containers(kernel_store).list(all=True) if KERNEL_LABEL in dict(c.spec.labels)]
    assert not left, f"kernel containers left: {left}"


def execute(km: KernelManager, code: str, timeout: float = 60) -> tuple[dict, str, str]:
    """Run ``code``; its reply's content, its stdout and its stderr."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                out[msg["content"]["name"]].append(msg["content"]["text"])

        reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        return reply["content"], "".join(out["stdout"]), "".join(out["stderr"])
    finally:
        kc.stop_channels()


def container_of(km: KernelManager, store: Store):
    return Containers(store).get(km.provisioner.container)


def test_the_kernel_runs_in_its_container_with_no_network(kernels, kernel_store, tmp_path):
    km = kernels()
    notebooks = tmp_path / "notebooks"  # a user's folder (nobody's here): the kernel writes there as its owner
    notebooks.mkdir()
    (notebooks / "data.txt").write_text("from the notebook's folder\n")
    for path in (notebooks, notebooks / "data.txt"):
        os.chown(path, 65534, 65534)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        km.start_kernel(cwd=str(notebooks))
        reply, out, _ = execute(km, textwrap.dedent(f"""
            import os, socket
            print(os.getuid(), os.getpid(), os.getcwd(), open("data.txt").read().strip())
            open("result.txt", "w").write("written")
            try:
                socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=5)
                print("connected")
            except OSError as exc:
                print("refused", exc.errno)
            print(sorted(os.listdir("/sys/class/net")))
        """))
    finally:
        listener.close()
    assert reply["status"] == "ok", reply
    first, second, interfaces = out.splitlines()
    assert first == "0 2 /work from the notebook's folder"  # root of its namespace, PID 2 under the runtime's init
    assert second.startswith("refused") and interfaces == "['lo']"
    assert (notebooks / "result.txt").stat().st_uid == 65534
    info = container_of(km, kernel_store)
    assert info.spec.network.mode == "none"
    # on the host, the kernel (PID 1's child) is an unprivileged id of the container range, not root
    children = Path(f"/proc/{info.state.pid}/task/{info.state.pid}/children").read_text().split()
    uid = int(Path(f"/proc/{children[0]}/status").read_text().split("Uid:")[1].split()[0])
    assert uid >= 100000
    # nothing of the server's environment reached it (JupyterHub's token lives there)
    assert all(key in ("JPY_SESSION_NAME", "PYDEVD_DISABLE_FILE_VALIDATION") for key, _ in info.spec.env)


def test_interrupt_restart_and_shutdown(kernels, kernel_store):
    km = kernels()
    km.start_kernel()
    first = km.provisioner.container
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute("import time; x = 1; time.sleep(120)")
        wait_for(lambda: _busy(kc, msg_id), what="the cell to start")
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()
    assert execute(km, "open('/tmp/mark', 'w').write('x'); print(x)")[1] == "1\n"
    km.restart_kernel(now=True)
    assert km.provisioner.container != first  # a new container from the image: variables and files are gone
    assert not _exists(kernel_store, first)
    reply, _, _ = execute(km, "import os; print(os.path.exists('/tmp/mark')); x")
    assert reply["ename"] == "NameError"
    second = km.provisioner.container
    directory = km.provisioner.directory
    km.shutdown_kernel()
    assert not _exists(kernel_store, second) and not directory.exists()


def test_keep_files_restarts_the_same_container(kernels, kernel_store):
    km = kernels(keep_files=True)
    km.start_kernel()
    first = km.provisioner.container
    execute(km, "open('/root/kept', 'w').write('still here')")
    km.restart_kernel(now=True)
    assert km.provisioner.container == first
    assert execute(km, "print(open('/root/kept').read())")[1] == "still here\n"


def test_an_oom_kill_is_explained_on_the_next_cell(kernels, kernel_store):
    km = kernels(memory="64m")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.execute("hog = bytearray(256 << 20)")
        wait_for(lambda: not km.is_alive(), timeout=60, what="the kernel to be killed")
    finally:
        kc.stop_channels()
    assert km.provisioner.death == "The kernel ran out of memory (its container's limit is 64 MiB) and the kernel's " \
                                   "OOM killer ended it."
    km.restart_kernel(now=True)
    reply, out, err = execute(km, "print('after')")
    assert reply["status"] == "ok" and out == "after\n"
    assert err.strip() == ("The kernel ran out of memory (its container's limit is 64 MiB) and the kernel's OOM "
                           "killer ended it. It was restarted: variables are lost.")
    assert execute(km, "print('again')")[2] == ""  # said once


def test_a_killed_manager_leaves_nothing_the_next_start_does_not_remove(kernels, kernel_store, tmp_path):
    kernels()  # (the kernelspec)
    script = textwrap.dedent("""
        import sys, time
        from jupyter_client.manager import KernelManager
        km = KernelManager(kernel_name="sandbox")
        km.start_kernel()
        print(km.provisioner.container, km.provisioner.directory, flush=True)
        time.sleep(300)
    """)
    manager = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        left, directory = manager.stdout.readline().split()
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait()
    info = Containers(kernel_store).get(left)
    assert info.running and Path(directory).is_dir()  # the kernel outlives its manager, for now
    pid1 = info.state.pid
    # a kernel that another (live) server is starting right now has a directory and no container yet: kept
    starting = kernel_store.root / "kernels" / "0123456789ab"
    starting.mkdir()
    starting.with_name("0123456789ab.owner").write_text(owner_id())
    km = kernels()
    km.start_kernel()
    assert not _exists(kernel_store, left) and not Path(directory).exists()
    assert not Path(directory + ".owner").exists() and starting.is_dir()
    assert not Path(f"/proc/{pid1}").exists()
    starting.rmdir()
    starting.with_name("0123456789ab.owner").unlink()
    assert execute(km, "print(1 + 1)")[1] == "2\n"


def test_the_kernelspec_cli(kernel_store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    assert cli_main(["kernelspec", "install", "py-sandbox", "--image", IMAGE, "--memory", "512m", "--cpus", "1",
                     "--pids-limit", "100", "--display-name", "Python 3 (sandbox)", "--prefix", str(tmp_path)]) == 0
    spec = json.loads((tmp_path / "share/jupyter/kernels/py-sandbox/kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (sandbox)" and spec["interrupt_mode"] == "signal"
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "sandbox-kernel",
        "config": {"image": IMAGE, "memory": "512m", "cpus": 1.0, "pids_limit": 100}}
    capsys.readouterr()
    assert cli_main(["kernelspec", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["py-sandbox"]["image"] == IMAGE
    assert cli_main(["kernelspec", "install", "bad", "--image", IMAGE, "--memory", "lots",
                     "--prefix", str(tmp_path)]) != 0
    assert "--memory" in capsys.readouterr().err and not (tmp_path / "share/jupyter/kernels/bad").exists()
    assert cli_main(["kernelspec", "remove", "py-sandbox"]) == 0
    assert not (tmp_path / "share/jupyter/kernels/py-sandbox").exists()
    assert cli_main(["kernelspec", "remove", "py-sandbox"]) != 0
    assert "no kernelspec named 'py-sandbox'" in capsys.readouterr().err


def test_an_unknown_setting_in_the_kernelspec_is_refused():
    with pytest.raises(ValueError, match=r"unknown setting 'memroy'.*known: .*memory"):
        SandboxProvisioner(kernel_id="x", kernel_spec=None, memroy="1g")


def _busy(kc, msg_id: str) -> bool:
    try:
        msg = kc.get_iopub_msg(timeout=0.5)
    except Exception:
        return False
    return msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input"


def _exists(store: Store, cid: str) -> bool:
    return any(c.id == cid for c in Containers(store).list(all=True))


def test_nbclient_and_nbconvert_run_a_notebook_with_magics_and_plots(science_store, tmp_path, monkeypatch):
    """A notebook in the sandboxed kernel of debian-science, as nbclient (nbval, nbgrader) and `jupyter nbconvert
    --execute` run it: %matplotlib inline and a plot, %timeit, !cmd, numpy; an error keeps its own name."""
    import nbclient
    import nbformat

    monkeypatch.setenv("SANDBOX_KERNEL_ROOT", str(science_store.root))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    kernelspec.install("science", kernelspec.settings("localhost/debian-science:latest"), prefix=str(tmp_path))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "science", "display_name": "science",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(source) for source in (
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 4, 9]);",
        "%timeit -n 1 -r 1 sum(range(10))",
        "!echo from the shell",
        "import numpy as np\nnp.arange(4).sum()",
        "import not_in_the_image",
    )]
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    ran = nbclient.NotebookClient(nb, timeout=120, allow_errors=True,
                                  resources={"metadata": {"path": str(tmp_path)}}).execute()
    plot, timing, shell, value, error = (cell.outputs for cell in ran.cells)
    assert any("image/png" in out.get("data", {}) for out in plot)
    assert "per loop" in timing[0]["text"] and shell[0]["text"].splitlines() == ["from the shell"]  # (a pty: \\r\\n)
    assert value[0]["data"]["text/plain"] == "6"
    assert error[0]["ename"] == "ModuleNotFoundError"
    nb.cells.pop()  # (nbconvert stops at an error)
    nbformat.write(nb, path)
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "notebook",
                           "--output", "done.ipynb", str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    converted = nbformat.read(tmp_path / "done.ipynb", as_version=4)
    assert any("image/png" in out.get("data", {}) for out in converted.cells[0].outputs)
    assert not [c for c in Containers(science_store).list(all=True) if KERNEL_LABEL in dict(c.spec.labels)]
