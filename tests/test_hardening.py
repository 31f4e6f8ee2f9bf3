"""A hostile container cannot take down the kernel, the server or the host: root-run code stays ours.

What a container writes is read by root (diff, commit); what root runs comes from the package, not
from wherever the caller happens to be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from leftovers import assert_nothing_left, cgroups

from sandbox_kernel.runtime import Containers, ContainerSpec, LayerError, Store
from sandbox_kernel.runtime.image.layers import iter_tree, write_layer

BUSYBOX = "localhost/busybox:latest"


def cli(store_root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(store_root), *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


# -- root-run code stays ours -------------------------------------------------------------------------------

@pytest.mark.root
def test_the_fork_server_runs_the_package_not_what_sits_in_the_callers_directory(root, tmp_path):
    """A kernel whose working directory is a folder others write (a shared notebook folder), or whose
    PYTHONPATH names one: a sandbox_kernel/ planted there is not what root runs as its fork server."""
    planted = tmp_path / "notebooks"
    fake = planted / "sandbox_kernel" / "runtime"
    fake.mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    for package in (planted / "sandbox_kernel", fake):
        (package / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n")
    (fake / "launcher.py").write_text(f"open({str(marker)!r}, 'a').write('launcher\\n')\n")
    caller = textwrap.dedent(f"""
        import sys, threading
        sys.path.remove({str(planted)!r}) if {str(planted)!r} in sys.path else None
        sys.path = [p for p in sys.path if p not in ('', '.')]
        from sandbox_kernel.runtime import Containers, ContainerSpec, Store
        threading.Thread(target=lambda: threading.Event().wait(60), daemon=True).start()  # a threaded caller
        result = Containers(Store({str(root)!r})).run(ContainerSpec(image={BUSYBOX!r}, command=("true",),
                                                                    remove=True), stdin=None)
        print("exit", result.exit_code)
    """)
    before = cgroups()
    proc = subprocess.run([sys.executable, "-c", caller], cwd=planted, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(planted)})
    assert proc.stdout.strip() == "exit 0", proc.stderr
    assert not marker.exists(), f"root ran planted code: {marker.read_text()!r}"
    assert_nothing_left(root, before)


# -- diff and commit read what a container wrote, safely -----------------------------------------------------

def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path):
    """A running container swaps a directory of its upper dir for a symlink to a host directory while root
    walks it: the walk fails there instead of listing (or reading) the host's files."""
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / "f").write_text("the container's\n")
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("the host's\n")
    walk = iter_tree(upper)
    assert next(walk)[0] == "d"  # listed as a directory; its entries come next
    shutil.rmtree(upper / "d")
    (upper / "d").symlink_to(host)
    with pytest.raises(OSError, match=r"symbolic links|Not a directory"):
        list(walk)
    (upper / "d").unlink()
    (upper / "d").mkdir()
    (upper / "d" / "f").symlink_to(host / "secret")  # a symlink as the file itself: written as a symlink
    with open(tmp_path / "layer.tar", "wb") as out:
        write_layer(upper, out, compression="none")
    import tarfile

    with tarfile.open(tmp_path / "layer.tar") as tf:
        member = tf.getmember("d/f")
    assert member.issym() and member.linkname == str(host / "secret")


def test_a_tree_past_what_a_layer_may_hold_is_refused_before_anything_is_written(tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    with open(upper / "sparse", "wb") as fh:
        fh.truncate(15 << 40)  # 15 TiB that take no room: a commit would read them all
    out = tmp_path / "layer.tar"
    with open(out, "wb") as fh, pytest.raises(LayerError, match=r"'sparse': more than 64 GiB of files .*\[bytes\]"):
        write_layer(upper, fh, compression="none")
    assert out.stat().st_size == 0


@pytest.mark.root
def test_commit_of_a_container_with_a_huge_sparse_file_is_one_clear_error(root, tmp_path):
    before = cgroups()
    cli(root, "run", "--name", "sparse", BUSYBOX, "truncate", "-s", str(15 << 40), "/big")
    try:
        proc = cli(root, "commit", "sparse", "localhost/sparse:1", check=False)
        assert proc.returncode == 1 and proc.stderr.startswith(
            "sandbox-kernel: error: cannot commit container sparse: layer entry 'big': more than 64 GiB of files"), \
            proc.stderr
        assert proc.stderr.count("\n") == 1
        assert cli(root, "images", "-q", check=False).stdout.count("\n") >= 1
        assert "localhost/sparse" not in cli(root, "images").stdout
    finally:
        cli(root, "rm", "-f", "sparse")
    assert_nothing_left(root, before)


@pytest.mark.root
def test_diff_freezes_a_running_container_as_commit_does(root):
    containers = Containers(Store(root), warm_slots=False)
    cid = containers.run_detached(ContainerSpec(image=BUSYBOX, command=("sh", "-c", "touch /made; sleep 300"),
                                                remove=True))
    calls: list[str] = []
    pause, resume = containers.pause, containers.resume
    containers.pause = lambda ref: (calls.append("pause"), pause(ref))[1]  # type: ignore[method-assign]
    containers.resume = lambda ref: (calls.append("resume"), resume(ref))[1]  # type: ignore[method-assign]
    try:
        for _ in range(100):
            changes = [str(c) for c in containers.diff(cid)]
            if "A /made" in changes:
                break
        assert "A /made" in changes
        assert calls[:2] == ["pause", "resume"] and containers.get(cid).state.status == "running"
    finally:
        containers.remove(cid, force=True)
