"""Containers of users who are not root, run by users the tests make (useradd, /etc/subuid ranges).

Each test runs a script as such a user (tests/localusers.py: a Python environment every user can read, with a
copy of the package) that drives the runtime's API in its own store and prints what it saw as JSON; the test
then looks from outside, as root: who owns what on the host, what is left. Root made the base images; the
users load them from an archive anyone may read.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from leftovers import mounts_under
from localusers import PYTHON, Delegatee, LocalUser, local_user

from sandbox_kernel.runtime import save
from sandbox_kernel.runtime.cgroups import discover

pytestmark = pytest.mark.root

# Every script waits for one line on stdin (so that root can first put it in a delegated cgroup v2), then
# works on its own store with `containers` and leaves what it saw in `out`, printed as JSON at the end.
PREAMBLE = """
import json, os, sys
sys.stdin.readline()
from pathlib import Path
from sandbox_kernel.runtime import Containers, ContainerSpec, Limits, Store, load
from sandbox_kernel.runtime.errors import SandboxError
store = Store(Path(os.environ["XDG_DATA_HOME"]) / "sandbox-kernel")
containers = Containers(store, warm_slots=False)
out = {}

def run(image, *argv, **options):
    chunks = []
    result = containers.run(ContainerSpec(image=image, command=argv, remove=True, **options), stdin=None,
                            stdout=chunks.append, stderr=chunks.append)
    return result.exit_code, b"".join(chunks).decode()

def listing(store, digest):
    import tarfile
    with tarfile.open(store.blob_path(digest)) as tf:
        return [f"{m.name} {m.type!r} {m.uid}:{m.gid} {oct(m.mode)} {m.mtime} {m.size} {m.linkname} {m.pax_headers}"
                for m in tf]

def refusal(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except SandboxError as exc:
        return str(exc)
    return None
"""
EPILOGUE = "\nprint(json.dumps(out))\n"

# The same changes, rootless and as root: a directory of another owner, a removed file (a whiteout), a
# directory of the image removed and made again (opaque), a symlink.
STEPS = ("mkdir -p /data/sub && echo x > /data/sub/f && chown -R 1000:1000 /data && chmod 700 /data/sub && "
         "rm /bin/ls && rm -rf /home && mkdir /home && echo y > /home/y && ln -s /data/sub/f /link")


@dataclass(frozen=True)
class Home:
    """A user and the data directory its store goes in."""

    user: LocalUser
    data: Path

    def run(self, script: str, *args: str, leaf: Path | None = None, timeout: float = 300) -> dict:
        """PREAMBLE + ``script`` as the user (in the cgroup ``leaf`` first, if given); the JSON it printed."""
        proc = self.user.popen(PREAMBLE + script + EPILOGUE, *args, env={"XDG_DATA_HOME": str(self.data)})
        if leaf is not None:
            (leaf / "cgroup.procs").write_text(str(proc.pid))
        out, err = proc.communicate("go\n", timeout=timeout)
        assert proc.returncode == 0, err
        return json.loads(out.splitlines()[-1]) | {"stderr": err}

    @property
    def store(self) -> Path:
        return self.data / "sandbox-kernel"


@pytest.fixture(scope="module")
def archives(base_store, debian_store, kernel_store) -> Iterator[Path]:
    """busybox, debian-python and debian-kernel as archives every user may read, in a directory every user may
    enter."""
    top = Path(tempfile.mkdtemp(prefix="sk-rootless-"))
    top.chmod(0o755)
    try:
        save(base_store, ["localhost/busybox:latest"], top / "busybox.tar")
        save(debian_store, ["localhost/debian-python:latest"], top / "debian.tar")
        save(kernel_store, ["localhost/debian-kernel:latest"], top / "kernel.tar")
        for name in ("busybox.tar", "debian.tar", "kernel.tar"):
            (top / name).chmod(0o644)
        yield top
    finally:
        shutil.rmtree(top)


def _home(user: LocalUser, top: Path) -> Home:
    data = top / user.name
    data.mkdir(mode=0o700)
    os.chown(data, user.uid, user.gid)
    return Home(user, data)


def _load(home: Home, archives: Path, *names: str) -> None:
    home.run("for name in sys.argv[1:]: load(store, name)", *(str(archives / n) for n in names))


@pytest.fixture
def home(archives) -> Iterator[Home]:
    """A user with a 65536-id range, busybox loaded; at the end nothing of its containers is left."""
    with local_user(subids=True) as user:
        home = _home(user, archives)
        try:
            _load(home, archives, "busybox.tar")
            yield home
            assert mounts_under(home.data) == [], "no mount of a container is left"
        finally:
            shutil.rmtree(home.data, ignore_errors=True)  # (as root: files of the user's range too)


def _host_owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_a_user_runs_execs_stops_and_removes_containers_in_its_own_namespace(home):
    start = home.user.subids[0]
    proc = home.user.popen(PREAMBLE + """
out["run"] = run("localhost/busybox", "sh", "-c", "id -u; cat /proc/self/uid_map")
cid = containers.run_detached(ContainerSpec(image="localhost/busybox", name="c1",
                                            command=("sh", "-c", sys.argv[1] + " && sleep 1000")))
chunks = []
out["exec"] = containers.exec("c1", ["sh", "-c", "id; ls -ln /data"], stdin=None, stdout=chunks.append)
out["exec_out"] = b"".join(chunks).decode()
out["pid1"] = containers.get("c1").state.pid
out["dir"] = str(containers.root / cid)
print(json.dumps(out), flush=True)
sys.stdin.readline()  # root looks at the running container meanwhile
out = {"stopped": containers.stop("c1", timeout=1).exit_code}
containers.remove("c1")
out["left"] = [c.name for c in containers.list(all=True)] + [p.name for p in containers.root.iterdir()
                                                               if p.name != "names"]
""" + EPILOGUE, STEPS, env={"XDG_DATA_HOME": str(home.data)})
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        code, text = first["run"]
        assert code == 0 and text.split() == ["0", "0", str(home.user.uid), "1", "1", str(start), "65535"]
        assert first["exec"] == 0 and first["exec_out"].startswith("uid=0(root) gid=0(root)")
        assert "drwx------    2 1000     1000" in first["exec_out"]
        # on the host: the container's root is the user, its uid 1000 is the range's, nothing is host root's
        upper = Path(first["dir"]) / "upper"
        assert _host_owner(upper / "data" / "sub" / "f") == (start + 999, start + 999)
        status = Path(f"/proc/{first['pid1']}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(home.user.uid)}, "PID 1 runs as the user on the host"
        assert mounts_under(home.data) == [], "its rootfs is mounted in its own namespace, not the host's"
        out, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0, err
        second = json.loads(out)
        assert second["stopped"] in (137, 143) and second["left"] == []
        assert not Path(first["dir"]).exists(), "removed, files of the range's ids included"
    finally:
        proc.kill()
        proc.wait()


_COMMIT = """
load(store, sys.argv[2])
containers.run(ContainerSpec(image="localhost/busybox", name="s", command=("sh", "-c", sys.argv[1])), stdin=None,
               stdout=None, stderr=None)
out["diff"] = sorted(str(c) for c in containers.diff("s"))
image = containers.commit("s", "localhost/snap:1")
out["layer"], out["diff_id"] = image.layers[-1]["digest"], image.diff_ids[-1]
out["listing"] = listing(store, out["layer"])
containers.remove("s")
out["run"] = run("localhost/snap:1", "sh", "-c", "ls -ln /data/sub/f; cat /home/y; ls /home; ls /bin/ls || true")
"""


def test_a_threaded_caller_a_kernel_gets_the_same_through_its_fork_server(home):
    """A caller with threads (a kernel, the Jupyter server) cannot fork Python safely: monitors, execs,
    proxies and the helpers of inside.py all come from its fork server, which is in the user's namespace
    (exec joins PID 1's namespaces without joining the user namespace again there)."""
    out = home.run("""
import threading
threading.Thread(target=threading.Event().wait, daemon=True).start()  # (a kernel has threads)
from sandbox_kernel.runtime import launcher
assert not launcher.single_threaded()
out["run"] = run("localhost/busybox", "id", "-u")
busy = ("sh", "-c", sys.argv[1] + " && sleep 1000")
containers.run_detached(ContainerSpec(image="localhost/busybox", name="t", command=busy))
chunks = []
out["exec"] = containers.exec("t", ["sh", "-c", "id -u; ls -ln /data"], stdin=None, stdout=chunks.append)
out["exec_out"] = b"".join(chunks).decode()
out["diff"] = sorted(str(c) for c in containers.diff("t"))
out["commit"] = containers.commit("t", "localhost/t:1").id
containers.remove("t", force=True)
out["again"] = run("localhost/t:1", "sh", "-c", "ls -ln /data/sub/f")
out["left"] = [c.name for c in containers.list(all=True)]
""", STEPS)
    assert out["run"] == [0, "0\n"] and out["exec"] == 0
    assert out["exec_out"].startswith("0\n") and "1000     1000" in out["exec_out"]
    assert "A /data/sub/f" in out["diff"] and out["commit"].startswith("sha256:")
    assert out["again"][0] == 0 and "1000     1000" in out["again"][1] and out["left"] == []


def test_cp_in_and_out_of_a_running_and_a_stopped_container(home):
    """cp works in the user's namespace: through a running container's PID 1, and through a stopped one's
    overlay mounted in a mount namespace of the user's own (userxattr). Copies out are the user's files."""
    out = home.run("""
here = Path(os.environ["XDG_DATA_HOME"])
(here / "in.txt").write_text("from the host\\n")
cid = containers.run_detached(ContainerSpec(image="localhost/busybox", name="c", command=("sh", "-c",
    "echo mine > /mine && chown 1000:1000 /mine && chmod 600 /mine && sleep 1000")))
import time
deadline = time.monotonic() + 30
while containers.exec("c", ["test", "-e", "/mine"], stdin=None, stdout=None, stderr=None):
    assert time.monotonic() < deadline
    time.sleep(0.05)
out["in_running"] = containers.copy_to("c", here / "in.txt", "/in.txt").files
out["out_running"] = containers.copy_from("c", "/mine", here / "mine.txt").files
containers.stop("c", timeout=1)
out["in_stopped"] = containers.copy_to("c", here / "in.txt", "/in2.txt", keep_owners=True).files
out["out_stopped"] = containers.copy_from("c", "/in2.txt", here / "back.txt").files
containers.start("c")
chunks = []
containers.exec("c", ["ls", "-ln", "/in.txt", "/in2.txt", "/mine"], stdin=None, stdout=chunks.append)
out["listing"] = b"".join(chunks).decode()
containers.remove("c", force=True)
out["dir"] = str(containers.root / cid)
""")
    assert [out[k] for k in ("in_running", "out_running", "in_stopped", "out_stopped")] == [1, 1, 1, 1]
    for name, text in (("mine.txt", "mine\n"), ("back.txt", "from the host\n")):
        assert (home.data / name).read_text() == text
        assert _host_owner(home.data / name) == (home.user.uid, home.user.gid), "a copy out is the user's"
    lines = {line.split()[-1]: line.split()[2:4] for line in out["listing"].splitlines()}
    # copies in are the container's root's; -a keeps the owner the file has (the user: root inside)
    assert lines == {"/in.txt": ["0", "0"], "/in2.txt": ["0", "0"], "/mine": ["1000", "1000"]}, out["listing"]
    assert not Path(out["dir"]).exists()


def test_a_commit_gives_the_same_layer_rootless_and_as_root(home, archives, tmp_path):
    """The same steps from the same image make the same layer digest in a user's namespace (userxattr
    overlay, whiteouts and opaque directories in the forms the kernel makes there) and as root (with its id
    range: the upper dir holds host ids, mapped back). Both run the same Python: gzip's bytes are zlib's."""
    rootless = home.run(_COMMIT, STEPS, str(archives / "busybox.tar"))
    proc = subprocess.run([PYTHON, "-B", "-c", PREAMBLE + _COMMIT + EPILOGUE, STEPS,
                           str(archives / "busybox.tar")], input="go\n", capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(home.user.readable),
                               "XDG_DATA_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    root = json.loads(proc.stdout.splitlines()[-1])
    for out in (rootless, root):
        code, text = out["run"]
        assert code == 0 and "1000     1000" in text and "\ny\ny\nls: /bin/ls: No such file" in text, text
        assert {"D /bin/ls", "A /data/sub/f", "A /home/y", "A /link"} <= set(out["diff"])
    assert rootless["diff"] == root["diff"] and rootless["listing"] == root["listing"]
    assert (rootless["diff_id"], rootless["layer"]) == (root["diff_id"], root["layer"])


def test_a_user_with_no_id_range_gets_its_own_id_alone_and_is_told_once(archives):
    with local_user() as user:
        home = _home(user, archives)
        try:
            _load(home, archives, "debian.tar")
            out = home.run("""
out["first"] = run("localhost/debian-python", "sh", "-c", "id -u; cat /proc/self/uid_map; ls -ln /etc/shadow")
out["user"] = refusal(containers.create, ContainerSpec(image="localhost/debian-python", user="nobody"))
""")
            again = home.run("""out["again"] = run("localhost/debian-python", "true")""")
        finally:
            shutil.rmtree(home.data, ignore_errors=True)
    code, text = out["first"]
    assert code == 0 and text.split()[:4] == ["0", "0", str(user.uid), "1"], text
    assert " 0 0 " in text.splitlines()[-1], "a file of group shadow is root's where no other id exists"
    note = out["stderr"].strip().splitlines()
    assert len(note) == 1 and "containers get one id (yours, as root)" in note[0]
    assert f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user.name}" in note[0]
    assert again["again"] == [0, ""] and again["stderr"] == "", "said once, not on every run"
    assert out["user"].startswith("user nobody of the container is not root, and your containers get one id")


def test_a_user_with_nothing_delegated_runs_without_limits_and_is_told_why_a_limit_is_refused(home):
    out = home.run("""
out["plain"] = run("localhost/busybox", "echo", "ran")
out["memory"] = refusal(run, "localhost/busybox", "true", limits=Limits(memory=64 << 20))
cid = containers.run_detached(ContainerSpec(image="localhost/busybox", command=("sleep", "1000")))
out["pause"] = refusal(containers.pause, cid)
containers.remove(cid, force=True)
""")
    assert out["plain"] == [0, "ran\n"]
    how = "sudo sandbox-kernel system delegate $USER" if discover().driver == "v1" else "Delegate=yes"
    assert how in out["memory"] and out["memory"] == out["pause"]


def test_user_a_cannot_see_stop_signal_or_remove_user_bs_containers(home, archives):
    with local_user(subids=True) as other:
        b = _home(other, archives)
        try:
            _load(b, archives, "busybox.tar")
            proc = b.user.popen(PREAMBLE + """
cid = containers.run_detached(ContainerSpec(image="localhost/busybox", name="bs", command=("sleep", "1000")))
print(json.dumps({"pid1": containers.get(cid).state.pid, "store": str(store.root)}), flush=True)
sys.stdin.readline()
containers.remove(cid, force=True)
print(json.dumps({"left": [c.name for c in containers.list(all=True)]}))
""", env={"XDG_DATA_HOME": str(b.data)})
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
                seen = json.loads(proc.stdout.readline())
                out = home.run("""
from sandbox_kernel.runtime.image.store import Store as S
out["mine"] = [c.name for c in containers.list(all=True)]
out["theirs"] = refusal(lambda: Containers(S(Path(sys.argv[1]))).list(all=True))
try:
    os.kill(int(sys.argv[2]), 9)
    out["kill"] = "sent"
except OSError as exc:
    out["kill"] = exc.strerror
out["proc"] = os.path.exists(f"/proc/{sys.argv[2]}/root/bin")
""", seen["store"], str(seen["pid1"]))
                assert out["mine"] == [] and out["theirs"].startswith("refusing the store at ")
                assert out["kill"] == "Operation not permitted" and not out["proc"]
                assert Path(f"/proc/{seen['pid1']}").exists(), "B's container still runs"
                rest, err = proc.communicate("go\n", timeout=120)
                assert proc.returncode == 0 and json.loads(rest) == {"left": []}, err
            finally:
                proc.kill()
                proc.wait()
        finally:
            shutil.rmtree(b.data, ignore_errors=True)


@pytest.mark.cgroups
def test_limits_stats_pause_and_update_in_a_delegated_subtree(archives):
    """v1 here: `sandbox-kernel system delegate`; v2 in the VM: a subtree an admin made and gave the user."""
    with local_user(subids=True) as user:
        delegatee = Delegatee(discover(), user)
        home = _home(user, archives)
        try:
            leaf = delegatee.delegate()
            out = home.run("""
load(store, sys.argv[1])
hog = ("awk", "BEGIN { s = sprintf(\\"%100000000s\\", \\"\\"); print length(s) }")  # 100 MB at once
result = containers.run(ContainerSpec(image="localhost/busybox", command=hog, limits=Limits(memory=32 << 20)),
                        stdin=None, stdout=None, stderr=None)
out["oom"] = [result.exit_code, result.oom_killed]
cid = containers.run_detached(ContainerSpec(image="localhost/busybox", name="p", limits=Limits(pids=8),
                                            command=("sleep", "1000")))
containers.exec("p", ["sh", "-c", "for i in $(seq 30); do sleep 100 & done"], stdin=None, stdout=None,
                stderr=None)
stats = containers.stats("p").usage
out["pids"] = [stats.pids, stats.pids_limit_hits]
containers.pause("p")
out["paused"] = containers.get("p").state.status
containers.resume("p")
out["updated"] = containers.update("p", Limits(memory=100 << 20, pids=8)).memory
out["memory"] = containers.stats("p").limits.memory
containers.remove("p", force=True)
""", str(archives / "busybox.tar"), leaf=leaf)
        finally:
            delegatee.clean()
            shutil.rmtree(home.data, ignore_errors=True)
    assert out["oom"] == [137, True]
    assert out["pids"][0] <= 8 and out["pids"][1] > 0
    assert out["paused"] == "paused" and out["updated"] == out["memory"] == 100 << 20


def test_the_magics_work_for_a_user_who_is_not_root(archives):
    """%%container cells, %container diff/commit/run, a container's error, as a user with its own IPython."""
    pytest.importorskip("IPython")
    with local_user(subids=True) as user:
        home = _home(user, archives)
        try:
            _load(home, archives, "debian.tar")
            out = home.run("""
from IPython.core.interactiveshell import InteractiveShell
from sandbox_kernel.notebook.magics import ContainerMagics
shell = InteractiveShell.instance()
magics = ContainerMagics(shell, store=store)
shell.register_magics(magics)
seen = []

class Sink:
    def __init__(self, trusted):
        pass
    def stream(self, name, text):
        seen.append([name, text])
    def display(self, data, metadata):
        seen.append(["display", sorted(data)])

magics.sink_factory = Sink
shell.run_cell_magic("container", "lm", "import os\\nopen('/root/made.txt', 'w').write('hi')\\nprint(os.getuid())")
try:
    shell.run_cell_magic("container", "lm", "1/0")
except Exception as exc:
    out["error"] = [type(exc).__name__, str(exc)[:200]]
out["diff"] = [dict(r) for r in shell.run_line_magic("container", "diff lm").rows]
out["commit"] = shell.run_line_magic("container", "commit lm localhost/lm-snap:1")
out["run"] = shell.run_line_magic("container", "run --rm localhost/lm-snap:1 cat /root/made.txt")
magics.shutdown()
out["left"] = [c.name for c in containers.list(all=True)]
out["seen"] = seen
""", timeout=600)
        finally:
            shutil.rmtree(home.data, ignore_errors=True)
    assert ["stdout", "0\n"] in out["seen"]
    assert out["error"] == ["ZeroDivisionError", "division by zero"]
    assert {"kind": "A", "path": "/root/made.txt"} in out["diff"]
    assert out["commit"].startswith("sha256:") and out["run"] == 0 and ["stdout", "hi"] in out["seen"]
    assert out["left"] == []


_NETWORKS = """
from sandbox_kernel.runtime import Networks, NetSpec
get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} {} | tail -1"
nets = Networks(store.root)
for name, options in (("n1", {}), ("n2", {}), ("wide", {"nat": True, "allow_host": True}), ("narrow", {"nat": True})):
    nets.create(name, **options)
web = ("sh", "-c", "mkdir /w && echo in-container > /w/index.html && exec httpd -f -p 80 -h /w")
containers.run_detached(ContainerSpec(image="localhost/busybox", name="web", network=NetSpec("n1"),
                                      ports=((int(sys.argv[1]), 80),), command=web))
address = nets.endpoints("n1")[0].address
out["by_name"] = run("localhost/busybox", "sh", "-c", get.format("web", 80), network=NetSpec("n1"))
out["other_network"] = run("localhost/busybox", "sh", "-c", get.format(address, 80), network=NetSpec("n2"))
out["wide"] = run("localhost/busybox", "sh", "-c", get.format("10.0.2.2", sys.argv[2]), network=NetSpec("wide"))
out["narrow"] = run("localhost/busybox", "sh", "-c", get.format("10.0.2.2", sys.argv[2]), network=NetSpec("narrow"))
print(json.dumps(out), flush=True)
sys.stdin.readline()  # root fetches the published port meanwhile
out = {}
out["in_use"] = refusal(nets.remove, "n1")
containers.remove("web", force=True)
for name in ("n1", "n2", "wide", "narrow"):
    nets.remove(name)
out["left"] = [n.name for n in nets.list()] + [c.name for c in containers.list(all=True)]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_users_networks_live_in_its_own_namespace_with_names_walls_nat_and_published_ports(home):
    """Bridges and veths in the user's own network namespace (nothing on the host's), names in /etc/hosts,
    another network walled off, outbound NAT through slirp4netns (which reaches the host's 127.0.0.1 only for
    --allow-host), and -p on the host's 127.0.0.1 through the proxy."""
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    served = threading.Thread(target=_serve, args=(host,), daemon=True)
    served.start()
    published = _free_port()
    links_before = _host_links()
    proc = home.user.popen(PREAMBLE + _NETWORKS + EPILOGUE, str(published), str(host.getsockname()[1]),
                           env={"XDG_DATA_HOME": str(home.data)})
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        first = json.loads(line)
        with socket.create_connection(("127.0.0.1", published), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b"".join(iter(lambda: conn.recv(4096), b""))
        assert _host_links() == links_before, "no bridge or veth on the host's network namespace"
        rest, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0, err
        second = json.loads(rest)
    finally:
        proc.kill()
        proc.wait()
        host.close()
    assert first["by_name"] == [0, "in-container\n"]
    assert "in-container" not in first["other_network"][1], "another network's container is walled off"
    assert first["wide"] == [0, "hello from the host\n"], "--nat --allow-host reaches the host's 127.0.0.1"
    assert "hello" not in first["narrow"][1], "--nat alone does not reach the host's own services"
    assert reply.endswith(b"in-container\n"), reply
    assert "in use by container(s) web" in second["in_use"] and second["left"] == []


def _serve(listener: socket.socket) -> None:
    """Answer every connection with one line (what the containers of --nat --allow-host networks reach)."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello from the host\n")


def _host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_the_server_extension_works_for_a_user_who_is_not_root(home):
    """A Jupyter server run by the user (as JupyterHub's single-user servers are) with the extension on: its
    REST API lists the user's images, makes, execs in, commits, stops and removes its containers."""
    from jupyter_infra import RunningServer
    from registry_infra import free_port

    jupyter = home.data / "jupyter"
    config = jupyter / "config"
    config.mkdir(parents=True)
    (config / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions":
                                                                                  {"sandbox_kernel": True}}}))
    subprocess.run(["chown", "-R", f"{home.user.uid}:{home.user.gid}", str(jupyter)], check=True)
    port, token = free_port(), os.urandom(16).hex()
    env = {"XDG_DATA_HOME": str(home.data), "HOME": str(jupyter), "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"), "JUPYTER_DATA_DIR": str(jupyter / "data"),
           "JUPYTER_PLATFORM_DIRS": "1"}
    proc = home.user.popen("import sys; from jupyter_server.serverapp import main; sys.exit(main())",
                           "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                           f"--ServerApp.root_dir={jupyter}", env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", token, proc, jupyter / "server.log")
    try:
        deadline = time.monotonic() + 60
        while not (_up(port) and server.request("GET", "images", timeout=2)[0] == 200):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the user's Jupyter server did not come up"
            time.sleep(0.2)
        status, images = server.request("GET", "images")
        assert status == 200 and [i["ref"] for i in images] == ["localhost/busybox:latest"]
        status, created = server.request("POST", "containers", {
            "image": "localhost/busybox", "name": "api", "command": ["sh", "-c", "echo made > /made; sleep 60"]})
        assert status == 201, created
        seen = list(server.events("containers/api/exec", {"argv": ["sh", "-c", "id -u; cat /made"]}))
        assert "".join(d["text"] for e, d in seen if e == "stdout") == "0\nmade\n" and seen[-1] == (
            "done", {"exit_code": 0}), seen
        status, committed = server.request("POST", "containers/api/commit", {"reference": "localhost/api:snap"})
        assert status == 201 and committed["id"].startswith("sha256:")
        assert server.request("POST", "containers/api/stop", {"timeout": 1})[0] == 200
        assert server.request("DELETE", "containers/api?force=1")[0] == 200
        status, rows = server.request("GET", "containers")
        assert status == 200 and rows == []
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _up(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_sandboxed_kernel_works_for_a_user_who_is_not_root(archives):
    """A JupyterHub student's server runs as the student: its KernelManager starts the sandboxed kernel in the
    student's own user namespace (container root is the student), with its notebook folder writable at /work,
    interrupts and removes it."""
    with local_user(subids=True) as user:
        home = _home(user, archives)
        notebooks = home.data / "notebooks"
        notebooks.mkdir()
        os.chown(notebooks, user.uid, user.gid)
        try:
            _load(home, archives, "kernel.tar")
            out = home.run("""
from jupyter_client.manager import KernelManager
from sandbox_kernel.kernel import kernelspec
data = os.environ["XDG_DATA_HOME"]
os.environ.update(JUPYTER_PATH=data + "/share/jupyter", JUPYTER_RUNTIME_DIR=data + "/runtime")
kernelspec.install("sandbox", kernelspec.settings("localhost/debian-kernel:latest"), prefix=data)
km = KernelManager(kernel_name="sandbox")
km.start_kernel(cwd=sys.argv[1])
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
seen = []
hook = lambda msg: seen.append(msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None
kc.execute_interactive("import os; print(os.getuid(), os.getpid(), sorted(os.listdir('/sys/class/net')))\\n"
                       "open('made.txt', 'w').write('x')", output_hook=hook, timeout=60)
out["seen"] = "".join(seen)
info = containers.get(km.provisioner.container)
out["pid1"] = info.state.pid
out["network"] = info.spec.network.mode
kc.stop_channels()
km.shutdown_kernel()
out["left"] = [c.name for c in containers.list(all=True)]
""", str(notebooks), timeout=600)
            made = notebooks / "made.txt"
            assert (made.stat().st_uid, made.read_text()) == (user.uid, "x")  # as the student, in its folder
        finally:
            shutil.rmtree(home.data, ignore_errors=True)
    assert out["seen"] == "0 2 ['lo']\n", out
    assert out["network"] == "none" and out["left"] == []


_CHECK = """
from sandbox_kernel.runtime import check_store
if sys.argv[1] == "run":
    out["run"] = run("localhost/busybox", "true")
out["check"] = [f.line() for f in check_store(store).findings]
out["repair"] = [f.line() for f in check_store(store, repair=True).findings]
out["after"] = [f.line() for f in check_store(store).findings]
"""


def test_check_and_repair_in_a_users_namespace(home):
    """A user's layers (owners of its range, opaque dirs as user.overlay xattrs) are checked against a fresh
    unpack in its namespace; one damaged from outside is unpacked again there."""
    first = home.run(_CHECK, "run")
    assert first["run"][0] == 0 and first["check"] == first["repair"] == first["after"] == []
    (layer,) = (home.store / "layers").iterdir()
    assert layer.name.endswith("-userns")
    (layer / "etc" / "passwd").write_text("root::0:0::/:/bin/sh\n")
    second = home.run(_CHECK, "again")
    assert len(second["check"]) == 1 and "etc/passwd is changed" in second["check"][0], second
    assert second["repair"][0].endswith("unpacked again from its blob") and second["after"] == []
    assert (layer / "etc" / "passwd").read_text().startswith("root:x:0:0:")
